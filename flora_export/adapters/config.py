"""The adapter config types, FFBA (ours) and LoRA (baseline): one type per adapter.

The API (`attach_ffba(model, FFBAConfig(...))`), adapter files (`adapter_config.json`)
and training recipes (`method.ffba`, `method.lora`, built from YAML) all use these
classes, so there is one set of defaults and one validation path. Fields declared with
`setting()` are the ones recipes set; the other LoRA fields carry PEFT's
adapter_config.json options.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from ..errors import FloraError
from ..limits import Limit
from ..model.families import KNOWN_PROJECTIONS, Family
from ..model.llama import ACTIVATIONS
from ..settings import check_settings, setting
from .targets import lora_sites

VARIANTS = {"ffba": ("attn", "mlp"), "ffba-attn": ("attn",), "ffba-mlp": ("mlp",),
            "ffba-neurons": ("mlp",)}
# ffba-neurons: the adapter is `width` extra gated neurons of the MLP (A_gate, A_up, B).
NEURON_VARIANTS = ("ffba-neurons",)
INITS = ("kaiming", "gaussian", "orthogonal")
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

WIDTH = Limit(int, 1, example="64")
RANK = Limit(int, 1, example="16")
# An adapter scaled by 0 learns nothing; a negative scale only flips the sign of B.
ALPHA = Limit(float, 0, low_open=True, example="2 * width")
LORA_ALPHA = Limit(float, 0, low_open=True, example="2 * rank")


def _check(cfg, prefix: str) -> None:
    check_settings(type(cfg), {f.name: getattr(cfg, f.name) for f in fields(cfg)}, prefix)


@dataclass(frozen=True)
class FFBAConfig:
    """An FFBA adapter: which sub-blocks, how wide, how scaled, which nonlinearity."""

    width: int = setting("adapter width h (A: d->h, B: h->d per sub-block)", 64, limit=WIDTH)
    alpha: float | None = setting("scale numerator: the adapter output is multiplied by "
                                  "alpha / width; null: alpha = width (scale 1)", None,
                                  limit=ALPHA, optional=True)
    variant: str = setting("ffba (attention and MLP), ffba-attn, ffba-mlp, or ffba-neurons "
                           "(extra gated neurons of the MLP: A on gate and up, B on down)",
                           "ffba", choices=VARIANTS)
    activation: str = setting("nonlinearity between A and B: identity, relu or silu "
                              "(ffba-neurons: identity; its neurons use the MLP's own gate)",
                              "identity", choices=ACTIVATIONS)
    init: str = setting("initialisation of A before training (B starts at 0): kaiming "
                        "(LoRA's Kaiming-uniform, a = sqrt 5), gaussian (N(0, 1/d)) or "
                        "orthogonal (orthonormal rows)", "kaiming", choices=INITS)

    def __post_init__(self):
        _check(self, "FFBA ")
        if self.neurons and self.activation != "identity":
            raise FloraError(f"FFBA activation={self.activation!r} does not apply to "
                             f"variant {self.variant}",
                             "leave activation at identity: ffba-neurons are gated by the "
                             "MLP's own activation (act(A_gate x) * A_up x)")

    @property
    def neurons(self) -> bool:
        """The adapter is extra gated MLP neurons (two forward halves, no side channel)."""
        return self.variant in NEURON_VARIANTS

    @property
    def forward_halves(self) -> tuple[str, ...]:
        """Names of the forward (A) matrices of one pair: A, or A_gate and A_up."""
        return ("A_gate", "A_up") if self.neurons else ("A",)

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.width) / self.width

    @property
    def sub_blocks(self) -> tuple[str, ...]:
        return VARIANTS[self.variant]

    def to_dict(self) -> dict:
        return {"adapter_type": "ffba", **asdict(self)}


@dataclass(frozen=True)
class LoraConfig:
    """A LoRA adapter. `rank`, `alpha`, `targets` are what recipes set; the other fields
    carry PEFT's adapter_config.json options (their defaults are PEFT's: off)."""

    rank: int = setting("LoRA rank r", 16, limit=RANK)
    alpha: float = setting("LoRA alpha (scale alpha / rank)", 32.0, limit=LORA_ALPHA)
    targets: tuple[str, ...] = setting("projections, as the model's transformers class names "
                                       "them: q_proj k_proj v_proj o_proj gate_proj up_proj "
                                       "down_proj (Phi3: qkv_proj o_proj gate_up_proj "
                                       "down_proj)", ALL_TARGETS, choices=KNOWN_PROJECTIONS)
    use_rslora: bool = False
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    target_modules: str | tuple[str, ...] | None = None   # PEFT form; None: `targets`
    exclude_modules: str | tuple[str, ...] | None = None
    layers_to_transform: int | tuple[int, ...] | None = None
    layers_pattern: str | tuple[str, ...] | None = None

    def __post_init__(self):
        if isinstance(self.targets, (list, tuple)):
            object.__setattr__(self, "targets", tuple(self.targets))
        for name in ("target_modules", "exclude_modules", "layers_to_transform",
                     "layers_pattern"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        _check(self, "LoRA ")
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

    def sites(self, family: Family, num_layers: int, where: str = "the LoRA config"
              ) -> dict[tuple[int, str], tuple[int, float]]:
        """(layer, HF projection) -> (rank, scale) on `family`'s transformers class, PEFT's
        matching (targets.py)."""
        return lora_sites(self, family, num_layers, where)

    def to_dict(self) -> dict:
        return {"adapter_type": "lora", **asdict(self)}


AdapterConfig = FFBAConfig | LoraConfig

__all__ = ["FFBAConfig", "LoraConfig", "AdapterConfig", "VARIANTS", "NEURON_VARIANTS", "INITS",
           "ALL_TARGETS"]
