"""Named architectures with random weights (benchmarks and tests; nothing is downloaded)."""

from __future__ import annotations

import torch

from ..errors import unknown_name
from .config import LlamaConfig
from .llama import LlamaModel

_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
_LLAMA3_TOKENS = dict(bos_token_id=128000, eos_token_ids=(128001, 128008, 128009))

PRESETS: dict[str, LlamaConfig] = {
    "llama3.2-1b": LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, rope_theta=500000.0,
        rope_scaling=_LLAMA3_ROPE, tie_word_embeddings=True, max_position_embeddings=131072,
        **_LLAMA3_TOKENS),
    "llama3.2-3b": LlamaConfig(
        vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
        num_attention_heads=24, num_key_value_heads=8, head_dim=128, rope_theta=500000.0,
        rope_scaling=_LLAMA3_ROPE, tie_word_embeddings=True, max_position_embeddings=131072,
        **_LLAMA3_TOKENS),
    # Small shapes with the same structure, for tests and quick experiments.
    "tiny": LlamaConfig(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0,
        rope_scaling=_LLAMA3_ROPE, tie_word_embeddings=True, max_position_embeddings=16384,
        bos_token_id=256 + 128, eos_token_ids=(256 + 129, 256 + 137)),
}


def special_base(cfg: LlamaConfig) -> int:
    """First special-token id of a preset's generated tokenizer (the bos id)."""
    return cfg.bos_token_id


def preset_config(name: str) -> LlamaConfig:
    if name not in PRESETS:
        raise unknown_name("model preset", name, PRESETS)
    return PRESETS[name]


def random_model(cfg: LlamaConfig, seed: int = 0, std: float = 0.02) -> LlamaModel:
    """A model of `cfg`'s shapes with N(0, std) weights and unit norms, reproducible by seed."""
    with torch.device("meta"):
        model = LlamaModel(cfg)
    model = model.to_empty(device="cpu")
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, std, generator=gen)
    return model.eval()
