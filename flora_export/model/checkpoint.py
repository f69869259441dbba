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
from safetensors.torch import save_file

from ..errors import FloraError
from .config import LlamaConfig
from .llama import LlamaModel

log = logging.getLogger(__name__)

_FUSED = {  # our fused name -> HF parts, in row order
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "F64": torch.float64}


class _TensorIndex:
    """Tensor name -> (file, dtype, shape, byte range) over one or many `*.safetensors`.

    Tensors are read with plain file reads straight into their destination (a slice
    of the fused weight), never through a memory map, so loading holds one copy.
    """

    def __init__(self, model_dir: Path):
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise FloraError(f"no *.safetensors weights in {model_dir}",
                             "save the model with safetensors (save_pretrained(..., "
                             "safe_serialization=True)); .bin/pickle checkpoints are not loaded")
        self.entries: dict[str, tuple] = {}
        for f in files:
            self.entries.update(_read_header(f))

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[2]

    def _entry(self, name: str) -> tuple:
        if name not in self.entries:
            raise FloraError(f"checkpoint lacks tensor {name!r}",
                             "use a complete Llama checkpoint that matches its config.json")
        return self.entries[name]

    def read_into(self, name: str, out: torch.Tensor) -> None:
        """Fill `out` (contiguous, the right shape) with tensor `name`, converting dtype."""
        path, dtype, _, begin, end = self._entry(name)
        buf = out if dtype == out.dtype else torch.empty(out.shape, dtype=dtype)
        with open(path, "rb") as f:
            f.seek(begin)
            got = f.readinto(memoryview(buf.view(torch.uint8).numpy()).cast("B"))
        if got != end - begin:
            raise FloraError(f"cannot read tensor {name!r} from {path} (file ends early)",
                             "the file is corrupt or truncated; re-download or re-save it")
        if buf is not out:
            out.copy_(buf)
        if not torch.isfinite(out.sum()):  # NaN/Inf poison the sum; needs no full-size temp
            raise FloraError(f"tensor {name!r} contains NaN or Inf values",
                             "the checkpoint is broken (diverged training?); use a good one")


def _read_header(path: Path) -> dict[str, tuple]:
    """Parse and check a safetensors header: name -> (path, dtype, shape, begin, end)."""
    def bad(why: str) -> FloraError:
        return FloraError(f"{path} is not a readable safetensors file ({why})",
                          "re-download or re-save the checkpoint; it may be truncated")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad("too short")
        n = int.from_bytes(head, "little")
        if n > size - 8 or n > 100 << 20:
            raise bad("header length beyond the end of the file")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise bad("header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = _DTYPES[info["dtype"]], tuple(info["shape"]), \
                info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {name!r}: unsupported dtype or malformed entry") from None
        nbytes = dtype.itemsize * (int(torch.tensor(shape).prod()) if shape else 1)
        if end - begin != nbytes or 8 + n + end > size:
            raise bad(f"tensor {name!r} lies beyond the end of the file")
        entries[name] = (path, dtype, shape, 8 + n + begin, 8 + n + end)
    return entries


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
    for name, param in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        state[name] = _read_param(index, name, torch.empty(param.shape, dtype=dtype), shapes)
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model.load_state_dict(state, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model.eval()


def _read_param(index: _TensorIndex, name: str, out: torch.Tensor,
                shapes: dict[str, tuple[int, ...]]) -> torch.Tensor:
    """Read the HF tensor(s) behind parameter `name` into consecutive rows of `out`."""
    row = 0
    for hf in _hf_parts(name):
        if index.shape(hf) != shapes[hf]:
            raise FloraError(f"tensor {hf!r} has shape {index.shape(hf)}, config.json implies "
                             f"{shapes[hf]}", "the weights do not match config.json; fix either")
        rows = shapes[hf][0] if shapes[hf] else 1
        index.read_into(hf, out[row:row + rows] if len(_hf_parts(name)) > 1 else out)
        row += rows
    return out


def _hf_parts(name: str) -> list[str]:
    for fused, parts in _FUSED.items():
        if f".{fused}." in name:
            return [_hf_name(name.replace(fused, p)) for p in parts]
    return [_hf_name(name)]


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
    save_safetensors_atomic(tensors, out_dir / "model.safetensors")
    if tokenizer_json is not None:
        write_atomic(out_dir / "tokenizer.json", Path(tokenizer_json).read_bytes())


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
