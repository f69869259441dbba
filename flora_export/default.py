"""The embedded default: a tiny trained Llama-architecture base and its FFBA adapter.

`flora-export --target android` with no `--model` exports these, and the demo apps
chat with the result. They ship inside the package (a few MB of safetensors, with
the recipe, metrics and training log of each) and are rebuilt with the project's own
recipes by

    python -m flora_export.default

which trains recipes/default-base.yaml (the base, from scratch, on copying and
upper-casing words) and then recipes/default-adapter.yaml (an FFBA adapter that
teaches the frozen base to shift every letter to the next one), and replaces the assets when both are done.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from .embedded import ASSETS, DEFAULT_ADAPTER, DEFAULT_BASE, RECIPES

__all__ = ["ASSETS", "DEFAULT_BASE", "DEFAULT_ADAPTER", "RECIPES", "default_config",
           "write_architecture", "make_default_assets"]


def default_config():
    """The demo architecture: Llama-3.2 structure (GQA, llama3 RoPE scaling, tied
    embeddings, Llama-3 special tokens) at 4 layers, d=128 and a 1024-token vocabulary."""
    from .model.config import LlamaConfig
    from .model.presets import _LLAMA3_ROPE

    return LlamaConfig(
        vocab_size=1024, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
        rope_scaling=_LLAMA3_ROPE, tie_word_embeddings=True, max_position_embeddings=16384,
        bos_token_id=1024 - 128, eos_token_ids=(1024 - 128 + 1, 1024 - 128 + 9))


def write_architecture(path: Path, seed: int = 0) -> Path:
    """config.json, tokenizer.json and random weights of the demo architecture."""
    from .model import random_model, save_hf_checkpoint
    from .model.tokenizer import byte_level_tokenizer

    cfg = default_config()
    path.mkdir(parents=True, exist_ok=True)
    byte_level_tokenizer(cfg.vocab_size, cfg.bos_token_id).save(str(path / "tokenizer.json"))
    save_hf_checkpoint(random_model(cfg, seed=seed), path)
    return path


def make_default_assets(base_dir: Path = DEFAULT_BASE, adapter_dir: Path = DEFAULT_ADAPTER,
                        overrides: list[str] = (), progress: bool = True) -> dict:
    """Train the base and the adapter with the committed recipes; install them."""
    from .errors import FloraError
    from .train import load_recipe, train

    if not (RECIPES / "default-base.yaml").is_file():
        raise FloraError(f"the recipes are not at {RECIPES}",
                         "run this from a source checkout (pip install -e .)")
    work = Path(tempfile.mkdtemp(prefix="flora-default-"))
    arch = write_architecture(work / "arch")
    base = load_recipe(RECIPES / "default-base.yaml",
                       [f"model.base={arch}", f"out={work / 'base'}", *overrides])
    base_metrics = train(base, progress=progress)
    adapter = load_recipe(RECIPES / "default-adapter.yaml",
                          [f"model.base={work / 'base'}", f"out={work / 'adapter'}", *overrides])
    adapter_metrics = train(adapter, progress=progress)
    for name, dst in (("base", Path(base_dir)), ("adapter", Path(adapter_dir))):
        _record_recipe(work / name, f"default-{name}.yaml", overrides)
        _replace_dir(work / name, dst)
    shutil.rmtree(work, ignore_errors=True)
    return {"base": base_metrics, "adapter": adapter_metrics}


def _record_recipe(run_dir: Path, recipe: str, overrides) -> None:
    """recipe.yaml as a user runs it (`flora-train recipes/...`), without temp paths."""
    from .model.checkpoint import write_atomic
    from .train.recipe import dump_recipe, load_recipe

    write_atomic(run_dir / "recipe.yaml",
                 dump_recipe(load_recipe(RECIPES / recipe, list(overrides))).encode())


def _replace_dir(src: Path, dst: Path) -> None:
    """Move `src` to `dst`, replacing it only once the new content is complete."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    staged = dst.with_name(f".{dst.name}.new")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(src, staged)
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(staged, dst)
    shutil.rmtree(old, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="recipe override applied to both runs")
    args = parser.parse_args()

    def body() -> int:
        m = make_default_assets(overrides=args.overrides)
        print(f"wrote {DEFAULT_BASE} (held-out accuracy {m['base']['eval']['accuracy']:.1%}) "
              f"and {DEFAULT_ADAPTER} (base {m['adapter']['eval_before']['accuracy']:.1%} -> "
              f"adapter {m['adapter']['eval']['accuracy']:.1%} on its task)")
        return 0

    from .console import run_command
    return run_command("python -m flora_export.default", False, body)


if __name__ == "__main__":
    raise SystemExit(main())
