"""`flora-export verify DIR` on this machine: the stored reference, the re-run, bad input.

The ARM64 runs of the same command are in tests/test_arm64.py (emulated board).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flora_export.board import cpuinfo, unsupported

pytest.importorskip("executorch")
ROOT = Path(__file__).resolve().parents[1]


def _verify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flora_export.cli", "verify", *args],
                          capture_output=True, text=True, cwd=ROOT)


def test_export_stores_the_reference_its_runtime_was_checked_against(bench_et_export):
    from flora_export.export.reference import read_verify_reference

    m = json.loads((bench_et_export / "manifest.json").read_text())
    rec = m["verify_reference"]
    assert rec["file"] in m["files"]
    tokens, prompt_len, refs = read_verify_reference(bench_et_export / rec["file"])
    n = m["results"]["executorch-xnnpack"]["parity"]["steps"]
    assert rec["positions"] == {"executorch-xnnpack": n} and refs["executorch-xnnpack"].shape[0] == n
    assert tokens.shape[1] >= prompt_len + n - 1 and prompt_len == rec["prompt_len"]


def test_verify_on_this_machine_passes_with_the_exports_thresholds(bench_et_export, tmp_path):
    proc = _verify(str(bench_et_export), "--json", str(tmp_path / "v.json"))
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "v.json").read_text())
    et = r["results"]["executorch"]
    assert et["passed"] and et["backend"] == "executorch-xnnpack"
    assert et["parity"]["thresholds"] == et["export_parity"]["thresholds"]
    assert et["parity"]["max_abs_diff"] <= et["parity"]["thresholds"]["fp32_atol"]
    assert r["facts"]["versions"]["executorch"] and "executorch-xnnpack (executorch)  passed" in proc.stdout
    tok = r["tokenizer"]["executorch-xnnpack"]          # the export's tokenizer gate, re-run
    assert tok["passed"] and tok["enforced"] and tok["mismatch_count"] == 0 and tok["probes"] > 50


def test_a_changed_reference_fails_in_one_line_with_exit_1(bench_et_export, tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    d = tmp_path / "export"
    shutil.copytree(bench_et_export, d)
    f = d / "verify_reference.safetensors"
    with safe_open(str(f), "pt") as h:
        meta = h.metadata()
    t = load_file(str(f))
    t["executorch-xnnpack.reference_logits"][-1, 0] += 1.0
    save_file(t, str(f), metadata=meta)
    proc = _verify(str(d))
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1, proc.stderr
    assert err[0].startswith("flora-export verify: failed:") and "does not match" in err[0]


@pytest.mark.parametrize("args, words", [
    (["--device", "android"], "needs an Android build of the step runner"),
    (["--device", "android:emulator-5554"], "needs an Android build of the step runner"),
    (["--device", "usb:x"], "unknown device"),
])
def test_bad_devices_are_refused_in_one_line(bench_et_export, args, words):
    proc = _verify(str(bench_et_export), *args)
    assert proc.returncode == 2 and words in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_not_an_export_and_an_export_without_reference_are_refused(bench_et_export, tmp_path):
    proc = _verify(str(tmp_path))
    assert proc.returncode == 2 and "is not a flora-export output" in proc.stderr
    d = tmp_path / "old"
    shutil.copytree(bench_et_export, d)
    (d / "verify_reference.safetensors").unlink()
    proc = _verify(str(d))
    assert proc.returncode == 2 and "export it again" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_isa_check_names_what_an_armv8_0_core_lacks():
    v80 = {"arch": "aarch64", "cpu": "implementer 0x41 part 0xd08",
           "features": ["fp", "asimd", "evtstrm", "crc32", "cpuid"]}
    why = unsupported("executorch-xnnpack", v80)
    assert "LSE atomics" in why and "Raspberry Pi" in why
    assert unsupported("onnx", v80) is None
    assert unsupported("executorch-xnnpack", {**v80, "features": v80["features"] + ["atomics"]}) is None
    assert unsupported("executorch-xnnpack", {**v80, "arch": "x86_64"}) is None


def test_cpuinfo_has_one_block_per_core():
    text = cpuinfo(3)
    assert text.count("processor\t:") == 3 and text.count("CPU implementer\t: 0x") == 3


def test_arm64_allowances_are_the_measured_ones():
    """ARM64_SQNR_ALLOWANCE_DB = benchmarks/results/arm64_spread.json's derived figures, and
    that file's ARM figures clear the export's SQNR threshold less the allowance."""
    from flora_export.verify import VerifyConfig
    from flora_export.verify_cli import ARM64_SQNR_ALLOWANCE_DB

    spread = json.loads((ROOT / "benchmarks/results/arm64_spread.json").read_text())
    derived = spread["derived"]
    assert {e: d["allowance_db"] for e, d in derived.items()} == ARM64_SQNR_ALLOWANCE_DB
    for e, d in derived.items():
        assert d["allowance_db"] >= d["max_sqnr_drop_db_arm_vs_x86"] or d["allowance_db"] == 0 \
            and d["max_sqnr_drop_db_arm_vs_x86"] < 1
    floor = VerifyConfig().min_sqnr_db
    for row in spread["results"].values():
        for cpu in ("max,sme=off", "a64fx"):
            got = row[f"aarch64-{cpu}_vs_eager"]["sqnr_db"]
            assert got is None or got >= floor - ARM64_SQNR_ALLOWANCE_DB[row["engine"]]
