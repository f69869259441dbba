"""FFBA: fused forward-backward adapters (docs/ffba.md), unfused trainable form.

Per decoder layer and sub-block p in {attn, mlp}: `a = A_p x_p`, and the sub-block's
output gains `s * B_p * act(a)` with `s = alpha / width`. `fuse()` later moves A into
the projection that reads x_p and B into the one that writes the output.

`ffba-neurons` (MLP only): two forward halves, `A_gate` and `A_up`, and the output
gains `s * B * (act(A_gate x) * A_up x)` with the MLP's own gate activation: `width`
extra SwiGLU neurons, fused as extra rows of both the gate and the up half of
`gate_up_proj` and extra columns of `down_proj`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..model.llama import LlamaModel, activation
from .common import prepare_base
from .config import VARIANTS, FFBAConfig
from .state import AdapterState, AdapterStatus

__all__ = ["FFBAConfig", "FFBAPair", "FFBANeurons", "VARIANTS", "attach_ffba", "make_pair",
           "sub_block"]


def init_forward(weight: torch.Tensor, init: str) -> None:
    """Initialise a forward half A [h, d] (FFBAConfig.init)."""
    if init == "kaiming":
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    elif init == "gaussian":
        nn.init.normal_(weight, std=weight.shape[1] ** -0.5)
    else:
        nn.init.orthogonal_(weight)


class FFBAPair(nn.Module):
    """Forward (down) adapter A: d -> h and backward (up) adapter B: h -> d."""

    def __init__(self, dim: int, cfg: FFBAConfig):
        super().__init__()
        self.A = nn.Linear(dim, cfg.width, bias=False)
        self.B = nn.Linear(cfg.width, dim, bias=False)
        self.scale = cfg.scale
        self.act = cfg.activation
        init_forward(self.A.weight, cfg.init)
        nn.init.zeros_(self.B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.B(activation(self.act, self.A(x)))


class FFBANeurons(nn.Module):
    """`width` extra gated MLP neurons: s * B (gate_act(A_gate x) * A_up x)."""

    def __init__(self, dim: int, cfg: FFBAConfig, gate_act):
        super().__init__()
        self.A_gate = nn.Linear(dim, cfg.width, bias=False)
        self.A_up = nn.Linear(dim, cfg.width, bias=False)
        self.B = nn.Linear(cfg.width, dim, bias=False)
        self.scale = cfg.scale
        self.gate_act = gate_act
        init_forward(self.A_gate.weight, cfg.init)
        init_forward(self.A_up.weight, cfg.init)
        nn.init.zeros_(self.B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.B(self.gate_act(self.A_gate(x)) * self.A_up(x))


def make_pair(blk: nn.Module, dim: int, cfg: FFBAConfig) -> nn.Module:
    """The unfused adapter for sub-block `blk` (an FFBAPair, or FFBANeurons on the MLP)."""
    return FFBANeurons(dim, cfg, blk.act) if cfg.neurons else FFBAPair(dim, cfg)


def sub_block(layer: nn.Module, name: str) -> nn.Module:
    return layer.self_attn if name == "attn" else layer.mlp


def attach_ffba(model: LlamaModel, cfg: FFBAConfig, freeze_base: bool = True) -> LlamaModel:
    """Add fresh (B = 0, so a no-op) unfused FFBA pairs; the base is frozen for training."""
    prepare_base(model, freeze_base)
    dtype = model.compute_dtype
    for layer in model.layers:
        for name in cfg.sub_blocks:
            blk = sub_block(layer, name)
            blk.adapter = make_pair(blk, model.config.hidden_size, cfg).to(dtype)
    model.adapter_state = AdapterState(cfg, AdapterStatus.UNFUSED)
    return model


def fused_neuron_rows(blk: nn.Module) -> tuple[slice, slice, slice, slice]:
    """Row ranges of a neuron-fused `gate_up_proj` ([W_g; A_gate; W_u; A_up], each A padded
    to `blk.adapter_neurons` rows): base gate, A_gate, base up, A_up."""
    n, f = blk.adapter_neurons, blk.ffn_dim - blk.adapter_neurons
    return (slice(0, f), slice(f, f + n), slice(f + n, 2 * f + n), slice(2 * f + n, 2 * f + 2 * n))
