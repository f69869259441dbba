"""The verify stage: an exported program against the eager model, step by step.

Both sides are driven through the same fixed token sequence (a prompt prefill,
then single-token decode steps through the KV cache, teacher-forced with the
fp32 model's greedy continuation), so every step's logits can be compared:
max |diff|, SQNR in dB and greedy-token agreement.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from .errors import FloraError

log = logging.getLogger(__name__)

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (tokens [1,S], pos [1]) -> [V]


@dataclass(frozen=True)
class VerifyConfig:
    decode_steps: int = 16
    fp32_atol: float = 1e-4          # max |logit diff| for an unquantized export
    min_sqnr_db: float = 25.0        # quantized export vs the eager model, same quantization
    min_token_agreement: float = 0.75


@dataclass
class Parity:
    steps: int
    max_abs_diff: float
    sqnr_db: float
    token_agreement: float
    quant_sqnr_db_vs_fp32: float | None = None
    passed: bool = False
    thresholds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v)
                for k, v in d.items()}


def reference_sequence(model: torch.nn.Module, prompt: list[int], steps: int
                       ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy-decode `steps` tokens; returns (all tokens [1, P+steps], per-step logits)."""
    tokens = torch.tensor([prompt])
    logits = run_steps(eager_step(model), tokens, len(prompt), steps, greedy=True)
    next_ids = [int(x.argmax()) for x in logits[:-1]]
    return torch.cat([tokens, torch.tensor([next_ids])], dim=1), logits


def eager_step(model: torch.nn.Module) -> Step:
    model.set_attention_impl("sdpa")
    model.reset_cache()

    def step(tokens, pos):
        with torch.no_grad():
            return model(tokens, pos, last_only=True)[0, -1].float()
    return step


def run_steps(step: Step, tokens: torch.Tensor, prompt_len: int, steps: int,
              greedy: bool = False) -> list[torch.Tensor]:
    """Prefill tokens[:, :prompt_len], then `steps` decode steps; per-step logits."""
    out = [step(tokens[:, :prompt_len], torch.tensor([0]))]
    seq = tokens
    for i in range(steps):
        pos = prompt_len + i
        if greedy:
            nxt = torch.tensor([[int(out[-1].argmax())]])
            seq = torch.cat([seq[:, :pos], nxt], dim=1)
        out.append(step(seq[:, pos:pos + 1], torch.tensor([pos])))
    return out


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    noise = (ref - test).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    return float("inf") if noise == 0 else 10 * math.log10(signal / noise)


def compare(ref: list[torch.Tensor], test: list[torch.Tensor]) -> tuple[float, float, float]:
    r, t = torch.stack(ref), torch.stack(test)
    agree = (r.argmax(-1) == t.argmax(-1)).float().mean().item()
    return (r - t).abs().max().item(), sqnr_db(r, t), agree


def check(parity: Parity, quantized: bool, cfg: VerifyConfig, what: str) -> Parity:
    """Apply the thresholds; raise FloraError (nothing gets written) on failure."""
    if quantized:
        parity.thresholds = {"min_sqnr_db": cfg.min_sqnr_db,
                             "min_token_agreement": cfg.min_token_agreement}
        ok = parity.sqnr_db >= cfg.min_sqnr_db and parity.token_agreement >= cfg.min_token_agreement
    else:
        parity.thresholds = {"fp32_atol": cfg.fp32_atol}
        ok = parity.max_abs_diff <= cfg.fp32_atol
    parity.passed = ok
    log.info("verify %s: max|diff| %.3g, SQNR %.1f dB, token agreement %.0f%% -> %s", what,
             parity.max_abs_diff, parity.sqnr_db, 100 * parity.token_agreement,
             "ok" if ok else "FAILED")
    if not ok:
        raise FloraError(
            f"{what} does not match the eager model (max|diff| {parity.max_abs_diff:.3g}, "
            f"SQNR {parity.sqnr_db:.1f} dB, token agreement {parity.token_agreement:.0%}; "
            f"thresholds {parity.thresholds})",
            "nothing was written; report this with the manifest inputs, or try --quant fp32")
    return parity
