"""ExecuTorch backend: XNNPACK lowering of the captured program into `model.pte`.

Attention runs on ExecuTorch's LLM custom ops (`llama.update_cache`,
`llama.custom_sdpa`), swapped in as a source transform as in ExecuTorch's own Llama
export (executorch_attention.py; so is the tanh GELU, written out because XNNPACK's GELU
is the erf one), every quantized linear
becomes one XNNPACK fully-connected op, and the runner metadata is stored as
constant methods, so `TextLLMRunner(model.pte, tokenizer.json)` runs it directly. The
lowering shares the weights it preprocesses instead of copying them, and packs int4 weights
a block of rows at a time (xnnpack_lowering.py: the same `.pte`, byte for byte).
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path

import torch

from .backend import (BuildResult, LoweringCounts, expected_quantized, release_weights,
                      lowering_counts)
from .xnnpack_lowering import lean_lowering

log = logging.getLogger(__name__)

PTE_NAME = "model.pte"
STAGES = ["quantize", "quant-reference", "capture", "lower", "serialize", "verify"]
_LINEAR_OPS = ("aten.linear.default", "aten.mm.default", "aten.addmm.default")
_DEQUANT_PREFIXES = ("torchao.dequantize_affine", "quantized_decomposed.dequantize")


def build(model, out: Path, ctx) -> BuildResult:
    """Quantize (torchao), capture, lower to XNNPACK, write `model.pte`, verify it. The eager
    model carries the device weights already (torchao's), so nothing is loaded back."""
    from ..quantize import count_quantized_linears, quantize
    from .capture import capture
    from .executorch_attention import custom_op_attention, written_out_tanh_gelu

    st = ctx.stages
    with st("quantize"):
        expected = expected_quantized(model, ctx.quant)
        quantize(model, ctx.quant)
        eager_quantized = count_quantized_linears(model)
    with st("quant-reference"):
        eager = ctx.eager_logits(model)
        ctx.measure_sensitivity(model, eager)
    with st("capture"):
        with custom_op_attention(model), written_out_tanh_gelu(model):
            ep = capture(model, ctx.config.max_seq)
    with st("lower"):
        edge = lower(ep, runner_metadata(model, ctx.config.max_seq, ctx.bos, ctx.eos))
        counts = lowered_op_counts(edge, expected).check("lowered program")
    with st("serialize"):
        to_pte(edge, out / PTE_NAME)
        drop_constants(ep, *(edge.exported_program(m) for m in edge.methods))
        del edge, ep
        forget_lowering_memo()
        if ctx.config.free_weights:   # its logits are computed: the runtime checks need neither
            release_weights(model)
    with st("verify"):
        gates = ctx.verify(runtime_step(out / PTE_NAME), eager, "the exported .pte")
    return BuildResult(files=[PTE_NAME], counts=counts, gates=gates, runtime={
        "method": "forward", "inputs": ["tokens[1,S] int64", "input_pos[1] int64"],
        "outputs": ["logits[1,1,vocab] float32"]}, quantized_linears_eager=eager_quantized)


def load_runtime_ops() -> None:
    """Register ExecuTorch's LLM custom ops and quantized kernels in this process."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
    import executorch.kernels.quantized  # noqa: F401


def runner_metadata(model, max_seq: int, bos: int, eos: list[int]) -> dict:
    cfg = model.config
    return {"get_max_seq_len": max_seq, "get_max_context_len": max_seq,
            "get_n_layers": cfg.num_hidden_layers, "get_vocab_size": cfg.vocab_size,
            "use_kv_cache": True, "use_sdpa_with_kv_cache": True, "enable_dynamic_shape": True,
            "get_bos_id": bos, "get_eos_ids": list(eos)}


def lower(ep: torch.export.ExportedProgram, metadata: dict):
    """Edge dialect + XNNPACK partitioning; returns the EdgeProgramManager."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackDynamicallyQuantizedPartitioner, XnnpackPartitioner)
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    load_runtime_ops()
    with warnings.catch_warnings(), lean_lowering():
        warnings.simplefilter("ignore")
        return to_edge_transform_and_lower(
            ep, partitioner=[XnnpackDynamicallyQuantizedPartitioner(), XnnpackPartitioner()],
            compile_config=EdgeCompileConfig(_check_ir_validity=False, _skip_dim_order=True),
            constant_methods=metadata)


def to_pte(edge, path: Path) -> int:
    """Serialize the lowered program to `path`; returns its size in bytes."""
    from executorch.exir import ExecutorchBackendConfig
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = edge.to_executorch(ExecutorchBackendConfig(
            extract_delegate_segments=True, do_quant_fusion_and_const_prop=True,
            memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
            sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass()))
    with open(path, "wb") as f:
        program.write_to_file(f)
    drop_constants(*(program.exported_program(m) for m in program.methods))
    return path.stat().st_size


def drop_constants(*programs: torch.export.ExportedProgram) -> None:
    """Empty the constant tables of `programs` and of every partition lowered from them (the
    graphs stay). ExecuTorch's lowering leaves references to these programs that outlive the
    objects we hold, and through them every quantized weight stayed alive during the runtime
    check (1B: 1.3 GB of int8 codes); the `.pte` is written, so nothing needs them."""
    seen: set[int] = set()

    def clear(ep) -> None:
        if id(ep) in seen:
            return
        seen.add(id(ep))
        ep.state_dict.clear()
        ep.constants.clear()
        for module in ep.graph_module.modules():     # a LoweredBackendModule keeps its own
            for value in list(vars(module).values()):
                if isinstance(value, torch.export.ExportedProgram):
                    clear(value)

    for ep in programs:
        clear(ep)


def forget_lowering_memo() -> None:
    """Drop the references that outlive a lowering and keep its partitions alive, each with
    its packed weights (as named data), for the rest of the process, where a second
    backend was then built beside them (1B ios, benchmarks/results/export_cost-1b-ios*.json):
    ExecuTorch's memo of node comparisons (`exir.backend.utils.is_same_node`, an unbounded
    lru_cache keyed on graph nodes), each partitioner module's `why` logger
    (`WhyNoPartition`, which holds the last node it rejected), and torch's fake-tensor
    dispatch caches (`FakeTensorMode.cache` and every live `ShapeEnv`'s
    `fake_tensor_cache`, whose keys hold the lowered modules the tracer saw). Nothing
    needs them once the `.pte` is written; they are caches, refilled on the next trace."""
    import gc
    import sys

    from executorch.exir.backend import utils
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    getattr(utils.is_same_node, "cache_clear", lambda: None)()
    for name, module in list(sys.modules.items()):
        if name.startswith("executorch.") and module is not None:
            for value in list(vars(module).values()):
                if isinstance(value, utils.WhyNoPartition):
                    value.node = None
    getattr(FakeTensorMode, "cache_clear", lambda: None)()
    for env in (o for o in gc.get_objects() if isinstance(o, ShapeEnv)):
        getattr(env, "fake_tensor_cache", {}).clear()
    gc.collect()


def lowered_op_counts(edge, expected: dict[str, int]) -> LoweringCounts:
    """Linear ops inside XNNPACK delegates, and which take a quantized weight (by the
    module each was captured from); `expected`: expected_quantized(model, quant)."""
    gm = edge.exported_program().graph_module
    delegates = [m for n, m in gm.named_children() if n.startswith("lowered_module")]
    linear = 0
    quantized, bits = [], Counter()
    for lowered in delegates:
        for node in lowered.original_module.graph.nodes:
            if node.op != "call_function" or _op_name(node) not in _LINEAR_OPS:
                continue
            linear += 1
            weight = node.args[1] if _op_name(node) != "aten.addmm.default" else node.args[2]
            b = _dequant_bits(weight)
            if b:
                quantized.append(_module_name(node))
                bits[f"int{b}"] += 1
    portable = sum(1 for n in gm.graph.nodes
                   if n.op == "call_function" and _op_name(n) in _LINEAR_OPS)
    return lowering_counts(expected, quantized, linear + portable, bits,
                           delegates=len(delegates), delegated_linear_ops=linear,
                           non_delegated_linear_ops=portable)


def _module_name(node) -> str | None:
    """The module a captured op came from (torch.export's nn_module_stack), if recorded."""
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    return stack[-1][0] if stack else None


def _op_name(node) -> str:
    target = node.target
    name = getattr(target, "_name", None) or getattr(target, "__name__", str(target))
    name = name.replace("::", ".")
    return name if name.count(".") >= 2 else f"{name}.default"


def _dequant_bits(node) -> int | None:
    """Bit width if `node` (a linear's weight, possibly behind a permute) is dequantized."""
    for _ in range(3):
        if not hasattr(node, "op") or node.op != "call_function":
            return None
        name = _op_name(node)
        if name.startswith(_DEQUANT_PREFIXES):
            qmin, qmax = _qrange(node)
            return int(round(torch.log2(torch.tensor(float(qmax - qmin + 1))).item()))
        node = node.args[0]
    return None


def _qrange(node) -> tuple[int, int]:
    kw = dict(node.kwargs)
    args = list(node.args)
    qmin = kw.get("quant_min", args[5] if len(args) > 5 else -128)
    qmax = kw.get("quant_max", args[6] if len(args) > 6 else 127)
    return int(qmin), int(qmax)


def runtime_step(pte_path: Path):
    """A verify Step running the `.pte` through the ExecuTorch runtime (fresh state)."""
    from executorch.runtime import Runtime

    load_runtime_ops()
    method = Runtime.get().load_program(Path(pte_path)).load_method("forward")

    def step(tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return method.execute([tokens, pos])[0].reshape(-1).float()
    return step


def versions() -> dict:
    import executorch.version as v
    return {"executorch": v.__version__}
