"""Wall time and peak RSS of each export stage, for the embedded default model and a
preset (default llama3.2-1b, random weights, base, --max-seq 256), ExecuTorch and ONNX,
next to ExecuTorch's own LLM exporter on the same architecture when it was built.

Each export runs in its own process (wait4 gives its wall time and peak RSS, what
`/usr/bin/time -v` reports); the per-stage seconds and the peak RSS within each stage come
from the export's manifest, and each row is held to the memory goal: 2 bytes a parameter
(the bf16 weights) + 2 GB.
The preset's base exports are the same builds benchmarks/tpot.py uses: with the same
--work they are reused, not rebuilt (their cost was recorded when they were built).

    python benchmarks/export_cost.py --work bench-out/tpot [--with-executorch-peer]
    python benchmarks/export_cost.py --preset none --name export_cost-default \
        --work bench-out/export-default          # the embedded default alone (a minute)
    python benchmarks/export_cost.py --preset llama3.2-3b --backends executorch \
        --variants base ffba-fused --skip-default --name export_cost-3b-android \
        --work bench-out/tpot-3b          # 3B base and FFBA fused (~40 min, ~12 GB)

Prints a table; writes benchmarks/results/NAME.{json,md,png} (NAME: --name, default
export_cost) with the machine's facts, the load average around every export, and each
export's op counts from its manifest (quantized linear ops, XNNPACK delegates).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from variants import BACKEND_TARGETS, build_all, run_measured  # noqa: E402

from flora_export.bench.machine import host_facts  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"executorch": "android", "onnx": "onnx", "coreml": "coreml", "ios": "ios"}
COUNTS = ("fused_linears", "quantized_linear_ops", "delegates", "linear_ops")


def default_export(backend: str, work: Path) -> tuple[Path, dict]:
    """flora-export --target T with the embedded default model, in its own process."""
    out = work / "default" / backend
    cost_file = work / "logs" / f"default-{backend}.cost.json"
    if not cost_file.exists() or not (out / "manifest.json").exists():
        print(f"exporting the embedded default model -> {out}", flush=True)
        cost = run_measured([sys.executable, "-c", "import sys; from flora_export.cli import main; "
                             "sys.exit(main())", "--target", TARGETS[backend], "--out", str(out),
                             "--force"], work / "logs" / f"default-{backend}.log")
        cost_file.write_text(json.dumps(cost))
    return out, json.loads(cost_file.read_text())


def row(name: str, out: Path, cost: dict) -> dict:
    m = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file() and p.suffix != ".json")
    size += sum(p.stat().st_size for d in out.iterdir() if d.is_dir() for p in d.rglob("*")
                if p.is_file())
    counts = {k: v for k, v in m.get("counts", {}).items() if k in COUNTS}
    return {"name": name, **cost, "output_mb": round(size / 2 ** 20, 2), "counts": counts,
            "files": {k: v["bytes"] for k, v in m.get("files", {}).items() if "bytes" in v},
            "stages_s": m.get("timings_s", {}),
            "rss_mb_after_stage": m.get("peak_rss_mb_after_stage", {}),
            "rss_mb_in_stage": m.get("peak_rss_mb_in_stage", {}),
            "parameters": m.get("model", {}).get("parameters"),
            "lowering": lowering(m),
            "budget_gb": budget_gb(m.get("model", {}).get("parameters"))}


def lowering(manifest: dict) -> dict | None:
    """The lowering gate's SQNR, its threshold and the model's rounding sensitivity."""
    p = manifest.get("parity") or {}
    if "sqnr_db" not in p:
        return None
    t = p.get("thresholds", {})
    return {"sqnr_db": round(p["sqnr_db"], 2), "min_sqnr_db": t.get("min_sqnr_db"),
            "rounding_sensitivity_db": t.get("rounding_sensitivity_db"),
            "passed": p.get("passed")}


def budget_gb(parameters: int | None) -> float | None:
    """The memory goal of an export: 2 bytes a parameter (the bf16 weights) + 2 GB."""
    return None if parameters is None else round((2 * parameters + 2 * 1024 ** 3) / 1024 ** 3, 2)


def markdown(rows: list[dict]) -> str:
    lines = ["| export | wall time | peak RSS | goal (2 B/param + 2 GB) | output "
             "| quantized linear ops / XNNPACK delegates | lowering SQNR (threshold; "
             "rounding sensitivity) | load average before → after "
             "| stages (s; peak RSS GB within the stage, or after it in older rows) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        within = r.get("rss_mb_in_stage") or r["rss_mb_after_stage"]
        stages = ", ".join(f"{k} {v:.1f} ({within.get(k, 0) / 1024:.1f})"
                           for k, v in r["stages_s"].items()) or "–"
        c = r.get("counts", {})
        ops = f"{c.get('quantized_linear_ops', '–')} / {c.get('delegates', '–')}"
        load = (f"{r['loadavg_before'][0]:.1f} → {r['loadavg_after'][0]:.1f}"
                if r.get("loadavg_before") else "–")
        goal = r.get("budget_gb")
        goal = "–" if goal is None else (
            f"{goal:.2f} GB {'met' if r['peak_rss_gb'] <= goal else 'missed'}")
        low = r.get("lowering")
        low = "–" if not low else (
            f"{low['sqnr_db']:.1f} dB ({low['min_sqnr_db']}"
            + (f"; {low['rounding_sensitivity_db']:.1f}" if low.get("rounding_sensitivity_db")
               else "") + ")")
        lines.append(f"| {r['name']} | {r['seconds']:.1f} s | {r['peak_rss_gb']:.2f} GB | {goal} | "
                     f"{r['output_mb']:.2f} MiB | {ops} | {low} | {load} | {stages} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'flora-export[bench]')")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [r["name"] for r in rows]
    stages = list(dict.fromkeys(k for r in rows for k in r["stages_s"]))
    bottom = [0.0] * len(rows)
    for st in stages:
        vals = [r["stages_s"].get(st, 0.0) for r in rows]
        ax1.barh(names, vals, left=bottom, label=st)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax1.barh(names, [max(0.0, r["seconds"] - b) for r, b in zip(rows, bottom)], left=bottom,
             color="#ccc", label="other (load, process)")
    ax1.set_xlabel("wall time (s)")
    ax1.legend(fontsize=7)
    ax2.barh(names, [r["peak_rss_gb"] for r in rows], color="#3b7dd8")
    ax2.set_xlabel("peak RSS (GB)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama3.2-1b",
                   help="preset whose base builds are measured too; 'none' for the default alone")
    p.add_argument("--name", default="export_cost", help="results file stem (default export_cost)")
    p.add_argument("--work", type=Path, default=Path("bench-out/tpot"))
    p.add_argument("--backends", nargs="+", default=["executorch", "onnx"], choices=list(TARGETS))
    p.add_argument("--max-seq", type=int, default=256)
    p.add_argument("--variants", nargs="+", default=["base"],
                   help="the preset's builds to measure (benchmarks/variants.py: base, "
                        "ffba-fused, lora, ...; default base)")
    p.add_argument("--skip-default", action="store_true",
                   help="measure the preset's exports only, not the embedded default's")
    p.add_argument("--with-executorch-peer", action="store_true",
                   help="build ExecuTorch's own export of the preset if not in --work yet")
    args = p.parse_args()
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    rows = []
    for backend in [] if args.skip_default else args.backends:
        rows.append(row(f"default, {backend}", *default_export(backend, args.work)))
    presets = [] if args.preset == "none" else [args.preset]
    backends = [b for b in args.backends if b in BACKEND_TARGETS]
    if presets and args.skip_default and not backends:
        p.error(f"--backends {' '.join(args.backends)}: a preset is exported to "
                f"{', '.join(BACKEND_TARGETS)} only, and --skip-default leaves nothing to measure")
    dirs = build_all(args.preset, args.variants, backends, args.work, args.max_seq) if presets else {}
    for backend in dirs:
        for variant, out in dirs[backend].items():
            cost = json.loads((args.work / "logs" / f"{backend}-{variant}.cost.json").read_text())
            label = args.preset if variant == "base" else f"{args.preset} {variant}"
            rows.append(row(f"{label}, {backend}", out, cost))
    peer = args.work / "executorch-peer" / "et-export"
    if presets and args.with_executorch_peer and not (peer / "cost.json").exists():
        from executorch_peer import build_peers
        build_peers(args.preset, args.work, args.max_seq, ["et-export"])
    if presets and (peer / "cost.json").exists():
        rows.append(row(f"{args.preset}, ExecuTorch export_llm", peer,
                        json.loads((peer / "cost.json").read_text())))
    RESULTS.mkdir(exist_ok=True)
    result = {"command": " ".join(["python", "benchmarks/export_cost.py", *sys.argv[1:]]),
              "started_utc": started, "rows": rows, "machine": host_facts()}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(rows))
    plot(rows, RESULTS / f"{args.name}.png")
    print(markdown(rows))


if __name__ == "__main__":
    main()
