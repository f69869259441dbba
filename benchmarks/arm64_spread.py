"""How far each runtime's ARM64 kernels are from the eager model and from x86-64.

    sudo .ci/arm64-board.sh setup
    python benchmarks/arm64_spread.py [--out benchmarks/results/arm64_spread.json]

Exports the trained default model (embedded model + FFBA adapter, fused), random-weight
`tiny` models (seeds 0, 1), and `tiny` with a random LoRA r8 adapter kept unmerged (seeds 0,
1: its separate float A/B matmuls beside the quantized ones; tests/test_arm64.py's
`et-lora-unmerged` case) to ONNX int4 and ExecuTorch 8da4w and int8, then runs each export's
verification sequence (flora_export/board.py, the steps of `flora-export verify`) on this
x86-64 host and on the emulated arm64 board with QEMU_CPU=max (dot product, i8mm) and
a64fx (no dot product). Per export and engine it records, with verify.py's compare:
the runtime against the eager reference (the lowering gate's comparison) on each machine,
ARM against x86, and the two ARM CPUs against each other; plus the machine facts. The
ARM64 lowering thresholds in flora_export/verify_cli.py (ARM64_THRESHOLDS) come from
this file (docs/arm64.md states the numbers).
"""

from __future__ import annotations

import argparse
import math
import datetime as dt
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flora_export.export import ExportConfig, export  # noqa: E402
from flora_export.export.output import strict_json  # noqa: E402
from flora_export.export.reference import read_verify_reference  # noqa: E402
from flora_export.verify import compare  # noqa: E402
from flora_export.verify_board import LocalBoard, SshBoard  # noqa: E402

BOARD_DIR = Path("/opt/flora-arm64")
# QEMU's max with and without SME (its SME emulation is suspect: see docs/arm64.md), a64fx
CPUS = ("max,sme=off", "a64fx", "max")
MODELS = [("trained-default", None, 0), ("random-tiny-s0", "tiny", 0),
          ("random-tiny-s1", "tiny", 1), ("lora-unmerged-tiny-s0", "tiny", 0),
          ("lora-unmerged-tiny-s1", "tiny", 1)]
LOSSY_DB = 60.0
TARGETS = [("onnx", "onnx", "8da4w"), ("executorch", "android", "8da4w"),
           ("executorch-int8", "android", "int8")]


def build(out: Path) -> dict[str, Path]:
    import torch

    from flora_export.adapters import LoraConfig, attach_lora, load_adapter
    from flora_export.default import DEFAULT_ADAPTER, DEFAULT_BASE
    from flora_export.model import load_model

    dirs = {}
    for name, preset, seed in MODELS:
        for tname, target, quant in TARGETS:
            model = load_model(preset or DEFAULT_BASE, seed=seed)
            if preset is None:
                load_adapter(model, DEFAULT_ADAPTER)
            if name.startswith("lora-unmerged"):      # as tests/test_arm64.py builds it
                attach_lora(model, LoraConfig(rank=8, alpha=16.0))
                gen = torch.Generator().manual_seed(seed)
                with torch.no_grad():
                    for p in model.parameters():
                        if p.requires_grad:
                            p.normal_(0.0, 0.02, generator=gen)
            d = out / f"{name}.{tname}"
            export(model, target, d, ExportConfig(quant=quant, max_seq=64))
            dirs[d.name] = d
    return dirs


def figures(ref, got) -> dict:
    p = compare(list(ref), list(got))
    return {k: v for k, v in p.to_dict().items()
            if k in ("steps", "max_abs_diff", "sqnr_db", "token_agreement", "decisive_steps",
                     "decisive_agreement")}


def board_run(cpu: str, dirs: dict[str, Path]) -> tuple[dict, list]:
    subprocess.run(["bash", str(ROOT / ".ci" / "arm64-board.sh"), "start", "--cpu", cpu],
                   check=True, capture_output=True)
    b = json.loads((BOARD_DIR / "board.json").read_text())
    board = SshBoard(b["host"], b["port"], b["identity"], b["known_hosts"], "python3")
    return _run(board, dirs)


def _run(board, dirs: dict[str, Path]) -> tuple[dict, list]:
    jobs = [(d, [json.loads((d / "manifest.json").read_text())["backends"][0]])
            for d in dirs.values()]
    return board.run(jobs, 0)


def derive(results: dict) -> dict:
    """Per engine: the largest SQNR drop (vs the eager reference) of ARM64 against x86-64
    over the exports whose x86 figure is lossy (below LOSSY_DB: a near-exact x86 kernel
    says nothing about the quantization noise a gate allows), on the CPUs the CI lane
    uses (not QEMU's SME), and the allowance
    verify_cli.ARM64_SQNR_ALLOWANCE_DB takes from it (rounded up to 0.5 dB; 0 below 1 dB)."""
    out = {}
    for engine in sorted({r["engine"] for r in results.values()}):
        drops = [r["x86_64_vs_eager"]["sqnr_db"] - r[f"aarch64-{cpu}_vs_eager"]["sqnr_db"]
                 for r in results.values() if r["engine"] == engine
                 for cpu in CPUS if "sme=off" in cpu or cpu == "a64fx"
                 if r["x86_64_vs_eager"]["sqnr_db"] and r[f"aarch64-{cpu}_vs_eager"]["sqnr_db"]
                 and r["x86_64_vs_eager"]["sqnr_db"] < LOSSY_DB]
        worst = max(drops)
        out[engine] = {"max_sqnr_drop_db_arm_vs_x86": round(worst, 3),
                       "allowance_db": 0.0 if worst < 1 else math.ceil(worst * 2) / 2}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/arm64_spread.json")
    ap.add_argument("--derive", action="store_true",
                    help="only recompute the derived thresholds of an existing --out file")
    args = ap.parse_args()
    if args.derive:
        out = json.loads(args.out.read_text())
        out["derived"] = derive(out["results"])
        args.out.write_text(json.dumps(strict_json(out), indent=2, allow_nan=False) + "\n")
        print(json.dumps(out["derived"], indent=2))
        return 0
    with tempfile.TemporaryDirectory(prefix="arm64-spread-") as tmp:
        dirs = build(Path(tmp))
        refs = {n: read_verify_reference(d / "verify_reference.safetensors")[2]
                for n, d in dirs.items()}
        runs = {"x86_64": _run(LocalBoard(), dirs)}
        for cpu in CPUS:
            runs[f"aarch64-{cpu}"] = board_run(cpu, dirs)
    machines = {m: reply["facts"] for m, (reply, _) in runs.items()}
    results = {}
    for i, name in enumerate(dirs):
        backend = next(iter(refs[name]))
        logits = {m: got[i] for m, (_, got) in runs.items()}
        for engine in logits["x86_64"]:
            row = {"backend": backend, "engine": engine}
            for m in runs:
                row[f"{m}_vs_eager"] = figures(refs[name][backend], logits[m][engine])
            for cpu in CPUS:
                row[f"aarch64-{cpu}_vs_x86_64"] = figures(logits["x86_64"][engine],
                                                          logits[f"aarch64-{cpu}"][engine])
            row["aarch64-max,sme=off_vs_aarch64-a64fx"] = figures(
                logits["aarch64-a64fx"][engine], logits["aarch64-max,sme=off"][engine])
            results[f"{name}/{engine}"] = row
    summary = {}      # per engine and quantization, per machine: the worst case
    for key in sorted({(r["engine"], k.split(".", 1)[1].split("/")[0]) for k, r in results.items()}):
        rows = [r for k, r in results.items()
                if (r["engine"], k.split(".", 1)[1].split("/")[0]) == key]
        summary["/".join(key)] = {m: {
            "min_sqnr_db_vs_eager": min(r[f"{m}_vs_eager"]["sqnr_db"] or float("inf")
                                        for r in rows),
            "max_abs_diff_vs_eager": max(r[f"{m}_vs_eager"]["max_abs_diff"] for r in rows),
            "min_token_agreement_vs_eager": min(r[f"{m}_vs_eager"]["token_agreement"]
                                                for r in rows),
            **({"max_abs_diff_vs_x86_64": max(r[f"{m}_vs_x86_64"]["max_abs_diff"]
                                              for r in rows)} if m != "x86_64" else {})}
            for m in runs}
    out = {"command": "python benchmarks/arm64_spread.py",
           "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "host": {"machine": platform.machine(), "processor": machines["x86_64"]["cpu"],
                    "python": platform.python_version()},
           "machines": machines, "quant": "8da4w (ONNX: int4 MatMulNBits block 32, "
                                          "accuracy level 4)", "max_seq": 64,
           "summary": summary, "derived": derive(results), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(strict_json(out), indent=2, allow_nan=False) + "\n")
    print(json.dumps(strict_json(summary), indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
