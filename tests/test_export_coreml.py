"""Core ML export: the saved package's spec (inputs, outputs, states, quantized linears,
metadata), the captured torch program's numbers, the iOS folder, bad input. Core ML
predictions need macOS: the package parity test runs only there."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from flora_export.adapters import load_adapter
from flora_export.export import ExportConfig, export
from flora_export.model import ModelSource, file_sha256, load_model

from conftest import max_step_error, shapes
from manifest_docs import assert_documented

ct = pytest.importorskip("coremltools")
LAYERS, MAX_SEQ = 2, 64                      # the tiny preset; the exports' KV length
PROJECTIONS = ("self_attn_qkv_proj", "self_attn_o_proj", "mlp_gate_up_proj", "mlp_down_proj")


def ct_reference(out):
    from safetensors.torch import load_file
    return load_file(str(out / "coreml_reference.safetensors"))


def program_of(package):
    """The package's ML program with its weights, read back from disk (no model load)."""
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    return spec, load_milproto(spec, spec.specificationVersion,
                               str(package / "Data" / "com.apple.CoreML" / "weights"))


def quantized_linears(package) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Weight name -> (integer data, scale) for every linear fed by a blockwise constant."""
    _, prog = program_of(package)
    out = {}
    for op in prog.functions["main"].operations:
        if op.op_type == "linear" and op.weight.op.op_type == "constexpr_blockwise_shift_scale":
            w = op.weight.op
            assert w.offset is None                                 # symmetric
            out[w.outputs[0].name] = (w.data.val, w.scale.val)
    return out


def linear_count(package) -> int:
    _, prog = program_of(package)
    return sum(op.op_type == "linear" for op in prog.functions["main"].operations)


@pytest.fixture(scope="module")
def int4_coreml(tiny_base, tiny_ffba, tmp_path_factory):
    """CLI export of the tiny base + FFBA (width 40 -> 64, SiLU), 8da4w."""
    from flora_export.cli import main
    out = tmp_path_factory.mktemp("coreml4") / "coreml"
    assert main(["--target", "coreml", "--model", str(tiny_base), "--adapter", str(tiny_ffba),
                 "--out", str(out), "--max-seq", str(MAX_SEQ)]) == 0
    return out


@pytest.fixture(scope="module")
def fp32_ios(tiny_base, tiny_ffba, tmp_path_factory):
    model = load_model(tiny_base)
    load_adapter(model, tiny_ffba)
    out = tmp_path_factory.mktemp("ios32") / "ios"
    return model, out, export(model, "ios", out, ExportConfig(quant="fp32", max_seq=MAX_SEQ))


def test_package_interface_is_stateful_kv(int4_coreml):
    spec = ct.models.MLModel(str(int4_coreml / "model.mlpackage"), skip_model_load=True).get_spec()
    d = spec.description
    assert [i.name for i in d.input] == ["inputIds", "causalMask"]
    assert [o.name for o in d.output] == ["logits"]
    assert [s.name for s in d.state] == ["keyCache", "valueCache"]
    for s in d.state:     # [layers, batch, kv heads, max_seq, head_dim], fp16
        assert list(s.type.stateType.arrayType.shape) == [LAYERS, 1, 2, MAX_SEQ, 32]
    mask = d.input[1].type.multiArrayType.shapeRange.sizeRanges
    assert [(r.lowerBound, r.upperBound) for r in mask] == [(1, 1), (1, 1), (1, MAX_SEQ),
                                                            (1, MAX_SEQ)]
    assert spec.specificationVersion >= 9                       # iOS 18
    ops = [op.op_type for op in program_of(int4_coreml / "model.mlpackage")[1]
           .functions["main"].operations]
    # each cache is read once and written back once per call (write_state in the saved
    # proto, seen as coreml_update_state when the program is loaded back)
    assert ops.count("coreml_update_state") + ops.count("write_state") == 2
    assert ops.count("read_state") == 2


def test_one_int4_block32_linear_per_fused_projection(int4_coreml):
    weights = quantized_linears(int4_coreml / "model.mlpackage")
    expected = {f"p_model_layers_{i}_{p}_weight" for i in range(LAYERS) for p in PROJECTIONS}
    expected.add("p_model_lm_head_weight")
    assert {n.removesuffix("_quantized") for n in weights} == expected
    assert linear_count(int4_coreml / "model.mlpackage") == 4 * LAYERS + 1   # nothing in float
    for name, (data, scale) in weights.items():
        out_f, in_f = data.shape
        assert scale.shape == (out_f, in_f // 32), name           # one scale per 32 inputs
        assert data.min() >= -8 and data.max() <= 7, name         # int4 values
    # FFBA width 40 is padded to 64 and fused: qkv gains 64 rows, o_proj 64 input columns
    assert weights["p_model_layers_0_self_attn_qkv_proj_weight_quantized"][0].shape \
        == (128 + 2 * 64 + 64, 128)
    assert weights["p_model_layers_1_self_attn_o_proj_weight_quantized"][0].shape \
        == (128, 128 + 64)
    m = json.loads((int4_coreml / "manifest.json").read_text())
    c = m["counts"]
    assert c["quantized_linear_ops"] == c["linear_ops"] == 4 * LAYERS + 1
    assert c["quantized_weight_bits"] == {"int4": 4 * LAYERS + 1}
    assert c["expected_quantized_linear_ops"] == 4 * LAYERS + 1
    assert c["quantized_per_projection"] == {"down_proj": LAYERS, "gate_up_proj": LAYERS,
                                             "lm_head": 1, "o_proj": LAYERS, "qkv_proj": LAYERS}
    assert c["fused_linears"] == 4 * LAYERS
    assert m["results"]["coreml"]["coreml"]["weights"]["block_size"] == 32
    assert m["results"]["coreml"]["coreml"]["converted_from"] == "float16"


def test_metadata_for_apps(int4_coreml):
    meta = ct.models.MLModel(str(int4_coreml / "model.mlpackage"),
                             skip_model_load=True).user_defined_metadata
    assert meta["flora.max_context"] == str(MAX_SEQ)
    assert meta["flora.bos_id"] == "384" and json.loads(meta["flora.eos_ids"]) == [385, 393]
    assert meta["flora.tokenizer"] == "tokenizer.json"
    assert set(json.loads(meta["flora.inputs"])) == {"inputIds", "causalMask"}
    assert json.loads(meta["flora.states"])["keyCache"] == [LAYERS, 1, 2, MAX_SEQ, 32]
    m = json.loads((int4_coreml / "manifest.json").read_text())
    assert m["runtime"]["coreml"]["max_context"] == MAX_SEQ
    assert m["results"]["coreml"]["coreml"]["metadata"] == {
        k: v for k, v in meta.items() if k.startswith("flora.")}


def test_manifest_says_parity_needs_macos(int4_coreml):
    m = json.loads((int4_coreml / "manifest.json").read_text())
    p = m["parity"]
    assert p["status"] == "not run (needs macOS)" and p["passed"] is None
    assert "coreml_parity" in p["how"]
    assert p["torch_program_vs_eager"]["passed"] and p["torch_program_vs_eager"]["max_abs_diff"] < 1e-4
    # the program was checked at every position the reference scored (the extension too)
    ref_positions = len(ct_reference(int4_coreml)["fp32_logits"])
    assert p["torch_program_vs_eager"]["steps"] == ref_positions > 9
    assert p["quant_sqnr_db_vs_fp32"] > 5          # int4 on random weights: low but finite
    pkg = m["files"]["model.mlpackage"]["files"]
    for rel, rec in pkg.items():
        assert rec["sha256"] == file_sha256(int4_coreml / "model.mlpackage" / rel)
    assert {"tokenizer.json", "coreml_reference.safetensors"} <= set(m["files"])


def test_parity_script_applies_the_exports_thresholds(int4_coreml):
    """coreml_parity on a Mac judges with the thresholds the export recorded (its lowering
    and quality records; older manifests: parity.thresholds_on_macos)."""
    from flora_export.export.coreml_parity import _thresholds
    from flora_export.verify import VerifyConfig
    m = json.loads((int4_coreml / "manifest.json").read_text())
    assert m["parity"]["thresholds"]["min_sqnr_db"] == VerifyConfig().min_sqnr_db
    assert _thresholds(m) == VerifyConfig()
    old = {"results": {"coreml": {"parity": {"thresholds_on_macos": {"min_sqnr_db": 30.0}}}}}
    assert _thresholds(old) == VerifyConfig(min_sqnr_db=30.0)


def test_every_manifest_field_is_documented(int4_coreml, fp32_ios):
    """docs/manifest.md lists every key of a real `--target coreml` and `--target ios` manifest."""
    assert_documented(json.loads((int4_coreml / "manifest.json").read_text()))
    assert_documented(fp32_ios[2])


def test_reference_holds_the_packages_weights(int4_coreml, tiny_base, tiny_ffba):
    """The saved reference logits are the eager model with the package's int4 weights:
    rebuilding that model from the package alone reproduces them."""
    from safetensors.torch import load_file

    from flora_export.fuse import fuse
    model = load_model(tiny_base)
    load_adapter(model, tiny_ffba)
    fuse(model, pad_to=32)
    model.half().float()                                      # the package stores fp16
    names = {f"p_model_{fqn.replace('.', '_')}_weight": m for fqn, m in model.named_modules()
             if isinstance(m, torch.nn.Linear)}
    with torch.no_grad():
        for name, (data, scale) in quantized_linears(int4_coreml / "model.mlpackage").items():
            w = (torch.tensor(data, dtype=torch.float32) * torch.tensor(
                scale, dtype=torch.float32).repeat_interleave(32, dim=1)).half().float()  # as on device
            names[name.removesuffix("_quantized")].weight = torch.nn.Parameter(w)
    model.embed_tokens.weight = model.lm_head.weight          # tied: one constant in the package
    ref = load_file(str(int4_coreml / "coreml_reference.safetensors"))
    tokens, n = ref["tokens"], ref["reference_logits"].shape[0]
    model.setup_cache(MAX_SEQ)
    prompt = tokens.shape[1] - (n - 1)
    with torch.no_grad():
        got = model(tokens[:, :prompt], torch.tensor([0]), last_only=True)[0, -1]
    assert torch.allclose(got, ref["reference_logits"][0], atol=1e-4)


def test_package_codes_are_the_pte_grid(int4_coreml, tiny_base, tiny_ffba):
    """The package's int4 codes and scales are made in torch on the .pte's grid (torchao's,
    bf16 scales): dequantized, every fused projection and the head equal fake_int4 of the
    fused float weight exactly; the tied embedding's gather reads the head's constant."""
    from flora_export.fuse import fuse
    from flora_export.train.quant_aware import fake_int4
    model = load_model(tiny_base)
    load_adapter(model, tiny_ffba)
    fuse(model, pad_to=32)
    weights = {f"p_model_{fqn.replace('.', '_')}_weight_quantized": m.weight
               for fqn, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    package = quantized_linears(int4_coreml / "model.mlpackage")
    assert set(package) == set(weights)
    for name, (data, scale) in package.items():
        got = torch.tensor(data, dtype=torch.float32) * torch.tensor(
            scale, dtype=torch.float32).repeat_interleave(32, dim=1)
        assert torch.equal(got, fake_int4(weights[name].detach())), name
    _, prog = program_of(int4_coreml / "model.mlpackage")
    gathers = [op for op in prog.functions["main"].operations if op.op_type == "gather"
               and op.x.op is not None and op.x.op.op_type == "constexpr_blockwise_shift_scale"]
    assert [op.x.name for op in gathers] == ["p_model_lm_head_weight_quantized"]


def test_symmetric_codes_match_torchao():
    """coreml_weights.symmetric_codes is torchao's symmetric grid for int4 groups (codes and
    bf16 scales) and int8 rows (float32 scales), on a weight larger than one row block."""
    from torchao.quantization.quant_primitives import (MappingType, choose_qparams_affine,
                                                       quantize_affine)

    from flora_export.export.coreml_weights import symmetric_codes
    from flora_export.model import storage
    w = torch.randn(300, 96) * torch.logspace(-3, 0, 300)[:, None]
    w[7] = 0                                                  # an all-zero row (FFBA padding)
    old, storage.BLOCK_NUMEL = storage.BLOCK_NUMEL, 96 * 64   # several row blocks
    try:
        for bits, group, block in ((4, 32, 32), (8, 0, 96)):
            codes, scales = symmetric_codes(w, bits, group)
            qmin, qmax = -2 ** (bits - 1), 2 ** (bits - 1) - 1
            scale, zero = choose_qparams_affine(w, MappingType.SYMMETRIC, (1, block), torch.int8,
                                                qmin, qmax, torch.finfo(torch.float32).tiny,
                                                torch.float32)
            want = quantize_affine(w, (1, block), scale, zero, torch.int8, qmin, qmax)
            assert torch.equal(codes, want), bits
            scale = scale.view(300, -1)
            want_scale = scale.to(torch.bfloat16).float() if group else scale
            assert torch.equal(scales, want_scale), bits
    finally:
        storage.BLOCK_NUMEL = old


def test_reference_holds_the_packages_codes_at_1_byte(tiny_base, tmp_path):
    """After an int4 export the eager model holds the package's own int8 codes and fp16
    scales (1 byte a parameter, no float copy), dequantized in fp16 as the device does;
    the tied head and embedding hold one set of codes; norms and the RoPE tables are
    float32 again."""
    from flora_export.model.storage import CodedEmbedding, CodedLinear

    model = load_model(tiny_base)
    export(model, "coreml", tmp_path / "c", ExportConfig(quant="8da4w", max_seq=MAX_SEQ))
    linears = {f"p_model_{fqn.replace('.', '_')}_weight_quantized": m
               for fqn, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears and all(type(m) is CodedLinear and m.weight.numel() == 0
                           and m.codes.dtype == torch.int8 and m.scales.dtype == torch.float16
                           and m.rounding == torch.float16 for m in linears.values())
    package = quantized_linears(tmp_path / "c" / "model.mlpackage")
    assert set(package) == set(linears)
    for name, (data, scale) in package.items():
        assert np.array_equal(linears[name].codes.numpy(), data), name
        assert np.array_equal(linears[name].scales.numpy(), scale), name
    assert type(model.embed_tokens) is CodedEmbedding
    assert model.embed_tokens.codes is model.lm_head.codes
    small = [t for n, t in [*model.named_parameters(), *model.named_buffers()]
             if t.is_floating_point() and t.numel() and not n.endswith("scales")]
    assert small and all(t.dtype == torch.float32 for t in small)


@pytest.mark.parametrize("bits", [4, 8])
def test_converter_shares_the_codes(tiny_base, bits, monkeypatch):
    """The converted program's quantized constants are views of the model's codes (no
    second set of codes while converting), typed int4 or int8 as the grid says; without
    `shared_codes`, coremltools' own conversion copies every one of them."""
    from flora_export.export import coreml, coreml_weights

    model = load_model(tiny_base).setup_cache(MAX_SEQ)
    coded = coreml_weights.code_weights(model, bits, 32 if bits == 4 else 0)
    codes = [m.codes.numpy() for m in model.modules() if hasattr(m, "codes")]

    def constants(mlmodel):
        return [op.data.val for fn in mlmodel._mil_program.functions.values()
                for op in fn.operations if op.op_type == "constexpr_blockwise_shift_scale"]

    mlmodel, _ = coreml.convert_from_fp16(model, model.config, MAX_SEQ)
    got = constants(mlmodel)
    assert len(got) == coded - 1                         # the tied head and embedding: one
    width = ct.converters.mil.mil.types.int4 if bits == 4 else ct.converters.mil.mil.types.int8
    for data in got:
        assert any(np.shares_memory(data, c) for c in codes)
        assert ct.converters.mil.mil.types.numpy_type_to_builtin_type(data.dtype) is width
    monkeypatch.setattr(coreml_weights, "shared_codes", contextlib.nullcontext)  # theirs
    copied = constants(coreml.convert(coreml.capture(model, MAX_SEQ), model.config, MAX_SEQ,
                                      tied=True))
    assert len(copied) == len(got)
    assert not any(np.shares_memory(d, c) for d in copied for c in codes)
    assert all(np.array_equal(a, b) for a, b in zip(got, copied))


def test_int8_reference_rounds_as_the_device_does(tmp_path):
    """int8 per row: code x fp16 scale is not an fp16 number in general; the device rounds
    it to fp16 and so does the saved reference (rebuilt here from the package alone), which
    a float32 dequantization would miss."""
    out = tmp_path / "c8"
    export(load_model("tiny"), "coreml", out, ExportConfig(quant="int8", max_seq=MAX_SEQ))
    model = load_model("tiny")
    names = {f"p_model_{fqn.replace('.', '_')}_weight": m for fqn, m in model.named_modules()
             if isinstance(m, torch.nn.Linear)}
    rounded, unrounded = 0, 0
    with torch.no_grad():
        for name, (data, scale) in quantized_linears(out / "model.mlpackage").items():
            w = torch.tensor(data, dtype=torch.float32) * torch.tensor(scale, dtype=torch.float32)
            unrounded += int((w.half().float() != w).sum())
            rounded += w.numel()
            names[name.removesuffix("_quantized")].weight = torch.nn.Parameter(w.half().float())
    assert unrounded > rounded // 4                  # the rounding changes most weights
    model.embed_tokens.weight = model.lm_head.weight
    model.half().float()                              # norms as the package stores them
    ref = ct_reference(out)
    tokens, n = ref["tokens"], ref["reference_logits"].shape[0]
    model.setup_cache(MAX_SEQ)
    with torch.no_grad():
        got = model(tokens[:, :tokens.shape[1] - (n - 1)], torch.tensor([0]), last_only=True)[0, -1]
    assert torch.allclose(got, ref["reference_logits"][0], atol=1e-5)


def test_sliced_kv_program_matches_eager(tiny_base):
    """The captured Core ML torch program (caches as buffers, shape-derived slices); the
    checked program's chunk of positions equals the same positions decoded one by one."""
    from flora_export.export.coreml import capture, program_step
    model = load_model(tiny_base).setup_cache(MAX_SEQ)
    assert max_step_error(program_step(capture(model, MAX_SEQ)), model, seed=3, total=40) < 1e-4
    ep = capture(model, MAX_SEQ, last_only=False)
    tokens = torch.randint(0, 300, (1, 30), generator=torch.Generator().manual_seed(5))
    chunked, stepped = program_step(ep), program_step(ep)
    chunked(tokens[:, :10], torch.tensor([0]))
    got = chunked.extend(tokens, 10)
    stepped(tokens[:, :10], torch.tensor([0]))
    want = [stepped(tokens[:, p:p + 1], torch.tensor([p])) for p in range(10, 30)]
    assert len(got) == 20
    assert max((g - w).abs().max().item() for g, w in zip(got, want)) < 1e-4


def test_ios_folder_holds_both_backends(fp32_ios, tiny_base, tiny_ffba):
    from flora_export.export.executorch import runtime_step
    from flora_export.fuse import fuse
    model, out, m = fp32_ios
    assert {p.name for p in out.iterdir()} == {"model.mlpackage", "model.pte", "tokenizer.json",
                                               "coreml_reference.safetensors", "manifest.json",
                                               "verify_reference.safetensors"}
    assert m["backends"] == ["coreml", "executorch-xnnpack"]
    assert m["results"]["executorch-xnnpack"]["parity"]["passed"]
    assert m["results"]["executorch-xnnpack"]["parity"]["max_abs_diff"] <= 1e-4
    assert m["results"]["coreml"]["counts"]["linear_ops"] == 4 * LAYERS + 1
    assert m["results"]["coreml"]["counts"]["quantized_linear_ops"] == 0     # fp32: none
    assert m["results"]["coreml"]["coreml"]["weights"] is None
    assert {"coremltools", "executorch"} <= set(m["versions"])
    eager = load_model(tiny_base)                        # the model the .pte was built from
    load_adapter(eager, tiny_ffba)
    fuse(eager, pad_to=32)
    assert max_step_error(runtime_step(out / "model.pte"), eager, seed=4) < 1e-4


def test_ios_builds_core_ml_last_on_the_weights_the_pte_left_intact(int4_coreml, tiny_base,
                                                                   tiny_ffba, tmp_path):
    """ios builds the .pte first, on a copy sharing the weights, then Core ML on the model
    itself (coding its weights in place): the package's codes and its reference logits are
    a Core ML-only export's, bit for bit, and the .pte passed its gates."""
    model = load_model(tiny_base)
    load_adapter(model, tiny_ffba)
    m = export(model, "ios", tmp_path / "ios", ExportConfig(max_seq=MAX_SEQ))
    assert m["backends"] == ["coreml", "executorch-xnnpack"]           # Core ML primary
    assert m["counts"]["quantized_linears_eager"] == 4 * LAYERS + 1    # the .pte's eager model
    assert list(m["timings_s"]).index("quantize") < list(m["timings_s"]).index("coreml-capture")
    assert m["results"]["executorch-xnnpack"]["parity"]["passed"]
    ios, alone = ct_reference(tmp_path / "ios"), ct_reference(int4_coreml)
    assert torch.equal(ios["tokens"], alone["tokens"])
    assert torch.equal(ios["reference_logits"], alone["reference_logits"])
    got = quantized_linears(tmp_path / "ios" / "model.mlpackage")
    want = quantized_linears(int4_coreml / "model.mlpackage")
    assert set(got) == set(want) and len(got) == 4 * LAYERS + 1
    assert all(np.array_equal(got[k][0], want[k][0]) and np.array_equal(got[k][1], want[k][1])
               for k in want)


def test_int8_per_channel(tmp_path):
    out = tmp_path / "c8"
    m = export(load_model("tiny"), "coreml", out, ExportConfig(quant="int8", max_seq=MAX_SEQ))
    assert m["counts"]["quantized_weight_bits"] == {"int8": 4 * LAYERS + 1}
    for name, (data, scale) in quantized_linears(out / "model.mlpackage").items():
        assert scale.shape == (data.shape[0], 1), name
        assert data.dtype == np.int8


def test_unmerged_lora_halves_stay_float(tmp_path):
    """Unmerged LoRA (a baseline): the base projections are int4, the A/B halves float."""
    from flora_export import LoraConfig, attach_lora
    model = load_model("tiny")
    attach_lora(model, LoraConfig(rank=16))
    m = export(model, "coreml", tmp_path / "lora", ExportConfig(max_seq=MAX_SEQ))
    c = m["counts"]
    assert c["quantized_linear_ops"] == 4 * LAYERS + 1
    assert c["float_weight_linear_ops"] == 2 * 7 * LAYERS            # A and B on 7 projections
    assert all("_base_weight" in n or "lm_head" in n for n in c["quantized_linear_weights"])
    assert m["results"]["coreml"]["coreml"]["converted_from"] in ("float16", "float32")


@pytest.mark.macos_only
def test_parity_script_refuses_off_macos(int4_coreml, capfd):
    if sys.platform == "darwin":
        pytest.skip("on macOS the parity script runs (see the macOS test)")
    from flora_export.export.coreml_parity import main
    assert main([str(int4_coreml)]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "need macOS" in err[0]


@pytest.mark.macos_only
@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML predictions need macOS "
                    "(run: python -m flora_export.export.coreml_parity OUT on a Mac)")
@pytest.mark.parametrize("units", ["cpu", "all"])
def test_package_parity_on_macos(int4_coreml, units):
    from flora_export.export.coreml_parity import run_parity
    p = run_parity(int4_coreml, units)
    assert p["passed"] and p["criteria"]["sqnr"] == "passed"
    assert p["steps"] == p["extension"]["positions"] >= 9     # the whole saved sequence
    assert p["quality"]["gate"] == "quality" and p["quality"]["passed"] is not False


def _refuse(capfd, out, *args):
    from flora_export.cli import main
    assert main(["--target", "coreml", "--out", str(out), *args]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flora-export: error:") and "fix:" in err[0]
    assert not out.exists()
    return err[0]


@pytest.mark.parametrize("args,expect", [
    (["--quant", "int3"], "unknown quantization 'int3'"),
    (["--model", "tiny", "--max-seq", "20000"], "outside [16, 16384]"),
    (["--model", "tiny", "--no-fuse"], "not a multiple of the quantization group"),
], ids=["quant", "max-seq", "unpadded-ffba"])
def test_bad_input(capfd, tmp_path, tiny_base, tiny_ffba, args, expect):
    if "--no-fuse" in args:
        args = ["--model", str(tiny_base), "--adapter", str(tiny_ffba), "--no-fuse"]
    assert expect in _refuse(capfd, tmp_path / "out", *args)


def test_max_seq_above_core_ml_limit(tmp_path):
    from flora_export.errors import FloraError
    from flora_export.model import random_model
    model = random_model(shapes(max_position_embeddings=65536, num_hidden_layers=1))
    model.tokenizer_json, model.source = load_model("tiny").tokenizer_json, ModelSource("wide")
    with pytest.raises(FloraError, match="Core ML export's limit 32767"):
        export(model, "coreml", tmp_path / "o", ExportConfig(quant="fp32", max_seq=40000))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("target", ["coreml", "ios"])
def test_missing_coremltools_names_the_extra(target, tmp_path):
    code = ("import sys; sys.modules['coremltools'] = None; from flora_export.cli import main; "
            f"sys.exit(main(['--target', '{target}', '--out', r'{tmp_path / 'o'}']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "coremltools" in lines[0] and "[coreml]" in lines[0]
    assert not (tmp_path / "o").exists()


def test_import_does_not_load_coremltools():
    code = ("import sys, flora_export, flora_export.cli, flora_export.export.pipeline; "
            "flora_export.cli.build_parser(); print('coremltools' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


@pytest.mark.slow
def test_llama32_1b_with_ffba_to_coreml(tmp_path):
    from flora_export.adapters import FFBAConfig, attach_ffba
    from conftest import randomize_adapter
    model = load_model("llama3.2-1b")
    attach_ffba(model, FFBAConfig(width=86))          # padded to 96 when fused
    randomize_adapter(model, std=0.01)
    m = export(model, "coreml", tmp_path / "c", ExportConfig(max_seq=256))
    assert m["counts"]["quantized_linear_ops"] == m["counts"]["linear_ops"] == 4 * 16 + 1
    assert m["counts"]["quantized_weight_bits"] == {"int4": 65}
    assert m["parity"]["torch_program_vs_eager"]["passed"]
