"""Every decoder family exported end to end, against transformers on the same checkpoint.

Each family is a tiny random checkpoint written by transformers (tests/family_checkpoints.py,
2 layers, head_dim a multiple of 16 as ONNX Runtime's GroupQueryAttention needs). An fp32
export's greedy tokens in its real runner (ORT-GenAI for `--target onnx`, ExecuTorch's
TextLLMRunner for `--target android`) equal transformers' greedy tokens for the same
prompt ids, the prompt longer than every sliding window; quantized exports (8da4w .pte,
int4 ONNX) pass the export's gates with one quantized linear op per fused projection.
Adapters: FFBA fused, PEFT LoRA merged and unmerged (the reference is transformers + PEFT).
Core ML: the converted package's spec and op counts (prediction needs macOS).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flora_export.export import ExportConfig, export
from flora_export.model import load_model
from flora_export.model.tokenizer import byte_level_tokenizer

from family_checkpoints import BOS, VOCAB, reference, write_family
from test_families import greedy_theirs

transformers = pytest.importorskip("transformers")

LAYERS = 2
MAX_SEQ = 64
_LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0,
             "short_factor": [1.0, 1.1, 1.2, 1.3, 1.5, 1.7, 2.0, 2.2],
             "long_factor": [1.0, 2.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0]}
# family -> (family_checkpoints case, constructor arguments over it)
FAMILIES = {
    "qwen2": ("qwen2", dict(num_hidden_layers=LAYERS)),                   # q/k/v bias
    "qwen3": ("qwen3", dict(head_dim=32, num_hidden_layers=LAYERS)),     # q/k norms
    "gemma3": ("gemma3", dict(head_dim=32, num_hidden_layers=LAYERS,     # window 5, 2 RoPEs,
                              layer_types=["sliding_attention", "full_attention"])),  # scale
    "phi3": ("phi3", dict(num_attention_heads=2, num_key_value_heads=1,  # partial rotary 16/32
                          num_hidden_layers=LAYERS, rope_parameters=_LONGROPE,
                          original_max_position_embeddings=MAX_SEQ)),
    "smollm3": ("smollm3", dict(num_hidden_layers=LAYERS)),              # layer 1 NoPE, bias
    "mistral": ("mistral", dict(num_hidden_layers=LAYERS)),              # window 5 everywhere
}
ADAPTED = ["qwen3", "gemma3", "phi3"]
LORA = ["qwen3", "gemma3", "phi3"]   # Phi3's: one A, one B on its fused qkv_proj / gate_up_proj
PROMPT_TEXT = "Hello, world"      # 12 byte-level ids: longer than every window (5)
PROMPT = byte_level_tokenizer(VOCAB, BOS).encode(PROMPT_TEXT, add_special_tokens=False).ids
NEW = 10
EOS = BOS + 1   # family_checkpoints' eos id


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            case, init = FAMILIES[family]
            cache[family] = write_family(root / family, case, seed=3, init=init)
        return cache[family]
    return get


def theirs_greedy(hf_model, n: int = NEW) -> list[int]:
    return greedy_theirs(hf_model, torch.tensor([PROMPT]), n)


def until_eos(ids: list[int]) -> list[int]:
    return ids[:ids.index(EOS)] if EOS in ids else ids


def genai_greedy(folder: Path, n: int = NEW) -> list[int]:
    from test_export_onnx import genai_greedy as run
    return run(folder, PROMPT, n)


def runner_text(out: Path, n: int = NEW) -> bytes:
    """The greedy text printed by ExecuTorch's TextLLMRunner on the export's model.pte +
    tokenizer.json for PROMPT_TEXT (its ids are PROMPT: no bos added)."""
    from test_export_executorch import run_llm_runner
    printed, stats = run_llm_runner(out, PROMPT_TEXT, n)
    assert stats["prompt"] == len(PROMPT)
    return printed


def printed_text(out: Path, ids: list[int]) -> bytes:
    """What a runner prints for `ids`: each token's bytes, the unprintable ones dropped
    (as tests/test_export_executorch.py compares)."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    pieces = [tok.decode([i], skip_special_tokens=False) for i in until_eos(ids)]
    return b"".join(p.encode("utf-8", errors="surrogateescape") for p in pieces
                    if p.isprintable() and "\ufffd" not in p)


def fp32(model, target: str, out: Path) -> dict:
    return export(model, target, out, ExportConfig(quant="fp32", max_seq=MAX_SEQ))


def gqa_nodes(path: Path) -> list:
    import onnx
    proto = onnx.load(str(path), load_external_data=False)
    return [n for n in proto.graph.node if n.op_type == "GroupQueryAttention"]


def attrs(node) -> dict:
    import onnx
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


# --- ONNX -----------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_fp32_greedy_is_transformers(family, checkpoints, tmp_path):
    """ORT-GenAI's greedy tokens are transformers'; each layer is one GroupQueryAttention
    carrying its window (local_window_size), RoPE (NoPE: none) and scale."""
    pytest.importorskip("onnxruntime_genai")
    path = checkpoints(family)
    model = load_model(path)
    manifest = fp32(model, "onnx", tmp_path / "onnx")
    assert manifest["parity"]["passed"]
    assert genai_greedy(tmp_path / "onnx") == theirs_greedy(reference(path))
    nodes = gqa_nodes(tmp_path / "onnx" / "model.onnx")
    assert len(nodes) == LAYERS
    for node, layer in zip(nodes, model.layers):
        a = attrs(node)
        assert a.get("local_window_size", -1) == (layer.self_attn.window or -1)
        assert a["do_rotary"] == int(layer.self_attn.rope is not None)
        assert len(node.input) == (9 if a["do_rotary"] else 7)
        if layer.self_attn.scale is not None:
            assert abs(a["scale"] - layer.self_attn.scale) < 1e-7


@pytest.mark.parametrize("family", ["gemma3", "phi3"])
def test_onnx_int4_one_matmulnbits_per_projection(family, checkpoints, tmp_path):
    model = load_model(checkpoints(family))
    m = export(model, "onnx", tmp_path / "int4", ExportConfig(quant="8da4w", max_seq=MAX_SEQ))
    c = m["counts"]
    assert c["quantized_linear_ops"] == c["expected_quantized_linear_ops"] == 4 * LAYERS + 1
    assert c["float_weight_linear_ops"] == 0 and m["parity"]["passed"]


def test_onnx_refuses_what_group_query_attention_cannot_run(tmp_path):
    from flora_export.errors import FloraError
    path = write_family(tmp_path, "phi3", seed=3,           # head_dim 16, rotary_dim 8
                        init=dict(original_max_position_embeddings=MAX_SEQ))
    with pytest.raises(FloraError, match=r"rotary_dim 8 .* not a multiple of 16"):
        fp32(load_model(path), "onnx", tmp_path / "onnx")
    path = write_family(tmp_path / "q", "qwen3", seed=3)   # head_dim 24
    with pytest.raises(FloraError, match=r"head_dim 24 is not a multiple of 16"):
        fp32(load_model(path), "onnx", tmp_path / "onnx")


# --- ExecuTorch -----------------------------------------------------------------------------

@pytest.mark.parametrize("family", [
    pytest.param(f, marks=() if f == "gemma3" else pytest.mark.slow) for f in FAMILIES])
def test_android_fp32_runner_greedy_is_transformers(family, checkpoints, tmp_path):
    """TextLLMRunner on the lowered .pte prints transformers' greedy text (the window through
    custom_sdpa's mask, Gemma's scale and soft-capping, biases, norms, NoPE in the program)."""
    pytest.importorskip("executorch")
    path = checkpoints(family)
    out = tmp_path / "android"
    manifest = fp32(load_model(path), "android", out)
    assert manifest["parity"]["passed"] and manifest["counts"]["quantized_linear_ops"] == 0
    want = printed_text(out, theirs_greedy(reference(path)))
    assert len(want) >= 3
    assert runner_text(out) == want


def test_android_fp32_tanh_gelu_is_not_xnnpacks_erf_gelu(checkpoints, tmp_path):
    """XNNPACK's GELU is the erf one and ExecuTorch delegates `aten.gelu` without its
    `approximate` argument, so the export writes Gemma 3's tanh GELU out. With a PEFT LoRA
    merged in (larger MLP inputs): max|diff| 1e-6 measured; 1.4e-4 with `aten.gelu` (the
    fp32 gate then refuses the export)."""
    pytest.importorskip("executorch")
    from flora_export.adapters import load_adapter
    from flora_export.export.executorch_attention import tanh_gelu
    from flora_export.fuse import merge_lora
    x = torch.linspace(-8, 8, 10001)
    assert (tanh_gelu(x) - torch.nn.functional.gelu(x, approximate="tanh")).abs().max() < 1e-6
    path = checkpoints("gemma3")
    peft_adapter(path, tmp_path / "lora")
    model = merge_lora(load_adapter(load_model(path), tmp_path / "lora"))
    manifest = fp32(model, "android", tmp_path / "android")
    assert manifest["parity"]["max_abs_diff"] <= 1e-5, manifest["parity"]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_android_8da4w_one_quantized_linear_per_projection(family, checkpoints, tmp_path):
    pytest.importorskip("executorch")
    m = export(load_model(checkpoints(family)), "android", tmp_path / "q",
               ExportConfig(quant="8da4w", max_seq=MAX_SEQ))
    assert m["counts"]["quantized_linear_ops"] == 4 * LAYERS + 1 and m["parity"]["passed"]


# --- adapters -------------------------------------------------------------------------------

def randomize_lora(peft_model, seed: int = 7) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.2, generator=gen)


def peft_adapter(path: Path, out: Path, **options):
    """A PEFT LoRA adapter (by default on every projection) of the transformers model at
    `path`, saved in `out`; returns the PEFT model (the reference)."""
    peft = pytest.importorskip("peft")
    hf = reference(path)
    names = {n.rsplit(".", 1)[-1] for n, _ in hf.named_modules()}
    targets = [t for t in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                           "down_proj", "qkv_proj", "gate_up_proj") if t in names]
    options = {"r": 4, "lora_alpha": 8, "target_modules": targets, **options}
    model = peft.get_peft_model(hf, peft.LoraConfig(**options))
    randomize_lora(model)
    model.save_pretrained(out)
    return model.eval()


def with_ffba(path: Path, seed: int = 2):
    from flora_export.adapters import FFBAConfig, attach_ffba

    from conftest import randomize_adapter
    model = load_model(path)
    attach_ffba(model, FFBAConfig(width=24, alpha=48.0, activation="silu"))
    randomize_adapter(model, seed=seed)
    return model


def eager_greedy(model, n: int = NEW) -> list[int]:
    ids = list(PROMPT)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(PROMPT):]


@pytest.mark.parametrize("family", ADAPTED)
def test_onnx_ffba_fused_greedy_is_the_eager_models(family, checkpoints, tmp_path):
    pytest.importorskip("onnxruntime_genai")
    model = with_ffba(checkpoints(family))
    want = eager_greedy(model)                           # unfused FFBA, eager (test_families)
    # Phi3's greedy text here holds lone UTF-8 bytes, after which ORT-GenAI's streaming
    # detokenizer prints less than Hugging Face's decode: the tokenizer gate's text check
    # refuses it, so it records the mismatch instead; the token ids are compared below
    m = export(model, "onnx", tmp_path / "onnx", ExportConfig(
        quant="fp32", max_seq=MAX_SEQ, allow_tokenizer_mismatch=family == "phi3"))
    assert m["parity"]["passed"] and genai_greedy(tmp_path / "onnx") == want


@pytest.mark.parametrize("family", LORA)
@pytest.mark.parametrize("merged", [True, False])
def test_onnx_peft_lora_greedy_is_peft(family, merged, checkpoints, tmp_path):
    pytest.importorskip("onnxruntime_genai")
    from flora_export.adapters import load_adapter
    from flora_export.fuse import merge_lora
    path = checkpoints(family)
    ref = peft_adapter(path, tmp_path / "lora")
    model = load_adapter(load_model(path), tmp_path / "lora")
    if merged:
        merge_lora(model)
    m = fp32(model, "onnx", tmp_path / "onnx")
    assert m["parity"]["passed"]
    assert genai_greedy(tmp_path / "onnx") == theirs_greedy(ref)


PHI3_LORA = {   # PEFT options on Phi3ForCausalLM's qkv_proj, o_proj, gate_up_proj, down_proj
    "all": {},
    "qkv-only": dict(target_modules=["qkv_proj"]),
    "rank-alpha-pattern-rslora": dict(
        target_modules="all-linear", use_rslora=True,
        rank_pattern={"qkv_proj": 2, r"layers\.1\.mlp\.down_proj": 6},
        alpha_pattern={"gate_up_proj": 3.0}),
    "regex-exclude": dict(target_modules=r".*\.(qkv|gate_up)_proj",
                          exclude_modules=["model.layers.0.mlp.gate_up_proj"]),
    "layers-to-transform": dict(target_modules=["qkv_proj", "gate_up_proj"],
                                layers_to_transform=[1]),
}


@pytest.mark.parametrize("name", PHI3_LORA)
def test_phi3_peft_lora_on_fused_projections_is_peft(name, checkpoints, tmp_path):
    """PEFT's LoRA on Phi3's fused qkv_proj is one A (d -> r) and one B (r -> q+k+v rows),
    likewise gate_up_proj: unmerged and merged logits are PEFT's."""
    from flora_export.adapters import load_adapter
    from flora_export.fuse import merge_lora
    path = checkpoints("phi3")
    ref = peft_adapter(path, tmp_path / "lora", **PHI3_LORA[name])
    tokens = torch.tensor([PROMPT])
    with torch.no_grad():
        want = ref(tokens).logits
        assert (want - reference(path)(tokens).logits).abs().max() > 0.1   # the LoRA acts
        model = load_adapter(load_model(path), tmp_path / "lora")
        unmerged = (model(tokens) - want).abs().max().item()
        merged = (merge_lora(model)(tokens) - want).abs().max().item()
    assert unmerged < 1e-5 and merged < 1e-5, (unmerged, merged)   # measured ~1e-6


def test_phi3_lora_shapes_are_the_fused_modules(checkpoints):
    from flora_export.adapters import LoraConfig, attach_lora
    model = attach_lora(load_model(checkpoints("phi3")), LoraConfig(
        rank=4, targets=("qkv_proj", "gate_up_proj"), rank_pattern={"gate_up_proj": 2}))
    attn, mlp, cfg = model.layers[0].self_attn, model.layers[0].mlp, model.config
    assert list(attn.qkv_proj.lora_B) == ["qkv_proj"] and list(mlp.gate_up_proj.lora_B) == [
        "gate_up_proj"]
    assert tuple(attn.qkv_proj.lora_A["qkv_proj"].weight.shape) == (4, cfg.hidden_size)
    assert tuple(attn.qkv_proj.lora_B["qkv_proj"].weight.shape) == (cfg.q_dim + 2 * cfg.kv_dim, 4)
    assert tuple(mlp.gate_up_proj.lora_B["gate_up_proj"].weight.shape) == (
        2 * cfg.intermediate_size, 2)


def test_phi3_lora_budget_counts_the_fused_modules(checkpoints):
    """flora-train's budget counts what attach_lora trains: one pair per fused module."""
    from flora_export.adapters import LoraConfig, attach_lora
    from flora_export.train.budget import lora_params
    names = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    model = attach_lora(load_model(checkpoints("phi3")), LoraConfig(rank=4, targets=names))
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    d, q, kv, f = 64, 64, 32, 96          # hidden, 2 heads x 32, 1 kv head, FFN
    per_layer = 4 * ((d + q + 2 * kv) + (q + d) + (d + 2 * f) + (f + d))
    assert trained == lora_params(model.config, 4) == LAYERS * per_layer == 5888


@pytest.mark.parametrize("options", [dict(target_modules=["q_proj", "v_proj"]),
                                     dict(target_modules=["gate_proj"])], ids=["qv", "gate"])
def test_phi3_llama_named_peft_targets_refused_by_name(options, checkpoints, tmp_path):
    """PEFT itself refuses these on Phi3ForCausalLM (no target matches); so do we, naming
    them and Phi3's projections."""
    from flora_export.adapters import load_adapter
    from flora_export.errors import FloraError
    peft = pytest.importorskip("peft")
    path = checkpoints("phi3")
    with pytest.raises(ValueError, match="not found in the base model"):
        peft.get_peft_model(reference(path), peft.LoraConfig(r=4, **options))
    peft_adapter(path, tmp_path / "lora", target_modules=["qkv_proj"])   # then edit its config
    meta_path = tmp_path / "lora" / "adapter_config.json"
    meta = json.loads(meta_path.read_text())
    meta["target_modules"] = options["target_modules"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(FloraError) as e:
        load_adapter(load_model(path), tmp_path / "lora")
    line = str(e.value)
    assert "\n" not in line and "Phi3ForCausalLM" in line, line
    for word in (*options["target_modules"], "qkv_proj, o_proj, gate_up_proj, down_proj"):
        assert word in line, line


def test_phi3_llama_named_lora_targets_refused_by_name(checkpoints):
    from flora_export.adapters import LoraConfig, attach_lora
    from flora_export.errors import FloraError
    with pytest.raises(FloraError, match=r"LoRA target q_proj is not a projection of "
                                         r"Phi3ForCausalLM.*qkv_proj, o_proj, gate_up_proj"):
        attach_lora(load_model(checkpoints("phi3")), LoraConfig(targets=("q_proj", "o_proj")))


def test_phi3_our_saved_lora_loads_in_peft(checkpoints, tmp_path):
    """save_adapter writes PEFT's keys for Phi3's fused modules: PEFT's output is ours."""
    peft = pytest.importorskip("peft")
    from flora_export.adapters import LoraConfig, attach_lora, save_adapter

    from conftest import randomize_adapter
    path = checkpoints("phi3")
    model = attach_lora(load_model(path), LoraConfig(
        rank=4, alpha=8.0, targets=("qkv_proj", "gate_up_proj", "down_proj"),
        rank_pattern={"gate_up_proj": 2}, alpha_pattern={"qkv_proj": 2.0}, use_rslora=True))
    randomize_adapter(model, 3, std=0.2)
    save_adapter(model, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(reference(path), tmp_path / "ours").eval()
    tokens = torch.tensor([PROMPT])
    with torch.no_grad():
        diff = (model(tokens) - theirs(tokens).logits).abs().max().item()
        assert (theirs(tokens).logits - reference(path)(tokens).logits).abs().max() > 0.1
    assert diff < 1e-5, diff


@pytest.mark.slow
@pytest.mark.parametrize("family,adapter", [(f, "ffba") for f in ADAPTED] + [
    (f, a) for f in LORA for a in ("lora-merged", "lora-unmerged")])
def test_android_adapted_runner_greedy_and_8da4w_counts(family, adapter, checkpoints, tmp_path):
    pytest.importorskip("executorch")
    from flora_export.adapters import load_adapter
    from flora_export.fuse import merge_lora
    path = checkpoints(family)
    if adapter == "ffba":
        model = with_ffba(path)
        want_ids = eager_greedy(model)
    else:
        ref = peft_adapter(path, tmp_path / "lora")
        model = load_adapter(load_model(path), tmp_path / "lora")
        if adapter == "lora-merged":
            merge_lora(model)
        want_ids = theirs_greedy(ref)
    out = tmp_path / "android"
    m = fp32(model, "android", out)
    assert m["parity"]["passed"] and runner_text(out) == printed_text(out, want_ids)
    q = export(model, "android", tmp_path / "q", ExportConfig(quant="8da4w", max_seq=MAX_SEQ))
    assert q["counts"]["quantized_linear_ops"] == 4 * LAYERS + 1 and q["parity"]["passed"]


# --- Core ML --------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_coreml_package_per_family(family, checkpoints, tmp_path):
    """The package converts with one int4 linear per projection and passes the Linux-side
    checks (the converted torch program against the eager model; interface and op counts)."""
    pytest.importorskip("coremltools")
    m = export(load_model(checkpoints(family)), "coreml", tmp_path / "c",
               ExportConfig(quant="8da4w", max_seq=MAX_SEQ))
    assert m["counts"]["quantized_linear_ops"] == 4 * LAYERS + 1


@pytest.mark.parametrize("family", ["qwen3", "phi3", "smollm3"])
def test_peft_lora_without_target_modules_follows_peft(family, checkpoints, tmp_path):
    """No target_modules in adapter_config.json: PEFT's per-model_type default (q_proj,
    v_proj on Qwen3); PEFT has none for Phi3 / SmolLM3 and refuses, and so do we, by name."""
    peft = pytest.importorskip("peft")
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFTS

    from flora_export.adapters import load_adapter
    from flora_export.adapters.targets import PEFT_DEFAULT_TARGETS
    from flora_export.errors import FloraError
    assert {t: tuple(PEFTS[t]) for t in PEFT_DEFAULT_TARGETS} == PEFT_DEFAULT_TARGETS
    path = checkpoints(family)
    names = ["qkv_proj"] if family == "phi3" else ["q_proj", "v_proj"]
    peft_adapter(path, tmp_path / "lora", target_modules=names)
    meta = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    del meta["target_modules"]
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps(meta))
    if family == "qwen3":
        theirs = peft.PeftModel.from_pretrained(reference(path), tmp_path / "lora").eval()
        model = load_adapter(load_model(path), tmp_path / "lora")
        tokens = torch.tensor([PROMPT])
        with torch.no_grad():
            assert (model(tokens) - theirs(tokens).logits).abs().max() < 1e-5
        return
    with pytest.raises(ValueError, match="target_modules"):
        peft.get_peft_model(reference(path), peft.LoraConfig(r=4))
    with pytest.raises(FloraError, match=f"no target_modules.*model_type {family}"):
        load_adapter(load_model(path), tmp_path / "lora")
