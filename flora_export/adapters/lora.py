"""LoRA baselines on q,k,v,o,gate,up,down: unmerged (extra matmuls) or merged.

Our projections are fused (`qkv_proj`, `gate_up_proj`), so a LoRA projection keeps
one low-rank pair per HF-named segment (q, k, v ...) and adds each pair's output
to its own rows, exactly as separate HF projections would. Which segments, and each
one's rank and scale, follow PEFT's rules (targets.py): target_modules as names or a
regex, exclude_modules, layers_to_transform/layers_pattern, rank_pattern,
alpha_pattern and use_rslora.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .common import prepare_base
from .targets import lora_sites
from ..errors import FloraError
from ..model.llama import LlamaModel

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraConfig:
    """A LoRA adapter. `rank`, `alpha`, `targets` are what recipes set; the other fields
    carry PEFT's adapter_config.json options (their defaults are PEFT's: off)."""

    rank: int = 16
    alpha: float = 32.0
    targets: tuple[str, ...] = ALL_TARGETS
    use_rslora: bool = False
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    target_modules: str | tuple[str, ...] | None = None   # PEFT form; None: `targets`
    exclude_modules: str | tuple[str, ...] | None = None
    layers_to_transform: int | tuple[int, ...] | None = None
    layers_pattern: str | tuple[str, ...] | None = None

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise FloraError(f"LoRA rank must be a positive integer, got {self.rank!r}",
                             "set rank to e.g. 16")
        bad = [t for t in self.targets if t not in ALL_TARGETS]
        if bad:
            raise FloraError(f"unknown LoRA target(s) {bad}", f"use some of: {', '.join(ALL_TARGETS)}")
        object.__setattr__(self, "targets", tuple(self.targets))
        for name in ("target_modules", "exclude_modules", "layers_to_transform",
                     "layers_pattern"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self._check_types()

    def _check_types(self) -> None:
        def names(v):
            return v is None or isinstance(v, str) or (
                isinstance(v, tuple) and all(isinstance(x, str) for x in v))

        def index(x):
            return isinstance(x, int) and not isinstance(x, bool) and x >= 0
        layers = self.layers_to_transform
        checks = {
            "use_rslora": (isinstance(self.use_rslora, bool), "true or false"),
            "target_modules": (names(self.target_modules), "a regex string or a list of names"),
            "exclude_modules": (names(self.exclude_modules), "a regex string or a list of names"),
            "layers_pattern": (names(self.layers_pattern), "a name or a list of names"),
            "layers_to_transform": (layers is None or index(layers) or (
                isinstance(layers, tuple) and all(index(x) for x in layers)),
                "a layer index or a list of them"),
            "rank_pattern": (isinstance(self.rank_pattern, dict) and
                             all(isinstance(k, str) for k in self.rank_pattern),
                             "an object of pattern: rank"),
            "alpha_pattern": (isinstance(self.alpha_pattern, dict) and
                              all(isinstance(k, str) for k in self.alpha_pattern),
                              "an object of pattern: alpha"),
        }
        for name, (ok, allowed) in checks.items():
            if not ok:
                raise FloraError(f"LoRA {name}={getattr(self, name)!r} is malformed",
                                 f"{name} must be {allowed}")

    @property
    def scale(self) -> float:
        """The global scale (per-module scales: `sites`)."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def sites(self, num_layers: int, where: str = "the LoRA config"
              ) -> dict[tuple[int, str], tuple[int, float]]:
        """(layer, HF projection) -> (rank, scale), PEFT's matching (targets.py)."""
        return lora_sites(self, num_layers, where)

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

    def __init__(self, base: nn.Linear, segs: list[tuple[str, int]],
                 sites: dict[str, tuple[int, float]]):
        super().__init__()
        self.base = base
        self.segments = segs
        self.scales = {name: scale for name, (_, scale) in sites.items()}
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        dtype = base.weight.dtype
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
        w = self.base.weight.detach().clone()
        row = 0
        for name, rows in self.segments:
            if name in self.lora_A:
                delta = self.lora_B[name].weight @ self.lora_A[name].weight
                w[row:row + rows] += self.scales[name] * delta
            row += rows
        return w


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
    sites = cfg.sites(len(model.layers), where)
    prepare_base(model, freeze_base)
    segs = segments(model)
    for i, path, parent, attr, lin in lora_projections(model):
        mine = {name: sites[(i, name)] for name, _ in segs[path] if (i, name) in sites}
        if mine:
            setattr(parent, attr, LoraProjection(lin, segs[path], mine))
    model.adapter_config = cfg
    model.adapter_state = "unmerged"
    return model
