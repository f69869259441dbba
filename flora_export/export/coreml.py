"""Core ML backend: a stateful `.mlpackage` (iOS 18 ML program) with int4 block weights.

The decoder is captured with `torch.export` on a `SlicedKV` cache (coreml_attention.py): the KV
cache lives in two Core ML **states** (`keyCache`, `valueCache`, fp16, [layers, 1,
kv_heads, max_seq, head_dim]) that every call updates in place with slice writes whose
bounds come from input shapes. Inputs are `inputIds` [1, S] and `causalMask` [1, 1, S, T]
(additive: 0 where a query may attend, -inf elsewhere; T = tokens in the cache after this
call, so T - S is the position of the first new token); output `logits` [1, 1, vocab] of
the last token. One function serves prefill (S > 1) and decode (S = 1).

Weights: int4 per block of 32 input columns for `8da4w`, int8 per output channel for
`int8`, made in torch on the `.pte`'s grid (coreml_weights.py) and converted from
`torchao::dequantize_affine` ops; every projection and the output head stay one `linear`
op fed by one `constexpr_blockwise_shift_scale`. Core ML has no dynamic activation quantization:
activations run in fp16 (the compute precision phones use, also for `fp32` weights).

The fp32 program is captured (stored weights upcast in it) and checked against the eager
model first; the package is then converted from the codes (or, for `fp32`, from an fp16
copy of the weights), so the converter never holds a float32 constant.
Core ML predictions need macOS, so on Linux the package is checked by its spec (inputs,
outputs, states, op counts) and the captured torch program by numbers; the package's own
parity runs on a Mac with `python -m flora_export.export.coreml_parity OUT`.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import FloraError
from ..model.storage import CodedEmbedding, CodedLinear, plain_all, widen_small
from . import coreml_spec, coreml_weights
from .backend import (BuildResult, LoweringCounts, expected_quantized, lowering_counts,
                      release_weights)
from .coreml_attention import SlicedKV

log = logging.getLogger(__name__)

PACKAGE = "model.mlpackage"
REFERENCE = "coreml_reference.safetensors"
STAGES = ["coreml-capture", "coreml-quantize", "coreml-convert", "coreml-save",
          "coreml-reference"]
INPUTS, OUTPUTS, STATES = ("inputIds", "causalMask"), ("logits",), ("keyCache", "valueCache")
PARITY_COMMAND = "python -m flora_export.export.coreml_parity"
MAX_SEQ_LIMIT = 32767           # Core ML shape arithmetic runs in int16 with fp16 compute


class CoreMLDecoder(nn.Module):
    """(inputIds [1, S], causalMask [1, 1, S, T]) -> logits [1, 1, V]; the KV cache is
    held in two buffers that Core ML turns into states. `last_only=False` ([1, S, V]) is
    for the checked torch program, which then scores a chunk of positions in one call."""

    def __init__(self, model: nn.Module, max_seq: int, dtype=torch.float32,
                 last_only: bool = True):
        super().__init__()
        self.model, self.last_only = model, last_only
        shape = cache_shape(model.config, max_seq)
        self.register_buffer("keyCache", torch.zeros(shape, dtype=dtype))
        self.register_buffer("valueCache", torch.zeros(shape, dtype=dtype))

    def forward(self, inputIds: torch.Tensor, causalMask: torch.Tensor) -> torch.Tensor:  # noqa: N803
        kv = SlicedKV(self.keyCache, self.valueCache, causalMask)
        return self.model(inputIds, last_only=self.last_only, cache=kv)


def cache_shape(cfg, max_seq: int) -> tuple[int, ...]:
    return (cfg.num_hidden_layers, 1, cfg.num_key_value_heads, max_seq, cfg.head_dim)


def causal_mask(seq: int, start: int, dtype=torch.float32) -> torch.Tensor:
    """The additive mask [1, 1, seq, start + seq] for tokens at positions start..start+seq-1."""
    total = start + seq
    allowed = torch.arange(total)[None, :] <= torch.arange(start, total)[:, None]
    zero = torch.zeros((), dtype=dtype)
    return torch.where(allowed, zero, torch.tensor(float("-inf"), dtype=dtype))[None, None]


def capture(model: nn.Module, max_seq: int, last_only: bool = True
            ) -> torch.export.ExportedProgram:
    """Export the decoder with dynamic S and T.

    torch.export guards S, T < max_seq (a contiguity special case of a full-length cache
    slice); the Core ML inputs declare the full range [1, max_seq], which the converted
    program's slices handle.
    """
    wrapper = CoreMLDecoder(model, max_seq, last_only=last_only).eval()  # fp32 buffers; states fp16
    seq = torch.export.Dim("query_length", min=1, max=max_seq - 1)
    total = torch.export.Dim("end_step_dim", min=1, max=max_seq - 1)
    example = (torch.zeros(1, 2, dtype=torch.int32), causal_mask(2, 3))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(wrapper, example, dynamic_shapes=({1: seq}, {2: seq, 3: total}),
                                   strict=False)


class ProgramStep:
    """A verify Step running a captured torch program (fresh cache buffers; captured with
    last_only=False): step(tokens, pos) gives the last position's logits, extend(tokens,
    fed) the logits of every position of tokens[:, fed:] in one call, continuing the cache,
    as the eager reference scores its extension (verify.eager_extension)."""

    def __init__(self, ep: torch.export.ExportedProgram):
        self.module = ep.module()

    def _logits(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        mask = causal_mask(tokens.shape[1], start)
        with torch.no_grad():
            return self.module(tokens.to(torch.int32), mask)[0].float()

    def __call__(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self._logits(tokens, int(pos[0]))[-1]

    def extend(self, tokens: torch.Tensor, fed: int) -> list[torch.Tensor]:
        return list(self._logits(tokens[:, fed:], fed)) if fed < tokens.shape[1] else []


def program_step(ep: torch.export.ExportedProgram) -> ProgramStep:
    return ProgramStep(ep)


def convert(ep: torch.export.ExportedProgram, cfg, max_seq: int, tied: bool = False):
    """ct.convert to an iOS 18 ML program with fp16 compute and fp16 states (not loaded);
    coded weights (coreml_weights) become constexpr_blockwise_shift_scale ops named after
    their weight."""
    import coremltools as ct

    program = ep.run_decompositions({})
    coreml_weights.name_weights(program, tied)
    states = [ct.StateType(wrapped_type=ct.TensorType(shape=cache_shape(cfg, max_seq),
                                                      dtype=np.float16), name=n) for n in STATES]
    length, total = ct.RangeDim(1, max_seq), ct.RangeDim(1, max_seq)
    with warnings.catch_warnings(), coreml_weights.shared_codes():
        warnings.simplefilter("ignore")
        return ct.convert(
            program, convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS18,
            compute_precision=ct.precision.FLOAT16, skip_model_load=True,
            inputs=[ct.TensorType(name=INPUTS[0], shape=(1, length), dtype=np.int32),
                    ct.TensorType(name=INPUTS[1], shape=(1, 1, length, total), dtype=np.float16)],
            outputs=[ct.TensorType(name=OUTPUTS[0], dtype=np.float16)], states=states)


def convert_from_fp16(model: nn.Module, cfg, max_seq: int):
    """Convert from fp16 weights (what the package stores; the converter then holds no fp32
    copies), or from the package's codes where coreml_weights gave the model them. Returns
    (mlmodel, source dtype); the model is left fp16 (its weights rounded; `storage.widen_small`
    brings the rest back to float32). A graph that coremltools mistypes in fp16 (unmerged
    LoRA's zero segments) is converted from those weights in fp32 instead."""
    tied = model.lm_head.weight is model.embed_tokens.weight
    plain_all(model.half())                # one fp16 program: every op computes in fp16
    try:
        return convert(capture(model, max_seq), cfg, max_seq, tied), "float16"
    except ValueError as e:
        log.warning("fp16 conversion failed (%s); converting from fp32", str(e)[:200])
    model.float()
    return convert(capture(model, max_seq), cfg, max_seq, tied), "float32"


def weight_quantization(quant) -> dict | None:
    """What the package's weights become for a QuantConfig (recorded in the manifest)."""
    if not quant.quantizes:
        return None
    if quant.weight_bits == 4:
        return {"dtype": "int4", "granularity": "per_block", "block_size": quant.group_size or 32,
                "mode": "symmetric", "grid": "the .pte's (torchao)",
                "applies_to": "every linear and the embedding"}
    return {"dtype": "int8", "granularity": "per_channel", "block_size": None,
            "mode": "symmetric", "grid": "the .pte's (torchao)",
            "applies_to": "every linear and the embedding"}


def app_metadata(model, max_seq: int, bos: int, eos: list[int], quant) -> dict[str, str]:
    """What an app needs to drive the package, as user-defined metadata (strings)."""
    cfg = model.config
    return {
        "flora.inputs": json.dumps({
            INPUTS[0]: "int32 [1, S] token ids of this call (S <= max_context)",
            INPUTS[1]: "float16 [1, 1, S, T] additive causal mask: 0 where a query may attend, "
                       "-inf elsewhere; T = tokens in the cache after this call"}),
        "flora.outputs": json.dumps({OUTPUTS[0]: "float16 [1, 1, vocab] logits of the last token"}),
        "flora.states": json.dumps({n: list(cache_shape(cfg, max_seq)) for n in STATES}),
        "flora.max_context": str(max_seq), "flora.vocab_size": str(cfg.vocab_size),
        "flora.bos_id": str(bos), "flora.eos_ids": json.dumps(list(eos)),
        "flora.tokenizer": "tokenizer.json", "flora.weights": quant.name,
        "flora.compute_precision": "float16",
    }


def set_metadata(mlmodel, meta: dict[str, str]) -> None:
    mlmodel.user_defined_metadata.update(meta)
    mlmodel.short_description = ("Llama-family decoder exported by flora-export: stateful KV "
                                 "cache (keyCache/valueCache), one call per prefill or decode step")
    mlmodel.input_description[INPUTS[0]] = "token ids [1, S]"
    mlmodel.input_description[INPUTS[1]] = "additive causal mask [1, 1, S, T]"
    mlmodel.output_description[OUTPUTS[0]] = "last-token logits [1, 1, vocab]"


def check_package(path: Path, model: nn.Module, max_seq: int, expected: dict[str, int]
                  ) -> tuple[LoweringCounts, dict]:
    """Reopen the saved package and check its interface and op counts; returns the counts
    and the interface."""
    cfg = model.config
    spec = coreml_spec.load_spec(path)
    io = coreml_spec.interface(spec)
    want_states = {n: {"shape": list(cache_shape(cfg, max_seq)), "dtype": "float16"}
                   for n in STATES}
    problems = []
    if tuple(io["inputs"]) != INPUTS or tuple(io["outputs"]) != OUTPUTS:
        problems.append(f"inputs {list(io['inputs'])} / outputs {list(io['outputs'])}")
    if io["states"] != want_states:
        problems.append(f"states {io['states']}")
    if io["inputs"][INPUTS[1]]["shape"][3] != [1, max_seq]:
        problems.append(f"mask shape {io['inputs'][INPUTS[1]]['shape']}")
    ops = coreml_spec.op_counts(spec)
    if ops["states_written"] != len(STATES):
        problems.append(f"{ops['states_written']} state writes")
    if problems:
        raise FloraError(f"the saved Core ML package is not what was converted: {'; '.join(problems)}",
                         "report this with the manifest inputs")
    owners = weight_owners(model)
    if model.lm_head.weight is model.embed_tokens.weight:   # one constant: a linear is the head
        owners = {k: "lm_head" if v == "embed_tokens" else v for k, v in owners.items()}
    counts = lowering_counts(
        expected, [owners.get(_weight_name(n)) for n in ops["quantized_linear_weights"]],
        ops["linear_ops"], ops["quantized_weight_bits"],
        quantized_weight_ops=ops["quantized_weight_ops"], states_written=ops["states_written"],
        ops=ops["ops"], quantized_linear_weights=ops["quantized_linear_weights"],
        functions=coreml_spec.functions(spec))
    return counts.check("Core ML package"), io


def package_codes(mlmodel) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(const name, int8 codes [N, K], fp16 scales [N, blocks]) of every quantized constant
    of a converted model, as the package stores them: the ML program's own arrays, shared
    (no copy), so they outlive release()."""
    for fn in mlmodel._mil_program.functions.values():
        for op in fn.operations:
            if op.op_type not in coreml_spec.QUANT_OPS:
                continue
            if op.op_type != "constexpr_blockwise_shift_scale" or op.offset is not None \
                    or op.data.val.dtype != np.int8 or op.data.val.ndim != 2:
                raise FloraError(f"the Core ML constant {op.outputs[0].name} is a {op.op_type} "
                                 "that is not symmetric int8/int4 codes with block scales",
                                 "report this with the manifest inputs")
            yield op.outputs[0].name, torch.from_numpy(op.data.val), torch.from_numpy(op.scale.val)


def release(mlmodel) -> None:
    """Free the in-memory ML program of a saved model now: it holds every weight constant
    (the int4 codes, and each dequantized value once materialized) in a graph of cycles
    that only a collection frees."""
    import gc

    mlmodel._mil_program = None
    gc.collect()


def _weight_name(const: str) -> str:
    """The torch parameter a package constant came from (converter suffixes removed)."""
    return const.removesuffix("_cast_fp16").removesuffix("_quantized").removesuffix("_to_fp16")


def weight_owners(model: nn.Module) -> dict[str, str]:
    """Package weight name (converter suffixes removed) -> the module it is the weight of."""
    return {"p_model_" + fqn.replace(".", "_") + "_weight": fqn
            for fqn, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Embedding))}


def hold_package_codes(model: nn.Module, codes: Iterable[tuple[str, torch.Tensor, torch.Tensor]],
                       expected: int = 0) -> int:
    """Give the eager model the package's quantized weights as stored (storage.CodedLinear /
    CodedEmbedding over the codes and scales, 1 byte a parameter), dequantized as the device
    does it (in fp16), so the reference computes exactly what the package does; a tied head
    and embedding (one constant in the package) hold one set of codes. Returns how many
    linears were given codes; fails when fewer than `expected`."""
    owners, tied = weight_owners(model), model.lm_head.weight is model.embed_tokens.weight
    linears = 0
    for name, data, scales in codes:
        fqn = owners.get(_weight_name(name))
        if fqn is None:
            continue
        for target in (("lm_head", "embed_tokens") if tied and fqn in ("lm_head", "embed_tokens")
                       else (fqn,)):
            module = model.get_submodule(target)
            coded = CodedEmbedding if isinstance(module, nn.Embedding) else CodedLinear
            coded.hold(module, data, scales, rounding=torch.float16)
            linears += coded is CodedLinear
    if linears < expected:
        raise FloraError(f"only {linears} of the Core ML package's {expected} quantized weights "
                         "map to the model's linears", "report this with the manifest inputs")
    return linears


def write_reference(path: Path, ctx, reference: list[torch.Tensor]) -> None:
    """The tokens and eager logits the macOS parity check compares the package with."""
    from .reference import save_reference

    save_reference(path, ctx.tokens, ctx.prompt_len,
                   {"reference_logits": torch.stack(reference),
                    "fp32_logits": torch.stack(ctx.fp32_logits)}, steps=str(ctx.steps))


def _check_limits(model, ctx) -> None:
    from ..quantize import check_quantizable

    if ctx.config.max_seq > MAX_SEQ_LIMIT:
        raise FloraError(f"max_seq {ctx.config.max_seq} is above the Core ML export's limit "
                         f"{MAX_SEQ_LIMIT}", f"pass --max-seq {MAX_SEQ_LIMIT} or less")
    check_quantizable(model, ctx.quant)


def build(model: nn.Module, out: Path, ctx) -> BuildResult:
    """Capture, check the torch program, convert, quantize, save, check the package; the
    package's own gates run on macOS (coreml_parity), the quality gate is estimated here."""
    st, cfg, max_seq = ctx.stages, model.config, ctx.config.max_seq
    _check_limits(model, ctx)
    expected = expected_quantized(model, ctx.quant)
    with st("coreml-capture"):               # stored weights upcast a block at a time, as eagerly
        program = ctx.verify(program_step(capture(model, max_seq, last_only=False)),
                             ctx.fp32_logits, "the captured Core ML torch program",
                             program_only=True)
    if ctx.quant.quantizes:
        with st("coreml-quantize"):
            coreml_weights.code_weights(model, ctx.quant.weight_bits, ctx.quant.group_size)
    with st("coreml-convert"):
        mlmodel, source = convert_from_fp16(model, cfg, max_seq)
        coreml_weights.uncode_weights(model)           # the codes are in the package now
    with st("coreml-save"):
        set_metadata(mlmodel, app_metadata(model, max_seq, ctx.bos, ctx.eos, ctx.quant))
        mlmodel.save(str(out / PACKAGE))
        counts, interface = check_package(out / PACKAGE, model, max_seq, expected)
    with st("coreml-reference"):
        codes = list(package_codes(mlmodel)) if ctx.quant.quantizes else []
        release(mlmodel)                 # its ML program (cyclic), all but the codes
        del mlmodel
        widen_small(model)               # norms, biases, tables: back to float32
        if codes:
            hold_package_codes(model, codes, counts.expected_quantized_linear_ops)
            del codes
        reference = ctx.eager_logits(model) if ctx.quant.quantizes else ctx.fp32_logits
        write_reference(out / REFERENCE, ctx, reference)
        if ctx.config.free_weights:      # its logits are computed: nothing runs it again
            release_weights(model)
    gates = ctx.defer(program, reference, "the Core ML package's weights", needs="macOS",
                      command=PARITY_COMMAND, reference=REFERENCE,
                      how=f"{PARITY_COMMAND} OUT_DIR  (on macOS 15+, pip install -e \".[coreml]\")")
    return BuildResult(
        files=[PACKAGE, REFERENCE], counts=counts, gates=gates,
        extra={"coreml": {"package": PACKAGE, "minimum_deployment_target": "iOS18",
                          "compute_precision": "float16", "state_dtype": "float16",
                          "converted_from": source,
                          "weights": weight_quantization(ctx.quant),
                          "activations": "float16 (Core ML has no dynamic activation "
                                         "quantization)",
                          "interface": interface, "metadata": app_metadata(
                              model, max_seq, ctx.bos, ctx.eos, ctx.quant)}},
        runtime={"coreml": {"package": PACKAGE, "inputs": list(INPUTS),
                            "outputs": list(OUTPUTS), "states": list(STATES),
                            "max_context": max_seq, "tokenizer": "tokenizer.json"}})


def versions() -> dict:
    import coremltools
    return {"coremltools": coremltools.__version__}
