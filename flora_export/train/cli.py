"""`flora-train`: train an FFBA adapter, a LoRA adapter or a full model from a recipe."""

from __future__ import annotations

import argparse
import sys

from ..console import ArgumentParser, run_command
from ..embedded import DEFAULT_BASE, EMBEDDED_BASE
from ..errors import FloraError
from ..limits import COUNT, option

EPILOG = """\
examples:
  flora-train recipes/default-adapter.yaml
      train the embedded demo's FFBA adapter (shift each letter) into runs/default-adapter
  flora-train recipes/ffba-shift.yaml --set data.tasks=[rotate] --set train.steps=200
      a recipe with overrides (each checked against the field's type)
  flora-train --budget --model flora-default --lora-rank 8
      the FFBA width with the trainable-parameter count of LoRA r=8 on all 7 projections
  flora-train --budget --model llama3.2-1b --ffba-width 96 --variant ffba
      the LoRA rank with the parameter count of that FFBA adapter
  accelerate launch -m flora_export.train.cli recipes/ffba-shift.yaml
      the same recipe on several GPUs or nodes (DDP/FSDP as set by `accelerate config`)
  ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m flora_export.train.cli RECIPE
      two data-parallel CPU processes (gloo)

A run writes to the recipe's `out`: the adapter (adapter_config.json +
adapter_model.safetensors, what flora-export --adapter loads) or, for method.kind
full, a model directory (config.json, model.safetensors, tokenizer.json); plus
recipe.yaml (the resolved recipe), metrics.json (held-out exact-match accuracy and
loss before and after training) and train_log.jsonl. An interrupted run resumes
from <out>/checkpoint when started again with the same recipe.
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="flora-train", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Fine-tune a Llama-architecture model with an FFBA adapter (fused "
                    "forward-backward adapter), a LoRA adapter, or all weights, as a YAML "
                    "recipe says. Deterministic for a seed; resumable.")
    p.add_argument("recipe", nargs="?", help="recipe YAML file (see recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. train.lr=1e-3 (repeatable)")
    p.add_argument("--restart", action="store_true",
                   help="ignore an existing checkpoint in the output directory")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="keep <out>/checkpoint after the run finishes")
    p.add_argument("--fields", action="store_true", help="list every recipe field and exit")
    p.add_argument("--tasks", action="store_true", help="list the built-in data tasks and exit")
    budget = p.add_argument_group("parameter-budget matching (--budget)")
    budget.add_argument("--budget", action="store_true",
                        help="print LoRA and FFBA trainable-parameter counts at a matched "
                             "budget and exit")
    budget.add_argument("--model", default=EMBEDDED_BASE, metavar="DIR|PRESET",
                        help="architecture to count for (default: the embedded base)")
    budget.add_argument("--lora-rank", type=option(COUNT), metavar="R", help="LoRA rank to match")
    budget.add_argument("--ffba-width", type=option(COUNT), metavar="H", help="FFBA width to match")
    budget.add_argument("--targets", default=None,
                        help="LoRA targets, comma-separated, as the model's transformers class "
                        "names its projections (default: all of them: q_proj,k_proj,v_proj,"
                        "o_proj,gate_proj,up_proj,down_proj; Phi3: qkv_proj,o_proj,"
                        "gate_up_proj,down_proj)")
    budget.add_argument("--variant", default="ffba", help="FFBA variant: ffba, ffba-attn, "
                                                          "ffba-mlp (default ffba)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="show library logs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("flora-train", args.verbose, lambda: _dispatch(args),
                       "interrupted; start the same command again to resume from the last "
                       "checkpoint")


def _dispatch(args) -> int:
    if args.fields:
        return _print_fields()
    if args.tasks:
        from .tasks import TASKS
        for name, (_, desc) in TASKS.items():
            print(f"  {name:<8} {desc}")
        return 0
    if args.budget:
        return _print_budget(args)
    if not args.recipe:
        raise FloraError("no recipe given", "pass a recipe file, e.g. flora-train "
                         "recipes/default-adapter.yaml (or --fields, --tasks, --budget)")
    return _train(args)


def _print_fields() -> int:
    from .recipe import field_docs
    for key, (kind, default, doc) in field_docs().items():
        print(f"  {key:<24} {kind:<13} default {default!r}\n  {'':<24} {doc}")
    return 0


def _print_budget(args) -> int:
    from ..model.config import LlamaConfig
    from .budget import ffba_width_for_lora, lora_rank_for_ffba

    cfg = _arch(args.model, LlamaConfig, EMBEDDED_BASE)
    targets = None if args.targets is None else tuple(t for t in args.targets.split(",") if t)
    if (args.lora_rank is None) == (args.ffba_width is None):
        raise FloraError("--budget needs exactly one of --lora-rank and --ffba-width",
                         "e.g. flora-train --budget --lora-rank 16")
    match = (ffba_width_for_lora(cfg, args.lora_rank, targets, args.variant)
             if args.lora_rank is not None
             else lora_rank_for_ffba(cfg, args.ffba_width, args.variant, targets))
    for line in match.lines():
        print(line)
    return 0


def _arch(source: str, config_cls, embedded: str):
    from pathlib import Path

    from ..model.presets import PRESETS, preset_config
    if not source.strip():
        raise FloraError("--model is an empty string (an unset shell variable?)",
                         "pass a model directory or preset name, or leave --model out")
    if source == embedded:
        source = str(DEFAULT_BASE)
    if Path(source, "config.json").is_file():
        return config_cls.from_file(Path(source, "config.json"))
    if source in PRESETS:
        return preset_config(source)
    raise FloraError(f"{source!r} is neither a model directory nor a preset",
                     f"pass a directory with config.json, {embedded}, or one of: "
                     f"{', '.join(PRESETS)}")


def _train(args) -> int:
    from .recipe import load_recipe
    from .trainer import train

    recipe = load_recipe(args.recipe, args.overrides)
    metrics = train(recipe, restart=args.restart, keep_checkpoint=args.keep_checkpoint,
                    progress=not args.quiet)
    if metrics is None:          # not the main process of a distributed run
        return 0
    before, after = metrics["eval_before"], metrics["eval"]
    print(f"\n  output            {recipe.out}")
    print(f"  method            {metrics['method']} ({metrics['trainable_params']:,} trainable "
          f"of {metrics['total_params']:,} parameters)")
    if before:
        print(f"  held-out before   accuracy {before['accuracy']:.1%}, loss {before['loss']:.3f}")
    print(f"  held-out after    accuracy {after['accuracy']:.1%}, loss {after['loss']:.3f} "
          f"({after['n']} examples)")
    print(f"  time              {metrics['wall_s']:.0f} s, {metrics['tokens_per_s']:,.0f} "
          "tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
