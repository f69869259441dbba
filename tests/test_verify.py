"""The gates' logic: what counts as a match, a decisive position, an inconclusive criterion
or a broken export; the extension of the sequence; thresholds pinned to their measurements."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from flora_export.errors import FloraError
from flora_export.verify import (CALIBRATION, VerifyConfig, check, compare, enforce,
                                 judge_lowering, judge_quality, measure, run_steps, schedule,
                                 sqnr_db)

ROOT = Path(__file__).resolve().parents[1]
GEN = torch.Generator().manual_seed(0)
CFG = VerifyConfig()


def peaked_logits(steps=30, vocab=100, margin=8.0):
    logits = torch.randn(steps, vocab, generator=GEN)
    logits[torch.arange(steps), torch.randint(0, vocab, (steps,), generator=GEN)] += margin
    return list(logits)


def noisy(ref, std=0.05):
    return [r + std * torch.randn(r.shape, generator=GEN) for r in ref]


def test_sqnr_db_is_signal_over_noise():
    ref = torch.ones(100)
    assert sqnr_db(ref, ref) == float("inf")
    assert abs(sqnr_db(ref, ref * 1.1) - 20.0) < 1e-4


def test_small_noise_passes_quantized_check():
    ref = peaked_logits()
    parity = check(compare(ref, noisy(ref)), quantized=True, cfg=CFG, what="x")
    assert parity.passed and parity.verdict == "passed"
    assert parity.decisive_steps == len(ref) and parity.decisive_agreement == 1
    assert parity.criteria == {"sqnr": "passed", "decisive_agreement": "passed"}


def test_broken_export_fails_quantized_check():
    ref = peaked_logits()
    broken = peaked_logits()            # unrelated logits: what a dropped cache write gives
    with pytest.raises(FloraError, match="does not match the eager model"):
        check(compare(ref, broken), quantized=True, cfg=CFG, what="x")


def test_decisive_means_margin_beyond_k_sigma_of_the_allowed_error():
    # At 20 dB the allowed RMS error is 0.1 x the row's RMS logit; k = 4 makes the limit
    # 4 * sqrt(2) * 0.1 * RMS: 0.57 for row 0 (RMS 1, margin 2: decisive) and 0.38 for
    # row 1 (RMS 0.67, margin 0.1: not decisive).
    ref = [torch.tensor([2.0, 0.0, 0.0, 0.0]), torch.tensor([1.0, 0.9, 0.0, 0.0])]
    flipped = [ref[0] - torch.tensor([100.0, 0, 0, 0]), ref[1].clone()]
    p = compare(ref, flipped, k=4.0, noise_db=20.0)
    # a huge local error cannot excuse the flip by making its position non-decisive
    assert p.decisive_steps == 1 and p.decisive_agreement == 0.0


def test_zero_decisive_positions_is_inconclusive_never_a_pass():
    ref = [torch.tensor([1.0, 1.001, 0.0]) for _ in range(9)]
    test = [torch.tensor([1.001, 1.0, 0.0]) for _ in range(9)]   # every argmax flips
    p = compare(ref, test)
    assert p.token_agreement == 0 and p.decisive_steps == 0 and p.decisive_agreement is None
    judged = judge_lowering(p, True, CFG, "max_seq 64")
    agree = judged.criteria["decisive_agreement"]
    assert agree.startswith("inconclusive: 0 decisive positions of 9 (need 20")
    assert "max_seq 64" in agree
    # the other criterion decides: SQNR here is ~60 dB, so the gate passes on it alone ...
    assert judged.criteria["sqnr"] == "passed" and judged.passed
    record = judged.to_dict()
    assert record["decisive_agreement"] is None and record["criteria"]["decisive_agreement"] == agree
    # ... and fails on it alone when the error is large
    bad = judge_lowering(compare(ref, [t * 3 for t in test]), True, CFG, "max_seq 64")
    assert bad.criteria["sqnr"] == "failed" and bad.passed is False
    with pytest.raises(FloraError, match="failed: sqnr"):
        enforce(bad, "x")


def test_too_few_decisive_positions_is_inconclusive_not_a_verdict():
    ref = peaked_logits(steps=CFG.min_decisive - 1)
    flipped = [r.flip(0) for r in ref]          # every one of them flips
    p = judge_lowering(compare(ref, [r + 0.01 * f for r, f in zip(ref, flipped)]), True, CFG, "b")
    assert p.decisive_steps == CFG.min_decisive - 1
    assert p.criteria["decisive_agreement"].startswith("inconclusive")


def test_one_flip_cannot_decide_the_verdict():
    """At the minimum count, the agreement threshold leaves room for more than one flip."""
    allowed = math.floor((1 - CFG.min_token_agreement) * CFG.min_decisive + 1e-9)
    assert allowed >= 2
    ref = peaked_logits(steps=CFG.min_decisive)
    test = noisy(ref)
    for i in range(allowed):
        test[i] = ref[i].flip(0)
    p = judge_lowering(compare(ref, test), True, CFG, "b")
    assert p.decisive_steps == CFG.min_decisive and p.criteria["decisive_agreement"] == "passed"
    test[allowed] = ref[allowed].flip(0)
    p = judge_lowering(compare(ref, test), True, CFG, "b")
    assert p.criteria["decisive_agreement"] == "failed"


def test_fp32_check_uses_absolute_tolerance():
    ref = peaked_logits()
    ok = [r + 5e-5 for r in ref]
    assert check(compare(ref, ok), quantized=False, cfg=CFG, what="x").passed
    with pytest.raises(FloraError):
        check(compare(ref, [r + 1e-3 for r in ref]), quantized=False, cfg=CFG, what="x")


def test_run_steps_prefills_then_decodes_one_token_at_a_time():
    calls = []

    def step(tokens, pos):
        calls.append((tokens.shape[1], int(pos[0])))
        return torch.zeros(4)
    run_steps(step, torch.arange(12)[None], prompt_len=4, steps=8)
    assert calls == [(4, 0)] + [(1, 4 + i) for i in range(8)]


def test_schedule_grows_by_four_up_to_the_bound():
    assert schedule(9, 9) == [9]
    assert schedule(9, 100) == [9, 36, 100]
    assert schedule(9, 500) == [9, 36, 144, 500]


class Table:
    """A deterministic 'program': position p's logits are row p of a table (a ref or a test);
    it records the positions it was asked for."""

    def __init__(self, rows):
        self.rows, self.calls = rows, []

    def __call__(self, tokens, pos):
        p = int(pos[0]) + tokens.shape[1] - 1 - 3       # prompt of 4 tokens: row 0 at pos 3
        self.calls.append(p)
        return self.rows[p]


def near_tie(vocab):
    row = torch.randn(vocab, generator=GEN)
    top = row.topk(2).indices
    row[top[1]] = row[top[0]] - 1e-4
    return row


def flat_then_peaked(n_flat, n_peaked, vocab=50):
    """`n_flat` positions whose top two logits nearly tie, then `n_peaked` decisive ones."""
    return [near_tie(vocab) for _ in range(n_flat)] + peaked_logits(steps=n_peaked, vocab=vocab)


def test_too_few_decisive_positions_extend_the_sequence():
    ref = flat_then_peaked(12, 60)               # the first round (9) has no decisive position
    test = Table(noisy(ref, 0.01))
    tokens = torch.zeros(1, 4 + len(ref) - 1, dtype=torch.long)
    low, qual, got = measure(test, tokens, 4, ref, ref, CFG, quantized=True, quality_needed=True)
    assert low.extension["rounds"] == [9, 36] and low.steps == 36 == len(got)
    assert low.decisive_steps >= CFG.min_decisive and test.calls == list(range(36))
    assert judge_lowering(low, True, CFG, "b").passed


def test_extension_stops_at_the_bound_and_says_inconclusive():
    ref = flat_then_peaked(40, 5)
    tokens = torch.zeros(1, 4 + len(ref) - 1, dtype=torch.long)
    low, _, got = measure(Table(noisy(ref, 0.0001)), tokens, 4, ref, ref, CFG, True, False)
    assert low.steps == len(ref) == len(got) and low.extension["rounds"] == [9, 36, 45]
    p = judge_lowering(low, True, CFG, "max_seq 48")
    assert p.criteria["decisive_agreement"] == (
        f"inconclusive: {low.decisive_steps} decisive positions of 45 (need 20; the sequence is "
        "bounded by max_seq 48)")
    assert p.passed and p.criteria["sqnr"] == "passed"


def test_fp32_export_verifies_only_the_first_round():
    ref = flat_then_peaked(40, 5)
    tokens = torch.zeros(1, 4 + len(ref) - 1, dtype=torch.long)
    low, _, _ = measure(Table(ref), tokens, 4, ref, ref, CFG, False, False)
    assert low.steps == CFG.decode_steps + 1


def test_quality_gate_random_weights_cannot_be_judged():
    ref = peaked_logits()
    q = judge_quality(compare(ref, peaked_logits()), CFG, "b", random_weights=True, heldout=None)
    assert q.passed is None and q.verdict == "inconclusive: random weights"
    assert set(q.criteria.values()) == {"inconclusive: random weights"}
    enforce(q, "x")                              # not a failure, not a pass


def test_quality_gate_enforced_when_fp32_logits_are_decisive():
    ref = peaked_logits()
    ok = judge_quality(compare(ref, noisy(ref, 0.1)), CFG, "b", False, None)
    assert ok.passed and ok.criteria["heldout_accuracy"].startswith("inconclusive")
    bad = judge_quality(compare(ref, peaked_logits()), CFG, "b", False, None)
    with pytest.raises(FloraError, match="does not match the fp32 model"):
        enforce(bad, "x")


def test_quality_gate_held_out_accuracy_drop():
    ref = peaked_logits()
    held = {"fp32": {"accuracy": 1.0}, "artifact": {"accuracy": 1.0 - CFG.max_accuracy_drop - 0.01}}
    q = judge_quality(compare(ref, noisy(ref)), CFG, "b", False, held)
    assert q.criteria["heldout_accuracy"] == "failed" and q.passed is False
    held["artifact"]["accuracy"] = 1.0 - CFG.max_accuracy_drop
    assert judge_quality(compare(ref, noisy(ref)), CFG, "b", False, held).passed


def _calibration():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gate_calibration
    return gate_calibration, json.loads((ROOT / CALIBRATION).read_text())


def test_thresholds_are_the_ones_derived_from_the_calibration_measurements():
    """VerifyConfig's defaults must equal derive() of the measured cases in CALIBRATION:
    loosening (or tightening) a threshold without new measurements fails here, and so does
    editing the file's thresholds without measurements that give them."""
    cal, data = _calibration()
    derived = cal.derive(list(data["cases"].values()))
    assert derived == data["thresholds"], "the file's thresholds are not derive() of its cases"
    assert {f.name: getattr(CFG, f.name) for f in fields(CFG) if f.name in derived} == derived
    loosened = VerifyConfig(min_sqnr_db=CFG.min_sqnr_db - 1.0)
    assert loosened.min_sqnr_db != derived["min_sqnr_db"]


def test_calibration_covers_the_faithful_lowerings_and_they_pass():
    cal, data = _calibration()
    cases = data["cases"].values()
    assert any(c["trained"] for c in cases)                      # the embedded default
    assert any(c["model"] in cal.HIDDEN_SHAPES for c in cases)   # shapes of no preset
    assert any(c["model"] == "llama3.2-1b" for c in cases)       # the README's 1B export
    assert all(c["machine"]["cpu"] and "load_average" in c["machine"] for c in cases)
    for c in cases:
        v = cal.verdicts(c, data["thresholds"])
        assert v["lowering"]["sqnr"] == "passed" and v["lowering"]["agreement"] != "failed", c
        if c["target"] == "android":      # same quantization on both sides: no decisive flip
            assert v["lowering"]["flips_on_decisive"] == 0, c["name"]
        if c["trained"] and c["target"] == "android":
            assert v["quality"]["sqnr"] == "passed" and v["quality"]["agreement"] != "failed"
            assert v["quality"]["heldout_accuracy"] == "passed"


def test_rounding_sensitivity_measures_one_ulp_nudges_of_the_int8_activations():
    """The nudge moves a quantized model's logits by a finite amount (tiny preset: 39.2 and
    39.4 dB for two seeds, about its XNNPACK lowering's 39.6 dB), and nothing at all where
    no linear quantizes its activations."""
    from flora_export.model import load_model
    from flora_export.quantize import quant_config, quantize
    from flora_export.verify import eager_step, rounding_sensitivity_db, run_steps

    tokens = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(2))
    got = {}
    for mode in ("8da4w", "fp32"):
        model = quantize(load_model("tiny").setup_cache(64), quant_config(mode))

        def logits():
            return run_steps(eager_step(model), tokens, 8, 31)
        ref = logits()
        got[mode] = [rounding_sensitivity_db(model, logits, ref, seed=s) for s in (0, 1)]
        assert torch.equal(torch.stack(logits()), torch.stack(ref))   # the hooks are gone
    assert got["fp32"] == [None, None]
    a, b = got["8da4w"]
    assert 30 < a < 50 and abs(a - b) < 1.5


def test_the_lowering_threshold_follows_the_sensitivity_only_downwards():
    from flora_export.verify import sensitive_config

    cfg = VerifyConfig()
    assert sensitive_config(cfg, None) == cfg
    assert sensitive_config(cfg, 39.2).min_sqnr_db == cfg.min_sqnr_db       # never raised
    assert sensitive_config(cfg, 17.6).min_sqnr_db == pytest.approx(17.6 - 3.0)
    assert sensitive_config(cfg, float("inf")) == cfg
    fixed = VerifyConfig(sensitivity_margin_db=None)
    assert sensitive_config(fixed, 17.6) == fixed
