"""Named architectures with random weights (benchmarks and tests; nothing is downloaded).

The shapes and settings are the published config.json values of each model. Token ids:
a preset's tokenizer is generated (model/tokenizer.py), 256 byte tokens first and the
special tokens from the bos id on; where a published bos id lies among the byte tokens
(SmolLM2, Gemma 3), the preset's bos/eos ids are moved to the end of the vocabulary.
"""

from __future__ import annotations

import torch

from ..errors import unknown_name
from .config import LlamaConfig
from .llama import LlamaModel
from .storage import store

_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
_LLAMA3_TOKENS = dict(bos_token_id=128000, eos_token_ids=(128001, 128008, 128009))


def _tail_tokens(vocab: int) -> dict:
    """bos/eos at the generated tokenizer's Llama-3 special ids near the vocabulary's end."""
    return dict(bos_token_id=vocab - 128, eos_token_ids=(vocab - 127, vocab - 119))


_PHI4_MINI_ROPE = {   # Phi-4-mini-instruct's published longrope factors
    "rope_type": "longrope", "original_max_position_embeddings": 4096,
    "short_factor": [1.0] * 48,
    "long_factor": [
        1, 1.118320672, 1.250641126, 1.398617824, 1.564103225, 1.74916897, 1.956131817,
        2.187582649, 2.446418898, 2.735880826, 3.059592084, 3.421605075, 3.826451687,
        4.279200023, 4.785517845, 5.351743533, 5.984965424, 6.693110555, 7.485043894,
        8.370679318, 9.36110372, 10.4687158, 11.70738129, 13.09260651, 14.64173252,
        16.37415215, 18.31155283, 20.47818807, 22.90118105, 25.61086418, 28.64115884,
        32.03, 32.1, 32.13, 32.23, 32.6, 32.61, 32.64, 32.66, 32.7, 32.71, 32.93, 32.97,
        33.28, 33.49, 33.5, 44.16, 47.77]}

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
    "smollm2-360m": LlamaConfig(
        vocab_size=49152, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
        num_attention_heads=15, num_key_value_heads=5, head_dim=64, rms_norm_eps=1e-5,
        rope_theta=100000.0, tie_word_embeddings=True, max_position_embeddings=8192,
        **_tail_tokens(49152)),
    "smollm2-1.7b": LlamaConfig(
        vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
        num_attention_heads=32, num_key_value_heads=32, head_dim=64, rms_norm_eps=1e-5,
        rope_theta=130000.0, tie_word_embeddings=True, max_position_embeddings=8192,
        **_tail_tokens(49152)),
    "qwen2.5-0.5b": LlamaConfig(
        model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        max_position_embeddings=32768, attention_bias=True,
        bos_token_id=151643, eos_token_ids=(151643,)),
    "qwen2.5-1.5b": LlamaConfig(
        model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
        num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        max_position_embeddings=131072, attention_bias=True,
        bos_token_id=151643, eos_token_ids=(151643,)),
    "qwen3-0.6b": LlamaConfig(
        model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        max_position_embeddings=40960, bos_token_id=151643, eos_token_ids=(151645,)),
    "qwen3-1.7b": LlamaConfig(
        model_type="qwen3", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        max_position_embeddings=40960, bos_token_id=151643, eos_token_ids=(151645,)),
    "gemma3-1b": LlamaConfig(
        model_type="gemma3_text", vocab_size=262144, hidden_size=1152,
        intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
        num_key_value_heads=1, head_dim=256, rms_norm_eps=1e-6, rope_theta=1000000.0,
        rope_local_theta=10000.0, tie_word_embeddings=True, max_position_embeddings=32768,
        hidden_act="gelu_pytorch_tanh", query_pre_attn_scalar=256, sliding_window=512,
        layer_types=tuple("full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                          for i in range(26)),
        **_tail_tokens(262144)),
    "phi-4-mini": LlamaConfig(
        model_type="phi3", vocab_size=200064, hidden_size=3072, intermediate_size=8192,
        num_hidden_layers=32, num_attention_heads=24, num_key_value_heads=8,
        rms_norm_eps=1e-5, rope_theta=10000.0, partial_rotary_factor=0.75,
        rope_scaling=_PHI4_MINI_ROPE, tie_word_embeddings=True,
        max_position_embeddings=131072, sliding_window=262144,
        layer_types=("sliding_attention",) * 32, bos_token_id=199999,
        eos_token_ids=(199999,)),
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


def random_model(cfg: LlamaConfig, seed: int = 0, std: float = 0.02,
                 stored: torch.dtype | None = None) -> LlamaModel:
    """A model of `cfg`'s shapes with N(0, std) weights and unit norms, reproducible by seed.
    stored: bf16/fp16 to draw the matrices in that dtype (model/storage.py), as published
    checkpoints store them; None: float32."""
    with torch.device("meta"):
        model = LlamaModel(cfg)
        if stored is not None:
            store(model, stored)
    model = model.to_empty(device="cpu")
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):   # unit scale: Gemma's norms scale by 1 + w
                p.fill_(0.0 if cfg.family.gemma_norms else 1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, std, generator=gen)
    return model.eval()
