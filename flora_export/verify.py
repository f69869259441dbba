"""The export gates: an exported program's logits against a reference, position by position.

Both sides are driven through the same fixed token sequence: a prompt prefill, then
single-token decode steps through the KV cache, teacher-forced (the fp32 model's greedy
continuation, then fixed texts when the sequence has to be extended). Two gates read it:

* *lowering*: the artifact in its runtime against the eager model carrying the
  artifact's exact weights (for a quantized export: the same quantized weights);
* *quality*: the artifact against the fp32 model.

Each gate has criteria; a criterion is ``passed``, ``failed`` or ``inconclusive: why``.
A gate fails when any conclusive criterion fails, passes when at least one criterion is
conclusive and none fails, and is inconclusive otherwise. The thresholds and the
measurements they come from: docs/verification.md and benchmarks/results/gate_calibration.json.
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

CALIBRATION = "benchmarks/results/gate_calibration.json"
PASSED, FAILED = "passed", "failed"
SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True)
class VerifyConfig:
    """Gate thresholds. The defaults are derived from CALIBRATION by the rule in
    benchmarks/gate_calibration.py (tests/test_verify.py checks they agree)."""

    decode_steps: int = 8              # decode steps of the first round
    max_positions: int = 512           # extension bound besides max_seq (cost bound)
    fp32_atol: float = 1e-4            # max |logit diff| of an unquantized export
    # A position is decisive when the reference's top-2 margin exceeds decisive_k times
    # sqrt(2) x the largest RMS logit error the gate's SQNR threshold allows there (the
    # standard deviation of the difference of two such errors): a program within the
    # threshold, with errors as Gaussian as the calibration measured, flips it with
    # probability about P(Z > k).
    decisive_k: float = 4.0
    min_decisive: int = 20             # fewer decisive positions: agreement is inconclusive
    # lowering gate (artifact vs eager, same weights)
    min_sqnr_db: float = 18.5          # 1B preset measured 21.8 dB: 21.5 - 3
    # ... or, where lower, the model's own rounding sensitivity (rounding_sensitivity_db)
    # less the same 3 dB: what one-ulp differences at every activation quantization move
    # this model's logits by (the 1B preset: 21.9 dB, its XNNPACK lowering: 22.1 dB);
    # None: the fixed threshold alone
    sensitivity_margin_db: float | None = 3.0
    min_token_agreement: float = 0.9   # on decisive positions (>= min_decisive of them)
    # quality gate (artifact vs fp32), enforced for models whose logits are decisive
    min_quality_sqnr_db: float = 5.0   # embedded default, int4 .pte: 8.2 dB: 8.0 - 3
    min_quality_agreement: float = 0.9
    max_accuracy_drop: float = 0.07    # held-out exact match, fp32 minus artifact (default
    #                                    int4 .pte: 1.00 -> 0.97, + 3 binomial sd)
    heldout_examples: int = 200


@dataclass
class Parity:
    """Test vs reference logits over `steps` positions.

    token_agreement counts every position; decisive_agreement only the decisive ones
    (None when there are none: no agreement was measured).
    """

    steps: int
    max_abs_diff: float
    sqnr_db: float
    token_agreement: float
    decisive_steps: int = 0
    decisive_agreement: float | None = None
    min_position_sqnr_db: float | None = None
    max_flip_z: float | None = None      # largest margin/(sqrt2 sigma) of a flipped position
    max_abs_u: float | None = None       # largest |e_top2 - e_top1| / (sqrt2 sigma)
    # (sigma: the position's measured RMS logit error; statistics for the calibration)
    quant_sqnr_db_vs_fp32: float | None = None
    gate: str = "lowering"
    reference: str = ""
    criteria: dict = field(default_factory=dict)
    verdict: str = ""
    passed: bool | None = None
    thresholds: dict = field(default_factory=dict)
    extension: dict = field(default_factory=dict)
    heldout: dict | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v)
                for k, v in d.items()}

    def summary(self) -> str:
        agree = ("no decisive positions" if self.decisive_agreement is None else
                 f"{self.decisive_agreement:.0%} of {self.decisive_steps} decisive")
        return (f"max|diff| {self.max_abs_diff:.3g}, SQNR {self.sqnr_db:.1f} dB, token "
                f"agreement {self.token_agreement:.0%} of {self.steps} positions ({agree})")


def reference_sequence(model: torch.nn.Module, prompt: list[int], steps: int
                       ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy-decode `steps` tokens; returns (all tokens [1, P+steps], per-step logits)."""
    tokens = torch.tensor([prompt])
    logits = run_steps(eager_step(model), tokens, len(prompt), steps, greedy=True)
    next_ids = [int(x.argmax()) for x in logits[:-1]]
    return torch.cat([tokens, torch.tensor([next_ids])], dim=1), logits


def eager_step(model: torch.nn.Module) -> Step:
    model.reset_cache()

    def step(tokens, pos):
        with torch.no_grad():
            return model(tokens, pos, last_only=True)[0, -1].float()
    return step


@torch.no_grad()
def eager_extension(model: torch.nn.Module, tokens: torch.Tensor, fed: int) -> list[torch.Tensor]:
    """Per-position logits for tokens[:, fed:], continuing the eager model's KV cache
    (which holds the first `fed` tokens, e.g. after run_steps) in one chunk."""
    if fed >= tokens.shape[1]:
        return []
    return list(model(tokens[:, fed:], torch.tensor([fed]))[0].float())


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


def continue_steps(step: Step, tokens: torch.Tensor, prompt_len: int, out: list[torch.Tensor],
                   total: int) -> list[torch.Tensor]:
    """Extend run_steps' `out` (same step, state kept) to `total` positions."""
    while len(out) < total:
        pos = prompt_len + len(out) - 1
        out.append(step(tokens[:, pos:pos + 1], torch.tensor([pos])))
    return out


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    noise = (ref - test).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    return float("inf") if noise == 0 else 10 * math.log10(signal / noise)


def _db(signal: float, noise: float) -> float:
    return float("inf") if noise == 0 else 10 * math.log10(signal / noise)


def compare(ref: list[torch.Tensor], test: list[torch.Tensor], k: float = VerifyConfig.decisive_k,
            noise_db: float = VerifyConfig.min_sqnr_db) -> Parity:
    """Statistics of `test` against `ref`. A position is decisive when the reference's
    top-2 margin exceeds k * sqrt(2) * sigma, sigma being the largest RMS logit error the
    gate allows there (the reference's RMS logit over 10^(noise_db/20)): whether a position
    is decisive depends on the reference alone, so a large local error cannot excuse a
    flip by making its own position non-decisive. Computed in float64, a block of
    positions at a time (a 128K-256K vocabulary over ~500 positions would otherwise take
    several GB of float64 temporaries)."""
    rows = [_position_stats(torch.stack(ref[i:i + _BLOCK]).double(),
                            torch.stack(test[i:i + _BLOCK]).double(), k, noise_db)
            for i in range(0, len(ref), _BLOCK)]
    st = {key: torch.cat([r[key] for r in rows]) for key in rows[0]}
    same, decisive = st["same"], st["decisive"]
    n_dec = int(decisive.sum())
    max_abs = st["max_abs"].max().item()
    pos_sqnr = [_db(a, b) for a, b in zip(st["signal"].tolist(), st["noise"].tolist())]
    return Parity(
        steps=len(ref), max_abs_diff=max_abs,
        sqnr_db=_db(st["signal"].sum().item(), st["noise"].sum().item()),
        token_agreement=same.double().mean().item(), decisive_steps=n_dec,
        decisive_agreement=same[decisive].double().mean().item() if n_dec else None,
        min_position_sqnr_db=min(pos_sqnr),
        max_flip_z=st["z"][~same].max().item() if (~same).any() else None,
        max_abs_u=st["u"].abs().max().item() if max_abs > 0 else 0.0)


_BLOCK = 16     # positions compared at once


def _position_stats(r: torch.Tensor, t: torch.Tensor, k: float, noise_db: float) -> dict:
    """Per-position statistics of compare() for one block ([P, V] float64 each)."""
    err = t - r
    top2 = r.topk(2, dim=-1)
    margin = top2.values[:, 0] - top2.values[:, 1]
    allowed = r.pow(2).mean(-1).sqrt() * 10 ** (-noise_db / 20)
    # calibration statistics, in units of this position's measured error (sqrt2 sigma)
    scale = (SQRT2 * err.pow(2).mean(-1).sqrt()).clamp_min(1e-300)
    e_top = err.gather(1, top2.indices)
    return {"same": r.argmax(-1) == t.argmax(-1), "decisive": margin > k * SQRT2 * allowed,
            "z": margin / scale, "u": (e_top[:, 1] - e_top[:, 0]) / scale,
            "max_abs": err.abs().amax(-1), "noise": err.pow(2).sum(-1),
            "signal": r.pow(2).sum(-1)}


def schedule(first: int, total: int) -> list[int]:
    """Positions verified after each round: the first round, then x4 up to `total`."""
    sizes = [min(first, total)]
    while sizes[-1] < total:
        sizes.append(min(sizes[-1] * 4, total))
    return sizes


def measure(step: Step, tokens: torch.Tensor, prompt_len: int, eager: list[torch.Tensor],
            fp32: list[torch.Tensor], cfg: VerifyConfig, quantized: bool, quality_needed: bool
            ) -> tuple[Parity, Parity, list[torch.Tensor]]:
    """Run `step` round by round until both gates see cfg.min_decisive decisive positions
    (the quality gate only when `quality_needed`) or the references end; returns the
    lowering and quality comparisons and the program's logits."""
    first = cfg.decode_steps + 1
    total = len(eager) if quantized else first
    got = run_steps(step, tokens, prompt_len, first - 1)
    sizes = schedule(first, total)
    for size in sizes:
        continue_steps(step, tokens, prompt_len, got, size)
        low = compare(eager[:size], got, cfg.decisive_k, cfg.min_sqnr_db)
        n_q = min(size, len(fp32))
        qual = compare(fp32[:n_q], got[:n_q], cfg.decisive_k, cfg.min_quality_sqnr_db)
        if low.decisive_steps >= cfg.min_decisive and (
                not quality_needed or qual.decisive_steps >= cfg.min_decisive):
            break
    for p in (low, qual):
        p.extension = {"positions": p.steps, "first_round": first, "available": total,
                       "rounds": sizes[:sizes.index(size) + 1]}
    return low, qual, got


def _agreement(p: Parity, cfg: VerifyConfig, minimum: float, bound: str) -> str:
    if p.decisive_steps < cfg.min_decisive:
        return (f"inconclusive: {p.decisive_steps} decisive positions of {p.steps} "
                f"(need {cfg.min_decisive}; the sequence is bounded by {bound})")
    return PASSED if p.decisive_agreement >= minimum else FAILED


def _verdict(p: Parity) -> None:
    states = list(p.criteria.values())
    if FAILED in states:
        p.passed, p.verdict = False, FAILED
    elif PASSED in states:
        p.passed, p.verdict = True, PASSED
    else:
        p.passed, p.verdict = None, next(iter(states), "inconclusive")


def rounding_sensitivity_db(model: torch.nn.Module, logits: Callable[[], list[torch.Tensor]],
                            reference: list[torch.Tensor], seed: int = 0) -> float | None:
    """How far an implementation faithful to within one ulp can land from the eager
    quantized model on this model: the SQNR of `reference` (logits() of the model as it
    is) against logits() with the input of every linear that quantizes its activations
    at run time moved by one ulp (x * (1 +- 2^-23), a fixed random sign per element).
    Such a difference flips some int8 activation roundings, and a random-weight model
    amplifies the flips with depth: the 1B preset measured 21.9 dB this way and 22.1 dB for
    its XNNPACK lowering, the 28-layer 3B preset 17.2 and 17.3 dB (docs/verification.md,
    "Rounding sensitivity"). None when
    no linear quantizes its activations (nothing for such differences to flip)."""
    from .quantize import dynamic_activation_linears

    linears = dynamic_activation_linears(model)
    if not linears:
        return None
    gen = torch.Generator().manual_seed(seed)

    def nudge(_module, args):
        x = args[0]
        sign = torch.randint(0, 2, x.shape, generator=gen).to(x.dtype).mul_(2).sub_(1)
        return (x * sign.mul_(2.0 ** -23).add_(1.0),) + tuple(args[1:])

    hooks = [lin.register_forward_pre_hook(nudge) for lin in linears]
    try:
        nudged = logits()
    finally:
        for h in hooks:
            h.remove()
    return compare(reference, nudged).sqnr_db


def sensitive_config(cfg: VerifyConfig, sensitivity_db: float | None) -> VerifyConfig:
    """`cfg` with the lowering SQNR threshold the model's rounding sensitivity allows:
    the lower of cfg.min_sqnr_db and sensitivity - cfg.sensitivity_margin_db (never
    higher than the fixed threshold; unchanged when the sensitivity is unknown or
    cfg.sensitivity_margin_db is None)."""
    if (sensitivity_db is None or not math.isfinite(sensitivity_db)
            or cfg.sensitivity_margin_db is None):
        return cfg
    from dataclasses import replace
    floor = round(sensitivity_db - cfg.sensitivity_margin_db, 2)
    return replace(cfg, min_sqnr_db=min(cfg.min_sqnr_db, floor))


def lowering_thresholds(cfg: VerifyConfig, quantized: bool) -> dict:
    """The thresholds the lowering gate applies: the lossy ones, or fp32's tolerance."""
    if not quantized:
        return {"fp32_atol": cfg.fp32_atol}
    return {"min_sqnr_db": cfg.min_sqnr_db, "decisive_k": cfg.decisive_k,
            "min_decisive": cfg.min_decisive, "min_token_agreement": cfg.min_token_agreement}


def judge_lowering(p: Parity, quantized: bool, cfg: VerifyConfig, bound: str) -> Parity:
    p.gate, p.reference = "lowering", ("eager model, same quantized weights" if quantized
                                       else "eager fp32 model")
    p.thresholds = lowering_thresholds(cfg, quantized)
    if quantized:
        p.criteria = {"sqnr": PASSED if p.sqnr_db >= cfg.min_sqnr_db else FAILED,
                      "decisive_agreement": _agreement(p, cfg, cfg.min_token_agreement, bound)}
    else:
        p.criteria = {"max_abs_diff": PASSED if p.max_abs_diff <= cfg.fp32_atol else FAILED}
    _verdict(p)
    return p


def judge_quality(p: Parity, cfg: VerifyConfig, bound: str, random_weights: bool,
                  heldout: dict | None) -> Parity:
    """Quality vs fp32: enforced when the fp32 logits are decisive (or a held-out
    accuracy was measured); random-weight presets cannot be judged."""
    p.gate, p.reference = "quality", "fp32 model"
    p.thresholds = {"min_quality_sqnr_db": cfg.min_quality_sqnr_db, "decisive_k": cfg.decisive_k,
                    "min_decisive": cfg.min_decisive,
                    "min_quality_agreement": cfg.min_quality_agreement,
                    "max_accuracy_drop": cfg.max_accuracy_drop}
    if random_weights:
        why = "inconclusive: random weights"
        p.criteria = {"sqnr": why, "decisive_agreement": why, "heldout_accuracy": why}
    else:
        agree = _agreement(p, cfg, cfg.min_quality_agreement, bound)
        decisive = not agree.startswith("inconclusive")
        p.criteria = {
            "sqnr": (PASSED if p.sqnr_db >= cfg.min_quality_sqnr_db else FAILED) if decisive
            else "inconclusive: the fp32 logits are not decisive",
            "decisive_agreement": agree,
            "heldout_accuracy": _accuracy(heldout, cfg)}
    p.heldout = heldout
    _verdict(p)
    return p


def _accuracy(heldout: dict | None, cfg: VerifyConfig) -> str:
    if not heldout:
        return "inconclusive: no held-out task is known for this model"
    drop = heldout["fp32"]["accuracy"] - heldout["artifact"]["accuracy"]
    heldout["drop"] = round(drop, 4)
    return PASSED if drop <= cfg.max_accuracy_drop + 1e-9 else FAILED


def enforce(p: Parity, what: str, quality_fix: str | None = None) -> Parity:
    """Raise FloraError (nothing gets written) when the gate failed; `quality_fix` replaces
    the suggested fix of a failed quality gate."""
    log.info("%s gate, %s vs %s: %s -> %s %s", p.gate, what, p.reference, p.summary(),
             p.verdict, p.criteria)
    if p.passed is False:
        bad = ", ".join(k for k, v in p.criteria.items() if v == FAILED)
        fix = ("nothing was written; report this with the manifest inputs, or try --quant fp32"
               if p.gate == "lowering" else
               "nothing was written; the quantized model is too far from the fp32 model: " +
               (quality_fix or "try --quant int8 or --quant fp32"))
        raise FloraError(f"{what} does not match the {p.reference} ({p.summary()}; failed: "
                         f"{bad}; thresholds {p.thresholds})", fix)
    return p


def check(parity: Parity, quantized: bool, cfg: VerifyConfig, what: str,
          bound: str = "the reference sequence") -> Parity:
    """The lowering gate on a finished comparison; raises FloraError on failure."""
    return enforce(judge_lowering(parity, quantized, cfg, bound), what)
