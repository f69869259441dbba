"""ios_demo/: the iOS chat app (SwiftUI, Core ML, ExecuTorch) and its Swift core.

What Linux can check, and is checked here:
* every Swift file parses (tree-sitter-swift; `swiftc -parse` too where the toolchain is);
* the app's Info.plist and XcodeGen spec (file sharing into Documents, bundle id, ExecuTorch
  products and -all_load), and that the core package imports nothing Apple-only;
* with the Linux Swift toolchain (ios_demo/tools/swift-toolchain.sh, Swift 6.0.3 in a
  Debian trixie chroot under /opt/flora-swift): the core builds, its XCTest suite passes,
  a benchmark report made by the Swift core parses with flora-bench's reader and yields the
  same figures, the core reads a real flora-export manifest, and SwiftLint passes.
Without that toolchain those tests skip and say how to install it. Type-checking and
running the app itself (SwiftUI, Core ML, ExecuTorchLLM) needs a Mac: ios_demo/README.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import plistlib
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IOS = ROOT / "ios_demo"
CHECK = IOS / "tools" / "check.sh"
SWIFT_ROOT = Path(os.environ.get("FLORA_SWIFT_ROOT", "/opt/flora-swift"))


def _syntax_module():
    spec = importlib.util.spec_from_file_location("swift_syntax", IOS / "tools" / "swift_syntax.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def syntax():
    pytest.importorskip("tree_sitter", reason="pip install -e '.[test]' (tree-sitter, tree-sitter-swift)")
    pytest.importorskip("tree_sitter_swift", reason="pip install -e '.[test]' (tree-sitter-swift)")
    return _syntax_module()


def test_every_swift_file_parses(syntax):
    files = syntax.swift_files()
    names = {p.relative_to(IOS).as_posix() for p in files}
    assert {"Package.swift", "App/FloraChat/CoreMLEngine.swift", "App/FloraChat/ExecuTorchEngine.swift",
            "App/FloraChat/ChatView.swift", "Sources/FloraChatCore/DecodeLoop.swift"} <= names
    assert syntax.check(files) == []


def test_the_syntax_check_catches_a_planted_error(syntax, tmp_path):
    source = (IOS / "App" / "FloraChat" / "ChatView.swift").read_text()
    line = next(i for i, text in enumerate(source.splitlines(), 1) if 'Button("Rescan")' in text)
    broken = tmp_path / "Broken.swift"
    broken.write_text(source.replace('Button("Rescan")', 'Button("Rescan"', 1))
    problems = syntax.check([broken])
    lines = [int(p.split(":")[1]) for p in problems]
    assert problems and all(p.startswith(f"{broken}:") for p in problems), problems
    assert min(lines) in (line, line + 1) and any("missing )" in p for p in problems), problems
    assert syntax.main([str(broken)]) == 1 and syntax.main([str(IOS / "Package.swift")]) == 0


def test_the_app_can_receive_exports_and_links_the_runtimes():
    plist = plistlib.loads((IOS / "App" / "FloraChat" / "Info.plist").read_bytes())
    assert plist["UIFileSharingEnabled"] is True and plist["LSSupportsOpeningDocumentsInPlace"] is True
    assert plist["CFBundleIdentifier"] == "$(PRODUCT_BUNDLE_IDENTIFIER)"
    yaml = pytest.importorskip("yaml")
    spec = yaml.safe_load((IOS / "App" / "project.yml").read_text())
    target = spec["targets"]["FloraChat"]
    assert target["settings"]["base"]["PRODUCT_BUNDLE_IDENTIFIER"] == "dev.flora.chat"
    assert target["settings"]["base"]["INFOPLIST_FILE"] == "FloraChat/Info.plist"
    assert "-all_load" in target["settings"]["base"]["OTHER_LDFLAGS"]
    assert spec["options"]["deploymentTarget"]["iOS"] == "18.0"          # MLState
    products = {(d.get("package"), d.get("product")) for d in target["dependencies"]}
    assert {("executorch", p) for p in ("executorch", "executorch_llm", "backend_xnnpack", "kernels_llm",
                                        "kernels_optimized", "kernels_quantized")} <= products
    assert ("FloraChatCore", "FloraChatCore") in products
    assert spec["packages"]["FloraChatCore"]["path"] == ".."
    # The executorch runtime branch matches the exporter's executorch pin.
    pin = re.search(r'"executorch==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert spec["packages"]["executorch"]["branch"] == f"swiftpm-{pin}"


def test_the_core_imports_nothing_apple_only():
    imports = {m for p in (IOS / "Sources").rglob("*.swift")
               for m in re.findall(r"^\s*import\s+(\w+)", p.read_text(), re.M)}
    assert imports <= {"Foundation", "Darwin", "Glibc", "FloraChatCore"}, imports
    app = {m for p in (IOS / "App").rglob("*.swift")
           for m in re.findall(r"^import\s+(\w+)", p.read_text(), re.M)}
    assert {"SwiftUI", "CoreML", "ExecuTorchLLM", "Tokenizers", "FloraChatCore"} <= app


# --- with the Linux Swift toolchain -------------------------------------------------------

def _toolchain_reason() -> str | None:
    if not (SWIFT_ROOT / ".flora-swift-ok").is_file():
        return (f"no Linux Swift toolchain in {SWIFT_ROOT}: install it with "
                "`sudo ios_demo/tools/swift-toolchain.sh` (Swift 6.0.3, Debian trixie chroot)")
    if os.geteuid() != 0:
        return "ios_demo/tools/check.sh needs root (chroot)"
    return None


needs_swift = pytest.mark.skipif(_toolchain_reason() is not None, reason=_toolchain_reason() or "")


def _check(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHECK), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def swift_test(tmp_path_factory):
    """`check.sh build test`: (output, the benchmark report the Swift core wrote)."""
    out = tmp_path_factory.mktemp("swift_out")
    r = _check("build", "test", env={"FLORA_SWIFT_OUT": str(out)})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    return r.stdout, json.loads((out / "bench-report.json").read_text())


@needs_swift
def test_swift_core_tests_pass(swift_test):
    output, _ = swift_test
    declared = sum(len(re.findall(r"^\s*func test\w+\(", p.read_text(), re.M))
                   for p in (IOS / "Tests").rglob("*.swift"))
    summary = re.findall(r"Executed (\d+) tests?, with (\d+) failures? \((\d+) unexpected\)", output)
    assert summary, output[-3000:]
    assert summary[-1] == (str(declared), "0", "0"), summary[-1]
    assert declared >= 45


@needs_swift
def test_swift_core_report_parses_with_flora_bench(swift_test):
    app = pytest.importorskip("flora_export.bench.app", reason="flora-bench's app-report reader")
    _, report = swift_test
    samples, peak, info = app.parse_app_report(report)
    # The Swift test's scripted engine: 100 ms to the first of 5 pieces, 20 ms between them.
    assert len(samples) == 3 and all(s["source"] == "observer" for s in samples)
    for s in samples:
        assert s["ttft_ms"] == pytest.approx(100.0) and s["tpot_ms"] == pytest.approx(20.0)
        assert s["generated_tokens"] == 5 and s["prompt_tokens"] == 7      # len("<s>[p0]")
        assert {k: s["app"][k] for k in ("ttft_ms", "tpot_ms", "generated_tokens")} == \
            {"ttft_ms": 100, "tpot_ms": 20, "generated_tokens": 5}         # the app clock agrees
    assert [s["app"]["prompt_index"] for s in samples] == [0, 1, 0]
    assert info["engine"] == "app:dev.flora.chat 0.1.0" and info["load_s"] == 0.042
    assert info["model"]["engine"] == "executorch" and info["config"]["max_new_tokens"] == 16
    assert 1 < peak < 16384                                                # getrusage of the test process


@needs_swift
def test_pulled_reports_tabulate_with_flora_bench(swift_test, tmp_path, capsys):
    pytest.importorskip("flora_export.bench.app", reason="flora-bench's app-report reader")
    from flora_export.bench.cli import main as bench_main
    good, bad = tmp_path / "r1.json", tmp_path / "bad.json"
    good.write_text(json.dumps(swift_test[1]))
    bad.write_text(json.dumps({**swift_test[1], "status": "error", "error": "x lacks a .pte program"}))
    assert bench_main(["--reports", f"swift={good}", "--out", str(tmp_path / "out")]) == 0
    art = json.loads((tmp_path / "out" / "bench.json").read_text())["artifacts"]["swift"]
    assert len(art["samples"]) == 3 and {s["source"] for s in art["samples"]} == {"observer"}
    assert art["summary"]["ttft_ms"]["median"] == 100.0 and art["summary"]["decode_tps"]["median"] == 50.0
    assert bench_main(["--reports", str(good), str(bad)]) == 2
    assert "x lacks a .pte program" in capsys.readouterr().err


@needs_swift
def test_swift_core_reads_a_real_export(bench_et_export):
    r = _check("inspect", str(bench_et_export), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    manifest = json.loads((bench_et_export / "manifest.json").read_text())
    runtime = manifest["runtime"]
    assert seen["engines"] == ["executorch"] and seen["mlpackage"] is None
    assert seen["pte"] == next(p.name for p in bench_et_export.glob("*.pte"))
    assert seen["tokenizer"] == "tokenizer.json" and seen["target"] == manifest["target"]
    assert seen["max_seq_len"] == runtime["max_seq_len"] == 128
    assert seen["bos_id"] == runtime["bos_id"] and seen["eos_ids"] == runtime["eos_ids"]
    chat = runtime.get("chat")
    if chat:
        assert seen["chat"]["template"] == chat["template"] and seen["chat"]["stop"] == chat["stop"]
        assert seen["first_turn"] == chat["template"].replace("{prompt}", "hello")
    else:
        assert seen["chat"]["template"] == "{prompt}" and seen["first_turn"] == "hello"
    assert seen["label"].endswith(manifest["quantization"]["name"])


@needs_swift
def test_swift_core_reads_a_real_core_ml_export(tiny_base, tiny_ffba, tmp_path):
    """A `--target coreml` manifest: Core ML only, written as strict JSON (the lossless
    torch-program check's infinite SQNR is null, not Python's bare `Infinity`)."""
    pytest.importorskip("coremltools", reason="pip install -e '.[coreml]'")
    from flora_export.cli import main
    out = tmp_path / "coreml"
    assert main(["--target", "coreml", "--model", str(tiny_base), "--adapter", str(tiny_ffba),
                 "--out", str(out), "--max-seq", "64", "--quant", "fp32"]) == 0
    text = (out / "manifest.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    r = _check("inspect", str(out), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    manifest = json.loads(text)
    runtime = manifest["runtime"]
    assert seen["engines"] == ["coreml"] and seen["pte"] is None
    assert seen["mlpackage"] == runtime["coreml"]["package"] == "model.mlpackage"
    assert seen["max_seq_len"] == runtime["max_seq_len"] == runtime["coreml"]["max_context"] == 64
    assert seen["eos_ids"] == runtime["eos_ids"]
    assert seen["label"] == f"coreml · {manifest['model']['name']} + ffba (fused) · fp32"


@needs_swift
def test_app_files_pass_swiftc_parse():
    r = _check("parse")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "[check] all passed (parse)" in r.stdout


@needs_swift
@pytest.mark.skipif(not (SWIFT_ROOT / "usr/local/bin/swiftlint").exists(),
                    reason="SwiftLint is not in the Swift chroot (npm was missing when "
                           "swift-toolchain.sh ran)")
def test_swift_sources_pass_swiftlint_strict():
    r = _check("lint")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "[check] all passed (lint)" in r.stdout
