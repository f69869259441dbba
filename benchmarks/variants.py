"""The latency benchmark's variants, built with flora-export's own API (random weights).

One export per (variant, backend), each in its own process so that its wall time and
peak RSS are its own; a directory that already holds a manifest is reused.

    base          the preset, no adapter
    lora          LoRA r=16 on all 7 projections, unmerged (extra low-rank matmuls)
    lora-merged   the same LoRA merged into the weights
    ffba-fused    FFBA at LoRA r=16's trainable-parameter budget, fused (padded to 32)
    ffba-unfused  the same FFBA exported unfused (its own down/up matmuls)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("base", "lora", "lora-merged", "ffba-fused", "ffba-unfused")
BACKEND_TARGETS = {"executorch": "android", "onnx": "onnx", "ios": "ios"}
LORA_RANK = 16
ROOT = Path(__file__).resolve().parents[1]


def budget_width(preset: str, rank: int = LORA_RANK) -> int:
    """The FFBA width whose trainable parameters match LoRA r=`rank` on all 7 projections."""
    from flora_export.model import PRESETS
    from flora_export.train.budget import ffba_width_for_lora

    return ffba_width_for_lora(PRESETS[preset], rank).ffba_width


def _randomize(model, seed: int = 1, std: float = 0.02) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:   # bf16-exact values, as the preset's: a fused weight stays bf16
                p.copy_(p.normal_(0.0, std, generator=gen).bfloat16())


def build_one(preset: str, variant: str, backend: str, out: Path, max_seq: int) -> dict:
    """Build one export in this process; returns its manifest."""
    from flora_export import (ExportConfig, FFBAConfig, LoraConfig, attach_ffba, attach_lora,
                              export, load_model, merge_lora)

    model = load_model(preset)
    fuse = True
    if variant.startswith("lora"):
        attach_lora(model, LoraConfig(rank=LORA_RANK, alpha=2.0 * LORA_RANK))
        _randomize(model)
        if variant == "lora-merged":
            merge_lora(model)
    elif variant.startswith("ffba"):
        width = budget_width(preset)
        attach_ffba(model, FFBAConfig(width=width, alpha=2.0 * width))
        _randomize(model)
        fuse = variant == "ffba-fused"
    elif variant != "base":
        raise SystemExit(f"unknown variant {variant}; use one of {VARIANTS}")
    return export(model, BACKEND_TARGETS[backend], out,
                  ExportConfig(quant="8da4w", max_seq=max_seq, fuse_adapters=fuse, force=True,
                               free_weights=True))


def build_all(preset: str, variants, backends, work: Path, max_seq: int) -> dict[str, dict]:
    """{backend: {variant: export dir}}, building what is missing in child processes.

    A variant whose export fails is left out; its reason is in work/logs/BACKEND-VARIANT.error.
    """
    dirs: dict[str, dict] = {}
    for backend in backends:
        dirs[backend] = {}
        for variant in variants:
            out, logs = work / backend / variant, work / "logs" / f"{backend}-{variant}"
            if logs.with_suffix(".error").exists() and not (out / "manifest.json").exists():
                print(f"skipping {backend}/{variant}: its export failed before "
                      f"(delete {logs.with_suffix('.error')} to retry)", flush=True)
                continue
            if not (out / "manifest.json").exists():
                print(f"building {backend}/{variant} -> {out}", flush=True)
                try:
                    cost = run_measured([sys.executable, __file__, preset, variant, backend,
                                         str(out), str(max_seq)], logs.with_suffix(".log"))
                except RuntimeError as e:
                    logs.with_suffix(".error").write_text(str(e))
                    print(f"  {e}", flush=True)
                    continue
                logs.with_suffix(".cost.json").write_text(json.dumps(cost))
            dirs[backend][variant] = out
    return dirs


def build_error(work: Path, backend: str, variant: str) -> str | None:
    path = work / "logs" / f"{backend}-{variant}.error"
    return path.read_text() if path.exists() else None


def run_measured(cmd: list[str], log: Path, cwd: Path | None = None) -> dict:
    """Run a command; its wall time and its own peak RSS (wait4 rusage of that child; it
    counts the parent's peak at the fork, so callers keep their own process small), and
    the load average before and after (other work on the machine)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if status:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        raise RuntimeError(f"{lines[-1] if lines else 'failed'} (log: {log})")
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(usage.ru_maxrss / 1024 ** 2, 2),
            "loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


if __name__ == "__main__":                       # one build, in its own process
    preset_, variant_, backend_, out_, max_seq_ = sys.argv[1:6]
    build_one(preset_, variant_, backend_, Path(out_), int(max_seq_))
