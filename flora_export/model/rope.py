"""Rotary position embeddings (HF `rotate_half` layout) with Llama-3 frequency scaling."""

from __future__ import annotations

import math

import torch

from .config import LlamaConfig


def inverse_frequencies(cfg: LlamaConfig) -> torch.Tensor:
    """Per-pair inverse frequencies, scaled as `cfg.rope_scaling` asks."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
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


def rope_tables(cfg: LlamaConfig, max_seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape [max_seq, head_dim] (both halves repeated)."""
    t = torch.arange(max_seq, dtype=torch.int64).float()
    freqs = torch.outer(t, inverse_frequencies(cfg))
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, S, H, D]; cos/sin: [S, 1, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
