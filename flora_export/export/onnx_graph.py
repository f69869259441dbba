"""ONNX graph rewrites: the opset-23 decoder onto ONNX Runtime's fused kernels.

Each opset-23 `Attention` becomes one `GroupQueryAttention` (RoPE inside, one KV buffer
shared by past and present), each `RMSNormalization` a `SimplifiedLayerNormalization`,
absorbing the residual `Add` before it as `SkipSimplifiedLayerNormalization`, and a
stored (bf16/fp16) embedding table is gathered in its own dtype, the rows then cast to
float32. The rewrites work on the graph only: the weights stay in their external-data
file.
"""

from __future__ import annotations

from pathlib import Path

from .onnx_attention import LayerSpec

def rewrite_for_ort(path: Path, layers: list[LayerSpec]) -> int:
    """Swap each opset-23 `Attention` for ONNX Runtime's `GroupQueryAttention` kernel,
    the norms for its fused ones, and gather stored tables narrow (`_gather_narrow`).

    Same inputs minus the mask (the kernel takes `seqlens_k` and the total length, both
    derived from `attention_mask`), and the KV cache becomes one buffer shared by past
    and present: no copy of the cache per decode step. `layers` (one per Attention, in
    graph order) says what the dropped mask and RotaryEmbedding carried: a layer's
    sliding window becomes `local_window_size`, its RoPE the kernel's own (`do_rotary`
    with the RotaryEmbedding's cos/sin caches; partial rotary from their width), a NoPE
    layer keeps `do_rotary=0`. Returns the count replaced.
    """
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load(str(path), load_external_data=False)   # weights stay where they are
    graph = proto.graph
    shared = [
        helper.make_node("ReduceSum", ["attention_mask", "gqa_axis1"], ["gqa_len64"], keepdims=0),
        helper.make_node("Sub", ["gqa_len64", "gqa_one"], ["gqa_seqlens64"]),
        helper.make_node("Cast", ["gqa_seqlens64"], ["gqa_seqlens_k"], to=TensorProto.INT32),
        helper.make_node("Shape", ["attention_mask"], ["gqa_mask_shape"], start=1, end=2),
        helper.make_node("Squeeze", ["gqa_mask_shape"], ["gqa_total64"]),
        helper.make_node("Cast", ["gqa_total64"], ["gqa_total_len"], to=TensorProto.INT32)]
    graph.initializer.extend([helper.make_tensor("gqa_axis1", TensorProto.INT64, [1], [1]),
                              helper.make_tensor("gqa_one", TensorProto.INT64, [], [1])])
    attentions = [n for n in graph.node if n.op_type == "Attention"
                  and n.domain in ("", "ai.onnx")]
    if len(attentions) != len(layers):
        raise RuntimeError(f"{len(attentions)} Attention nodes for {len(layers)} layers")
    spec_of = {id(n): spec for n, spec in zip(attentions, layers)}
    nodes, swapped = [], 0
    for node in graph.node:
        if id(node) not in spec_of:
            nodes.append(node)
            continue
        spec = spec_of[id(node)]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        q, k, v, _mask, past_k, past_v = node.input[:6]
        rotary = []
        if spec.rope:
            (q, cos, sin), (k, _, _) = _unrotated(graph, q), _unrotated(graph, k)
            rotary = [cos, sin]
        extra = {"scale": attrs["scale"]} if "scale" in attrs else {}
        if spec.window is not None:   # the W keys j with i - W < j <= i, as the mask had
            extra["local_window_size"] = spec.window
        nodes.append(helper.make_node(
            "GroupQueryAttention",
            [q, k, v, past_k, past_v, "gqa_seqlens_k", "gqa_total_len", *rotary],
            list(node.output[:3]), name=node.name, domain="com.microsoft",
            num_heads=attrs["q_num_heads"], kv_num_heads=attrs["kv_num_heads"],
            do_rotary=int(spec.rope), rotary_interleaved=0, **extra))
        swapped += 1
    del graph.node[:]
    graph.node.extend(shared + nodes)
    _drop_dead_nodes(graph)
    _use_skip_layer_norm(graph)
    _gather_narrow(graph)
    past_types = {i.name.replace("past_key_values", "present"): i.type for i in graph.input}
    for out in graph.output:
        if out.name in past_types:
            out.type.CopyFrom(past_types[out.name])
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save_model(proto, str(path))          # graph only: external-data references kept
    return swapped


def _unrotated(graph, name: str) -> tuple[str, str, str]:
    """Follow `name` back through Reshapes to its RotaryEmbedding: (its input, cos, sin).

    GroupQueryAttention applies RoPE itself (positions from `seqlens_k`), so it takes
    the projection output before rotation; the RotaryEmbedding nodes become dead.
    """
    producer = {o: n for n in graph.node for o in n.output}
    node = producer[name]
    while node.op_type == "Reshape":
        node = producer[node.input[0]]
    if node.op_type != "RotaryEmbedding":
        raise RuntimeError(f"expected RotaryEmbedding before attention, found {node.op_type}")
    return node.input[0], node.input[1], node.input[2]


def _use_skip_layer_norm(graph) -> None:
    """RMSNormalization -> ONNX Runtime's SimplifiedLayerNormalization; one fed by the
    residual Add absorbs it as SkipSimplifiedLayerNormalization (its 4th output is the
    sum, so the residual stream keeps its name)."""
    from onnx import helper

    producer = {o: n for n in graph.node for o in n.output}
    absorbed = set()
    for node in graph.node:
        if node.op_type != "RMSNormalization":
            continue
        eps = next((helper.get_attribute_value(a) for a in node.attribute
                    if a.name == "epsilon"), 1e-5)
        add = producer.get(node.input[0])
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("epsilon", eps))
        if add is not None and add.op_type == "Add" and id(add) not in absorbed:
            absorbed.add(id(add))
            node.op_type, node.domain = "SkipSimplifiedLayerNormalization", "com.microsoft"
            inputs, outputs = [*add.input, node.input[1]], [node.output[0], "", "", add.output[0]]
            del node.input[:], node.output[:]
            node.input.extend(inputs)
            node.output.extend(outputs)
        else:
            node.op_type = "SimplifiedLayerNormalization"
            node.attribute.append(helper.make_attribute("axis", -1))
    kept = [n for n in graph.node if id(n) not in absorbed]
    del graph.node[:]
    graph.node.extend(kept)


def _gather_narrow(graph) -> int:
    """`Gather(Cast(table, FLOAT), ids)` -> `Cast(Gather(table, ids), FLOAT)` for a
    bf16/fp16 table read by that Gather only (the captured stored embedding,
    storage.CapturedEmbedding). The table then stays in the checkpoint's dtype in the
    folder and in ONNX Runtime's memory (it would otherwise be widened to float32, twice
    the bytes: 1.0 GB instead of 0.5 GB at 1B), and the rows are cast after the gather.
    Exact: the same float32 rows reach the model. Returns the count rewritten."""
    from .onnx_weights import GraphIndex, is_cast_to_float, is_narrow

    index, rewritten = GraphIndex(graph), 0
    for node in list(graph.node):
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx"):
            continue
        cast = index.producer.get(node.input[0])
        init = index.inits.get(cast.input[0]) if cast is not None else None
        if (init is None or not is_cast_to_float(cast) or not is_narrow(init)
                or index.uses(init.name) != 1 or index.uses(cast.output[0]) != 1):
            continue
        rows = node.output[0]
        node.input[0], node.output[0] = init.name, rows + "_narrow"
        cast.input[0], cast.output[0] = node.output[0], rows
        graph.node.remove(cast)                # after the Gather now: keep the order
        graph.node.insert(list(graph.node).index(node) + 1, cast)
        rewritten += 1
    return rewritten


def _drop_dead_nodes(graph) -> None:
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
