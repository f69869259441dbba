#!/usr/bin/env python3
"""Static checks of the flora chat Android app, without Gradle or a phone.

Checks (in order; --only picks some):
  xml        xmllint --noout on every XML file of the app (well-formed)
  resources  aapt2 compile + link of res/ and the manifest against framework-res.apk (attribute
             names, resource references, manifest structure)
  ktlint     ktlint 1.8 on the app's Kotlin, main + test (style: android_demo/.editorconfig if any)
  unit       kotlinc the pure-Kotlin core (dev/flora/chat/core, no android.*) with its JUnit 4
             tests, then run them with org.junit.runner.JUnitCore
  apk        build the debug APK (build.py), apksigner verify, zipalign -c, aapt dump badging
             (package, SDK levels, launchable activity, arm64-v8a native code)
  api        every framework method the dex calls exists in jadx's framework signature DB, so does
             every method of the stub android.jar, and every manifest activity is a dex class
             extending android.app.Activity (apicheck.py)

Each check prints PASS or FAIL with a reason; the exit code is 1 when any check fails, 2 when the
toolchain is missing (bash android_demo/tools/fetch-tools.sh installs it).

Examples:
  python3 android_demo/tools/check.py                       # everything (about 1 min on 2 cores)
  python3 android_demo/tools/check.py --only xml,resources,ktlint
  python3 android_demo/tools/check.py --only api --out android_demo/build   # reuse a built APK
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import apicheck
import build
from toolchain import APP, BUILD, DEMO, UNIT_TESTS, AppConfig, Tools, ToolError, fail, run, sources

CORE = APP / "java" / "dev" / "flora" / "chat" / "core"


@dataclass
class Result:
    name: str
    ok: bool
    reason: str
    seconds: float = 0.0
    details: dict = field(default_factory=dict)
    output: str = ""  # the tool's messages when it failed


@dataclass
class Context:
    tools: Tools
    cfg: AppConfig
    out: Path


def _tail(text: str, n: int = 40) -> str:
    lines = text.strip().splitlines()
    return "\n".join(lines[-n:])


def check_xml(ctx: Context) -> Result:
    files = sources(APP, ".xml") + sources(DEMO / "app" / "src" / "test", ".xml")
    r = run(["xmllint", "--noout", *files], "xmllint", ok_codes=(0, 1))
    if r.returncode:
        return Result("xml", False, "xmllint found malformed XML", output=_tail(r.stderr))
    return Result("xml", True, f"{len(files)} files well-formed", details={"files": len(files)})


def check_resources(ctx: Context) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            build.link_resources(ctx.tools, ctx.cfg, Path(tmp))
        except ToolError as e:
            return Result("resources", False, e.problem, output=_tail(e.detail))
    n = len([p for p in (APP / "res").rglob("*") if p.is_file()])
    return Result("resources", True, f"manifest + {n} resource files link against framework-res.apk (API 29)",
                  details={"resource_files": n})


def check_ktlint(ctx: Context) -> Result:
    kt = sources(APP / "java", ".kt") + sources(UNIT_TESTS, ".kt")
    rel = [str(p.relative_to(DEMO)) for p in kt]
    r = run([ctx.tools.ktlint, "--relative", *rel], "ktlint", cwd=DEMO, ok_codes=(0, 1))
    problems = [line for line in r.stdout.splitlines() if re.match(r"\S+\.kt:\d+:\d+:", line)]
    if r.returncode or problems:
        rules = sorted({m.group(1) for p in problems if (m := re.search(r"\((\S+)\)$", p))})
        return Result("ktlint", False, f"{len(problems)} problems ({', '.join(rules[:6])})",
                      details={"files": len(kt), "problems": len(problems)},
                      output=_tail("\n".join(problems) or r.stderr))
    return Result("ktlint", True, f"{len(kt)} Kotlin files clean", details={"files": len(kt), "problems": 0})


def check_unit(ctx: Context) -> Result:
    core = sources(CORE, ".kt")
    tests = sources(UNIT_TESTS, ".kt")
    if not core or not tests:
        return Result("unit", False, f"no core sources ({CORE}) or no tests ({UNIT_TESTS})")
    android = [f"{p.relative_to(DEMO)}:{i}" for p in core
               for i, line in enumerate(p.read_text().splitlines(), 1)
               if re.match(r"\s*import android\.", line)]
    if android:
        return Result("unit", False, "core/ must stay pure Kotlin (no android.* imports)",
                      output="\n".join(android))
    classes = build.fresh(ctx.out / "unit-tests")
    libs = [ctx.tools.junit, ctx.tools.hamcrest, ctx.tools.android_json]
    try:
        build.compile_kotlin(ctx.tools, core + tests, libs, classes, "kotlinc (core + tests)",
                             ctx.cfg.jvm_target)
    except ToolError as e:
        return Result("unit", False, e.problem, output=_tail(e.detail))
    names = sorted(str(p.relative_to(classes).with_suffix("")).replace("/", ".")
                   for p in classes.rglob("*Test.class") if "$" not in p.name)
    cp = ":".join(map(str, [classes, ctx.tools.kotlin_stdlib, *libs]))
    # BenchmarkTest writes the report its scripted run produced here, so the host side
    # (flora_export.bench.app.parse_app_report) can be checked on what the app's code writes.
    report = ctx.out / "unit-tests" / "bench-report.json"
    r = run(["java", f"-Dflora.report.out={report}", "-cp", cp, "org.junit.runner.JUnitCore", *names],
            "JUnit", ok_codes=(0, 1))
    ok = re.search(r"^OK \((\d+) tests?\)", r.stdout, re.M)
    bad = re.search(r"^Tests run: (\d+),\s+Failures: (\d+)", r.stdout, re.M)
    details = {"test_classes": len(names), "tests": int(ok.group(1) if ok else bad.group(1) if bad else 0),
               "failures": int(bad.group(2)) if bad else 0,
               "bench_report": str(report) if report.exists() else None}
    if r.returncode or not ok:
        return Result("unit", False, f"JUnit: {details['failures']} of {details['tests']} tests failed",
                      details=details, output=_tail(r.stdout, 60))
    return Result("unit", True, f"JUnit OK ({details['tests']} tests in {len(names)} classes)",
                  details=details)


def _badging(apk: Path) -> dict:
    text = run(["aapt", "dump", "badging", apk], "aapt dump badging").stdout

    def get(pattern: str) -> str | None:
        m = re.search(pattern, text, re.M)
        return m.group(1) if m else None

    return {
        "package": get(r"^package: name='([^']*)'"),
        "version_name": get(r"versionName='([^']*)'"),
        "min_sdk": get(r"^sdkVersion:'(\d+)'"),
        "target_sdk": get(r"^targetSdkVersion:'(\d+)'"),
        "launchable_activity": get(r"^launchable-activity: name='([^']*)'"),
        "native_code": (get(r"^native-code: (.*)$") or "").replace("'", "").split(),
    }


def check_apk(ctx: Context) -> Result:
    try:
        record = build.build(ctx.out, ctx.tools)
    except ToolError as e:
        return Result("apk", False, e.problem, output=_tail(e.detail, 60))
    apk = Path(record["apk"])
    verify = run(["apksigner", "verify", "--verbose", apk], "apksigner verify", ok_codes=(0, 1))
    aligned = run(["zipalign", "-c", "-p", "4", apk], "zipalign -c", ok_codes=(0, 1))
    b = _badging(apk)
    cfg = ctx.cfg
    want = {"package": cfg.application_id, "min_sdk": str(cfg.min_sdk), "target_sdk": str(cfg.target_sdk),
            "version_name": cfg.version_name}
    errors = [f"{k} is {b[k]!r}, expected {v!r}" for k, v in want.items() if b[k] != v]
    if b["launchable_activity"] not in cfg.activities:
        errors.append(f"launchable activity {b['launchable_activity']!r} is not one of "
                      f"{list(cfg.activities)}")
    if "arm64-v8a" not in b["native_code"]:
        errors.append(f"native code {b['native_code']} lacks arm64-v8a")
    v2 = "Verified using v2 scheme (APK Signature Scheme v2): true" in verify.stdout
    if verify.returncode or not v2:
        errors.append("apksigner verify: " + _tail(verify.stdout + verify.stderr, 5))
    if aligned.returncode:
        errors.append("zipalign -c: not 4-byte aligned")
    details = {**b, "bytes": record["bytes"], "sha256": record["sha256"],
               "signature_schemes": record["signature_schemes"], "build_seconds": record["seconds"]}
    if errors:
        return Result("apk", False, "; ".join(errors), details=details)
    return Result("apk", True, f"{b['package']} {b['version_name']}, {record['bytes'] / 1e6:.1f} MB, signed "
                  f"{'+'.join(record['signature_schemes'])}, launchable {b['launchable_activity']}",
                  details=details)


def check_api(ctx: Context) -> Result:
    apk = ctx.out / build.APK_NAME
    if not apk.exists():
        return Result("api", False, f"no APK at {apk}; run the apk check first")
    try:
        report = apicheck.check(apk, ctx.cfg.namespace, ctx.cfg.activities, ctx.tools)
        stub_methods, stub_problems = apicheck.check_stubs(ctx.out / "android-stubs.jar",
                                                           apicheck.FrameworkDB.load(ctx.tools))
    except ToolError as e:
        return Result("api", False, e.problem, output=_tail(e.detail))
    details = {"android_refs": len(report.android_calls), "framework_refs": len(report.framework_calls),
               "not_found": report.missing + report.component_errors, "activities": report.components,
               "stub_methods": stub_methods, "stub_problems": stub_problems}
    output = ["MISSING " + m for m in report.missing + report.component_errors]
    output += ["STUB " + m for m in stub_problems]
    return Result("api", report.ok and not stub_problems,
                  f"{report.summary()}; {stub_methods} stub methods, {len(stub_problems)} unknown",
                  details=details, output="\n".join(output))


CHECKS = {"xml": check_xml, "resources": check_resources, "ktlint": check_ktlint, "unit": check_unit,
          "apk": check_apk, "api": check_api}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help=f"comma-separated subset of: {', '.join(CHECKS)}")
    ap.add_argument("--out", type=Path, default=BUILD, help="build folder (default: android_demo/build)")
    ap.add_argument("--json", type=Path, help="result file (default: <out>/check.json)")
    args = ap.parse_args(argv)
    names = list(CHECKS) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        print(f"check: error: unknown check {unknown[0]!r}; choose from {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    try:
        ctx = Context(Tools.locate(), AppConfig.read(), args.out.resolve())
    except ToolError as e:
        return fail("check", e)
    ctx.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in names:
        print(f"--- {name}", flush=True)
        t0 = time.perf_counter()
        res = CHECKS[name](ctx)
        res.seconds = round(time.perf_counter() - t0, 1)
        if res.output and not res.ok:
            print(res.output)
        print(f"{'PASS' if res.ok else 'FAIL'} {name}: {res.reason} ({res.seconds} s)", flush=True)
        results.append(res)
    passed = sum(r.ok for r in results)
    (args.json or ctx.out / "check.json").write_text(json.dumps(
        {"format": "flora-chat-check/1", "passed": passed, "failed": len(results) - passed,
         "checks": [asdict(r) for r in results]}, indent=2) + "\n")
    print(f"android checks: {passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
