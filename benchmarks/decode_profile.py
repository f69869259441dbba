"""Where one decode step of a `.pte` spends its time, next to the memory bandwidth bound.

    python benchmarks/decode_profile.py bench-out/tpot/executorch/base \
        --name decode_profile-llama3.2-1b          # the 1B base export of benchmarks/tpot.py

Runs the export's `model.pte` in ExecuTorch's runtime with event tracing (ETDump):
a prefill of --prompt tokens, then --steps single-token decode steps, with --threads
threads (default: the usable cores, as the LLM runner uses them). Each runtime event
(an XNNPACK delegate call, a custom op such as the KV-cache update or SDPA, a portable
kernel) is timed per call; the decode steps' events are summed by name and by kind. In
the same run it measures the machine's read bandwidth with the same thread count
(flora_export.bench.machine.memory_bandwidth_gbs), so the measured step time is set
against the time it takes to read the step's weight bytes once: the weight bytes are the
`.pte` size minus the embedding table (only the looked-up rows are read).

Writes benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"


def group(name: str) -> str:
    """An event's name without its instance number (`Fully Connected (...) GEMM #3`)."""
    return name.split(" #")[0]


def profile(pte: Path, prompt: int, steps: int, threads: int) -> dict:
    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    from flora_export.export.executorch import load_runtime_ops

    load_runtime_ops()
    torch.set_num_threads(threads)
    module = portable_lib._load_for_executorch(str(pte), enable_etdump=True)
    tokens = torch.randint(0, 1000, (1, prompt), generator=torch.Generator().manual_seed(0))
    module.forward([tokens, torch.tensor([0])])
    wall = []
    for i in range(steps):
        t0 = time.perf_counter()
        module.forward([torch.tensor([[1 + i]]), torch.tensor([prompt + i])])
        wall.append((time.perf_counter() - t0) * 1e3)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "etdump.etdp"
        module.write_etdump_result_to_file(str(path))
        inspector = Inspector(etdump_path=str(path))
    execute = [b for b in inspector.event_blocks if b.name == "Execute"][0]
    # each event's perf_data.raw holds one duration (ms) per execution: the prefill first
    by_name: dict[tuple[str, bool], list[float]] = defaultdict(list)
    for ev in execute.events:
        if ev.perf_data is not None:
            key = (group(ev.name), bool(getattr(ev, "is_delegated_op", False)))
            by_name[key].append(sum(ev.perf_data.raw[1:]) / steps)
    return {"wall_ms": wall, "per_step_ms": {
        f"{name}{' (in XNNPACK)' if inside else ''}": {"instances": len(v),
                                                       "ms": round(sum(v), 4)}
        for (name, inside), v in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))}}


def summarize(per_step: dict) -> dict:
    """The step split without double counting: XNNPACK delegate calls (the quantized
    linears and the elementwise ops lowered with them), the kernels run outside XNNPACK
    (ExecuTorch's custom SDPA and KV-cache update, portable/optimized kernels) and the
    rest of the method's time (dispatch, memory planning)."""
    def ms(name):
        return per_step.get(name, {}).get("ms", 0.0)
    execute, delegate, operator = ms("Method::execute"), ms("DELEGATE_CALL"), ms("OPERATOR_CALL")
    attention = ms("llama::custom_sdpa.out") + ms("llama::update_cache.out")
    inside = {k: v["ms"] for k, v in per_step.items() if k.endswith("(in XNNPACK)")}
    gemm = sum(v for k, v in inside.items() if k.startswith("Fully Connected"))
    return {"method_ms": round(execute, 3), "parts_ms": {
        "XNNPACK delegate calls": round(delegate, 3),
        "  of which fully-connected GEMMs (the quantized linears)": round(gemm, 3),
        "kernels outside XNNPACK": round(operator, 3),
        "  of which SDPA + KV-cache update (custom ops)": round(attention, 3),
        "rest of the method (dispatch, copies between ops)": round(
            execute - delegate - operator, 3)}}


def embedding_bytes(manifest: dict) -> int:
    """Bytes of the quantized embedding table in the .pte (rows x hidden, int8 + scales)."""
    model = manifest.get("model", {})
    cfg = model.get("config", {})
    vocab, hidden = cfg.get("vocab_size"), cfg.get("hidden_size")
    return 0 if not (vocab and hidden) else vocab * hidden + vocab * 4


def markdown(r: dict) -> str:
    b = r["bound"]
    lines = [f"Decode step of `{r['pte']}` ({r['threads']} threads, {r['steps']} steps after a "
             f"{r['prompt']}-token prefill; load average {r['loadavg_before'][0]:.1f} → "
             f"{r['loadavg_after'][0]:.1f}).", "",
             f"- step wall time: median {r['wall_ms_median']:.2f} ms (min {r['wall_ms_min']:.2f}, "
             f"max {r['wall_ms_max']:.2f})",
             f"- read bandwidth, {r['threads']} threads, same run: {r['bandwidth_gbs']} GB/s; "
             f"weight bytes per step {b['weight_bytes'] / 1e6:.0f} MB: bound {b['bound_ms']:.2f} ms; "
             f"step = {b['x_bound']:.2f}x the bound", "",
             "| where | ms per step | share of the step |", "|---|---:|---:|"]
    total = r["summary"]["method_ms"]
    lines.append(f"| `Method::execute` (traced) | {total:.2f} | 100% |")
    for k, v in r["summary"]["parts_ms"].items():
        lines.append(f"| {k} | {v:.2f} | {v / total:.0%} |")
    lines += ["", "| event (instances per step) | ms per step |", "|---|---:|"]
    for name, e in list(r["per_step_ms"].items())[:14]:
        lines.append(f"| `{name}` ({e['instances']}) | {e['ms']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export", type=Path, help="an android export folder (model.pte, manifest.json)")
    p.add_argument("--name", default="decode_profile")
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = p.parse_args()
    from flora_export.bench.machine import host_facts, memory_bandwidth_gbs

    pte = args.export / "model.pte"
    manifest = json.loads((args.export / "manifest.json").read_text())
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    load_before = list(os.getloadavg())
    bandwidth = memory_bandwidth_gbs(args.threads)
    run = profile(pte, args.prompt, args.steps, args.threads)
    bandwidth = max(bandwidth, memory_bandwidth_gbs(args.threads))   # before and after
    weight_bytes = pte.stat().st_size - embedding_bytes(manifest)
    wall = run["wall_ms"]
    median = statistics.median(wall)
    bound_ms = weight_bytes / (bandwidth * 1e9) * 1e3
    result = {"command": " ".join(["python", "benchmarks/decode_profile.py", *sys.argv[1:]]),
              "started_utc": started, "pte": str(pte), "threads": args.threads,
              "prompt": args.prompt, "steps": args.steps, "wall_ms": [round(w, 3) for w in wall],
              "wall_ms_median": round(median, 3), "wall_ms_min": round(min(wall), 3),
              "wall_ms_max": round(max(wall), 3), "bandwidth_gbs": bandwidth,
              "bound": {"weight_bytes": weight_bytes, "bound_ms": round(bound_ms, 3),
                        "x_bound": round(median / bound_ms, 3)},
              "per_step_ms": run["per_step_ms"], "summary": summarize(run["per_step_ms"]),
              "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()),
              "machine": host_facts()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
