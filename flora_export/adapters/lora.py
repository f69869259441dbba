"""LoRA baselines on q,k,v,o,gate,up,down: unmerged (extra matmuls) or merged.

Our projections are fused (`qkv_proj`, `gate_up_proj`), so a LoRA projection keeps
one low-rank pair per HF-named segment (q, k, v ...) and adds each pair's output
to its own rows, exactly as separate HF projections would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .common import prepare_base
from ..errors import FloraError
from ..model.llama import LlamaModel

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 16
    alpha: float = 32.0
    targets: tuple[str, ...] = ALL_TARGETS

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise FloraError(f"LoRA rank must be a positive integer, got {self.rank!r}",
                             "set rank to e.g. 16")
        bad = [t for t in self.targets if t not in ALL_TARGETS]
        if bad:
            raise FloraError(f"unknown LoRA target(s) {bad}", f"use some of: {', '.join(ALL_TARGETS)}")
        object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return {"adapter_type": "lora", **asdict(self)}


def segments(model: LlamaModel) -> dict[str, list[tuple[str, int]]]:
    """Module path within a layer -> [(HF projection name, output rows)]."""
    cfg = model.config
    return {
        "self_attn.qkv_proj": [("q_proj", cfg.q_dim), ("k_proj", cfg.kv_dim), ("v_proj", cfg.kv_dim)],
        "self_attn.o_proj": [("o_proj", cfg.hidden_size)],
        "mlp.gate_up_proj": [("gate_proj", cfg.intermediate_size), ("up_proj", cfg.intermediate_size)],
        "mlp.down_proj": [("down_proj", cfg.hidden_size)],
    }


class LoraProjection(nn.Module):
    """A frozen base linear plus, per targeted row segment, `scale * B(A(x))`."""

    def __init__(self, base: nn.Linear, segs: list[tuple[str, int]], cfg: LoraConfig):
        super().__init__()
        self.base = base
        self.segments = segs
        self.scale = cfg.scale
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        dtype = base.weight.dtype
        for name, rows in segs:
            if name in cfg.targets:
                self.lora_A[name] = nn.Linear(base.in_features, cfg.rank, bias=False).to(dtype)
                self.lora_B[name] = nn.Linear(cfg.rank, rows, bias=False).to(dtype)
                nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
                nn.init.zeros_(self.lora_B[name].weight)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        deltas = []
        for name, rows in self.segments:
            if name in self.lora_A:
                deltas.append(self.scale * self.lora_B[name](self.lora_A[name](x)))
            else:
                deltas.append(x.new_zeros(*x.shape[:-1], rows))
        return y + (deltas[0] if len(deltas) == 1 else torch.cat(deltas, dim=-1))

    def merged_weight(self) -> torch.Tensor:
        w = self.base.weight.detach().clone()
        row = 0
        for name, rows in self.segments:
            if name in self.lora_A:
                delta = self.lora_B[name].weight @ self.lora_A[name].weight
                w[row:row + rows] += self.scale * delta
            row += rows
        return w


def lora_projections(model: LlamaModel):
    """Yield (layer index, path, parent module, attribute name, module) for the 4 projections."""
    for i, layer in enumerate(model.layers):
        for path in segments(model):
            parent_name, attr = path.split(".")
            parent = getattr(layer, parent_name)
            yield i, path, parent, attr, getattr(parent, attr)


def attach_lora(model: LlamaModel, cfg: LoraConfig, freeze_base: bool = True) -> LlamaModel:
    """Wrap the targeted projections with fresh (B = 0) unmerged LoRA pairs."""
    prepare_base(model, freeze_base)
    segs = segments(model)
    for _, path, parent, attr, lin in lora_projections(model):
        if any(name in cfg.targets for name, _ in segs[path]):
            setattr(parent, attr, LoraProjection(lin, segs[path], cfg))
    model.adapter_config = cfg
    model.adapter_state = "unmerged"
    return model
