"""Architecture of a Llama-family decoder, read from and written to HF `config.json`."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FloraError

ROPE_TYPES = ("default", "llama3", "linear")
ROPE_KEYS = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor")}


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
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.head_dim is None:
            with contextlib.suppress(TypeError, ZeroDivisionError):
                object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        self.validate()

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise FloraError(f"config.json: {name} must be a positive integer, got "
                                 f"{getattr(self, name)!r}", "fix the model's config.json")
        if self.num_attention_heads % self.num_key_value_heads:
            raise FloraError(
                f"config.json: num_attention_heads ({self.num_attention_heads}) is not a multiple "
                f"of num_key_value_heads ({self.num_key_value_heads})", "fix the model's config.json")
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

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_hf_dict(cls, d: dict) -> "LlamaConfig":
        archs = d.get("architectures") or ["LlamaForCausalLM"]
        if d.get("model_type", "llama") != "llama" or "LlamaForCausalLM" not in archs:
            raise FloraError(
                f"config.json describes model_type={d.get('model_type')!r} {archs}, not a Llama "
                "decoder", "pass a LlamaForCausalLM checkpoint directory")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or None
        if rope is not None and not isinstance(rope, dict):
            raise FloraError(f"config.json: rope_scaling must be an object, got {rope!r}",
                             "fix the model's config.json")
        theta = d.get("rope_theta") or (rope or {}).get("rope_theta") or 10000.0
        if rope is not None:
            rope = {k: v for k, v in rope.items() if k != "rope_theta"}
            rope.setdefault("rope_type", rope.pop("type", "default"))
            if rope["rope_type"] == "default":
                rope = None
        eos = d.get("eos_token_id")
        eos = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
        try:
            return cls(
                vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                intermediate_size=d["intermediate_size"],
                num_hidden_layers=d["num_hidden_layers"],
                num_attention_heads=d["num_attention_heads"],
                num_key_value_heads=d.get("num_key_value_heads", d["num_attention_heads"]),
                head_dim=d.get("head_dim"), rms_norm_eps=d.get("rms_norm_eps", 1e-5),
                rope_theta=float(theta), rope_scaling=rope,
                tie_word_embeddings=d.get("tie_word_embeddings", False),
                max_position_embeddings=d.get("max_position_embeddings", 2048),
                attention_bias=d.get("attention_bias", False), mlp_bias=d.get("mlp_bias", False),
                bos_token_id=d.get("bos_token_id"), eos_token_ids=eos)
        except KeyError as e:
            raise FloraError(f"config.json lacks the key {e.args[0]!r}",
                             "use a complete Hugging Face Llama config.json") from None
        except (TypeError, ValueError) as e:
            raise FloraError(f"config.json holds a malformed value ({e})",
                             "fix the model's config.json") from None

    def to_hf_dict(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "eos_token_ids"}
        d["rope_scaling"] = dict(self.rope_scaling) if self.rope_scaling else None
        eos = list(self.eos_token_ids)
        d["eos_token_id"] = eos[0] if len(eos) == 1 else (eos or None)
        d.update(model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu",
                 torch_dtype="float32")
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
        return cls.from_hf_dict(data)
