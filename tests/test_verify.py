"""Verification thresholds: what counts as a match, a near-tie, or a broken export."""

from __future__ import annotations

import pytest
import torch

from flora_export.errors import FloraError
from flora_export.verify import VerifyConfig, check, compare, run_steps, sqnr_db

GEN = torch.Generator().manual_seed(0)


def peaked_logits(steps=9, vocab=100, margin=8.0):
    logits = torch.randn(steps, vocab, generator=GEN)
    logits[torch.arange(steps), torch.randint(0, vocab, (steps,), generator=GEN)] += margin
    return list(logits)


def test_sqnr_db_is_signal_over_noise():
    ref = torch.ones(100)
    assert sqnr_db(ref, ref) == float("inf")
    assert abs(sqnr_db(ref, ref * 1.1) - 20.0) < 1e-4


def test_small_noise_passes_quantized_check():
    ref = peaked_logits()
    test = [r + 0.05 * torch.randn(r.shape, generator=GEN) for r in ref]
    parity = check(compare(ref, test), quantized=True, cfg=VerifyConfig(), what="x")
    assert parity.passed and parity.decisive_steps == len(ref) and parity.decisive_agreement == 1


def test_broken_export_fails_quantized_check():
    ref = peaked_logits()
    broken = peaked_logits()            # unrelated logits: what a dropped cache write gives
    with pytest.raises(FloraError, match="does not match the eager model"):
        check(compare(ref, broken), quantized=True, cfg=VerifyConfig(), what="x")


def test_near_ties_are_not_decisive():
    ref = [torch.tensor([1.0, 1.001, 0.0]) for _ in range(9)]
    test = [torch.tensor([1.001, 1.0, 0.0]) for _ in range(9)]   # every argmax flips
    parity = compare(ref, test)
    assert parity.token_agreement == 0 and parity.decisive_steps == 0
    assert check(parity, quantized=True, cfg=VerifyConfig(), what="x").passed


def test_fp32_check_uses_absolute_tolerance():
    ref = peaked_logits()
    ok = [r + 5e-5 for r in ref]
    assert check(compare(ref, ok), quantized=False, cfg=VerifyConfig(), what="x").passed
    with pytest.raises(FloraError):
        check(compare(ref, [r + 1e-3 for r in ref]), quantized=False, cfg=VerifyConfig(), what="x")


def test_run_steps_prefills_then_decodes_one_token_at_a_time():
    calls = []

    def step(tokens, pos):
        calls.append((tokens.shape[1], int(pos[0])))
        return torch.zeros(4)
    run_steps(step, torch.arange(12)[None], prompt_len=4, steps=8)
    assert calls == [(4, 0)] + [(1, 4 + i) for i in range(8)]
