"""Tables, curves and files of the fair sweep (benchmarks/accuracy_sweep.py):
accuracy-sweep.json / .md and accuracy-lr.png in --out."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def groups(report: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in report:
        out.setdefault((r["task"], r["method"], r["budget_lora_rank"]), []).append(r)
    return out


def summary(report: list[dict]) -> list[dict]:
    rows = []
    for (task, method, budget), cell in groups(report).items():
        acc = [r["test"]["accuracy"] for r in cell]
        int4 = [r["test_int4"]["accuracy"] for r in cell]
        pte = [r["pte_test"]["accuracy"] for r in cell if "pte_test" in r]
        mean = statistics.mean(acc)
        rows.append({"task": task, "method": method, "budget_lora_rank": budget,
                     "setting": cell[0]["key"], "trainable_params": cell[0]["trainable_params"],
                     "seeds": [r["seed"] for r in cell],
                     "test_mean": mean, "test_std": statistics.stdev(acc) if len(acc) > 1 else 0,
                     "int4_mean": statistics.mean(int4),
                     "int4_std": statistics.stdev(int4) if len(int4) > 1 else 0,
                     "int4_kept": statistics.mean(int4) / mean if mean else None,
                     "pte_mean": statistics.mean(pte) if pte else None, "pte_n": len(pte),
                     "val_best": cell[0]["val"]["accuracy"]})
    return rows


def markdown(result: dict) -> str:
    lines = ["| task | method | budget | chosen setting | params | val (seed 0) | test eager % "
             "| test int4-weight eager % | int4 kept | .pte test % (seeds) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for s in result["summary"]:
        kept = f"{100 * s['int4_kept']:.1f}%" if s["int4_kept"] is not None else "-"
        pte = (f"{100 * s['pte_mean']:.1f} ({s['pte_n']})" if s["pte_mean"] is not None
               else "-")
        budget = f"LoRA r{s['budget_lora_rank']}" if s["budget_lora_rank"] else "all weights"
        cell = [r for r in result["report"] if r["task"] == s["task"]
                and r["method"] == s["method"] and r["budget_lora_rank"] == s["budget_lora_rank"]]
        lines.append(f"| {s['task']} | {s['method']} | {budget} | `{s['setting']}` | "
                     f"{s['trainable_params']:,} | {100 * s['val_best']:.1f} | "
                     f"{_ms([r['test']['accuracy'] for r in cell])} | "
                     f"{_ms([r['test_int4']['accuracy'] for r in cell])} | {kept} | {pte} |")
    lines += ["", "Selection grid (seed 0, validation exact match %, eager / int4-weight eager):",
              "", "| task | setting | val % | val int4 % | val loss |", "|---|---|---:|---:|---:|"]
    for r in result["select"]:
        lines.append(f"| {r['task']} | `{r['key']}` | {100 * r['val']['accuracy']:.1f} | "
                     f"{100 * r['val_int4']['accuracy']:.1f} | {r['val']['loss']:.3f} |")
    return "\n".join(lines)


def plot_curves(result: dict, tasks: list[str], path: Path) -> bool:
    """Validation exact match (top) and validation loss (bottom) vs learning rate, one line
    per method and budget; for FFBA the best scale/activation/init at each rate."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.6 * len(tasks), 6.4), squeeze=False)
    for col, task in enumerate(tasks):
        lines: dict[str, dict[float, tuple]] = {}
        for r in result["select"]:
            if r["task"] != task:
                continue
            name = r["method"] + (f" r{r['budget_lora_rank']}" if r["budget_lora_rank"] else "")
            cur = lines.setdefault(name, {})
            point = (100 * r["val"]["accuracy"], -r["val"]["loss"])
            cur[r["lr"]] = max(cur.get(r["lr"], point), point)
        for name, pts in sorted(lines.items()):
            xs = sorted(pts)
            axes[0][col].plot(xs, [pts[x][0] for x in xs], marker="o", label=name)
            axes[1][col].plot(xs, [-pts[x][1] for x in xs], marker="o", label=name)
        axes[0][col].set_title(f"task: {task} (seed 0, validation split)")
        axes[0][col].set_ylabel("exact match (%)")
        axes[0][col].set_ylim(-3, 103)
        axes[1][col].set_ylabel("loss (nats / answer token)")
        for ax in axes[:, col]:
            ax.set_xscale("log")
            ax.set_xlabel("learning rate")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def png_for(stem: str) -> str:
    """The curves' file name beside NAME.json: accuracy-sweep[-X] -> accuracy-lr[-X].png."""
    return stem.replace("accuracy-sweep", "accuracy-lr") + ".png"


def write(result: dict, args) -> None:
    result["summary"] = summary(result["report"])
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    (args.out / f"{args.name}.md").write_text(markdown(result) + "\n")
    png = args.out / png_for(args.name)
    if plot_curves(result, args.tasks, png):
        print(f"wrote {png}")
