"""Core ML's attention: the KV cache as two state buffers, every access a shape-bound slice.

`SlicedKV` is the cache the Core ML backend passes to the model's forward. Its buffers
`k`/`v` [L, B, Hkv, T_max, D] become the package's states; `mask` is the step's additive
causal mask [B, 1, S, T] (an input), so T is the total length after the step and T - S
the position of the first new token. No tensor-valued index: Core ML converts slices
whose bounds come from input shapes.
"""

from __future__ import annotations

import torch

import torch.nn.functional as F

from ..model.attention import KVCache, additive


class SlicedKV(KVCache):
    def __init__(self, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor):
        self.k, self.v, self.mask = k, v, mask

    def begin(self, seq) -> None:
        super().begin(seq)
        self.start = self.mask.shape[-1] - seq     # positions T - S .. T - 1, from shapes

    def attend(self, layer, q, k, v, *, window=None, scale=None):
        i, begin, end = layer, self.start, self.mask.shape[-1]
        self.k[i:i + 1, :, :, begin:end] = k.transpose(1, 2).unsqueeze(0).to(self.k.dtype)
        self.v[i:i + 1, :, :, begin:end] = v.transpose(1, 2).unsqueeze(0).to(self.v.dtype)
        n_rep = q.shape[2] // self.k.shape[2]       # GQA as repeated heads (no enable_gqa)
        keys = self.k[i, :, :, :end].to(q.dtype).repeat_interleave(n_rep, dim=1)
        values = self.v[i, :, :, :end].to(q.dtype).repeat_interleave(n_rep, dim=1)
        mask = self.mask.to(q.dtype)
        if window is not None:   # the causal part is in self.mask; here the window's lower
            # bound alone (one comparison: coremltools converts no bool `&`)
            query, key = torch.arange(begin, end), torch.arange(end)
            mask = mask + additive(key[None, :] > query[:, None] - window, q.dtype)
        extra = {} if scale is None else {"scale": scale}
        y = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask,
                                           **extra)
        return y.transpose(1, 2)
