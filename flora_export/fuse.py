"""The fuse stage: FFBA pairs -> widened projections; LoRA -> merged weights.

FFBA (docs/ffba.md): A becomes extra output rows of `qkv_proj` / `gate_up_proj`,
`s * B` extra input columns of `o_proj` / `down_proj`. The width is padded with zero
rows of A and zero columns of B up to a multiple of `pad_to` (the quantization
group), which leaves the function unchanged and keeps every fused projection
quantizable. A fused layer runs exactly 4 linears, like the base model.

ffba-neurons: A_gate and A_up become extra rows of the gate and of the up half of
`gate_up_proj` ([W_g; A_gate; W_u; A_up]), `s * B` extra columns of `down_proj`, and
the MLP's FFN width grows by the (padded) width: extra SwiGLU neurons, no side channel.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .adapters.ffba import FFBAConfig, fused_neuron_rows, make_pair, sub_block
from .adapters.io import ffba_tensors
from .adapters.lora import LoraProjection, lora_projections
from .adapters.state import AdapterStatus
from .errors import FloraError
from .model.llama import LlamaModel
from .model.storage import compute_dtype, mark, narrowest

log = logging.getLogger(__name__)


def padded_width(width: int, pad_to: int) -> int:
    return -(-width // pad_to) * pad_to if pad_to > 1 else width


def fuse(model: LlamaModel, pad_to: int = 32) -> LlamaModel:
    """Fuse the model's unfused FFBA adapter into its projections, in place."""
    state = model.adapter_state
    if state is None or not state.is_ffba:
        raise FloraError("fuse() needs a model with an FFBA adapter",
                         "attach_ffba() or load_adapter() first; for LoRA use merge_lora()")
    if state.status is AdapterStatus.FUSED:
        return model
    cfg: FFBAConfig = state.config
    width = padded_width(cfg.width, pad_to)
    with torch.no_grad():
        for layer in model.layers:
            for name in cfg.sub_blocks:
                blk = sub_block(layer, name)
                (_fuse_neurons if cfg.neurons else _fuse_block)(blk, width)
    model.adapter_state = state.with_status(AdapterStatus.FUSED, fused_width=width)
    log.info("fused FFBA (%s, width %d -> %d) into %d layers", cfg.variant, cfg.width, width,
             len(model.layers))
    return model


def _padded_rows(a: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat([a, a.new_zeros(width - a.shape[0], a.shape[1])])


def _fuse_neurons(blk: nn.Module, width: int) -> None:
    """Gated neurons: rows on both halves of gate_up_proj, columns on down_proj."""
    pair = blk.adapter
    lin, f = blk.gate_up_proj, blk.ffn_dim
    w = lin.weight
    a_gate, a_up = (_padded_rows(a.weight, width) for a in (pair.A_gate, pair.A_up))
    dtype = narrowest(w, a_gate, a_up)
    rows = torch.cat([w[:f].to(dtype), a_gate.to(dtype), w[f:].to(dtype), a_up.to(dtype)])
    gate_up = nn.Linear(rows.shape[1], rows.shape[0], bias=lin.bias is not None, device="meta")
    gate_up.weight = nn.Parameter(rows, requires_grad=False)
    mark(gate_up)
    if lin.bias is not None:
        zeros = lin.bias.new_zeros(width)
        gate_up.bias = nn.Parameter(torch.cat([lin.bias[:f], zeros, lin.bias[f:], zeros]),
                                    requires_grad=False)
    b = _padded_rows((pair.scale * pair.B.weight).T, width).T
    blk.gate_up_proj, blk.down_proj = gate_up, _extend(blk.down_proj, cols=b)
    blk.ffn_dim, blk.adapter_neurons, blk.adapter = f + width, width, None


def _fuse_block(blk: nn.Module, width: int) -> None:
    pair = blk.adapter
    reader, writer = ("qkv_proj", "o_proj") if hasattr(blk, "qkv_proj") else (
        "gate_up_proj", "down_proj")
    a = pair.A.weight
    b = pair.scale * pair.B.weight
    pad = width - a.shape[0]
    a = torch.cat([a, a.new_zeros(pad, a.shape[1])])
    b = torch.cat([b, b.new_zeros(b.shape[0], pad)], dim=1)
    setattr(blk, reader, _extend(getattr(blk, reader), rows=a))
    setattr(blk, writer, _extend(getattr(blk, writer), cols=b))
    blk.adapter_width, blk.adapter_act, blk.adapter = width, pair.act, None


def _extend(lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
           ) -> nn.Linear:
    """`lin` with extra rows/columns, stored in its dtype where they are exact in it."""
    w = lin.weight
    extra = rows if rows is not None else cols
    w = w.to(narrowest(w, extra))
    w = torch.cat([w, extra.to(w.dtype)], dim=0 if rows is not None else 1)
    out = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, device="meta")
    out.weight = nn.Parameter(w, requires_grad=False)
    mark(out)
    if lin.bias is not None:
        extra = w.shape[0] - lin.bias.shape[0]
        out.bias = nn.Parameter(torch.cat([lin.bias, lin.bias.new_zeros(extra)]),
                                requires_grad=False)
    return out


def unfuse(model: LlamaModel) -> LlamaModel:
    """Undo `fuse`: restore the base projections and unfused (trainable) FFBA pairs."""
    state = model.adapter_state
    if state is None or state.status is not AdapterStatus.FUSED:
        raise FloraError("unfuse() needs a model with a fused FFBA adapter", "fuse() first")
    cfg: FFBAConfig = state.config
    tensors = ffba_tensors(model)
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            for name in cfg.sub_blocks:
                blk, key = sub_block(layer, name), f"layers.{i}.{name}"
                (_unfuse_neurons if cfg.neurons else _unfuse_block)(blk, cfg, tensors, key)
    model.adapter_state = state.with_status(AdapterStatus.UNFUSED)
    return model


def _unfuse_block(blk, cfg: FFBAConfig, tensors: dict, key: str) -> None:
    reader, writer = ("qkv_proj", "o_proj") if hasattr(blk, "qkv_proj") else (
        "gate_up_proj", "down_proj")
    r, w = getattr(blk, reader), getattr(blk, writer)
    keep_rows, keep_cols = r.out_features - blk.adapter_width, w.in_features - blk.adapter_width
    pair = make_pair(blk, w.out_features, cfg).to(compute_dtype(r))
    pair.A.weight.copy_(tensors[f"{key}.A"])
    pair.B.weight.copy_(tensors[f"{key}.B"])
    setattr(blk, reader, _narrow(r, rows=keep_rows))
    setattr(blk, writer, _narrow(w, cols=keep_cols))
    blk.adapter_width, blk.adapter = 0, pair


def _unfuse_neurons(blk, cfg: FFBAConfig, tensors: dict, key: str) -> None:
    lin, down = blk.gate_up_proj, blk.down_proj
    gate, _, up, _ = fused_neuron_rows(blk)
    f = gate.stop
    pair = make_pair(blk, down.out_features, cfg).to(compute_dtype(lin))
    for half in ("A_gate", "A_up", "B"):
        getattr(pair, half).weight.copy_(tensors[f"{key}.{half}"])
    base = nn.Linear(lin.in_features, 2 * f, bias=lin.bias is not None, device="meta")
    base.weight = nn.Parameter(torch.cat([lin.weight[gate], lin.weight[up]]).clone(),
                               requires_grad=False)
    mark(base)
    if lin.bias is not None:
        base.bias = nn.Parameter(torch.cat([lin.bias[gate], lin.bias[up]]).clone(),
                                 requires_grad=False)
    blk.gate_up_proj, blk.down_proj = base, _narrow(down, cols=f)
    blk.ffn_dim, blk.adapter_neurons, blk.adapter = f, 0, pair


def _narrow(lin: nn.Linear, rows: int | None = None, cols: int | None = None) -> nn.Linear:
    w = lin.weight[:rows] if rows is not None else lin.weight[:, :cols]
    out = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, device="meta")
    out.weight = nn.Parameter(w.clone(), requires_grad=False)
    mark(out)
    if lin.bias is not None:
        out.bias = nn.Parameter(lin.bias[: w.shape[0]].clone(), requires_grad=False)
    return out


def merge_lora(model: LlamaModel) -> LlamaModel:
    """Fold an unmerged LoRA adapter into the base weights (the "LoRA merged" baseline)."""
    state = model.adapter_state
    if state is None or not state.is_lora:
        raise FloraError("merge_lora() needs a model with a LoRA adapter", "attach or load one")
    with torch.no_grad():
        for _, _, parent, attr, proj in lora_projections(model):
            if isinstance(proj, LoraProjection):
                proj.base.weight = nn.Parameter(proj.merged_weight(), requires_grad=False)
                setattr(parent, attr, mark(proj.base))
    model.adapter_state = state.with_status(AdapterStatus.MERGED)
    return model


def count_fused_linears(model: nn.Module) -> int:
    """Projections that carry a fused FFBA half (4 per layer for the `ffba` variant)."""
    return sum(2 for layer in model.layers for blk in (layer.self_attn, layer.mlp)
               if blk.adapter_width or getattr(blk, "adapter_neurons", 0))
