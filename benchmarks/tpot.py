"""FFBA vs LoRA decode latency at a preset's shapes (random weights), one interleaved run
per backend: base; LoRA r=16 on all 7 projections unmerged; LoRA merged; FFBA fused at
LoRA r=16's trainable-parameter budget; FFBA unfused -- through ExecuTorch 8da4w
(XNNPACK) and ONNX Runtime GenAI int4 (MatMulNBits), with flora-bench's harness.
With --with-executorch-peer, ExecuTorch's own LLM export of the same architecture
(with and without its unfused LoRA; Llama and Qwen3) runs in the ExecuTorch group; with
--with-builder-peer, ORT-GenAI's model builder's folder of the same shapes runs in the
ONNX group.

Also measures this machine's read bandwidth in the same run and prints each variant's
TPOT as a multiple of the bandwidth bound (weight bytes read per decoded token /
bandwidth; the weight bytes are the artifact's weight files minus the embedding table,
of which a token reads one row).

    python benchmarks/tpot.py --work bench-out/tpot --runs 5 --with-executorch-peer
    python benchmarks/tpot.py --preset qwen3-0.6b --work bench-out/tpot-qwen3 \
        --variants base lora ffba-fused --with-executorch-peer --peers et-export \
        --with-builder-peer

Exports are cached in --work (a directory holding a manifest is reused). Results:
benchmarks/results/tpot-PRESET-BACKEND.{json,md,png} and tpot-PRESET-summary.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from variants import VARIANTS, build_all, build_error  # noqa: E402,F401

RESULTS = Path(__file__).resolve().parent / "results"


def embedding_bytes(cfg: dict, backend: str, path: Path) -> int:
    """Bytes of the embedding table in the artifact at `path`: int8 rows + one fp32 scale
    per row (ExecuTorch); in an ONNX folder int4 blocks of 32 + one fp32 scale per block
    when its manifest counts a GatherBlockQuantized, else the table in the dtype its
    manifest names (flora-export keeps the checkpoint's; older manifests name none: fp32);
    none for a folder whose embedding reads the head's codes (--onnx-shared-embedding).
    A folder without a manifest, a peer's, is taken as int4."""
    v, h = cfg["vocab_size"], cfg["hidden_size"]
    if backend == "executorch":
        return v * h + 4 * v
    manifest = path / "manifest.json"
    if not manifest.exists():
        return v * h // 2 + 4 * v * h // 32
    m = json.loads(manifest.read_text())
    quant = next(iter(m["results"].values())).get("onnx_quantization") or {}
    if quant.get("embedding") == "int4, the output head's codes":
        return 0                    # --onnx-shared-embedding: the table is the head, all read
    if m["counts"].get("gather_block_quantized"):
        return v * h // 2 + 4 * v * h // 32
    return v * h * {"bfloat16": 2, "float16": 2}.get(quant.get("embedding"), 4)


def weight_bytes(path: Path, backend: str, cfg: dict, shared_head: bool = False) -> int:
    """Weight bytes a decoded token reads: the weight files less the embedding table, of
    which a token reads one row. shared_head: the table is also the output head
    (ORT-GenAI's builder shares a tied int4 embedding), so all of it is read."""
    files = [p for p in path.iterdir() if p.suffix in (".pte", ".data", ".onnx")]
    total = sum(p.stat().st_size for p in files)
    return total if shared_head else total - embedding_bytes(cfg, backend, path)


def goals(result: dict, bound: dict) -> list[str]:
    """The issue's goals, from this run's load-order-balanced ratios (plain ratios of
    medians with a single pass)."""
    r = result["ratios"]

    def q(name, key):                     # name's TTFT/TPOT over base
        return r[name].get(f"{key}_balanced") or r[name][key]
    out = []
    if "ffba-fused" in r:
        out.append(f"FFBA-fused TPOT {q('ffba-fused', 'tpot'):.3f}x base (goal <= 1.03), "
                   f"TTFT {q('ffba-fused', 'ttft'):.3f}x base (goal <= 1.05)")
    if {"ffba-fused", "lora"} <= r.keys():
        over = q("lora", "tpot") - 1
        removed = (q("lora", "tpot") - q("ffba-fused", "tpot")) / over if over > 0 else None
        out.append(f"unmerged LoRA TPOT {q('lora', 'tpot'):.3f}x base; FFBA-fused removes " +
                   (f"{100 * removed:.0f}%" if removed is not None else "n/a") +
                   " of its overhead (goal >= 90%)")
    if "et-export" in r:
        out.append(f"our base / ExecuTorch's export: TPOT {1 / q('et-export', 'tpot'):.3f}, "
                   f"TTFT {1 / q('et-export', 'ttft'):.3f} (goal <= 1)")
    if {"et-export-lora", "et-export"} <= r.keys():
        out.append(f"ExecuTorch's own LoRA/base TPOT: "
                   f"{q('et-export-lora', 'tpot') / q('et-export', 'tpot'):.3f}")
    if "ort-builder" in r:
        out.append(f"our base / ORT-GenAI's builder: TPOT {1 / q('ort-builder', 'tpot'):.3f}, "
                   f"TTFT {1 / q('ort-builder', 'ttft'):.3f} (goal <= 1)")
    if "base" in bound:
        out.append(f"base TPOT = {bound['base']['x_bound']:.2f}x the bandwidth bound (goal <= 1.2)")
    return out


def stem(preset: str, backend: str) -> str:
    """The results files' name: tpot-PRESET-BACKEND."""
    return f"tpot-{preset}-{backend}"


def report(backend: str, result: dict, args) -> None:
    """Write tpot-PRESET-BACKEND.{json,md,png} and print the tables."""
    from flora_export.bench import write_all
    from flora_export.bench.report import markdown

    result["goals"] = goals(result, result["bandwidth_bound"])
    cfg = result["config"]
    title = (f"{args.preset} {backend}: TTFT/TPOT (median, min-max), {cfg['passes']} x "
             f"{cfg['runs']} interleaved runs")
    write_all(result, RESULTS, stem(args.preset, backend), title)
    print(f"\n## {backend}\n")
    print(markdown(result))
    print("| artifact | weight MB read / token | bound ms | TPOT / bound |\n|---|---|---|---|")
    for name, b in result["bandwidth_bound"].items():
        print(f"| {name} | {b['weight_bytes_per_token'] / 1e6:.0f} | {b['bound_ms']} | "
              f"{b['x_bound']} |")
    print(f"\nbandwidth {result['bandwidth_gbs']} GB/s; " + "; ".join(result["goals"]))
    for v, err in result["build_failures"].items():
        print(f"not measured: {v} (export failed: {err})")


def run_backend(backend: str, dirs: dict, args, bandwidth: float) -> dict:
    from flora_export.bench import BenchConfig, run_bench

    config = BenchConfig(prompt_len=args.prompt_len, gen_len=args.gen_len, runs=args.runs,
                         warmup=1, threads=args.threads, passes=args.passes)
    result = run_bench({k: str(v) for k, v in dirs.items()}, config, baseline="base",
                       progress=lambda m: print(m, flush=True))
    result["bandwidth_gbs"] = bandwidth
    result["bandwidth_bound"] = bandwidth_bound(result, backend, bandwidth)
    result["build_failures"] = {v: build_error(args.work, backend, v) for v in args.variants
                                if v not in dirs}
    report(backend, result, args)
    return result


def bandwidth_bound(result: dict, backend: str, bandwidth: float) -> dict:
    """Per artifact: weight bytes read per decoded token, the time that takes at
    `bandwidth`, and the measured median TPOT as a multiple of it."""
    paths = {name: Path(a["spec"]) for name, a in result["artifacts"].items()}
    cfg = json.loads((paths[result["baseline"]] / "manifest.json").read_text())["model"]["config"]
    bound = {}
    for name, path in paths.items():
        wb = weight_bytes(path, backend, cfg,
                          shared_head=name == "ort-builder" and cfg.get("tie_word_embeddings"))
        bound_ms = wb / (bandwidth * 1e9) * 1e3
        tpot = result["artifacts"][name]["summary"]["tpot_ms"]["median"]
        bound[name] = {"weight_bytes_per_token": wb, "bound_ms": round(bound_ms, 2),
                       "x_bound": round(tpot / bound_ms, 2)}
    return bound


def rereport(backend: str, args) -> dict:
    """Recompute ratios and goals from a saved tpot-PRESET-BACKEND.json (same samples, no
    runs)."""
    from flora_export.bench.harness import ratios

    result = json.loads((RESULTS / f"{stem(args.preset, backend)}.json").read_text())
    cfg = result["config"]
    result["ratios"] = ratios(result["artifacts"], result["baseline"], cfg["runs"],
                              cfg.get("passes", 1))
    if all(Path(a["spec"]).is_dir() for a in result["artifacts"].values()):
        result["bandwidth_bound"] = bandwidth_bound(result, backend, result["bandwidth_gbs"])
    report(backend, result, args)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama3.2-1b")
    p.add_argument("--work", type=Path, default=Path("bench-out/tpot"),
                   help="cache of the exports (reused when present)")
    p.add_argument("--backends", nargs="+", default=["executorch", "onnx"],
                   choices=["executorch", "onnx"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--with-executorch-peer", action="store_true",
                   help="also ExecuTorch's own export_llm (base and unfused LoRA r=16); "
                        "~9 min and ~12 GB each for the 1B")
    p.add_argument("--peers", nargs="+", default=["et-export", "et-export-lora"],
                   choices=["et-export", "et-export-lora"],
                   help="which ExecuTorch peer exports --with-executorch-peer builds and runs")
    p.add_argument("--with-builder-peer", action="store_true",
                   help="also ORT-GenAI's model builder (int4, block 32) on a random checkpoint "
                        "of the preset, in the onnx group")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--passes", type=int, default=2,
                   help="fresh workers per pass, load order reversed (default 2)")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--gen-len", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-seq", type=int, default=256)
    p.add_argument("--build-only", action="store_true", help="build (or reuse) the exports, stop")
    p.add_argument("--report-only", action="store_true",
                   help="recompute ratios, goals, tables and plots from the saved results "
                        "(and the bandwidth bound, where the exports are still on disk)")
    args = p.parse_args()
    if args.report_only:
        summarize(args.preset, {b: rereport(b, args) for b in args.backends
                                 if (RESULTS / f"{stem(args.preset, b)}.json").exists()})
        return
    variants = ["base"] + [v for v in args.variants if v != "base"]
    dirs = build_all(args.preset, variants, args.backends, args.work, args.max_seq)
    if args.with_executorch_peer and "executorch" in args.backends:
        from executorch_peer import build_peers
        dirs["executorch"].update(build_peers(args.preset, args.work, args.max_seq, args.peers))
    if args.with_builder_peer and "onnx" in args.backends:
        from onnx_vs_builder import build_builder_peer
        dirs["onnx"].update(build_builder_peer(args.preset, args.work, args.max_seq))
    if args.build_only:
        return
    from flora_export.bench.machine import memory_bandwidth_gbs

    results = {}
    for backend in args.backends:
        if "base" not in dirs[backend]:
            print(f"{backend}: the base export failed; nothing to compare")
            continue
        bandwidth = memory_bandwidth_gbs(args.threads)
        results[backend] = run_backend(backend, dirs[backend], args, bandwidth)
    summarize(args.preset, results)


def summarize(preset: str, results: dict) -> None:
    summary = {b: {k: r[k] for k in ("goals", "ratios", "bandwidth_gbs", "bandwidth_bound",
                                     "build_failures", "host_loadavg_before",
                                     "host_loadavg_after")} for b, r in results.items()}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"tpot-{preset}-summary.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, **summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
