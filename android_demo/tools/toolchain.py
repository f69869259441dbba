"""Paths of the Gradle-free Android toolchain and helpers shared by build.py and check.py.

The tools live in android_demo/.tools (android_demo/tools/fetch-tools.sh puts them there);
Debian's aapt2, zipalign, apksigner, xmllint, dexdump, framework-res.apk and Android's org.json
(libandroid-json-java, for the JVM tests and as a compile-time library) come from apt.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent  # android_demo/
TOOLS = DEMO / ".tools"
BUILD = DEMO / "build"
APP = DEMO / "app" / "src" / "main"
UNIT_TESTS = DEMO / "app" / "src" / "test" / "java"
STUBS = Path(__file__).resolve().parent / "android-stubs"
FRAMEWORK_RES = Path("/usr/share/android-framework-res/framework-res.apk")
ANDROID_NS = "{http://schemas.android.com/apk/res/android}"
FETCH_HINT = "run android_demo/tools/fetch-tools.sh"


class ToolError(Exception):
    """A problem the user fixes: `problem` says what is wrong, `fix` what to do."""

    def __init__(self, problem: str, fix: str, detail: str = ""):
        super().__init__(f"{problem}; {fix}")
        self.problem, self.fix, self.detail = problem, fix, detail


@dataclass(frozen=True)
class Tools:
    kotlinc: Path
    kotlin_stdlib: Path
    ktlint: Path
    jadx_jar: Path  # D8 + jadx's framework signature database (clst/core.jcst)
    executorch_jar: Path
    executorch_so: Path
    framework_res: Path
    junit: Path
    hamcrest: Path
    android_json: Path  # Android's org.json for the JVM (Debian libandroid-json-java); the phone has its own

    @classmethod
    def locate(cls) -> Tools:
        tools = cls(
            kotlinc=TOOLS / "kotlinc" / "bin" / "kotlinc",
            kotlin_stdlib=TOOLS / "kotlinc" / "lib" / "kotlin-stdlib.jar",
            ktlint=TOOLS / "ktlint" / "ktlint",
            jadx_jar=TOOLS / "jadx" / "jadx.jar",
            executorch_jar=TOOLS / "executorch" / "classes.jar",
            executorch_so=TOOLS / "executorch" / "jni" / "arm64-v8a" / "libexecutorch.so",
            framework_res=FRAMEWORK_RES,
            junit=Path("/usr/share/java/junit4.jar"),
            hamcrest=Path("/usr/share/java/hamcrest-core.jar"),
            android_json=Path("/usr/share/java/com.android.json.jar"),
        )
        missing = [str(p) for p in vars(tools).values() if not p.exists()]
        missing += [b for b in ("aapt2", "zipalign", "apksigner", "xmllint", "java", "javac", "keytool")
                    if shutil.which(b) is None]
        if missing:
            raise ToolError(f"Android toolchain incomplete (missing {', '.join(missing[:3])})", FETCH_HINT)
        return tools


class Progress:
    """Numbered step lines: `[3/9] kotlinc: 12 sources ... 21.4 s`."""

    def __init__(self, total: int, prefix: str = "build"):
        self.total, self.prefix, self.n = total, prefix, 0
        self.times: dict[str, float] = {}

    def step(self, name: str, what: str):
        self.n += 1
        return _Step(self, name, what)


class _Step:
    def __init__(self, progress: Progress, name: str, what: str):
        self.p, self.name, self.what = progress, name, what

    def __enter__(self):
        print(f"[{self.p.n}/{self.p.total}] {self.name}: {self.what} ...", flush=True)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb):
        dt = time.perf_counter() - self.t0
        self.p.times[self.name] = round(dt, 2)
        if exc_type is None:
            print(f"      {self.name} done in {dt:.1f} s", flush=True)
        return False


def run(cmd: list, what: str, cwd: Path | None = None, env: dict | None = None,
        ok_codes: tuple = (0,)) -> subprocess.CompletedProcess:
    """Run a tool; on failure raise ToolError whose detail holds the tool's output."""
    cmd = [str(c) for c in cmd]
    full_env = {**os.environ, **(env or {})}
    try:
        r = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True)
    except FileNotFoundError:
        raise ToolError(f"{cmd[0]} not found", FETCH_HINT) from None
    if r.returncode not in ok_codes:
        raise ToolError(f"{what} failed (exit {r.returncode})", "fix the errors printed above",
                        detail=(r.stdout + r.stderr).strip())
    return r


def sources(root: Path, suffix: str) -> list[Path]:
    return sorted(p for p in root.rglob(f"*{suffix}") if p.is_file()) if root.is_dir() else []


_GRADLE_KEYS = {"namespace": str, "applicationId": str, "minSdk": int, "targetSdk": int,
                "versionCode": int, "versionName": str, "jvmTarget": str}


@dataclass(frozen=True)
class AppConfig:
    """What the build needs from app/build.gradle.kts (the one source of the package name, SDK
    levels and version, as for Gradle) and from AndroidManifest.xml."""

    namespace: str
    application_id: str
    min_sdk: int
    target_sdk: int
    version_code: int
    version_name: str
    jvm_target: str
    activities: tuple[str, ...]  # fully qualified class names
    extract_native_libs: bool
    manifest: Path

    @classmethod
    def read(cls, gradle: Path = DEMO / "app" / "build.gradle.kts",
             manifest: Path = APP / "AndroidManifest.xml") -> AppConfig:
        try:
            text = gradle.read_text()
        except OSError as e:
            raise ToolError(f"cannot read {gradle}: {e.strerror}", "restore app/build.gradle.kts") from None
        found = {}
        for key, kind in _GRADLE_KEYS.items():
            m = re.search(rf'\b{key}\s*=\s*"?([\w.]+)"?', text)
            if m is None:
                raise ToolError(f"{gradle.name} sets no {key}", f"add `{key} = ...` to {gradle}")
            found[key] = kind(m.group(1))
        try:
            root = ET.parse(manifest).getroot()
        except (OSError, ET.ParseError) as e:
            raise ToolError(f"cannot read {manifest}: {e}", "fix the manifest XML") from None
        app = root.find("application")
        names = [a.get(ANDROID_NS + "name", "") for a in (app.findall("activity") if app is not None else [])]
        ns = found["namespace"]
        return cls(
            namespace=ns, application_id=found["applicationId"], min_sdk=found["minSdk"],
            target_sdk=found["targetSdk"], version_code=found["versionCode"],
            version_name=found["versionName"], jvm_target=found["jvmTarget"],
            activities=tuple(ns + n if n.startswith(".") else n for n in names),
            extract_native_libs=(app is None or app.get(ANDROID_NS + "extractNativeLibs", "true") != "false"),
            manifest=manifest,
        )

    def merged_manifest(self, out: Path) -> Path:
        """The manifest as Gradle's merger would hand it to aapt2: with package="<namespace>"."""
        text = self.manifest.read_text()
        if not re.search(r"<manifest\b[^>]*\spackage=", text):
            text = re.sub(r"<manifest\b", f'<manifest package="{self.namespace}"', text, count=1)
        path = out / "AndroidManifest.xml"
        path.write_text(text)
        return path


def fail(prog: str, e: ToolError) -> int:
    """Print a ToolError (tool output first, then one line) and return the CLI exit code."""
    if e.detail:
        print(e.detail, file=sys.stderr)
    print(f"{prog}: error: {e.problem}; {e.fix}", file=sys.stderr)
    return 2
