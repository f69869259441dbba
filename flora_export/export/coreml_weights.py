"""Core ML weights quantized in torch, before conversion, on the `.pte`'s grid.

The package's quantized weights are made here, one module at a time, and the converter
is handed a program whose every quantized weight is already integer codes and scales:
each linear (and the embedding) computes with `torchao::dequantize_affine(codes, scales)`,
which coremltools turns into one `constexpr_blockwise_shift_scale` feeding the `linear`
(or `gather`) op. So no float copy of the model is ever converted (the converter holds 1
byte a parameter instead of 2) and coremltools' own quantization pass, which held several
copies of the weights at once, is not run.

The grid is the `.pte`'s (torchao's symmetric grid): per block of `group` input columns
(int4) or per output row (int8) `scale = max|w| / ((qmax - qmin) / 2)` (floored at float32's
smallest normal), `code = clamp(round(w * (1 / scale)), qmin, qmax)`, then, for the int4
blocks, the scale rounded to bf16 as ExecuTorch stores it. The package stores the scales in
fp16 (its compute dtype; a bf16 scale in fp16's range is exact), so its int4 codes and
scales are the `.pte`'s bit for bit.

The converter is handed the codes without a copy (`shared_codes`): coremltools' own
`dequantize_affine` conversion copies each code matrix (twice, one copy kept), so the
converted program would hold a second set of codes beside the model's for as long as
the conversion runs (1 byte a parameter more at the `coreml-convert` peak).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..model.storage import row_blocks
from ..quantize import quantizable_linears

SCALE_DTYPE = torch.float16          # the package's compute dtype


def symmetric_codes(weight: torch.Tensor, bits: int, group: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] (any float dtype) -> (int8 codes [N, K], float32 scales [N, K/block])
    on torchao's symmetric grid; block = `group`, or K for one scale per row (group 0).
    Computed a block of rows at a time (no float32 copy of a large table)."""
    n, k = weight.shape
    block = group or k
    if k % block:
        raise ValueError(f"{k} input columns are not a multiple of the group {block}")
    qmax = 2 ** (bits - 1) - 1
    qmin = -qmax - 1
    codes = torch.empty(n, k, dtype=torch.int8)
    scales = torch.empty(n, k // block, dtype=torch.float32)
    tiny = torch.finfo(torch.float32).tiny
    with torch.no_grad():
        for rows in row_blocks(weight):
            x = weight[rows].to(torch.float32).view(-1, k // block, block)
            scale = (x.abs().amax(-1) / ((qmax - qmin) / 2)).clamp(min=tiny)
            q = (x * (1.0 / scale).unsqueeze(-1)).round_().clamp_(qmin, qmax)
            codes[rows] = q.view(-1, k).to(torch.int8)
            scales[rows] = scale.to(torch.bfloat16).float() if group else scale
    return codes, scales


def _dequantized(module: nn.Module) -> torch.Tensor:
    """One torchao::dequantize_affine of `module`'s codes (the op the converter maps to a
    constexpr_blockwise_shift_scale)."""
    codes, scales = module.codes, module.scales
    return torch.ops.torchao.dequantize_affine(
        codes, [1, codes.shape[1] // scales.shape[1]], scales, None, torch.int8,
        module.qmin, module.qmax, output_dtype=scales.dtype)


class CodedLinear(nn.Linear):
    """An nn.Linear computing with its package codes (capture only; its weight is empty)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _dequantized(self).to(x.dtype), self.bias)


class CodedEmbedding(nn.Embedding):
    """An nn.Embedding gathering from its dequantized package codes (capture only)."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, _dequantized(self), self.padding_idx)


_CODED = {nn.Linear: CodedLinear, nn.Embedding: CodedEmbedding}


def code_weights(model: nn.Module, bits: int, group: int) -> int:
    """Give every quantizable linear of `model` and its embedding package codes in place of
    their weight (each float weight is freed as soon as its codes exist; a tied head and
    embedding share one set of codes). Returns how many modules were coded."""
    targets = [m for _, m in quantizable_linears(model)] + [model.embed_tokens]
    done: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    qmax = 2 ** (bits - 1) - 1
    for m in targets:
        w = m.weight
        if id(w) not in done:
            codes, scales = symmetric_codes(w.detach(), bits, group)
            done[id(w)] = codes, scales.to(SCALE_DTYPE)
        plain = nn.Embedding if isinstance(m, nn.Embedding) else nn.Linear
        m.__class__ = _CODED[plain]
        m.register_buffer("codes", done[id(w)][0], persistent=False)
        m.register_buffer("scales", done[id(w)][1], persistent=False)
        m.qmin, m.qmax = -qmax - 1, qmax
        m.weight = nn.Parameter(torch.empty(0), requires_grad=False)
        del w
    return len(targets)


def uncode_weights(model: nn.Module) -> None:
    """Undo code_weights' classes and free the codes; the weights stay empty until the
    package's are loaded (modules that shared codes, a tied head and embedding, share one
    empty weight, so the tie stays visible)."""
    plain = {v: k for k, v in _CODED.items()}
    empty: dict[int, nn.Parameter] = {}
    for m in model.modules():
        if type(m) in plain:
            m.weight = empty.setdefault(id(m.codes), nn.Parameter(torch.empty(0),
                                                                  requires_grad=False))
            m.__class__ = plain[type(m)]
            del m.codes, m.scales, m.qmin, m.qmax


def name_weights(ep: torch.export.ExportedProgram, tied: bool) -> int:
    """In the captured program, give each dequantize_affine node the name of the weight it
    makes (`p_<module path>_weight_quantized`, the name the converter gives the constexpr
    op and the manifest's counts report), and let a tied embedding and head share one node
    (one constant in the package, named after the head). Returns the nodes left."""
    target = torch.ops.torchao.dequantize_affine.default
    buffers = ep.graph_signature.inputs_to_buffers
    graph = ep.graph_module.graph
    kept: dict[tuple[str, str], torch.fx.Node] = {}
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not target:
            continue
        key = (node.args[0].name, node.args[2].name)
        if key in kept:
            node.replace_all_uses_with(kept[key])
            graph.erase_node(node)
            continue
        kept[key] = node
        owner = buffers[node.args[0].name].removesuffix(".codes")
        if tied and owner.endswith("embed_tokens"):
            owner = owner.removesuffix("embed_tokens") + "lm_head"
        node._rename("p_" + owner.replace(".", "_") + "_weight_quantized")
    ep.graph_module.recompile()
    return len(kept)


@contextlib.contextmanager
def shared_codes() -> Iterator[None]:
    """While converting, turn each `torchao::dequantize_affine` of our codes (int8 storage,
    rank 2, symmetric: no zero point) into a `constexpr_blockwise_shift_scale` whose data
    is a view of the codes (retyped to int4 where the grid is [-8, 7]), not a copy; any
    other dequantize_affine goes to coremltools' own conversion. The registry entries
    are put back on exit."""
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    table = _TORCH_OPS_REGISTRY.name_to_func_mapping
    theirs = table["dequantize_affine"]
    keys = [k for k, f in table.items() if f is theirs]     # with its aliases (torchao::...)
    grids = {(-8, 7): types.nptype_from_builtin(types.int4), (-128, 127): np.int8}

    def convert(context, node):
        inputs = ops._get_inputs(context, node, expected=[7, 8])
        codes, block, scale, zero = (i.val if i is not None else None for i in inputs[:4])
        grid = tuple(int(i.val) for i in inputs[5:7] if i.val is not None)
        if not (grid in grids and zero is None and _row_blocks(codes, block, scale)):
            return theirs(context, node)
        data = codes.view(grids[grid])                    # the same bytes, the package's type
        out = mb.constexpr_blockwise_shift_scale(
            data=data, scale=scale.reshape(codes.shape[0], -1), name=node.name)
        context.add(out, node.name)

    table.update(dict.fromkeys(keys, convert))
    try:
        yield
    finally:
        table.update(dict.fromkeys(keys, theirs))


def _row_blocks(codes, block, scale) -> bool:
    """int8 codes [N, K] in blocks of [1, B] with one scale a block: what code_weights
    makes (the only layout `shared_codes` converts itself)."""
    if codes is None or block is None or scale is None or codes.dtype != np.int8 \
            or codes.ndim != 2 or len(block) != 2 or int(block[0]) != 1:
        return False
    n, k = codes.shape
    b = int(block[1])
    return b > 0 and k % b == 0 and scale.size == n * (k // b)
