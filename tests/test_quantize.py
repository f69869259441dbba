"""Quantization: every projection quantized, never a silent fall-back to float."""

from __future__ import annotations

import pytest
import torch

from flora_export.adapters import FFBAConfig, attach_ffba
from flora_export.errors import FloraError
from flora_export.fuse import fuse
from flora_export.model import PRESETS, random_model
from flora_export.quantize import (QUANT_MODES, count_quantized_linears, quant_config,
                                   quantizable_linears, quantize)

from conftest import randomize_adapter


def fused_model(width=40, pad_to=32):
    model = random_model(PRESETS["tiny"], seed=1)
    attach_ffba(model, FFBAConfig(width=width))
    randomize_adapter(model)
    return fuse(model, pad_to=pad_to)


@pytest.mark.parametrize("mode", ["8da4w", "int8"])
def test_every_projection_and_head_quantized(mode):
    model = quantize(fused_model(), quant_config(mode))
    layers = PRESETS["tiny"].num_hidden_layers
    assert count_quantized_linears(model) == len(quantizable_linears(model)) == 4 * layers + 1
    assert type(model.embed_tokens.weight).__name__ != "Parameter"


def test_quantized_model_stays_close():
    model = fused_model()
    tokens = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(tokens)
        out = quantize(model, quant_config("8da4w"))(tokens)
    sqnr = 10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum())
    assert sqnr > 8   # random weights at std 0.02 are the hard case for int4


def test_unpadded_width_fails_instead_of_staying_float():
    model = fused_model(width=40, pad_to=1)
    with pytest.raises(FloraError, match="not a multiple of the quantization group 32"):
        quantize(model, quant_config("8da4w"))


def test_fp32_is_a_no_op_and_unknown_modes_are_listed():
    model = fused_model()
    assert count_quantized_linears(quantize(model, quant_config("fp32"))) == 0
    with pytest.raises(FloraError, match="8da4w, fp32, int8"):
        quant_config("int3")
    assert set(QUANT_MODES) == {"8da4w", "int8", "fp32"}
