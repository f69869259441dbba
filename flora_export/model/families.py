"""The decoder families flora-export loads, one per config.json `model_type`.

A `Family` holds what its transformers class fixes for every checkpoint (q/k norms,
Gemma's norms and embedding scale, Phi3's fused tensors and modules) and the defaults
that class uses for keys a config.json leaves out. Its `hf_layout` names the class's
decoder-layer modules as PEFT sees them (`q_proj` ... or Phi3's fused `qkv_proj` ...)
and where each projection's rows sit in our fused ones. `read_config` maps a family's config.json to
`LlamaConfig` keyword arguments, the way that class reads it (its fields are checked
by the family's table in fields.py first); `write_config` writes it back in the
family's own layout, which transformers loads to the same model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import FloraError
from .rope_config import flat_rope, gemma3_rope, phi3_rope

FULL, SLIDING = "full_attention", "sliding_attention"
LAYER_TYPES = (FULL, SLIDING)


@dataclass(frozen=True)
class HFProjection:
    """One linear of the transformers class's decoder layer, as PEFT names it: `name`
    under `parent`, whose output rows are the `rows` blocks (q, kv, ffn, hidden) of our
    fused module `ours`, in that order, after the projections listed before it."""

    name: str
    parent: str
    ours: str
    rows: tuple[str, ...]

    def in_features(self, cfg) -> int:
        return {"o_proj": cfg.q_dim, "down_proj": cfg.intermediate_size}.get(
            self.ours, cfg.hidden_size)

    def out_features(self, cfg) -> int:
        sizes = {"q": cfg.q_dim, "kv": cfg.kv_dim, "ffn": cfg.intermediate_size,
                 "hidden": cfg.hidden_size}
        return sum(sizes[r] for r in self.rows)


@dataclass(frozen=True)
class HFLayout:
    """The transformers class's decoder-layer modules: its projections, in our fused row
    order, and the other modules of a layer (`named_modules()` names after the layer)."""

    projections: tuple[HFProjection, ...]
    layer_modules: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.projections)

    def projection(self, name: str) -> HFProjection | None:
        return next((p for p in self.projections if p.name == name), None)


_ATTN, _MLP = "self_attn", "mlp"
# LlamaForCausalLM and the families named like it: seven separate projections
SEPARATE = HFLayout(
    (HFProjection("q_proj", _ATTN, "qkv_proj", ("q",)),
     HFProjection("k_proj", _ATTN, "qkv_proj", ("kv",)),
     HFProjection("v_proj", _ATTN, "qkv_proj", ("kv",)),
     HFProjection("o_proj", _ATTN, "o_proj", ("hidden",)),
     HFProjection("gate_proj", _MLP, "gate_up_proj", ("ffn",)),
     HFProjection("up_proj", _MLP, "gate_up_proj", ("ffn",)),
     HFProjection("down_proj", _MLP, "down_proj", ("hidden",))),
    ("self_attn", "mlp", "mlp.act_fn", "input_layernorm", "post_attention_layernorm"))
# Phi3ForCausalLM: qkv_proj ([q; k; v] rows) and gate_up_proj ([gate; up]) are modules
PHI3_FUSED = HFLayout(
    (HFProjection("qkv_proj", _ATTN, "qkv_proj", ("q", "kv", "kv")),
     HFProjection("o_proj", _ATTN, "o_proj", ("hidden",)),
     HFProjection("gate_up_proj", _MLP, "gate_up_proj", ("ffn", "ffn")),
     HFProjection("down_proj", _MLP, "down_proj", ("hidden",))),
    ("self_attn", "mlp", "mlp.activation_fn", "input_layernorm", "post_attention_layernorm",
     "resid_attn_dropout", "resid_mlp_dropout"))
# every projection name some family's transformers class uses
KNOWN_PROJECTIONS = SEPARATE.names + tuple(n for n in PHI3_FUSED.names
                                           if n not in SEPARATE.names)


@dataclass(frozen=True)
class Family:
    model_type: str
    architecture: str                # the transformers class (config.json `architectures`)
    defaults: dict = field(default_factory=dict)   # transformers' values for absent keys
    act_key: str = "hidden_act"      # the config.json key of the MLP activation
    qk_norm: bool = False            # per-head RMSNorm on q and k before RoPE
    gemma_norms: bool = False        # RMSNorm scale (1 + w); a norm after each sub-block too
    embed_scale: bool = False        # embeddings times sqrt(hidden_size), in the model dtype
    fused_checkpoint: bool = False   # the checkpoint stores qkv_proj / gate_up_proj
    qkv_bias: bool | None = None     # fixed q/k/v bias (None: attention_bias)
    o_bias: bool | None = None       # fixed o_proj bias (None: attention_bias)
    mlp_bias: bool | None = None     # fixed MLP bias (None: mlp_bias)
    rope_types: tuple[str, ...] = ("default", "linear", "llama3")
    hf_layout: HFLayout = SEPARATE   # the class's layer modules (PEFT's target names)


_COMMON = dict(rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu")
_QWEN = dict(_COMMON, max_position_embeddings=32768, num_key_value_heads=32,
             use_sliding_window=False, sliding_window=4096, max_window_layers=28)

FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("llama", "LlamaForCausalLM", dict(_COMMON, max_position_embeddings=2048,
                                             bos_token_id=1, eos_token_id=2)),
    Family("qwen2", "Qwen2ForCausalLM", _QWEN, qkv_bias=True, o_bias=False, mlp_bias=False),
    Family("qwen3", "Qwen3ForCausalLM", dict(_QWEN, head_dim=128), qk_norm=True,
           mlp_bias=False),
    Family("gemma3_text", "Gemma3ForCausalLM",
           dict(rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh",
                max_position_embeddings=131072, num_key_value_heads=4, head_dim=256,
                query_pre_attn_scalar=256, sliding_window=4096, bos_token_id=2,
                eos_token_id=1),
           act_key="hidden_activation", qk_norm=True, gemma_norms=True, embed_scale=True,
           mlp_bias=False),
    Family("phi3", "Phi3ForCausalLM",
           dict(_COMMON, rms_norm_eps=1e-5, max_position_embeddings=4096, sliding_window=None,
                bos_token_id=1, eos_token_id=32000),
           fused_checkpoint=True, qkv_bias=False, o_bias=False, mlp_bias=False,
           rope_types=("default", "longrope"), hf_layout=PHI3_FUSED),
    Family("smollm3", "SmolLM3ForCausalLM",
           dict(_COMMON, tie_word_embeddings=True, max_position_embeddings=32768,
                num_key_value_heads=4, use_sliding_window=False, sliding_window=None,
                no_rope_layer_interval=4, bos_token_id=128000, eos_token_id=128001)),
    Family("mistral", "MistralForCausalLM",
           dict(_COMMON, max_position_embeddings=4096 * 32, num_key_value_heads=8,
                sliding_window=4096, bos_token_id=1, eos_token_id=2),
           qkv_bias=False, o_bias=False, mlp_bias=False),
)}


def read_config(fam: Family, d: dict, where: str) -> dict:
    """`LlamaConfig` keyword arguments from a family's config.json dict (KeyError for a
    missing required key)."""
    D = fam.defaults

    def get(key):
        return d[key] if key in d else D.get(key)

    heads, layers = d["num_attention_heads"], d["num_hidden_layers"]
    eos = get("eos_token_id")
    out = dict(
        model_type=fam.model_type, vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"], num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=get("num_key_value_heads") or heads,
        head_dim=get("head_dim"), rms_norm_eps=get("rms_norm_eps"),
        tie_word_embeddings=get("tie_word_embeddings"),
        max_position_embeddings=get("max_position_embeddings"), hidden_act=get(fam.act_key),
        bos_token_id=get("bos_token_id"),
        eos_token_ids=tuple(eos) if isinstance(eos, (list, tuple)) else (
            () if eos is None else (eos,)),
        attention_bias=fam.qkv_bias if fam.qkv_bias is not None else get("attention_bias") or
        False,
        mlp_bias=fam.mlp_bias if fam.mlp_bias is not None else get("mlp_bias") or False)
    types, window = None, None
    if fam.model_type == "phi3":
        out["rope_scaling"], out["rope_theta"], out["partial_rotary_factor"] = phi3_rope(d, where)
    elif fam.model_type == "gemma3_text":
        out["rope_scaling"], out["rope_theta"], out["rope_local_theta"] = gemma3_rope(d, where)
    else:
        out["rope_scaling"], out["rope_theta"] = flat_rope(
            d, where, 2000000.0 if fam.model_type == "smollm3" else 10000.0)
    if fam.model_type in ("qwen2", "qwen3"):
        window = get("sliding_window") if get("use_sliding_window") else None
        types = d.get("layer_types") or [
            SLIDING if window is not None and i >= get("max_window_layers") else FULL
            for i in range(layers)]
    elif fam.model_type == "gemma3_text":
        window, pattern = get("sliding_window"), d.get("sliding_window_pattern", 6)
        if not d.get("layer_types") and (isinstance(pattern, bool) or not isinstance(pattern, int)
                                         or pattern <= 0):
            raise FloraError(f"{where}: sliding_window_pattern={pattern!r} must be a positive "
                             "integer", "fix the model's config.json")
        types = d.get("layer_types") or [SLIDING if (i + 1) % pattern else FULL
                                          for i in range(layers)]
        out["query_pre_attn_scalar"] = get("query_pre_attn_scalar")
        out["final_logit_softcapping"] = d.get("final_logit_softcapping")
    elif fam.model_type == "smollm3":
        window, interval = get("sliding_window"), get("no_rope_layer_interval")
        rope_layers = d.get("no_rope_layers") or [int((i + 1) % interval != 0)
                                                  for i in range(layers)]
        if not isinstance(rope_layers, list) or any(r not in (0, 1) for r in rope_layers):
            raise FloraError(f"{where}: no_rope_layers must be a list of 0/1 per layer, got "
                             f"{rope_layers!r}", "fix the model's config.json")
        if len(rope_layers) != layers:
            raise FloraError(f"{where}: no_rope_layers has {len(rope_layers)} entries for "
                             f"{layers} layers", "give one 0/1 per layer")
        out["nope_layers"] = tuple(i for i, r in enumerate(rope_layers) if not r)
        types = d.get("layer_types") or [
            SLIDING if get("use_sliding_window") and window is not None and not rope_layers[i]
            else FULL for i in range(layers)]
    elif fam.model_type in ("mistral", "phi3"):
        window = get("sliding_window")
        types = None if window is None else [SLIDING] * layers
    for key in ("rope_theta", "rope_local_theta"):
        value = out.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            out[key] = float(value)
    if types is not None and not isinstance(types, list):
        raise FloraError(f"{where}: layer_types must be a list, got {types!r}",
                         "fix the model's config.json")
    if types is not None and SLIDING in types:
        if window is None:
            raise FloraError(f"{where}: layer_types has sliding_attention layers but no "
                             "sliding_window applies (transformers refuses it too)",
                             "set sliding_window (and use_sliding_window) or make them "
                             "full_attention")
        out["layer_types"], out["sliding_window"] = tuple(types), window
    elif types is not None:
        out["layer_types"] = tuple(types)   # checked in validate; all full is normalised
    return out


def write_config(cfg) -> dict:
    """`cfg` as its family's config.json (transformers loads it to the same model)."""
    fam = FAMILIES[cfg.model_type]
    eos = list(cfg.eos_token_ids)
    d = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
         "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
         "num_attention_heads": cfg.num_attention_heads,
         "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
         "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
         "rope_scaling": dict(cfg.rope_scaling) if cfg.rope_scaling else None,
         "tie_word_embeddings": cfg.tie_word_embeddings,
         "max_position_embeddings": cfg.max_position_embeddings}
    if fam.qkv_bias is None:
        d["attention_bias"] = cfg.attention_bias
    if fam.mlp_bias is None:
        d["mlp_bias"] = cfg.mlp_bias
    d.update({fam.act_key: cfg.hidden_act, "bos_token_id": cfg.bos_token_id,
              "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
              "model_type": fam.model_type, "architectures": [fam.architecture],
              "torch_dtype": "float32"})
    if fam.model_type != "llama":   # not the class default (Phi3's 32000 may lie past the vocab)
        d["pad_token_id"] = None
    types = list(cfg.layer_types or [FULL] * cfg.num_hidden_layers)
    sliding = SLIDING in types
    if fam.model_type in ("qwen2", "qwen3", "smollm3"):
        d.update(use_sliding_window=sliding, sliding_window=cfg.sliding_window,
                 layer_types=types)
    if fam.model_type in ("qwen2", "qwen3"):
        d["max_window_layers"] = cfg.num_hidden_layers
    if fam.model_type in ("mistral", "phi3"):
        d["sliding_window"] = cfg.sliding_window
    if fam.model_type == "smollm3":
        d["no_rope_layers"] = [int(i not in cfg.nope_layers) for i in range(cfg.num_hidden_layers)]
    if fam.model_type == "phi3":
        d["partial_rotary_factor"] = cfg.partial_rotary_factor
        if cfg.rope_scaling:
            d["original_max_position_embeddings"] = cfg.rope_scaling[
                "original_max_position_embeddings"]
    if fam.model_type == "gemma3_text":
        full = {"rope_type": "default", **(cfg.rope_scaling or {}), "rope_theta": cfg.rope_theta}
        d.pop("rope_theta"), d.pop("rope_scaling")
        d.update(rope_parameters={FULL: full, SLIDING: {"rope_type": "default",
                                                       "rope_theta": cfg.rope_local_theta}},
                 sliding_window=cfg.sliding_window, layer_types=types,
                 query_pre_attn_scalar=cfg.query_pre_attn_scalar,
                 final_logit_softcapping=cfg.final_logit_softcapping)
    return d
