"""FFBA: fused forward-backward adapters (docs/ffba.md), unfused trainable form.

Per decoder layer and sub-block p in {attn, mlp}: `a = A_p x_p`, and the sub-block's
output gains `s * B_p * act(a)` with `s = alpha / width`. `fuse()` later moves A into
the projection that reads x_p and B into the one that writes the output.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .common import prepare_base
from ..errors import FloraError, unknown_name
from ..model.llama import ACTIVATIONS, LlamaModel, activation

VARIANTS = {"ffba": ("attn", "mlp"), "ffba-attn": ("attn",), "ffba-mlp": ("mlp",)}


@dataclass(frozen=True)
class FFBAConfig:
    """An FFBA adapter: which sub-blocks, how wide, how scaled, which nonlinearity."""

    width: int = 64
    alpha: float | None = None      # scale s = alpha / width; None -> alpha = width (s = 1)
    variant: str = "ffba"
    activation: str = "identity"

    def __post_init__(self):
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width <= 0:
            raise FloraError(f"FFBA width must be a positive integer, got {self.width!r}",
                             "set width to e.g. 64")
        if self.alpha is not None and (isinstance(self.alpha, bool) or
                                       not isinstance(self.alpha, (int, float)) or
                                       not math.isfinite(self.alpha)):
            raise FloraError(f"FFBA alpha must be a finite number or null, got {self.alpha!r}",
                             "set alpha to e.g. 2 * width")
        if not isinstance(self.variant, str) or self.variant not in VARIANTS:
            raise unknown_name("FFBA variant", self.variant, VARIANTS)
        if not isinstance(self.activation, str) or self.activation not in ACTIVATIONS:
            raise unknown_name("FFBA activation", self.activation, ACTIVATIONS)

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.width) / self.width

    @property
    def sub_blocks(self) -> tuple[str, ...]:
        return VARIANTS[self.variant]

    def to_dict(self) -> dict:
        return {"adapter_type": "ffba", **asdict(self)}


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
    model.adapter_config = cfg
    model.adapter_state = "unfused"
    return model
