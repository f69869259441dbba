"""One export-friendly Llama-family decoder, for every family of model/families.py.

Fused `qkv_proj` and `gate_up_proj` (loaded from separate HF q/k/v and gate/up),
GQA, RoPE (Llama-3 / linear / longrope scaling, partial rotary, a second table for
Gemma 3's sliding layers, none on SmolLM3's NoPE layers), RMSNorm, tied or untied
embeddings. Per family: q/k/v biases (Qwen2), per-head q/k RMSNorm (Qwen3, Gemma 3),
Gemma 3's (1 + w) norms around each sub-block, scaled embedding, attention scale and
logit soft-capping; sliding-window layers (Qwen, Gemma 3, Phi3, SmolLM3, Mistral). Attention runs
through one `KVCache` per step (model/attention.py), so the forward knows no backend:
`forward(tokens)` serves training (full causal sequence, no cache);
`forward(tokens, input_pos)` serves inference through the model's own cache
(`setup_cache`): a prefill of any length, then single-token decode steps;
`forward(tokens, cache=...)` runs a step on a backend's cache.

FFBA hooks (see docs/ffba.md): every sub-block carries an optional *unfused*
adapter pair (`.adapter`, extra matmuls) and a *fused* side channel of width
`adapter_width`: the extra output rows of `qkv_proj` / `gate_up_proj` that feed,
through `adapter_act`, the extra input columns of `o_proj` / `down_proj`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .attention import FullCausal, KVCache, StaticKVCache
from .config import LlamaConfig
from .rope import Rope
from .source import ModelSource
from .storage import compute_dtype

if TYPE_CHECKING:       # for the annotation only: adapters build on this module
    from ..adapters.state import AdapterState

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
    """RMSNorm as transformers computes it: Llama's `w * norm(x).to(dtype)`, or Gemma's
    (`unit_offset`) `(norm(x) * (1 + w)).to(dtype)`, the norm in float32 either way."""

    def __init__(self, dim: int, eps: float, unit_offset: bool = False):
        super().__init__()
        self.eps, self.unit_offset = eps, unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (x * (1.0 + self.weight.float())).to(dtype)
        return self.weight * x.to(dtype)


def _norm(cfg: LlamaConfig, dim: int) -> RMSNorm:
    return RMSNorm(dim, cfg.rms_norm_eps, unit_offset=cfg.family.gemma_norms)


class Attention(nn.Module):
    """Fused-QKV attention; what attention means (cache, positions, kernel) is the step's
    `KVCache`. Per-layer knobs, from the config: `rope` (the name of the model's RoPE
    table, None: a NoPE layer), `window` (sliding window, None: global), `scale` (None:
    1/sqrt(head_dim)); `q_norm` / `k_norm` (per-head RMSNorm before RoPE) where the
    family has them."""

    def __init__(self, cfg: LlamaConfig, index: int = 0):
        super().__init__()
        self.index = index
        self.n_heads, self.n_kv, self.head_dim = (
            cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
        self.q_dim, self.kv_dim = cfg.q_dim, cfg.kv_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_dim + 2 * self.kv_dim,
                                  bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.q_dim, cfg.hidden_size, bias=cfg.out_bias)
        self.adapter_width = 0           # fused FFBA side channel (0: none)
        self.adapter_act = "identity"
        self.adapter: nn.Module | None = None   # unfused FFBA pair
        if cfg.family.qk_norm:
            self.q_norm, self.k_norm = _norm(cfg, cfg.head_dim), _norm(cfg, cfg.head_dim)
        self.rope: str | None = cfg.rope_kind(index)
        self.window: int | None = cfg.window(index)
        scale = cfg.attention_scale
        self.scale: float | None = None if scale == cfg.head_dim ** -0.5 else scale

    def forward(self, x, cache: KVCache, rope: Rope | None, span: int = 0):
        """`span`: the most positions this step can see (a window at least that long is
        plain causal attention); 0: unknown."""
        bsz, seq, _ = x.shape
        parts = self.qkv_proj(x).split(
            [self.q_dim, self.kv_dim, self.kv_dim] + ([self.adapter_width] if self.adapter_width
                                                      else []), dim=-1)
        q = parts[0].view(bsz, seq, self.n_heads, self.head_dim)
        k = parts[1].view(bsz, seq, self.n_kv, self.head_dim)
        v = parts[2].view(bsz, seq, self.n_kv, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = cache.rotate(q, k, rope)
        window = self.window if self.window is not None and not 0 < span <= self.window \
            else None
        y = cache.attend(self.index, q, k, v, window=window, scale=self.scale)
        y = y.reshape(bsz, seq, self.q_dim)
        if self.adapter_width:
            y = torch.cat([y, activation(self.adapter_act, parts[3])], dim=-1)
        out = self.o_proj(y)
        if self.adapter is not None:
            out = out + self.adapter(x)
        return out


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
    """Pre-norm residual sub-blocks. Gemma 3 (`family.gemma_norms`) also norms each
    sub-block's output before the residual add: `post_attention_layernorm` is then that
    norm, and the MLP reads `pre_feedforward_layernorm` (HF names and meanings)."""

    def __init__(self, cfg: LlamaConfig, index: int = 0):
        super().__init__()
        d = cfg.hidden_size
        self.input_layernorm = _norm(cfg, d)
        self.self_attn = Attention(cfg, index)
        self.post_attention_layernorm = _norm(cfg, d)
        self.mlp = MLP(cfg)
        self.sandwich = cfg.family.gemma_norms
        if self.sandwich:
            self.pre_feedforward_layernorm = _norm(cfg, d)
            self.post_feedforward_layernorm = _norm(cfg, d)

    def forward(self, x, cache: KVCache, rope: Rope | None, span: int = 0):
        attn = self.self_attn(self.input_layernorm(x), cache, rope, span)
        if not self.sandwich:
            x = x + attn
            return x + self.mlp(self.post_attention_layernorm(x))
        x = x + self.post_attention_layernorm(attn)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class LlamaModel(nn.Module):
    """Decoder with `embed_tokens`, `layers`, `norm`, `lm_head` (HF names, fused projections)."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = _norm(cfg, cfg.hidden_size)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        kinds = sorted({layer.self_attn.rope for layer in self.layers} - {None})
        self.ropes = nn.ModuleDict({k: Rope(cfg, k) for k in kinds})   # a layer's `rope` names one
        self.max_seq = 0
        self.kv_cache: KVCache | None = None
        self.source: ModelSource | None = None          # where the weights came from
        self.tokenizer_json: str | None = None          # the tokenizer file's text
        self.adapter_state: AdapterState | None = None  # None: no adapter

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype activations, caches and adapters use; the matrices may be stored
        narrower (model/storage.py)."""
        return compute_dtype(self.embed_tokens)

    def setup_cache(self, max_seq: int, batch_size: int = 1) -> "LlamaModel":
        """(Re)allocate RoPE tables and the eager zeroed KV cache for `max_seq` positions."""
        self.max_seq = max_seq
        for rope in self.ropes.values():
            rope.setup(max_seq)
        cfg = self.config
        self.kv_cache = StaticKVCache(cfg.num_hidden_layers, max_seq, cfg.num_key_value_heads,
                                      cfg.head_dim, batch_size, self.compute_dtype)
        return self

    def reset_cache(self) -> None:
        self.kv_cache.reset()

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor | None = None,
                last_only: bool = False, *, cache: KVCache | None = None) -> torch.Tensor:
        """tokens [B, S] -> logits [B, S, V] ([B, 1, V] with `last_only`).

        Without `input_pos`: a training pass over the whole sequence, no cache.
        With `input_pos` ([1], the position of tokens[:, 0]): a step through the model's
        own cache (`setup_cache`, or the one a backend swapped in).
        With `cache`: a step on that cache (a backend's, holding caller-owned tensors).
        """
        if cache is None:
            cache = FullCausal() if input_pos is None else self._own_cache().at(input_pos)
        cache.begin(tokens.shape[1])
        span = tokens.shape[1] if isinstance(cache, FullCausal) else self.max_seq
        h = self.embed_tokens(tokens)
        if self.config.family.embed_scale:   # sqrt(d) rounded to the model dtype, as in HF
            h = h * torch.tensor(self.config.hidden_size ** 0.5).to(h.dtype)
        for layer in self.layers:
            name = layer.self_attn.rope
            h = layer(h, cache, None if name is None else self.ropes[name], span)
        if last_only:
            h = h[:, -1:, :]
        logits = self.lm_head(self.norm(h))
        cap = self.config.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def _own_cache(self) -> KVCache:
        if self.kv_cache is None:
            raise RuntimeError("call setup_cache(max_seq) before cached inference")
        return self.kv_cache
