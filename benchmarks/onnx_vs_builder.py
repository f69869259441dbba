"""flora-export's ONNX export vs ONNX Runtime GenAI's own model builder, same weights.

Builds a random-weight Hugging Face checkpoint of a preset (default llama3.2-1b; bf16 as
published checkpoints are, `--dtype`), then
1. exports it with `python -m onnxruntime_genai.models.builder` (int4, block 32,
   accuracy level 4), with `flora-export --target onnx` (8da4w -> MatMulNBits int4,
   block 32, accuracy level 4; the embedding table in the checkpoint's dtype) and with
   the same plus `--onnx-shared-embedding` (the embedding as the tied head's int4
   codes, as the builder stores it), recording wall time and peak RSS of each;
2. runs the three folders in ORT-GenAI with flora-bench's harness (one worker process
   per folder, interleaved A B C A B C ..., the same prompt ids and thread count) and
   reports TTFT and TPOT (docs/metrics.md) as medians and ratios over the builder's.

    python benchmarks/onnx_vs_builder.py --preset llama3.2-1b --runs 5 --out bench-out/onnx

Prints a markdown table and writes results.json and latency.{json,md,png} in --out, and
the same as onnx-vs-builder-PRESET.json and onnx-vs-builder-PRESET-latency.{json,md,png} in --results
(default benchmarks/results), with the machine's facts and load average.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from variants import run_measured  # noqa: E402


def build_checkpoint(preset: str, path: Path, dtype: str = "bfloat16") -> None:
    """A random-weight Hugging Face checkpoint of `preset` in `dtype` (bf16: the dtype the
    published checkpoints of these families store), with a byte-level tokenizer; written
    by a child process, so this one stays small: a measured export, forked from it later,
    counts this process's size at the fork in its peak RSS (run_measured)."""
    import multiprocessing

    if (path / "model.safetensors").exists():
        return
    child = multiprocessing.get_context("fork").Process(target=_write_checkpoint,
                                                        args=(preset, path, dtype))
    child.start()
    child.join()
    if child.exitcode:
        raise SystemExit(f"writing the {preset} checkpoint to {path} failed")


def _write_checkpoint(preset: str, path: Path, dtype: str) -> None:
    import torch

    from flora_export.model import PRESETS, random_model, save_hf_checkpoint
    from flora_export.model.presets import special_base
    from flora_export.model.tokenizer import byte_level_tokenizer

    cfg = PRESETS[preset]
    path.mkdir(parents=True, exist_ok=True)
    byte_level_tokenizer(cfg.vocab_size, special_base(cfg)).save(str(path / "tokenizer.json"))
    save_hf_checkpoint(random_model(cfg, seed=0), path, dtype=getattr(torch, dtype))


def build_builder_peer(preset: str, work: Path, max_seq: int) -> dict[str, Path]:
    """{"ort-builder": folder} built by ORT-GenAI's model builder from a random checkpoint
    of the preset (int4, block 32, accuracy level 4, its KV buffer max_seq long), with its
    cost.json; reused when present. {} when the builder fails (reason in builder.log)."""
    hf, out = work / "ort-builder-hf", work / "onnx" / "ort-builder"
    if (out / "cost.json").exists():
        return {"ort-builder": out}
    print(f"building ort-builder with ORT-GenAI's model builder -> {out}", flush=True)
    build_checkpoint(preset, hf)
    try:
        cost = builder_export(hf, out, work / "logs" / "onnx-ort-builder.log", max_seq)
    except RuntimeError as e:
        print(f"  {e}", flush=True)
        return {}
    (out / "cost.json").write_text(json.dumps(cost))
    return {"ort-builder": out}


def builder_export(hf: Path, out: Path, log: Path, max_seq: int) -> dict:
    """ORT-GenAI's builder on hf -> out (through builder_compat.py: Gemma 3's RoPE fields as
    it reads them under transformers 5); its wall time and peak RSS."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cost = run_measured([sys.executable, str(Path(__file__).with_name("builder_compat.py")),
                         "-i", str(hf), "-o", str(out), "-p", "int4", "-e", "cpu",
                         "--extra_options", "block_size=32", "accuracy_level=4"], log)
    cfg = json.loads((out / "genai_config.json").read_text())
    cfg["search"]["max_length"] = max_seq                   # a realistic KV buffer
    # the builder adds the tokenizer's own eos/pad token, which the random presets'
    # byte-level tokenizers place past the vocabulary: keep config.json's ids
    hf_cfg = json.loads((hf / "config.json").read_text())
    vocab = hf_cfg["vocab_size"]
    for key in ("eos_token_id", "pad_token_id"):
        ids = cfg["model"].get(key)
        if isinstance(ids, list):
            cfg["model"][key] = [i for i in ids if i < vocab]
        elif isinstance(ids, int) and ids >= vocab:
            eos = hf_cfg["eos_token_id"]
            cfg["model"][key] = eos[0] if isinstance(eos, list) else eos
    (out / "genai_config.json").write_text(json.dumps(cfg, indent=2))
    return cost


def latency(folders: dict[str, Path], args) -> dict:
    """flora-bench's harness: one worker process per folder, interleaved runs."""
    from flora_export.bench import BenchConfig, run_bench, write_all

    config = BenchConfig(prompt_len=args.prompt_len, gen_len=args.gen_len, runs=args.runs,
                         threads=args.threads)
    result = run_bench({k: str(v) for k, v in folders.items()}, config, baseline="builder",
                       progress=lambda m: print(m, flush=True))
    write_all(result, args.out, "latency")
    write_all(result, args.results, f"onnx-vs-builder-{args.preset}-latency")
    return {name: {"ttft": _ms(a["summary"]["ttft_ms"]), "tpot": _ms(a["summary"]["tpot_ms"]),
                   "peak_rss_mb": a.get("peak_rss_mb")}
            for name, a in result["artifacts"].items()}


def _ratios(name: str, cost: dict, lat: dict, size: dict) -> dict:
    """`name`'s TPOT, TTFT (medians), export time, peak RSS and folder size over the
    builder's."""
    b = "builder"
    return {"tpot": round(lat[name]["tpot"]["median_ms"] / lat[b]["tpot"]["median_ms"], 3),
            "ttft": round(lat[name]["ttft"]["median_ms"] / lat[b]["ttft"]["median_ms"], 3),
            "export_time": round(cost[name]["seconds"] / cost[b]["seconds"], 2),
            "peak_rss": round(cost[name]["peak_rss_gb"] / cost[b]["peak_rss_gb"], 2),
            "size": round(size[name] / size[b], 3)}


def _ms(s: dict) -> dict:
    return {"median_ms": round(s["median"], 2), "min_ms": round(s["min"], 2),
            "max_ms": round(s["max"], 2)}


def main() -> None:
    from flora_export.bench.machine import host_facts, loadavg

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama3.2-1b")
    p.add_argument("--out", type=Path, default=Path("bench-out/onnx"))
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--gen-len", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-seq", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="the checkpoint's dtype (default bfloat16, as published checkpoints)")
    p.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args()
    hf = args.out / "hf"
    folders = {name: args.out / name for name in ("flora", "flora-shared", "builder")}
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = loadavg()
    build_checkpoint(args.preset, hf, args.dtype)

    def flora(name: str, *extra: str) -> dict:
        return run_measured([sys.executable, "-m", "flora_export.cli", "--target", "onnx",
                             "--model", str(hf), "--adapter", "none", "--out",
                             str(folders[name]), "--max-seq", str(args.max_seq), "--force",
                             *extra], args.out / f"{name}.log")
    try:
        cost = {"builder": builder_export(hf, folders["builder"], args.out / "builder.log",
                                          args.max_seq),
                "flora": flora("flora"),
                "flora-shared": flora("flora-shared", "--onnx-shared-embedding")}
    except RuntimeError as e:
        sys.exit(f"failed: {e}")
    lat = latency(folders, args)
    size = {name: round(sum(f.stat().st_size for f in d.iterdir()) / 2 ** 20, 1)
            for name, d in folders.items()}
    result = {"preset": args.preset, "checkpoint_dtype": args.dtype, "threads": args.threads, "prompt_len": args.prompt_len,
              "gen_len": args.gen_len, "runs": args.runs, "export": cost, "latency": lat,
              "size_mib": size, "machine": host_facts(), "loadavg_before": load_before,
              "loadavg_after": loadavg(),
              "ratios_over_builder": {name: _ratios(name, cost, lat, size)
                                      for name in ("flora", "flora-shared")}}
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    (args.results / f"onnx-vs-builder-{args.preset}.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| export | time s | peak RSS GB | TTFT ms (median) | TPOT ms (median) | size MiB |")
    print("|---|---|---|---|---|---|")
    for name in folders:
        print(f"| {name} | {cost[name]['seconds']} | {cost[name]['peak_rss_gb']} | "
              f"{lat[name]['ttft']['median_ms']} | {lat[name]['tpot']['median_ms']} | "
              f"{size[name]} |")
    print(json.dumps(result["ratios_over_builder"]))


if __name__ == "__main__":
    main()
