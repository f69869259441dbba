"""One export-friendly Llama-family decoder.

Fused `qkv_proj` and `gate_up_proj` (loaded from separate HF q/k/v and gate/up),
GQA, RoPE with Llama-3 scaling, RMSNorm, tied or untied embeddings, a static KV
cache. `forward(tokens)` serves training (full causal sequence, no cache);
`forward(tokens, input_pos)` serves inference: a prefill of any length, then
single-token decode steps through the cache.

FFBA hooks (see docs/ffba.md): every sub-block carries an optional *unfused*
adapter pair (`.adapter`, extra matmuls) and a *fused* side channel of width
`adapter_width`: the extra output rows of `qkv_proj` / `gate_up_proj` that feed,
through `adapter_act`, the extra input columns of `o_proj` / `down_proj`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import LlamaConfig
from .rope import apply_rope, rope_tables

ATTENTION_IMPLS = ("sdpa", "executorch")
ACTIVATIONS = {"identity": lambda x: x, "relu": F.relu, "silu": F.silu}


# config.json `hidden_act` -> the MLP's gate activation, computed as transformers'
# ACT2FN computes it (transformers/activations.py); fields.HIDDEN_ACTS lists the names.
MLP_ACTIVATIONS = {
    "silu": F.silu, "swish": F.silu, "relu": F.relu, "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    return ACTIVATIONS[name](x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class ExplicitKV:
    """KV cache passed as tensors (ONNX style): `past[i]` = (k, v) of layer i, each
    [B, Hkv, P, D], P = `offset`; layers append their (past + new) keys/values to `present`.
    """

    def __init__(self, past: list[tuple[torch.Tensor, torch.Tensor]], offset):
        self.past, self.offset = past, offset
        self.present: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.rope: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def rotate(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        """RoPE as one ONNX `RotaryEmbedding` op on x [B, S, heads * D]."""
        cos, sin, positions = self.rope
        return torch.onnx.ops.rotary_embedding(x, cos, sin, positions, num_heads=heads)


class SlicedKV:
    """KV cache in caller-owned buffers `k`/`v` [L, B, Hkv, T_max, D] (Core ML state style).

    Every write and read is a slice whose bounds come from input shapes: `mask` is the
    additive causal mask [B, 1, S, T] of this step, so T (its last dim) is the total
    length and T - S the position of the first new token. No tensor-valued index.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor):
        self.k, self.v, self.mask = k, v, mask
        self.layer = 0

    def attend(self, q, k, v, n_rep: int) -> torch.Tensor:
        """q: [B,S,H,D], k/v: [B,S,Hkv,D] -> [B,S,H,D]; writes layer `self.layer`'s cache."""
        i, end = self.layer, self.mask.shape[-1]
        begin = end - q.shape[1]
        self.layer += 1
        self.k[i:i + 1, :, :, begin:end] = k.transpose(1, 2).unsqueeze(0).to(self.k.dtype)
        self.v[i:i + 1, :, :, begin:end] = v.transpose(1, 2).unsqueeze(0).to(self.v.dtype)
        keys = self.k[i, :, :, :end].to(q.dtype).repeat_interleave(n_rep, dim=1)
        values = self.v[i, :, :, :end].to(q.dtype).repeat_interleave(n_rep, dim=1)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values,
                                           attn_mask=self.mask.to(q.dtype))
        return y.transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = (
            cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
        self.q_dim, self.kv_dim = cfg.q_dim, cfg.kv_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_dim + 2 * self.kv_dim,
                                  bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.q_dim, cfg.hidden_size, bias=cfg.attention_bias)
        self.adapter_width = 0           # fused FFBA side channel (0: none)
        self.adapter_act = "identity"
        self.adapter: nn.Module | None = None   # unfused FFBA pair
        self.impl = "sdpa"
        self.register_buffer("k_cache", None, persistent=False)
        self.register_buffer("v_cache", None, persistent=False)

    def forward(self, x, cos, sin, start=None):
        bsz, seq, _ = x.shape
        parts = self.qkv_proj(x).split(
            [self.q_dim, self.kv_dim, self.kv_dim] + ([self.adapter_width] if self.adapter_width
                                                      else []), dim=-1)
        if isinstance(start, ExplicitKV):
            q = start.rotate(parts[0], self.n_heads).view(bsz, seq, self.n_heads, self.head_dim)
            k = start.rotate(parts[1], self.n_kv).view(bsz, seq, self.n_kv, self.head_dim)
        else:
            q = apply_rope(parts[0].view(bsz, seq, self.n_heads, self.head_dim), cos, sin)
            k = apply_rope(parts[1].view(bsz, seq, self.n_kv, self.head_dim), cos, sin)
        v = parts[2].view(bsz, seq, self.n_kv, self.head_dim)
        y = self._attend(q, k, v, start).reshape(bsz, seq, self.q_dim)
        if self.adapter_width:
            y = torch.cat([y, activation(self.adapter_act, parts[3])], dim=-1)
        out = self.o_proj(y)
        if self.adapter is not None:
            out = out + self.adapter(x)
        return out

    def _attend(self, q, k, v, start):
        """q: [B,S,H,D], k/v: [B,S,Hkv,D] -> [B,S,H,D]."""
        if isinstance(start, ExplicitKV):
            return self._attend_explicit(q, k, v, start)
        if isinstance(start, SlicedKV):
            return start.attend(q, k, v, self.n_heads // self.n_kv)
        if start is None:
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2), is_causal=True, enable_gqa=True)
            return y.transpose(1, 2)
        if self.impl == "executorch":
            torch.ops.llama.update_cache(k, self.k_cache, start)
            torch.ops.llama.update_cache(v, self.v_cache, start)
            return torch.ops.llama.custom_sdpa(q, self.k_cache, self.v_cache, start, None, 0.0, True)
        seq = q.shape[1]
        self.k_cache[:, start:start + seq] = k
        self.v_cache[:, start:start + seq] = v
        keys, values = self.k_cache[:, :start + seq], self.v_cache[:, :start + seq]
        pos = torch.arange(start, start + seq)[:, None]
        mask = torch.arange(start + seq)[None, :] <= pos
        y = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2),
                                           values.transpose(1, 2), attn_mask=mask, enable_gqa=True)
        return y.transpose(1, 2)


    def _attend_explicit(self, q, k, v, kv: ExplicitKV):
        """One ONNX `Attention` (opset 23) on [B, S, heads * D] inputs: GQA, past/present
        KV and the causal mask inside (an exporter may swap in a fused kernel 1:1)."""
        past_k, past_v = kv.past[len(kv.present)]
        bsz, seq = q.shape[:2]
        total = past_k.shape[2] + seq
        mask = torch.arange(total)[None, :] <= torch.arange(seq)[:, None] + (total - seq)
        y, keys, values, _ = torch.onnx.ops.attention(
            q.reshape(bsz, seq, -1), k.reshape(bsz, seq, -1), v.reshape(bsz, seq, -1), mask,
            past_k, past_v, q_num_heads=self.n_heads, kv_num_heads=self.n_kv)
        kv.present.append((keys, values))
        return y.view(bsz, seq, self.n_heads, self.head_dim)


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.ffn_dim = cfg.intermediate_size
        self.act = MLP_ACTIVATIONS[cfg.hidden_act]
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * self.ffn_dim, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(self.ffn_dim, cfg.hidden_size, bias=cfg.mlp_bias)
        self.adapter_width = 0
        self.adapter_act = "identity"
        self.adapter: nn.Module | None = None

    def forward(self, x):
        parts = self.gate_up_proj(x).split(
            [self.ffn_dim, self.ffn_dim] + ([self.adapter_width] if self.adapter_width else []),
            dim=-1)
        y = self.act(parts[0]) * parts[1]
        if self.adapter_width:
            y = torch.cat([y, activation(self.adapter_act, parts[2])], dim=-1)
        out = self.down_proj(y)
        if self.adapter is not None:
            out = out + self.adapter(x)
        return out


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, start=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, start)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """Decoder with `embed_tokens`, `layers`, `norm`, `lm_head` (HF names, fused projections)."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.max_seq = 0
        self.register_buffer("rope_cos", None, persistent=False)
        self.register_buffer("rope_sin", None, persistent=False)

    def setup_cache(self, max_seq: int, batch_size: int = 1) -> "LlamaModel":
        """(Re)allocate RoPE tables and zeroed KV caches for `max_seq` positions."""
        self.max_seq = max_seq
        self.rope_cos, self.rope_sin = rope_tables(self.config, max_seq)
        dtype = self.embed_tokens.weight.dtype
        shape = (batch_size, max_seq, self.config.num_key_value_heads, self.config.head_dim)
        for layer in self.layers:
            layer.self_attn.k_cache = torch.zeros(shape, dtype=dtype)
            layer.self_attn.v_cache = torch.zeros(shape, dtype=dtype)
        return self

    def reset_cache(self) -> None:
        for layer in self.layers:
            layer.self_attn.k_cache.zero_()
            layer.self_attn.v_cache.zero_()

    def set_attention_impl(self, impl: str) -> "LlamaModel":
        """"sdpa" (plain PyTorch) or "executorch" (ExecuTorch's custom SDPA + cache ops)."""
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl {impl!r} not in {ATTENTION_IMPLS}")
        if impl == "executorch":
            import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  registers ops
        for layer in self.layers:
            layer.self_attn.impl = impl
        return self

    def forward(self, tokens: torch.Tensor,
                input_pos: torch.Tensor | ExplicitKV | SlicedKV | None = None,
                last_only: bool = False) -> torch.Tensor:
        """tokens [B, S] -> logits [B, S, V] ([B, 1, V] with `last_only`).

        Without `input_pos`: a training pass over the whole sequence, no cache.
        With `input_pos` ([1], the position of tokens[:, 0]): a step through the static cache.
        With an `ExplicitKV`: a step on caller-held keys/values (collected in its `present`).
        With a `SlicedKV`: a step on caller-held cache buffers, positions from its mask's shape.
        """
        seq = tokens.shape[1]
        start = cos = sin = None
        if input_pos is None:
            cos, sin = rope_tables(self.config, seq)
        elif isinstance(input_pos, ExplicitKV):   # RoPE runs as one RotaryEmbedding op
            start, half = input_pos, self.config.head_dim // 2
            positions = (torch.arange(seq) + start.offset).unsqueeze(0).expand(tokens.shape[0], -1)
            start.rope = (self.rope_cos[:, :half], self.rope_sin[:, :half], positions)
        elif isinstance(input_pos, SlicedKV):      # positions T - S .. T - 1, from shapes
            start, end = input_pos, input_pos.mask.shape[-1]
            cos, sin = (torch.narrow(t, 0, end - seq, seq) for t in (self.rope_cos, self.rope_sin))
        else:
            if self.rope_cos is None:
                raise RuntimeError("call setup_cache(max_seq) before cached inference")
            start = input_pos[0].item()
            torch._check(start >= 0)
            torch._check(start + seq <= self.max_seq)
            cos = torch.narrow(self.rope_cos, 0, start, seq)
            sin = torch.narrow(self.rope_sin, 0, start, seq)
        if cos is not None:
            dtype = self.norm.weight.dtype
            dev = self.norm.weight.device
            cos, sin = cos.unsqueeze(1).to(dev, dtype), sin.unsqueeze(1).to(dev, dtype)
        h = self.embed_tokens(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin, start)
        if last_only:
            h = h[:, -1:, :]
        return self.lm_head(self.norm(h))
