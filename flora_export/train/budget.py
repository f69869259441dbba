"""Trainable-parameter budgets: LoRA rank <-> FFBA width at the same parameter count.

LoRA rank r on a projection d_in -> d_out trains r * (d_in + d_out) parameters; the
projections are the model's transformers class's (its family's `hf_layout`): seven for
Llama and the classes named like it, Phi3's fused qkv_proj, o_proj, gate_up_proj,
down_proj (one A and one B each). Targets None: every projection.
FFBA of width h on one sub-block trains 2 * h * d (A: d -> h, B: h -> d), for each
targeted sub-block of each layer; ffba-neurons 3 * h * d (A_gate, A_up, B) per MLP.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..adapters.config import NEURON_VARIANTS, VARIANTS
from ..errors import FloraError, unknown_name
from ..model.config import LlamaConfig


def projection_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, int]]:
    """HF projection name -> (in features, out features), for the config's family."""
    return {p.name: (p.in_features(cfg), p.out_features(cfg))
            for p in cfg.family.hf_layout.projections}


def all_targets(cfg: LlamaConfig) -> tuple[str, ...]:
    return cfg.family.hf_layout.names


def lora_params(cfg: LlamaConfig, rank: int, targets=None) -> int:
    shapes = projection_shapes(cfg)
    targets = all_targets(cfg) if targets is None else targets
    bad = [t for t in targets if t not in shapes]
    if bad:
        raise unknown_name(f"LoRA target of {cfg.family.architecture}", bad[0], tuple(shapes))
    return cfg.num_hidden_layers * rank * sum(sum(shapes[t]) for t in targets)


def ffba_params(cfg: LlamaConfig, width: int, variant: str = "ffba") -> int:
    if variant not in VARIANTS:
        raise unknown_name("FFBA variant", variant, VARIANTS)
    matrices = 3 if variant in NEURON_VARIANTS else 2
    return cfg.num_hidden_layers * len(VARIANTS[variant]) * matrices * width * cfg.hidden_size


@dataclass(frozen=True)
class Match:
    lora_rank: int
    lora_targets: tuple[str, ...]
    lora_params: int
    ffba_width: int
    ffba_variant: str
    ffba_params: int

    @property
    def ratio(self) -> float:
        return self.ffba_params / self.lora_params

    def lines(self) -> list[str]:
        return [f"LoRA r={self.lora_rank} on {','.join(self.lora_targets)}: "
                f"{self.lora_params:,} trainable parameters",
                f"FFBA {self.ffba_variant} width={self.ffba_width}: "
                f"{self.ffba_params:,} trainable parameters ({self.ratio:.3f}x LoRA's)"]


def ffba_width_for_lora(cfg: LlamaConfig, rank: int, targets=None,
                        variant: str = "ffba") -> Match:
    """The FFBA width whose parameter count is closest to LoRA rank `rank`'s."""
    targets = all_targets(cfg) if targets is None else targets
    budget = lora_params(cfg, rank, targets)
    per_width = ffba_params(cfg, 1, variant)
    width = max(1, round(budget / per_width))
    return Match(rank, tuple(targets), budget, width, variant, ffba_params(cfg, width, variant))


def lora_rank_for_ffba(cfg: LlamaConfig, width: int, variant: str = "ffba",
                       targets=None) -> Match:
    """The LoRA rank whose parameter count is closest to FFBA width `width`'s."""
    targets = all_targets(cfg) if targets is None else targets
    budget = ffba_params(cfg, width, variant)
    per_rank = lora_params(cfg, 1, targets)
    rank = max(1, round(budget / per_rank))
    if rank < 1:
        raise FloraError("no LoRA rank fits this budget", "use a wider FFBA adapter")
    return Match(rank, tuple(targets), lora_params(cfg, rank, targets), width, variant, budget)
