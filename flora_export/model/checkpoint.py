"""Hugging Face checkpoint I/O: safetensors only, q/k/v and gate/up fused at load time.

Tensor names are the HF ones under `model.` (and `lm_head.weight`); q/k/v and gate/up
are read into the fused `qkv_proj` / `gate_up_proj`, except for families whose
checkpoints store them fused already (Phi3: `qkv_proj`, `gate_up_proj` with the same
row order [q; k; v] and [gate; up]).

Loading builds the model on the meta device and assigns the (fused) tensors into
it, so peak memory stays at about one copy of the weights; matrices the checkpoint
stores in bf16/fp16 stay so (model/storage.py), norms and biases become float32.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import FloraError
from .config import LlamaConfig
from .fields import SAFETENSORS_INDEX
from .llama import LlamaModel
from .source import DIRECTORY, ModelSource
from .storage import COMPUTE_DTYPE, NARROW_DTYPES, mark_all

log = logging.getLogger(__name__)

_FUSED = {  # our fused name -> HF parts, in row order
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "F64": torch.float64}


SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")  # old
# checkpoints' RoPE buffer, recomputed from config.json (transformers ignores it too)


class _TensorIndex:
    """Tensor name -> (file, dtype, shape, byte range) over the checkpoint's files.

    The files are the ones transformers loads: `model.safetensors` when it exists, else
    exactly the shards that `model.safetensors.index.json` names (other `*.safetensors`
    beside them are ignored, with a log line). A tensor defined in two files is refused.
    Tensors are read with plain file reads straight into their destination (a slice
    of the fused weight), never through a memory map, so loading holds one copy.
    """

    def __init__(self, model_dir: Path):
        files = checkpoint_files(model_dir)
        self.entries: dict[str, tuple] = {}
        for f in files:
            for name, entry in _read_header(f).items():
                if name in self.entries:
                    raise FloraError(
                        f"tensor {name!r} is defined twice, in {self.entries[name][0].name} and "
                        f"{f.name}", "remove the stale copy: each tensor must be in one file")
                self.entries[name] = entry
        self.used: set[str] = set()

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[2]

    def dtype(self, name: str) -> torch.dtype | str:
        return self._entry(name)[1]

    def _entry(self, name: str) -> tuple:
        if name not in self.entries:
            raise FloraError(f"checkpoint lacks tensor {name!r}",
                             "use a complete Llama checkpoint that matches its config.json")
        return self.entries[name]

    def unused(self) -> list[str]:
        return sorted(n for n in set(self.entries) - self.used if not _IGNORED.fullmatch(n))

    def read_into(self, name: str, out: torch.Tensor) -> None:
        """Fill `out` (contiguous, the right shape) with tensor `name`, converting dtype."""
        path, dtype, _, begin, end = self._entry(name)
        self.used.add(name)
        if isinstance(dtype, str):
            raise FloraError(f"tensor {name!r} in {path.name} has dtype {dtype}",
                             f"save the checkpoint in {', '.join(_DTYPES)} (an unquantized "
                             "export of the model)")
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


def checkpoint_files(model_dir: Path, quiet: bool = False) -> list[Path]:
    """The weight files transformers would load from `model_dir`, in its order of choice
    (`quiet`: without the log lines about ignored files)."""
    present = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if (model_dir / SINGLE).is_file():
        files = [model_dir / SINGLE]
        if (model_dir / INDEX).exists() and not quiet:
            log.warning("%s: loading %s; %s is ignored (transformers prefers the single file)",
                        model_dir, SINGLE, INDEX)
    elif (model_dir / INDEX).is_file():
        files = [model_dir / n for n in _index_shards(model_dir / INDEX)]
    elif present:
        raise FloraError(
            f"{model_dir} has no {SINGLE} and no {INDEX}, only {', '.join(present[:4])}"
            + (f" (+{len(present) - 4} more)" if len(present) > 4 else ""),
            f"name the weights {SINGLE}, or add the {INDEX} that lists the shards")
    else:
        raise FloraError(f"no *.safetensors weights in {model_dir}",
                         "save the model with safetensors (save_pretrained(..., "
                         "safe_serialization=True)); .bin/pickle checkpoints are not loaded")
    stray = sorted(set(present) - {f.name for f in files})
    if stray and not quiet:
        log.warning("%s: ignoring %s (not part of the checkpoint; transformers ignores "
                    "them too)", model_dir, ", ".join(stray))
    return files


def _index_shards(index_path: Path) -> list[str]:
    """The shard files `model.safetensors.index.json` maps tensors to, each checked."""
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FloraError(f"{index_path} is not valid JSON ({e})",
                         "restore the index saved with the checkpoint") from None
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict) \
            or not index["weight_map"]:
        raise FloraError(f"{index_path} has no weight_map object",
                         'an index maps tensor names to shard files: {"weight_map": {...}}')
    SAFETENSORS_INDEX.check(index, str(index_path))
    shards = []
    for name, shard in index["weight_map"].items():
        if not isinstance(shard, str) or Path(shard).name != shard or \
                not shard.endswith(".safetensors"):
            raise FloraError(f"{index_path}: tensor {name!r} maps to {shard!r}, not a "
                             ".safetensors file name in the model directory",
                             "shards must be plain *.safetensors file names beside the index")
        if shard not in shards:
            shards.append(shard)
    missing = [s for s in shards if not (index_path.parent / s).is_file()]
    if missing:
        raise FloraError(f"shard {missing[0]} named in {index_path.name} is missing from "
                         f"{index_path.parent}" + (f" (and {len(missing) - 1} more shards)"
                                                   if len(missing) > 1 else ""),
                         "download every shard of the checkpoint")
    index_path_map = index["weight_map"]
    for shard in shards:
        names = set(_read_header(index_path.parent / shard))
        listed = {n for n, s in index_path_map.items() if s == shard}
        lost, extra = sorted(listed - names), sorted(names - set(index_path_map))
        if lost:
            raise FloraError(f"{index_path.name} puts tensor {lost[0]!r} in {shard}, which does "
                             "not hold it", "restore the shard or the index saved with it")
        if extra:
            raise FloraError(f"shard {shard} holds tensor {extra[0]!r}, which {index_path.name} "
                             "does not list", "restore the index saved with the checkpoint")
    return shards


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
            kind, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            dtype = _DTYPES.get(kind)
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {name!r}: malformed entry") from None
        if dtype is None:   # e.g. int/packed tensors: refused by name if the model needs them
            entries[name] = (path, kind, shape, 8 + n + begin, 8 + n + end)
            continue
        nbytes = dtype.itemsize * (int(torch.tensor(shape).prod()) if shape else 1)
        if end - begin != nbytes or 8 + n + end > size:
            raise bad(f"tensor {name!r} lies beyond the end of the file")
        entries[name] = (path, dtype, shape, 8 + n + begin, 8 + n + end)
    return entries


def _hf_name(ours: str) -> str:
    return ours if ours == "lm_head.weight" else f"model.{ours}"


def load_hf_checkpoint(model_dir: Path, dtype: torch.dtype = torch.float32,
                       allow_unused_weights: bool = False) -> LlamaModel:
    """Build a `LlamaModel` from an HF directory (config.json + safetensors).

    Every tensor in the checkpoint's files must be used by the model config.json
    describes: extra layers or stray names are refused, naming them, unless
    `allow_unused_weights` (then they are skipped with a warning that names them).
    """
    model_dir = Path(model_dir)
    cfg = LlamaConfig.from_dir(model_dir)
    index = _TensorIndex(model_dir)
    with torch.device("meta"):
        model = LlamaModel(cfg)
    shapes = {name: tuple(t.shape) for name, t in hf_state_dict(model).items()}
    state = {}
    matrices = {f"{n}.weight" for n, m in model.named_modules()
                if isinstance(m, (nn.Linear, nn.Embedding))}
    for name, param in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        kept = _stored_dtype(index, name, cfg.family.fused_checkpoint) \
            if name in matrices and dtype == COMPUTE_DTYPE else dtype
        state[name] = _read_param(index, name, torch.empty(param.shape, dtype=kept), shapes,
                                  cfg.family.fused_checkpoint)
    if cfg.tie_word_embeddings:
        _check_tied_head(index, state["embed_tokens.weight"])
        state["lm_head.weight"] = state["embed_tokens.weight"]
    skipped = _check_unused(index, model_dir, cfg, allow_unused_weights)
    model.load_state_dict(state, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    mark_all(model)
    model.source = ModelSource(model_dir.name, DIRECTORY, str(model_dir.resolve()),
                               skipped_tensors=tuple(skipped))
    return model.eval()


def _stored_dtype(index: _TensorIndex, name: str, fused_checkpoint: bool) -> torch.dtype:
    """A matrix keeps the checkpoint's bf16/fp16 (model/storage.py) when all its parts
    are stored so; otherwise it is read into float32."""
    kinds = {index.dtype(hf) for hf in _hf_parts(name, fused_checkpoint)}
    return kinds.pop() if len(kinds) == 1 and kinds <= set(NARROW_DTYPES) else COMPUTE_DTYPE


def _check_tied_head(index: _TensorIndex, embed: torch.Tensor) -> None:
    """config.json ties the head to the embedding: a stored lm_head.weight must equal it."""
    if "lm_head.weight" not in index.entries:
        return
    if index.shape("lm_head.weight") != tuple(embed.shape):
        raise FloraError(f"lm_head.weight has shape {index.shape('lm_head.weight')}, the tied "
                         f"embedding {tuple(embed.shape)}", "the weights do not match config.json")
    head = torch.empty_like(embed)
    index.read_into("lm_head.weight", head)
    if not torch.equal(head, embed):
        raise FloraError("config.json sets tie_word_embeddings=true but the checkpoint's "
                         "lm_head.weight differs from model.embed_tokens.weight",
                         "set tie_word_embeddings to false if the head was trained apart, or "
                         "remove lm_head.weight")


def _check_unused(index: _TensorIndex, model_dir: Path, cfg: LlamaConfig, allow: bool
                  ) -> list[str]:
    """The unused tensors (skipped, under `allow`), else refused by name."""
    unused = index.unused()
    if not unused:
        return []
    names = ", ".join(unused[:4]) + (f" (+{len(unused) - 4} more)" if len(unused) > 4 else "")
    if allow:
        log.warning("%s: skipping %d tensors config.json does not use: %s", model_dir,
                    len(unused), names)
        return unused
    raise FloraError(
        f"{model_dir} holds {len(unused)} tensors that its config.json ({cfg.num_hidden_layers} "
        f"layers) does not use: {names}",
        "fix config.json (e.g. num_hidden_layers) to describe the checkpoint, or pass "
        "--allow-unused-weights to load it anyway")


def _read_param(index: _TensorIndex, name: str, out: torch.Tensor,
                shapes: dict[str, tuple[int, ...]], fused_checkpoint: bool) -> torch.Tensor:
    """Read the HF tensor(s) behind parameter `name` into consecutive rows of `out`."""
    row = 0
    parts = _hf_parts(name, fused_checkpoint)
    for hf in parts:
        if index.shape(hf) != shapes[hf]:
            raise FloraError(f"tensor {hf!r} has shape {index.shape(hf)}, config.json implies "
                             f"{shapes[hf]}", "the weights do not match config.json; fix either")
        rows = shapes[hf][0] if shapes[hf] else 1
        index.read_into(hf, out[row:row + rows] if len(parts) > 1 else out)
        row += rows
    return out


def _hf_parts(name: str, fused_checkpoint: bool = False) -> list[str]:
    for fused, parts in _FUSED.items():
        if f".{fused}." in name and not fused_checkpoint:
            return [_hf_name(name.replace(fused, p)) for p in parts]
    return [_hf_name(name)]


def hf_state_dict(model: LlamaModel) -> dict[str, torch.Tensor]:
    """The model's weights under HF names, with q/k/v and gate/up split again (kept fused
    for a family whose checkpoints store them fused)."""
    cfg = model.config
    splits = {"self_attn.qkv_proj": [cfg.q_dim, cfg.kv_dim, cfg.kv_dim],
              "mlp.gate_up_proj": [cfg.intermediate_size] * 2}
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        fused = None if cfg.family.fused_checkpoint else next(
            (f for f in _FUSED if f".{f}." in name), None)
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
    from ..outputs import write_file_atomic
    write_file_atomic(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def write_atomic(path: Path, data: bytes) -> None:
    from ..outputs import write_atomic as write
    write(Path(path), data)
