"""ONNX's attention: an explicit KV cache and the opset-23 `RotaryEmbedding`/`Attention` ops.

`ExplicitKV` is the cache the ONNX backend passes to the model's forward: past keys and
values are graph inputs, the layers' (past + new) keys/values become graph outputs, RoPE
is one `RotaryEmbedding` per projection and attention one `Attention` per layer (GQA,
past/present and the mask inside), so an exporter may swap in a fused kernel 1:1
(export/onnx.py maps them onto ONNX Runtime's `GroupQueryAttention`).
"""

from __future__ import annotations

import torch

from ..errors import FloraError
from ..model.attention import KVCache, allowed


class ExplicitKV(KVCache):
    """`past[i]` = (k, v) of layer i, each [B, Hkv, P, D], P = `offset` tokens already
    cached; `present[i]` = layer i's past + new keys/values after the step."""

    def __init__(self, past: list[tuple[torch.Tensor, torch.Tensor]], offset):
        self.past, self.start = past, offset
        self.present: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(past)

    def begin(self, seq) -> None:
        super().begin(seq)
        batch = self.past[0][0].shape[0] if self.past else 1
        self.positions = (torch.arange(seq) + self.start).unsqueeze(0).expand(batch, -1)

    def rotate(self, q, k, rope):
        """RoPE as one `RotaryEmbedding` op per tensor on [B, S, heads * D]."""
        half = rope.rotary_dim // 2
        cos, sin = rope.cos[:, :half], rope.sin[:, :half]
        extra = {} if rope.rotary_dim == q.shape[-1] else {"rotary_embedding_dim": rope.rotary_dim}

        def one(x):
            bsz, seq, heads, dim = x.shape
            y = torch.onnx.ops.rotary_embedding(x.reshape(bsz, seq, heads * dim), cos, sin,
                                                self.positions, num_heads=heads, **extra)
            return y.view(bsz, seq, heads, dim)
        return one(q), one(k)

    def attend(self, layer, q, k, v, *, window=None, scale=None):
        past_k, past_v = self.past[layer]
        bsz, seq, heads, dim = q.shape
        total = past_k.shape[2] + seq
        mask = allowed(torch.arange(seq) + (total - seq), torch.arange(total), window)
        extra = {} if scale is None else {"scale": scale}
        y, keys, values, _ = torch.onnx.ops.attention(
            q.reshape(bsz, seq, -1), k.reshape(bsz, seq, -1), v.reshape(bsz, seq, -1), mask,
            past_k, past_v, q_num_heads=heads, kv_num_heads=k.shape[2], **extra)
        self.present[layer] = (keys, values)
        return y.view(bsz, seq, heads, dim)


def check_mappable(model) -> None:
    """Refuse what the `GroupQueryAttention` rewrite (export/onnx.py) would not carry over."""
    windowed = [i for i, layer in enumerate(model.layers) if layer.self_attn.window is not None]
    if windowed:
        raise FloraError(f"layers {windowed} use sliding-window attention, which the ONNX "
                         "export's GroupQueryAttention mapping does not carry yet",
                         "export this model with --target android or --target coreml")
