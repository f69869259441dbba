"""Hostile model inputs: every file and field is honoured as transformers honours it, or
refused in one line that names it. Classes: checkpoint files, config.json fields,
generation/tokenizer configs, and the field registry itself (empty paths and the CLI's
--allow-unused-weights: test_bad_input_paths.py).

Parity cases compare our logits with transformers' LlamaForCausalLM on the same
directory (fp32, < 1e-5 as in tests/test_model.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from flora_export.errors import FloraError
from flora_export.model import load_model, save_hf_checkpoint
from flora_export.model.presets import random_model
from flora_export.model.tokenizer import byte_level_tokenizer

from conftest import shapes, write_base

transformers = pytest.importorskip("transformers")

TOKENS = torch.randint(0, 512, (2, 13), generator=torch.Generator().manual_seed(0))
WEIGHTS = "model.safetensors"


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    edit(data)
    path.write_text(json.dumps(data))


def theirs(path: Path):
    return transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def assert_matches_transformers(path: Path, **load) -> None:
    ours = load_model(path, **load)
    with torch.no_grad():
        assert (ours(TOKENS) - theirs(path)(TOKENS).logits).abs().max() < 1e-5


def refused(path: Path, *words: str, **load) -> str:
    with pytest.raises(FloraError) as e:
        load_model(path, **load)
    line = str(e.value)
    assert "\n" not in line and "fix:" in line, line
    for w in words:
        assert w in line, line
    return line


@pytest.fixture
def base(tmp_path) -> Path:
    return write_base(tmp_path / "base", seed=3)


# ---------------------------------------------------------------- checkpoint files

def test_stale_second_safetensors_is_ignored_like_transformers(base, caplog):
    """A stale copy (same names, all zeros) beside model.safetensors: transformers loads
    model.safetensors only; so do we (was: glob order, the zeros won)."""
    zeros = {k: torch.zeros_like(v) for k, v in load_file(base / WEIGHTS).items()}
    save_file(zeros, str(base / "model-old.safetensors"))
    save_file(zeros, str(base / "zz.safetensors"))
    with caplog.at_level(logging.WARNING):
        assert_matches_transformers(base)
    assert "model-old.safetensors" in caplog.text and "zz.safetensors" in caplog.text


def test_no_model_safetensors_and_no_index_is_refused(base):
    (base / WEIGHTS).rename(base / "weights.safetensors")
    refused(base, "no model.safetensors", "weights.safetensors")


@pytest.mark.parametrize("extra", ["layers", "stray"])
def test_unused_tensors_refused_unless_allowed(tmp_path, extra, caplog):
    """A 4-layer checkpoint whose config.json says 2 (was: exported 2 layers silently)."""
    path = write_base(tmp_path / "m", shapes(num_hidden_layers=4), seed=2)
    if extra == "layers":
        edit_json(path / "config.json", lambda c: c.update(num_hidden_layers=2))
        words = ("model.layers.2.", "2 layers", "--allow-unused-weights")
    else:
        t = load_file(path / WEIGHTS)
        t["model.extra_head.weight"] = torch.ones(3)
        save_file(t, str(path / WEIGHTS))
        words = ("1 tensors", "model.extra_head.weight")
    line = refused(path, *words)
    if extra == "layers":
        assert "(+" in line   # 18 unused tensors: the first few named, then a count
    with caplog.at_level(logging.WARNING):
        assert_matches_transformers(path, allow_unused_weights=True)
    assert "config.json does not use" in caplog.text


@pytest.mark.parametrize("where", ["stray", "needed"])
def test_integer_tensors_refused_by_name(base, where):
    """An int tensor the model does not use is reported as unused; one it needs (a packed
    quantized weight) is refused naming its dtype, not as an unreadable file."""
    t = load_file(base / WEIGHTS)
    if where == "stray":
        t["model.position_ids"] = torch.arange(8)
        words = ("model.position_ids", "does not use")
    else:
        t["model.norm.weight"] = torch.ones(128, dtype=torch.int8)
        words = ("'model.norm.weight'", "dtype I8")
    save_file(t, str(base / WEIGHTS))
    refused(base, *words)


def test_old_rotary_inv_freq_buffers_are_tolerated(base):
    t = load_file(base / WEIGHTS)
    t["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(16)
    save_file(t, str(base / WEIGHTS))
    assert_matches_transformers(base)


def shard(path: Path, parts: int = 2) -> dict[str, str]:
    """Split model.safetensors into `parts` shards plus an index; returns the weight map."""
    tensors = load_file(path / WEIGHTS)
    (path / WEIGHTS).unlink()
    names, index = sorted(tensors), {}
    for i in range(parts):
        fname = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        save_file({k: tensors[k] for k in names[i::parts]}, str(path / fname))
        index.update({k: fname for k in names[i::parts]})
    (path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 1}, "weight_map": index}))
    return index


def test_sharded_checkpoint_loads_exactly_its_shards(base, caplog):
    shard(base)
    stale = {"model.norm.weight": torch.zeros(128)}
    save_file(stale, str(base / "model-00003-of-00003.safetensors"))  # not in the index
    with caplog.at_level(logging.WARNING):
        assert_matches_transformers(base)
    assert "model-00003-of-00003.safetensors" in caplog.text


def test_missing_shard_is_named_by_file(base):
    shard(base)
    (base / "model-00002-of-00002.safetensors").unlink()
    refused(base, "shard model-00002-of-00002.safetensors", "missing")


def test_tensor_defined_twice_is_refused(base):
    index = shard(base)
    first = sorted(n for n, f in index.items() if f.startswith("model-00001"))[0]
    second = base / "model-00002-of-00002.safetensors"
    tensors = load_file(second)
    tensors[first] = torch.zeros_like(load_file(base / index[first])[first])
    save_file(tensors, str(second))
    refused(base, first, "defined twice")


@pytest.mark.parametrize("case", ["wrong-shard", "path-outside", "unlisted-tensor"])
def test_inconsistent_index_is_refused(base, case):
    index = shard(base)
    name = "model.norm.weight"
    other = next(f for f in set(index.values()) if f != index[name])
    if case == "wrong-shard":
        index[name], words = other, (name, "does not hold it")
    elif case == "path-outside":
        index[name], words = f"../{index[name]}", ("not a .safetensors file name",)
    else:
        del index[name]
        words = (f"holds tensor {name!r}", "does not list")
    edit_json(base / "model.safetensors.index.json", lambda d: d.update(weight_map=index))
    refused(base, *words)


def test_single_file_wins_over_an_index_like_transformers(base, caplog):
    (base / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.norm.weight": "gone.safetensors"}}))
    with caplog.at_level(logging.WARNING):
        assert_matches_transformers(base)
    assert "index.json is ignored" in caplog.text


def test_tied_head_must_equal_the_embedding(base):
    t = load_file(base / WEIGHTS)
    t["lm_head.weight"] = t["model.embed_tokens.weight"].clone()
    save_file(t, str(base / WEIGHTS))
    assert_matches_transformers(base)                   # equal copy: fine
    t["lm_head.weight"][0, 0] += 1.0
    save_file(t, str(base / WEIGHTS))
    refused(base, "tie_word_embeddings=true", "lm_head.weight differs")


# ---------------------------------------------------------------- config.json fields

ACTS = ["gelu_pytorch_tanh", "gelu", "relu", "swish", "silu"]


@pytest.mark.parametrize("act", ACTS)
def test_hidden_act_matches_transformers_and_is_recorded(base, act):
    """Was: gelu_pytorch_tanh exported as SiLU with `silu` in the manifest."""
    edit_json(base / "config.json", lambda c: c.update(hidden_act=act))
    assert_matches_transformers(base)
    assert load_model(base).config.to_hf_dict()["hidden_act"] == act


@pytest.mark.parametrize("target", ["onnx", pytest.param("android", marks=pytest.mark.slow)])
def test_gelu_model_exports_and_passes_the_runtime_check(base, tmp_path, target):
    """The activation reaches the runtime: ONNX Runtime / ExecuTorch match the eager model
    (measured max|diff| 0.0075 ONNX, 0.0093 ExecuTorch at 8da4w on this tiny model)."""
    from flora_export.export import ExportConfig, export
    edit_json(base / "config.json", lambda c: c.update(hidden_act="gelu_pytorch_tanh"))
    m = export(load_model(base), target, tmp_path / "out", ExportConfig(max_seq=128))
    assert m["model"]["config"]["hidden_act"] == "gelu_pytorch_tanh"
    assert all(r["parity"]["passed"] for r in m["results"].values()), m["results"]


def test_unsupported_hidden_act_is_refused_by_value(base):
    for act in ("quick_gelu", "gelu_new", "tanh"):
        edit_json(base / "config.json", lambda c: c.update(hidden_act=act))
        refused(base, f"hidden_act={act!r}")


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
ROPES = {   # config.json rope keys -> transformers 5 reads them as described
    "scaling-wins-over-parameters": dict(rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                          "rope_theta": 1000.0},
                                         rope_scaling={"rope_type": "linear", "factor": 4.0},
                                         rope_theta=50.0),
    "theta-in-scaling-wins": dict(rope_parameters={"rope_type": "default", "rope_theta": 9.0},
                                  rope_scaling={**LLAMA3, "rope_theta": 77.0}, rope_theta=5.0),
    "empty-scaling-falls-back": dict(rope_parameters={"rope_type": "linear", "factor": 3.0,
                                                      "rope_theta": 300.0}, rope_scaling={}),
    "parameters-only": dict(rope_parameters={**LLAMA3, "rope_theta": 1e4}, rope_scaling=None,
                            rope_theta=5.0),
    "legacy-type-key": dict(rope_scaling={"type": "linear", "factor": 2.0}, rope_theta=1e4),
    "rope-type-beats-type": dict(rope_scaling={"type": "llama3", "rope_type": "linear",
                                               "factor": 2.0}, rope_theta=1e4),
    "llama3-without-original": dict(rope_scaling={k: v for k, v in LLAMA3.items()
                                                  if k != "original_max_position_embeddings"},
                                    max_position_embeddings=256, rope_theta=1e4),
    "nothing": dict(rope_scaling=None, rope_theta=None),
}


@pytest.mark.parametrize("name", ROPES)
def test_rope_precedence_matches_transformers(base, name):
    """Was: rope_parameters read before rope_scaling (transformers 5 does the opposite)."""
    def edit(c):
        for k in ("rope_scaling", "rope_parameters", "rope_theta"):
            c.pop(k, None)
        c.update({k: v for k, v in ROPES[name].items() if v is not None or k != "rope_theta"})
    edit_json(base / "config.json", edit)
    ours, ref = load_model(base), theirs(base)
    from flora_export.model.rope import inverse_frequencies
    inv = ref.model.rotary_emb.inv_freq
    assert torch.allclose(inverse_frequencies(ours.config), inv, rtol=1e-6, atol=0)
    with torch.no_grad():
        assert (ours(TOKENS) - ref(TOKENS).logits).abs().max() < 1e-5


@pytest.mark.parametrize("edit,words", [
    (dict(partial_rotary_factor=0.5), ("partial_rotary_factor=0.5",)),
    (dict(rope_scaling=None, rope_parameters={"rope_type": "default",
                                              "partial_rotary_factor": 0.25}),
     ("partial_rotary_factor=0.25",)),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0, "beta_fast": 32}),
     ("rope_scaling.beta_fast=32",)),
    (dict(rope_scaling={**LLAMA3}, original_max_position_embeddings=1024),
     ("original_max_position_embeddings=1024",)),
    (dict(rope_scaling={**LLAMA3, "low_freq_factor": 4.0}), ("low_freq_factor < high_freq",)),
    (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), ("'dynamic'",)),
    (dict(sliding_window=4096), ("sliding_window=4096",)),
    (dict(quantization_config={"quant_method": "gptq", "bits": 4}), ("quantization_config",)),
    (dict(auto_map={"AutoModelForCausalLM": "modeling_x.X"}), ("auto_map", "remote code")),
    (dict(attention_bias="false"), ("attention_bias must be true or false",)),
    (dict(tie_word_embeddings=1), ("tie_word_embeddings",)),
    (dict(num_hidden_layers=True), ("num_hidden_layers",)),
    (dict(rms_norm_eps=-1), ("rms_norm_eps",)),
    (dict(architectures=["MistralForCausalLM"]), ("MistralForCausalLM",)),
    (dict(hidden_size=130, head_dim=32), ("not a multiple of num_attention_heads",)),
    (dict(eos_token_id="</s>"), ("eos_token_id",)),
    (dict(eos_token_id=[385, None]), ("eos_token_id",)),
    (dict(max_position_embeddings="big"), ("max_position_embeddings",)),
    (dict(rope_theta=float("nan")), ("rope_theta",)),
    (dict(rope_scaling={"rope_type": "linear", "factor": "2"}), ("factor='2'",)),
    (dict(model_type=None), ("model_type=None",)),
], ids=["partial-rotary", "partial-rotary-in-dict", "rope-key-for-other-type",
        "original-max-pos-mismatch", "llama3-low-ge-high", "dynamic-rope", "sliding-window",
        "quantized", "auto-map", "bool-as-string", "bool-as-int", "int-as-bool", "negative-eps",
        "other-architecture", "hidden-not-divisible", "eos-not-an-id", "eos-with-null",
        "max-pos-string", "nan-theta", "string-factor", "null-model-type"])
def test_config_field_refused_by_name(base, edit, words):
    edit_json(base / "config.json", lambda c: c.update(edit))
    refused(base, *words)


def test_unknown_config_fields_off_accepted_else_refused(base):
    edit_json(base / "config.json", lambda c: c.update(some_future_switch=None, foo_list=[],
                                                       rope_interleaved=False))
    assert_matches_transformers(base)
    edit_json(base / "config.json", lambda c: c.update(logit_softcapping=30.0))
    refused(base, "unknown field logit_softcapping=30.0")


@pytest.mark.parametrize("what", ["biases", "defaults", "head-dim"])
def test_architecture_fields_match_transformers(tmp_path, what):
    """attention_bias/mlp_bias with real bias values; transformers' defaults for absent
    keys (rms_norm_eps 1e-6, untied head); head_dim != hidden/heads."""
    cfg = {"biases": shapes(attention_bias=True, mlp_bias=True, tie_word_embeddings=False),
           "defaults": shapes(tie_word_embeddings=False, rms_norm_eps=1e-6),
           "head-dim": shapes(head_dim=48)}[what]
    model = random_model(cfg, seed=4)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.5, generator=gen)
    path = tmp_path / "m"
    save_hf_checkpoint(model, path)
    byte_level_tokenizer(cfg.vocab_size, cfg.bos_token_id).save(str(path / "tokenizer.json"))
    if what == "defaults":
        edit_json(path / "config.json", lambda c: [c.pop(k) for k in
                                                   ("rms_norm_eps", "tie_word_embeddings")])
    assert_matches_transformers(path)


# ---------------------------------------------------------------- generation / tokenizer config

def test_generation_config_ids_win_and_its_fields_are_checked(base):
    edit_json(base / "generation_config.json", lambda g: g.update(
        eos_token_id=[390, 391], bos_token_id=384, do_sample=True, temperature=0.6, top_p=0.9,
        transformers_version="5.24.0"))
    cfg = load_model(base).config
    assert cfg.eos_token_ids == (390, 391) and cfg.bos_token_id == 384
    assert "generation_config.json" in load_model(base).source.files
    edit_json(base / "generation_config.json", lambda g: g.update(eos_token_id="end"))
    refused(base, "generation_config.json", "eos_token_id")
    edit_json(base / "generation_config.json", lambda g: g.update(eos_token_id=2,
                                                                  future_knob=3))
    refused(base, "generation_config.json", "future_knob=3")


@pytest.mark.parametrize("field", ["add_eos_token", "add_prefix_space", "do_lower_case"])
def test_tokenizer_config_switches_refused(base, field):
    edit_json(base / "tokenizer_config.json", lambda t: t.update(
        {"add_bos_token": True, "chat_template": "{{ x }}", "unknown_key": 5, field: True}))
    refused(base, f"{field}=True", "tokenizer_config.json")
    edit_json(base / "tokenizer_config.json", lambda t: t.update({field: False}))
    load_model(base)


# ---------------------------------------------------------------- the registry

def test_registry_covers_transformers_and_docs():
    """Every key transformers writes for a Llama config / generation config is classified;
    the activation list is the model's; docs/inputs.md names every registered field."""
    from flora_export.adapters.fields import FFBA, PEFT_LORA
    from flora_export.model.fields import (GENERATION_CONFIG, HIDDEN_ACTS, LLAMA_CONFIG,
                                           SAFETENSORS_INDEX, TOKENIZER_CONFIG)
    from flora_export.model.llama import MLP_ACTIVATIONS
    assert set(HIDDEN_ACTS) == set(MLP_ACTIVATIONS)
    assert set(transformers.LlamaConfig().to_dict()) <= set(LLAMA_CONFIG.fields)
    assert set(transformers.GenerationConfig().to_dict()) <= set(GENERATION_CONFIG.fields)
    docs = (Path(__file__).parent.parent / "docs" / "inputs.md").read_text()
    for table in (LLAMA_CONFIG, GENERATION_CONFIG, TOKENIZER_CONFIG, SAFETENSORS_INDEX,
                  PEFT_LORA, FFBA):
        missing = [n for n in table.fields if f"`{n}`" not in docs]
        assert not missing, f"docs/inputs.md lacks {table.file} fields {missing}"
