"""Weights stored narrower than the model computes: 2 bytes a parameter, float32 math.

Published checkpoints store their matrices in bf16 (or fp16). Loading them into float32
doubles the memory an export needs before any work starts (a 3B model: 13 GB instead of
6.4 GB). Instead, a checkpoint's bf16/fp16 linear and embedding weights stay in that dtype
in memory, and the module computes in float32 by upcasting its weight on each call: the
upcast is exact, so the model computes exactly the function a float32 copy would (the
verification reference and every gate are unchanged), at half the memory.

`StoredLinear` / `StoredEmbedding` are `nn.Linear` / `nn.Embedding` whose weight dtype is
narrower than their compute dtype; `mark()` gives a module the class its weight calls for,
so a module's class always says which it is. `widen()` turns one module back into a plain
float32 one (the quantize stage does this one module at a time, so the float32 copy of the
whole model never exists); `widen_all()` does it to the whole model, for training the
base weights. The ONNX capture keeps the stored dtype instead (`captured_form`: the
program upcasts each weight); Core ML converts from the package's codes
(export/coreml_weights.py) or, unquantized, from an all-fp16 model (`plain_all`).
Norms and biases are small and always kept in the compute dtype.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

COMPUTE_DTYPE = torch.float32
NARROW_DTYPES = (torch.bfloat16, torch.float16)


BLOCK_NUMEL = 1 << 24    # a larger weight is widened in blocks of rows (<= 64 MB each)


def row_blocks(weight: torch.Tensor, multiple: int = 1) -> list[slice]:
    """Slices of `weight`'s rows, each block <= BLOCK_NUMEL elements (a multiple of
    `multiple` rows), covering all rows; one slice when the weight is small."""
    rows = len(weight)
    step = max(multiple, BLOCK_NUMEL // max(1, math.prod(weight.shape[1:])) // multiple * multiple)
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


class Scratch:
    """One reusable float32 buffer of up to BLOCK_NUMEL elements (64 MB) for the blocks a
    call widens or dequantizes. A fresh block-sized allocation on every call is mapped
    anew and page-faulted in, which took 4-5 times the widening itself here (a 16M-element
    bf16 block: 40 ms allocated fresh, 8.5 ms copied into a kept buffer), and an eager
    decode step widens every weight of the model. Not used where autograd would keep the
    block for a backward pass (the next block overwrites it). One buffer per thread."""

    def __init__(self):
        self._local = threading.local()

    def release(self) -> None:
        """Drop this thread's buffer (the next block allocates it again)."""
        self._local.buffer = None

    def usable(self, *tensors: torch.Tensor) -> bool:
        return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))

    def get(self, shape: tuple[int, ...]) -> torch.Tensor:
        n = math.prod(shape)
        if n > BLOCK_NUMEL:
            return torch.empty(shape, dtype=COMPUTE_DTYPE)
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or buffer.numel() < n:
            buffer = self._local.buffer = torch.empty(
                BLOCK_NUMEL if n > BLOCK_NUMEL // 4 else n, dtype=COMPUTE_DTYPE)
        return buffer[:n].view(shape)


SCRATCH = Scratch()


def widened(block: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`block` (a plain bf16/fp16 tensor, or any weight) in `like`'s dtype: copied into
    SCRATCH when `like` is float32 and nothing needs the copy after the call."""
    if (like.dtype != COMPUTE_DTYPE or block.dtype == COMPUTE_DTYPE or type(block) not in
            (torch.Tensor, nn.Parameter) or not SCRATCH.usable(block, like)):
        return block.to(like.dtype)
    return SCRATCH.get(tuple(block.shape)).copy_(block)


def linear_by_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                   ) -> torch.Tensor:
    """F.linear(x, weight, bias), a block of output rows at a time: a large weight (an LM
    head over a 128K-256K vocabulary) is widened (or dequantized) one block at a time, so
    its float32 copy never exists whole (a narrow block is widened into SCRATCH). The same
    numbers as one call, up to summation order."""
    blocks = row_blocks(weight)
    if len(blocks) == 1:
        return F.linear(x, widened(weight, x), bias)
    out = torch.cat([F.linear(x, widened(weight[b], x)) for b in blocks], dim=-1)
    return out if bias is None else out + bias


class RowwiseLinear(nn.Linear):
    """An nn.Linear computed by linear_by_rows (eager only: a captured program would get
    one linear op per block)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_by_rows(x, self.weight, self.bias)


class StoredLinear(RowwiseLinear):
    """An nn.Linear with a bf16/fp16 weight that computes in its input's dtype."""


class CapturedLinear(StoredLinear):
    """A stored linear as one op, for a captured program: the whole weight upcast, then
    one linear (the program records the stored weight and a cast, not a float32 copy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), self.bias)


def dequantize_rows(codes: torch.Tensor, scales: torch.Tensor, cols: int,
                    rounding: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """codes [..., K'] x scales [..., K'/block] -> float32 [..., cols]: the product in
    float32 (exact for int8 codes and 16-bit scales), rounded to `rounding` when the device
    dequantizes in that narrower dtype, so the values are the device's bit for bit. `out`:
    a float32 buffer of codes' shape to compute in (SCRATCH)."""
    w = (codes.to(COMPUTE_DTYPE) if out is None else out.copy_(codes)).unflatten(
        -1, (scales.shape[-1], -1))
    w.mul_(scales.to(COMPUTE_DTYPE).unsqueeze(-1))
    w = w.flatten(-2)[..., :cols]
    return w if rounding == COMPUTE_DTYPE else w.to(rounding).to(COMPUTE_DTYPE)


class HoldsCodes:
    """What CodedLinear and CodedEmbedding share: a module holding a device's
    block-quantized weight as stored (int8 codes, one scale per block, the dtype the device
    rounds the product to) in place of its float weight, which is emptied."""

    codes: torch.Tensor
    scales: torch.Tensor
    rounding: torch.dtype

    @staticmethod
    def _shape(module: nn.Module) -> tuple[int, int]:
        """(rows, columns) of the weight `module` computes with."""
        raise NotImplementedError

    @classmethod
    def hold(cls, module: nn.Module, codes: torch.Tensor, scales: torch.Tensor,
             rounding: torch.dtype = COMPUTE_DTYPE):
        """Make `module` compute with `codes` x `scales` (rounded to `rounding`) instead of
        its weight; returns it."""
        rows, cols = cls._shape(module)
        if codes.dtype != torch.int8 or codes.shape[0] != rows or scales.shape[0] != rows \
                or codes.shape[1] % scales.shape[1] or codes.shape[1] < cols:
            raise ValueError(f"codes {tuple(codes.shape)} {codes.dtype} and scales "
                             f"{tuple(scales.shape)} are not a block-quantized [{rows}, {cols}] "
                             "weight")
        module.__class__ = cls
        if module.weight.numel():
            module.weight = nn.Parameter(torch.empty(0), requires_grad=False)
        module.register_buffer("codes", codes, persistent=False)
        module.register_buffer("scales", scales, persistent=False)
        module.rounding = rounding
        return module

    def drop_codes(self) -> None:
        self.codes = self.scales = torch.empty(0)


class CodedLinear(HoldsCodes, nn.Linear):
    """A linear holding a device's block-quantized weight as stored: integer codes [N, K']
    (int8, offset removed; K' >= K when the last block is padded) and one scale per `block`
    columns [N, K'/block], dequantized to float32 a block of rows at a time on each call
    (rounded to `rounding` first where the device dequantizes in fp16: Core ML).
    1 byte a parameter where an exact fp16 copy of the dequantized weight takes 2; the
    same weights, so the same numbers up to summation order. Its `weight` is empty (the
    float original, if any, is released)."""

    @staticmethod
    def _shape(module: nn.Linear) -> tuple[int, int]:
        return module.out_features, module.in_features

    def dequantized(self, rows: slice, out: torch.Tensor | None = None) -> torch.Tensor:
        return dequantize_rows(self.codes[rows], self.scales[rows], self.in_features,
                               self.rounding, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reuse = x.dtype == COMPUTE_DTYPE and SCRATCH.usable(x)

        def weight(rows: slice) -> torch.Tensor:
            codes = self.codes[rows]
            return self.dequantized(rows, SCRATCH.get(tuple(codes.shape)) if reuse else None)
        out = torch.cat([F.linear(x, weight(b).to(x.dtype)) for b in row_blocks(self.codes)],
                        dim=-1)
        return out if self.bias is None else out + self.bias


class CodedEmbedding(HoldsCodes, nn.Embedding):
    """An nn.Embedding holding a device's block-quantized table as CodedLinear holds a
    weight: each call gathers its tokens' rows of codes and scales and dequantizes only
    those (a tied head's CodedLinear may hold the same codes: one copy for both)."""

    @staticmethod
    def _shape(module: nn.Embedding) -> tuple[int, int]:
        return module.num_embeddings, module.embedding_dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return dequantize_rows(self.codes[tokens], self.scales[tokens], self.embedding_dim,
                               self.rounding)


class StoredEmbedding(nn.Embedding):
    """An nn.Embedding with a bf16/fp16 table whose rows come out in float32."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return super().forward(tokens).to(COMPUTE_DTYPE)


class CapturedEmbedding(StoredEmbedding):
    """A stored embedding for a captured program: the table upcast, then gathered (the
    program then gathers from a float32 table, as a float32 model's would, once the
    cast of the initializer is resolved; a cast of the gathered rows instead would stop
    the exporter fusing the first RMSNorm)."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.weight.to(COMPUTE_DTYPE), self.padding_idx)


_CAPTURED = {StoredLinear: CapturedLinear, StoredEmbedding: CapturedEmbedding}


@contextmanager
def captured_form(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every stored linear/embedding of `model` is captured as one op on
    its upcast weight (CapturedLinear/CapturedEmbedding), for an exporter that converts a
    program and should keep the stored dtype in it (the ONNX capture)."""
    changed = [(m, type(m)) for m in model.modules() if type(m) in _CAPTURED]
    for m, cls in changed:
        m.__class__ = _CAPTURED[cls]
    try:
        yield model
    finally:
        for m, cls in changed:
            m.__class__ = cls


_STORED = {nn.Linear: StoredLinear, nn.Embedding: StoredEmbedding}
_PLAIN = {v: k for k, v in _STORED.items()}


def is_narrow(weight: torch.Tensor) -> bool:
    return type(weight) in (torch.Tensor, nn.Parameter) and weight.dtype in NARROW_DTYPES


def mark(module: nn.Module) -> nn.Module:
    """Give a Linear/Embedding the class its weight calls for (stored when the weight is
    bf16/fp16, plain otherwise); returns the module. Other modules are left as they are."""
    cls = type(module)
    plain = _PLAIN.get(cls, cls)
    if plain in _STORED:
        module.__class__ = _STORED[plain] if is_narrow(module.weight) else plain
    return module


def mark_all(model: nn.Module) -> nn.Module:
    for m in model.modules():
        mark(m)
    return model


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype `module` (a Linear/Embedding) computes in."""
    return COMPUTE_DTYPE if isinstance(module, tuple(_PLAIN)) else module.weight.dtype


def store(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Store every Linear/Embedding weight of a float32 model in `dtype` (bf16/fp16), in
    place (a tied head keeps sharing the embedding's table)."""
    if dtype not in NARROW_DTYPES:
        raise ValueError(f"store() takes one of {NARROW_DTYPES}, not {dtype}")
    return _convert(model, tuple(_STORED), lambda w: w.to(dtype))


def widen(module: nn.Module) -> nn.Module:
    """Make a stored module plain float32 (a new weight; a weight it shared stays with the
    other module); a plain module is left as it is."""
    if type(module) in _PLAIN:
        w = module.weight
        module.weight = nn.Parameter(w.detach().to(COMPUTE_DTYPE), requires_grad=w.requires_grad)
        mark(module)
    return module


def widen_all(model: nn.Module) -> nn.Module:
    """widen() every module, keeping tied weights tied (one float32 copy each)."""
    return _convert(model, tuple(_PLAIN), lambda w: w.to(COMPUTE_DTYPE))


def plain_all(model: nn.Module) -> nn.Module:
    """Every stored module back to its plain class, its weight left as it is: for a model
    made wholly fp16 by `.half()`, so that every op computes in fp16 and the head stays one
    op (the Core ML conversion); `widen_small` marks them stored again after."""
    for m in model.modules():
        if type(m) in _PLAIN:
            m.__class__ = _PLAIN[type(m)]
    return model


def widen_small(model: nn.Module) -> nn.Module:
    """Everything but the Linear/Embedding weights back to float32 (norms, biases, RoPE
    tables, after a `model.half()`), in place; the weights keep their dtype (a plain
    module whose weight is narrow becomes a stored one, computing in float32)."""
    weights = {id(m.weight) for m in model.modules() if isinstance(m, tuple(_STORED))}
    with torch.no_grad():
        for m in model.modules():
            for name, p in list(m.named_parameters(recurse=False)):
                if id(p) not in weights and p.is_floating_point() and p.dtype != COMPUTE_DTYPE:
                    setattr(m, name, nn.Parameter(p.to(COMPUTE_DTYPE), requires_grad=p.requires_grad))
            for name, b in list(m.named_buffers(recurse=False)):
                if b is not None and b.is_floating_point() and b.dtype != COMPUTE_DTYPE:
                    m._buffers[name] = b.to(COMPUTE_DTYPE)
            mark(m)
    return model


def _convert(model: nn.Module, kinds: tuple[type, ...],
             convert: Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
    """Give every module of exactly one of `kinds` the weight `convert` makes of its own
    (one new weight per shared tensor, so ties stay ties), then the class that weight
    calls for."""
    done: dict[int, nn.Parameter] = {}
    with torch.no_grad():
        for m in model.modules():
            if type(m) in kinds:
                w = m.weight
                if id(w) not in done:
                    done[id(w)] = nn.Parameter(convert(w.detach()), requires_grad=w.requires_grad)
                m.weight = done[id(w)]
                mark(m)
    return model


def exact_narrow(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (float32) in bf16 or fp16 when that dtype holds every value exactly, else
    itself: a device's dequantized weights (an int4 code times a bf16 scale fits fp16's 11
    significant bits) then cost 2 bytes a parameter in the eager model, computing the same
    numbers. Checked a block of rows at a time; returns a new tensor only when narrowed."""
    if weight.dtype != COMPUTE_DTYPE:
        return weight
    for dtype in NARROW_DTYPES:
        if all(torch.equal(weight[b].to(dtype).to(COMPUTE_DTYPE), weight[b])
               for b in row_blocks(weight)):
            return weight.to(dtype)
    return weight


def narrowest(base: torch.Tensor, *parts: torch.Tensor) -> torch.dtype:
    """The dtype a weight joining `base` with `parts` (fused/merged) is stored in: base's,
    when every part is exact in it, else the widest of them (nothing is rounded)."""
    dtype = base.dtype
    for p in parts:
        if p.dtype != dtype and not torch.equal(p.to(dtype).to(p.dtype), p):
            dtype = torch.promote_types(dtype, p.dtype)
    return dtype
