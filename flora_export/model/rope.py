"""Rotary position embeddings (HF `rotate_half` layout), as transformers computes them.

A `Rope` is one RoPE table of a model and, once `setup(max_seq)` ran, its cos/sin for
the cached positions; a model holds one per kind its layers use, a NoPE layer none.
Which rows a step uses is the KV cache's business (`KVCache.rotate`, model/attention.py).

Variants: Llama-3 and linear frequency scaling; Phi3's longrope (short/long factors and
an attention factor on cos/sin); RoPE on the first `rotary_dim` dims of each head
(`partial_rotary_factor`); Gemma 3's two tables, "default" (full-attention layers:
`rope_theta`, `rope_scaling`) and "local" (sliding layers: `rope_local_base_freq`,
unscaled).

Longrope: transformers picks the factors per forward call from the sequence length,
long when `max(position_ids) + 1 > original_max_position_embeddings`, else short. A
table of length `n` therefore uses the long factors iff `n` exceeds that length, which
is exactly transformers for a full-sequence pass. A static KV cache cannot follow the
switch while decoding (transformers' own cache keeps the earlier keys rotated with the
short factors), so `rope_tables(..., cached=True)` refuses a longrope cache longer than
`original_max_position_embeddings`.
"""

from __future__ import annotations

import math

import torch

from torch import nn

from ..errors import FloraError
from .config import LlamaConfig

KINDS = ("default", "local")


def inverse_frequencies(cfg: LlamaConfig, kind: str = "default", seq_len: int | None = None,
                        theta: float | None = None, dim: int | None = None) -> torch.Tensor:
    """Per-pair inverse frequencies of the `kind` table for sequences of `seq_len` (which
    only longrope reads), scaled as the config asks; `theta` / `dim` override the
    config's base and rotary dim."""
    dim = dim or cfg.rotary_dim
    theta = theta or (cfg.rope_local_theta if kind == "local" else cfg.rope_theta)
    scaling = {} if kind == "local" else (cfg.rope_scaling or {})
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    kind_ = scaling.get("rope_type", "default")
    if kind_ == "longrope":
        long = seq_len is not None and seq_len > scaling["original_max_position_embeddings"]
        ext = torch.tensor(scaling["long_factor" if long else "short_factor"], dtype=torch.float32)
        return 1.0 / (ext * theta ** exponents)
    inv_freq = 1.0 / (theta ** exponents)
    if kind_ == "linear":
        return inv_freq / scaling["factor"]
    if kind_ == "llama3":
        return _llama3_scale(inv_freq, scaling, cfg.max_position_embeddings)
    return inv_freq


def attention_scaling(cfg: LlamaConfig, kind: str = "default") -> float:
    """The factor transformers multiplies cos and sin by (longrope's; 1 otherwise)."""
    scaling = {} if kind == "local" else (cfg.rope_scaling or {})
    if scaling.get("rope_type") != "longrope":
        return 1.0
    if scaling.get("attention_factor") is not None:
        return scaling["attention_factor"]
    old = scaling["original_max_position_embeddings"]
    factor = scaling.get("factor") or cfg.max_position_embeddings / old
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(old))


def _llama3_scale(inv_freq: torch.Tensor, s: dict, max_pos: int) -> torch.Tensor:
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_ctx = s.get("original_max_position_embeddings", max_pos)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_tables(cfg: LlamaConfig, max_seq: int, kind: str = "default", cached: bool = False,
                theta: float | None = None, rotary_dim: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape [max_seq, rotary_dim] (both halves repeated) for positions
    0 .. max_seq - 1; `cached`: the tables of a static KV cache of `max_seq` positions;
    `theta` / `rotary_dim` override the config's."""
    scaling = cfg.rope_scaling or {}
    if cached and kind == "default" and scaling.get("rope_type") == "longrope" and \
            max_seq > scaling["original_max_position_embeddings"]:
        old = scaling["original_max_position_embeddings"]
        raise FloraError(
            f"max_seq {max_seq} exceeds original_max_position_embeddings {old} of this longrope "
            "model: transformers switches from the short to the long RoPE factors when a "
            "sequence grows past it, which a static KV cache cannot follow",
            f"use max_seq <= {old}")
    t = torch.arange(max_seq, dtype=torch.int64).float()
    freqs = torch.outer(t, inverse_frequencies(cfg, kind, max_seq, theta, rotary_dim))
    emb = torch.cat((freqs, freqs), dim=-1)
    scale = attention_scaling(cfg, kind)
    return emb.cos() * scale, emb.sin() * scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, S, H, D]; cos/sin: [S, 1, R] with R <= D: the first R dims of each head are
    rotated (rotate_half within them), the rest pass through (partial rotary)."""
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return _rotate(x, cos, sin)
    return torch.cat([_rotate(x[..., :rot], cos, sin), x[..., rot:]], dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Rope(nn.Module):
    """One RoPE table of the model: `kind` "default" (rope_theta, rope_scaling) or "local"
    (Gemma 3's sliding layers), over the first `rotary_dim` features of each head
    (`theta` / `rotary_dim` override the config's). `cos`/`sin` [max_seq, rotary_dim]
    after `setup`."""

    def __init__(self, cfg: LlamaConfig, kind: str = "default", theta: float | None = None,
                 rotary_dim: int | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"rope kind {kind!r} not in {KINDS}")
        self.config, self.kind, self.theta = cfg, kind, theta
        self.rotary_dim = rotary_dim or cfg.rotary_dim
        self.register_buffer("cos", None, persistent=False)
        self.register_buffer("sin", None, persistent=False)

    def tables(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Freshly computed tables for a full sequence of `length` positions."""
        return rope_tables(self.config, length, self.kind, theta=self.theta,
                           rotary_dim=self.rotary_dim)

    def setup(self, max_seq: int) -> None:
        """The tables of a static cache of `max_seq` positions."""
        self.cos, self.sin = rope_tables(self.config, max_seq, self.kind, cached=True,
                                         theta=self.theta, rotary_dim=self.rotary_dim)
