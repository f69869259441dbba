"""Int4 MatMulNBits weights on torchao's grid (the grid the ExecuTorch 8da4w export uses),
written one weight at a time.

ONNX Runtime's quantizer maps each block's signed extreme to -8 (scale = v/-8); torchao's
symmetric int4 takes scale = max|w| / 7.5 (at least float32's smallest normal), codes
round(w * (1 / scale)) clamped to [-8, 7], and the export then stores the scale rounded to
bf16 (what XNNPACK keeps): the weight is code x bf16(scale). `int4_blocks` repeats those
steps in that order, so the codes and scales are the `.pte`'s bit for bit
(tests/test_quant_aware.py compares them with torchao's).
On the embedded default the ORT grid keeps 66.5% held-out `shift` accuracy (fp32
embedding) where torchao's grid keeps 97%, the same as the `.pte` (docs/verification.md).

`quantize_int4` rewrites every constant-weight MatMul of a saved graph into the node
ONNX Runtime's `MatMulNBitsQuantizer` would write (same names, inputs, attributes and
layout: B uint8 [N, K/block, block/2], low nibble first, offset 8; scales [N, K/block];
no zero points), reading one weight at a time from the graph's external data file (a
stored bf16/fp16 weight is upcast then, a block of rows at a time, onnx_weights.py) and
writing each packed weight straight to the new data file: neither the float32 model nor
the quantized one is ever held whole (at 1B ONNX Runtime's quantizer's in-memory copies
peaked at 11-16 GB).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .onnx_weights import initializer_array  # noqa: F401  (read by the ONNX backend and tests)

_ROWS = 4096        # output rows quantized at once (bounds the float32 temporaries)
_EPS = np.finfo(np.float32).tiny    # torchao's floor on a symmetric scale


def _as_torch(arr: np.ndarray) -> torch.Tensor:
    """A torch view of `arr` (bf16 arrays are ml_dtypes', which torch cannot take as is)."""
    if arr.dtype.name == "bfloat16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


def int4_blocks(w_nk: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Weight [N, K] (any float dtype, widened a block of rows at a time) -> (packed uint8
    [N, K/block, block/2], scales [N, K/block]) on torchao's symmetric int4 grid. In torch,
    whose ops use every intra-op thread (half the time numpy took on 2 cores), with the
    same float32 steps in the same order: the same bits."""
    n, k = w_nk.shape
    packed = torch.empty((n, k // block, block // 2), dtype=torch.uint8)
    scales = torch.empty((n, k // block), dtype=torch.float32)
    src = _as_torch(w_nk)
    for r in range(0, n, _ROWS):
        w = src[r:r + _ROWS].to(torch.float32, copy=True).reshape(-1, k // block, block)
        scale = w.abs().amax(-1).div_(7.5).clamp_(min=float(_EPS))
        q = w.mul_(scale.reciprocal().unsqueeze(-1)).round_().clamp_(-8, 7).add_(8)
        q = q.to(torch.uint8).reshape(len(w), k // block, block // 2, 2)
        packed[r:r + _ROWS] = q[..., 0] | (q[..., 1] << 4)
        scales[r:r + _ROWS] = scale.to(torch.bfloat16)
    return packed.numpy(), scales.numpy()


def quantize_int4(proto, base_dir: Path, block: int, accuracy_level: int, writer,
                  keep_float: tuple[str, ...] = ()) -> int:
    """Rewrite `proto` (loaded without external data; its data in `base_dir`) in place:
    every MatMul with a constant weight (onnx_weights.matmul_weight: a float32 [K, N]
    initializer, or a stored bf16/fp16 one behind its Cast and Transpose), K a multiple of
    `block` and not named in `keep_float`, becomes a 4-bit MatMulNBits; the stored
    weights left are widened to float32. Every large initializer ends in `writer`'s new
    data file (onnx_weights.DataWriter; the caller commits it). Returns how many MatMuls
    were rewritten."""
    from onnx import helper

    from .onnx_weights import GraphIndex, matmul_weight, move_external, weight_nk, widen_stored

    graph = proto.graph
    index = GraphIndex(graph)
    nodes, new_inits, replaced, dead = [], [], set(), set()
    for node in graph.node:
        weight = None if node.name in keep_float else matmul_weight(node, index)
        if weight is None or (weight.init.dims[1 if weight.transposed else 0] % block):
            nodes.append(node)
            continue
        b = weight.init.name
        packed, scales = int4_blocks(weight_nk(weight, base_dir), block)
        n, k = packed.shape[0], packed.shape[1] * block
        new_inits += [writer.add(f"{b}_Q4", packed.shape, np.uint8, [packed]),
                      writer.add(f"{b}_scales", scales.shape, np.float32, [scales])]
        del packed, scales
        nodes.append(helper.make_node(
            "MatMulNBits", [node.input[0], f"{b}_Q4", f"{b}_scales"], list(node.output),
            name=f"{node.name}_Q4", domain="com.microsoft", K=k, N=n, bits=4,
            block_size=block, accuracy_level=accuracy_level))
        replaced.add(b)
        dead.update(id(v) for v in weight.via)
    kept = [i for i in graph.initializer if i.name not in replaced]
    del graph.node[:]
    graph.node.extend(n for n in nodes if id(n) not in dead)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    widen_stored(proto, base_dir, writer)  # unquantized stored weights: float32, as captured
    move_external(proto, base_dir, writer)
    graph.initializer.extend(new_inits)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(replaced)
