"""Where an adapter's int4 accuracy goes: weights or activations.

The export's 8da4w quantization rounds two things: the weights (int4, one bf16 scale per
32 input columns) and, at run time, each linear's input (int8, one scale per token). The
accuracy sweep (`accuracy.py --sweep`) scores only their sum ("int4-weight eager"). This
script trains (or reuses, from the sweep's cache in --work) one sweep cell per seed and
scores its test split four ways, each the eager model as the export folds it (FFBA fused
and padded to the group, LoRA merged):

- `eager`: float32;
- `int4 weights`: weight-only int4 at group 32 (torchao `IntxWeightOnlyConfig`, bf16
  scales), float activations;
- `int8 weights + int8 act.`: int8 per-channel weights with int8 dynamic activations
  (the export's `int8` mode), which isolates the activation rounding (int8 weights are
  ~16x finer than int4);
- `8da4w`: both, what the `.pte` computes (the sweep's int4 column);

and, for an FFBA method, which weights' rounding costs it, by fake-quantizing (the same
grid: scale max|w|/7.5 per 32 input columns, rounded to bf16; codes clamped to [-8, 7])
part of the unfused model, activations in float:

- `int4 base only`: every base linear and the head, the adapter in float;
- `int4 adapter only`: the adapter's matrices (A along the hidden size; B along its width,
  zero-padded to the group as the fused layout pads it), the base in float.

The groups of the fused weights align with these parts (the base's input sizes are
multiples of 32 and the fused width is padded to 32), so each part rounds exactly as it
does inside the fused weight.

    python benchmarks/int4_error.py --task mirror --method ffba-neurons --lr 1.6e-2 \\
        --seeds 0 1 2 3 4 --steps 600 --batch-size 16 --name int4-error-mirror

Writes benchmarks/results/NAME.{json,md}. The cells are the sweep's own (same recipe
overrides, same cache directory layout), so a cell trained by a sweep is reused.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy_sweep as sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODES = ("eager", "int4 weights", "int8 weights + int8 act.", "8da4w")
SPLIT_MODES = ("int4 base only", "int4 adapter only")


def round_part(model, adapter: bool):
    """Fake-quantize the adapter's linears (adapter=True) or every other linear, in place."""
    import torch
    from flora_export.train.quant_aware import fake_int4

    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and (".adapter." in f".{name}.") == adapter:
                mod.weight.copy_(fake_int4(mod.weight))
    return model


def quant_modes():
    from flora_export.quantize import QuantConfig, quant_config

    return {"int4 weights": QuantConfig("4w", weight_bits=4, group_size=32,
                                        dynamic_activations=False),
            "int8 weights + int8 act.": quant_config("int8"),
            "8da4w": quant_config("8da4w")}


def score_cell(task: str, st, seed: int, args, data: dict) -> dict:
    from flora_export.quantize import quantize

    cell = sweep.cell_dir(args, task, st.key, seed)
    if not any((cell / "run").glob("*.safetensors")):
        sweep.train_cell(task, st, seed, args)
    model = sweep.load_trained(st.method, cell / "run")
    row = {"seed": seed, "eager": sweep.score(model, data)["test"]}
    for mode, cfg in quant_modes().items():
        model = sweep.fold(sweep.load_trained(st.method, cell / "run"), st.method)
        row[mode] = sweep.score(quantize(model, cfg), data)["test"]
    if sweep.ffba_variant(st.method):
        for mode, adapter in zip(SPLIT_MODES, (False, True)):
            model = round_part(sweep.load_trained(st.method, cell / "run"), adapter)
            row[mode] = sweep.score(model, data)["test"]
    return row


def markdown(result: dict) -> str:
    head = (f"{result['task']}, {result['setting']} ({result['steps']} steps x "
            f"{result['batch_size']}), test split of {result['n']}")
    modes = list(result["summary"])
    lines = [head, "", "test exact match % (loss) per seed:", "",
             "| seed | " + " | ".join(modes) + " |", "|---|" + "---:|" * len(modes)]
    for r in result["rows"]:
        lines.append(f"| {r['seed']} | " + " | ".join(
            f"{100 * r[m]['accuracy']:.1f} ({r[m]['loss']:.3f})" for m in modes) + " |")
    lines.append("| mean ± std | " + " | ".join(
        f"{result['summary'][m]['mean']:.1f} ± {result['summary'][m]['std']:.1f}"
        for m in modes) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True)
    p.add_argument("--method", required=True, choices=sweep.METHODS)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--budget", type=int, default=8, help="LoRA rank the budget matches")
    p.add_argument("--scale", type=float, default=2.0, help="FFBA alpha/width")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n", type=int, default=200, help="test examples")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=ROOT / "bench-work" / "accuracy",
                   help="the sweep's cell cache (accuracy.py --work)")
    p.add_argument("--name", default="int4-error")
    args = p.parse_args(argv)
    ffba = bool(sweep.ffba_variant(args.method))
    st = sweep.Setting(args.method, None if args.method == "full" else args.budget, args.lr,
                       args.scale if ffba else None, "identity" if ffba else None,
                       "kaiming" if ffba else None)
    data = {"test": sweep.splits(args.task, args.n)["test"]}
    t0 = time.perf_counter()
    rows = []
    for seed in args.seeds:
        rows.append(score_cell(args.task, st, seed, args, data))
        print(f"seed {seed}: " + ", ".join(f"{m} {a['accuracy']:.1%}" for m, a in rows[-1].items()
                                           if m != "seed"), flush=True)
    summary = {m: {"mean": 100 * statistics.mean(r[m]["accuracy"] for r in rows),
                   "std": 100 * (statistics.stdev(r[m]["accuracy"] for r in rows)
                                 if len(rows) > 1 else 0.0)}
               for m in MODES + (SPLIT_MODES if ffba else ())}
    result = {"command": "python benchmarks/int4_error.py " + " ".join(argv or sys.argv[1:]),
              "task": args.task, "setting": st.key, "steps": args.steps,
              "batch_size": args.batch_size, "n": len(data["test"]), "rows": rows,
              "summary": summary, "wall_s": round(time.perf_counter() - t0, 1)}
    out = ROOT / "benchmarks" / "results"
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
