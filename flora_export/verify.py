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
    decode_steps: int = 8
    fp32_atol: float = 1e-4          # max |logit diff| for an unquantized export
    min_sqnr_db: float = 15.0        # quantized export vs the eager model, same quantization
    min_token_agreement: float = 0.75  # over the steps whose greedy token is decisive


@dataclass
class Parity:
    """Exported vs eager logits over `steps` steps.

    token_agreement counts every step; a step is *decisive* when the reference's top
    two logits are further apart than twice the measured logit error (random-weight
    models are mostly near-ties there), and the threshold applies to those steps.
    """

    steps: int
    max_abs_diff: float
    sqnr_db: float
    token_agreement: float
    decisive_steps: int = 0
    decisive_agreement: float = 1.0
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


def compare(ref: list[torch.Tensor], test: list[torch.Tensor]) -> Parity:
    r, t = torch.stack(ref), torch.stack(test)
    same = r.argmax(-1) == t.argmax(-1)
    noise = (r - t).pow(2).mean().sqrt()
    top2 = r.topk(2, dim=-1).values
    decisive = (top2[:, 0] - top2[:, 1]) > 2 * noise
    n_dec = int(decisive.sum())
    return Parity(steps=len(ref), max_abs_diff=(r - t).abs().max().item(), sqnr_db=sqnr_db(r, t),
                  token_agreement=same.float().mean().item(), decisive_steps=n_dec,
                  decisive_agreement=same[decisive].float().mean().item() if n_dec else 1.0)


def check(parity: Parity, quantized: bool, cfg: VerifyConfig, what: str) -> Parity:
    """Apply the thresholds; raise FloraError (nothing gets written) on failure."""
    if quantized:
        parity.thresholds = {"min_sqnr_db": cfg.min_sqnr_db,
                             "min_token_agreement": cfg.min_token_agreement}
        ok = (parity.sqnr_db >= cfg.min_sqnr_db
              and parity.decisive_agreement >= cfg.min_token_agreement)
    else:
        parity.thresholds = {"fp32_atol": cfg.fp32_atol}
        ok = parity.max_abs_diff <= cfg.fp32_atol
    parity.passed = ok
    summary = (f"max|diff| {parity.max_abs_diff:.3g}, SQNR {parity.sqnr_db:.1f} dB, token "
               f"agreement {parity.token_agreement:.0%} ({parity.decisive_agreement:.0%} of "
               f"{parity.decisive_steps} decisive steps)")
    log.info("verify %s: %s -> %s", what, summary, "ok" if ok else "FAILED")
    if not ok:
        raise FloraError(
            f"{what} does not match the eager model ({summary}; thresholds {parity.thresholds})",
            "nothing was written; report this with the manifest inputs, or try --quant fp32")
    return parity
