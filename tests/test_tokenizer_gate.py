"""The runtime tokenizer gate: each layout real checkpoints ship, in each runtime's own
tokenizer (ExecuTorch's C++ HFTokenizer/SPTokenizer, ORT-GenAI's), is either shipped
in a form the runtime reads exactly like Hugging Face on the probe set, or refused in
one line. Tokenizers are trained here (tests/tokenizer_layouts.py), once per session."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

import tokenizer_layouts as L
from flora_export.errors import FloraError
from flora_export.export import tokenizer_gate as G
from flora_export.export.tokenizer_files import Reference, probe_texts
from flora_export.export.tokenizer_rewrites import STEPS, candidates
from flora_export.model import PRESETS, random_model, save_hf_checkpoint
from flora_export.utf8 import Utf8Stream, stream_text

ET, ORT = "executorch-xnnpack", "onnx"
# What each runtime gets, measured with the installed executorch 1.5.1 / pytorch_tokenizers
# 1.5.0 and onnxruntime-genai 0.18.0 (docs/tokenizers.md's table): "source" = the source's
# tokenizer.json as is, "rewrite" = a rewritten file, "nfc" = a rewritten file without the
# NFC normalizer, the caller applying NFC; None = refused in one line, with `REASON`.
SAME = {ET: "source", ORT: "source"}
EXPECTED = {
    "llama3": SAME, "smollm2": SAME, "smollm3": SAME, "phi4mini": SAME, "gemma3": SAME,
    "qwen2": {ET: "nfc", ORT: "nfc"},           # both runtimes' NFC differ from HF's
    "qwen3": {ET: "nfc", ORT: "nfc"},
    "llama2": {ET: "rewrite", ORT: None},       # ET: decoder without Strip
    "phi35": {ET: None, ORT: None},             # ET ignores rstrip; ORT: decode after specials
    "mistral": {ET: "rewrite", ORT: None},      # ET: Metaspace as normalizer
    "gemma": {ET: "source", ORT: "rewrite"},    # ORT: the whole text as one pre-token
    "wordlevel": {ET: None, ORT: None},         # neither loads WordLevel
    "unigram": {ET: None, ORT: None},           # neither loads Unigram
}
REASON = {("phi35", ET): "ignores the rstrip/lstrip", ("phi35", ORT): "drops the space",
          ("llama2", ORT): "drops the space", ("mistral", ORT): "prepend_scheme 'first'",
          ("wordlevel", ET): "cannot load", ("unigram", ORT): "cannot load"}
BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>")
EOS_NAMES = ("<|eot_id|>", "</s>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def _ids(d: Path) -> tuple[int, int]:
    bos = L.special(d, BOS_NAMES)
    eos = L.special(d, EOS_NAMES)
    return (eos if bos is None else bos), eos


@pytest.fixture(scope="session")
def layouts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    return {name: L.build(name, root / name) for name in L.BUILDERS}


@pytest.fixture(scope="session")
def genai_files(tmp_path_factory):
    """genai_config.json + tokenizer_config.json as the ONNX backend writes them."""
    from flora_export.export.onnx import write_genai_files

    model = random_model(dataclasses.replace(PRESETS["tiny"], num_hidden_layers=1))

    def write(out: Path, bos: int, eos: int) -> Path:
        write_genai_files(out, model, 128, bos, [eos])
        return out
    return write


def _choose(layouts, genai_files, tmp_path, name, backend, allow=False):
    d = layouts[name]
    tj = (d / "tokenizer.json").read_text()
    files = {"tokenizer.model": d / "tokenizer.model"} if (d / "tokenizer.model").exists() else {}
    bos, eos = _ids(d)
    out = tmp_path / "out"
    out.mkdir()
    if backend == ORT:
        genai_files(out, bos, eos)
    (tmp_path / "scratch").mkdir()
    case = G.prompt_case(tj, bos, None, 512)
    record, _ = G.choose(backend, out, tj, files, case, None, allow, tmp_path / "scratch")
    return record, out


@pytest.mark.parametrize("backend", [ET, ORT])
@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_layout_ships_what_the_runtime_reads_or_is_refused(layouts, genai_files, tmp_path,
                                                                 name, backend):
    want = EXPECTED[name][backend]
    if want is None:
        with pytest.raises(FloraError) as e:
            _choose(layouts, genai_files, tmp_path, name, backend)
        msg = str(e.value)
        assert "\n" not in msg and G._runtime_name(backend) in msg
        assert "--allow-tokenizer-mismatch" in msg
        assert REASON.get((name, backend), "") in msg
        assert not any((tmp_path / "out").glob("tokenizer.executorch.json"))
        return
    record, out = _choose(layouts, genai_files, tmp_path, name, backend)
    file = "tokenizer.json" if want == "source" or backend == ORT else "tokenizer.executorch.json"
    assert record["passed"] and record["file"] == file and record["tried"][-1]["mismatches"] == 0
    assert (want == "source") == (record["how"] == "the source's tokenizer.json")
    assert record["input_normalization"] == ("NFC" if want == "nfc" else None)
    assert record["probes"] >= len(probe_texts((layouts[name] / "tokenizer.json").read_text(),
                                               None))
    assert record["bos_policy"]["num_bos"] in (0, 1)
    if want != "source":
        assert (out / file).is_file() and record["tried"][0]["mismatches"] > 0
        assert json.loads((out / file).read_text()) != json.loads(
            (layouts[name] / "tokenizer.json").read_text())
    if backend == ET:
        assert record["class"] == "pytorch_tokenizers.CppHFTokenizer"


def test_allow_mismatch_ships_the_source_file_and_records_every_mismatch(layouts, genai_files,
                                                                          tmp_path):
    record, out = _choose(layouts, genai_files, tmp_path, "mistral", ORT, allow=True)
    assert not record["passed"] and record["file"] == "tokenizer.json"
    found = record["tried"][0]["found"]
    assert record["tried"][0]["mismatches"] == len(found) > 0
    assert any(f["check"] == "encode" and f["probe"] == "  leading spaces" for f in found)


@pytest.mark.parametrize("runtime", list(STEPS))
def test_rewrites_are_equal_in_hugging_face_on_the_probes(layouts, runtime):
    """Every rewrite encodes every probe as the source does, in HF itself (after the input
    rule it records), and decodes the ids to the same continuation text."""
    seen = 0
    for name in EXPECTED:
        src = (layouts[name] / "tokenizer.json").read_text()
        ref = Reference(src)
        texts = [t for t in probe_texts(src, None) if not t.startswith(("[INST]", "[/INST]"))]
        for c in candidates(runtime, src):
            seen += 1
            rewritten, prep = Reference(c.data), G.prepare(c.input_normalization)
            for t in texts:
                ids = ref.encode(t)
                assert rewritten.encode(prep(t)) == ids, (name, c.how, t)
                assert rewritten.text(ids, True) == ref.text(ids, True), (name, c.how, t)
    assert seen >= 4


def test_the_nfc_rule_is_recorded_for_the_apps(layouts, genai_files, tmp_path):
    """Qwen's NFC moves to the caller: the manifest says so, and the shipped file gives HF's
    ids for NFD text only once the caller applied NFC."""
    import unicodedata

    record, out = _choose(layouts, genai_files, tmp_path, "qwen3", ORT)
    manifest = {"runtime": {}}
    G.add_to_manifest(manifest, {ORT: record, "coreml": {"checked": False}})
    assert manifest["runtime"]["input_normalization"] == "NFC"
    assert manifest["runtime"]["bos_policy"][ORT] == record["bos_policy"]
    src = (layouts["qwen3"] / "tokenizer.json").read_text()
    nfd = "cafe\u0301 東京"
    shipped = Reference((out / "tokenizer.json").read_text())
    assert shipped.encode(unicodedata.normalize("NFC", nfd)) == Reference(src).encode(nfd)
    assert shipped.encode(nfd) != Reference(src).encode(nfd)


def test_probe_set_covers_what_the_issue_lists(layouts):
    src = (layouts["llama3"] / "tokenizer.json").read_text()
    chat = {"template": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{prompt}"
                        "<|eot_id|>"}
    texts = probe_texts(src, chat)
    joined = "".join(texts)
    import unicodedata
    assert any(t != unicodedata.normalize("NFC", t) for t in texts)         # NFD
    assert any(t == unicodedata.normalize("NFC", t) and "é" in t for t in texts)
    for needle in ("  ", "\n\n", "\t", "12", "東京", "😀", "<|eot_id|>", "<|end_header_id|>"):
        assert needle in joined
    assert texts[-1].startswith("<|begin_of_text|><|start_header_id|>")


def test_utf8_stream_holds_partial_pieces():
    data = "東京 😀 café".encode()
    pieces = [data[i:i + 1] for i in range(len(data))]       # one byte per piece
    s = Utf8Stream()
    out = [s.push(p) for p in pieces]
    s.flush()
    assert "".join(out) == s.text == "東京 😀 café"
    assert out[0] == "" and out[2] == "東"
    assert stream_text([b"\xe6", b"\x9d\xb1\xe4\xba\xac", " ok"]) == "東京 ok"
    assert stream_text([b"\xe6"]) == "\ufffd"     # an incomplete tail at the end shows, once


def test_executorch_pieces_keep_partial_utf8(layouts):
    """The C++ tokenizer's binding raises UnicodeDecodeError on a partial piece; the gate
    and the bench runners take its bytes and buffer them."""
    from flora_export.export.tokenizer_runtimes import ExecuTorchTokenizer

    rt = ExecuTorchTokenizer(layouts["llama3"] / "tokenizer.json")
    ids = Reference((layouts["llama3"] / "tokenizer.json").read_text()).encode("東京 😀")
    pieces = rt.pieces(ids)
    assert any(_invalid(p) for p in pieces)
    assert rt.stream(ids) == "東京 😀"


def _invalid(b: bytes) -> bool:
    try:
        b.decode()
        return False
    except UnicodeDecodeError:
        return True


# --- end to end: one export per backend, and one refusal through the CLI ---------------

def write_model(src: Path, out: Path, multibyte: str | None = None) -> Path:
    """A tiny random model over the layout in `src`; with `multibyte`, its greedy answer
    to any prompt repeats that text's tokens (layers zeroed, one-hot embeddings)."""
    import shutil

    import torch

    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        shutil.copy(f, out / f.name)
    bos, eos = _ids(src)
    cfg = dataclasses.replace(PRESETS["tiny"], bos_token_id=bos, eos_token_ids=(eos,),
                              tie_word_embeddings=multibyte is None)
    model = random_model(cfg, seed=0)
    if multibyte:
        cycle = Reference((src / "tokenizer.json").read_text()).encode(multibyte)
        with torch.no_grad():
            for layer in model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            model.lm_head.weight.zero_()
            model.embed_tokens.weight[:, :len(cycle) + 1] = 0.0
            for k, t in enumerate(cycle):      # token k -> direction k -> next token
                model.embed_tokens.weight[t, k] = 1.0
                nxt = cycle[(k + 1) % len(cycle)]
                model.lm_head.weight[nxt, k] = 10.0
            model.lm_head.weight[cycle[0], len(cycle)] = 10.0
            model.embed_tokens.weight[:, len(cycle)] += 0.5   # every other token -> cycle[0]
            for t in cycle:
                model.embed_tokens.weight[t, len(cycle)] = 0.0
    save_hf_checkpoint(model, out)
    return out


def _export(model_dir: Path, target: str, out: Path, *extra: str):
    return subprocess.run([sys.executable, "-m", "flora_export.cli", "--target", target,
                           "--model", str(model_dir), "--adapter", "none", "--quant", "fp32",
                           "--max-seq", "96", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def et_multibyte(layouts, tmp_path_factory) -> Path:
    """Llama-2 layout, a model whose greedy answer repeats ' 東京Ω' (Ω is byte fallback)."""
    tmp = tmp_path_factory.mktemp("et_multibyte")
    r = _export(write_model(layouts["llama2"], tmp / "m", multibyte=" 東京Ω"), "android",
                tmp / "x")
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp / "x"


@pytest.fixture(scope="module")
def ort_multibyte(layouts, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ort_multibyte")
    r = _export(write_model(layouts["llama3"], tmp / "m", multibyte="東京😀"), "onnx", tmp / "o")
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp / "o"


def test_executorch_export_ships_the_rewritten_llama2_tokenizer(layouts, et_multibyte):
    """Llama-2 layout: the source's tokenizer.json loses word-initial spaces in the C++
    runner; the export ships the decoder without its Strip, and TextLLMRunner's text for a
    multi-byte answer equals the fp32 model's."""
    from flora_export.export.tokenizer_runtimes import executorch_generate

    m = json.loads((et_multibyte / "manifest.json").read_text())
    rec = m["tokenizers"][ET]
    assert rec["file"] == "tokenizer.executorch.json" and rec["passed"]
    assert "tokenizer.executorch.json" in m["files"]
    text = rec["text"]
    assert text["equal"] and text["prompt_ids_equal"]
    assert "東京Ω" in text["streamed_text"] and text["streamed_text"] == text["fp32_text"]
    policy = m["runtime"]["bos_policy"][ET]
    assert policy["num_bos"] == 0 and policy["prompt_prefix"] == "<s>"
    # what a user who copies the README snippet runs: bos + the prompt's HF ids
    _, n_prompt, _ = executorch_generate(et_multibyte / "model.pte", et_multibyte / rec["file"],
                                         policy["prompt_prefix"] + "Say café", 0, 4, 96)
    assert n_prompt == 1 + len(Reference(
        (layouts["llama2"] / "tokenizer.json").read_text()).encode("Say café"))


def test_onnx_export_checks_text_in_ort_genai(ort_multibyte):
    rec = json.loads((ort_multibyte / "manifest.json").read_text())["tokenizers"][ORT]
    assert rec["passed"] and rec["file"] == "tokenizer.json"
    assert rec["text"]["equal"] and "東京😀" in rec["text"]["runtime_text"]


@pytest.mark.parametrize("engine", ["executorch", "ort-genai"])
def test_bench_runners_stream_a_multibyte_answer(et_multibyte, ort_multibyte, engine):
    """The bench runners' sample text: partial UTF-8 pieces held back, none dropped."""
    from flora_export.bench.runners import make_runner

    art, want = (et_multibyte, "  東京Ω") if engine == "executorch" else (ort_multibyte, "東京😀")
    tj = (art / "tokenizer.json").read_text()
    prompt = Reference(tj).encode("Say café")
    s = make_runner(str(art), engine, 1).generate(prompt, "Say café", 9)
    assert len(s["tokens"]) == 9 and want * 2 in s["text"], s["text"]


def test_refused_layout_exits_2_in_one_line_and_writes_nothing(layouts, tmp_path):
    model_dir = write_model(layouts["wordlevel"], tmp_path / "m")
    r = _export(model_dir, "onnx", tmp_path / "o")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("flora-export: error:")]
    assert len(lines) == 1 and "ORT-GenAI" in lines[0] and "WordLevel" in lines[0]
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


class _CrashingTokenizer:
    """A stand-in whose native code faults: reads address 0 through ctypes, in the child."""
    runtime, specials_shown, cls = "Crashing runtime", False, "test.CrashingTokenizer"

    def __init__(self, crash_on_load: bool):
        if crash_on_load:
            import ctypes
            ctypes.string_at(0)

    def encode(self, text, num_bos=0):
        if text == "boom":
            import ctypes
            ctypes.string_at(0)
        if text == "bad":
            raise ValueError("invalid character")
        return [len(text)]


def test_a_runtime_tokenizer_that_crashes_is_a_refusal_not_the_end_of_the_export():
    """The gate's runtimes run in a forked child: a segfault there is an error naming the
    runtime and the signal, an exception keeps its type, and the export process lives."""
    from flora_export.export.tokenizer_runtimes import IsolatedTokenizer

    with pytest.raises(RuntimeError, match=r"Crashing runtime's tokenizer crashed \(killed by SIGSEGV\)"):
        IsolatedTokenizer(_CrashingTokenizer, True)
    rt = IsolatedTokenizer(_CrashingTokenizer, False)
    assert rt.cls == "test.CrashingTokenizer" and rt.encode("abc") == [3]
    assert not hasattr(rt, "whole") and hasattr(rt, "encode")
    with pytest.raises(ValueError, match="invalid character"):
        rt.encode("bad")
    assert rt.encode("abcd") == [4]                  # an exception leaves the child serving
    assert G._try(rt.encode, "boom").startswith("error: RuntimeError: Crashing runtime's "
                                                "tokenizer crashed (killed by SIGSEGV)")
    with pytest.raises(RuntimeError, match="no longer running"):
        rt.encode("abc")


@pytest.mark.slow
def test_qwen3_export_with_its_chat_template_checks_nfc_text_in_ort_genai(layouts, tmp_path):
    """A Qwen3 checkpoint end to end: the manifest's chat format is its own template, the
    shipped tokenizer.json leaves NFC to the caller, and ORT-GenAI's text equals fp32's."""
    from test_chat_template import QWEN3

    src = tmp_path / "src"
    src.mkdir()
    (src / "tokenizer.json").write_text((layouts["qwen3"] / "tokenizer.json").read_text())
    (src / "tokenizer_config.json").write_text(json.dumps({"chat_template": QWEN3}))
    r = _export(write_model(src, tmp_path / "m", multibyte="café 東京"), "onnx", tmp_path / "o")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["runtime"]["chat"]["template"] == ("<|im_start|>user\n{prompt}<|im_end|>\n"
                                                "<|im_start|>assistant\n")
    assert m["runtime"]["chat"]["stop"] == ["<|im_end|>"]
    assert m["runtime"]["input_normalization"] == "NFC"
    rec = m["tokenizers"][ORT]
    assert rec["passed"] and rec["input_normalization"] == "NFC"
    assert rec["text"]["equal"] and "café 東京" in rec["text"]["runtime_text"]
    assert "normalizer" not in json.loads((tmp_path / "o" / "tokenizer.json").read_text()) or \
        json.loads((tmp_path / "o" / "tokenizer.json").read_text())["normalizer"] is None
