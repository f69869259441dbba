"""LoRA baselines on the HF projections: unmerged (extra matmuls) or merged.

Our projections are fused (`qkv_proj`, `gate_up_proj`), so a LoRA projection keeps
one low-rank pair per HF-named segment and adds each pair's output to its own rows,
exactly as the transformers class's projections would. The segments are the family's
`hf_layout` (model/families.py): q, k, v / gate, up for LlamaForCausalLM and the
classes named like it; Phi3ForCausalLM's `qkv_proj` and `gate_up_proj` are one
segment each (one A, one B spanning all the rows). Which segments, and each
one's rank and scale, follow PEFT's rules (targets.py): target_modules as names or a
regex, exclude_modules, layers_to_transform/layers_pattern, rank_pattern,
alpha_pattern and use_rslora.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..model.llama import LlamaModel
from ..model.storage import compute_dtype, narrowest
from .common import prepare_base
from .config import ALL_TARGETS, LoraConfig
from .state import AdapterState, AdapterStatus

__all__ = ["ALL_TARGETS", "LoraConfig", "LoraProjection", "attach_lora", "lora_projections",
           "segments"]


def segments(model: LlamaModel) -> dict[str, list[tuple[str, int]]]:
    """Module path within a layer -> [(HF projection name, output rows)], in row order."""
    cfg = model.config
    out: dict[str, list[tuple[str, int]]] = {}
    for p in cfg.family.hf_layout.projections:
        out.setdefault(f"{p.parent}.{p.ours}", []).append((p.name, p.out_features(cfg)))
    return out


class LoraProjection(nn.Module):
    """A frozen base linear plus, per targeted row segment, `scale * B(A(x))`."""

    def __init__(self, base: nn.Linear, segs: list[tuple[str, int]],
                 sites: dict[str, tuple[int, float]]):
        super().__init__()
        self.base = base
        self.segments = segs
        self.scales = {name: scale for name, (_, scale) in sites.items()}
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        dtype = compute_dtype(base)
        for name, rows in segs:
            if name in sites:
                rank = sites[name][0]
                self.lora_A[name] = nn.Linear(base.in_features, rank, bias=False).to(dtype)
                self.lora_B[name] = nn.Linear(rank, rows, bias=False).to(dtype)
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
                deltas.append(self.scales[name] * self.lora_B[name](self.lora_A[name](x)))
            else:
                deltas.append(x.new_zeros(*x.shape[:-1], rows))
        return y + (deltas[0] if len(deltas) == 1 else torch.cat(deltas, dim=-1))

    def merged_weight(self) -> torch.Tensor:
        """W + s * B @ A, in the base's dtype where that is exact, else in float32."""
        w = self.base.weight.detach().to(compute_dtype(self.base), copy=True)
        row = 0
        for name, rows in self.segments:
            if name in self.lora_A:
                delta = self.lora_B[name].weight @ self.lora_A[name].weight
                w[row:row + rows] += self.scales[name] * delta
            row += rows
        return w.to(narrowest(self.base.weight, w))


def lora_projections(model: LlamaModel):
    """Yield (layer index, path, parent module, attribute name, module) for the 4 projections."""
    for i, layer in enumerate(model.layers):
        for path in segments(model):
            parent_name, attr = path.split(".")
            parent = getattr(layer, parent_name)
            yield i, path, parent, attr, getattr(parent, attr)


def attach_lora(model: LlamaModel, cfg: LoraConfig, freeze_base: bool = True,
                where: str = "the LoRA config") -> LlamaModel:
    """Wrap the targeted projections with fresh (B = 0) unmerged LoRA pairs."""
    sites = cfg.sites(model.config.family, len(model.layers), where)
    prepare_base(model, freeze_base)
    segs = segments(model)
    for i, path, parent, attr, lin in lora_projections(model):
        mine = {name: sites[(i, name)] for name, _ in segs[path] if (i, name) in sites}
        if mine:
            setattr(parent, attr, LoraProjection(lin, segs[path], mine))
    model.adapter_state = AdapterState(cfg, AdapterStatus.UNMERGED)
    return model
