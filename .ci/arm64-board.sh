#!/usr/bin/env bash
# An emulated arm64 Linux "board" on an x86-64 Debian/Ubuntu host, reachable over ssh.
#
#   .ci/arm64-board.sh setup            build or reuse the arm64 root (needs root, ~5 min cold)
#   .ci/arm64-board.sh start [--cpu C]  start its sshd on 127.0.0.1:PORT (QEMU_CPU C, default max)
#   .ci/arm64-board.sh stop             stop the sshd, unmount what start mounted
#   .ci/arm64-board.sh status           print the board's connection facts (exit 3: not running)
#   .ci/arm64-board.sh ssh CMD...       run CMD on the board
#
# A Debian bookworm arm64 userland runs under QEMU user-mode emulation (binfmt_misc, flag F:
# no qemu binary inside the root). The runtime wheels (ExecuTorch, ONNX Runtime, ORT-GenAI,
# numpy, safetensors, tokenizers; torch, which ExecuTorch's Python runtime loads) are the
# PyPI aarch64 builds, installed natively with uv for the aarch64 platform. flora-export is
# copied from this checkout on every `setup`. Fixes applied: the host's CA certificates are
# trusted inside the root, commands run there with a clean environment (env -i), an
# arm64-style /proc/cpuinfo (features = the emulated CPU's HWCAPs) is bind-mounted over the
# host's x86 one, and libatomic1 is installed (ExecuTorch's LLM runner needs it).
#
# Environment: FLORA_ARM64_DIR (cache directory, default /opt/flora-arm64; the root is reused
# while its stamp matches the pins below), FLORA_ARM64_PORT (default 2264),
# FLORA_ARM64_MIRROR (Debian mirror; default: the first bookworm URI of this host's apt
# sources). Connection facts after `start`: $FLORA_ARM64_DIR/board.json. See docs/arm64.md.
set -euo pipefail

PROG=arm64-board
BOARD_DIR=${FLORA_ARM64_DIR:-/opt/flora-arm64}
PORT=${FLORA_ARM64_PORT:-2264}
REPO=$(cd "$(dirname "$0")/.." && pwd)

# --- pins: changing any of these rebuilds what depends on it -------------------------------
SUITE=bookworm
DEB_PACKAGES=python3,ca-certificates,libatomic1,openssh-server
UV_VERSION=0.13.9
PY_VERSION=3.11
PY_PLATFORM=aarch64-manylinux_2_28
WHEELS="torch==2.13.0 executorch==1.5.1 onnxruntime==1.32.0 onnxruntime-genai==0.18.0
numpy==2.3.5 safetensors==0.8.0 tokenizers==0.23.3 pyyaml==6.0.3 tqdm==4.70.1"
ROOT_STAMP="root-v1 $SUITE $DEB_PACKAGES"
WHEEL_STAMP="wheels-v1 $PY_VERSION $PY_PLATFORM uv==$UV_VERSION $(echo $WHEELS)"

ROOT=$BOARD_DIR/root
SITE=$ROOT/usr/local/lib/python3.11/dist-packages   # on the root's python3 sys.path (Debian)
BOARD_PY=/usr/local/lib/python3.11/dist-packages/flora_export/board.py   # standalone script
LOGS=$BOARD_DIR/logs
KEYS=$BOARD_DIR/ssh
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

die() { echo "$PROG: error: $1${2:+ ($2)}" >&2; exit "${3:-1}"; }
say() { echo "$PROG: $*"; }

# run STEP FIX CMD...: CMD's output goes to $LOGS/STEP.log; one line naming STEP if it fails
run() {
    local step=$1 fix=$2; shift 2
    mkdir -p "$LOGS"
    if ! "$@" >"$LOGS/$step.log" 2>&1; then
        die "step '$step' failed: $(grep -v '^\s*$' "$LOGS/$step.log" | tail -n 1 | cut -c1-200)" \
            "$fix; full log: $LOGS/$step.log"
    fi
}

in_root() {   # CMD... inside the root, clean environment, the chosen emulated CPU
    chroot "$ROOT" /usr/bin/env -i PATH=$CHROOT_PATH HOME=/root LANG=C.UTF-8 \
        QEMU_CPU="${QEMU_CPU:-max}" "$@"
}

need_root() {
    [ "$(id -u)" = 0 ] || die "this needs root (chroot, mounts, binfmt_misc)" "run it with sudo"
}

host_tools() {
    local missing=()
    command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
    command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v ssh >/dev/null && command -v ssh-keygen >/dev/null || missing+=(openssh-client)
    command -v python3 >/dev/null || die "python3 is missing on the host" "apt-get install python3"
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]} ..."
        run apt-update "check this host's apt sources and network" apt-get update -qq
        run apt-install "apt-get install ${missing[*]} by hand" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

binfmt() {
    local fs=/proc/sys/fs/binfmt_misc
    [ -e $fs/register ] || run binfmt-mount "this kernel/container must allow binfmt_misc" \
        mount -t binfmt_misc binfmt_misc $fs
    [ -e $fs/qemu-aarch64 ] || run binfmt-enable "reinstall qemu-user-static and binfmt-support" \
        update-binfmts --enable qemu-aarch64
    grep -q '^enabled' $fs/qemu-aarch64 || die "the qemu-aarch64 binfmt handler is disabled" \
        "update-binfmts --enable qemu-aarch64"
    grep -q '^flags:.*F' $fs/qemu-aarch64 || die "the qemu-aarch64 binfmt handler lacks flag F" \
        "install Debian's qemu-user-static (registers it with F), or put qemu-aarch64-static in the root"
}

mirror() {   # this host's own Debian mirror for $SUITE
    if [ -n "${FLORA_ARM64_MIRROR:-}" ]; then echo "$FLORA_ARM64_MIRROR"; return; fi
    local uri=""
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        # deb822 stanzas: the URIs of one whose Suites has $SUITE itself (not -security)
        uri=$(awk -v suite="$SUITE" 'BEGIN{RS=""; FS="\n"} {u=""; s=0
              for (i = 1; i <= NF; i++) { if ($i ~ /^URIs:/) { split($i, a, " "); u = a[2] }
                if ($i ~ /^Suites:/) { n = split($i, b, " "); for (j = 2; j <= n; j++)
                  if (b[j] == suite) s = 1 } }
              if (s && u != "" && u !~ /security/) { print u; exit } }' "$f")
        [ -n "$uri" ] && break
    done
    if [ -z "$uri" ] && [ -e /etc/apt/sources.list ]; then
        uri=$(awk -v suite="$SUITE" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) while ($i !~ /\]$/) i++
              if ($2 ~ /^\[/) i++; if ($(i + 1) == suite && $i !~ /security/) { print $i; exit } }' \
              /etc/apt/sources.list)
    fi
    [ -n "$uri" ] || die "no Debian $SUITE mirror in this host's apt sources" \
        "set FLORA_ARM64_MIRROR to a Debian mirror URL"
    echo "$uri"
}

build_root() {
    if [ "$(cat "$BOARD_DIR/root.stamp" 2>/dev/null)" = "$ROOT_STAMP" ] && [ -x "$ROOT/usr/bin/python3" ]; then
        say "arm64 root: reused ($ROOT)"
        return
    fi
    board_stop quiet
    local url; url=$(mirror)
    say "arm64 root: debootstrap $SUITE arm64 (~3 min) ..."
    rm -rf "$ROOT.tmp" "$BOARD_DIR/wheels.stamp"
    run debootstrap "check the mirror ($url) and free disk space" debootstrap --arch=arm64 \
        --variant=minbase --include="$DEB_PACKAGES" "$SUITE" "$ROOT.tmp" "$url"
    rm -rf "$ROOT"
    mv "$ROOT.tmp" "$ROOT"
    echo "$ROOT_STAMP" >"$BOARD_DIR/root.stamp"
}

trust_host_cas() {   # the host's extra CAs, so TLS from inside the root trusts the same roots
    local n=0
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    for c in /usr/local/share/ca-certificates/*.crt; do
        [ -e "$c" ] || continue
        cmp -s "$c" "$ROOT/usr/local/share/ca-certificates/$(basename "$c")" || \
            { cp "$c" "$ROOT/usr/local/share/ca-certificates/"; n=$((n + 1)); }
    done
    [ $n = 0 ] || run ca-certificates "check the certificates in /usr/local/share/ca-certificates" \
        in_root update-ca-certificates
}

install_wheels() {
    if [ "$(cat "$BOARD_DIR/wheels.stamp" 2>/dev/null)" = "$WHEEL_STAMP" ]; then
        say "runtime wheels: reused"
        return
    fi
    local tools=$BOARD_DIR/tools
    if [ ! -x "$tools/bin/uv" ] || [ "$("$tools/bin/uv" --version 2>/dev/null)" != "uv $UV_VERSION" ]; then
        rm -rf "$tools"
        run uv-install "check that pip can reach the package index" \
            python3 -m pip install -q --no-deps --target "$tools" "uv==$UV_VERSION"
    fi
    say "runtime wheels: cross-installing for $PY_PLATFORM (~5 GB: torch's aarch64 build is the CUDA one) ..."
    rm -rf "$SITE.tmp"
    # shellcheck disable=SC2086
    run wheels "check that uv can reach the package index and the pins resolve" \
        env UV_CACHE_DIR="$BOARD_DIR/uv-cache" "$tools/bin/uv" pip install -q \
        --python-platform "$PY_PLATFORM" --python-version "$PY_VERSION" --target "$SITE.tmp" $WHEELS
    rm -rf "$SITE"
    mv "$SITE.tmp" "$SITE"
    echo "$WHEEL_STAMP" >"$BOARD_DIR/wheels.stamp"
}

install_flora() {   # this checkout's flora_export package (pure Python), always refreshed
    rm -rf "$SITE/flora_export"
    run flora-export "check $REPO/flora_export" cp -r "$REPO/flora_export" "$SITE/flora_export"
    find "$SITE/flora_export" -name __pycache__ -prune -exec rm -rf {} +
}

keys() {
    mkdir -p "$KEYS"
    chmod 700 "$KEYS"
    [ -e "$KEYS/host_ed25519_key" ] || run ssh-keygen "check ssh-keygen" \
        ssh-keygen -q -t ed25519 -N "" -C flora-arm64-host -f "$KEYS/host_ed25519_key"
    [ -e "$KEYS/id_ed25519" ] || run ssh-keygen "check ssh-keygen" \
        ssh-keygen -q -t ed25519 -N "" -C flora-arm64-user -f "$KEYS/id_ed25519"
    install -m 600 "$KEYS/host_ed25519_key" "$ROOT/etc/ssh/flora_host_ed25519_key"
    mkdir -p "$ROOT/root/.ssh"
    chmod 700 "$ROOT/root/.ssh"
    install -m 600 "$KEYS/id_ed25519.pub" "$ROOT/root/.ssh/authorized_keys"
    echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$KEYS/host_ed25519_key.pub")" >"$KEYS/known_hosts"
}

smoke() {   # the wheels load on the emulated CPU (numpy, ONNX Runtime, ORT-GenAI, tokenizers)
    run smoke "see the log; QEMU_CPU=${QEMU_CPU:-max}" in_root python3 -c \
        "import numpy, onnxruntime, onnxruntime_genai, safetensors, tokenizers"
}

mounted() { grep -q " $1 " /proc/mounts; }

board_mount() {
    local cpu=$1
    mounted "$ROOT/proc" || run mount-proc "check that mounting proc is allowed" \
        mount -t proc proc "$ROOT/proc"
    mounted "$ROOT/dev" || run mount-dev "check /dev" mount --bind /dev "$ROOT/dev"
    mounted "$ROOT/sys" || run mount-sys "check /sys" mount --bind -o ro /sys "$ROOT/sys"
    # an arm64 /proc/cpuinfo: QEMU passes the host's x86 one through, and torch's cpuinfo
    # library then crashes (no MIDR); its Features line = this CPU's HWCAPs, one entry per core
    QEMU_CPU=$cpu run cpuinfo "check that python3 runs in the root (setup)" \
        in_root python3 "$BOARD_PY" cpuinfo "$(nproc)"
    cp "$LOGS/cpuinfo.log" "$BOARD_DIR/cpuinfo"
    mounted "$ROOT/proc/cpuinfo" && umount "$ROOT/proc/cpuinfo"
    run mount-cpuinfo "check the proc mount" mount --bind "$BOARD_DIR/cpuinfo" "$ROOT/proc/cpuinfo"
}

board_unmount() {
    for m in proc/cpuinfo proc sys dev; do
        if mounted "$ROOT/$m"; then umount "$ROOT/$m" || umount -l "$ROOT/$m"; fi
    done
}

sshd_pid() {
    local pid
    pid=$(cat "$ROOT/run/flora-sshd.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

board_start() {
    local cpu=$1
    [ "$(cat "$BOARD_DIR/wheels.stamp" 2>/dev/null)" = "$WHEEL_STAMP" ] || \
        die "the arm64 board is not set up (or its pins changed)" "run: sudo $0 setup"
    if sshd_pid >/dev/null && [ "$(cat "$BOARD_DIR/cpu" 2>/dev/null)" = "$cpu" ] \
        && [ "$(cat "$BOARD_DIR/port" 2>/dev/null)" = "$PORT" ]; then
        board_status
        return
    fi
    board_stop quiet
    keys
    board_mount "$cpu"
    mkdir -p "$ROOT/run/sshd"
    cat >"$ROOT/etc/ssh/flora_sshd_config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey /etc/ssh/flora_host_ed25519_key
PidFile /run/flora-sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
SetEnv QEMU_CPU=$cpu
EOF
    QEMU_CPU=$cpu run sshd "is port $PORT free? (set FLORA_ARM64_PORT)" in_root /usr/sbin/sshd \
        -f /etc/ssh/flora_sshd_config -E /var/log/flora-sshd.log
    echo "$cpu" >"$BOARD_DIR/cpu"
    echo "$PORT" >"$BOARD_DIR/port"
    local i
    for i in $(seq 1 100); do
        if board_ssh true 2>/dev/null; then break; fi
        [ "$i" = 100 ] && die "the board's sshd does not accept the key: $(tail -n 1 \
            "$ROOT/var/log/flora-sshd.log" 2>/dev/null)" "see $ROOT/var/log/flora-sshd.log"
        sleep 0.3
    done
    cat >"$BOARD_DIR/board.json" <<EOF
{"host": "root@127.0.0.1", "port": $PORT, "identity": "$KEYS/id_ed25519",
 "known_hosts": "$KEYS/known_hosts", "qemu_cpu": "$cpu", "root": "$ROOT"}
EOF
    board_status
}

board_ssh() {
    ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$KEYS/known_hosts" \
        -o LogLevel=ERROR -p "$(cat "$BOARD_DIR/port" 2>/dev/null || echo "$PORT")" \
        -i "$KEYS/id_ed25519" root@127.0.0.1 "$@"
}

board_stop() {
    local pid
    if pid=$(sshd_pid); then
        kill "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$ROOT/run/flora-sshd.pid" "$BOARD_DIR/board.json"
    [ -d "$ROOT" ] && board_unmount
    [ "${1:-}" = quiet ] || say "stopped"
}

board_status() {
    if ! sshd_pid >/dev/null; then
        echo "$PROG: not running (start it: sudo $0 start)" >&2
        return 3
    fi
    local port; port=$(cat "$BOARD_DIR/port")
    say "running: QEMU_CPU=$(cat "$BOARD_DIR/cpu"), ssh root@127.0.0.1 -p $port"
    echo "  flora-export verify DIR --device ssh:root@127.0.0.1 --ssh-port $port \\"
    echo "      --ssh-identity $KEYS/id_ed25519 --ssh-known-hosts $KEYS/known_hosts"
    echo "  connection facts: $BOARD_DIR/board.json"
}

setup() {
    need_root
    mkdir -p "$BOARD_DIR"
    local t0=$SECONDS
    host_tools
    binfmt
    build_root
    trust_host_cas
    install_wheels
    install_flora
    smoke
    say "setup done in $((SECONDS - t0)) s ($(du -sh "$BOARD_DIR" 2>/dev/null | cut -f1) in $BOARD_DIR)"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
mkdir -p "$BOARD_DIR" 2>/dev/null || true
case "$cmd" in
    setup|start|stop)
        need_root
        exec 9>"$BOARD_DIR/.lock"
        flock 9
        case "$cmd" in
            setup) setup ;;
            stop) board_stop ;;
            start)
                cpu=max
                while [ $# -gt 0 ]; do
                    case "$1" in
                        --cpu) [ $# -ge 2 ] || die "--cpu needs a QEMU CPU name" "e.g. --cpu a64fx" 2
                               cpu=$2; shift 2 ;;
                        *) die "unknown option $1" "usage: $0 start [--cpu NAME]" 2 ;;
                    esac
                done
                binfmt
                board_start "$cpu" ;;
        esac ;;
    status) board_status ;;
    ssh) board_ssh "$@" ;;
    *) die "unknown command '${cmd}'" "usage: $0 setup | start [--cpu NAME] | stop | status | ssh CMD..." 2 ;;
esac
