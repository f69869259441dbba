"""ONNX backend: `torch.onnx.export` + int4/int8 `MatMulNBits`, an ORT-GenAI model folder.

The decoder is exported with the KV cache as explicit inputs/outputs
(`past_key_values.{i}.key|value` -> `present.{i}.key|value`, [B, Hkv, T, D]) and a
dynamic prompt length; weights go to external data (`model.onnx.data`). The opset-23
graph is then mapped onto ONNX Runtime's fused kernels (onnx_graph.py: one
`GroupQueryAttention` per layer with RoPE inside and a KV buffer shared by past and present; norms as
`SkipSimplifiedLayerNormalization`), and every projection and the output head become
one `MatMulNBits` (block 32, symmetric, accuracy level 4; int4 on torchao's grid, as
the `.pte`); the embedding table stays in the checkpoint's dtype (bf16/fp16/fp32), its
gathered rows cast to float32. The folder also holds
`genai_config.json` and the tokenizer files, so `onnxruntime_genai.Model(folder)` runs
it, and so does a plain `onnxruntime.InferenceSession`.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import FloraError
from ..model.storage import (CapturedEmbedding, CapturedLinear, CodedEmbedding, CodedLinear,
                             RowwiseLinear,
                             StoredEmbedding, StoredLinear, captured_form, exact_narrow)
from ..quantize import is_lora_half, untie_head
from .backend import (BuildResult, LoweringCounts, drop_weights, expected_quantized,
                      load_device_weights, lowering_counts, release_weights)
from .onnx_attention import ExplicitKV, check_mappable, layer_specs
from .onnx_embedding import table_dtype
from .onnx_graph import rewrite_for_ort

log = logging.getLogger(__name__)

MODEL_NAME, DATA_NAME = "model.onnx", "model.onnx.data"
STAGES = ["capture", "quantize", "quant-reference", "verify"]
_WEIGHT_OPS = ("MatMulNBits", "GatherBlockQuantized")
# the modules whose weight a MatMul/Gather node holds (the class in its namespace metadata)
_WEIGHT_MODULES = (nn.Linear, nn.Embedding, RowwiseLinear, StoredLinear, CapturedLinear,
                   StoredEmbedding, CapturedEmbedding)


class OnnxDecoder(nn.Module):
    """(input_ids, attention_mask, past k/v per layer) -> (logits, present k/v per layer)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.n_layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, past):
        past_len = attention_mask.shape[1] - input_ids.shape[1]   # tokens already cached
        kv = ExplicitKV([(past[2 * i], past[2 * i + 1]) for i in range(self.n_layers)], past_len)
        logits = self.model(input_ids, cache=kv)
        return (logits, *[t for pair in kv.present for t in pair])


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    pairs = [(i, kv) for i in range(n_layers) for kv in ("key", "value")]
    return (["input_ids", "attention_mask"] + [f"past_key_values.{i}.{kv}" for i, kv in pairs],
            ["logits"] + [f"present.{i}.{kv}" for i, kv in pairs])


def check_model(model: nn.Module) -> None:
    """Refuse, before any work, a model the GroupQueryAttention mapping cannot run."""
    check_mappable(model)


def capture(model: nn.Module, max_seq: int, path: Path) -> None:
    """Export the decoder to `path` (+ external data); the head is untied first. It
    computes in float32; stored bf16/fp16 weights stay so in the file, each upcast by a
    Cast in the graph (onnx_weights.py resolves them after)."""
    cfg = model.config
    check_mappable(model)
    untie_head(model)                      # a tied head exports as a Transpose
    past = tuple(torch.zeros(1, cfg.num_key_value_heads, 3, cfg.head_dim)
                 for _ in range(2 * cfg.num_hidden_layers))
    example = (torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 5, dtype=torch.long), past)
    seq = torch.export.Dim("sequence_length", min=1, max=max_seq - 1)
    past_len = torch.export.Dim("past_sequence_length", min=0, max=max_seq - 1)
    total = torch.export.Dim("total_sequence_length", min=1, max=max_seq)
    shapes = ({1: seq}, {1: total}, tuple({2: past_len} for _ in past))
    inputs, outputs = io_names(cfg.num_hidden_layers)
    with torch.no_grad(), warnings.catch_warnings(), captured_form(model):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(OnnxDecoder(model).eval(), example, dynamo=True,
                                    dynamic_shapes=shapes, input_names=inputs,
                                    output_names=outputs, optimize=True, verbose=False,
                                    opset_version=23)
    path.with_name(DATA_NAME).unlink(missing_ok=True)
    # streamed from the model's tensors into `model.onnx.data` (`program.model_proto` would
    # first build a second in-memory copy of every weight)
    program.save(str(path), external_data=True)
    del program
    _forget_rewriter_matches()


def _forget_rewriter_matches() -> None:
    """onnxscript's rewrite rules (run by optimize=True) keep the last graph each matched in
    module-level matcher objects; that graph's initializers wrap the model's weights, which
    would then outlive the capture (a whole float32 copy of the model held through the
    quantize stage). Drop those references (onnxscript 0.7's SimplePatternMatcher state,
    re-initialized at the start of every match)."""
    import gc

    try:
        from onnxscript.rewriter._matcher import SimplePatternMatcher
    except ImportError:          # another onnxscript: nothing known to clear
        return
    for obj in gc.get_objects():
        if isinstance(obj, SimplePatternMatcher):
            for attr in ("_current_node", "_graph", "_match"):
                if hasattr(obj, attr):
                    setattr(obj, attr, None)
    gc.collect()


def _save(proto, path: Path) -> None:
    import onnx

    data = path.with_name(DATA_NAME)
    data.unlink(missing_ok=True)   # onnx appends to an existing external-data file
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)


def weight_owners(path: Path) -> dict[str, str]:
    """MatMul/Gather node name -> the module whose weight it holds (from export metadata)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    classes = "|".join(re.escape(f"{c.__module__}.{c.__qualname__}") for c in _WEIGHT_MODULES)
    owners = {}
    for node in proto.graph.node:
        scope = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
        match = re.findall(rf"([\w.]+): (?:{classes})(?=/|$)", scope)
        if node.op_type in ("MatMul", "Gather") and match:
            owners[node.name] = match[-1].removeprefix("model.")
    return owners


def quantize(path: Path, bits: int, block_size: int, accuracy_level: int = 4,
             keep_float: tuple[str, ...] = (), shared_head: str | None = None) -> None:
    """Replace constant-weight MatMuls with N-bit block ops, except the nodes named in
    `keep_float` (unmerged LoRA halves, as on ExecuTorch). 4-bit: on torchao's grid, one
    weight at a time (onnx_grid.py); 8-bit: ONNX Runtime's own quantizer. `shared_head`:
    the output head's MatMul, whose int4 codes the embedding then gathers (4-bit only)."""
    import onnx

    # The embedding is not quantized: ORT's int4 GatherBlockQuantized costs the default
    # ~30 held-out points, and its quantizer has no int8 Gather (docs/verification.md).
    if bits == 4:
        from .onnx_embedding import gather_from_head
        from .onnx_grid import quantize_int4
        from .onnx_weights import DataWriter

        proto = onnx.load(str(path), load_external_data=False)
        if shared_head is not None:
            gather_from_head(proto, shared_head, block_size)
        with DataWriter(path, DATA_NAME) as writer:
            quantize_int4(proto, path.parent, block_size, accuracy_level, writer, keep_float)
            writer.commit(proto)
        return
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from .onnx_weights import widen_stored

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    proto = onnx.load(str(path))
    widen_stored(proto, path.parent)       # ORT's quantizer reads float32 initializers
    quantizer = MatMulNBitsQuantizer(proto, bits=bits, block_size=block_size,
                                     is_symmetric=True, accuracy_level=accuracy_level,
                                     op_types_to_quantize=("MatMul",),
                                     quant_axes=(("MatMul", 0),),
                                     nodes_to_exclude=list(keep_float))
    quantizer.process()
    _save(quantizer.model.model, path)


def widen(path: Path) -> None:
    """Rewrite the saved graph with every stored bf16/fp16 weight as float32 (an unquantized
    export: the graph a float32 capture gives)."""
    import onnx

    from .onnx_weights import DataWriter, move_external, widen_stored

    proto = onnx.load(str(path), load_external_data=False)
    with DataWriter(path, DATA_NAME) as writer:
        widen_stored(proto, path.parent, writer)
        move_external(proto, path.parent, writer)
        writer.commit(proto)


def node_counts(path: Path, owners: dict[str, str], expected: dict[str, int]) -> LoweringCounts:
    """MatMulNBits (the quantized linears, by the module each replaced: `owners`, from
    weight_owners) and float constant-weight MatMuls of the saved graph."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    ops = Counter(n.op_type for n in proto.graph.node)
    nbits = [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
    bits = Counter(f"int{_attr(n, 'bits')}" for n in nbits)
    float_mm = sum(1 for n in proto.graph.node if n.op_type in ("MatMul", "Gemm")
                   and len(n.input) > 1 and n.input[1] in inits)
    return lowering_counts(
        expected, [owners.get(_replaced(n.name)) for n in nbits], len(nbits) + float_mm, bits,
        gather_block_quantized=ops.get("GatherBlockQuantized", 0), nodes=sum(ops.values()),
        opset=max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                  default=None))


def _replaced(name: str) -> str:
    """The MatMul/Gather a quantized node replaced (the quantizer appends `_Q<bits>`)."""
    return re.sub(r"_Q\d+$", "", name)


def _attr(node, name: str):
    import onnx

    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def _drop_weights(model: nn.Module) -> None:
    from ..quantize import quantizable_linears

    drop_weights(lin for _, lin in quantizable_linears(model))


def load_quantized_weights(model: nn.Module, path: Path, owners: dict[str, str],
                           expected: int = 0) -> int:
    """Give the eager model the ONNX file's quantized weights: the reference then computes
    with exactly the int4/int8 weights that ONNX Runtime uses. One weight is read from the
    external data at a time; a MatMulNBits linear keeps its codes and scales as stored
    (storage.CodedLinear, 1 byte a parameter, dequantized a block of rows per call), a
    quantized Gather's table is dequantized and held in bf16/fp16 where that is exact
    (exact_narrow). Returns how many modules were set; fails when fewer than `expected`
    linears got one."""
    import onnx

    from .onnx_grid import initializer_array

    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i for i in proto.graph.initializer}
    tables, coded, by_codes, shared = {}, 0, {}, []
    for node in proto.graph.node:
        if node.op_type not in _WEIGHT_OPS:
            continue
        owner = owners[_replaced(node.name)]
        if node.op_type == "GatherBlockQuantized" and node.input[0] not in inits:
            shared.append((owner, node))           # reads the head's codes (gather_from_head)
            continue
        arrays = [initializer_array(inits[x], path.parent) for x in node.input if x in inits]
        if node.op_type == "MatMulNBits":
            by_codes[node.input[1]] = CodedLinear.hold(model.get_submodule(owner),
                                                       *_matmulnbits_codes(node, *arrays))
            coded += 1
        else:
            tables[owner] = exact_narrow(_dequant_gather(node, *arrays))
    producer = {o: n for n in proto.graph.node for o in n.output}
    for owner, node in shared:                     # the same codes and scales, held once
        head = by_codes[producer[node.input[0]].input[0]]
        CodedEmbedding.hold(model.get_submodule(owner), head.codes, head.scales)
    del proto, inits
    if coded < expected:
        raise FloraError(f"only {coded} of the ONNX model's {expected} quantized weights map "
                         "to the model's linears", "report this with the manifest inputs")
    return coded + load_device_weights(model, tables, 0, "ONNX model")


def _matmulnbits_codes(node, packed: np.ndarray, scales: np.ndarray, *zp
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """MatMulNBits B [N, blocks, blob] (+ scales [N, blocks], symmetric: no zero points)
    -> (int8 codes [N, blocks * block], scales [N, blocks], bf16/fp16 where exact)."""
    if zp:
        raise FloraError(f"MatMulNBits {node.name} has zero points; this export writes "
                         "symmetric weights only", "report this with the manifest inputs")
    bits, n = _attr(node, "bits"), _attr(node, "N")
    q = torch.from_numpy(packed.reshape(n, -1).copy())
    if bits == 4:
        q = torch.stack([q & 0xF, q >> 4], dim=-1).reshape(n, -1)
    codes = q.to(torch.int16).sub_(1 << (bits - 1)).to(torch.int8)
    return codes, exact_narrow(torch.from_numpy(scales.reshape(n, -1).copy()))


def _dequant_gather(node, data: np.ndarray, scales: np.ndarray, *zp) -> torch.Tensor:
    """GatherBlockQuantized data [V, D] (signed, quantized along D) -> weight [V, D]."""
    v, d = data.shape
    w = torch.from_numpy(data.astype(np.int8)).float()
    w.view(v, -1, _attr(node, "block_size")).mul_(torch.tensor(scales).reshape(v, -1, 1))
    return w


def runtime_step(path: Path, n_layers: int, n_kv: int, head_dim: int, max_seq: int,
                 threads: int = 0):
    """A verify Step running the model in ONNX Runtime, holding its own KV buffer (shared
    between past and present, as ORT-GenAI runs it)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inputs, _ = io_names(n_layers)
    past = [np.zeros((1, n_kv, max_seq, head_dim), np.float32) for _ in range(2 * n_layers)]

    def step(tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        total = int(pos[0]) + tokens.shape[1]
        feeds = dict(zip(inputs, [tokens.numpy(), np.ones((1, total), np.int64), *past]))
        outs = sess.run(None, feeds)
        past[:] = outs[1:]
        return torch.from_numpy(outs[0][0, -1]).float()
    return step


def genai_config(model: nn.Module, max_seq: int, bos: int, eos: list[int]) -> dict:
    """ORT-GenAI's config for this decoder (one KV buffer of `max_seq` shared by past and
    present, as GroupQueryAttention expects)."""
    cfg = model.config
    inputs, outputs = io_names(1)
    return {
        "model": {
            "type": "llama", "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos[0],
            "vocab_size": cfg.vocab_size, "context_length": max_seq,
            "decoder": {
                "filename": MODEL_NAME, "session_options": {"log_id": "flora-export",
                                                            "provider_options": []},
                "head_size": cfg.head_dim, "hidden_size": cfg.hidden_size,
                "num_attention_heads": cfg.num_attention_heads,
                "num_hidden_layers": cfg.num_hidden_layers,
                "num_key_value_heads": cfg.num_key_value_heads,
                "inputs": {"input_ids": inputs[0], "attention_mask": inputs[1],
                           "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": outputs[0], "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "max_length": max_seq, "min_length": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": True,
                   "repetition_penalty": 1.0, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
                   "early_stopping": True, "length_penalty": 1.0, "diversity_penalty": 0.0,
                   "no_repeat_ngram_size": 0},
    }


def write_genai_files(out: Path, model: nn.Module, max_seq: int, bos: int, eos: list[int]) -> None:
    (out / "genai_config.json").write_text(json.dumps(genai_config(model, max_seq, bos, eos),
                                                      indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_seq,
         "bos_token": None, "eos_token": None}, indent=2))


def versions() -> dict:
    import onnx
    import onnxruntime

    out = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        import onnxruntime_genai
        out["onnxruntime_genai"] = onnxruntime_genai.__version__
    except ImportError:
        pass
    return out


def build(model: nn.Module, out: Path, ctx) -> BuildResult:
    """Export, quantize to MatMulNBits, verify in ONNX Runtime, write the ORT-GenAI files."""
    st, cfg, path = ctx.stages, model.config, out / MODEL_NAME
    expected = expected_quantized(model, ctx.quant)
    with st("capture"):                    # in the stored dtype: no float32 copy of the model
        capture(model, ctx.config.max_seq, path)
        owners = weight_owners(path)
        rewrite_for_ort(path, layer_specs(model))
    # the head's MatMul, when the embedding is to read its codes (onnx_embedding.py)
    shared_head = next((node for node, owner in owners.items() if owner == "lm_head"),
                       None) if ctx.config.shared_embedding else None
    eager, qinfo = ctx.fp32_logits, None
    if ctx.quant.quantizes:
        bits, block = ctx.quant.weight_bits, ctx.quant.group_size or 32
        qinfo = {"op": "MatMulNBits", "bits": bits, "block_size": block, "symmetric": True,
                 "accuracy_level": 4,
                 "embedding": ("int4, the output head's codes" if shared_head
                               else table_dtype(path)),
                 "grid": "torchao" if bits == 4 else "onnxruntime"}
        with st("quantize"):
            _drop_weights(model)           # refilled from the file below: frees one copy
            quantize(path, bits, block, keep_float=tuple(
                node for node, owner in owners.items() if is_lora_half(owner)),
                shared_head=shared_head)
            counts = node_counts(path, owners, expected).check("ONNX model")
        with st("quant-reference"):
            load_quantized_weights(model, path, owners, counts.expected_quantized_linear_ops)
            eager = ctx.eager_logits(model)
    else:
        widen(path)
        counts = node_counts(path, owners, expected).check("ONNX model")
    if ctx.config.free_weights:            # the runtime checks need only the logits
        release_weights(model)
    with st("verify"):
        step = runtime_step(path, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim,
                            ctx.config.max_seq)
        gates = ctx.verify(step, eager, "the exported ONNX model")
    write_genai_files(out, model, ctx.config.max_seq, ctx.bos, ctx.eos)
    return BuildResult(
        files=[MODEL_NAME, DATA_NAME, "genai_config.json", "tokenizer_config.json"],
        counts=counts, gates=gates, extra={"onnx_quantization": qinfo},
        runtime={"inputs": io_names(cfg.num_hidden_layers)[0][:2] + [
            "past_key_values.{i}.key|value [1, kv_heads, past, head_dim]"],
            "outputs": ["logits [1, S, vocab]", "present.{i}.key|value"]})
