"""Adapter files: `adapter_config.json` + `adapter_model.safetensors`.

FFBA tensors are named `layers.{i}.{attn|mlp}.{A|B}` (A: [width, d], B: [d, width];
ffba-neurons: `layers.{i}.mlp.{A_gate|A_up|B}`);
LoRA adapters use PEFT's layout, so adapters trained with PEFT load directly.
Every adapter records the base it was trained on (layer count, hidden size and a
fingerprint of sampled base weights) and is checked against the model it meets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..version import __version__
from ..errors import FloraError
from ..model import file_sha256
from ..model.checkpoint import save_safetensors_atomic, write_atomic
from ..model.llama import LlamaModel
from .ffba import FFBAConfig, attach_ffba, fused_neuron_rows, sub_block
from .fields import FFBA, PEFT_LORA
from .lora import LoraConfig, attach_lora, lora_projections
from .state import AdapterSource, AdapterStatus
from .targets import PEFT_DEFAULT_TARGETS, peft_default_targets

log = logging.getLogger(__name__)
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model.model.layers"


def base_fingerprint(model: LlamaModel) -> str:
    """Hash of the architecture and sampled base weights (bf16-rounded: dtype-proof)."""
    cfg = model.config
    h = hashlib.sha256(json.dumps([cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size,
                                   cfg.num_hidden_layers, cfg.q_dim, cfg.kv_dim]).encode())
    first, last = model.layers[0], model.layers[-1]
    samples = [model.embed_tokens.weight[:4], model.embed_tokens.weight[-4:],
               first.self_attn.qkv_proj.weight[:4], last.mlp.down_proj.weight[:4, :4],
               model.norm.weight]
    for t in samples:
        h.update(t.detach().float().to(torch.bfloat16).view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:16]


def _base_record(model: LlamaModel) -> dict:
    cfg = model.config
    return {"num_hidden_layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size,
            "fingerprint": base_fingerprint(model), "name": model_name(model)}


def model_name(model: LlamaModel) -> str | None:
    return model.source.name if model.source is not None else None


# ---------------------------------------------------------------- save

def save_adapter(model: LlamaModel, out_dir: str | Path) -> Path:
    """Write the model's adapter (FFBA fused or unfused, or LoRA) to `out_dir`."""
    state = model.adapter_state
    if state is None:
        raise FloraError("the model carries no adapter to save", "attach or load one first")
    cfg = state.config
    if isinstance(cfg, FFBAConfig):
        tensors, meta = ffba_tensors(model), {**cfg.to_dict(), "base": _base_record(model)}
    else:
        if state.status is not AdapterStatus.UNMERGED:
            raise FloraError("a merged LoRA adapter cannot be saved any more",
                             "save the adapter before merge_lora()")
        tensors, meta = _lora_tensors(model), _peft_config(cfg, model)
    meta["flora_export_version"] = __version__
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic({k: v.detach().contiguous() for k, v in tensors.items()},
                            out / WEIGHTS_FILE)
    write_atomic(out / CONFIG_FILE, json.dumps(meta, indent=2).encode())
    return out


def ffba_tensors(model: LlamaModel) -> dict[str, torch.Tensor]:
    """The FFBA A/B matrices, read from unfused pairs or cut back out of fused weights."""
    state = model.adapter_state
    cfg: FFBAConfig = state.config
    out = {}
    for i, layer in enumerate(model.layers):
        for name in cfg.sub_blocks:
            blk = sub_block(layer, name)
            key = f"layers.{i}.{name}"
            if cfg.neurons:
                out.update(_neuron_tensors(blk, cfg, state.status, key))
                continue
            if state.status is AdapterStatus.UNFUSED:
                A, B = blk.adapter.A.weight, blk.adapter.B.weight
            else:
                read_proj, write_proj = _fused_pair(blk)
                rows = read_proj.out_features - blk.adapter_width
                cols = write_proj.in_features - blk.adapter_width
                A = read_proj.weight[rows:rows + cfg.width]
                B = write_proj.weight[:, cols:cols + cfg.width] / cfg.scale
            out[f"{key}.A"], out[f"{key}.B"] = A, B
    return out


def _neuron_tensors(blk, cfg: FFBAConfig, status: AdapterStatus, key: str) -> dict:
    """ffba-neurons: A_gate, A_up [width, d] and B [d, width], unfused or cut out of
    the fused gate_up_proj ([W_g; A_gate; W_u; A_up]) and down_proj ([W_d, s B])."""
    if status is AdapterStatus.UNFUSED:
        pair = blk.adapter
        return {f"{key}.A_gate": pair.A_gate.weight, f"{key}.A_up": pair.A_up.weight,
                f"{key}.B": pair.B.weight}
    _, gate, _, up = fused_neuron_rows(blk)
    w, cols = blk.gate_up_proj.weight, blk.ffn_dim - blk.adapter_neurons
    return {f"{key}.A_gate": w[gate][:cfg.width], f"{key}.A_up": w[up][:cfg.width],
            f"{key}.B": blk.down_proj.weight[:, cols:cols + cfg.width] / cfg.scale}


def _fused_pair(blk):
    if hasattr(blk, "qkv_proj"):
        return blk.qkv_proj, blk.o_proj
    return blk.gate_up_proj, blk.down_proj


def _lora_tensors(model: LlamaModel) -> dict[str, torch.Tensor]:
    out = {}
    layout = model.config.family.hf_layout
    for i, path, _, _, proj in lora_projections(model):
        for name in getattr(proj, "lora_A", {}):
            key = f"{_PEFT_PREFIX}.{i}.{layout.projection(name).parent}.{name}"
            out[f"{key}.lora_A.weight"] = proj.lora_A[name].weight
            out[f"{key}.lora_B.weight"] = proj.lora_B[name].weight
    return out


def _peft_config(cfg: LoraConfig, model: LlamaModel) -> dict:
    targets = cfg.target_modules if cfg.target_modules is not None else cfg.targets
    return {"peft_type": "LORA", "r": cfg.rank, "lora_alpha": cfg.alpha,
            "target_modules": targets if isinstance(targets, str) else list(targets),
            "exclude_modules": _plain(cfg.exclude_modules), "bias": "none",
            "use_rslora": cfg.use_rslora, "rank_pattern": dict(cfg.rank_pattern),
            "alpha_pattern": dict(cfg.alpha_pattern),
            "layers_to_transform": _plain(cfg.layers_to_transform),
            "layers_pattern": _plain(cfg.layers_pattern),
            "task_type": "CAUSAL_LM", "base_model_name_or_path": model_name(model),
            "flora_base": _base_record(model)}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


# ---------------------------------------------------------------- load

def read_adapter_config(adapter_dir: str | Path) -> FFBAConfig | LoraConfig:
    _check_not_empty(adapter_dir)
    path = Path(adapter_dir) / CONFIG_FILE
    if not path.is_file():
        raise FloraError(f"no {CONFIG_FILE} in {adapter_dir}",
                         f"pass a directory written by save_adapter (or PEFT) holding "
                         f"{CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FloraError(f"{path} is not valid JSON ({e})", "restore the adapter files") from None
    return _config_from_meta(meta, path)


def _check_not_empty(adapter_dir) -> None:
    if not str(adapter_dir).strip():   # Path("") would be the current directory
        raise FloraError("the adapter path is an empty string (an unset shell variable?)",
                         "pass an adapter directory, or none for the base model alone")


# read_adapter_config knows no model: PEFT's Llama default; load_adapter replaces it
# with the model's family's (targets.peft_default_targets)
_PEFT_LLAMA_DEFAULT_TARGETS = PEFT_DEFAULT_TARGETS["llama"]


def _config_from_meta(meta: dict, path: Path) -> FFBAConfig | LoraConfig:
    if not isinstance(meta, dict):
        raise FloraError(f"{path} holds a JSON {type(meta).__name__}, not an object",
                         "restore the adapter_config.json saved with the adapter")
    if meta.get("adapter_type") == "ffba":
        FFBA.check(meta, str(path))
        keys = ("width", "alpha", "variant", "activation", "init")
        return FFBAConfig(**{k: meta[k] for k in keys if k in meta})
    if meta.get("peft_type") == "LORA":
        PEFT_LORA.check(meta, str(path))
        if meta.get("fan_in_fan_out"):
            log.info("%s: fan_in_fan_out=true is ignored, as PEFT ignores it for "
                     "torch.nn.Linear targets", path)
        targets = meta.get("target_modules")
        if targets is None:
            targets = _PEFT_LLAMA_DEFAULT_TARGETS
        # "all-linear" (PEFT: every linear but the output head) is kept: targets.py
        # resolves it to the projections of the model's transformers class
        if not isinstance(targets, (str, list, tuple)):
            raise FloraError(f"{path}: target_modules={targets!r} is neither a list of names "
                             "nor a regex string", "fix adapter_config.json")
        for key in ("rank_pattern", "alpha_pattern"):
            if not isinstance(meta.get(key) or {}, dict):
                raise FloraError(f"{path}: {key} must be an object, got {meta[key]!r}",
                                 "fix adapter_config.json")
        try:
            return _lora_config(meta, targets)
        except FloraError as e:
            raise FloraError(f"{path}: {e.problem}", e.fix) from None
    raise FloraError(f"{path} describes no FFBA or LoRA adapter",
                     'expected "adapter_type": "ffba" or "peft_type": "LORA"')


def _lora_config(meta: dict, targets) -> LoraConfig:
    return LoraConfig(rank=meta.get("r", 8), alpha=meta.get("lora_alpha", 8),
                      use_rslora=meta.get("use_rslora") or False,
                      rank_pattern=dict(meta.get("rank_pattern") or {}),
                      alpha_pattern=dict(meta.get("alpha_pattern") or {}),
                      target_modules=targets, exclude_modules=meta.get("exclude_modules"),
                      layers_to_transform=meta.get("layers_to_transform"),
                      layers_pattern=meta.get("layers_pattern"))


def load_adapter(model: LlamaModel, adapter_dir: str | Path, check_base: bool = True
                 ) -> LlamaModel:
    """Attach the adapter saved in `adapter_dir` (unfused / unmerged) after checking it fits."""
    _check_not_empty(adapter_dir)
    adapter_dir = Path(adapter_dir)
    cfg = read_adapter_config(adapter_dir)
    meta = json.loads((adapter_dir / CONFIG_FILE).read_text())
    record = meta.get("base") or meta.get("flora_base")
    if record:
        _check_base(model, record, adapter_dir, check_base)
    if isinstance(cfg, LoraConfig) and meta.get("target_modules") is None:
        cfg = replace(cfg, target_modules=peft_default_targets(
            model.config.family, str(adapter_dir / CONFIG_FILE)))
    tensors = _read_weights(adapter_dir)
    if isinstance(cfg, FFBAConfig):
        attach_ffba(model, cfg)
        expected = ffba_tensors(model)
    else:
        attach_lora(model, cfg, where=str(adapter_dir / CONFIG_FILE))
        expected = _lora_tensors(model)
    _copy_checked(expected, tensors, adapter_dir)
    files = (adapter_dir / CONFIG_FILE, adapter_dir / WEIGHTS_FILE)
    model.adapter_state = replace(model.adapter_state, source=AdapterSource(
        str(adapter_dir.resolve()), {f.name: file_sha256(f) for f in files}))
    log.info("loaded %s adapter from %s", meta.get("adapter_type", "lora"), adapter_dir)
    return model


def _check_base(model: LlamaModel, record: dict, adapter_dir: Path, strict: bool) -> None:
    cfg = model.config
    for key in ("num_hidden_layers", "hidden_size"):
        if record.get(key) not in (None, getattr(cfg, key)):
            raise FloraError(
                f"adapter {adapter_dir} was trained for a base with {key}={record[key]}, "
                f"this model has {getattr(cfg, key)}", "pass the base model the adapter was "
                "trained on")
    if strict and record.get("fingerprint") not in (None, base_fingerprint(model)):
        raise FloraError(
            f"adapter {adapter_dir} was trained on another base model "
            f"({record.get('name') or 'unnamed'}, fingerprint {record['fingerprint']}, "
            f"this base: {base_fingerprint(model)})",
            "pass the base it was trained on, or --no-base-check to apply it anyway")


def _read_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    path = adapter_dir / WEIGHTS_FILE
    if not path.is_file():
        raise FloraError(f"no {WEIGHTS_FILE} in {adapter_dir}",
                         "save adapters with safetensors; pickled .bin adapters are not loaded")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise FloraError(f"{path} is not a readable safetensors file ({e})",
                         "the file is corrupt or truncated; save the adapter again") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise FloraError(f"adapter tensor {name!r} contains NaN or Inf values",
                             "the adapter is broken (diverged training?); use a good one")
    return tensors


def _copy_checked(expected: dict, tensors: dict, adapter_dir: Path) -> None:
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise FloraError(f"adapter {adapter_dir} lacks {len(missing)} tensors, e.g. "
                         f"{missing[0]!r}", "the adapter does not match this base model's layers")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        layers = {int(m.group(1)) for n in unexpected if (m := re.search(r"layers\.(\d+)\.", n))}
        n_layers = 1 + max((int(re.search(r"layers\.(\d+)\.", n).group(1)) for n in expected),
                           default=-1)
        beyond = sorted(i for i in layers if i >= n_layers)
        if beyond:
            raise FloraError(f"adapter {adapter_dir} has tensors for layer {beyond[0]}, this base "
                             f"model has {n_layers} layers (e.g. {unexpected[0]!r})",
                             "pass the base model the adapter was trained on")
        raise FloraError(f"adapter {adapter_dir} has {len(unexpected)} tensors that its "
                         f"{CONFIG_FILE} does not select, e.g. {unexpected[0]!r}",
                         f"restore the {CONFIG_FILE} saved with these weights (flora-export "
                         "adapts the projections only)")
    with torch.no_grad():
        for name, param in expected.items():
            t = tensors[name]
            if tuple(t.shape) != tuple(param.shape):
                raise FloraError(
                    f"adapter tensor {name!r} has shape {tuple(t.shape)}, expected "
                    f"{tuple(param.shape)}", "the adapter's width/rank or the base model's "
                    "shapes differ from adapter_config.json; use matching files")
            param.copy_(t.to(param.dtype))
