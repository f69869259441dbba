"""Parity of an exported Core ML package, run on macOS (Core ML predicts only there).

    python -m flora_export.export.coreml_parity flora-out/ios [--compute-units all|cpu|gpu|ane]

Runs `model.mlpackage` from an export folder (`--target coreml` or `ios`) through Core ML
exactly as an app does: one state, a prompt prefill, then single-token decode steps
through the KV cache, teacher-forced on the same tokens the export verified with
(`coreml_reference.safetensors`). The logits are compared with the eager model's
(for quantized exports: the eager model carrying the package's dequantized weights)
using the export's thresholds (the lowering gate, then the quality gate against the fp32
logits; docs/verification.md): Core ML computes in fp16, so the lossy-path criteria apply
to every `--quant`. Prints the figures
as JSON; exit 0 when they pass, 1 when they do not, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import FloraError
from ..verify import VerifyConfig, compare, enforce, judge_lowering, judge_quality, run_steps
from .coreml import INPUTS, OUTPUTS, PACKAGE, REFERENCE, causal_mask

UNITS = {"all": "ALL", "cpu": "CPU_ONLY", "gpu": "CPU_AND_GPU", "ane": "CPU_AND_NE"}


def package_step(path: Path, compute_units: str = "all"):
    """A verify Step predicting with the package (one fresh state for the sequence)."""
    import coremltools as ct

    model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, UNITS[compute_units]))
    state = model.make_state()

    def step(tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        mask = causal_mask(tokens.shape[1], int(pos[0])).numpy().astype(np.float16)
        out = model.predict({INPUTS[0]: tokens.numpy().astype(np.int32), INPUTS[1]: mask},
                            state=state)
        return torch.from_numpy(np.asarray(out[OUTPUTS[0]], dtype=np.float32)).reshape(-1)
    return step


def _thresholds(manifest: dict) -> VerifyConfig:
    """The export's thresholds: its lowering gate's and its quality gate's (older
    manifests held both in `parity.thresholds_on_macos`)."""
    record = manifest["results"]["coreml"]
    if "thresholds_on_macos" in record["parity"]:
        return VerifyConfig(**record["parity"]["thresholds_on_macos"])
    return VerifyConfig(**{**record["quality"]["thresholds"], **record["parity"]["thresholds"]})


def run_parity(folder: str | Path, compute_units: str = "all") -> dict:
    """Predict with the package and compare; raises FloraError when a threshold fails."""
    from safetensors import safe_open

    folder = Path(folder)
    if sys.platform != "darwin":
        raise FloraError("Core ML predictions need macOS (coremltools cannot run a model on "
                         f"{sys.platform})", "run this on a Mac with macOS 15 or later")
    missing = [n for n in (PACKAGE, REFERENCE, "manifest.json") if not (folder / n).exists()]
    if missing:
        raise FloraError(f"{folder} is not a Core ML export folder (missing {', '.join(missing)})",
                         "pass the --out folder of flora-export --target coreml or ios")
    with safe_open(str(folder / REFERENCE), "pt") as f:
        meta = f.metadata()
        tokens, reference, fp32 = (f.get_tensor(k) for k in
                                   ("tokens", "reference_logits", "fp32_logits"))
    prompt_len, steps = int(meta["prompt_len"]), int(meta["steps"])
    got = run_steps(package_step(folder / PACKAGE, compute_units), tokens, prompt_len, steps)
    manifest = json.loads((folder / "manifest.json").read_text())
    cfg, bound = _thresholds(manifest), f"max_seq {manifest['runtime']['max_seq_len']}"
    parity = judge_lowering(compare(list(reference), got, cfg.decisive_k, cfg.min_sqnr_db),
                            True, cfg, bound)
    parity.quant_sqnr_db_vs_fp32 = compare(list(fp32), list(reference)).sqnr_db
    enforce(parity, "the Core ML package")
    quality = judge_quality(compare(list(fp32), got, cfg.decisive_k, cfg.min_quality_sqnr_db),
                            cfg, bound, manifest["model"].get("kind") == "preset", None)
    for p in (parity, quality):       # the whole saved sequence, in one run
        p.extension = {"positions": len(got), "first_round": cfg.decode_steps + 1,
                       "available": len(got), "rounds": [len(got)]}
    enforce(quality, "the Core ML package")
    return {**parity.to_dict(), "quality": quality.to_dict(),
            "package_sqnr_db_vs_fp32": round(quality.sqnr_db, 3),
            "compute_units": compute_units, "package": str(folder / PACKAGE)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flora_export.export.coreml_parity",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  flora-export --target ios --out flora-out/ios\n"
                                       "  python -m flora_export.export.coreml_parity flora-out/ios")
    p.add_argument("folder", help="the export folder (holds model.mlpackage, "
                                  "coreml_reference.safetensors and manifest.json)")
    p.add_argument("--compute-units", choices=sorted(UNITS), default="all",
                   help="Core ML compute units (default all: CPU, GPU and Neural Engine)")
    args = p.parse_args(argv)
    try:
        result = run_parity(args.folder, args.compute_units)
    except FloraError as e:
        print(f"coreml_parity: {'failed' if 'does not match' in e.problem else 'error'}: {e}",
              file=sys.stderr)
        return 1 if "does not match" in e.problem else 2
    print(json.dumps(result, indent=2))
    print("coreml_parity: passed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
