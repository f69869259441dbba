"""Weights stored in bf16, computed in float32 (model/storage.py), and the memory-frugal
quantize stage: the same numbers as the float32 model, at 2 bytes a parameter."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from flora_export.adapters import FFBAConfig, LoraConfig, attach_ffba, attach_lora
from flora_export.fuse import fuse, merge_lora
from flora_export.model import PRESETS, load_model, random_model
from flora_export.model import storage
from flora_export.model.storage import StoredLinear, store, widen_all
from flora_export.quantize import quant_config, quantize, rowwise_eager

TOKENS = torch.randint(0, 512, (1, 14), generator=torch.Generator().manual_seed(2))


def stored_tiny(seed: int = 4):
    return store(random_model(PRESETS["tiny"], seed=seed), torch.bfloat16)


def logits(model, tokens=TOKENS):
    with torch.no_grad():
        return model(tokens)


def test_preset_matrices_are_bf16_and_compute_like_their_float32_copy():
    model = load_model("tiny")
    matrices = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]
    assert matrices and all(m.weight.dtype == torch.bfloat16 for m in matrices)
    assert model.lm_head.weight is model.embed_tokens.weight
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    assert stored / sum(p.numel() for p in model.parameters()) < 2.05   # 2 bytes a parameter
    wide = widen_all(copy.deepcopy(model))
    assert torch.equal(logits(model), logits(wide))


def test_large_weights_are_widened_in_row_blocks_with_the_same_numbers(monkeypatch):
    model = stored_tiny()
    ref = logits(widen_all(copy.deepcopy(model)))
    monkeypatch.setattr(storage, "BLOCK_NUMEL", 3000)    # the head (512 x 128) -> 23 blocks
    assert len(storage.row_blocks(model.lm_head.weight)) == 23
    assert (logits(model) - ref).abs().max() < 1e-5


@pytest.mark.parametrize("exact", [True, False])
def test_fused_weights_stay_bf16_only_when_the_adapter_is_exact_in_it(exact):
    model = stored_tiny()
    attach_ffba(model, FFBAConfig(width=24))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
                if exact:
                    p.copy_(p.bfloat16())
    unfused = logits(model)
    fuse(model, pad_to=32)
    qkv = model.layers[0].self_attn.qkv_proj
    assert qkv.weight.dtype == (torch.bfloat16 if exact else torch.float32)
    assert isinstance(qkv, StoredLinear) == exact
    assert (logits(model) - unfused).abs().max() < 1e-5     # fused == unfused, never rounded


def test_lora_merged_into_a_bf16_base_is_not_rounded():
    model = stored_tiny()
    attach_lora(model, LoraConfig(rank=4, alpha=8.0))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    unmerged = logits(model)
    merge_lora(model)
    down = model.layers[1].mlp.down_proj
    assert down.weight.dtype == torch.float32 and type(down) is torch.nn.Linear
    assert (logits(model) - unmerged).abs().max() < 1e-5


@pytest.mark.parametrize("mode", ["8da4w", "int8"])
def test_quantizing_by_row_blocks_gives_the_same_tensors(monkeypatch, mode):
    whole = quantize(stored_tiny(), quant_config(mode))
    monkeypatch.setattr(storage, "BLOCK_NUMEL", 3000)
    blocks = quantize(stored_tiny(), quant_config(mode))
    for name in ("lm_head", "embed_tokens", "layers.1.mlp.gate_up_proj"):
        a, b = (m.get_submodule(name).weight for m in (whole, blocks))
        assert type(a) is type(b) and a.shape == b.shape
        assert torch.equal(a.dequantize(), b.dequantize()), name
        assert type(blocks.get_submodule(name)) in (
            torch.nn.Linear, torch.nn.Embedding)
    # the row-wise eager run of the quantized model: the same logits as torchao's own
    ref = logits(blocks)
    with rowwise_eager(blocks):
        assert type(blocks.lm_head).__name__ == "RowwiseLinear"
        got = logits(blocks)
    assert type(blocks.lm_head) is torch.nn.Linear
    assert (got - ref).abs().max() < 1e-5


def test_quantize_widens_one_module_at_a_time_and_unties_without_a_copy():
    model = stored_tiny()
    quantize(model, quant_config("8da4w"))
    assert model.lm_head.weight is not model.embed_tokens.weight
    assert not any(isinstance(m, StoredLinear) for m in model.modules())


def test_exact_narrow_picks_the_narrowest_dtype_that_loses_nothing():
    from flora_export.model.storage import exact_narrow

    gen = torch.Generator().manual_seed(0)
    bf16 = torch.randn(64, 32, generator=gen).to(torch.bfloat16).float()
    codes = torch.randint(-8, 8, (64, 32), generator=gen).float()
    scales = torch.rand(64, 1, generator=gen).add(0.5).to(torch.bfloat16).float()
    int4 = codes * scales                       # an int4 code times a bf16 scale
    wide = torch.randn(64, 32, generator=gen)
    assert exact_narrow(bf16).dtype == torch.bfloat16
    assert exact_narrow(int4).dtype == torch.float16
    assert torch.equal(exact_narrow(int4).float(), int4)
    assert exact_narrow(wide) is wide           # float32 values: kept as they are


def test_widen_small_restores_float32_around_fp16_weights():
    """After model.half(): widen_small keeps the matrices fp16 (stored, computing in float32)
    and brings norms and RoPE tables back to float32; the logits are those of the model
    whose weights were rounded to fp16, computed in float32 (what .float() gave)."""
    model = widen_all(random_model(PRESETS["tiny"], seed=3))
    model.half()
    want = logits(copy.deepcopy(model).float())
    storage.widen_small(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert all(type(m) is StoredLinear and m.weight.dtype == torch.float16 for m in linears)
    assert model.lm_head.weight is model.embed_tokens.weight
    others = [t for n, t in [*model.named_parameters(), *model.named_buffers()]
              if t.is_floating_point() and not n.endswith("proj.weight")
              and not n.startswith(("embed_tokens", "lm_head"))]
    assert others and all(t.dtype == torch.float32 for t in others)
    assert torch.equal(logits(model), want)


@pytest.mark.parametrize("steps", ["quantize", "code"])
def test_weights_set_aside_come_back_bit_for_bit(tmp_path, steps):
    """ios builds the .pte on the model, then Core ML on a skeleton restored from the
    matrices set aside on disk before (export/spill.py): whatever the first build does to
    the model (quantize or code, .half(), free), the skeleton gets the weights back bit for
    bit, in their dtype, with their tie and outputs; the file is deleted once read back."""
    from flora_export.export.backend import release_weights
    from flora_export.export.coreml_weights import code_weights
    from flora_export.export.spill import restore, set_aside, weights
    model = stored_tiny()
    model.lm_head.weight = model.embed_tokens.weight
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = logits(model)
    [skeleton], record = set_aside(model, tmp_path / "w.bin")
    assert (tmp_path / "w.bin").stat().st_size == sum(v.numel() * 2 for k, v in before.items()
                                                      if k.endswith("proj.weight")
                                                      or k == "embed_tokens.weight")
    assert weights(skeleton) == [] and skeleton.lm_head.weight is skeleton.embed_tokens.weight
    if steps == "quantize":
        quantize(model, quant_config("8da4w"))
    else:
        code_weights(model, 4, 32)
    model.half()
    release_weights(model)
    restored = restore(skeleton, record)
    assert not (tmp_path / "w.bin").exists()
    after = restored.state_dict()
    assert set(after) == set(before)
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert restored.lm_head.weight is restored.embed_tokens.weight
    assert torch.equal(logits(restored), expected)


def test_coded_weights_round_their_product_where_the_device_does():
    """storage.dequantize_rows: codes x scales in float32, rounded to fp16 when the device
    dequantizes in fp16 (Core ML), bit for bit; an embedding gathers the same rows."""
    from flora_export.model.storage import CodedEmbedding, CodedLinear, dequantize_rows
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(-128, 128, (64, 96), generator=g, dtype=torch.int8)
    scales = (torch.rand(64, 1, generator=g) * 1e-2 + 1e-3).half()
    exact = codes.float() * scales.float()
    rounded = dequantize_rows(codes, scales, 96, torch.float16)
    assert torch.equal(rounded, exact.half().float())
    assert (rounded != exact).float().mean() > 0.5           # the rounding is not a no-op
    assert torch.equal(dequantize_rows(codes, scales, 96, torch.float32), exact)
    lin = CodedLinear.hold(nn.Linear(96, 64, bias=False), codes, scales, torch.float16)
    x = torch.randn(3, 96, generator=g)
    assert torch.allclose(lin(x), x @ rounded.T, atol=1e-6)
    emb = CodedEmbedding.hold(nn.Embedding(64, 96), codes, scales, torch.float16)
    tokens = torch.tensor([[5, 0, 63]])
    assert torch.equal(emb(tokens), rounded[tokens])
    assert emb.weight.numel() == 0 and emb.codes is codes


def test_widened_blocks_reuse_one_buffer_but_not_under_autograd(monkeypatch):
    """storage.SCRATCH: every block a call widens (or dequantizes) goes into one kept
    buffer, bounded by BLOCK_NUMEL, with the same numbers; where autograd keeps the block
    for the backward pass, each block gets its own tensor (the gradients stay right)."""
    from flora_export.model.storage import SCRATCH, CodedLinear, dequantize_rows
    monkeypatch.setattr(storage, "BLOCK_NUMEL", 3000)    # the head (512 x 128) -> 23 blocks
    model = stored_tiny()
    ref = logits(widen_all(copy.deepcopy(model)))
    SCRATCH.release()                                      # what an earlier test left
    first = logits(model)
    buffer = SCRATCH._local.buffer
    assert torch.equal(logits(model), first) and (first - ref).abs().max() < 1e-5
    assert SCRATCH._local.buffer is buffer and buffer.numel() <= 3000   # kept, not grown

    g = torch.Generator().manual_seed(0)
    codes = torch.randint(-8, 8, (64, 96), generator=g, dtype=torch.int8)
    scales = (torch.rand(64, 3, generator=g) * 1e-2).to(torch.bfloat16)
    lin = CodedLinear.hold(nn.Linear(96, 64, bias=False), codes, scales)
    x = torch.randn(5, 96, generator=g)
    w = dequantize_rows(codes, scales, 96, torch.float32)
    with torch.no_grad():
        assert torch.allclose(lin(x), x @ w.T, atol=1e-6)
    assert SCRATCH._local.buffer is buffer

    head = model.lm_head                                   # 23 blocks of a bf16 weight
    for module, weight in ((head, head.weight.float()), (lin, w)):
        xg = torch.randn(2, weight.shape[1], generator=g, requires_grad=True)
        module(xg).square().sum().backward()
        xr = xg.detach().clone().requires_grad_()
        (xr @ weight.T).square().sum().backward()
        assert torch.allclose(xg.grad, xr.grad, atol=1e-4), type(module).__name__
