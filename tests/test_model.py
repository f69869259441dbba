"""The model definition against transformers' LlamaForCausalLM on the same weights."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from flora_export.export.executorch_attention import custom_op_attention
from flora_export.model import PRESETS, load_model
from flora_export.model.presets import random_model
from flora_export.model.storage import StoredLinear, widen_all

from conftest import shapes, write_base

transformers = pytest.importorskip("transformers")

SHAPES = {
    "tiny-tied-gqa-llama3rope": PRESETS["tiny"],
    "untied-mha-default-rope": shapes(tie_word_embeddings=False, num_key_value_heads=4,
                                      rope_scaling=None, rope_theta=10000.0),
    "head-dim-64-linear-rope": shapes(num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                                      rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "odd-ffn-3-layers": shapes(intermediate_size=200, num_hidden_layers=3, vocab_size=600),
}


def hf_model(path):
    return transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def greedy(step, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(step(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("name", SHAPES)
def test_matches_transformers(name, tmp_path):
    cfg = SHAPES[name]
    write_base(tmp_path, cfg, seed=3)
    ours, theirs = load_model(tmp_path), hf_model(tmp_path)
    tokens = torch.randint(0, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = theirs(tokens).logits
        assert (ours(tokens) - ref).abs().max() < 1e-5
        # prefill + decode through the static cache gives the same logits
        ours.setup_cache(64)
        steps = [ours(tokens[:1, :9], torch.tensor([0]))]
        steps += [ours(tokens[:1, i:i + 1], torch.tensor([i])) for i in range(9, 17)]
        assert (torch.cat(steps, 1) - ref[:1]).abs().max() < 1e-5
        prompt = tokens[0, :5].tolist()
        assert greedy(lambda t: ours(t), prompt, 12) == greedy(lambda t: theirs(t).logits, prompt, 12)


def test_executorch_attention_ops_match_plain_sdpa(tiny_base):
    model = load_model(tiny_base).setup_cache(32)
    tokens = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(tokens)
        with custom_op_attention(model):
            out = [model(tokens[:, :7], torch.tensor([0]))]
            out += [model(tokens[:, i:i + 1], torch.tensor([i])) for i in range(7, 12)]
    assert (torch.cat(out, 1) - ref).abs().max() < 1e-5


def test_sharded_and_bf16_checkpoints_load(tmp_path):
    base = write_base(tmp_path / "base", seed=5)
    ref = load_model(base)
    sharded = write_base(tmp_path / "sharded", seed=5, dtype=torch.bfloat16)
    tensors = load_file(sharded / "model.safetensors")
    names = sorted(tensors)
    (sharded / "model.safetensors").unlink()
    index = {}
    for i, part in enumerate((names[::2], names[1::2])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, str(sharded / fname))
        index.update({k: fname for k in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    model = load_model(sharded)
    # the matrices stay bf16 (2 bytes a parameter), norms and math are float32
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    assert isinstance(model.layers[1].mlp.down_proj, StoredLinear)
    assert model.norm.weight.dtype == model.compute_dtype == torch.float32
    diff = (model.layers[1].self_attn.qkv_proj.weight.float()
            - ref.layers[1].self_attn.qkv_proj.weight)
    assert 0 < diff.abs().max() < 1e-2   # bf16 rounding only
    assert model.lm_head.weight is model.embed_tokens.weight
    wide = widen_all(copy.deepcopy(model))           # the float32 copy computes the same
    assert wide.lm_head.weight is wide.embed_tokens.weight
    assert type(wide.layers[1].mlp.down_proj) is torch.nn.Linear
    tokens = torch.randint(0, 512, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert model(tokens).dtype == torch.float32
        assert torch.equal(model(tokens), wide(tokens))


def test_presets_have_the_real_shapes():
    with torch.device("meta"):
        from flora_export.model.llama import LlamaModel
        one_b = LlamaModel(PRESETS["llama3.2-1b"])
        three_b = LlamaModel(PRESETS["llama3.2-3b"])
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731  tied: counted once
    assert abs(count(one_b) / 1e9 - 1.236) < 0.01
    assert abs(count(three_b) / 1e9 - 3.213) < 0.01


def test_preset_is_reproducible():
    a, b = random_model(PRESETS["tiny"], seed=7), random_model(PRESETS["tiny"], seed=7)
    assert torch.equal(a.layers[0].mlp.down_proj.weight, b.layers[0].mlp.down_proj.weight)
    model = load_model("tiny")
    assert model.tokenizer_json and model.source.kind == "preset" and model.source.random_weights


LOAD_RSS = r"""
import sys, torch
from pathlib import Path
from flora_export.model.checkpoint import load_hf_checkpoint
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
load_hf_checkpoint(Path(sys.argv[2]))     # warm-up: lazy libraries and allocator pools
before = rss()
model = load_hf_checkpoint(Path(sys.argv[1]))
params = sum(p.numel() * p.element_size() for p in model.parameters())
print((rss() - before) / params)
"""


def test_loading_holds_one_copy_of_the_weights(tmp_path):
    """q/k/v and gate/up are read straight into the fused tensors: no second copy."""
    import subprocess
    import sys
    cfg = shapes(hidden_size=512, intermediate_size=2048, num_hidden_layers=6,
                 num_attention_heads=8, num_key_value_heads=2, vocab_size=8192,
                 bos_token_id=8192 - 128, eos_token_ids=(8192 - 127,))
    write_base(tmp_path / "big", cfg)
    write_base(tmp_path / "small")
    proc = subprocess.run([sys.executable, "-c", LOAD_RSS, str(tmp_path / "big"),
                           str(tmp_path / "small")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.strip().splitlines()[-1]) < 1.2


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_checkpoint_saved_by_transformers_loads_with_parity(tmp_path, sharded):
    """A directory as transformers 5 writes it (rope_parameters, dtype, generation_config.json,
    an index with metadata when sharded) loads, every field honoured, to the same logits."""
    from flora_export.model.tokenizer import byte_level_tokenizer
    cfg = transformers.LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True,
        hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True, max_position_embeddings=256,
        rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64},
        bos_token_id=384, eos_token_id=[385, 393])
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.3)
    ref.save_pretrained(tmp_path, max_shard_size="100KB" if sharded else "1GB")
    byte_level_tokenizer(512, 384).save(str(tmp_path / "tokenizer.json"))
    assert (tmp_path / "model.safetensors.index.json").is_file() == sharded
    ours = load_model(tmp_path)
    tokens = torch.randint(0, 512, (2, 15), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(tokens) - ref(tokens).logits).abs().max() < 1e-5
    assert ours.config.hidden_act == "gelu_pytorch_tanh" and ours.config.eos_token_ids == (385, 393)
