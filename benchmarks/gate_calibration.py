"""Measure faithful exports and derive the export gates' thresholds from them.

    python benchmarks/gate_calibration.py                 # the small cases (~10 min, 2 cores)
    python benchmarks/gate_calibration.py --only llama3.2-1b-executorch-8da4w   # ~6 min, 9 GB
    python benchmarks/gate_calibration.py --derive        # thresholds from the file only

Each case is a real export (flora_export.export.export: quantize, lower, serialize, run in
the real runtime) whose gates only measure: the verification sequence always runs to its
bound (max_seq), and per position the script keeps the reference's top-2 margin relative to
its RMS logit and whether the artifact's greedy token differs, for both gates (lowering: vs
the eager model with the artifact's weights; quality: vs the fp32 model), plus SQNR and the
normalized error statistic u. Cases are merged into benchmarks/results/gate_calibration.json
by name, with this machine's facts (CPU model and flags, load average), and the thresholds
are derived from all cases there by derive() -- the rule flora_export.verify.VerifyConfig's
defaults must follow (tests/test_verify.py checks it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULT = Path(__file__).resolve().parent / "results" / "gate_calibration.json"

# ---------------------------------------------------------------- the rule (pure, on the file)

SQNR_MARGIN_DB = 3.0        # allowed RMS error: sqrt(2) x the worst faithful measurement
MIN_DECISIVE = 20           # agreement needs this many decisive positions ...
MIN_AGREEMENT = 0.9         # ... and then tolerates 2 flips of 20 (one flip never decides)
K_FLOOR = 4.0               # P(Z > 4) = 3e-5 per decisive position for Gaussian errors
ACCURACY_SIGMAS = 3.0       # held-out drop margin: 3 binomial standard deviations


def _floor_half(x: float) -> float:
    return math.floor(x * 2) / 2


def derive(cases: list[dict]) -> dict:
    """The thresholds from the measured cases (flora_export.verify.VerifyConfig follows them).

    min_sqnr_db: the worst lowering SQNR of any case, floored to 0.5 dB, minus 3 dB (the
      gate allows sqrt(2) x the largest RMS error a faithful lowering showed).
    decisive_k: 4: for Gaussian errors at the allowed level a decisive position flips
      with probability P(Z > 4) = 3e-5; verdicts() checks that no measured case fails
      the agreement criterion with it (the largest top-pair errors are recorded as
      max_pair_error_rel and max_abs_u).
    min_decisive 20, agreement 0.9: fixed by the rule (2 flips of 20 tolerated, so one
      flip never decides a verdict).
    min_quality_sqnr_db: the worst quality SQNR of the trained android (ExecuTorch) cases,
      floored to 0.5 dB, minus 3 dB.
    max_accuracy_drop: the worst held-out drop (fp32 - artifact) of the trained android
      cases plus 3 binomial standard deviations of the artifact's accuracy, rounded up to
      0.01. Other trained cases are measured and judged against these thresholds, not
      used to set them (a quality threshold taken from a bad export would accept it).
    """
    low = [c["lowering"] for c in cases]
    ref = [c for c in cases if c["trained"] and c["target"] == "android"]
    s_q = (_floor_half(min(c["quality"]["sqnr_db"] for c in ref)) - SQNR_MARGIN_DB
           if ref else None)
    drops = [c["quality"]["heldout"] for c in ref if c["quality"].get("heldout")]
    drop = max((h["fp32"]["accuracy"] - h["artifact"]["accuracy"] +
                ACCURACY_SIGMAS * math.sqrt(h["artifact"]["accuracy"] *
                                            (1 - h["artifact"]["accuracy"]) / h["artifact"]["n"])
                for h in drops), default=None)
    return {
        "min_sqnr_db": _floor_half(min(x["sqnr_db"] for x in low)) - SQNR_MARGIN_DB,
        "decisive_k": K_FLOOR,
        "min_decisive": MIN_DECISIVE,
        "min_token_agreement": MIN_AGREEMENT,
        "min_quality_sqnr_db": s_q,
        "min_quality_agreement": MIN_AGREEMENT,
        "max_accuracy_drop": None if drop is None else math.ceil(round(drop * 100, 6)) / 100,
    }


def verdicts(case: dict, t: dict) -> dict:
    """Each gate's decisive count, flips there and SQNR verdict under thresholds `t`."""
    out = {}
    for gate, noise_db, agree in (("lowering", t["min_sqnr_db"], t["min_token_agreement"]),
                                  ("quality", t["min_quality_sqnr_db"],
                                   t["min_quality_agreement"])):
        g = case[gate]
        limit = t["decisive_k"] * math.sqrt(2) * 10 ** (-noise_db / 20)
        dec = [i for i, m in enumerate(g["rel_margin"]) if m > limit]
        flips = len(set(dec) & set(g["flipped"]))
        out[gate] = {"decisive": len(dec), "flips_on_decisive": flips,
                     "agreement": None if len(dec) < t["min_decisive"] else
                     ("passed" if 1 - flips / len(dec) >= agree else "failed"),
                     "sqnr": "passed" if g["sqnr_db"] >= noise_db else "failed"}
    held = case["quality"].get("heldout")
    if held:
        drop = held["fp32"]["accuracy"] - held["artifact"]["accuracy"]
        out["quality"]["heldout_accuracy"] = ("passed" if drop <= t["max_accuracy_drop"] + 1e-9
                                              else "failed")
    return out


# ---------------------------------------------------------------- measuring

def _shape(name: str, **kw):
    from flora_export.model import PRESETS
    v = kw.pop("vocab_size", 768)
    return dataclasses.replace(PRESETS["tiny"], vocab_size=v, bos_token_id=v - 128,
                               eos_token_ids=(v - 127, v - 119), **kw)


HIDDEN_SHAPES = {   # other shapes than every preset: MHA, untied, odd layer counts, head_dim 32
    "mha-untied": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                       num_attention_heads=8, num_key_value_heads=8, head_dim=32,
                       tie_word_embeddings=False),
    "gqa3-3layers": dict(hidden_size=192, intermediate_size=384, num_hidden_layers=3,
                         num_attention_heads=6, num_key_value_heads=2, head_dim=32,
                         vocab_size=1024),
}

CASES = {   # name: (model, target, quant, max_seq, seed), in the order they are measured
    "default-executorch-8da4w": ("default", "android", "8da4w", 256, 0),
    "default-onnx-8da4w": ("default", "onnx", "8da4w", 256, 0),
    "tiny-executorch-8da4w-seed0": ("tiny", "android", "8da4w", 256, 0),
    "mha-untied-executorch-8da4w": ("mha-untied", "android", "8da4w", 256, 0),
    "gqa3-3layers-executorch-int8": ("gqa3-3layers", "android", "int8", 256, 0),
    "default-executorch-int8": ("default", "android", "int8", 256, 0),
    "tiny-onnx-8da4w": ("tiny", "onnx", "8da4w", 256, 0),
    "tiny-executorch-8da4w-seed1": ("tiny", "android", "8da4w", 256, 1),
}
BIG = {"llama3.2-1b-executorch-8da4w": ("llama3.2-1b", "android", "8da4w", 256, 0)}


def _load(model: str, seed: int, work: Path):
    from flora_export.adapters import load_adapter
    from flora_export.default import DEFAULT_ADAPTER, DEFAULT_BASE
    from flora_export.model import load_model, random_model, save_hf_checkpoint
    from flora_export.model.tokenizer import byte_level_tokenizer

    if model == "default":
        m = load_model(DEFAULT_BASE)
        load_adapter(m, str(DEFAULT_ADAPTER))
        return m
    if model in HIDDEN_SHAPES:
        cfg = _shape(model, **HIDDEN_SHAPES[model])
        d = work / model
        d.mkdir(parents=True, exist_ok=True)
        byte_level_tokenizer(cfg.vocab_size, cfg.bos_token_id).save(str(d / "tokenizer.json"))
        save_hf_checkpoint(random_model(cfg, seed=seed), d)
        return load_model(d)
    return load_model(model, seed=seed)


def _gate_record(ref, got) -> dict:
    import torch
    from flora_export.verify import compare, sqnr_db

    r, t = torch.stack(ref).double(), torch.stack(got).double()
    top2 = r.topk(2, dim=-1)
    rel = (top2.values[:, 0] - top2.values[:, 1]) / r.pow(2).mean(-1).sqrt()
    err = t - r
    scale = math.sqrt(2) * err.pow(2).mean(-1).sqrt().clamp_min(1e-300)
    e = err.gather(1, top2.indices)
    u = ((e[:, 1] - e[:, 0]) / scale).abs()
    # the same pair error in units of sqrt(2) x the reference's RMS logit (what decisive
    # positions are measured in: margin / (sqrt2 RMS) > k 10^(-S/20))
    w = (e[:, 1] - e[:, 0]).abs() / (math.sqrt(2) * r.pow(2).mean(-1).sqrt())
    p = compare(ref, got)
    return {"positions": len(ref), "sqnr_db": round(p.sqnr_db, 3),
            "sqnr_db_first_round": round(sqnr_db(r[:9], t[:9]), 3),
            "min_position_sqnr_db": round(p.min_position_sqnr_db, 3),
            "max_abs_u": round(float(u.max()), 3),
            "u_abs_p99": round(float(u.quantile(0.99)), 3),
            "max_pair_error_rel": round(float(w.max()), 6),
            "token_agreement": round(p.token_agreement, 4),
            "max_flip_z": None if p.max_flip_z is None else round(p.max_flip_z, 3),
            "rel_margin": [round(float(x), 4) for x in rel],
            "flipped": [i for i, s in enumerate((r.argmax(-1) != t.argmax(-1)).tolist()) if s]}


def measure_case(name: str, spec: tuple, work: Path) -> dict:
    from flora_export.export import ExportConfig, context, export
    from flora_export.verify import VerifyConfig, measure

    model_name, target, quant, max_seq, seed = spec
    records = []

    def verify(self, step, eager, what):           # measure only: run to the bound, keep all
        cfg = self.config.verify
        low, qual, got = measure(step, self.tokens, self.prompt_len, eager, self.fp32_logits,
                                 cfg, True, True)
        held = self.heldout_result(step) if self.heldout else None
        records.append({"lowering": _gate_record(eager, got),
                        "quality": {**_gate_record(self.fp32_logits, got), "heldout": held},
                        "random_weights": self.random_weights})
        return {"parity": low.to_dict(), "quality": qual.to_dict()}

    original = context.BuildContext.verify
    context.BuildContext.verify = verify
    try:
        t0 = time.time()
        model = _load(model_name, seed, work)
        cfg = ExportConfig(quant=quant, max_seq=max_seq, force=True,
                           verify=VerifyConfig(min_decisive=10 ** 9))
        export(model, target, work / name, cfg)
    finally:
        context.BuildContext.verify = original
    rec = records[0]
    return {"name": name, "model": model_name, "target": target, "quant": quant,
            "max_seq": max_seq, "seed": seed, "random_weights": rec.pop("random_weights"),
            "trained": model_name == "default", "seconds": round(time.time() - t0, 1), **rec}


def machine() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                  if ln.startswith("model name")), platform.processor())
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines()
                      if ln.startswith("flags")), []))
    import torch
    versions = {"torch": torch.__version__}
    for mod in ("executorch.version", "onnxruntime", "torchao"):
        try:
            m = __import__(mod, fromlist=["x"])
            versions[mod.split(".")[0]] = m.__version__
        except ImportError:
            pass
    return {"cpu": model, "cpus": os.cpu_count(), "platform": platform.platform(),
            "flags": sorted(flags & {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                                     "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8",
                                     "amx_bf16", "fma", "f16c"}),
            "load_average": [round(x, 2) for x in os.getloadavg()], "versions": versions}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", metavar="CASE",
                    help=f"measure only these cases (of {', '.join([*CASES, *BIG])})")
    ap.add_argument("--derive", action="store_true", help="measure nothing; re-derive")
    ap.add_argument("--out", type=Path, default=RESULT)
    ap.add_argument("--merge", type=Path, action="append", default=[], metavar="FILE",
                    help="also take the cases of another results file (measured separately)")
    args = ap.parse_args(argv)
    data = json.loads(args.out.read_text()) if args.out.exists() else {"cases": {}}
    for other in args.merge:
        data["cases"].update(json.loads(other.read_text())["cases"])
    todo = {} if args.derive else {n: s for n, s in {**CASES, **BIG}.items()
                                   if (n in args.only if args.only else n in CASES)}
    with tempfile.TemporaryDirectory(prefix="gate-cal-") as work:
        for name, spec in todo.items():
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            before = machine()
            case = measure_case(name, spec, Path(work))
            case["machine"] = {**before, "load_average_after": machine()["load_average"]}
            data["cases"][name] = case
            low, q = case["lowering"], case["quality"]
            print(f"  lowering SQNR {low['sqnr_db']} dB (max |u| {low['max_abs_u']}), quality "
                  f"SQNR {q['sqnr_db']} dB, {case['seconds']} s", file=sys.stderr, flush=True)
            _write(args.out, data)
    cases = list(data["cases"].values())
    data["rule"] = derive.__doc__
    data["thresholds"] = derive(cases)
    for c in cases:
        c["verdicts"] = verdicts(c, data["thresholds"])
    _write(args.out, data)
    print(json.dumps(data["thresholds"], indent=2))
    return 0


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
