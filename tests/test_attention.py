"""The attention seam: every backend's KV cache against the eager one and plain math.

Each cache runs in eager PyTorch (before any export) through a prefill and decode steps,
with the per-layer knobs model families need: sliding window, custom scale, partial
rotary, a second RoPE base, no RoPE.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from flora_export.export.coreml import causal_mask
from flora_export.export.coreml_attention import SlicedKV
from flora_export.export.executorch_attention import CustomOpKVCache, custom_op_attention
from flora_export.export.onnx_attention import ExplicitKV
from flora_export.model.attention import FullCausal, StaticKVCache
from flora_export.model.presets import random_model
from flora_export.model.rope import Rope

from conftest import shapes

H, HKV, D, T, PROMPT = 4, 2, 16, 24, 9
CFG = shapes(num_attention_heads=H, num_key_value_heads=HKV, head_dim=D, rope_theta=10000.0,
             rope_scaling=None, num_hidden_layers=3)
KINDS = ("static", "executorch", "onnx", "coreml")


def naive(q, k, v, window=None, scale=None):
    """Attention by definition: q [S, H, D], k/v [S, Hkv, D], positions 0 .. S - 1."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = torch.einsum("ihd,jhd->hij", q, k) * scale
    i, j = torch.arange(q.shape[0])[:, None], torch.arange(q.shape[0])[None, :]
    ok = (j <= i) & ((i - j < window) if window else True)
    return torch.einsum("hij,jhd->ihd", scores.masked_fill(~ok, float("-inf")).softmax(-1), v)


def naive_rope(x, theta, rotary):
    """Rotate the first `rotary` features of x [S, H, D] (pairs i, i + rotary/2)."""
    inv = 1.0 / theta ** (torch.arange(0, rotary, 2).float() / rotary)
    ang = torch.arange(x.shape[0]).float()[:, None] * inv            # [S, rotary/2]
    c, s = ang.cos()[:, None], ang.sin()[:, None]
    a, b, rest = x[..., :rotary // 2], x[..., rotary // 2:rotary], x[..., rotary:]
    return torch.cat([a * c - b * s, b * c + a * s, rest], dim=-1)


class Steps:
    """A fresh cache of one kind, built anew each step as its backend does."""

    def __init__(self, kind: str, layers: int = 1):
        self.kind, self.pos = kind, 0
        eager = StaticKVCache(layers, T, HKV, D)
        self.static = CustomOpKVCache.sharing(eager) if kind == "executorch" else eager
        self.past = [(torch.zeros(1, HKV, 0, D), torch.zeros(1, HKV, 0, D))] * layers
        self.k, self.v = torch.zeros(layers, 1, HKV, T, D), torch.zeros(layers, 1, HKV, T, D)
        if kind == "executorch":
            import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401

    def cache(self, seq: int):
        if self.kind == "onnx":
            self.last = ExplicitKV(self.past, self.pos)
        elif self.kind == "coreml":
            self.last = SlicedKV(self.k, self.v, causal_mask(seq, self.pos))
        else:
            self.last = self.static.at(torch.tensor([self.pos]))
        return self.last

    def done(self, seq: int) -> None:
        self.pos += seq
        if self.kind == "onnx":
            self.past = self.last.present


def run_cache(kind, q, k, v, rope=None, window=None, scale=None):
    """Prefill PROMPT positions, then one token per step; y [S, H, D]."""
    steps, out, pos = Steps(kind), [], 0
    if rope is not None:
        rope.setup(T)
    while pos < q.shape[0]:
        n = PROMPT if pos == 0 else 1
        cache = steps.cache(n)
        cache.begin(n)
        qs, ks, vs = (t[None, pos:pos + n] for t in (q, k, v))
        if rope is not None:
            qs, ks = cache.rotate(qs, ks, rope)
        out.append(cache.attend(0, qs, ks, vs, window=window, scale=scale)[0])
        steps.done(n)
        pos += n
    return torch.cat(out)


def qkv(seed=0, seq=16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(seq, H, D, generator=g) * 2, torch.randn(seq, HKV, D, generator=g) * 2,
            torch.randn(seq, HKV, D, generator=g))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("window,scale", [(None, None), (4, None), (None, 0.07), (1, 0.3)])
def test_attend_is_attention_by_definition(kind, window, scale):
    q, k, v = qkv()
    ref = naive(q, k, v, window, scale)
    full = FullCausal()
    full.begin(q.shape[0])
    train = full.attend(0, q[None], k[None], v[None], window=window, scale=scale)[0]
    assert (train - ref).abs().max() < 1e-5
    got = run_cache(kind, q, k, v, window=window, scale=scale)
    assert (got - ref).abs().max() < 1e-5
    if window or scale:   # the knob changes the result, so the test above can see it
        assert (naive(q, k, v) - ref).abs().max() > 1e-2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("theta,rotary", [(10000.0, D), (1000.0, D), (10000.0, D // 2)])
def test_rotate_is_rope_by_definition(kind, theta, rotary):
    q, k, v = qkv(1)
    rope = Rope(CFG, theta=theta, rotary_dim=rotary)
    ref = naive(naive_rope(q, theta, rotary), naive_rope(k, theta, rotary), v)
    got = run_cache(kind, q, k, v, rope=rope)
    assert (got - ref).abs().max() < 1e-5
    full = FullCausal()
    full.begin(q.shape[0])
    rq, rk = full.rotate(q[None], k[None], rope)
    assert (rq[0] - naive_rope(q, theta, rotary)).abs().max() < 1e-5
    assert (rk[0] - naive_rope(k, theta, rotary)).abs().max() < 1e-5
    if rotary < D:    # the unrotated features pass through unchanged
        assert torch.equal(rq[0, ..., rotary:], q[..., rotary:])


def test_partial_rotary_matches_transformers_phi():
    phi = pytest.importorskip("transformers.models.phi.modeling_phi")
    from transformers import PhiConfig
    hf = PhiConfig(hidden_size=H * D, num_attention_heads=H, partial_rotary_factor=0.5,
                   rope_theta=10000.0, max_position_embeddings=T)
    rot = phi.PhiRotaryEmbedding(hf)
    q, k, _ = qkv(2)
    qt, kt = q[None].transpose(1, 2), k[None].transpose(1, 2)               # [1, H, S, D]
    cos, sin = rot(qt, torch.arange(q.shape[0])[None])
    rd = cos.shape[-1]
    ref_q = torch.cat([phi.apply_rotary_pos_emb(qt[..., :rd], kt[..., :rd], cos, sin)[0],
                       qt[..., rd:]], dim=-1).transpose(1, 2)[0]
    full = FullCausal()
    full.begin(q.shape[0])
    got_q, _ = full.rotate(q[None], k[None], Rope(CFG, rotary_dim=rd))
    assert rd == D // 2 and (got_q[0] - ref_q).abs().max() < 1e-5


def knobbed_model():
    """Three layers: a local one (window 5, its own RoPE base over half of each head),
    one without RoPE with its own scale, and a default one."""
    model = random_model(CFG, seed=4, std=0.2)
    model.ropes["local"] = Rope(CFG, theta=500.0, rotary_dim=D // 2)
    a0, a1 = model.layers[0].self_attn, model.layers[1].self_attn
    a0.window, a0.rope = 5, "local"
    a1.rope, a1.scale = None, 0.5
    return model.setup_cache(T)


@pytest.mark.parametrize("kind", KINDS)
def test_backend_caches_match_training_with_every_knob(kind):
    model, plain = knobbed_model(), random_model(CFG, seed=4, std=0.2).setup_cache(T)
    tokens = torch.randint(0, CFG.vocab_size, (1, 15), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(tokens)
        assert (plain(tokens) - ref).abs().max() > 1e-2      # the knobs change the logits
        out = backend_steps(model, kind, tokens)
    assert (out - ref).abs().max() < 1e-4


def backend_steps(model, kind, tokens):
    """Prefill PROMPT tokens, then one per step, on `kind`'s cache; logits [1, S, V]."""
    steps, out, pos = Steps(kind, CFG.num_hidden_layers), [], 0
    own = custom_op_attention(model) if kind == "executorch" else contextlib.nullcontext()
    with own:
        while pos < tokens.shape[1]:
            n = PROMPT if pos == 0 else 1
            chunk = tokens[:, pos:pos + n]
            if kind in ("static", "executorch"):     # the model's own (possibly swapped) cache
                out.append(model(chunk, torch.tensor([pos])))
            else:
                out.append(model(chunk, cache=steps.cache(n)))
                steps.done(n)
            pos += n
    return torch.cat(out, 1)


def test_onnx_refuses_rotary_widths_group_query_attention_cannot_run():
    """A window, NoPE and a scale map onto GroupQueryAttention (tests/test_family_exports.py);
    a rotary width not a multiple of 16 does not."""
    from flora_export.errors import FloraError
    from flora_export.export.onnx_attention import check_mappable
    check_mappable(random_model(CFG))
    with pytest.raises(FloraError, match=r"rotary_dim 8 .*'local' RoPE"):
        check_mappable(knobbed_model())
