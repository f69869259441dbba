"""Resumable training checkpoints: trainable weights + AdamW state + step, in safetensors.

`<out>/checkpoint/` holds `state.safetensors` and `state.json`. It is written into a
temporary directory and renamed, so a crash never leaves a half-written checkpoint.
A checkpoint only resumes the recipe that wrote it (the resolved recipe is compared).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import FloraError
from ..model.checkpoint import save_safetensors_atomic, write_atomic
from ..outputs import signals_deferred

CHECKPOINT = "checkpoint"
STATE, META = "state.safetensors", "state.json"


def save_checkpoint(out: Path, step: int, params: dict[str, torch.nn.Parameter],
                    optimizer: torch.optim.Optimizer, recipe: dict) -> None:
    tensors = {f"param.{n}": p.detach().cpu().contiguous() for n, p in params.items()}
    index = {id(p): n for n, p in params.items()}
    for p, state in optimizer.state.items():
        for key, value in state.items():
            tensors[f"opt.{index[id(p)]}.{key}"] = value.detach().cpu().contiguous().reshape(-1)
    final, tmp, old = _paths(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:        # each file flushed to disk, then the folder swapped with signals held back
        save_safetensors_atomic(tensors, tmp / STATE)
        write_atomic(tmp / META, json.dumps({"step": step, "recipe": recipe}, indent=1).encode())
        with signals_deferred():
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _paths(out: Path) -> tuple[Path, Path, Path]:
    out = Path(out)
    return out / CHECKPOINT, out / f".{CHECKPOINT}.tmp", out / f".{CHECKPOINT}.old"


def load_checkpoint(out: Path, params: dict[str, torch.nn.Parameter],
                    optimizer: torch.optim.Optimizer, recipe: dict) -> int:
    """Restore weights and optimizer state; returns the number of steps already done.
    A checkpoint that cannot be read whole (corrupt, truncated, of another shape) is
    refused before anything is restored."""
    ckpt = Path(out) / CHECKPOINT
    meta = _read_meta(ckpt)
    if meta["recipe"] != recipe:
        raise FloraError(f"{ckpt} was written by a different recipe",
                         "train into a new out directory, or pass --restart to start over")
    try:
        tensors = load_file(str(ckpt / "state.safetensors"))
    except (OSError, SafetensorError) as e:
        raise _unreadable(ckpt, f"state.safetensors: {e}") from None
    state = _optimizer_state(ckpt, tensors, params)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[f"param.{name}"])
    for p, st in state.items():
        optimizer.state[p] = st
    return meta["step"]


def _unreadable(ckpt: Path, why: str) -> FloraError:
    return FloraError(f"resume checkpoint {ckpt} is unreadable ({why[:200]})",
                      "pass --restart to start over (it replaces the checkpoint), or move it "
                      "away")


def _read_meta(ckpt: Path) -> dict:
    try:
        meta = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _unreadable(ckpt, f"state.json: {e}") from None
    step = meta.get("step") if isinstance(meta, dict) else None
    if not (isinstance(step, int) and not isinstance(step, bool) and step >= 0
            and isinstance(meta.get("recipe"), dict)):
        raise _unreadable(ckpt, "state.json lacks an integer step >= 0 and the recipe")
    return meta


def _optimizer_state(ckpt: Path, tensors: dict, params) -> dict:
    """Every trainable weight (and its AdamW moments) present with its own shape and dtype."""
    state = {}
    for name, p in params.items():
        t = tensors.get(f"param.{name}")
        if t is None or t.shape != p.shape or t.dtype != p.dtype:
            got = "missing" if t is None else f"{t.dtype} {tuple(t.shape)}"
            raise _unreadable(ckpt, f"param.{name} is {got}, the model needs {p.dtype} "
                                    f"{tuple(p.shape)}")
        st = {}
        for key, shape in (("step", ()), ("exp_avg", p.shape), ("exp_avg_sq", p.shape)):
            t = tensors.get(f"opt.{name}.{key}")
            if t is None:
                continue
            if t.numel() != (1 if key == "step" else p.numel()) or not t.is_floating_point():
                raise _unreadable(ckpt, f"opt.{name}.{key} has {t.numel()} values")
            st[key] = t.reshape(()) if key == "step" else t.reshape(shape).to(p.device)
        if st:
            state[p] = st
    return state


def has_checkpoint(out: Path) -> bool:
    final, _, old = _paths(out)
    if not final.exists() and (old / META).is_file() and (old / STATE).is_file():
        os.replace(old, final)    # the run stopped between save_checkpoint's two renames
    return (final / META).is_file()


def drop_checkpoint(out: Path) -> None:
    """Remove the checkpoint's two files (and its folder when nothing else is in it)."""
    final = _paths(out)[0]
    for name in (STATE, META):
        (final / name).unlink(missing_ok=True)
    try:
        final.rmdir()
    except OSError:
        pass
