"""Every decoder family against transformers' own classes on the same checkpoint.

Each case is a tiny random checkpoint written by transformers (tests/family_checkpoints.py):
full-sequence logits, prefill + decode through the static cache, and greedy tokens
against transformers' generate(); sliding-window cases run longer than their window.
Also: each family's config.json fields (registry, transformers' defaults, refusals),
FFBA fusion, the presets' shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flora_export.errors import FloraError
from flora_export.model import PRESETS, load_model, save_hf_checkpoint

from family_checkpoints import CASES, SLIDING, VOCAB, edit_config, reference, write_family

transformers = pytest.importorskip("transformers")

TOKENS = torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(0))


def greedy_ours(model, prompt: torch.Tensor, n: int) -> list[int]:
    """Greedy decoding through the static cache: a prefill, then one token a step."""
    model.setup_cache(32)
    logits = model(prompt, torch.tensor([0]))
    out = []
    for i in range(n):
        out.append(int(logits[0, -1].argmax()))
        logits = model(torch.tensor([[out[-1]]]), torch.tensor([prompt.shape[1] + i]))
    return out


def greedy_theirs(model, prompt: torch.Tensor, n: int) -> list[int]:
    model.generation_config.eos_token_id = None      # n tokens, whatever they are
    model.generation_config.pad_token_id = 0
    ids = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return ids[0, prompt.shape[1]:].tolist()


@pytest.mark.parametrize("case", CASES)
def test_family_matches_transformers(case, tmp_path):
    path = write_family(tmp_path / "hf", case, seed=3)
    ours, theirs = load_model(path), reference(path)
    with torch.no_grad():
        ref = theirs(TOKENS).logits
        full = ours(TOKENS)
        assert (full - ref).abs().max() < 1e-5
        ours.setup_cache(32)
        steps = [ours(TOKENS[:1, :9], torch.tensor([0]))]
        steps += [ours(TOKENS[:1, i:i + 1], torch.tensor([i])) for i in range(9, 17)]
        assert (torch.cat(steps, 1) - full[:1]).abs().max() < 1e-5
        prompt = TOKENS[1:, :5]
        assert greedy_ours(ours, prompt, 12) == greedy_theirs(theirs, prompt, 12)
        # what we write back is the same model to transformers
        save_hf_checkpoint(ours, tmp_path / "ours")
        again = reference(tmp_path / "ours")
        assert (again(TOKENS).logits - full).abs().max() < 1e-5


def test_sliding_cases_are_longer_than_their_window(tmp_path):
    for case in SLIDING:
        cfg = load_model(write_family(tmp_path / case, case)).config
        windows = [cfg.window(i) for i in range(cfg.num_hidden_layers)]
        assert any(w is not None and w < TOKENS.shape[1] - 4 for w in windows), case
        assert None in windows or case in ("mistral", "phi3-sliding"), case


def test_gemma3_legacy_config_matches_transformers(tmp_path):
    """A Gemma 3 config.json as transformers 4.50 wrote it: rope_theta / rope_local_base_freq,
    rope_scaling for the global layers, sliding_window_pattern instead of layer_types."""
    path = write_family(tmp_path, "gemma3", seed=1)

    def legacy(c):
        for key in ("rope_parameters", "layer_types", "_sliding_window_pattern"):
            c.pop(key, None)
        c.update(rope_theta=1e6, rope_local_base_freq=1e4, sliding_window_pattern=2,
                 rope_scaling={"rope_type": "linear", "factor": 4.0}, cache_implementation="hybrid")
    edit_config(path, legacy)
    ours, theirs = load_model(path), reference(path)
    assert ours.config.layer_types == ("sliding_attention", "full_attention") * 2
    with torch.no_grad():
        assert (ours(TOKENS) - theirs(TOKENS).logits).abs().max() < 1e-5


def test_phi3_longrope_long_factors_and_the_cache_limit(tmp_path):
    """transformers uses the long factors once the sequence passes
    original_max_position_embeddings (32 here): so does a full-sequence pass; a static
    cache longer than 32 is refused (transformers' cache would mix both)."""
    path = write_family(tmp_path, "phi3", seed=2)
    ours, theirs = load_model(path), reference(path)
    long = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (ours(long) - theirs(long).logits).abs().max() < 1e-5
        assert (ours(long[:, :20]) - theirs(long[:, :20]).logits).abs().max() < 1e-5
    with pytest.raises(FloraError, match="original_max_position_embeddings 32"):
        ours.setup_cache(64)
    ours.setup_cache(32)


def test_phi3_legacy_su_rope_type_matches_transformers(tmp_path):
    path = write_family(tmp_path, "phi3", seed=5)

    def legacy(c):
        rope = c.pop("rope_parameters")
        c.update(rope_theta=rope.pop("rope_theta"), partial_rotary_factor=0.5,
                 rope_scaling={**{k: v for k, v in rope.items() if k != "rope_type"},
                               "type": "su"})
    edit_config(path, legacy)
    with torch.no_grad():
        assert (load_model(path)(TOKENS) - reference(path)(TOKENS).logits).abs().max() < 1e-5


@pytest.mark.parametrize("case", ["gemma3", "phi3"])
def test_ffba_fused_equals_unfused(case, tmp_path):
    """FFBA on every family: A extends qkv_proj / gate_up_proj, B o_proj / down_proj (for
    Gemma 3 before the post-sub-block norms, as the unfused pair adds)."""
    from flora_export.adapters import FFBAConfig, attach_ffba
    from flora_export.fuse import fuse

    from conftest import randomize_adapter

    model = load_model(write_family(tmp_path, case, seed=6))
    with torch.no_grad():
        base = model(TOKENS)
    attach_ffba(model, FFBAConfig(width=40, alpha=80.0, activation="silu"))
    randomize_adapter(model, seed=1)
    with torch.no_grad():
        unfused = model(TOKENS)
        fuse(model, pad_to=32)
        fused = model(TOKENS)
        model.setup_cache(32, batch_size=2)
        steps = [model(TOKENS[:, :9], torch.tensor([0]))]
        steps += [model(TOKENS[:, i:i + 1], torch.tensor([i])) for i in range(9, 17)]
    assert (unfused - base).abs().max() > 1e-2        # the adapter changes the model
    assert (fused - unfused).abs().max() < 1e-5
    assert (torch.cat(steps, 1) - fused).abs().max() < 1e-5
    assert model.layers[0].self_attn.adapter_width == 64


@pytest.mark.parametrize("case", ["qwen2", "qwen3", "gemma3", "phi3-sliding", "smollm3", "mistral"])
def test_flora_train_ffba_on_the_family_saves_loads_and_fuses(case, tmp_path):
    """flora-train's FFBA recipe on the family's checkpoint (model.base): the held-out loss
    falls, the saved adapter loads onto a fresh copy, and fuses to the same logits."""
    from flora_export.adapters import load_adapter
    from flora_export.fuse import fuse
    from flora_export.train import load_recipe, train

    # std 0.1 weights (transformers' default 0.02 leaves a random head too flat for a
    # frozen base to move far): the adapter lowers the loss by 0.5 nats or more in 40 steps
    base = write_family(tmp_path / "base", case, seed=3, init={"initializer_range": 0.1})
    out = tmp_path / "run"
    recipe = load_recipe(Path("recipes/ffba-shift.yaml"), [
        f"model.base={base}", f"out={out}", "data.tasks=[copy]", "data.eval_size=32",
        "train.steps=40", "train.batch_size=8", "train.lr=3e-2", "train.warmup_steps=4",
        "train.log_every=10", "train.save_every=0", "method.ffba.width=16",
        "method.ffba.alpha=128"])
    metrics = train(recipe, progress=False)
    assert metrics["eval"]["loss"] < metrics["eval_before"]["loss"] - 0.2
    model, plain = load_model(base), load_model(base)
    load_adapter(model, out)
    added = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    assert added == metrics["trainable_params"]              # every trained weight was saved
    with torch.no_grad():
        unfused = model(TOKENS)
        fuse(model, pad_to=32)
        fused = model(TOKENS)
        plain = plain(TOKENS)
    assert (unfused - plain).abs().max() > 1e-3              # the trained adapter is there
    assert (fused - unfused).abs().max() < 1e-5


# ---------------------------------------------------------------- config.json fields

def test_registry_covers_each_family_and_the_docs():
    """Every key transformers writes for a family's config is classified; docs/inputs.md
    names every field in the family's table, in the rows every family shares, or (a
    field classified exactly as for Llama) in the llama table."""
    from flora_export.model.fields import LLAMA_CONFIG, MODEL_CONFIGS
    classes = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config",
               "gemma3_text": "Gemma3TextConfig", "phi3": "Phi3Config",
               "smollm3": "SmolLM3Config", "mistral": "MistralConfig"}
    assert set(classes) == set(MODEL_CONFIGS)
    docs = (Path(__file__).parent.parent / "docs" / "inputs.md").read_text()

    def section(title):
        return docs.split(f"### config.json ({title})")[1].split("\n### ")[0]
    for kind, cls in classes.items():
        written = set(getattr(transformers, cls)().to_dict())
        table = MODEL_CONFIGS[kind]
        assert written <= set(table.fields), (kind, written - set(table.fields))
        text = section(kind) + ("" if kind == "llama" else section("every other family"))
        missing = [n for n, f in table.fields.items() if f"`{n}`" not in text and
                   LLAMA_CONFIG.fields.get(n) != f]
        assert not missing, f"docs/inputs.md lacks {kind} fields {missing}"


MINIMAL = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=96, num_hidden_layers=12,
               num_attention_heads=32)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gemma3_text", "phi3", "smollm3",
                                  "mistral"])
def test_absent_keys_default_like_transformers(kind):
    """A config.json with only the shapes: every default is transformers' class default."""
    from flora_export.model.config import LlamaConfig
    d = {**MINIMAL, "model_type": kind}
    ours, theirs = LlamaConfig.from_hf_dict(d), transformers.AutoConfig.for_model(**d)
    act = "hidden_activation" if kind == "gemma3_text" else "hidden_act"
    eos = theirs.eos_token_id
    assert (ours.num_key_value_heads, ours.head_dim, ours.rms_norm_eps,
            ours.tie_word_embeddings, ours.max_position_embeddings, ours.hidden_act,
            ours.bos_token_id, ours.eos_token_ids) == (
        theirs.num_key_value_heads, getattr(theirs, "head_dim", None) or 8,
        theirs.rms_norm_eps, theirs.tie_word_embeddings, theirs.max_position_embeddings,
        getattr(theirs, act), theirs.bos_token_id, () if eos is None else (eos,))
    rope = theirs.rope_parameters
    assert ours.rope_theta == rope.get("full_attention", rope)["rope_theta"]
    windows = [ours.window(i) for i in range(12)]
    types = getattr(theirs, "layer_types", None) or (
        ["sliding_attention" if getattr(theirs, "sliding_window", None) else "full_attention"]
        * 12)
    assert windows == [theirs.sliding_window if t == "sliding_attention" else None for t in types]
    if kind == "smollm3":
        assert [int(i not in ours.nope_layers) for i in range(12)] == theirs.no_rope_layers


GEMMA3_1B = {   # google/gemma-3-1b-pt config.json as published
    "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid",
    "eos_token_id": [1, 106], "final_logit_softcapping": None, "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152, "initializer_range": 0.02,
    "intermediate_size": 6912, "max_position_embeddings": 32768, "model_type": "gemma3_text",
    "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
    "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
    "rope_local_base_freq": 10000, "rope_scaling": None, "rope_theta": 1000000,
    "sliding_window": 512, "sliding_window_pattern": 6, "torch_dtype": "bfloat16",
    "transformers_version": "4.50.0.dev0", "use_cache": True, "vocab_size": 262144}
QWEN25_05B = {   # Qwen/Qwen2.5-0.5B config.json as published
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896,
    "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 32768,
    "max_window_layers": 24, "model_type": "qwen2", "num_attention_heads": 14,
    "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": True,
    "use_mrope": False, "use_sliding_window": False, "vocab_size": 151936}


def _phi4_mini() -> dict:
    """microsoft/Phi-4-mini-instruct config.json as published (its rope factors are the
    preset's)."""
    rope = PRESETS["phi-4-mini"].rope_scaling
    return {
        "architectures": ["Phi3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_phi3.Phi3Config",
                     "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM",
                     "AutoTokenizer": "Xenova/gpt-4o"},
        "bos_token_id": 199999, "embd_pdrop": 0.0, "eos_token_id": 199999, "full_attn_mod": 1,
        "hidden_act": "silu", "hidden_size": 3072, "initializer_range": 0.02,
        "intermediate_size": 8192, "interpolate_factor": 1, "lm_head_bias": False,
        "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "phi3",
        "num_attention_heads": 24, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "original_max_position_embeddings": 4096, "pad_token_id": 199999,
        "partial_rotary_factor": 0.75, "resid_pdrop": 0.0, "rms_norm_eps": 1e-05,
        "rope_scaling": {"long_factor": rope["long_factor"], "short_factor": rope["short_factor"],
                         "type": "longrope"},
        "rope_theta": 10000.0, "sliding_window": 262144, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "transformers_version": "4.45.0", "use_cache": True,
        "vocab_size": 200064}


@pytest.mark.parametrize("name,published", [("gemma3-1b", GEMMA3_1B),
                                            ("qwen2.5-0.5b", QWEN25_05B),
                                            ("phi-4-mini", _phi4_mini())])
def test_published_configs_load_as_the_presets(name, published):
    """The real config.json of each model is accepted field by field and describes the
    preset's architecture (token ids aside: a preset's tokenizer is generated)."""
    import dataclasses

    from flora_export.model.config import LlamaConfig
    cfg = LlamaConfig.from_hf_dict(published)
    preset = PRESETS[name]
    ids = dict(bos_token_id=preset.bos_token_id, eos_token_ids=preset.eos_token_ids)
    assert dataclasses.replace(cfg, **ids) == preset


# published parameter counts, billions (model cards)
PUBLISHED_SIZES = {"qwen3-0.6b": 0.6, "qwen3-1.7b": 1.7, "qwen2.5-0.5b": 0.49,
                   "qwen2.5-1.5b": 1.54, "gemma3-1b": 1.0, "phi-4-mini": 3.8,
                   "smollm2-360m": 0.362, "smollm2-1.7b": 1.71}


@pytest.mark.parametrize("name", PUBLISHED_SIZES)
def test_family_presets_have_the_published_sizes(name):
    from flora_export.model.llama import LlamaModel
    with torch.device("meta"):
        model = LlamaModel(PRESETS[name])
    billions = sum(p.numel() for p in model.parameters()) / 1e9    # tied: counted once
    assert abs(billions / PUBLISHED_SIZES[name] - 1) < 0.03, billions


def _refused(path: Path, *words: str) -> None:
    with pytest.raises(FloraError) as e:
        load_model(path)
    line = str(e.value)
    assert "\n" not in line and "fix:" in line, line
    for w in words:
        assert w in line, line


@pytest.mark.parametrize("case,edit,words", [
    ("gemma3", dict(attn_logit_softcapping=50.0), ("attn_logit_softcapping=50.0",)),
    ("gemma3", dict(use_bidirectional_attention=True), ("use_bidirectional_attention",)),
    ("gemma3", dict(rope_parameters={"rope_type": "linear", "factor": 2.0}),
     ("rope_parameters.factor", "layer type")),
    ("gemma3", dict(partial_rotary_factor=0.5), ("partial_rotary_factor=0.5",)),
    ("phi3", dict(original_max_position_embeddings=64), ("original_max_position_embeddings",
                                                         "differs")),
    ("phi3", dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
     ("'linear'",)),
    ("phi3", dict(rope_parameters={"rope_type": "longrope", "short_factor": [1.0] * 3,
                                   "long_factor": [2.0] * 3, "rope_theta": 1e4}),
     ("short_factor must be 4",)),
    ("phi3", dict(auto_map={"AutoModelForCausalLM": "modeling_x.PhiX"}), ("auto_map",)),
    ("phi3", dict(full_attn_mod=2), ("full_attn_mod=2",)),
    ("qwen2", dict(layer_types=["sliding_attention"] * 3), ("no sliding_window applies",)),
    ("qwen3", dict(partial_rotary_factor=0.5), ("partial_rotary_factor=0.5",)),
    ("qwen3", dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}),
     ("'yarn'",)),
    ("smollm3", dict(no_rope_layers=[1, 0]), ("no_rope_layers has 2 entries",)),
    ("mistral", dict(layer_types=["sliding_attention"] * 3), ("unknown field layer_types",)),
    ("mistral", dict(model_type="gemma3"), ("model_type='gemma3'",)),
], ids=lambda v: v if isinstance(v, str) else None)
def test_family_field_refused_by_name(case, edit, words, tmp_path):
    path = write_family(tmp_path, case)
    edit_config(path, lambda c: c.update(edit))
    _refused(path, *words)


def test_phi3_auto_map_to_its_own_classes_is_accepted(tmp_path):
    """Published Phi-3.5 / Phi-4-mini files name remote code that transformers replaces
    with its own Phi3 classes (flora-export never runs it)."""
    path = write_family(tmp_path, "phi3-sliding", seed=7)
    edit_config(path, lambda c: c.update(
        auto_map={"AutoConfig": "configuration_phi3.Phi3Config",
                  "AutoModelForCausalLM": "microsoft/Phi-3.5-mini-instruct--"
                                          "modeling_phi3.Phi3ForCausalLM",
                  "AutoTokenizer": "Xenova/gpt-4o"},
        full_attn_mod=1, interpolate_factor=1, lm_head_bias=False))
    with torch.no_grad():
        assert (load_model(path)(TOKENS) - reference(path)(TOKENS).logits).abs().max() < 1e-5
