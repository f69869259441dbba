"""Tiny random checkpoints of every decoder family, written by transformers' own classes.

`write_family(path, case)` builds the case's transformers config and `*ForCausalLM`,
gives every weight (norms and biases included) random values, and saves it with
`save_pretrained(safe_serialization=True)` plus a byte-level `tokenizer.json`: a
directory exactly as transformers 5 writes it. `reference(path)` loads it back with
transformers (fp32, eager attention) for parity checks. Shared by the model tests
(tests/test_families.py) and the export tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB, BOS = 512, 384
_SHAPES = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               bos_token_id=BOS, eos_token_id=BOS + 1, pad_token_id=0)

# name -> (transformers config class, its keyword arguments over _SHAPES)
CASES: dict[str, tuple[str, dict]] = {
    "smollm2": ("LlamaConfig", dict(num_key_value_heads=1, tie_word_embeddings=True,
                                    rope_theta=100000.0, rms_norm_eps=1e-5)),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True, rope_theta=1e6)),
    "qwen2-sliding": ("Qwen2Config", dict(use_sliding_window=True, sliding_window=5,
                                          max_window_layers=1)),
    "qwen3": ("Qwen3Config", dict(head_dim=24, tie_word_embeddings=True)),
    "qwen3-sliding": ("Qwen3Config", dict(head_dim=16, use_sliding_window=True,
                                          sliding_window=4, max_window_layers=2,
                                          num_hidden_layers=4)),
    "gemma3": ("Gemma3TextConfig", dict(
        num_hidden_layers=4, head_dim=24, sliding_window=5, query_pre_attn_scalar=20,
        layer_types=["sliding_attention", "full_attention", "sliding_attention",
                     "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0,
                                            "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
        final_logit_softcapping=3.0)),
    "phi3": ("Phi3Config", dict(
        partial_rotary_factor=0.5, max_position_embeddings=256,
        original_max_position_embeddings=32, rope_parameters={
            "rope_type": "longrope", "rope_theta": 10000.0,
            "short_factor": [1.0, 1.2, 1.5, 2.0], "long_factor": [1.0, 3.0, 7.0, 11.0]})),
    "phi3-sliding": ("Phi3Config", dict(sliding_window=6, tie_word_embeddings=True)),
    "smollm3": ("SmolLM3Config", dict(num_hidden_layers=4, no_rope_layer_interval=2,
                                      attention_bias=True)),
    "smollm3-sliding": ("SmolLM3Config", dict(num_hidden_layers=4, no_rope_layer_interval=2,
                                              use_sliding_window=True, sliding_window=5)),
    "mistral": ("MistralConfig", dict(sliding_window=5)),
}
# cases whose sequences in the tests are longer than their sliding window
SLIDING = [n for n in CASES if n.endswith("-sliding")] + ["gemma3", "mistral"]


def hf_config(case: str, init: dict | None = None):
    """`case`'s transformers config; `init` overrides its constructor arguments."""
    import transformers

    cls, kwargs = CASES[case]
    return getattr(transformers, cls)(**{**_SHAPES, **kwargs, **(init or {})})


def write_family(path: Path, case: str, seed: int = 0, dtype: torch.dtype | None = None,
                 init: dict | None = None, **config_changes) -> Path:
    """`case`'s tiny checkpoint in `path`, as transformers' save_pretrained writes it
    (`init`: constructor arguments over the case's; `config_changes`: set afterwards)."""
    import transformers

    from flora_export.model.tokenizer import byte_level_tokenizer

    cfg = hf_config(case, init)
    for key, value in config_changes.items():
        setattr(cfg, key, value)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):     # not all ones: the norms must be loaded
                p.copy_(p + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.3, generator=gen)
    if dtype is not None:
        model = model.to(dtype)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    byte_level_tokenizer(VOCAB, BOS).save(str(path / "tokenizer.json"))
    return path


def edit_config(path: Path, edit) -> None:
    data = json.loads((path / "config.json").read_text())
    edit(data)
    (path / "config.json").write_text(json.dumps(data))


def reference(path: Path):
    """The checkpoint loaded by transformers (fp32, eager attention)."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager").eval()
