"""ExecuTorch's attention (its LLM custom ops on the model's static cache buffers) and the
other source transform its XNNPACK lowering needs (the tanh GELU written out).

`custom_op_attention(model)` is the source transform the ExecuTorch backend applies
before capture (as ExecuTorch's own Llama export swaps in its custom KV cache and
SDPA): the model's eager `StaticKVCache` is replaced by a `CustomOpKVCache` on the same
buffers, whose writes are `llama.update_cache` and whose attention is one
`llama.custom_sdpa` per layer (causal from `start_pos`, or an explicit additive mask
for a sliding window).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from ..model.attention import StaticKVCache, additive, allowed
from ..model.llama import MLP


class CustomOpKVCache(StaticKVCache):
    """The static cache, written and read by ExecuTorch's custom ops."""

    @classmethod
    def sharing(cls, eager: StaticKVCache) -> "CustomOpKVCache":
        """A custom-op cache on `eager`'s buffers (no copy)."""
        cache = cls.__new__(cls)
        torch.nn.Module.__init__(cache)
        cache.max_seq, cache.layers, cache.input_pos = eager.max_seq, eager.layers, None
        return cache

    def attend(self, layer, q, k, v, *, window=None, scale=None):
        cache, start = self.layers[layer], self.start
        torch.ops.llama.update_cache(k, cache.k, start)
        torch.ops.llama.update_cache(v, cache.v, start)
        extra = () if scale is None else (scale,)
        if window is None:
            return torch.ops.llama.custom_sdpa(q, cache.k, cache.v, start, None, 0.0, True, *extra)
        # a sliding window: an explicit additive mask [S, T_max] over the whole buffer
        mask = allowed(torch.arange(start, start + self.seq), torch.arange(self.max_seq), window)
        return torch.ops.llama.custom_sdpa(q, cache.k, cache.v, start, additive(mask, q.dtype),
                                           0.0, False, *extra)


def load_custom_ops() -> None:
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  registers llama.*


@contextmanager
def custom_op_attention(model):
    """Within the block, `model`'s own cache runs on ExecuTorch's custom ops (zeroed first)."""
    load_custom_ops()
    eager = model.kv_cache
    if eager is None:
        raise RuntimeError("call setup_cache(max_seq) before swapping in ExecuTorch's attention")
    eager.reset()
    model.kv_cache = CustomOpKVCache.sharing(eager)
    try:
        yield model
    finally:
        model.kv_cache = eager


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation as `F.gelu(x, approximate="tanh")` computes it, in ops that
    XNNPACK runs as written (mul, add, tanh)."""
    return 0.5 * x * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * (x * x * x))))


@contextmanager
def written_out_tanh_gelu(model):
    """Within the block, every MLP whose config says `gelu_pytorch_tanh` (Gemma 3) computes
    it as `tanh_gelu`. ExecuTorch's XNNPACK partitioner delegates `aten.gelu` without its
    `approximate` argument, and XNNPACK's GELU is the erf one: left as `aten.gelu`, a tanh
    GELU would run as erf GELU on the device (up to 1.4e-4 in the logits of a tiny Gemma 3
    with a LoRA merged in; the fp32 lowering gate allows 1e-4)."""
    if model.config.hidden_act != "gelu_pytorch_tanh":
        yield model
        return
    mlps = [m for m in model.modules() if isinstance(m, MLP)]
    saved = [m.act for m in mlps]
    for m in mlps:
        m.act = tanh_gelu
    try:
        yield model
    finally:
        for m, act in zip(mlps, saved):
            m.act = act
