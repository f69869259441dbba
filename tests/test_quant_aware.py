"""Quantization-aware FFBA training (train.quant_aware): what training computes with is what
the int4 export computes with."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flora_export.adapters import FFBAConfig, attach_ffba
from flora_export.default import DEFAULT_BASE
from flora_export.errors import FloraError
from flora_export.model import load_model
from flora_export.train import load_recipe
from flora_export.train.quant_aware import QuantAwareLinear, fake_int4, make_quant_aware

from conftest import randomize_adapter

TOKENS = torch.tensor([[1, 5, 9, 33, 70, 2, 14, 8, 61, 3]])


def test_fake_int4_is_the_exports_grid():
    """The same values as the ONNX writer's int4 codes times its scales, and as torchao's
    8da4w weight (what the .pte carries), on a base projection."""
    from flora_export.export.onnx_grid import int4_blocks
    from flora_export.quantize import quant_config, quantize

    w = torch.randn(40, 96, generator=torch.Generator().manual_seed(0))
    w[3, 32:64] = 0                          # an all-zero group (a padded adapter column)
    packed, scales = int4_blocks(w.numpy(), 32)
    codes = np.stack([packed & 15, packed >> 4], -1).reshape(40, -1).astype(np.float32) - 8
    onnx_w = (codes.reshape(40, 3, 32) * scales[..., None]).reshape(40, 96)
    assert torch.equal(fake_int4(w), torch.from_numpy(onnx_w))
    model = load_model(DEFAULT_BASE)
    with torch.no_grad():
        model.layers[0].mlp.down_proj.weight[5, :32] = 0
    base = model.layers[0].mlp.down_proj.weight.detach().float().clone()
    quantize(model, quant_config("8da4w"))
    qt = model.layers[0].mlp.down_proj.weight
    assert torch.equal(fake_int4(base), qt.dequantize().float())
    packed, scales = int4_blocks(base.numpy(), 32)          # the ONNX file's codes: the .pte's
    codes = np.stack([packed & 15, packed >> 4], -1).reshape(len(base), -1).astype(np.int8) - 8
    assert np.array_equal(codes, qt.qdata.numpy())
    assert np.array_equal(scales, qt.scale.float().numpy())


def _with_adapter(cfg: FFBAConfig, adapter: dict):
    """The float base with an FFBA adapter of `cfg` holding the values `adapter`."""
    model = load_model(DEFAULT_BASE)
    attach_ffba(model, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in adapter:
                p.copy_(adapter[n])
    return model


@pytest.mark.parametrize("variant", ["ffba-neurons", "ffba"])
def test_quant_aware_model_computes_what_the_int4_fused_model_computes(variant):
    """The unfused quant-aware model's logits equal those of the same adapter fused into the
    float base and rounded by the export's weight quantization (weight-only, float
    activations): training sees the device's weights, not an approximation of them."""
    from flora_export.fuse import fuse
    from flora_export.quantize import QuantConfig, quantize

    cfg = FFBAConfig(variant=variant, width=51, alpha=102.0)
    qa = load_model(DEFAULT_BASE)
    attach_ffba(qa, cfg)
    randomize_adapter(qa, std=0.05)
    adapter = {n: p.detach().clone() for n, p in qa.named_parameters() if p.requires_grad}
    assert len(make_quant_aware(qa).adapters) >= 3 * qa.config.num_hidden_layers // 2
    ref = _with_adapter(cfg, adapter)
    fuse(ref, pad_to=32)
    quantize(ref, QuantConfig("4w", weight_bits=4, group_size=32, dynamic_activations=False,
                              embedding_bits=None))
    with torch.no_grad():
        got, want = qa(TOKENS), ref(TOKENS)
    with torch.no_grad():
        drift = (_with_adapter(cfg, adapter)(TOKENS) - want).abs().max().item()
    err = (got - want).abs().max().item()
    assert err < 2e-4 and drift > 100 * err     # the rounding is visible, and matched


def test_gradients_pass_straight_through_to_the_float_adapter():
    model = load_model(DEFAULT_BASE)
    attach_ffba(model, FFBAConfig(variant="ffba-neurons", width=51, alpha=102.0))
    randomize_adapter(model, std=0.05)
    from flora_export.adapters.io import base_fingerprint

    original = model.layers[0].mlp.down_proj.weight.detach().float().clone()
    fingerprint = base_fingerprint(model)
    state = make_quant_aware(model)
    base = model.layers[0].mlp.down_proj.weight
    assert not base.requires_grad and torch.equal(base, fake_int4(original))   # rounded once
    model(TOKENS).logsumexp(-1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert any(isinstance(m, QuantAwareLinear) for m in model.modules())
    state.release()
    assert not any(isinstance(m, QuantAwareLinear) for m in model.modules())
    assert torch.equal(model.layers[0].mlp.down_proj.weight.float(), original)
    assert base_fingerprint(model) == fingerprint


def test_quant_aware_is_refused_for_lora_and_full():
    for kind in ("lora", "full"):
        with pytest.raises(FloraError, match=f"train.quant_aware applies to FFBA adapters, "
                                             f"not method.kind={kind}"):
            load_recipe(Path("recipes/default-adapter.yaml"),
                        [f"method.kind={kind}", "train.quant_aware=true"])
    with pytest.raises(FloraError, match="needs an FFBA adapter"):
        make_quant_aware(load_model(DEFAULT_BASE))


def test_short_quant_aware_run_records_it(tmp_path):
    from flora_export.train import train

    recipe = load_recipe(Path("recipes/default-adapter.yaml"), [
        f"out={tmp_path / 'run'}", "train.steps=4", "train.batch_size=4", "train.save_every=0",
        "train.warmup_steps=1", "data.eval_size=4", "train.quant_aware=true"])
    metrics = train(recipe, progress=False)
    assert metrics["quant_aware"] is True
    from flora_export.adapters import load_adapter       # strict base check: the original base
    load_adapter(load_model(DEFAULT_BASE), tmp_path / "run")


def test_the_sweep_selects_a_quant_aware_setting_by_its_int4_model():
    """benchmarks/accuracy_sweep.best: a quantization-aware method's settings are judged by
    the validation scores of their int4-weight model (what it trains and ships), the other
    methods' by their eager model."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from accuracy_sweep import best

    def row(method, key, val, int4):
        return {"method": method, "key": key, "val": {"accuracy": val, "loss": 0.1},
                "val_int4": {"accuracy": int4, "loss": 0.1}}
    qat = [row("ffba-neurons-qat", "a", 0.84, 0.935), row("ffba-neurons-qat", "b", 0.34, 0.965)]
    assert best(qat)["key"] == "b"
    plain = [row("ffba-neurons", "a", 0.84, 0.935), row("ffba-neurons", "b", 0.34, 0.965)]
    assert best(plain)["key"] == "a"
