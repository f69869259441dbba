"""Architecture of a Llama-family decoder, read from and written to HF `config.json`."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FloraError
from .fields import GENERATION_CONFIG, HIDDEN_ACTS, MODEL_CONFIGS, ROPE_TYPES, TOKENIZER_CONFIG

ROPE_KEYS = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor")}
ROPE_OPTIONAL = {"llama3": ("original_max_position_embeddings",)}


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

    def __post_init__(self):
        if self.head_dim is None:
            with contextlib.suppress(TypeError, ZeroDivisionError):
                object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
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
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in ROPE_TYPES:
            raise FloraError(f"config.json: unsupported rope_type {rope_type!r}",
                             f"use one of: {', '.join(ROPE_TYPES)}")
        missing = [k for k in ROPE_KEYS.get(rope_type, ()) if k not in self.rope_scaling]
        if missing:
            raise FloraError(f"config.json: rope_scaling of type {rope_type!r} lacks "
                             f"{', '.join(missing)}", "fix the model's config.json")
        for key, value in (self.rope_scaling or {}).items():
            if key != "rope_type" and (isinstance(value, bool) or
                                       not isinstance(value, (int, float)) or not value > 0):
                raise FloraError(f"config.json: rope {key}={value!r} must be a positive number",
                                 "fix the model's config.json")
        if rope_type == "llama3" and not (self.rope_scaling["low_freq_factor"] <
                                          self.rope_scaling["high_freq_factor"]):
            raise FloraError("config.json: llama3 rope needs low_freq_factor < high_freq_factor, "
                             f"got {self.rope_scaling['low_freq_factor']} and "
                             f"{self.rope_scaling['high_freq_factor']}",
                             "fix the model's config.json")

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
        rope, theta = _rope_settings(d, where)
        eos = d.get("eos_token_id")
        eos = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
        try:
            return cls(
                vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                intermediate_size=d["intermediate_size"],
                num_hidden_layers=d["num_hidden_layers"],
                num_attention_heads=d["num_attention_heads"],
                num_key_value_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
                head_dim=d.get("head_dim"), rms_norm_eps=d.get("rms_norm_eps", 1e-6),
                rope_theta=float(theta), rope_scaling=rope,
                tie_word_embeddings=d.get("tie_word_embeddings", False),
                max_position_embeddings=d.get("max_position_embeddings", 2048),
                attention_bias=d.get("attention_bias", False), mlp_bias=d.get("mlp_bias", False),
                hidden_act=d.get("hidden_act", "silu"),
                bos_token_id=d.get("bos_token_id"), eos_token_ids=eos)
        except KeyError as e:
            raise FloraError(f"{where} lacks the key {e.args[0]!r}",
                             "use a complete Hugging Face Llama config.json") from None
        except (TypeError, ValueError) as e:
            raise FloraError(f"{where} holds a malformed value ({e})",
                             "fix the model's config.json") from None

    def to_hf_dict(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "eos_token_ids"}
        d["rope_scaling"] = dict(self.rope_scaling) if self.rope_scaling else None
        eos = list(self.eos_token_ids)
        d["eos_token_id"] = eos[0] if len(eos) == 1 else (eos or None)
        d.update(model_type="llama", architectures=["LlamaForCausalLM"], torch_dtype="float32")
        return d

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


def _rope_settings(d: dict, where: str) -> tuple[dict | None, float]:
    """(rope dict without rope_theta, or None for default RoPE; rope_theta), read the way
    transformers 5 standardises them (`RotaryEmbeddingConfigMixin`): a non-empty
    `rope_scaling` replaces `rope_parameters` whole; `rope_theta` and
    `partial_rotary_factor` inside the chosen dict win over the top-level keys;
    `rope_type` wins over the legacy `type`; a llama3 rope without
    `original_max_position_embeddings` uses `max_position_embeddings`."""
    for key in ("rope_scaling", "rope_parameters"):
        if d.get(key) is not None and not isinstance(d[key], dict):
            raise FloraError(f"{where}: {key} must be an object, got {d[key]!r}",
                             "fix the model's config.json")
    name = "rope_scaling" if d.get("rope_scaling") else "rope_parameters"
    rope = dict(d.get(name) or {})
    theta = rope.pop("rope_theta", None)
    theta = d.get("rope_theta", 10000.0) if theta is None else theta
    legacy = rope.pop("type", None)
    kind = rope.pop("rope_type", None) or legacy or "default"
    factor = rope.pop("partial_rotary_factor", d.get("partial_rotary_factor"))
    if factor not in (None, 1, 1.0):
        raise FloraError(f"{where}: partial_rotary_factor={factor!r} is not supported (RoPE on "
                         "part of each head)", "partial_rotary_factor must be 1.0")
    if kind not in ROPE_TYPES:
        raise FloraError(f"{where}: {name} rope_type={kind!r} is not supported",
                         f"use one of: {', '.join(ROPE_TYPES)}")
    known = ROPE_KEYS.get(kind, ()) + ROPE_OPTIONAL.get(kind, ())
    for key, value in rope.items():
        if key not in known and value is not None:
            raise FloraError(f"{where}: {name}.{key}={value!r} is not used by rope_type "
                             f"{kind!r}", f"remove it, or use a rope_type that takes {key}")
    rope = {k: v for k, v in rope.items() if k in known}
    if kind == "llama3":
        rope.setdefault("original_max_position_embeddings", d.get("max_position_embeddings", 2048))
    top = d.get("original_max_position_embeddings")
    if top is not None and kind == "llama3" and top != rope["original_max_position_embeddings"]:
        raise FloraError(
            f"{where}: original_max_position_embeddings={top!r} differs from "
            f"{name}.original_max_position_embeddings={rope['original_max_position_embeddings']!r}"
            " (transformers' Llama uses the latter, or max_position_embeddings when absent)",
            "make them equal or remove the top-level key")
    return (None if kind == "default" else {"rope_type": kind, **rope}), theta
