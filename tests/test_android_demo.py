"""The Android demo app (android_demo/): Gradle-free build and static checks with real tools.

aapt2, kotlinc 2.4.20, D8, zipalign, apksigner, ktlint and JUnit run for real; the APK cannot run
here (no device or ART), so the framework calls in its dex are checked against jadx's framework
signature DB instead. The APK is built once per module (about 45 s on 2 cores).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "android_demo"
TOOLS = DEMO / "tools"
FETCHED = DEMO / ".tools"
PACKAGE = "dev.flora.chat"
ACTIVITIES = {f"{PACKAGE}.ChatActivity", f"{PACKAGE}.BenchmarkActivity"}


def _toolchain_missing() -> str | None:
    need = [FETCHED / "kotlinc" / "bin" / "kotlinc", FETCHED / "ktlint" / "ktlint",
            FETCHED / "jadx" / "jadx.jar", FETCHED / "executorch" / "classes.jar"]
    missing = [str(p.relative_to(DEMO)) for p in need if not p.exists()]
    missing += [b for b in ("aapt", "aapt2", "apksigner", "zipalign", "xmllint", "dexdump", "javac", "keytool")
                if shutil.which(b) is None]
    missing += [str(p) for p in (Path("/usr/share/java/com.android.json.jar"),) if not p.exists()]
    return ", ".join(missing) or None


needs_tools = pytest.mark.skipif(
    _toolchain_missing() is not None,
    reason=f"Android toolchain not fetched ({_toolchain_missing()}): "
           "run android_demo/tools/fetch-tools.sh (.ci/run does)",
)


def _run(*args, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def _check(out: Path, only: str) -> tuple[subprocess.CompletedProcess, dict]:
    result = out / f"check-{only.replace(',', '-')}.json"
    r = _run(sys.executable, TOOLS / "check.py", "--only", only, "--out", out, "--json", result)
    return r, json.loads(result.read_text()) if result.exists() else {}


def test_gradle_pins_the_exporters_executorch():
    # The Gradle build's ExecuTorch AAR is the release of the exporter's ExecuTorch: an older
    # runtime may reject a newer .pte (the iOS app's SwiftPM branch is checked the same way).
    pin = re.search(r'"executorch==([\d.]+)"', (DEMO.parent / "pyproject.toml").read_text()).group(1)
    props = dict(re.findall(r"^(\w+)=(.*)$", (DEMO / "gradle.properties").read_text(), re.M))
    assert props["executorchVersion"] == pin
    gradle = (DEMO / "app" / "build.gradle.kts").read_text()
    assert 'implementation("org.pytorch:executorch-android:$executorchVersion")' in gradle


@pytest.fixture(scope="module")
def android_build(tmp_path_factory):
    """The debug APK, built once by `check.py --only apk` (build.py + verify + badging)."""
    out = tmp_path_factory.mktemp("android-build")
    r, result = _check(out, "apk")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, result["checks"][0], r.stdout


@needs_tools
def test_build_prints_steps_and_writes_record(android_build):
    out, check, stdout = android_build
    steps = re.findall(r"^\[(\d)/8\] (\w+):", stdout, re.M)
    assert [s[1] for s in steps] == ["stubs", "aapt2", "javac", "kotlinc", "d8", "package", "keystore",
                                     "sign"]
    record = json.loads((out / "build.json").read_text())
    assert record["package"] == PACKAGE
    assert (record["min_sdk"], record["target_sdk"]) == (26, 34)
    assert set(record["activities"]) == ACTIVITIES
    assert record["signature_schemes"] == ["v2", "v3"]
    apk = out / "flora-chat-debug.apk"
    assert record["bytes"] == apk.stat().st_size > 1_000_000
    assert check["ok"] and check["details"]["launchable_activity"] == f"{PACKAGE}.ChatActivity"


@needs_tools
def test_apk_badging(android_build):
    out, _, _ = android_build
    badging = _run("aapt", "dump", "badging", out / "flora-chat-debug.apk").stdout
    assert re.search(rf"^package: name='{re.escape(PACKAGE)}' versionCode='1' versionName='0.1.0'",
                     badging, re.M)
    assert "sdkVersion:'26'" in badging and "targetSdkVersion:'34'" in badging
    assert f"launchable-activity: name='{PACKAGE}.ChatActivity'" in badging
    assert "native-code: 'arm64-v8a'" in badging
    assert "application-debuggable" in badging


@needs_tools
def test_apk_signature_and_alignment(android_build):
    apk = android_build[0] / "flora-chat-debug.apk"
    verify = _run("apksigner", "verify", "--verbose", apk)
    assert verify.returncode == 0, verify.stderr
    assert "Verified using v2 scheme (APK Signature Scheme v2): true" in verify.stdout
    assert "Verified using v3 scheme (APK Signature Scheme v3): true" in verify.stdout
    assert "Number of signers: 1" in verify.stdout
    assert _run("zipalign", "-c", "-p", "4", apk).returncode == 0


@needs_tools
def test_apk_contents(android_build):
    with zipfile.ZipFile(android_build[0] / "flora-chat-debug.apk") as z:
        names = set(z.namelist())
        so = z.read("lib/arm64-v8a/libexecutorch.so")
        dex = z.read("classes.dex")
    assert {"AndroidManifest.xml", "resources.arsc", "res/layout/activity_chat.xml"} <= names
    assert so[:4] == b"\x7fELF" and int.from_bytes(so[18:20], "little") == 183  # EM_AARCH64
    assert dex[:4] == b"dex\n"
    for cls in ("Ldev/flora/chat/ChatActivity;", "Lorg/pytorch/executorch/extension/llm/LlmModule;",
                "Lkotlin/jvm/internal/Intrinsics;"):
        assert cls.encode() in dex, cls
    sys.path.insert(0, str(TOOLS))
    import dex as dexdump_reader  # android_demo/tools/dex.py: Debian's dexdump -d, parsed
    defined = dexdump_reader.classes(dex)
    assert "Ldev/flora/chat/core/TextPieces;" in defined and "Lorg/json/JSONObject;" not in defined
    assert defined["Ldev/flora/chat/ChatActivity;"].superclass == "Landroid/app/Activity;"


@needs_tools
def test_framework_calls_exist(android_build):
    out = android_build[0]
    report = out / "api.json"
    r = _run(sys.executable, TOOLS / "apicheck.py", "--json", report, out / "flora-chat-debug.apk")
    assert r.returncode == 0, r.stdout
    data = json.loads(report.read_text())
    assert data["missing"] == [] and data["component_errors"] == []
    assert set(data["components"]) == ACTIVITIES
    assert len(data["android_calls"]) >= 30  # the app's views, Activity, Bundle, Log, SystemClock, ...
    assert "Landroid/os/SystemClock;->elapsedRealtimeNanos()J" in data["android_calls"]
    # The core's JSON is the framework's org.json: its calls resolve there and it is not packaged.
    assert "Lorg/json/JSONTokener;->nextValue()Ljava/lang/Object;" in data["framework_calls"]
    # What keeps this APK from starting the runtime: fbjni's Java side, which ExecuTorch's
    # classes call and no reachable package ships (android_demo/README.md, "fbjni").
    assert set(data["library_unknown"]) == {"com.facebook.jni.HybridData",
                                            "com.facebook.soloader.nativeloader.NativeLoader",
                                            "com.facebook.soloader.nativeloader.SystemDelegate"}
    assert re.search(r"^PASS apicheck: \d+ android refs, \d+ framework refs, 0 not found", r.stdout, re.M)


@needs_tools
def test_api_check_of_apk_and_stubs(android_build):
    out = android_build[0]
    r, result = _check(out, "api")
    assert r.returncode == 0, r.stdout[-3000:]
    api = result["checks"][0]["details"]
    assert api["not_found"] == [] and api["stub_problems"] == []
    assert api["stub_methods"] >= 50  # every public/protected method of android-stubs/
    assert set(api["activities"]) == ACTIVITIES


@needs_tools
def test_api_check_catches_bad_activity(android_build):
    apk = android_build[0] / "flora-chat-debug.apk"
    r = _run(sys.executable, TOOLS / "apicheck.py", apk, "--activity", f"{PACKAGE}.NoSuchActivity",
             "--activity", f"{PACKAGE}.core.ChatSession", "--activity", f"{PACKAGE}.ChatActivity")
    assert r.returncode == 1
    assert f"activity {PACKAGE}.NoSuchActivity is not in the dex" in r.stdout
    assert f"activity {PACKAGE}.core.ChatSession does not extend android.app.Activity" in r.stdout
    assert "1 activities ok, 2 bad" in r.stdout


@needs_tools
def test_api_check_catches_wrong_stub_descriptor(tmp_path):
    """A stub whose return type is wrong compiles, and the API check must then name the call."""
    stub = tmp_path / "stub" / "android" / "os" / "SystemClock.java"
    stub.parent.mkdir(parents=True)
    stub.write_text("package android.os;\npublic final class SystemClock {\n"
                    "  public static int elapsedRealtime() { throw new RuntimeException(\"Stub!\"); }\n"
                    "  public static long uptimeMillis() { throw new RuntimeException(\"Stub!\"); }\n}\n")
    app = tmp_path / "src" / "dev" / "flora" / "chat" / "Clock.java"
    app.parent.mkdir(parents=True)
    app.write_text("package dev.flora.chat;\npublic class Clock {\n  public static long now() {\n"
                   "    return android.os.SystemClock.elapsedRealtime()\n"
                   "        + android.os.SystemClock.uptimeMillis();\n  }\n}\n")
    stub_classes, app_classes, dex_dir = (tmp_path / d for d in ("sc", "ac", "dex"))
    for d in (stub_classes, app_classes, dex_dir):
        d.mkdir()
    assert _run("javac", "--release", "8", "-Xlint:-options", "-d", stub_classes, stub).returncode == 0
    assert _run("javac", "--release", "8", "-Xlint:-options", "-cp", stub_classes, "-d", app_classes,
                app).returncode == 0
    java_home = Path(os.path.realpath(shutil.which("javac"))).parent.parent
    d8 = _run("java", "-cp", FETCHED / "jadx" / "jadx.jar", "com.android.tools.r8.D8", "--min-api", "26",
              "--lib", java_home, "--lib", stub_classes, "--output", dex_dir,
              app_classes / "dev" / "flora" / "chat" / "Clock.class")
    assert d8.returncode == 0, d8.stderr
    stub_jar = tmp_path / "stubs.jar"
    with zipfile.ZipFile(stub_jar, "w") as z:
        z.write(stub_classes / "android" / "os" / "SystemClock.class", "android/os/SystemClock.class")
    r = _run(sys.executable, TOOLS / "apicheck.py", "-v", "--no-manifest", "--stubs", stub_jar,
             dex_dir / "classes.dex")
    assert r.returncode == 1
    assert f"MISSING android.os.SystemClock.elapsedRealtime()I (missing) from {PACKAGE}.Clock" in r.stdout
    assert "OK      Landroid/os/SystemClock;->uptimeMillis()J" in r.stdout
    assert "FAIL apicheck: 1 android refs" in r.stdout
    # the stub jar itself: the wrong method is named, the right one passes
    assert "STUB    stub method android.os.SystemClock.elapsedRealtime()I is not in the framework" in r.stdout
    assert re.search(r"^FAIL stubs: \d+ stub methods checked, 1 problems$", r.stdout, re.M)


@pytest.fixture(scope="module")
def unit_check(tmp_path_factory):
    """`check.py --only unit`: core/ + its JUnit tests compiled and run once per module."""
    return _check(tmp_path_factory.mktemp("android-unit"), "unit")


@needs_tools
def test_core_unit_tests_pass(unit_check):
    r, result = unit_check
    assert r.returncode == 0, r.stdout[-4000:]
    unit = result["checks"][0]
    assert unit["ok"] and unit["details"]["failures"] == 0
    assert unit["details"]["test_classes"] >= 5
    assert unit["details"]["tests"] >= 20
    assert re.search(r"^PASS unit: JUnit OK \(\d+ tests in \d+ classes\)", r.stdout, re.M)


@needs_tools
def test_report_written_by_the_app_code_reads_in_flora_bench(unit_check):
    """The contract end to end on the app's side: the Kotlin BenchmarkRunner's report (a
    scripted engine: 100 ms prefill, 20 ms per token, 5 pieces; 1 warm-up + 3 runs)
    parsed by flora-bench's reader gives the figures the runner's stats imply."""
    from flora_export.bench.app import parse_app_report

    r, result = unit_check
    assert r.returncode == 0, r.stdout[-4000:]
    report = json.loads(Path(result["checks"][0]["details"]["bench_report"]).read_text())
    samples, _, info = parse_app_report(report)
    assert len(samples) == 3                         # the warm-up is not a sample
    for s in samples:
        assert s["ttft_ms"] == pytest.approx(100.0)
        assert s["tpot_ms"] == pytest.approx(20.0)
        assert s["generated_tokens"] == 5
        assert s["app"]["text"] == "abcde"
    assert info["load_s"] == 0.042
    assert info["config"]["runs"] == 3 and info["run_id"] == "r1"


@needs_tools
def test_xml_resources_and_ktlint(tmp_path):
    r, result = _check(tmp_path, "xml,resources,ktlint")
    assert r.returncode == 0, r.stdout[-4000:]
    by_name = {c["name"]: c for c in result["checks"]}
    assert by_name["xml"]["details"]["files"] >= 5
    assert by_name["resources"]["details"]["resource_files"] >= 4
    assert by_name["ktlint"]["details"] == {"files": by_name["ktlint"]["details"]["files"], "problems": 0}
    assert by_name["ktlint"]["details"]["files"] >= 10
    assert "android checks: 3 passed, 0 failed" in r.stdout


@needs_tools
def test_ktlint_reports_style_problems(tmp_path):
    bad = tmp_path / "Bad.kt"
    bad.write_text("package x\nfun f( a:Int ) : Int { return a+1 ; }\n")
    r = subprocess.run([str(FETCHED / "ktlint" / "ktlint"), "Bad.kt"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1
    assert re.search(r"Bad\.kt:2:\d+: .*\(standard:", r.stdout)


@needs_tools
def test_check_rejects_unknown_check_name():
    r = _run(sys.executable, TOOLS / "check.py", "--only", "lint")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("check: error: unknown check 'lint'")


@needs_tools
def test_fetch_tools_second_run_downloads_nothing():
    r = _run("bash", TOOLS / "fetch-tools.sh", timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("fetch-tools: cached ") == 4 and "download" not in r.stdout
    assert "kotlinc-jvm 2.4.20" in r.stdout and "D8 3.3.75" in r.stdout
