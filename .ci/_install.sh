#!/usr/bin/env bash
# CI: install from scratch, then run the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 --version
# flora-bench's transport tests: the real adb client (against a fake adbd test double)
# and a real OpenSSH server on loopback.
if ! command -v adb >/dev/null || ! command -v ssh >/dev/null || [ ! -x /usr/sbin/sshd ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        adb openssh-server openssh-client
fi
python3 -m pip install -e ".[android,onnx,coreml,train,bench,test]"
# The Android demo's Gradle-free toolchain (apt: aapt2, apksigner, zipalign, framework-res, dexdump,
# Android's org.json for the JVM (libandroid-json-java), JUnit, JDK, node/npm; pinned kotlinc,
# ktlint, D8 and ExecuTorch prebuilts into android_demo/.tools).
bash android_demo/tools/fetch-tools.sh
# The iOS demo's platform-neutral Swift core: Swift 6.0.3 (Debian trixie's swiftlang) in a
# debootstrap chroot at /opt/flora-swift from this machine's own Debian mirror (its apt sources),
# plus SwiftLint (~100 s, ~2.8 GB; reused when present).
bash ios_demo/tools/swift-toolchain.sh
# The emulated arm64 board for tests/test_arm64.py (exports verified on ARM64 kernels): a
# Debian arm64 root under QEMU user-mode with the runtimes' aarch64 wheels, /opt/flora-arm64
# (~5 min and ~5 GB cold; reused while its pins match). The tests start its sshd; stopped on exit.
bash .ci/arm64-board.sh setup
