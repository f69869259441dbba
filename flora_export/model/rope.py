"""Rotary position embeddings (HF `rotate_half` layout) with Llama-3 frequency scaling.

A `Rope` is one RoPE variant of a model (base, scaling, rotary dimension) and, once
`setup(max_seq)` ran, its cos/sin tables for the cached positions. A model with
several variants (a different base on local layers, say) holds one `Rope` per variant;
a layer without RoPE has none. Which rows a step uses is the KV cache's business
(`KVCache.rotate`, model/attention.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import LlamaConfig


def inverse_frequencies(cfg: LlamaConfig, theta: float | None = None,
                        dim: int | None = None) -> torch.Tensor:
    """Per-pair inverse frequencies over `dim` features (default head_dim), base `theta`
    (default rope_theta), scaled as `cfg.rope_scaling` asks."""
    dim = dim or cfg.head_dim
    theta = theta or cfg.rope_theta
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        return _llama3_scale(inv_freq, scaling, cfg.max_position_embeddings)
    return inv_freq


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


def rope_tables(cfg: LlamaConfig, max_seq: int, theta: float | None = None,
                rotary_dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape [max_seq, rotary_dim] (both halves repeated)."""
    t = torch.arange(max_seq, dtype=torch.int64).float()
    freqs = torch.outer(t, inverse_frequencies(cfg, theta, rotary_dim))
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, S, H, D]; cos/sin: [S, 1, R], R <= D: the first R features of each head
    rotate, the rest pass through (partial rotary)."""
    rotary = cos.shape[-1]
    if rotary < x.shape[-1]:
        return torch.cat((apply_rope(x[..., :rotary], cos, sin), x[..., rotary:]), dim=-1)
    half = rotary // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Rope(nn.Module):
    """One RoPE variant: base `theta` (default rope_theta) over the first `rotary_dim`
    features of each head (default all). `cos`/`sin` [max_seq, rotary_dim] after `setup`."""

    def __init__(self, cfg: LlamaConfig, theta: float | None = None,
                 rotary_dim: int | None = None):
        super().__init__()
        self.config, self.theta = cfg, theta
        self.rotary_dim = rotary_dim or cfg.head_dim
        self.register_buffer("cos", None, persistent=False)
        self.register_buffer("sin", None, persistent=False)

    def tables(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Freshly computed tables for positions 0 .. length - 1."""
        return rope_tables(self.config, length, self.theta, self.rotary_dim)

    def setup(self, max_seq: int) -> None:
        self.cos, self.sin = self.tables(max_seq)
