"""FFBA and LoRA adapters: definition, fusion, state changes and files."""

from __future__ import annotations

import json

import pytest
import torch

from flora_export.adapters import (AdapterStatus, FFBAConfig, LoraConfig, attach_ffba,
                                   attach_lora, load_adapter, save_adapter)
from flora_export.fuse import count_fused_linears, fuse, merge_lora, unfuse
from flora_export.model import PRESETS, load_model, random_model
from flora_export.model.llama import activation

from conftest import randomize_adapter

TOKENS = torch.randint(0, 512, (2, 11), generator=torch.Generator().manual_seed(0))


def logits(model, tokens=TOKENS):
    with torch.no_grad():
        return model(tokens)


def ffba_model(cfg: FFBAConfig, seed: int = 1):
    model = random_model(PRESETS["tiny"], seed=seed)
    attach_ffba(model, cfg)
    randomize_adapter(model, seed)
    return model


def test_fresh_adapter_changes_nothing_and_only_it_trains():
    base = random_model(PRESETS["tiny"], seed=1)
    ref = logits(base)
    attach_ffba(base, FFBAConfig(width=16))
    assert torch.equal(logits(base), ref)
    trainable = {n for n, p in base.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter." in n for n in trainable)
    assert len(trainable) == 2 * 2 * PRESETS["tiny"].num_hidden_layers


def test_ffba_matches_an_independent_transformers_construction(tmp_path):
    """FFBA as docs/ffba.md defines it, built on transformers' own LlamaForCausalLM with the
    same base weights: forward hooks add s * B act(A x_p) to every sub-block's output, x_p
    being the sub-block's (normed) input, with A and B read from the saved adapter file. Our
    unfused model and our fused model give its logits."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from conftest import write_base

    base_dir = write_base(tmp_path / "base", seed=5)
    ours = load_model(base_dir)
    attach_ffba(ours, FFBAConfig(width=24, alpha=12.0, activation="silu"))   # s = 12 / 24
    randomize_adapter(ours, seed=5)
    save_adapter(ours, tmp_path / "ffba")
    ab = load_file(tmp_path / "ffba" / "adapter_model.safetensors")
    hf = transformers.LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        base_ref = hf(TOKENS).logits

    def adds(a, b):
        def hook(module, args, kwargs, output):
            x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            delta = 0.5 * torch.nn.functional.silu(x @ a.T) @ b.T
            return (output[0] + delta, *output[1:]) if isinstance(output, tuple) else output + delta
        return hook

    for i, layer in enumerate(hf.model.layers):
        for name, block in (("attn", layer.self_attn), ("mlp", layer.mlp)):
            block.register_forward_hook(adds(ab[f"layers.{i}.{name}.A"], ab[f"layers.{i}.{name}.B"]),
                                        with_kwargs=True)
    with torch.no_grad():
        ref = hf(TOKENS).logits
    assert (ref - base_ref).abs().max() > 0.1           # the adapter matters (measured 1.1)
    assert (logits(ours) - ref).abs().max() < 1e-5
    fuse(ours)
    assert ours.layers[0].self_attn.o_proj.in_features == 128 + 32   # width 24 padded to 32
    assert (logits(ours) - ref).abs().max() < 1e-5


@pytest.mark.parametrize("variant", ["ffba", "ffba-attn", "ffba-mlp"])
@pytest.mark.parametrize("width,act", [(40, "identity"), (64, "silu"), (7, "relu")])
def test_fused_equals_unfused(variant, width, act):
    model = ffba_model(FFBAConfig(width=width, alpha=2.0 * width, variant=variant, activation=act))
    ref = logits(model)
    fuse(model, pad_to=32)
    padded = -(-width // 32) * 32
    blocks = {"ffba": 2, "ffba-attn": 1, "ffba-mlp": 1}[variant]
    assert count_fused_linears(model) == 2 * blocks * PRESETS["tiny"].num_hidden_layers
    layer = model.layers[0]
    if variant != "ffba-mlp":
        assert layer.self_attn.qkv_proj.out_features == 128 + 2 * 64 + padded
        assert layer.self_attn.o_proj.in_features == 128 + padded
        assert layer.self_attn.adapter is None
    if variant != "ffba-attn":
        assert layer.mlp.down_proj.in_features == 256 + padded
    assert (logits(model) - ref).abs().max() < 1e-5
    # exactly 4 linears per layer after fusion
    assert sum(isinstance(m, torch.nn.Linear) for m in layer.modules()) == 4


def test_unfuse_restores_adapter_and_base():
    model = ffba_model(FFBAConfig(width=40))
    ref_A = model.layers[1].mlp.adapter.A.weight.clone()
    ref = logits(model)
    unfuse(fuse(model))
    assert model.adapter_state.status is AdapterStatus.UNFUSED
    assert torch.equal(model.layers[1].mlp.adapter.A.weight, ref_A)
    assert model.layers[1].mlp.down_proj.in_features == 256
    assert (logits(model) - ref).abs().max() < 1e-5


@pytest.mark.parametrize("fused", [False, True])
def test_ffba_save_load_round_trip(tmp_path, fused):
    model = ffba_model(FFBAConfig(width=24, alpha=12.0, activation="silu"), seed=2)
    ref = logits(model)
    if fused:
        fuse(model)
    save_adapter(model, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["adapter_type"] == "ffba" and meta["width"] == 24 and meta["base"]["fingerprint"]
    fresh = random_model(PRESETS["tiny"], seed=2)
    load_adapter(fresh, tmp_path)
    assert fresh.layers[0].self_attn.adapter.A.weight.shape == (24, 128)
    assert (logits(fresh) - ref).abs().max() < 1e-5


def test_adapter_checked_against_its_base(tmp_path):
    from flora_export.errors import FloraError
    model = ffba_model(FFBAConfig(width=8), seed=1)
    save_adapter(model, tmp_path)
    with pytest.raises(FloraError, match="another base"):
        load_adapter(random_model(PRESETS["tiny"], seed=9), tmp_path)
    load_adapter(random_model(PRESETS["tiny"], seed=9), tmp_path, check_base=False)


def test_activation_zero_preserving():
    for name in ("identity", "relu", "silu"):
        assert activation(name, torch.zeros(3)).abs().sum() == 0   # padding stays inert


def peft_lora(tmp_path, rank=4, targets=("q_proj", "v_proj", "o_proj", "up_proj", "down_proj")):
    model = random_model(PRESETS["tiny"], seed=4)
    attach_lora(model, LoraConfig(rank=rank, alpha=8.0, targets=targets))
    randomize_adapter(model, 4)
    save_adapter(model, tmp_path)
    return model


def test_lora_peft_layout_unmerged_and_merged(tmp_path):
    model = peft_lora(tmp_path)
    ref = logits(model)
    from safetensors.torch import load_file
    keys = load_file(tmp_path / "adapter_model.safetensors")
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert keys["base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"].shape == (256, 4)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["peft_type"] == "LORA" and meta["r"] == 4
    fresh = random_model(PRESETS["tiny"], seed=4)
    load_adapter(fresh, tmp_path)
    assert (logits(fresh) - ref).abs().max() < 1e-6
    merge_lora(fresh)
    assert not any("lora" in n for n, _ in fresh.named_parameters())
    assert (logits(fresh) - ref).abs().max() < 1e-5


def test_lora_matches_peft_semantics(tmp_path):
    """Each targeted HF projection gains scale * B A x on its own rows only."""
    model = peft_lora(tmp_path, targets=("k_proj",))
    proj = model.layers[0].self_attn.qkv_proj
    x = torch.randn(3, 128)
    with torch.no_grad():
        delta = proj(x) - proj.base(x)
        k_delta = 2.0 * x @ proj.lora_A["k_proj"].weight.T @ proj.lora_B["k_proj"].weight.T
    assert delta[:, :128].abs().max() == 0 and delta[:, 192:].abs().max() == 0
    assert torch.allclose(delta[:, 128:192], k_delta, atol=1e-6)


def test_loaded_model_adapter_on_disk(tiny_base, tiny_ffba):
    model = load_model(tiny_base)
    load_adapter(model, tiny_ffba)
    assert model.adapter_state.source.files["adapter_model.safetensors"]
    fuse(model)
    assert model.adapter_state.fused_width == 64


# ---------------------------------------------------------------- ffba-neurons

NEURONS = FFBAConfig(width=24, alpha=12.0, variant="ffba-neurons")      # s = 1/2, pads to 32


def test_neurons_fused_equals_unfused_and_unfuse_restores():
    """ffba-neurons are extra gated MLP neurons: fused, gate_up_proj gains 32 rows on each
    half and down_proj 32 columns (width 24 padded), the MLP still runs 2 linears and the
    attention block is untouched; fused == unfused; unfuse gives back the exact pair."""
    model = ffba_model(NEURONS, seed=3)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 3 * PRESETS["tiny"].num_hidden_layers       # A_gate, A_up, B
    from flora_export.train.budget import ffba_params
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == \
        ffba_params(PRESETS["tiny"], 24, "ffba-neurons") == 2 * 3 * 24 * 128
    ref_up = model.layers[1].mlp.adapter.A_up.weight.clone()
    ref = logits(model)
    fuse(model, pad_to=32)
    mlp, attn = model.layers[0].mlp, model.layers[0].self_attn
    assert mlp.gate_up_proj.out_features == 2 * (256 + 32)
    assert mlp.down_proj.in_features == 256 + 32 and mlp.adapter_width == 0
    assert attn.qkv_proj.out_features == 128 + 2 * 64 and attn.o_proj.in_features == 128
    assert count_fused_linears(model) == 2 * PRESETS["tiny"].num_hidden_layers
    assert sum(isinstance(m, torch.nn.Linear) for m in model.layers[0].modules()) == 4
    assert (logits(model) - ref).abs().max() < 1e-5
    unfuse(model)
    assert torch.equal(model.layers[1].mlp.adapter.A_up.weight, ref_up)
    assert model.layers[1].mlp.gate_up_proj.out_features == 2 * 256
    assert (logits(model) - ref).abs().max() < 1e-5


def test_neurons_are_wider_transformers_mlps(tmp_path):
    """Independent construction: transformers' LlamaForCausalLM whose gate_proj / up_proj
    gain the saved A_gate / A_up as extra rows and down_proj s * B as extra columns (an
    MLP with intermediate_size + width) gives our unfused and fused logits."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from conftest import write_base

    base_dir = write_base(tmp_path / "base", seed=6)
    ours = load_model(base_dir)
    attach_ffba(ours, NEURONS)
    randomize_adapter(ours, seed=6)
    save_adapter(ours, tmp_path / "neurons")
    ab = load_file(tmp_path / "neurons" / "adapter_model.safetensors")
    assert set(ab) == {f"layers.{i}.mlp.{h}" for i in range(2) for h in ("A_gate", "A_up", "B")}
    hf = transformers.LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        base_ref = hf(TOKENS).logits
        for i, layer in enumerate(hf.model.layers):
            m = layer.mlp
            for proj, extra in ((m.gate_proj, ab[f"layers.{i}.mlp.A_gate"]),
                                (m.up_proj, ab[f"layers.{i}.mlp.A_up"])):
                proj.weight = torch.nn.Parameter(torch.cat([proj.weight, extra]))
            m.down_proj.weight = torch.nn.Parameter(
                torch.cat([m.down_proj.weight, 0.5 * ab[f"layers.{i}.mlp.B"]], dim=1))
        ref = hf(TOKENS).logits
    assert (ref - base_ref).abs().max() > 0.01          # the adapter matters
    assert (logits(ours) - ref).abs().max() < 1e-5
    fuse(ours)
    assert (logits(ours) - ref).abs().max() < 1e-5
    for fused in (False, True):                          # files round-trip, fused or not
        model = load_model(base_dir)
        load_adapter(model, tmp_path / "neurons")
        if fused:
            fuse(model)
        save_adapter(model, tmp_path / f"again{fused}")
        fresh = load_model(base_dir)
        load_adapter(fresh, tmp_path / f"again{fused}")
        assert fresh.adapter_state.config == NEURONS
        assert (logits(fresh) - ref).abs().max() < 1e-5


def test_neurons_refuse_a_side_channel_activation():
    from flora_export.errors import FloraError
    with pytest.raises(FloraError, match="activation='relu' does not apply to variant "
                                         "ffba-neurons"):
        FFBAConfig(width=8, variant="ffba-neurons", activation="relu")


@pytest.mark.parametrize("init", ["kaiming", "gaussian", "orthogonal"])
def test_init_sets_the_forward_half_and_keeps_b_zero(init):
    base = random_model(PRESETS["tiny"], seed=1)
    ref = logits(base)
    attach_ffba(base, FFBAConfig(width=16, init=init))
    a = base.layers[0].self_attn.adapter.A.weight
    assert torch.equal(logits(base), ref)                # B = 0: still a no-op
    # row norms: kaiming-uniform sqrt(d / (3 d)), gaussian ~1, orthogonal exactly 1
    expected = {"kaiming": 3 ** -0.5, "gaussian": 1.0, "orthogonal": 1.0}[init]
    assert abs(a.norm(dim=1).mean().item() - expected) < 0.1


@pytest.mark.slow
def test_neurons_export_one_quantized_linear_per_projection(tmp_path, tiny_base):
    """The int4 .pte of an ffba-neurons adapter: 2 fused projections per layer, and still
    one quantized (XNNPACK-delegated) linear per projection and for the head."""
    pytest.importorskip("executorch")
    from conftest import write_ffba
    from flora_export.export import ExportConfig, export

    adapter = write_ffba(tiny_base, tmp_path / "neurons", NEURONS, seed=2)
    model = load_model(tiny_base)
    load_adapter(model, adapter)
    export(model, "android", tmp_path / "out", ExportConfig(quant="8da4w", max_seq=64))
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    c, layers = m["counts"], PRESETS["tiny"].num_hidden_layers
    assert c["fused_linears"] == 2 * layers
    assert c["quantized_linear_ops"] == c["delegated_linear_ops"] == 4 * layers + 1
    assert m["adapter"]["fused_width"] == 32 and m["parity"]["passed"]
