"""How the ONNX folder stores the embedding table.

By default the table stays unquantized in the checkpoint's dtype (bf16 for most: the
graph gathers its rows and casts them to float32 after, onnx_graph.py), which keeps
every held-out point a small model has. `ExportConfig.shared_embedding`
(`--onnx-shared-embedding`) instead makes a tied model's embedding read the output
head's int4 codes, as ORT-GenAI's builder stores one: no table in the folder, an int4
embedding, which the quality gate then judges.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from ..errors import FloraError


def check_shared_embedding(model: nn.Module, quant, backends) -> None:
    """Refuse, before any work, a shared embedding (ExportConfig.shared_embedding) that
    cannot be built: it needs an ONNX build, int4 weights and an output head tied to the
    embedding whose width is whole blocks."""
    fix = "drop --onnx-shared-embedding"
    if "onnx" not in backends:
        raise FloraError(f"--onnx-shared-embedding applies to ONNX exports; this target builds "
                         f"{', '.join(backends)}", fix)
    if quant.weight_bits != 4:
        raise FloraError(f"--onnx-shared-embedding shares the int4 output head; --quant "
                         f"{quant.name} has no int4 head", f"use --quant 8da4w, or {fix}")
    if model.lm_head.weight is not model.embed_tokens.weight:
        raise FloraError("--onnx-shared-embedding needs an output head tied to the embedding; "
                         "this model's head has its own weights (tie_word_embeddings false, or "
                         "an adapter changed the head)", fix)
    if model.config.hidden_size % (quant.group_size or 32):
        raise FloraError(f"--onnx-shared-embedding: hidden size {model.config.hidden_size} is "
                         f"not whole blocks of {quant.group_size or 32}", fix)


def table_dtype(path: Path) -> str | None:
    """The dtype of the table the graph's plain `Gather` reads (the embedding: "bfloat16",
    "float16" or "float32"), None when there is none."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i.data_type for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Gather" and node.domain in ("", "ai.onnx") and node.input[0] in inits:
            return onnx.helper.tensor_dtype_to_np_dtype(inits[node.input[0]]).name
    return None


def gather_from_head(proto, head: str, block: int) -> str:
    """Make the embedding read the output head's int4 codes (a tied model), in place,
    before quantize_int4 writes them: the plain `Gather` of the table (and the `Cast` of
    its rows, for a stored bf16/fp16 table) becomes one `GatherBlockQuantized` (4 bits,
    block `block`, gather axis 0, quantize axis 1, default offset 8) over a `Reshape` of
    the head MatMul's packed weight [V, K/block, block/2] to [V, K/2], with the head's
    scales; the table's initializer is dropped. The layout ORT-GenAI's builder writes for
    a tied model. Returns the dropped table's name."""
    from onnx import helper, numpy_helper

    from .onnx_weights import GraphIndex, is_cast_to_float, matmul_weight

    graph = proto.graph
    index = GraphIndex(graph)
    node = next((n for n in graph.node if n.name == head), None)
    weight = matmul_weight(node, index) if node is not None else None
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.domain in ("", "ai.onnx")
               and n.input[0] in index.inits]
    if weight is None or len(gathers) != 1:
        raise RuntimeError(f"no constant output head {head} or not one embedding Gather "
                           f"({len(gathers)}) to share it with")
    gather = gathers[0]
    table = index.inits[gather.input[0]]
    n, k = weight.init.dims if weight.transposed else weight.init.dims[::-1]
    if list(table.dims) != [n, k] or k % block:
        raise RuntimeError(f"embedding {list(table.dims)} and head [{n}, {k}] cannot share "
                           f"int4 blocks of {block}")
    dead, rows = {id(gather)}, gather.output[0]
    after = index.consumers.get(rows, [])
    if len(after) == 1 and after[0] is not None and is_cast_to_float(after[0]):
        dead.add(id(after[0]))                 # a stored table's rows, cast after the gather
        rows = after[0].output[0]
    b = weight.init.name
    shape = numpy_helper.from_array(np.array([n, k // 2], np.int64), f"{b}_Q4_rows_shape")
    new = [helper.make_node("Reshape", [f"{b}_Q4", shape.name], [f"{b}_Q4_rows"],
                            name=f"{gather.name}_reshape"),
           helper.make_node("GatherBlockQuantized", [f"{b}_Q4_rows", gather.input[1],
                                                     f"{b}_scales"], [rows],
                            name=gather.name, domain="com.microsoft", bits=4,
                            block_size=block, gather_axis=0, quantize_axis=1)]
    at = list(graph.node).index(gather)
    nodes = [x for x in graph.node if id(x) not in dead]
    kept = [i for i in graph.initializer if i.name != table.name]
    del graph.node[:]
    graph.node.extend(nodes[:at] + new + nodes[at:])
    del graph.initializer[:]
    graph.initializer.extend(kept + [shape])
    return table.name
