"""The quantize stage: typed configs applied with torchao's `quantize_`.

Every base/fused projection and the output head must end up quantized: a linear
whose input width is not a multiple of the group size is an error, never a
silent fall-back to float (fuse() pads FFBA widths to the group for this reason).
Unmerged LoRA A/B matrices stay in float, as in ExecuTorch's own LoRA export.
Weights stored in bf16/fp16 are widened one module at a time, just before each is
quantized (peak memory: the stored model plus one float32 matrix).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import FloraError, unknown_name
from .model.storage import RowwiseLinear, mark, row_blocks, widen

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantConfig:
    """How linears and the embedding table are quantized.

    weight_bits: 4 or 8 (None: keep fp32). group_size: input columns per scale for
    4-bit (0 = one scale per output row). dynamic_activations: int8 per-token
    activations computed at run time (what XNNPACK runs as a quantized GEMM).
    embedding_bits: 8 (per-row) or None.
    """

    name: str
    weight_bits: int | None = 4
    group_size: int = 32
    dynamic_activations: bool = True
    embedding_bits: int | None = 8

    @property
    def quantizes(self) -> bool:
        return self.weight_bits is not None


QUANT_MODES: dict[str, QuantConfig] = {
    # int8 dynamic activations, int4 group-wise weights: ExecuTorch's LLM default.
    "8da4w": QuantConfig("8da4w", weight_bits=4, group_size=32),
    # int8 per-channel weights. XNNPACK folds weight-only int8 back to fp32 at lowering,
    # so activations are quantized dynamically too, which keeps the weights int8 on device.
    "int8": QuantConfig("int8", weight_bits=8, group_size=0),
    "fp32": QuantConfig("fp32", weight_bits=None, embedding_bits=None),
}


def quant_config(name: str) -> QuantConfig:
    if name not in QUANT_MODES:
        raise unknown_name("quantization", name, QUANT_MODES)
    return QUANT_MODES[name]


def is_lora_half(fqn: str) -> bool:
    return ".lora_A." in f".{fqn}." or ".lora_B." in f".{fqn}."


def quantizable_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(fqn, m) for fqn, m in model.named_modules()
            if isinstance(m, nn.Linear) and not is_lora_half(fqn)]


def untie_head(model: nn.Module) -> None:
    """Give a tied output head its own copy of the embedding, so that the head is quantized
    (or exported as a constant MatMul weight) on its own."""
    if model.lm_head.weight is model.embed_tokens.weight:
        model.lm_head.weight = nn.Parameter(model.embed_tokens.weight.detach().clone(),
                                            requires_grad=False)


def check_quantizable(model: nn.Module, cfg: QuantConfig) -> None:
    """Fail, naming the linear and the fix, if any projection cannot be group-quantized."""
    if not cfg.quantizes or cfg.group_size == 0:
        return
    for fqn, lin in quantizable_linears(model):
        if lin.in_features % cfg.group_size:
            raise FloraError(
                f"linear {fqn} has {lin.in_features} inputs, not a multiple of the "
                f"quantization group {cfg.group_size}; it would stay in float",
                "fuse with pad_to equal to the group size (the default), or use --quant fp32")


def quantize(model: nn.Module, cfg: QuantConfig) -> nn.Module:
    """Quantize linears and the embedding in place (torchao); returns the model.

    One module at a time: a weight stored in bf16/fp16 is widened to float32 just before
    it is quantized (model/storage.py), so no float32 copy of the whole model ever exists.
    A tied head and embedding are quantized apart, each from the shared table (torchao
    gives a module a new weight; the other keeps the table until its own turn)."""
    if not cfg.quantizes:
        return model
    from torchao.quantization import (Int8DynamicActivationIntxWeightConfig,
                                      IntxWeightOnlyConfig, quantize_)
    from torchao.quantization.granularity import PerAxis, PerGroup

    check_quantizable(model, cfg)
    emb_cfg = IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{cfg.embedding_bits}"),
                                   granularity=PerAxis(0)) if cfg.embedding_bits else None
    granularity = PerGroup(cfg.group_size) if cfg.group_size else PerAxis(0)
    wdtype = getattr(torch, f"int{cfg.weight_bits}")
    lin_cfg = (Int8DynamicActivationIntxWeightConfig(weight_dtype=wdtype,
                                                     weight_granularity=granularity)
               if cfg.dynamic_activations else
               IntxWeightOnlyConfig(weight_dtype=wdtype, granularity=granularity))
    targets = [(m, emb_cfg) for m in model.modules() if isinstance(m, nn.Embedding)] + \
        [(m, lin_cfg) for _, m in quantizable_linears(model)]
    for module, mcfg in targets:
        if mcfg is None:
            continue
        if len(row_blocks(module.weight)) == 1:
            quantize_(widen(module), mcfg, filter_fn=lambda *_: True)
        else:
            module.weight = nn.Parameter(_quantized_by_rows(module, mcfg, quantize_),
                                         requires_grad=False)
            mark(module)                  # a plain module again: its weight is torchao's
    if cfg.group_size:
        _round_group_scales_to_bf16(model)
    log.info("quantized %d linears (%s)", count_quantized_linears(model), cfg.name)
    return model


def _quantized_by_rows(module: nn.Module, mcfg, quantize_) -> torch.Tensor:
    """The torchao weight of `module` (an LM head or embedding too large to widen whole),
    quantized a block of rows at a time: scales are per row (group), so the blocks joined
    are exactly the tensor quantizing it whole gives, without its float32 temporaries."""
    parts = []
    for rows in row_blocks(module.weight):
        block = module.weight[rows]
        part = (nn.Embedding(*block.shape, device="meta") if isinstance(module, nn.Embedding)
                else nn.Linear(block.shape[1], block.shape[0], bias=False, device="meta"))
        part.weight = nn.Parameter(block.detach().to(torch.float32), requires_grad=False)
        quantize_(part, mcfg, filter_fn=lambda *_: True)
        parts.append(part.weight)
    first = parts[0]
    data = [torch.cat([getattr(p, name) for p in parts]) for name in first.tensor_data_names]
    return type(first)(*data, *(getattr(first, a) for a in first.tensor_attribute_names))


class _RowwiseEmbedding(nn.Embedding):
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids, inverse = torch.unique(tokens, return_inverse=True)
        one = torch.zeros(1, dtype=torch.long)
        rows = torch.cat([F.embedding(one, self.weight[i:i + 1]) for i in ids.tolist()])
        return rows[inverse]


@contextmanager
def rowwise_eager(model: nn.Module):
    """Run a quantized model eagerly without dequantizing a large table whole: torchao
    dequantizes a weight in full on every call (an LM head over 128K+ rows: 1-2 GB of
    float32, several times over); inside this block the head is computed a block of rows
    at a time and the embedding dequantizes only the rows the tokens use. The same
    numbers; for eager reference runs only (a captured program keeps one linear op)."""
    swapped = []
    for m in model.modules():
        if _is_quantized(getattr(m, "weight", None)) and len(row_blocks(m.weight)) > 1:
            kind = {nn.Linear: RowwiseLinear, nn.Embedding: _RowwiseEmbedding}.get(type(m))
            if kind is not None:
                swapped.append((m, type(m)))
                m.__class__ = kind
    try:
        yield model
    finally:
        for m, cls in swapped:
            m.__class__ = cls


def _is_quantized(weight) -> bool:
    return weight is not None and type(weight) not in (torch.Tensor, nn.Parameter)


def _round_group_scales_to_bf16(model: nn.Module) -> None:
    """XNNPACK stores group-wise weight scales in bf16; make the eager model use the same.

    The eager quantized model then computes the function the device computes (up to
    activation rounding and summation order), which keeps verification sharp.
    """
    with torch.no_grad():
        for _, lin in quantizable_linears(model):
            scale = getattr(lin.weight, "scale", None)
            if scale is not None:
                scale.copy_(scale.to(torch.bfloat16).to(scale.dtype))


def dynamic_activation_linears(model: nn.Module) -> list[nn.Linear]:
    """The linears whose torchao weight quantizes their input to int8 at run time."""
    return [m for _, m in quantizable_linears(model) if _is_quantized(m.weight)
            and getattr(m.weight, "activation_quantization", None) is not None]


def count_quantized_linears(model: nn.Module) -> int:
    """Linears whose weight is a torchao quantized tensor (eager view)."""
    return sum(1 for _, m in quantizable_linears(model) if _is_quantized(m.weight))
