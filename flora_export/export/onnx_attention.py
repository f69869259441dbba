"""ONNX's attention: an explicit KV cache and the opset-23 `RotaryEmbedding`/`Attention` ops.

`ExplicitKV` is the cache the ONNX backend passes to the model's forward: past keys and
values are graph inputs, the layers' (past + new) keys/values become graph outputs, RoPE
is one `RotaryEmbedding` per projection and attention one `Attention` per layer (GQA,
past/present and the mask inside), so an exporter may swap in a fused kernel 1:1
(export/onnx.py maps them onto ONNX Runtime's `GroupQueryAttention`).
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class LayerSpec:
    """What a layer's `Attention` node needs from the `GroupQueryAttention` rewrite."""
    rope: bool                # RoPE inside the kernel (False: a NoPE layer)
    window: int | None        # sliding window (HF `sliding_window`), None: global


def layer_specs(model) -> list[LayerSpec]:
    return [LayerSpec(layer.self_attn.rope is not None, layer.self_attn.window)
            for layer in model.layers]


def check_mappable(model) -> None:
    """Refuse what ONNX Runtime's `GroupQueryAttention` (the rewrite in export/onnx.py)
    cannot run: with RoPE inside, it needs head_dim a multiple of 16 and rotary caches
    [positions, rotary_dim / 2] whose width is a multiple of 8."""
    cfg = model.config
    if model.ropes and cfg.head_dim % 16:
        raise FloraError(f"head_dim {cfg.head_dim} is not a multiple of 16, which ONNX Runtime's "
                         "GroupQueryAttention needs (with RoPE) for --target onnx",
                         "export with --target android or --target coreml")
    for name, rope in model.ropes.items():
        if rope.rotary_dim % 16:
            raise FloraError(f"rotary_dim {rope.rotary_dim} (head_dim x partial_rotary_factor) "
                             f"of the '{name}' RoPE is not a multiple of 16, which ONNX Runtime's "
                             "GroupQueryAttention needs for --target onnx",
                             "export with --target android or --target coreml")
