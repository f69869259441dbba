"""PEFT LoRA adapters against PEFT itself: every adapter_config.json option is either
loaded to PEFT's exact output (unmerged and merged) or refused in one line naming it.

Each adapter is made by PEFT (`get_peft_model` on transformers' LlamaForCausalLM,
random LoRA weights, `save_pretrained`), so the files are what PEFT users ship."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from flora_export.adapters import load_adapter
from flora_export.errors import FloraError
from flora_export.fuse import merge_lora
from flora_export.model import load_model

from conftest import shapes, write_base

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TOKENS = torch.randint(0, 512, (2, 11), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A 3-layer tiny Llama, so layers_to_transform has layers to leave out."""
    return write_base(tmp_path_factory.mktemp("peft_base"), shapes(num_hidden_layers=3), seed=6)


def peft_adapter(base: Path, out: Path, **options):
    """(PEFT's logits, adapter dir) for a LoRA made by PEFT with `options`."""
    model = transformers.LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = peft.LoraConfig(task_type="CAUSAL_LM", **{"r": 4, "lora_alpha": 8, **options})
    wrapped = peft.get_peft_model(model, cfg).eval()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.05, generator=gen)
        ref = wrapped(TOKENS).logits
    wrapped.save_pretrained(out)
    return ref, out


CASES = {
    "alpha-and-rank-pattern": dict(target_modules=["q_proj", "v_proj", "down_proj"],
                                   rank_pattern={"v_proj": 2, "layers.1.mlp.down_proj": 6},
                                   alpha_pattern={"down_proj": 32, r"layers\.0\.self_attn\.q_proj": 1}),
    "rslora": dict(target_modules=["k_proj", "o_proj", "up_proj"], use_rslora=True, r=8),
    "rslora-with-patterns": dict(target_modules=["q_proj", "gate_proj"], use_rslora=True,
                                 rank_pattern={"gate_proj": 2}, alpha_pattern={"q_proj": 3}),
    "regex-targets": dict(target_modules=r".*\.(1|2)\.(self_attn\.(q|k)|mlp\.(up|down))_proj"),
    "layers-to-transform": dict(target_modules=["q_proj", "v_proj", "gate_proj"],
                                layers_to_transform=[0, 2]),
    "layers-pattern": dict(target_modules=["o_proj", "down_proj"], layers_to_transform=1,
                           layers_pattern="layers"),
    "exclude-modules": dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                            exclude_modules=r".*\.1\.self_attn\.(k|o)_proj"),
    "all-linear": dict(target_modules="all-linear"),
    "fan-in-fan-out": dict(target_modules=["q_proj", "up_proj"], fan_in_fan_out=True),
    "full-names": dict(target_modules=["model.layers.0.self_attn.v_proj", "mlp.gate_proj"]),
}


@pytest.mark.parametrize("name", CASES)
def test_lora_matches_peft_unmerged_and_merged(base, tmp_path, name):
    ref, adapter = peft_adapter(base, tmp_path / "lora", **CASES[name])
    model = load_model(base)
    load_adapter(model, adapter)
    with torch.no_grad():
        assert (model(TOKENS) - ref).abs().max() < 1e-5
        merge_lora(model)
        assert (model(TOKENS) - ref).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["alpha-and-rank-pattern", "rslora-with-patterns"])
def test_patterns_change_the_output(base, tmp_path, name):
    """Not vacuous: the same weights with the patterns dropped give other logits."""
    ref, adapter = peft_adapter(base, tmp_path / "lora", **CASES[name])
    meta = json.loads((adapter / "adapter_config.json").read_text())
    meta["alpha_pattern"] = {}
    (adapter / "adapter_config.json").write_text(json.dumps(meta))
    model = load_model(base)
    load_adapter(model, adapter)
    with torch.no_grad():
        assert (model(TOKENS) - ref).abs().max() > 1e-3


def test_our_saved_lora_loads_in_peft(base, tmp_path):
    """The other direction: rank/alpha patterns written by save_adapter mean the same to PEFT."""
    from flora_export.adapters import LoraConfig, attach_lora, save_adapter
    from conftest import randomize_adapter
    model = load_model(base)
    attach_lora(model, LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "down_proj"),
                                  rank_pattern={"down_proj": 2}, alpha_pattern={"q_proj": 2.0},
                                  use_rslora=True))
    randomize_adapter(model, 3)
    save_adapter(model, tmp_path / "ours")
    hf = transformers.LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "ours").eval()
    with torch.no_grad():
        assert (model(TOKENS) - theirs(TOKENS).logits).abs().max() < 1e-5


REFUSED = {   # option -> words the one-line refusal must contain
    "lm-head": (dict(target_modules=["q_proj", "lm_head"]), ("lm_head", "not supported")),
    "embed-tokens": (dict(target_modules=["embed_tokens"]), ("embed_tokens", "not supported")),
    "regex-hits-lm-head": (dict(target_modules=r".*(q_proj|lm_head)"), ("lm_head",)),
    "modules-to-save": (dict(target_modules=["q_proj"], modules_to_save=["lm_head"]),
                        ("modules_to_save", "lm_head")),
    "dora": (dict(target_modules=["q_proj"], use_dora=True), ("use_dora=True", "DoRA")),
    "bias-all": (dict(target_modules=["q_proj"], bias="all"), ("bias='all'",)),
    "lora-bias": (dict(target_modules=["v_proj"], lora_bias=True), ("lora_bias=True",)),
    "trainable-tokens": (dict(target_modules=["q_proj"], trainable_token_indices=[3, 4]),
                         ("trainable_token_indices",)),
    "layer-replication": (dict(target_modules=["q_proj"], layer_replication=[[0, 2], [1, 3]]),
                          ("layer_replication",)),
}


@pytest.mark.parametrize("name", REFUSED)
def test_unsupported_peft_features_refused_by_name(base, tmp_path, name):
    """Was: 'pass the base model the adapter was trained on' for all of these."""
    options, words = REFUSED[name]
    try:
        _, adapter = peft_adapter(base, tmp_path / "lora", **options)
    except (ValueError, TypeError, RuntimeError) as e:   # PEFT cannot even build it here
        pytest.fail(f"PEFT refused the fixture: {e}")
    with pytest.raises(FloraError) as e:
        load_adapter(load_model(base), adapter)
    line = str(e.value)
    assert "\n" not in line and "fix:" in line, line
    assert "base model the adapter was trained on" not in line, line
    for w in words:
        assert w in line, line


@pytest.mark.parametrize("edit,words", [
    (dict(init_lora_weights="pissa"), ("init_lora_weights='pissa'",)),
    (dict(peft_type="LORA", some_new_switch=True), ("unknown field some_new_switch=True",)),
    (dict(target_modules=["not_a_module"]), ("selects no projection",)),
    (dict(target_modules="(unclosed"), ("not a valid regular expression",)),
    (dict(rank_pattern={"q_proj": 0}), ("rank for", "positive integers")),
    (dict(task_type="SEQ_CLS"), ("task_type='SEQ_CLS'",)),
    (dict(alpha_pattern=[1]), ("alpha_pattern must be an object",)),
    (dict(layers_to_transform="abc"), ("layers_to_transform='abc'",)),
    (dict(layers_pattern=5, layers_to_transform=[0]), ("layers_pattern=5",)),
    (dict(exclude_modules=7), ("exclude_modules=7",)),
    (dict(use_rslora="yes"), ("use_rslora='yes'",)),
    (dict(target_modules=[1, 2]), ("target_modules=(1, 2)",)),
    (dict(r="4"), ("rank", "'4'")),
    (dict(rank_pattern={"q_proj": "2"}), ("rank for", "'2'")),
], ids=["pissa-init", "unknown-switch", "matches-nothing", "bad-regex", "zero-rank",
        "seq-cls", "pattern-not-object", "layers-string", "pattern-int", "exclude-int",
        "rslora-string", "int-targets", "string-rank", "string-rank-pattern"])
def test_bad_adapter_config_refused_by_name(base, tmp_path, edit, words):
    _, adapter = peft_adapter(base, tmp_path / "lora", target_modules=["q_proj"])
    meta = json.loads((adapter / "adapter_config.json").read_text())
    meta.update(edit)
    (adapter / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(FloraError) as e:
        load_adapter(load_model(base), adapter)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_every_peft_lora_field_is_classified():
    """A PEFT upgrade that adds a LoraConfig field fails here until the field is classified."""
    from flora_export.adapters.fields import PEFT_LORA
    fields = {f.name for f in dataclasses.fields(peft.LoraConfig)}
    assert fields <= set(PEFT_LORA.fields), sorted(fields - set(PEFT_LORA.fields))
