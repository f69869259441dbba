"""Architecture of a Llama-family decoder, read from and written to HF `config.json`.

One typed config for every family flora-export loads (model/families.py): Llama,
Qwen2/Qwen3, Gemma 3 (text), Phi3, SmolLM3, Mistral. The per-family traits that no
config.json changes (q/k norms, Gemma's norms) live in `Family`; what a config.json
sets (biases, windows, RoPE variants, NoPE layers) is a field here."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FloraError
from .families import FAMILIES, LAYER_TYPES, SLIDING, Family, read_config, write_config
from .fields import GENERATION_CONFIG, HIDDEN_ACTS, MODEL_CONFIGS, TOKENIZER_CONFIG
from .rope_config import ROPE_KEYS


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 131072
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    model_type: str = "llama"
    layer_types: tuple[str, ...] | None = None   # per layer full_/sliding_attention; None: full
    sliding_window: int | None = None        # tokens a sliding layer sees (itself included)
    partial_rotary_factor: float = 1.0       # RoPE on the first int(head_dim * f) dims (Phi3)
    rope_local_theta: float | None = None    # Gemma 3: theta of the sliding layers' RoPE
    nope_layers: tuple[int, ...] = ()        # SmolLM3: layers without RoPE
    query_pre_attn_scalar: float | None = None   # attention scale 1/sqrt(it); None: head_dim
    final_logit_softcapping: float | None = None  # logits = c * tanh(logits / c)

    def __post_init__(self):
        if self.head_dim is None:
            with contextlib.suppress(TypeError, ZeroDivisionError):
                object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        for name in ("layer_types", "nope_layers", "eos_token_ids"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.model_type not in FAMILIES:
            raise FloraError(f"model_type={self.model_type!r} is not supported",
                             f"use one of: {', '.join(FAMILIES)}")
        types = self.layer_types
        if types is not None and (not isinstance(types, tuple) or len(types) !=
                                  self.num_hidden_layers or any(t not in LAYER_TYPES
                                                                for t in types)):
            raise FloraError(f"config.json: layer_types must list {self.num_hidden_layers} "
                             f"entries, each one of {', '.join(LAYER_TYPES)}; got {types!r}"[:300],
                             "fix the model's config.json")
        if types is not None and SLIDING not in types:
            object.__setattr__(self, "layer_types", None)   # all full attention
        if self.layer_types is None:
            object.__setattr__(self, "sliding_window", None)
        self.validate()

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim",
                     "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise FloraError(f"config.json: {name} must be a positive integer, got "
                                 f"{getattr(self, name)!r}", "fix the model's config.json")
        if self.num_attention_heads % self.num_key_value_heads:
            raise FloraError(
                f"config.json: num_attention_heads ({self.num_attention_heads}) is not a multiple "
                f"of num_key_value_heads ({self.num_key_value_heads})", "fix the model's config.json")
        for name in ("tie_word_embeddings", "attention_bias", "mlp_bias"):
            if not isinstance(getattr(self, name), bool):
                raise FloraError(f"config.json: {name} must be true or false, got "
                                 f"{getattr(self, name)!r}", "fix the model's config.json")
        if self.hidden_act not in HIDDEN_ACTS:
            raise FloraError(f"config.json: hidden_act={self.hidden_act!r} is not supported",
                             f"hidden_act must be one of {', '.join(HIDDEN_ACTS)}")
        if self.hidden_size % self.num_attention_heads:
            raise FloraError(
                f"config.json: hidden_size ({self.hidden_size}) is not a multiple of "
                f"num_attention_heads ({self.num_attention_heads}); transformers refuses it too",
                "fix the model's config.json")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                    or value == float("inf"):
                raise FloraError(f"config.json: {name} must be a positive number, got {value!r}",
                                 "fix the model's config.json")
        for name, ids in (("bos_token_id", [self.bos_token_id]),
                          ("eos_token_id", list(self.eos_token_ids))):
            if name == "eos_token_id" and None in ids or any(
                    i is not None and (isinstance(i, bool) or not isinstance(i, int)) for i in ids):
                raise FloraError(f"config.json: {name} must be an integer token id (or a list "
                                 f"of them), got {ids!r}", "fix the model's config.json")
        if self.head_dim % 2:
            raise FloraError(f"config.json: head_dim {self.head_dim} must be even for RoPE",
                             "fix the model's config.json")
        self._validate_rope()
        self._validate_family()

    def _validate_rope(self) -> None:
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        types = self.family.rope_types
        if rope_type not in types:
            raise FloraError(f"config.json: unsupported rope_type {rope_type!r} for "
                             f"model_type {self.model_type}", f"use one of: {', '.join(types)}")
        missing = [k for k in ROPE_KEYS.get(rope_type, ()) if k not in self.rope_scaling]
        if missing:
            raise FloraError(f"config.json: rope_scaling of type {rope_type!r} lacks "
                             f"{', '.join(missing)}", "fix the model's config.json")
        for key, value in (self.rope_scaling or {}).items():
            if key.endswith("_factor") and isinstance(value, (list, tuple)) and \
                    rope_type == "longrope":
                if len(value) != self.rotary_dim // 2 or not all(_positive(v) for v in value):
                    raise FloraError(f"config.json: rope {key} must be {self.rotary_dim // 2} "
                                     f"positive numbers (rotary dim {self.rotary_dim} / 2), got "
                                     f"{len(value)} values", "fix the model's config.json")
            elif key != "rope_type" and not _positive(value):
                raise FloraError(f"config.json: rope {key}={value!r} must be a positive number",
                                 "fix the model's config.json")
        if rope_type == "llama3" and not (self.rope_scaling["low_freq_factor"] <
                                          self.rope_scaling["high_freq_factor"]):
            raise FloraError("config.json: llama3 rope needs low_freq_factor < high_freq_factor, "
                             f"got {self.rope_scaling['low_freq_factor']} and "
                             f"{self.rope_scaling['high_freq_factor']}",
                             "fix the model's config.json")

    def _validate_family(self) -> None:
        fam, n = self.family, self.num_hidden_layers
        for name, fixed in (("attention_bias", fam.qkv_bias), ("mlp_bias", fam.mlp_bias)):
            if fixed is not None and getattr(self, name) != fixed:
                raise FloraError(f"{name}={getattr(self, name)} does not fit model_type "
                                 f"{self.model_type} (its transformers class fixes it to {fixed})",
                                 f"set {name}={fixed}")
        if self.layer_types is not None:
            if self.sliding_window is None or isinstance(self.sliding_window, bool) or \
                    not isinstance(self.sliding_window, int) or self.sliding_window <= 0:
                raise FloraError(f"config.json: sliding_window must be a positive integer for "
                                 f"sliding layers, got {self.sliding_window!r}",
                                 "fix the model's config.json")
            if self.model_type in ("mistral", "phi3") and set(self.layer_types) != {SLIDING}:
                raise FloraError(f"model_type {self.model_type} slides on every layer or none",
                                 "give all layers the same type")
        if not (isinstance(self.partial_rotary_factor, (int, float)) and
                not isinstance(self.partial_rotary_factor, bool) and
                0 < self.partial_rotary_factor <= 1):
            raise FloraError(f"config.json: partial_rotary_factor={self.partial_rotary_factor!r} "
                             "must be in (0, 1]", "fix the model's config.json")
        if self.partial_rotary_factor != 1 and self.model_type != "phi3":
            raise FloraError(f"config.json: partial_rotary_factor={self.partial_rotary_factor!r} "
                             "is not supported (RoPE on part of each head)",
                             "partial_rotary_factor must be 1.0")
        if self.rotary_dim <= 0 or self.rotary_dim % 2:
            raise FloraError(f"config.json: the rotary dim int(head_dim * partial_rotary_factor)"
                             f" = {self.rotary_dim} must be even and positive",
                             "fix head_dim or partial_rotary_factor")
        if (self.rope_local_theta is None) == fam.gemma_norms:
            raise FloraError(f"rope_local_theta is {'required' if fam.gemma_norms else 'only'} "
                             f"for Gemma 3 (model_type {self.model_type})", "fix the config")
        if self.rope_local_theta is not None and not _positive(self.rope_local_theta):
            raise FloraError(f"config.json: rope_local_base_freq={self.rope_local_theta!r} must "
                             "be a positive number", "fix the model's config.json")
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n
               for i in self.nope_layers):
            raise FloraError(f"nope_layers {self.nope_layers!r} must be layer indices below {n}",
                             "fix the config")
        if self.nope_layers and self.model_type != "smollm3":
            raise FloraError("NoPE layers are a SmolLM3 feature", "fix the config")
        for name in ("query_pre_attn_scalar", "final_logit_softcapping"):
            value = getattr(self, name)
            if value is not None and not _positive(value):
                raise FloraError(f"config.json: {name}={value!r} must be a positive number",
                                 "fix the model's config.json")
            if value is not None and self.model_type != "gemma3_text":
                raise FloraError(f"{name} is a Gemma 3 field", "fix the config")

    @property
    def family(self) -> Family:
        return FAMILIES[self.model_type]

    @property
    def out_bias(self) -> bool:
        """Whether o_proj has a bias: attention_bias, unless the family fixes it (Qwen2:
        q/k/v carry a bias, o_proj none)."""
        return self.attention_bias if self.family.o_bias is None else self.family.o_bias

    @property
    def rotary_dim(self) -> int:
        """The leading dims of each head that RoPE rotates (transformers' int() rounding)."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def attention_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def window(self, layer: int) -> int | None:
        """Layer `layer`'s sliding window (None: full causal attention)."""
        if self.layer_types is None or self.layer_types[layer] != SLIDING:
            return None
        return self.sliding_window

    def rope_kind(self, layer: int) -> str | None:
        """Which RoPE table layer `layer` uses: "default", "local" (Gemma 3's sliding
        layers) or None (a NoPE layer)."""
        if layer in self.nope_layers:
            return None
        return "local" if self.rope_local_theta is not None and self.window(layer) else "default"

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_hf_dict(cls, d: dict, where: str = "config.json") -> "LlamaConfig":
        """Read an HF `config.json` dict; every field is honoured or refused (fields.py)."""
        kind = d.get("model_type", "llama")
        table = MODEL_CONFIGS.get(kind) if isinstance(kind, str) else None
        if table is None:
            raise FloraError(f"{where}: model_type={kind!r} is not supported",
                             f"flora-export loads model_type {', '.join(MODEL_CONFIGS)} "
                             "checkpoints")
        table.check(d, where)
        try:
            return cls(**read_config(FAMILIES[kind], d, where))
        except KeyError as e:
            raise FloraError(f"{where} lacks the key {e.args[0]!r}",
                             f"use a complete Hugging Face {kind} config.json") from None
        except (TypeError, ValueError) as e:
            raise FloraError(f"{where} holds a malformed value ({e})",
                             "fix the model's config.json") from None

    def to_hf_dict(self) -> dict:
        """This config as its family's config.json (model/families.py)."""
        return write_config(self)

    @classmethod
    def from_file(cls, path: Path) -> "LlamaConfig":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FloraError(f"no config.json in {Path(path).parent}",
                             "pass a Hugging Face model directory (config.json + *.safetensors "
                             "+ tokenizer.json) or a preset name") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FloraError(f"{path} is not valid JSON ({e})", "restore the file") from None
        if not isinstance(data, dict):
            raise FloraError(f"{path} holds a JSON {type(data).__name__}, not an object",
                             "use the Hugging Face config.json saved with the model")
        return cls.from_hf_dict(data, str(path))

    @classmethod
    def from_dir(cls, model_dir: Path) -> "LlamaConfig":
        """config.json, with generation_config.json's bos/eos when it has them; every field
        of both (and of tokenizer_config.json) honoured or refused by name."""
        model_dir = Path(model_dir)
        cfg = cls.from_file(model_dir / "config.json")
        tok = _read_json(model_dir / "tokenizer_config.json")
        if tok is not None:
            TOKENIZER_CONFIG.check(tok, str(model_dir / "tokenizer_config.json"))
        gen = _read_json(model_dir / "generation_config.json")
        if gen is None:
            return cfg
        where = str(model_dir / "generation_config.json")
        GENERATION_CONFIG.check(gen, where)
        changes = {}
        if gen.get("bos_token_id") is not None:
            changes["bos_token_id"] = gen["bos_token_id"]
        if gen.get("eos_token_id") is not None:
            eos = gen["eos_token_id"]
            changes["eos_token_ids"] = tuple(eos) if isinstance(eos, list) else (eos,)
        try:
            return dataclasses.replace(cfg, **changes)
        except FloraError as e:
            raise FloraError(f"{where}: {e.problem}", e.fix) from None


def _read_json(path: Path) -> dict | None:
    """An optional JSON object file, or None when it is absent."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FloraError(f"{path} is not valid JSON ({e})", "restore the file") from None
    if not isinstance(data, dict):
        raise FloraError(f"{path} holds a JSON {type(data).__name__}, not an object",
                         "restore the file saved with the model")
    return data


def _positive(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0
