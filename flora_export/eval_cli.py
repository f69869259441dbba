"""`flora-eval`: held-out exact-match accuracy and loss of a base, an adapter or an export."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .console import ArgumentParser, run_command
from .errors import FloraError
from .limits import Limit, option

# the held-out set of the built-in tasks has about 1.2M distinct prompts
EXAMPLES = Limit(int, 1, 100_000, example="200")

EPILOG = """\
examples:
  flora-eval --task shift
      the embedded demo model (base + its FFBA adapter), eager PyTorch
  flora-eval --task shift --adapter none
      the embedded base alone (it was never taught to shift letters)
  flora-eval --export ./flora-out/android --task shift
      the exported int4 .pte through the ExecuTorch runtime (prefill + decode steps)
  flora-eval --model ./my-base --adapter runs/ffba-dates --jsonl recipes/data/dates.jsonl

An answer counts when greedy decoding gives exactly the expected response and then
the stop token. The loss is the mean negative log-likelihood per response token.
Held-out examples of built-in tasks never occur in training (a fixed hash split).
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="flora-eval", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Exact-match accuracy and loss on held-out prompt/response examples, in "
                    "eager PyTorch or through an export's own runtime.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="DIR|PRESET",
                     help="model directory or preset (default: the embedded demo base)")
    src.add_argument("--export", metavar="DIR",
                     help="a flora-export output directory (model.pte runs in the ExecuTorch "
                          "runtime, model.onnx in ONNX Runtime)")
    p.add_argument("--adapter", metavar="DIR|none",
                   help="adapter directory (FFBA or LoRA); default: the embedded demo adapter "
                        "when --model is not given, else none")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--task", action="append", metavar="NAME",
                      help="built-in task (repeatable; `flora-train --tasks` lists them)")
    data.add_argument("--jsonl", metavar="FILE", help="prompt/response JSONL file (all records)")
    p.add_argument("-n", type=option(EXAMPLES), default=200, help="number of held-out examples (default 200)")
    p.add_argument("--no-chat-template", action="store_true",
                   help="prompt without the chat template (eager models only)")
    p.add_argument("--show", type=option(Limit(int, 0, example="3")), default=3, metavar="K",
                   help="print the model's answers to the first K examples (default 3)")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="show library logs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("flora-eval", args.verbose, lambda: _evaluate(args))


def _evaluate(args) -> int:
    json_out = _json_target(args.json)        # before the evaluation: fail fast
    result = run(args)
    _print(result)
    if json_out is not None:
        from .outputs import write_atomic
        write_atomic(json_out, json.dumps(result, indent=2).encode(), "--json")
    return 0


def _json_target(value: str | None) -> Path | None:
    """Where --json goes (a link to a file is followed); a directory, an unwritable place
    or an existing file that is not a flora-eval result is refused."""
    if value is None:
        return None
    from .outputs import check_file_target, json_with_keys, nonempty_path
    return check_file_target(nonempty_path(value, "--json"), "--json",
                             lambda p: json_with_keys(p, ("n", "correct", "accuracy", "samples")))


def examples_for(args):
    from .train.tasks import eval_set, read_jsonl
    if args.jsonl:
        return read_jsonl(Path(args.jsonl))[:args.n], {"jsonl": args.jsonl}
    if not args.task:
        raise FloraError("no evaluation data given", "pass --task NAME (see flora-train --tasks) "
                         "or --jsonl FILE")
    from .train.tasks import TASKS
    from .errors import unknown_name
    for t in args.task:
        if t not in TASKS:
            raise unknown_name("task", t, TASKS)
    return eval_set(args.task, args.n), {"tasks": args.task}


def run(args) -> dict:
    from .train.evaluation import check_fits, score_eager, score_steps
    from .export.artifact import export_step
    from .train.data import Encoder

    for flag in ("model", "export", "adapter"):
        if getattr(args, flag) is not None and not getattr(args, flag).strip():
            raise FloraError(f"--{flag} is an empty string (an unset shell variable?)",
                             f"pass a path to --{flag}, or leave the option out")

    examples, data = examples_for(args)
    if args.export:
        step, encoder, manifest = export_step(Path(args.export))
        check_fits(encoder, examples, manifest["runtime"]["max_seq_len"])
        res = score_steps(step, encoder, examples, show=args.show)
        what = {"export": str(args.export), "target": manifest["target"],
                "quantization": manifest["quantization"]["name"],
                "runtime": "executorch" if (Path(args.export) / "model.pte").is_file()
                else "onnxruntime"}
    else:
        model, what = _eager_model(args)
        encoder = Encoder.for_model(model, not args.no_chat_template)
        res = score_eager(model, encoder, examples, show=args.show)
    return {**what, "data": data, **res.to_dict()}


def _eager_model(args):
    from .adapters import load_adapter
    from .default import DEFAULT_ADAPTER, DEFAULT_BASE
    from .model import load_model

    model = load_model(args.model or str(DEFAULT_BASE))
    adapter = args.adapter if args.adapter is not None else (
        None if args.model else str(DEFAULT_ADAPTER))
    if adapter and adapter.lower() != "none":
        load_adapter(model, adapter)
    return model, {"model": args.model or "embedded default base",
                   "adapter": adapter or "none", "runtime": "eager pytorch fp32"}


def _print(r: dict) -> None:
    what = r.get("export") or f"{r['model']} + adapter {r['adapter']}"
    print(f"  evaluated   {what} ({r['runtime']})")
    print(f"  data        {r['data']}, {r['n']} held-out examples")
    print(f"  accuracy    {r['accuracy']:.1%} exact match ({r['correct']}/{r['n']})")
    print(f"  loss        {r['loss']:.4f} per response token")
    for s in r["samples"]:
        mark = "ok " if s["got"] == s["expected"] else "BAD"
        print(f"  {mark} {s['prompt']!r} -> {s['got']!r} (expected {s['expected']!r})")


if __name__ == "__main__":
    sys.exit(main())
