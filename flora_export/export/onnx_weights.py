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
a time, so the final graph computes what a float32 capture gives (float32
unquantized weights; the embedding table alone stays narrow, onnx_graph.py; the upcast
is exact, so the numbers are the same).

`DataWriter` writes the rewritten graph's external data one tensor at a time (a block of
rows at a time for the widened ones) to a new file that then replaces the captured one:
neither the float32 weights nor the quantized ones are ever held whole in a proto.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

_NARROW = ("BFLOAT16", "FLOAT16")
_ROWS = 4096                 # rows widened at once (bounds the float32 temporaries)
_ALIGN, _ALIGN_FROM = 65536, 1 << 20   # tensors over 1 MiB start on a 64 KiB boundary
_COPY = 64 << 20             # bytes copied at once when a tensor moves to the new file


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


def is_cast_to_float(node) -> bool:
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
    if cast is None or not is_cast_to_float(cast) or index.uses(cast.output[0]) != 1:
        return None
    init = index.inits.get(cast.input[0])
    if init is None or not is_narrow(init) or len(init.dims) != 2 or index.uses(init.name) != 1:
        return None
    return MatMulWeight(init, True, [cast, transpose])


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


def weight_nk(weight: MatMulWeight, base_dir: Path) -> np.ndarray:
    """The weight as [N, K] (output rows first), in its stored dtype: the narrow
    initializer itself, or a transposed view of a float32 one (callers convert a block of
    rows at a time)."""
    arr = initializer_array(weight.init, base_dir)
    return arr if weight.transposed else arr.T


class DataWriter:
    """A graph's new external-data file, written one tensor at a time. `add` writes a
    tensor from blocks of rows; `move` copies a stored initializer's bytes over from the
    old file; `commit` saves the graph and puts the new file in the old one's place. As a
    context manager, it removes its partial file when the block fails."""

    def __init__(self, model_path: Path, data_name: str):
        self.model_path, self.name = model_path, data_name
        self.final = model_path.with_name(data_name)
        self.partial = model_path.with_name(data_name + ".partial")
        self.file = open(self.partial, "wb")
        self.written: set[str] = set()     # initializers already in the new file

    def __enter__(self) -> "DataWriter":
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is not None:
            self.file.close()
            self.partial.unlink(missing_ok=True)

    def _start(self, nbytes: int) -> int:
        offset = self.file.tell()
        if nbytes >= _ALIGN_FROM and offset % _ALIGN:
            offset += _ALIGN - offset % _ALIGN
            self.file.seek(offset)
        return offset

    def _point(self, init, offset: int, length: int) -> None:
        import onnx

        init.ClearField("raw_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        del init.external_data[:]
        for key, value in (("location", self.name), ("offset", offset), ("length", length)):
            entry = init.external_data.add()
            entry.key, entry.value = key, str(value)
        self.written.add(init.name)

    def add(self, name: str, dims: tuple[int, ...], dtype, blocks: Iterable[np.ndarray]):
        """A new initializer `name` of shape `dims`, its bytes the concatenated `blocks`
        (each converted to `dtype`)."""
        import onnx
        from onnx import helper

        dtype = np.dtype(dtype)
        nbytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
        offset = self._start(nbytes)
        for block in blocks:
            self.file.write(np.ascontiguousarray(block, dtype=dtype).data)
        if self.file.tell() - offset != nbytes:
            raise ValueError(f"initializer {name}: wrote {self.file.tell() - offset} bytes "
                             f"of {nbytes}")
        init = onnx.TensorProto(name=name, dims=list(dims),
                                data_type=helper.np_dtype_to_tensor_dtype(dtype))
        self._point(init, offset, nbytes)
        return init

    def move(self, init, base_dir: Path) -> None:
        """Copy `init`'s stored bytes (external, in `base_dir`) to the new file, in place."""
        info = {e.key: e.value for e in init.external_data}
        length = int(info["length"])
        offset = self._start(length)
        with open(base_dir / info["location"], "rb") as src:
            src.seek(int(info.get("offset", 0)))
            for start in range(0, length, _COPY):
                self.file.write(src.read(min(_COPY, length - start)))
        self._point(init, offset, length)

    def commit(self, proto) -> None:
        """Save `proto` (every large initializer pointing into the new file) and replace
        the old model and data files."""
        import onnx

        self.file.close()
        tmp = self.model_path.with_name(self.model_path.name + ".partial")
        onnx.save_model(proto, str(tmp))
        os.replace(self.partial, self.final)
        os.replace(tmp, self.model_path)


def move_external(proto, base_dir: Path, writer: DataWriter) -> None:
    """Move every initializer still stored in the old data file to the new one."""
    import onnx

    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL and init.name not in writer.written:
            writer.move(init, base_dir)


def _rows(arr: np.ndarray) -> Iterable[np.ndarray]:
    """`arr` as float32, a block of rows at a time."""
    if arr.ndim == 0:
        yield arr.astype(np.float32)
        return
    for r in range(0, max(len(arr), 1), _ROWS):
        yield arr[r:r + _ROWS].astype(np.float32)


def widen_stored(proto, base_dir: Path, writer: DataWriter | None = None) -> int:
    """Replace, in place, every narrow initializer the graph upcasts by a float32 one:
    `Cast(to=FLOAT)` of it (with a following 2-D `Transpose` folded in) becomes a float32
    initializer named as the chain's output; the narrow ones are dropped. With `writer`
    each float32 tensor is written to the new data file a block of rows at a time;
    without, it is held in the proto (save it with external data). Returns how many
    initializers were widened."""
    from onnx import numpy_helper

    graph = proto.graph
    index = GraphIndex(graph)
    dead, new_inits, replaced = set(), [], set()
    for node in graph.node:
        if is_cast_to_float(node) and node.input[0] in index.inits:
            init = index.inits[node.input[0]]
            if not is_narrow(init) or index.uses(init.name) != 1:
                continue
            arr, out = initializer_array(init, base_dir), node.output[0]
            dead.add(id(node))
            nxt = index.consumers.get(out, [])
            if (len(nxt) == 1 and nxt[0] is not None and _is_2d_transpose(nxt[0])
                    and arr.ndim == 2):
                arr, out = arr.T, nxt[0].output[0]
                dead.add(id(nxt[0]))
            if writer is None:
                new_inits.append(numpy_helper.from_array(
                    np.ascontiguousarray(arr.astype(np.float32)), out))
            else:
                new_inits.append(writer.add(out, arr.shape, np.float32, _rows(arr)))
            del arr
            replaced.add(init.name)
    kept_nodes = [n for n in graph.node if id(n) not in dead]
    kept = [i for i in graph.initializer if i.name not in replaced]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    return len(replaced)
