"""The XNNPACK lowering's memory: its copies of the weights, avoided without changing a byte.

Two things in ExecuTorch's lowering hold the weights again, and `lean_lowering()` replaces
both for its duration:

1. Before preprocessing, every partition's program is deep-copied, constants included,
   and all the copies are made before the first partition is preprocessed
   (`BackendDetails.copy_exported_program_for_preprocess`): a second copy of every
   delegated weight (1B: 1.3 GB of int8 codes). `share_constants` copies the graph and
   its state-dict mapping but shares the tensors, as ExecuTorch's own CUDA backend does in
   its low-memory mode: preprocessing replaces state-dict entries, it does not write into
   the tensors.
2. Its XNNPACK backend packs each int4 weight (held as int8 codes in [-8, 7]) into bytes
   of two codes (`NodeVisitor.convert_to_qc4w`) with whole-tensor temporaries: a uint8
   copy, that copy plus 8, and both halves shifted and or-ed. For a large LM head (1B:
   128256 x 2048 codes) that is about four times the packed size at once. `pack_int4`
   makes the same bytes a block of rows at a time (two codes never straddle a row: the
   row is padded to an even length first, as there).

tests/test_export_executorch.py checks the packed bytes against ExecuTorch's function
and that a lowering within `lean_lowering()` writes the very `.pte` ExecuTorch's own
lowering writes, byte for byte.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Iterator

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BLOCK_ELEMENTS = 1 << 22        # codes packed per step (4 MiB of int8)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """[rows, cols] int4 codes held in an integer tensor -> [rows, ceil(cols/2)] uint8: code
    2k + 1 in the high nibble, code 2k in the low one, each stored as code + 8."""
    if codes.ndim != 2:
        codes = codes.squeeze()
    lo, hi = codes.min().item(), codes.max().item()
    if not (-8 <= lo and hi <= 7):
        raise AssertionError(f"convert_to_qc4w: [min,max] out of [-8, 7] range, got [{lo}, {hi}]")
    if codes.ndim != 2:
        raise AssertionError(f"convert_to_qc4w: expecting input tensor to be 2d, got {codes.ndim}")
    rows, cols = codes.shape
    pad = cols % 2
    out = torch.empty(rows, (cols + pad) // 2, dtype=torch.uint8)
    step = max(1, BLOCK_ELEMENTS // max(cols, 1))
    for r in range(0, rows, step):
        block = codes[r:r + step]
        if pad:
            block = F.pad(block, (0, 1), value=0)
        u = block.to(torch.uint8) + 8
        out[r:r + step] = (u[:, 1::2] << 4) | u[:, ::2]
    return out


def share_constants(cls, edge_program, compile_specs):
    """An isolated copy of a partition's program for preprocessing (graph, signature and
    state-dict mapping are its own) whose constant tensors are the original's."""
    memo = {id(t): t for values in (edge_program.state_dict, edge_program.constants)
            for t in values.values() if isinstance(t, torch.Tensor)}
    return copy.deepcopy(edge_program, memo)


@contextlib.contextmanager
def lean_lowering() -> Iterator[None]:
    """Within the block, ExecuTorch's XNNPACK lowering shares the constants of the programs
    it preprocesses and packs int4 weights with pack_int4."""
    from executorch.backends.xnnpack.operators.node_visitor import NodeVisitor
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    patches = [(NodeVisitor, "convert_to_qc4w", staticmethod(pack_int4)),
               (XnnpackBackend, "copy_exported_program_for_preprocess",
                classmethod(share_constants))]
    saved = []
    for owner, name, replacement in patches:
        if not hasattr(owner, name):   # another ExecuTorch: lower as it does (same bytes)
            log.warning("ExecuTorch's %s has no %s: the lowering keeps its own (a higher "
                        "peak memory in the lower stage)", owner.__name__, name)
            continue
        saved.append((owner, name, owner.__dict__.get(name)))
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            if original is None:       # inherited: drop the override
                delattr(owner, name)
            else:
                setattr(owner, name, original)
