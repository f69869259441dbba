"""The embedded default: a tiny Llama-architecture base and an FFBA adapter for it.

`flora-export --target android` with no `--model` exports these. They ship inside
the package (about 4 MB of safetensors) and are regenerated, bit for bit, by
`python -m flora_export.default`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

ASSETS = Path(__file__).parent / "assets" / "default"
DEFAULT_BASE = ASSETS / "base"
DEFAULT_ADAPTER = ASSETS / "adapter"


def default_config():
    from .model.config import LlamaConfig
    from .model.presets import _LLAMA3_ROPE

    return LlamaConfig(
        vocab_size=1024, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0,
        rope_scaling=_LLAMA3_ROPE, tie_word_embeddings=True, max_position_embeddings=16384,
        bos_token_id=1024 - 128, eos_token_ids=(1024 - 128 + 1, 1024 - 128 + 9))


def make_default_assets(base_dir: Path = DEFAULT_BASE, adapter_dir: Path = DEFAULT_ADAPTER,
                        seed: int = 0) -> None:
    """Write the default base (random weights) and FFBA adapter (random, non-zero B)."""
    from .adapters import FFBAConfig, attach_ffba, save_adapter
    from .model import random_model, save_hf_checkpoint
    from .model.tokenizer import byte_level_tokenizer

    cfg = default_config()
    model = random_model(cfg, seed=seed)
    tok_path = Path(base_dir) / "tokenizer.json"
    Path(base_dir).mkdir(parents=True, exist_ok=True)
    byte_level_tokenizer(cfg.vocab_size, cfg.bos_token_id).save(str(tok_path))
    save_hf_checkpoint(model, base_dir)
    model.source = {"name": "flora-default-base"}
    torch.manual_seed(seed)   # A's Kaiming init draws from the global generator
    attach_ffba(model, FFBAConfig(width=48, alpha=96.0, variant="ffba", activation="identity"))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.layers:
            for blk in (layer.self_attn, layer.mlp):
                blk.adapter.B.weight.normal_(0.0, 0.02, generator=gen)
    save_adapter(model, adapter_dir)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_default_assets(seed=args.seed)
    print(f"wrote {DEFAULT_BASE} and {DEFAULT_ADAPTER}")
