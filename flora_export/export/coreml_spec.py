"""Reading a saved Core ML package's spec: inputs, outputs, states, metadata, ops.

Works on Linux (no model load): the counts come from the ML program in the package's
protobuf, so they describe exactly what a device will load.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

# Ops that turn compressed constants into a weight at load time (iOS 18 and older forms).
QUANT_OPS = ("constexpr_blockwise_shift_scale", "constexpr_affine_dequantize")


def load_spec(path: Path):
    """The spec of the package at `path`, reopened as an app would (no compilation)."""
    import coremltools as ct

    return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


def _blocks(spec):
    for name, fn in spec.mlProgram.functions.items():
        yield name, fn.block_specializations[fn.opset]


def _data_dtype(argument, producer: dict) -> str:
    """Element type of a constexpr op's `data`: an inline value or a const op's output."""
    from coremltools.proto import MIL_pb2

    if argument.HasField("value"):
        tensor = argument.value.type.tensorType
    elif argument.name in producer:
        tensor = producer[argument.name].outputs[0].type.tensorType
    else:
        return "unknown"
    return MIL_pb2.DataType.Name(tensor.dataType).lower()


def op_counts(spec) -> dict:
    """Linear ops, which take a weight from a quantized constant (by name), and its width."""
    linear = quantized = 0
    bits, ops, names = Counter(), Counter(), []
    for _, block in _blocks(spec):
        producer = {out.name: op for op in block.operations for out in op.outputs}
        ops.update(op.type for op in block.operations)
        for op in block.operations:
            if op.type != "linear":
                continue
            linear += 1
            weight = producer.get(op.inputs["weight"].arguments[0].name)
            if weight is None or weight.type not in QUANT_OPS:
                continue
            quantized += 1
            names.append(weight.outputs[0].name)
            bits[_data_dtype(weight.inputs["data"].arguments[0], producer)] += 1
    return {"quantized_linear_ops": quantized, "linear_ops": linear,
            "float_weight_linear_ops": linear - quantized,
            "quantized_weight_bits": dict(bits),
            "quantized_weight_ops": {t: ops[t] for t in QUANT_OPS if ops[t]},
            "states_written": ops["write_state"], "ops": sum(ops.values()),
            "quantized_linear_weights": sorted(names)}


def _shape(array_type) -> list:
    if array_type.HasField("shapeRange"):
        return [[r.lowerBound, r.upperBound] if r.lowerBound != r.upperBound else r.lowerBound
                for r in array_type.shapeRange.sizeRanges]
    return list(array_type.shape)


def _array(feature_type):
    return feature_type.stateType.arrayType if feature_type.HasField("stateType") \
        else feature_type.multiArrayType


def _dtype(array_type) -> str:
    from coremltools.proto import FeatureTypes_pb2

    return FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array_type.dataType).lower()


def interface(spec) -> dict:
    """{inputs, outputs, states}: name -> {shape (a [min, max] pair where flexible), dtype}."""
    def describe(features):
        return {f.name: {"shape": _shape(_array(f.type)), "dtype": _dtype(_array(f.type))}
                for f in features}
    d = spec.description
    return {"inputs": describe(d.input), "outputs": describe(d.output),
            "states": describe(d.state)}


def metadata(spec) -> dict:
    return dict(spec.description.metadata.userDefined)


def functions(spec) -> list[str]:
    return [name for name, _ in _blocks(spec)]
