"""Int4 MatMulNBits weights on torchao's grid (the grid the ExecuTorch 8da4w export uses),
written one weight at a time.

ONNX Runtime's quantizer maps each block's signed extreme to -8 (scale = v/-8); torchao's
symmetric int4 uses scale = max|w| / 7.5 with bf16-rounded scales, clamped to [-8, 7].
On the embedded default the ORT grid keeps 66.5% held-out `shift` accuracy (fp32
embedding) where torchao's grid keeps 97%, the same as the `.pte` (docs/verification.md).

`quantize_int4` rewrites every constant-weight MatMul of a saved graph into the node
ONNX Runtime's `MatMulNBitsQuantizer` would write (same names, inputs, attributes and
layout: B uint8 [N, K/block, block/2], low nibble first, offset 8; scales [N, K/block];
no zero points), reading one float32 weight at a time from the graph's external data
file: the float32 model is never loaded whole (at 1B the quantizer's in-memory copies
peaked at 11-16 GB).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

_ROWS = 4096        # output rows quantized at once (bounds the float32 temporaries)


def int4_blocks(w_nk: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Weight [N, K] (float32) -> (packed uint8 [N, K/block, block/2], scales [N, K/block])
    on torchao's symmetric int4 grid, a block of rows at a time."""
    n, k = w_nk.shape
    packed = np.empty((n, k // block, block // 2), np.uint8)
    scales = np.empty((n, k // block), np.float32)
    for r in range(0, n, _ROWS):
        w = w_nk[r:r + _ROWS].astype(np.float32).reshape(-1, k // block, block)
        scale = torch.from_numpy(np.abs(w).max(-1) / 7.5).to(torch.bfloat16).float().numpy()
        safe = np.where(scale == 0, 1.0, scale)
        q = (np.clip(np.round(w / safe[..., None]), -8, 7) + 8).astype(np.uint8)
        q = q.reshape(len(w), k // block, block // 2, 2)
        packed[r:r + _ROWS] = q[..., 0] | (q[..., 1] << 4)
        scales[r:r + _ROWS] = scale
    return packed, scales


def initializer_array(init, base_dir: Path) -> np.ndarray:
    """An initializer's array; external data is read into a copy of the proto, so the
    graph's own protos stay without their weights (one weight in memory at a time)."""
    import onnx
    from onnx import numpy_helper

    if init.data_location != onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(init)
    tmp = onnx.TensorProto()
    tmp.CopyFrom(init)
    return numpy_helper.to_array(tmp, base_dir=str(base_dir))


def quantize_int4(proto, base_dir: Path, block: int, accuracy_level: int,
                  keep_float: tuple[str, ...] = ()) -> int:
    """Rewrite `proto` (loaded without external data; its data in `base_dir`) in place:
    every MatMul with a float32 initializer B [K, N], K a multiple of `block` and not named
    in `keep_float`, becomes a 4-bit MatMulNBits; the other external initializers are read
    into the proto (so it can be saved to a new data file). Returns how many were rewritten."""
    import onnx
    from onnx import external_data_helper, helper, numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    nodes, new_inits, replaced = [], [], set()
    for node in graph.node:
        b = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        init = inits.get(b)
        if (init is None or node.name in keep_float or uses[b] != 1 or len(init.dims) != 2
                or init.data_type != onnx.TensorProto.FLOAT or init.dims[0] % block):
            nodes.append(node)
            continue
        k, n = init.dims
        packed, scales = int4_blocks(np.ascontiguousarray(initializer_array(init, base_dir).T), block)
        new_inits += [numpy_helper.from_array(packed, f"{b}_Q4"),
                      numpy_helper.from_array(scales, f"{b}_scales")]
        nodes.append(helper.make_node(
            "MatMulNBits", [node.input[0], f"{b}_Q4", f"{b}_scales"], list(node.output),
            name=f"{node.name}_Q4", domain="com.microsoft", K=k, N=n, bits=4,
            block_size=block, accuracy_level=accuracy_level))
        replaced.add(b)
    kept = [i for i in graph.initializer if i.name not in replaced]
    for init in kept:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            external_data_helper.load_external_data_for_tensor(init, str(base_dir))
            init.data_location = onnx.TensorProto.DEFAULT
            del init.external_data[:]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(replaced)
