"""Hugging Face checkpoint I/O: safetensors only, q/k/v and gate/up fused at load time.

Loading builds the model on the meta device and assigns the (fused) tensors into
it, so peak memory stays at about one copy of the weights.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import FloraError
from .config import LlamaConfig
from .llama import LlamaModel

log = logging.getLogger(__name__)

_FUSED = {  # our fused name -> HF parts, in row order
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


class _TensorIndex:
    """Name -> shard file over one or many `*.safetensors` files, opened lazily."""

    def __init__(self, model_dir: Path):
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise FloraError(f"no *.safetensors weights in {model_dir}",
                             "save the model with safetensors (save_pretrained(..., "
                             "safe_serialization=True)); .bin/pickle checkpoints are not loaded")
        self.where: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}
        for f in files:
            for name in self._open(f).keys():
                self.where[name] = f

    def _open(self, f: Path):
        if f not in self._handles:
            try:
                self._handles[f] = safe_open(str(f), framework="pt")
            except (SafetensorError, OSError, ValueError) as e:
                raise FloraError(f"{f} is not a readable safetensors file ({e})",
                                 "re-download or re-save the checkpoint; it may be truncated"
                                 ) from None
        return self._handles[f]

    def get(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        if name not in self.where:
            raise FloraError(f"checkpoint lacks tensor {name!r}",
                             "use a complete Llama checkpoint that matches its config.json")
        try:
            t = self._open(self.where[name]).get_tensor(name)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise FloraError(f"cannot read tensor {name!r} from {self.where[name]} ({e})",
                             "the file is corrupt or truncated; re-download or re-save it"
                             ) from None
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise FloraError(f"tensor {name!r} contains NaN or Inf values",
                             "the checkpoint is broken (diverged training?); use a good one")
        return t.to(dtype)


def _hf_name(ours: str) -> str:
    return ours if ours == "lm_head.weight" else f"model.{ours}"


def load_hf_checkpoint(model_dir: Path, dtype: torch.dtype = torch.float32) -> LlamaModel:
    """Build a `LlamaModel` from an HF directory (config.json + safetensors)."""
    model_dir = Path(model_dir)
    cfg = LlamaConfig.from_file(model_dir / "config.json")
    index = _TensorIndex(model_dir)
    with torch.device("meta"):
        model = LlamaModel(cfg)
    shapes = {name: tuple(t.shape) for name, t in hf_state_dict(model).items()}
    state = {}
    for name in model.state_dict():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        state[name] = _read_param(index, name, dtype, shapes)
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model.load_state_dict(state, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model.eval()


def _read_param(index: _TensorIndex, name: str, dtype: torch.dtype,
                shapes: dict[str, tuple[int, ...]]) -> torch.Tensor:
    parts = [_read_shaped(index, hf, dtype, shapes[hf]) for hf in _hf_parts(name)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _hf_parts(name: str) -> list[str]:
    for fused, parts in _FUSED.items():
        if f".{fused}." in name:
            return [_hf_name(name.replace(fused, p)) for p in parts]
    return [_hf_name(name)]


def _read_shaped(index: _TensorIndex, name: str, dtype: torch.dtype,
                 shape: tuple[int, ...]) -> torch.Tensor:
    t = index.get(name, dtype)
    if tuple(t.shape) != shape:
        raise FloraError(f"tensor {name!r} has shape {tuple(t.shape)}, config.json implies "
                         f"{shape}", "the weights do not match config.json; fix either")
    return t


def hf_state_dict(model: LlamaModel) -> dict[str, torch.Tensor]:
    """The model's weights under HF names, with q/k/v and gate/up split again."""
    cfg = model.config
    splits = {"self_attn.qkv_proj": [cfg.q_dim, cfg.kv_dim, cfg.kv_dim],
              "mlp.gate_up_proj": [cfg.intermediate_size] * 2}
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        fused = next((f for f in _FUSED if f".{f}." in name), None)
        if fused is None:
            out[_hf_name(name)] = t.contiguous()
            continue
        for part, chunk in zip(_FUSED[fused], t.split(splits[fused], dim=0)):
            out[_hf_name(name.replace(fused, part))] = chunk.contiguous()
    return out


def save_hf_checkpoint(model: LlamaModel, out_dir: Path, tokenizer_json: Path | None = None,
                       dtype: torch.dtype | None = None) -> None:
    """Write config.json + model.safetensors (+ tokenizer.json) in HF layout."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_hf_dict()
    tensors = hf_state_dict(model)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
        cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    write_atomic(out_dir / "config.json", json.dumps(cfg, indent=2).encode())
    tmp = out_dir / ".model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, out_dir / "model.safetensors")
    if tokenizer_json is not None:
        write_atomic(out_dir / "tokenizer.json", Path(tokenizer_json).read_bytes())


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
