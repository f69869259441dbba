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
from safetensors.torch import load_file, save_file

from ..errors import FloraError

CHECKPOINT = "checkpoint"


def save_checkpoint(out: Path, step: int, params: dict[str, torch.nn.Parameter],
                    optimizer: torch.optim.Optimizer, recipe: dict) -> None:
    tensors = {f"param.{n}": p.detach().cpu().contiguous() for n, p in params.items()}
    index = {id(p): n for n, p in params.items()}
    for p, state in optimizer.state.items():
        for key, value in state.items():
            tensors[f"opt.{index[id(p)]}.{key}"] = value.detach().cpu().contiguous().reshape(-1)
    final = Path(out) / CHECKPOINT
    tmp = Path(out) / f".{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "recipe": recipe}, indent=1))
    old = Path(out) / f".{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(out: Path, params: dict[str, torch.nn.Parameter],
                    optimizer: torch.optim.Optimizer, recipe: dict) -> int:
    """Restore weights and optimizer state; returns the number of steps already done."""
    ckpt = Path(out) / CHECKPOINT
    meta = json.loads((ckpt / "state.json").read_text())
    if meta["recipe"] != recipe:
        raise FloraError(f"{ckpt} was written by a different recipe",
                         "train into a new out directory, or pass --restart to start over")
    tensors = load_file(str(ckpt / "state.safetensors"))
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[f"param.{name}"])
    for name, p in params.items():
        state = {}
        for key in ("step", "exp_avg", "exp_avg_sq"):
            t = tensors.get(f"opt.{name}.{key}")
            if t is not None:
                state[key] = t.reshape(()) if key == "step" else t.reshape(p.shape).to(p.device)
        if state:
            optimizer.state[p] = state
    return int(meta["step"])


def has_checkpoint(out: Path) -> bool:
    return (Path(out) / CHECKPOINT / "state.json").is_file()


def drop_checkpoint(out: Path) -> None:
    shutil.rmtree(Path(out) / CHECKPOINT, ignore_errors=True)
