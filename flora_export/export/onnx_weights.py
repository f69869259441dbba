"""Stored (bf16/fp16) weights in a captured ONNX graph.

The ONNX capture keeps the model's checkpoint dtype in memory (model/storage.py): each
stored linear upcasts its weight inside the captured program, so the saved graph holds
the bf16/fp16 weight as an initializer followed by `Cast(to=FLOAT)` (and a `Transpose`,
`Linear` being `x @ W.T`); a stored embedding is a `Gather` from the Cast of its narrow
table (model/storage.py, CapturedLinear/CapturedEmbedding). No float32 copy of the model exists during the capture
(at 3B that copy alone is 13 GB).

This module reads those chains: `matmul_weight` finds the weight behind a MatMul's B
input (a float32 [K, N] initializer, or a narrow [N, K] one behind Cast and Transpose),
and `widen_stored` turns every chain left into a plain float32 initializer, one tensor at
a time, so the final graph is the one a float32 capture gives (float32 embedding and
unquantized weights; the upcast is exact, so the numbers are the same).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_NARROW = ("BFLOAT16", "FLOAT16")


@dataclass
class MatMulWeight:
    """The weight a MatMul's B input reads: `init` holds it [K, N] (`transposed` False, a
    float32 initializer) or [N, K] (`transposed` True: a narrow initializer behind `Cast`
    and `Transpose`, the nodes in `via`, which die once the MatMul stops reading them)."""
    init: object
    transposed: bool
    via: list = field(default_factory=list)


def _dtype_name(init) -> str:
    import onnx

    return onnx.TensorProto.DataType.Name(init.data_type)


def is_narrow(init) -> bool:
    return _dtype_name(init) in _NARROW


def _is_cast_to_float(node) -> bool:
    import onnx
    from onnx import helper

    return node.op_type == "Cast" and any(
        a.name == "to" and helper.get_attribute_value(a) == onnx.TensorProto.FLOAT
        for a in node.attribute)


def _is_2d_transpose(node) -> bool:
    from onnx import helper

    perm = next((list(helper.get_attribute_value(a)) for a in node.attribute
                 if a.name == "perm"), [1, 0])
    return node.op_type == "Transpose" and perm == [1, 0]


class GraphIndex:
    """Producers, use counts and initializers of a graph, for the lookups below."""

    def __init__(self, graph):
        self.inits = {i.name: i for i in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        for out in graph.output:
            self.consumers.setdefault(out.name, []).append(None)

    def uses(self, name: str) -> int:
        return len(self.consumers.get(name, []))


def matmul_weight(node, index: GraphIndex) -> MatMulWeight | None:
    """The constant weight behind MatMul `node`'s B input, or None when B is computed."""
    if node.op_type != "MatMul" or len(node.input) != 2:
        return None
    b = node.input[1]
    if b in index.inits:
        init = index.inits[b]
        ok = index.uses(b) == 1 and len(init.dims) == 2 and _dtype_name(init) == "FLOAT"
        return MatMulWeight(init, False) if ok else None
    transpose = index.producer.get(b)
    if transpose is None or not _is_2d_transpose(transpose) or index.uses(b) != 1:
        return None
    cast = index.producer.get(transpose.input[0])
    if cast is None or not _is_cast_to_float(cast) or index.uses(cast.output[0]) != 1:
        return None
    init = index.inits.get(cast.input[0])
    if init is None or not is_narrow(init) or len(init.dims) != 2 or index.uses(init.name) != 1:
        return None
    return MatMulWeight(init, True, [cast, transpose])


def weight_nk(weight: MatMulWeight, base_dir: Path) -> np.ndarray:
    """The weight as float32 [N, K] (output rows first), read from its initializer."""
    from .onnx_grid import initializer_array

    arr = initializer_array(weight.init, base_dir)
    return arr.astype(np.float32) if weight.transposed else np.ascontiguousarray(arr.T)


def widen_stored(proto, base_dir: Path) -> int:
    """Replace, in place, every narrow initializer the graph upcasts by a float32 one:
    `Cast(to=FLOAT)` of it (with a following 2-D `Transpose` folded in) becomes a float32
    initializer named as the chain's output. The float32 tensors are held in the proto
    (save it with external data); the narrow ones are dropped. Returns how many
    initializers were widened."""
    from onnx import numpy_helper

    from .onnx_grid import initializer_array

    graph = proto.graph
    index = GraphIndex(graph)
    dead, new_inits, replaced = set(), [], set()
    for node in graph.node:
        if _is_cast_to_float(node) and node.input[0] in index.inits:
            init = index.inits[node.input[0]]
            if not is_narrow(init) or index.uses(init.name) != 1:
                continue
            arr, out = initializer_array(init, base_dir).astype(np.float32), node.output[0]
            dead.add(id(node))
            nxt = index.consumers.get(out, [])
            if (len(nxt) == 1 and nxt[0] is not None and _is_2d_transpose(nxt[0])
                    and arr.ndim == 2):
                arr, out = np.ascontiguousarray(arr.T), nxt[0].output[0]
                dead.add(id(nxt[0]))
            new_inits.append(numpy_helper.from_array(arr, out))
            replaced.add(init.name)
    kept_nodes = [n for n in graph.node if id(n) not in dead]
    kept = [i for i in graph.initializer if i.name not in replaced]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    return len(replaced)
