"""Accuracy study: FFBA variants vs LoRA vs full fine-tuning at matched budgets, and
what each keeps after the int4 ExecuTorch export.

For every task x method x seed this trains the project's own recipe (recipes/
ffba-shift.yaml, lora-shift.yaml, full-shift.yaml, with --set overrides for the
task, seed, variant and width), evaluates it eagerly on the held-out split, exports it
with `flora-export`'s API (--target android, 8da4w: int8 dynamic activations, int4
weights, group 32; FFBA fused, LoRA merged) and evaluates the `.pte` through the
ExecuTorch runtime on the same examples. Budgets: LoRA r=8 on all 7 projections,
FFBA width 38 on both sub-blocks, width 76 on one (77,824 trainable parameters each);
full fine-tuning trains every weight. `--methods` also takes ffba-attn.

    python benchmarks/accuracy.py --jobs 3 --skip reverse:ffba-mlp   # as published
    python benchmarks/accuracy.py --tasks reverse --seeds 0 --methods ffba lora

Trained runs and exports are cached in --work; the table (mean +- std over seeds)
is printed and written, with every run's figures, to --out (JSON, markdown, PNG).

`--sweep` runs the fair sweep instead (benchmarks/accuracy_sweep.py: learning rate,
FFBA scale / activation / init, matched budgets, selection on a validation split,
the chosen settings over --seeds on a disjoint test split, eager and int4):

    python benchmarks/accuracy.py --sweep --tasks shift reverse upper dates \
        --methods ffba ffba-neurons lora --budgets 8 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = {"ffba": "ffba-shift.yaml", "ffba-attn": "ffba-shift.yaml",
          "ffba-mlp": "ffba-shift.yaml", "ffba-neurons": "ffba-shift.yaml",
          "lora": "lora-shift.yaml", "full": "full-shift.yaml"}


def overrides(method: str, task: str, seed: int, steps: int, out: Path) -> list[str]:
    """The --set overrides that turn a committed recipe into one study cell."""
    from flora_export.model.config import LlamaConfig
    from flora_export.train.budget import ffba_width_for_lora
    from flora_export.default import DEFAULT_BASE

    sets = [f"data.tasks={task}", f"train.seed={seed}", f"out={out}",
            f"train.steps={steps}", "train.save_every=0"]
    if method.startswith("ffba"):
        cfg = LlamaConfig.from_file(DEFAULT_BASE / "config.json")
        width = ffba_width_for_lora(cfg, 8, variant=method).ffba_width
        sets += [f"method.ffba.variant={method}", f"method.ffba.width={width}",
                 f"method.ffba.alpha={2 * width}"]
    return sets


def train_cell(method: str, task: str, seed: int, steps: int, work: Path) -> dict:
    from flora_export.train import load_recipe, train

    out = work / f"{task}-{method}-s{seed}"
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    recipe = load_recipe(ROOT / "recipes" / RECIPE[method],
                         overrides(method, task, seed, steps, out))
    return train(recipe, progress=False)


def export_cell(method: str, run_dir: Path) -> Path:
    """The run's int4 ExecuTorch export (FFBA fused, LoRA merged)."""
    from flora_export.adapters import load_adapter
    from flora_export.default import DEFAULT_BASE
    from flora_export.export import ExportConfig, export
    from flora_export.fuse import merge_lora
    from flora_export.model import load_model

    out = run_dir / "android"
    if (out / "manifest.json").is_file():
        return out
    if method == "full":
        model = load_model(run_dir)
    else:
        model = load_model(DEFAULT_BASE)
        load_adapter(model, run_dir)
        if method == "lora":
            merge_lora(model)
    export(model, "android", out, ExportConfig(quant="8da4w", max_seq=96))
    return out


def eval_export(export_dir: Path, task: str, n: int) -> dict:
    from flora_export.train.evaluation import score_steps
    from flora_export.export.artifact import export_step
    from flora_export.train.tasks import eval_set

    step, encoder, _ = export_step(export_dir)
    return score_steps(step, encoder, eval_set([task], n)).to_dict()


def run_cell(task: str, method: str, seed: int, steps: int, work: Path) -> dict:
    """Train (or reuse), export and evaluate one cell; returns its row."""
    t0 = time.perf_counter()
    metrics = train_cell(method, task, seed, steps, work)
    run_dir = work / f"{task}-{method}-s{seed}"
    pte = eval_export(export_cell(method, run_dir), task, metrics["eval"]["n"])
    return {"task": task, "method": method, "seed": seed,
            "trainable_params": metrics["trainable_params"],
            "base_accuracy": (metrics["eval_before"] or {}).get("accuracy"),
            "eager_accuracy": metrics["eval"]["accuracy"], "eager_loss": metrics["eval"]["loss"],
            "pte_accuracy": pte["accuracy"], "pte_loss": pte["loss"],
            "seconds": round(time.perf_counter() - t0, 1)}


def run(args) -> list[dict]:
    """Every cell, `args.jobs` at a time (one process per cell, one torch thread each)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing

    cells = [(t, m, s) for t in args.tasks for m in args.methods for s in args.seeds
             if f"{t}:{m}" not in args.skip]
    rows = []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        futures = {pool.submit(run_cell, *c, args.steps, args.work): c for c in cells}
        for i, fut in enumerate(as_completed(futures), 1):
            r = fut.result()
            rows.append(r)
            print(f"[{i}/{len(cells)}] {r['task']:<8} {r['method']:<9} seed {r['seed']}: eager "
                  f"{r['eager_accuracy']:.1%}, int4 .pte {r['pte_accuracy']:.1%} "
                  f"({r['seconds']:.0f} s)", flush=True)
    order = {c: i for i, c in enumerate(cells)}
    return sorted(rows, key=lambda r: order[(r["task"], r["method"], r["seed"])])


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def table(rows: list[dict], methods: list[str], tasks: list[str]) -> str:
    lines = ["| task | method | trainable params | base acc % | eager acc % | int4 .pte acc % |",
             "|---|---|---:|---:|---:|---:|"]
    for task in tasks:
        for method in methods:
            cell = [r for r in rows if r["task"] == task and r["method"] == method]
            if not cell:
                continue
            base = [r["base_accuracy"] for r in cell if r["base_accuracy"] is not None]
            lines.append(f"| {task} | {method} | {cell[0]['trainable_params']:,} | "
                         f"{mean_std(base) if base else '-'} | "
                         f"{mean_std([r['eager_accuracy'] for r in cell])} | "
                         f"{mean_std([r['pte_accuracy'] for r in cell])} |")
    return "\n".join(lines)


def plot(rows: list[dict], methods: list[str], tasks: list[str], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for j, key in enumerate(("eager_accuracy", "pte_accuracy")):
            means, errs = [], []
            for m in methods:
                vals = [100 * r[key] for r in rows if r["task"] == task and r["method"] == m]
                means.append(statistics.mean(vals) if vals else 0)
                errs.append(statistics.stdev(vals) if len(vals) > 1 else 0)
            xs = [i + (j - 0.5) * 0.38 for i in range(len(methods))]
            ax.bar(xs, means, 0.38, yerr=errs, capsize=3,
                   label="eager fp32" if j == 0 else "int4 .pte (ExecuTorch)")
        ax.set_xticks(range(len(methods)), methods)
        ax.set_title(f"task: {task}")
        ax.set_ylabel("held-out exact match (%)")
        ax.set_ylim(0, 105)
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["shift", "reverse"])
    import accuracy_sweep
    p.add_argument("--methods", nargs="+", default=["ffba", "ffba-mlp", "lora", "full"],
                   choices=list(accuracy_sweep.METHODS),
                   help="METHOD-qat (FFBA trained quantization-aware): with --sweep only")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=400, help="training steps per run")
    p.add_argument("--jobs", type=int, default=2,
                   help="cells run in parallel (processes; with --sweep too, each --threads)")
    p.add_argument("--skip", nargs="*", default=[], metavar="TASK:METHOD",
                   help="leave these task/method pairs out, e.g. reverse:ffba-mlp")
    p.add_argument("--work", type=Path, default=ROOT / "bench-work" / "accuracy")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    accuracy_sweep.add_arguments(p)
    args = p.parse_args()
    if not args.sweep and not set(args.methods) <= set(RECIPE):
        p.error(f"--methods {' '.join(sorted(set(args.methods) - set(RECIPE)))}: "
                "quantization-aware methods run with --sweep only")
    logging.basicConfig(level=logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.sweep:
        args.command = " ".join(["python", "benchmarks/accuracy.py", *sys.argv[1:]])
        return accuracy_sweep.main(args)
    t0 = time.perf_counter()
    rows = run(args)
    md = table(rows, args.methods, args.tasks)
    print("\n" + md)
    result = {"command": " ".join(sys.argv), "steps": args.steps, "seeds": args.seeds,
              "wall_s": round(time.perf_counter() - t0), "rows": rows, "table": md}
    (args.out / "accuracy.json").write_text(json.dumps(result, indent=2))
    (args.out / "accuracy.md").write_text(md + "\n")
    if plot(rows, args.methods, args.tasks, args.out / "accuracy.png"):
        print(f"wrote {args.out / 'accuracy.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
