"""`flora-export`: load -> adapter -> fuse -> quantize -> export -> verify, in one command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

from .errors import FloraError
from .outputs import exit_code, interrupt_name, nonempty_path, termination_as_interrupt
from .progress import StageProgress

EPILOG = """\
examples:
  flora-export --target android
      export the embedded default (a tiny Llama + FFBA adapter) to ./flora-out/android
  flora-export --target android --model ./Llama-3.2-1B-hf --adapter ./my-ffba --out ./phone
      export your fine-tuned model: FFBA fused, 8da4w, verified against eager PyTorch
  flora-export --target android --model llama3.2-1b --adapter none --quant 8da4w
      the Llama-3.2-1B architecture with random weights (benchmarks; nothing downloaded)
  flora-export --target ios --model ./Llama-3.2-1B-hf --adapter ./my-ffba --out ./ios
      Core ML model.mlpackage (iOS 18, KV cache as states, int4 blocks of 32) and the
      ExecuTorch model.pte in one folder (needs: pip install -e ".[coreml]")
  flora-export --target coreml      the Core ML package alone
  flora-export --target onnx        ONNX + an ONNX Runtime GenAI folder
  flora-export --target android --out ./phone --push
      export, then copy it to the connected phone (/data/local/tmp/flora/phone) and
      print the adb command that opens it in the flora chat app (android_demo/)

Targets: android (ExecuTorch .pte), ios (Core ML .mlpackage + .pte), coreml
(.mlpackage), onnx (model.onnx, genai_config.json).

The output directory holds model.pte, tokenizer.json and manifest.json (what was
built, from which inputs, op counts, parity figures, sizes, sha256, timings). It is
written only if the exported program, run through the ExecuTorch runtime, matches
the eager model; otherwise nothing is written and the exit code is non-zero.
Run it with ExecuTorch's LLM runner:
  TextLLMRunner("OUT/model.pte", "OUT/tokenizer.json")  (executorch.extension.llm.runner)
A Core ML package is checked on Linux by its spec (inputs, states, quantized linear
ops) and the captured program; its predictions need macOS:
  python -m flora_export.export.coreml_parity OUT     (on a Mac; exit 0 = parity passed)
"""


def build_parser() -> argparse.ArgumentParser:
    from .export.targets import TARGETS
    from .model.presets import PRESETS
    from .quantize import QUANT_MODES

    from .console import ArgumentParser
    from .limits import SEED, Limit, option

    p = ArgumentParser(
        prog="flora-export", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Export an FFBA (fused forward-backward adapter) fine-tuned Llama model "
                    "for phones: the adapter is fused into the base projections, each fused "
                    "projection becomes one quantized linear op, and the result is verified "
                    "in the target runtime before it is written.")
    p.add_argument("--target", required=True, metavar="TARGET",
                   help="what to build: " + "; ".join(f"{k}: {v.description}"
                                                      for k, v in TARGETS.items()))
    p.add_argument("--model", default=None, metavar="DIR|PRESET",
                   help="Hugging Face Llama directory (config.json, *.safetensors, "
                        "tokenizer.json) or a preset with random weights: "
                        f"{', '.join(PRESETS)}. Default: the embedded tiny demo model")
    p.add_argument("--adapter", default=None, metavar="DIR|none",
                   help="adapter directory (adapter_config.json + adapter_model.safetensors; "
                        "FFBA or PEFT LoRA). Default: the embedded demo adapter when --model is "
                        "not given, else none. 'none' exports the base alone")
    p.add_argument("--quant", default="8da4w", metavar="MODE",
                   help=f"quantization: {', '.join(QUANT_MODES)} (default 8da4w: int8 dynamic "
                        "activations, int4 weights in groups of 32; in Core ML, which has no "
                        "dynamic activation quantization: int4 weights in blocks of 32, fp16 "
                        "activations)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default ./flora-out/TARGET). A previous export "
                        "there (recognised by its manifest) is replaced atomically, only its "
                        "own files; a folder holding anything else is refused. A mount point "
                        "or a symlink is written into. Checked (writable, free space) before "
                        "the model is loaded")
    p.add_argument("--max-seq", type=option(Limit(int, 16, example="512")), default=512,
                   metavar="N", help="KV-cache length = max prompt + generated tokens (default "
                   "512; at least 16, at most the model's max_position_embeddings)")
    p.add_argument("--lora", choices=["merged", "unmerged"], default="merged",
                   help="for a LoRA adapter: merge it into the weights (default) or keep it "
                        "as separate matmuls")
    p.add_argument("--onnx-shared-embedding", action="store_true",
                   help="onnx, 8da4w, a model whose output head is tied to its embedding: "
                        "store the embedding as the head's int4 codes (one "
                        "GatherBlockQuantized), as ORT-GenAI's builder does: the folder "
                        "drops the table (bf16: 2 bytes a parameter of it). Costs accuracy "
                        "on small models (docs/verification.md); the quality gate judges it. "
                        "Default: the table unquantized in the checkpoint's dtype")
    p.add_argument("--no-fuse", action="store_true",
                   help="keep an FFBA adapter unfused (extra matmuls; a benchmark baseline)")
    p.add_argument("--no-base-check", action="store_true",
                   help="apply an adapter even if it was trained on a different base")
    p.add_argument("--allow-unused-weights", action="store_true",
                   help="load a checkpoint holding tensors config.json does not use (extra "
                        "layers, stray names), skipping them with a warning; refused otherwise")
    p.add_argument("--allow-tokenizer-mismatch", action="store_true",
                   help="export even when a runtime's own tokenizer differs from Hugging Face's "
                        "on the probe set (the manifest then lists every mismatch)")
    p.add_argument("--seed", type=option(SEED), default=0,
                   help="seed for preset random weights")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty --out that holds files flora-export did not "
                        "write: the previous export's files are replaced, all other files are "
                        "left untouched (a file of yours with the name of an export file, "
                        "e.g. manifest.json, is never overwritten: that is still refused)")
    p.add_argument("--push", action="store_true",
                   help="android: after the export, copy it to the connected device with adb "
                        "(checked file by file, readable by apps) for the flora chat app")
    p.add_argument("--serial", metavar="SERIAL",
                   help="--push: the device (`adb devices`) when several are connected")
    p.add_argument("--push-to", metavar="DEVICE_DIR",
                   help="--push: directory on the device (default /data/local/tmp/flora/NAME, "
                        "NAME = the output directory's name); replaced")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show library and runtime logs (otherwise kept in a log file)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["verify"]:           # flora-export verify DIR [--device ...]
        from .verify_cli import main as verify_main
        return verify_main(argv[1:])
    args = build_parser().parse_args(argv)
    with termination_as_interrupt():     # SIGTERM cleans up like Ctrl-C
        try:
            return _main(args)
        except KeyboardInterrupt as e:    # outside the export (e.g. during --push)
            print(f"flora-export: {interrupt_name(e)}: stopped", file=sys.stderr)
            return exit_code(e)


def _main(args) -> int:
    try:
        device = _push_device(args)          # before the export: fail fast
        out = _out_dir(args)
    except FloraError as e:
        print(f"flora-export: error: {e}", file=sys.stderr)
        return 2
    with _native_logs(args.verbose) as log_path:
        try:
            manifest, seconds = _run(args, out)
        except FloraError as e:
            print(f"flora-export: error: {e}", file=_CONSOLE.err)
            return 2
        except KeyboardInterrupt as e:
            what = "interrupted" if exit_code(e) == 130 else f"terminated ({interrupt_name(e)})"
            print(f"flora-export: {what}; nothing was written", file=_CONSOLE.err)
            return exit_code(e)
        except Exception as e:  # an internal failure, not bad input: keep the log
            logging.getLogger("flora_export").exception("export failed")
            print(f"flora-export: internal error: {type(e).__name__}: {str(e)[:300]} "
                  f"(details: {log_path or 'see the traceback above'})", file=_CONSOLE.err)
            log_path = None
            return 1
        finally:
            if log_path:
                Path(log_path).unlink(missing_ok=True)
    _print_summary(manifest, seconds, out)
    return _push(args, device, out) if device else 0


def _out_dir(args) -> Path:
    return nonempty_path(args.out, "--out") if args.out is not None else Path(
        f"flora-out/{args.target}")


def _push_device(args):
    """The checked device for --push (adb present, exactly one device or --serial), or None."""
    if not args.push:
        if args.serial or args.push_to:
            raise FloraError("--serial and --push-to only apply with --push", "add --push")
        return None
    from .adb import AdbDevice
    from .export.push import check_pushable

    check_pushable(args.target)
    device = AdbDevice(args.serial)
    device.select()
    return device


def _push(args, device, out: Path) -> int:
    from .export.push import open_command, push_export, remote_dir_for

    try:
        remote = remote_dir_for(out, args.push_to)
        print(f"\npushing {out} to {device.serial}:{remote} ...", flush=True)
        got = push_export(out, device, remote, progress=StageProgress(sys.stdout))
    except FloraError as e:
        print(f"flora-export: error: {e} (the export in {out} is complete)", file=sys.stderr)
        return 2
    print(f"  on the device  {got['remote']} ({got['files']} files, {got['bytes'] / 1e6:.2f} MB, "
          f"{got['check']} checked)")
    print("  open it in the flora chat app:\n    " + open_command(got["remote"], args.serial))
    return 0


@contextmanager
def _native_logs(verbose: bool):
    """Send native (C++) and library logs to a file, keeping the console for progress."""
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        yield None
        return
    fd, path = tempfile.mkstemp(prefix="flora-export-", suffix=".log")
    saved = os.dup(1), os.dup(2)
    out = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    err = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    sys.stdout.flush(), sys.stderr.flush()
    os.dup2(fd, 1), os.dup2(fd, 2)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    _CONSOLE.out, _CONSOLE.err = out, err
    try:
        yield path
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)
        _CONSOLE.out, _CONSOLE.err = sys.stdout, sys.stderr
        out.close(), err.close()


_CONSOLE = SimpleNamespace(out=sys.stdout, err=sys.stderr)  # the terminal, while fds 1/2 log


def _run(args, out: Path) -> tuple[dict, float]:
    from .adapters import load_adapter
    from .default import DEFAULT_ADAPTER, DEFAULT_BASE
    from .export import ExportConfig, export
    from .export.outdir import plan_out_dir
    from .export.targets import target_row
    from .fuse import merge_lora
    from .model import load_model
    from .quantize import quant_config

    row, qcfg = target_row(args.target), quant_config(args.quant)  # fail fast on unknown names
    for flag in ("model", "adapter"):
        if getattr(args, flag) is not None and not getattr(args, flag).strip():
            raise FloraError(f"--{flag} is an empty string (an unset shell variable?)",
                             f"pass a path or name to --{flag}, or leave the option out")
    t0 = time.perf_counter()
    model_src = args.model or str(DEFAULT_BASE)
    adapter = args.adapter if args.adapter is not None else (
        None if args.model else str(DEFAULT_ADAPTER))
    plan_out_dir(out, row.backends, args.force, _size_estimate(model_src, adapter, qcfg, row))
    print(f"loading model {args.model or 'embedded default'} ...", file=_CONSOLE.out, flush=True)
    model = load_model(model_src, seed=args.seed, allow_unused_weights=args.allow_unused_weights)
    if adapter and adapter.lower() != "none":
        print(f"loading adapter {args.adapter or 'embedded default'} ...", file=_CONSOLE.out,
              flush=True)
        load_adapter(model, adapter, check_base=not args.no_base_check)
        if model.adapter_state.is_lora and args.lora == "merged":
            merge_lora(model)
    cfg = ExportConfig(quant=args.quant, max_seq=args.max_seq, fuse_adapters=not args.no_fuse,
                       force=args.force, free_weights=True,
                       allow_tokenizer_mismatch=args.allow_tokenizer_mismatch,
                       shared_embedding=args.onnx_shared_embedding)
    manifest = export(model, args.target, out, cfg, progress=StageProgress(_CONSOLE.out))
    return manifest, time.perf_counter() - t0


def _size_estimate(model_src: str, adapter: str | None, qcfg, row) -> int | None:
    """The export's size from the model's config.json (or preset) before the weights are
    loaded, for the free-space check; None when the config cannot be read (the loader
    then reports why, and export() checks again with the loaded model)."""
    from .export.outdir import config_parameters, estimate_bytes
    from .model.config import LlamaConfig
    from .model.presets import PRESETS, preset_config

    try:
        cfg = (preset_config(model_src) if model_src in PRESETS else
               LlamaConfig.from_file(Path(model_src) / "config.json"))
        linear, embedding = config_parameters(cfg)
        extra = sum(f.stat().st_size for f in [Path(model_src) / "tokenizer.json",
                                                *(Path(adapter).glob("*.safetensors")
                                                  if adapter and adapter.lower() != "none"
                                                  else [])] if f.is_file())
    except Exception:       # noqa: BLE001 -- any unreadable input is the loader's to report
        return None
    return estimate_bytes(linear, embedding, qcfg, row.backends, extra)


def _print_summary(m: dict, seconds: float, out: Path) -> None:
    console = sys.stdout
    c = m["counts"]
    rows = [("output", str(out))]
    rows += [(name, f"{rec['bytes'] / 1e6:.2f} MB  " + (f"sha256 {rec['sha256'][:12]}" if "sha256"
                                                        in rec else f"{len(rec['files'])} files"))
             for name, rec in m["files"].items()
             if name != "verify_reference.safetensors"]   # for `flora-export verify`, not apps
    adapter = m["adapter"]
    rows += [
        ("target / backends", f"{m['target']} / {', '.join(m['backends'])}"),
        ("model", f"{m['model']['name']} ({m['model']['parameters'] / 1e6:.1f} M params)"),
        ("adapter", "none" if not adapter else
         f"{adapter['adapter_type']} {adapter['state']}" +
         (f" (width {adapter['width']} -> {adapter['fused_width']})"
          if adapter.get("fused_width") else "")),
        ("quantization", m["quantization"]["name"]),
        ("fused linears", str(c["fused_linears"])),
        *[("quantized linear ops" + _which(m, name), _op_summary(name, r["counts"]))
          for name, r in m["results"].items()],
        *[("parity vs eager" + _which(m, name), _parity_summary(r["parity"]))
          for name, r in m["results"].items()],
        *[("quality vs fp32" + _which(m, name), _parity_summary(r["quality"]))
          for name, r in m["results"].items() if r.get("quality")],
        ("time / peak RSS", f"{seconds:.1f} s / {m['peak_rss_mb']:.0f} MB"),
    ]
    width = max(len(k) for k, _ in rows)
    print("", file=console)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}", file=console)


def _which(m: dict, backend: str) -> str:
    return f" ({backend})" if len(m["results"]) > 1 else ""


def _op_summary(backend: str, c: dict) -> str:
    detail = (f", {c['delegates']} XNNPACK delegates" if "delegates" in c else
              f", {c['quantized_linear_ops']} MatMulNBits" if backend == "onnx" else
              "".join(f", {n} {op}" for op, n in c.get("quantized_weight_ops", {}).items()))
    return f"{c['quantized_linear_ops']} of {c['linear_ops']} linears{detail}"


def _parity_summary(p: dict) -> str:
    if "max_abs_diff" not in p:          # Core ML: predictions need macOS
        return f"{p['status']}: {p['how']}"
    agree = ("no decisive positions" if p.get("decisive_agreement") is None else
             f"{p['decisive_agreement']:.0%} of {p['decisive_steps']} decisive")
    held = (p.get("heldout") or {}).get("artifact")
    held = f", held-out accuracy {held['accuracy']:.1%}" if held else ""
    verdict = p.get("verdict", "passed")
    unsure = [k for k, v in p.get("criteria", {}).items() if v.startswith("inconclusive")]
    if verdict == "passed" and unsure:
        verdict += f" ({', '.join(unsure)} inconclusive)"
    return (f"{verdict}: max|diff| {p['max_abs_diff']:.2g}, SQNR "
            f"{p['sqnr_db']:.1f} dB, greedy tokens {p['token_agreement']:.0%} of {p['steps']} "
            f"positions ({agree}){held}")


if __name__ == "__main__":
    sys.exit(main())
