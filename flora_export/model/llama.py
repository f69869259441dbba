"""One export-friendly Llama-family decoder.

Fused `qkv_proj` and `gate_up_proj` (loaded from separate HF q/k/v and gate/up),
GQA, RoPE with Llama-3 scaling, RMSNorm, tied or untied embeddings. Attention runs
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
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    """Fused-QKV attention; what attention means (cache, positions, kernel) is the step's
    `KVCache`. Per-layer knobs for other families: `rope` (the name of the model's RoPE
    variant, None: no RoPE), `window` (sliding window, None: global) and `scale`
    (None: 1/sqrt(head_dim))."""

    def __init__(self, cfg: LlamaConfig, index: int = 0):
        super().__init__()
        self.index = index
        self.n_heads, self.n_kv, self.head_dim = (
            cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
        self.q_dim, self.kv_dim = cfg.q_dim, cfg.kv_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_dim + 2 * self.kv_dim,
                                  bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.q_dim, cfg.hidden_size, bias=cfg.attention_bias)
        self.adapter_width = 0           # fused FFBA side channel (0: none)
        self.adapter_act = "identity"
        self.adapter: nn.Module | None = None   # unfused FFBA pair
        self.rope: str | None = "default"
        self.window: int | None = None
        self.scale: float | None = None

    def forward(self, x, cache: KVCache, rope: Rope | None):
        bsz, seq, _ = x.shape
        parts = self.qkv_proj(x).split(
            [self.q_dim, self.kv_dim, self.kv_dim] + ([self.adapter_width] if self.adapter_width
                                                      else []), dim=-1)
        q = parts[0].view(bsz, seq, self.n_heads, self.head_dim)
        k = parts[1].view(bsz, seq, self.n_kv, self.head_dim)
        v = parts[2].view(bsz, seq, self.n_kv, self.head_dim)
        if rope is not None:
            q, k = cache.rotate(q, k, rope)
        y = cache.attend(self.index, q, k, v, window=self.window, scale=self.scale)
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
    def __init__(self, cfg: LlamaConfig, index: int = 0):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, index)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cache: KVCache, rope: Rope | None):
        x = x + self.self_attn(self.input_layernorm(x), cache, rope)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """Decoder with `embed_tokens`, `layers`, `norm`, `lm_head` (HF names, fused projections)."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.ropes = nn.ModuleDict({"default": Rope(cfg)})   # a layer's `rope` names one
        self.max_seq = 0
        self.kv_cache: KVCache | None = None
        self.source: ModelSource | None = None          # where the weights came from
        self.tokenizer_json: str | None = None          # the tokenizer file's text
        self.adapter_state: AdapterState | None = None  # None: no adapter

    def setup_cache(self, max_seq: int, batch_size: int = 1) -> "LlamaModel":
        """(Re)allocate RoPE tables and the eager zeroed KV cache for `max_seq` positions."""
        self.max_seq = max_seq
        for rope in self.ropes.values():
            rope.setup(max_seq)
        cfg = self.config
        self.kv_cache = StaticKVCache(cfg.num_hidden_layers, max_seq, cfg.num_key_value_heads,
                                      cfg.head_dim, batch_size, self.embed_tokens.weight.dtype)
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
        h = self.embed_tokens(tokens)
        for layer in self.layers:
            name = layer.self_attn.rope
            h = layer(h, cache, None if name is None else self.ropes[name])
        if last_only:
            h = h[:, -1:, :]
        return self.lm_head(self.norm(h))

    def _own_cache(self) -> KVCache:
        if self.kv_cache is None:
            raise RuntimeError("call setup_cache(max_seq) before cached inference")
        return self.kv_cache
