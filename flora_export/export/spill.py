"""Weights set aside on disk while one backend builds, for the next: `ios` holds them once.

A two-backend target (`ios`: the `.pte`, then the Core ML package) builds two artifacts
from the same fused model. Each build replaces the model's matrices as it goes (quantizing
or coding one module at a time frees each bf16 matrix as soon as its quantized form
exists), which is what keeps one backend's peak near 2 bytes a parameter; the next backend
needs the matrices as they were. Kept in memory beside the first build, they cost 3 bytes
a parameter while it quantizes and lowers (1B ios: 5.83 GB against 4.74 GB set aside,
benchmarks/results/export_cost-1b-ios*.json). Instead `set_aside()` writes every Linear and
Embedding weight to one file in the staging folder before the first build and returns a
skeleton of the model (its own modules, buffers and Parameter objects; those weights empty,
the small tensors shared); `restore()` reads them back into the skeleton for the next build,
one tensor at a time, with plain reads into fresh memory (no mapping, so the file never
counts in the process's memory), and deletes the file. The bytes are the same bytes: the
second artifact is the one its backend builds alone (tests/test_export_coreml.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


@dataclass
class SetAside:
    """The file, and for each empty placeholder of the skeletons (by id) the shape, dtype,
    requires_grad and byte offset of the weight it stands for; `pending`: skeletons not
    restored yet (the file is deleted when none is left)."""
    path: Path
    entries: dict[int, tuple[torch.Size, torch.dtype, bool, int]] = field(default_factory=dict)
    pending: int = 0


def weights(model: nn.Module) -> list[nn.Parameter]:
    """The matrices a build replaces: every Linear and Embedding weight, each once (a
    tied head and embedding share one)."""
    seen: dict[int, nn.Parameter] = {}
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)) and m.weight.numel():
            seen.setdefault(id(m.weight), m.weight)
    return list(seen.values())


def weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in weights(model))


def set_aside(model: nn.Module, path: Path, copies: int = 1
              ) -> tuple[list[nn.Module], SetAside]:
    """Write `model`'s matrices to `path`; returns (`copies` skeletons, record). A skeleton
    is a copy with its own modules, buffers and Parameter objects, its matrices empty
    placeholders (ties kept: tied modules share one), its other parameters over the same
    tensors as `model`'s (every build replaces a parameter and never writes into one)."""
    record, offsets = SetAside(path, pending=copies), {}
    with open(path, "wb") as f:
        for p in weights(model):
            data = p.detach().contiguous()
            offsets[id(p)] = f.tell()
            f.write(memoryview(data.reshape(-1).view(torch.uint8).numpy()))
            del data
    skeletons = []
    for _ in range(copies):
        memo = {}
        for p in weights(model):
            empty = nn.Parameter(torch.empty(0, dtype=p.dtype), requires_grad=False)
            record.entries[id(empty)] = (p.shape, p.dtype, p.requires_grad, offsets[id(p)])
            memo[id(p)] = empty
        for p in model.parameters():
            memo.setdefault(id(p), nn.Parameter(p.data, requires_grad=p.requires_grad))
        skeletons.append(copy.deepcopy(model, memo))
    return skeletons, record


def restore(skeleton: nn.Module, record: SetAside) -> nn.Module:
    """Read the matrices back into `skeleton` (each placeholder becomes its weight again,
    shared where it was shared; the file is deleted after the last skeleton); returns it."""
    restored: dict[int, nn.Parameter] = {}
    with open(record.path, "rb") as f:
        for m in skeleton.modules():
            for name, p in list(m._parameters.items()):
                if p is None or id(p) not in record.entries:
                    continue
                if id(p) not in restored:
                    shape, dtype, grad, offset = record.entries[id(p)]
                    t = torch.empty(shape, dtype=dtype)
                    f.seek(offset)
                    if f.readinto(memoryview(t.reshape(-1).view(torch.uint8).numpy())) \
                            != t.numel() * t.element_size():
                        raise OSError(f"{record.path} ends before the weights set aside in it")
                    restored[id(p)] = nn.Parameter(t, requires_grad=grad)
                m._parameters[name] = restored[id(p)]
    record.pending -= 1
    if record.pending <= 0:
        record.path.unlink()
    return skeleton
