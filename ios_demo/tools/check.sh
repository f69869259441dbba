#!/usr/bin/env bash
# Checks ios_demo/ on Linux with the Swift toolchain from swift-toolchain.sh:
#   build    swift build of the FloraChatCore package (core library + flora-chat-inspect)
#   test     swift test (the core's XCTest suite)
#   parse    swiftc -parse on every app file (SwiftUI, Core ML and ExecuTorch code: syntax
#            only; those modules do not exist on Linux)
#   lint     SwiftLint 0.57 with ios_demo/.swiftlint.yml, --strict
#   inspect DIR...  flora-chat-inspect on export directories of this machine
#
#   sudo ios_demo/tools/check.sh            # build, test, parse, lint
#   sudo ios_demo/tools/check.sh test
#   sudo ios_demo/tools/check.sh inspect flora-out/ios
#
# The package is copied into the chroot ($FLORA_SWIFT_ROOT/work/ios_demo, its .build kept
# between runs). FLORA_SWIFT_OUT=DIR: a folder of this machine that receives what the tests
# write (bench-report.json: a benchmark report made by the Swift core). Exit status: the
# first failing step's.
set -euo pipefail

ROOT="${FLORA_SWIFT_ROOT:-/opt/flora-swift}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
WORK=/work/ios_demo
say() { printf '[check] %s\n' "$*"; }
die() { printf '[check] error: %s\n' "$*" >&2; exit 2; }

[ -f "$ROOT/.flora-swift-ok" ] || die "no Swift toolchain in $ROOT: run ios_demo/tools/swift-toolchain.sh first"
[ "$(id -u)" = 0 ] || die "run as root (chroot): sudo $0 $*"

exec 9>"$ROOT/.check.lock"
flock 9    # one check at a time per chroot (shared mounts and build folder)

MOUNTS=()
cleanup() {
    local m
    for ((k = ${#MOUNTS[@]} - 1; k >= 0; k--)); do
        m=${MOUNTS[k]}
        if mountpoint -q "$m"; then umount -l "$m" || true; fi
    done
}
trap cleanup EXIT
if ! mountpoint -q "$ROOT/proc"; then
    mount -t proc proc "$ROOT/proc"
    MOUNTS+=("$ROOT/proc")
fi

in_chroot() {
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
        ${FLORA_REPORT_OUT:+FLORA_REPORT_OUT=$FLORA_REPORT_OUT} sh -c "cd $WORK && $1"
}

sync_sources() {
    mkdir -p "$ROOT$WORK" "$ROOT/work/out"
    # Replace everything but the build folder, so deleted files do not linger.
    find "$ROOT$WORK" -mindepth 1 -maxdepth 1 ! -name .build -exec rm -rf --one-file-system {} +
    tar -C "$HERE" --exclude=./.build --exclude=./App/build -cf - . | tar -C "$ROOT$WORK" -xf -
}

step() {  # step NAME SHELL-COMMAND (run in the package folder in the chroot)
    local t0=$SECONDS rc=0
    say "$1 ..."
    in_chroot "$2" || rc=$?
    say "$1: $((SECONDS - t0)) s, exit $rc"
    return $rc
}

app_files() { (cd "$HERE" && find App -name '*.swift' | sort | tr '\n' ' '); }

run() {
    case "$1" in
        build) step "swift build" "swift build --build-tests 2>&1" ;;
        test)
            rm -rf --one-file-system "$ROOT/work/out" && mkdir -p "$ROOT/work/out"
            FLORA_REPORT_OUT=/work/out/bench-report.json step "swift test" "swift test 2>&1"
            if [ -n "${FLORA_SWIFT_OUT:-}" ]; then mkdir -p "$FLORA_SWIFT_OUT" && cp -r "$ROOT/work/out/." "$FLORA_SWIFT_OUT/"; fi
            ;;
        parse) step "swiftc -parse (app)" "swiftc -parse $(app_files)" ;;
        lint)
            if ! chroot "$ROOT" test -x /usr/local/bin/swiftlint; then
                die "SwiftLint is not installed in $ROOT (npm was missing when swift-toolchain.sh ran)"
            fi
            step "swiftlint --strict" "swiftlint lint --strict --quiet --config .swiftlint.yml"
            ;;
        *) die "unknown step '$1' (build, test, parse, lint, inspect DIR...)" ;;
    esac
}

inspect() {
    local i=0 args="" d
    step "swift build" "swift build --product flora-chat-inspect 2>&1 | tail -3" >&2
    for d in "$@"; do
        [ -d "$d" ] || die "$d is not a directory"
        d=$(cd "$d" && pwd)
        mkdir -p "$ROOT/work/in/$i/${d##*/}"
        mount --bind -o ro "$d" "$ROOT/work/in/$i/${d##*/}"
        MOUNTS+=("$ROOT/work/in/$i/${d##*/}")
        args="$args /work/in/$i/${d##*/}"
        i=$((i + 1))
    done
    in_chroot "\$(swift build --show-bin-path)/flora-chat-inspect $args"
}

sync_sources
T0=$SECONDS
if [ "${1:-all}" = inspect ]; then
    shift
    inspect "$@"
    exit
fi
steps=("$@")
[ ${#steps[@]} -gt 0 ] && [ "${steps[0]}" != all ] || steps=(build test parse lint)
for s in "${steps[@]}"; do run "$s"; done
say "all passed (${steps[*]}) in $((SECONDS - T0)) s"
