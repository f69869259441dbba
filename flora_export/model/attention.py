"""The decoder's one seam to attention: a `KVCache` per forward step.

The model never knows which backend it runs on. Each step it calls

    cache.begin(seq)                                  # seq new tokens
    q, k = cache.rotate(q, k, rope)                   # per layer with RoPE (a `Rope`)
    y = cache.attend(layer, q, k, v, window=W, scale=s)

with q [B, S, H, D], k/v [B, S, Hkv, D] and y [B, S, H, D] (GQA: H a multiple of Hkv).
A cache knows the positions of the step's tokens, where past keys/values live and how
attention is computed; the model only picks, per layer, the RoPE tables (or none), the
sliding window (a query at position i sees keys j with i - W < j <= i, Hugging Face's
`sliding_window`; None: all earlier keys) and the scale (None: 1/sqrt(D)).

Here: `FullCausal` (training, no cache) and `StaticKVCache` (eager inference, plain
PyTorch SDPA). Each backend's cache lives with its backend and is swapped in by the
exporter: ExecuTorch's custom ops (export/executorch_attention.py), ONNX's explicit
past/present tensors (export/onnx_attention.py), Core ML's sliced state
(export/coreml_attention.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .rope import Rope, apply_rope


def allowed(query_pos: torch.Tensor, key_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Bool [S, T]: may the query at query_pos[i] attend the key at key_pos[j]."""
    mask = key_pos[None, :] <= query_pos[:, None]
    if window is not None:
        mask = mask & (key_pos[None, :] > query_pos[:, None] - window)
    return mask


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask as an additive one: 0 where allowed, -inf elsewhere."""
    return torch.where(mask, torch.zeros((), dtype=dtype), torch.tensor(float("-inf"), dtype=dtype))


def sdpa(q, keys, values, mask=None, scale=None, is_causal=False) -> torch.Tensor:
    """q [B, S, H, D], keys/values [B, T, Hkv, D] -> [B, S, H, D] (PyTorch SDPA, GQA)."""
    extra = {} if scale is None else {"scale": scale}
    y = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2),
                                       values.transpose(1, 2), attn_mask=mask,
                                       is_causal=is_causal, enable_gqa=True, **extra)
    return y.transpose(1, 2)


class KVCache:
    """One step's attention: positions, RoPE rows, past keys/values, the attention op.

    The default `rotate` applies `rope`'s rows for positions start .. start + seq - 1
    (`start` set by `begin`), sliced once per step and table; override `rows` or `rotate`
    for caches whose positions or RoPE op differ.
    """

    start: int | torch.SymInt = 0
    seq: int | torch.SymInt = 0

    def begin(self, seq) -> None:
        """Start a step of `seq` new tokens."""
        self.seq, self._rows = seq, {}

    def rows(self, rope: Rope) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [S, R] of this step's positions from `rope`'s cached tables."""
        if rope.cos is None:
            raise RuntimeError("call setup_cache(max_seq) before cached inference")
        return (torch.narrow(rope.cos, 0, self.start, self.seq),
                torch.narrow(rope.sin, 0, self.start, self.seq))

    def rotate(self, q: torch.Tensor, k: torch.Tensor, rope: Rope
               ) -> tuple[torch.Tensor, torch.Tensor]:
        key = id(rope)
        if key not in self._rows:
            self._rows[key] = tuple(t.unsqueeze(1).to(q.device, q.dtype) for t in self.rows(rope))
        cos, sin = self._rows[key]
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
               window: int | None = None, scale: float | None = None) -> torch.Tensor:
        raise NotImplementedError


class FullCausal(KVCache):
    """Training: no cache, the whole sequence at positions 0 .. S - 1, causal."""

    def rows(self, rope: Rope) -> tuple[torch.Tensor, torch.Tensor]:
        return rope.tables(self.seq)

    def attend(self, layer, q, k, v, *, window=None, scale=None):
        if window is None:
            return sdpa(q, k, v, scale=scale, is_causal=True)
        pos = torch.arange(q.shape[1], device=q.device)
        return sdpa(q, k, v, allowed(pos, pos, window), scale)


class LayerKV(nn.Module):
    """One layer's keys and values, [B, T_max, Hkv, D] (ExecuTorch's cache layout)."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype):
        super().__init__()
        self.register_buffer("k", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype), persistent=False)


class StaticKVCache(nn.Module, KVCache):
    """Eager inference: per-layer buffers of `max_seq` positions, written at `input_pos`
    (`at`), plain PyTorch SDPA over the first start + seq keys."""

    def __init__(self, n_layers: int, max_seq: int, kv_heads: int, head_dim: int,
                 batch_size: int = 1, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.max_seq = max_seq
        self.layers = nn.ModuleList(LayerKV((batch_size, max_seq, kv_heads, head_dim), dtype)
                                    for _ in range(n_layers))
        self.input_pos: torch.Tensor | None = None

    def at(self, input_pos: torch.Tensor) -> "StaticKVCache":
        """This cache for a step whose first token sits at `input_pos` ([1] int64)."""
        self.input_pos = input_pos
        return self

    def reset(self) -> None:
        for layer in self.layers:
            layer.k.zero_()
            layer.v.zero_()

    def begin(self, seq) -> None:
        super().begin(seq)
        self.start = self.input_pos[0].item()
        torch._check(self.start >= 0)
        torch._check(self.start + seq <= self.max_seq)

    def attend(self, layer, q, k, v, *, window=None, scale=None):
        cache, start, end = self.layers[layer], self.start, self.start + self.seq
        cache.k[:, start:end] = k
        cache.v[:, start:end] = v
        mask = allowed(torch.arange(start, end), torch.arange(end), window)
        return sdpa(q, cache.k[:, :end], cache.v[:, :end], mask, scale)
