"""Exports checked on ARM64 kernels: the emulated arm64 board of .ci/arm64-board.sh.

A Debian arm64 userland under QEMU user-mode emulation with the PyPI aarch64 wheels of
ExecuTorch and ONNX Runtime, reached over a real OpenSSH server on loopback. The exports
are built here (x86-64) and `flora-export verify --device ssh:` re-runs their runtime
check there, against the eager logits stored in the export, with the export's thresholds,
on two emulated CPUs: QEMU's `max` without SME (dot product, i8mm, SVE2: XNNPACK's
KleidiAI kernels) and `a64fx` (no dot product: XNNPACK's plain NEON int8 kernels). An ARMv8.0 core
(`cortex-a72`, the Raspberry Pi 4's) is refused in one line for ExecuTorch.

Under CI=true these tests fail when the board is missing (.ci/run sets it up); elsewhere
they skip with the setup command. Emulation is ~30x slower than native: every export's
check on one CPU runs in one board session (one runtime import).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import randomize_adapter
from flora_export.verify_cli import ARM64_SQNR_ALLOWANCE_DB

pytest.importorskip("executorch")
pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "arm64-board.sh"
BOARD_DIR = Path(os.environ.get("FLORA_ARM64_DIR", "/opt/flora-arm64"))
HINT = f"needs the emulated arm64 board: sudo {SCRIPT.relative_to(ROOT)} setup (docs/arm64.md)"
IN_CI = os.environ.get("CI", "").lower() == "true"
# QEMU's `max` without SME: QEMU 7.2's SME emulation cannot be trusted (XNNPACK's int8
# weight kernels give wrong logits with it and right ones with sme=off; docs/arm64.md)
CPUS = {"max,sme=off": {"asimddp", "i8mm", "atomics", "sve2"}, "a64fx": {"atomics", "sve"}}
ET_EXPORTS = ("et-8da4w", "et-int8", "et-fp32", "et-lora-unmerged")
# The largest SQNR cost of ExecuTorch's ARM kernels against x86, measured on these exports'
# kinds, rounded up to 0.5 dB (1.25 -> 1.5 dB): verify_cli's allowance, which
# tests/test_verify_cli.py keeps equal to benchmarks/results/arm64_spread.json (docs/arm64.md)
ET_ARM64_COST_DB = ARM64_SQNR_ALLOWANCE_DB["executorch"]


def _board_or_skip() -> None:
    stamp = BOARD_DIR / "wheels.stamp"
    if os.geteuid() != 0 or not stamp.exists():
        why = "not root" if os.geteuid() != 0 else f"no {stamp}"
        if IN_CI:
            pytest.fail(f"the arm64 board is missing under CI ({why}): {HINT}")
        pytest.skip(f"{HINT} ({why})")


def _script(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)
    if check and proc.returncode:
        pytest.fail(f"{SCRIPT.name} {' '.join(args)} failed: {proc.stderr.strip()[-400:]}")
    return proc


def _board_facts(cpu: str) -> dict:
    _script("start", "--cpu", cpu)
    return json.loads((BOARD_DIR / "board.json").read_text())


def _ssh_args(board: dict) -> list[str]:
    return ["--device", f"ssh:{board['host']}", "--ssh-port", str(board["port"]),
            "--ssh-identity", board["identity"], "--ssh-known-hosts", board["known_hosts"]]


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=env)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """The default model + FFBA adapter (fused) to android in 8da4w / int8 / fp32, the tiny
    preset to onnx in int4, and a LoRA adapter kept unmerged (tiny preset), built here."""
    from flora_export.adapters import LoraConfig, attach_lora, load_adapter
    from flora_export.default import DEFAULT_ADAPTER, DEFAULT_BASE
    from flora_export.export import ExportConfig, export
    from flora_export.model import load_model

    _board_or_skip()          # nothing to build when there is no board
    d = tmp_path_factory.mktemp("arm64")
    out = {}
    for name, target, quant in [("et-8da4w", "android", "8da4w"), ("et-int8", "android", "int8"),
                                ("et-fp32", "android", "fp32")]:
        model = load_model(DEFAULT_BASE)
        load_adapter(model, DEFAULT_ADAPTER)
        export(model, target, d / name, ExportConfig(quant=quant, max_seq=64))
        out[name] = d / name
    # ONNX int4: the random-weight tiny preset (a second shape beside the default's; its ARM
    # spread is measured in benchmarks/results/arm64_spread.json)
    export(load_model("tiny"), "onnx", d / "onnx-int4", ExportConfig(quant="8da4w", max_seq=64))
    out["onnx-int4"] = d / "onnx-int4"
    model = load_model("tiny")
    attach_lora(model, LoraConfig(rank=8, alpha=16.0))
    randomize_adapter(model, std=0.02)
    export(model, "android", d / "et-lora-unmerged", ExportConfig(quant="8da4w", max_seq=64))
    out["et-lora-unmerged"] = d / "et-lora-unmerged"
    return out


@pytest.fixture(scope="module", params=sorted(CPUS))
def verified(request, exports, tmp_path_factory) -> dict:
    """`flora-export verify` of every export on the board with QEMU_CPU=param (one session)."""
    cpu = request.param
    board = _board_facts(cpu)
    report = tmp_path_factory.mktemp(f"verify-{cpu}") / "verify.json"
    proc = _cli("flora_export.cli", "verify", *map(str, exports.values()), *_ssh_args(board),
                "--json", str(report))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-1000:]
    results = {name: r for name, r in zip(exports, json.loads(report.read_text()))}
    return {"cpu": cpu, "results": results, "stdout": proc.stdout}


def test_the_board_is_an_arm64_cpu_with_the_expected_features(verified):
    for r in verified["results"].values():
        f = r["facts"]
        assert f["arch"] == "aarch64" and f["qemu_cpu"] == verified["cpu"]
        assert f["features_source"] == "HWCAP"
        assert CPUS[verified["cpu"]] <= set(f["features"])
        assert "sme" not in f["features"]
        if verified["cpu"] == "a64fx":          # the no-dot-product kernel path
            assert "asimddp" not in f["features"] and "i8mm" not in f["features"]
        assert f["versions"]["executorch"] == "1.5.1" and "onnxruntime" in f["versions"]


def test_runtime_tokenizer_gate_reruns_on_arm64(verified):
    for name, r in verified["results"].items():
        backend = "onnx" if name.startswith("onnx") else "executorch-xnnpack"
        tok = r["tokenizer"][backend]
        assert tok["passed"] and tok["mismatch_count"] == 0 and tok["probes"] > 50, (name, tok)


@pytest.mark.parametrize("name", ET_EXPORTS)
def test_executorch_export_matches_on_arm64(verified, name):
    r = verified["results"][name]["results"]["executorch"]
    p, x86 = r["parity"], r["export_parity"]
    assert r["passed"] and p["passed"] and r["positions"] == p["steps"] == x86["steps"] >= 9
    want = dict(x86["thresholds"])      # the export's own: fp32's tolerance as it is, the
    if "min_sqnr_db" in want:           # SQNR one less ExecuTorch's measured ARM64 allowance
        want.update(min_sqnr_db=want["min_sqnr_db"] - ET_ARM64_COST_DB,
                    arm64_sqnr_allowance_db=ET_ARM64_COST_DB)
    assert p["thresholds"] == want
    assert p["token_agreement"] == x86["token_agreement"] == 1.0
    if x86["sqnr_db"] is not None and x86["sqnr_db"] < 60:   # lossy on x86 too: ARM64 cost
        assert p["sqnr_db"] >= x86["sqnr_db"] - ET_ARM64_COST_DB, (p["sqnr_db"], x86["sqnr_db"])


@pytest.mark.parametrize("engine", ["onnxruntime", "ort-genai"])
def test_onnx_int4_export_matches_on_arm64(verified, engine):
    r = verified["results"]["onnx-int4"]["results"][engine]
    p = r["parity"]
    assert r["backend"] == "onnx" and r["passed"] and p["passed"] and p["steps"] >= 9
    assert p["sqnr_db"] >= p["thresholds"]["min_sqnr_db"]


def test_armv8_0_cpu_is_refused_in_one_line_for_executorch(exports):
    board = _board_facts("cortex-a72")
    try:
        proc = _cli("flora_export.cli", "verify", str(exports["et-8da4w"]), *_ssh_args(board))
    finally:
        _script("start", "--cpu", "max,sme=off")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "LSE atomics" in err[0] and "Traceback" not in proc.stderr


def test_flora_bench_over_ssh_on_the_arm64_board(exports, tmp_path):
    board = _board_facts("max,sme=off")
    out = tmp_path / "bench"
    proc = _cli("flora_export.bench.cli", str(exports["et-8da4w"]), *_ssh_args(board),
                "--remote-python", "python3", "--runs", "1", "--warmup", "0", "--prompt-len", "8",
                "--gen-len", "4", "--threads", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    r = json.loads((out / "bench.json").read_text())
    assert r["device_before"]["arch"] == "aarch64"
    assert [s["generated_tokens"] for s in r["artifacts"]["et-8da4w"]["samples"]] == [4]


def test_flora_bench_refuses_a_board_whose_host_key_is_not_in_known_hosts(exports, tmp_path):
    board = _board_facts("max,sme=off")
    other = tmp_path / "known_hosts"
    other.write_text(f"[127.0.0.1]:{board['port']} ssh-ed25519 "
                     "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    proc = _cli("flora_export.bench.cli", str(exports["et-8da4w"]),
                *_ssh_args({**board, "known_hosts": str(other)}), "--runs", "1",
                "--prompt-len", "8", "--gen-len", "4",
                "--out", str(tmp_path / "bench"))
    assert proc.returncode == 2 and not (tmp_path / "bench").exists()
    assert "flora-bench: error: ssh" in proc.stderr and "Traceback" not in proc.stderr
