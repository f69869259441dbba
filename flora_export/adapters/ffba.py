"""FFBA: fused forward-backward adapters (docs/ffba.md), unfused trainable form.

Per decoder layer and sub-block p in {attn, mlp}: `a = A_p x_p`, and the sub-block's
output gains `s * B_p * act(a)` with `s = alpha / width`. `fuse()` later moves A into
the projection that reads x_p and B into the one that writes the output.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..model.llama import LlamaModel, activation
from .common import prepare_base
from .config import VARIANTS, FFBAConfig
from .state import AdapterState, AdapterStatus

__all__ = ["FFBAConfig", "FFBAPair", "VARIANTS", "attach_ffba", "sub_block"]


class FFBAPair(nn.Module):
    """Forward (down) adapter A: d -> h and backward (up) adapter B: h -> d."""

    def __init__(self, dim: int, cfg: FFBAConfig):
        super().__init__()
        self.A = nn.Linear(dim, cfg.width, bias=False)
        self.B = nn.Linear(cfg.width, dim, bias=False)
        self.scale = cfg.scale
        self.act = cfg.activation
        nn.init.kaiming_uniform_(self.A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.B(activation(self.act, self.A(x)))


def sub_block(layer: nn.Module, name: str) -> nn.Module:
    return layer.self_attn if name == "attn" else layer.mlp


def attach_ffba(model: LlamaModel, cfg: FFBAConfig, freeze_base: bool = True) -> LlamaModel:
    """Add fresh (B = 0, so a no-op) unfused FFBA pairs; the base is frozen for training."""
    prepare_base(model, freeze_base)
    dtype = model.embed_tokens.weight.dtype
    for layer in model.layers:
        for name in cfg.sub_blocks:
            sub_block(layer, name).adapter = FFBAPair(model.config.hidden_size, cfg).to(dtype)
    model.adapter_state = AdapterState(cfg, AdapterStatus.UNFUSED)
    return model
