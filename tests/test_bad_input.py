"""Bad input to `flora-export`: one clear error line, exit code 2, nothing written.

Every case must fail before the slow lowering stage. The CLI moves fds 1/2 to a
log file and prints errors to a dup of the original stderr, so `capfd` (fd-level
capture) is what sees them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from flora_export.adapters import FFBAConfig, attach_ffba, load_adapter, save_adapter
from flora_export.cli import main
from flora_export.model import load_model, random_model, save_hf_checkpoint
from flora_export.model.presets import PRESETS
from flora_export.model.tokenizer import byte_level_tokenizer

TINY = PRESETS["tiny"]
WEIGHTS = "model.safetensors"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def write_base(path: Path, cfg=TINY, seed: int = 0) -> Path:
    path.mkdir(parents=True)
    byte_level_tokenizer(cfg.vocab_size, cfg.bos_token_id).save(str(path / "tokenizer.json"))
    save_hf_checkpoint(random_model(cfg, seed=seed), path)
    return path


def write_adapter(path: Path, base_dir: Path, width: int = 32) -> Path:
    model = load_model(base_dir)
    attach_ffba(model, FFBAConfig(width=width))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.layers:
            for blk in (layer.self_attn, layer.mlp):
                blk.adapter.B.weight.normal_(0.0, 0.02, generator=gen)
    return save_adapter(model, path)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A good tiny base and an FFBA adapter for it, never modified."""
    root = tmp_path_factory.mktemp("pristine")
    base = write_base(root / "base")
    return base, write_adapter(root / "adapter", base)


@pytest.fixture
def base(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine[0], tmp_path / "base"))


@pytest.fixture
def adapter(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine[1], tmp_path / "adapter"))


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "export"


def snapshot(path: Path) -> dict[str, bytes] | None:
    if not path.exists():
        return None
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def refuse(capfd, out: Path, *args: str, expect: tuple[str, ...] = ()) -> str:
    """Run the CLI; assert exit 2, one `error: ... fix: ...` line naming `expect`, no output."""
    before = snapshot(out)
    code = main(["--target", "android", *args, "--out", str(out)])
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("flora-export: error: "), err
    assert "fix:" in lines[0], err
    for word in expect:
        assert word in lines[0], err
    assert snapshot(out) == before
    siblings = out.parent.iterdir() if out.parent.is_dir() else []
    assert not [p.name for p in siblings if p.name.startswith(f".{out.name}.")]
    return lines[0]


def edit_tensors(path: Path, edit) -> None:
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------- base weights

def test_missing_safetensors(capfd, base, out):
    (base / WEIGHTS).unlink()
    refuse(capfd, out, "--model", str(base), expect=("no *.safetensors", str(base)))


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.write_text("weights")],
                         ids=["missing", "regular-file"])
def test_model_path_not_a_directory(capfd, tmp_path, out, make):
    model = tmp_path / "models" / "llama"
    model.parent.mkdir()
    make(model)
    refuse(capfd, out, "--model", str(model), expect=(str(model), "not a directory"))


def _random_bytes(path: Path) -> None:
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8,
                                   generator=torch.Generator().manual_seed(0)).numpy().tobytes())


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("damage", [_random_bytes, _cut_in_half, lambda p: p.write_bytes(b"")],
                         ids=["random-bytes", "truncated", "empty"])
def test_corrupt_safetensors(capfd, base, out, damage):
    damage(base / WEIGHTS)
    refuse(capfd, out, "--model", str(base), expect=(str(base / WEIGHTS), "safetensors"))


@pytest.mark.parametrize("name", ["model.layers.1.mlp.down_proj.weight",
                                  "model.layers.0.self_attn.k_proj.weight",
                                  "model.norm.weight"])
def test_missing_tensor(capfd, base, out, name):
    edit_tensors(base / WEIGHTS, lambda t: t.pop(name))
    refuse(capfd, out, "--model", str(base), expect=(name, "lacks"))


@pytest.mark.parametrize("name,cut", [
    ("model.layers.0.self_attn.o_proj.weight", "rows"),
    ("model.embed_tokens.weight", "cols"),
    ("model.layers.1.self_attn.q_proj.weight", "cols"),
    ("model.layers.0.mlp.up_proj.weight", "rows"),
])
def test_tensor_shape_mismatch(capfd, base, out, name, cut):
    def shrink(t):
        t[name] = t[name][:-8].contiguous() if cut == "rows" else t[name][:, :-8].contiguous()
    edit_tensors(base / WEIGHTS, shrink)
    refuse(capfd, out, "--model", str(base), expect=(name, "shape", "config.json"))


def test_config_implies_other_shapes(capfd, base, out):
    edit_json(base / "config.json", lambda c: c.update(intermediate_size=384))
    refuse(capfd, out, "--model", str(base), expect=("shape", "config.json"))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")],
                         ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", ["model.layers.1.mlp.gate_proj.weight",
                                  "model.embed_tokens.weight"])
def test_non_finite_base_weights(capfd, base, out, name, value):
    def poison(t):
        t[name][3, 5] = value
    edit_tensors(base / WEIGHTS, poison)
    refuse(capfd, out, "--model", str(base), expect=(name, "NaN or Inf"))


# ---------------------------------------------------------------- config.json

@pytest.mark.parametrize("edit,expect", [
    (lambda p: p.unlink(), "no config.json"),
    (lambda p: p.write_text("{not json"), "not valid JSON"),
    (lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "not valid JSON"),
    (lambda p: p.write_text("[1, 2, 3]"), "config.json"),
    (lambda p: edit_json(p, lambda c: c.pop("hidden_size")), "hidden_size"),
    (lambda p: edit_json(p, lambda c: c.update(hidden_size=0)), "hidden_size"),
    (lambda p: edit_json(p, lambda c: c.update(hidden_size="128", head_dim=None)),
     "hidden_size must be a positive integer"),
    (lambda p: edit_json(p, lambda c: c.update(num_key_value_heads=3)), "num_key_value_heads"),
    (lambda p: edit_json(p, lambda c: c.update(model_type="gpt2",
                                               architectures=["GPT2LMHeadModel"])), "gpt2"),
    (lambda p: edit_json(p, lambda c: c.update(rope_scaling={"rope_type": "yarn"})), "yarn"),
    (lambda p: edit_json(p, lambda c: c.update(rope_scaling="llama3")), "rope_scaling"),
    (lambda p: edit_json(p, lambda c: c["rope_scaling"].pop("factor")), "factor"),
    (lambda p: edit_json(p, lambda c: c.update(rope_theta="fast")), "'fast'"),
    (lambda p: edit_json(p, lambda c: c.update(head_dim=None, num_attention_heads=0)),
     "num_attention_heads must be a positive integer"),
], ids=["missing", "not-json", "binary", "json-list", "missing-key", "zero-size",
        "string-size", "bad-heads", "not-llama", "bad-rope-type", "rope-not-object",
        "rope-lacks-factor", "string-theta", "zero-heads"])
def test_bad_config_json(capfd, base, out, edit, expect):
    edit(base / "config.json")
    refuse(capfd, out, "--model", str(base), expect=(expect,))


# ---------------------------------------------------------------- tokenizer.json

@pytest.mark.parametrize("edit,expect", [
    (lambda p: p.unlink(), "no tokenizer.json"),
    (lambda p: p.write_text("{not json"), "not a valid HF tokenizer.json"),
    (lambda p: p.write_text('{"version": "1.0"}'), "not a valid HF tokenizer.json"),
    (lambda p: p.write_bytes(p.read_bytes()[:1000]), "not a valid HF tokenizer.json"),
    (lambda p: byte_level_tokenizer(1024, 896).save(str(p)), "1024 tokens"),
], ids=["missing", "not-json", "not-a-tokenizer", "truncated", "too-many-tokens"])
def test_bad_tokenizer(capfd, base, out, edit, expect):
    edit(base / "tokenizer.json")
    refuse(capfd, out, "--model", str(base), expect=(expect,))


# ---------------------------------------------------------------- adapters

@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_adapter(capfd, base, adapter, out, value):
    def poison(t):
        t["layers.1.mlp.B"][0, 0] = value
    edit_tensors(adapter / ADAPTER_WEIGHTS, poison)
    refuse(capfd, out, "--model", str(base), "--adapter", str(adapter),
           expect=("layers.1.mlp.B", "NaN or Inf"))


@pytest.fixture
def foreign_adapter(tmp_path) -> Path:
    """An adapter trained on a base of the same shapes but other weights (seed 1)."""
    return write_adapter(tmp_path / "foreign-adapter", write_base(tmp_path / "other", seed=1))


def test_adapter_for_another_base(capfd, base, foreign_adapter, out):
    refuse(capfd, out, "--model", str(base), "--adapter", str(foreign_adapter),
           expect=("another base model", "fingerprint", "--no-base-check"))


def test_no_base_check_accepts_foreign_adapter(capfd, base, foreign_adapter, out):
    model = load_adapter(load_model(base), foreign_adapter, check_base=False)
    assert model.adapter_state.config.width == 32
    line = refuse(capfd, out, "--model", str(base), "--adapter", str(foreign_adapter),
                  "--no-base-check", "--max-seq", "100000", expect=("max_seq 100000",))
    assert "another base" not in line


def test_max_seq_too_short_for_verification(capfd, base, out):
    refuse(capfd, out, "--model", str(base), "--max-seq", "24",
           expect=("max_seq 24 cannot hold the verification sequence", "--max-seq"))


def test_adapter_wrong_width(capfd, base, adapter, out):
    edit_json(adapter / ADAPTER_CONFIG, lambda c: c.update(width=16))
    refuse(capfd, out, "--model", str(base), "--adapter", str(adapter),
           expect=("layers.0.attn.A", "shape", "adapter_config.json"))


def test_adapter_missing_tensor(capfd, base, adapter, out):
    edit_tensors(adapter / ADAPTER_WEIGHTS, lambda t: t.pop("layers.1.attn.B"))
    refuse(capfd, out, "--model", str(base), "--adapter", str(adapter),
           expect=("layers.1.attn.B", "lacks"))


@pytest.mark.parametrize("arch,with_record,expect", [
    (dict(num_hidden_layers=3), True, "num_hidden_layers=3"),
    (dict(num_hidden_layers=1), True, "num_hidden_layers=1"),
    (dict(hidden_size=64, head_dim=16), True, "hidden_size=64"),
    (dict(num_hidden_layers=3), False, "'layers.2.attn.A'"),
    (dict(num_hidden_layers=1), False, "'layers.1.attn.A'"),
    (dict(hidden_size=64, head_dim=16), False, "(32, 64)"),
], ids=["more-layers", "fewer-layers", "other-hidden-size", "more-layers-no-record",
        "fewer-layers-no-record", "other-hidden-size-no-record"])
def test_adapter_for_other_architecture(capfd, base, tmp_path, out, arch, with_record, expect):
    other = write_base(tmp_path / "other-base", dataclasses.replace(TINY, **arch))
    foreign = write_adapter(tmp_path / "foreign-adapter", other)
    if not with_record:
        edit_json(foreign / ADAPTER_CONFIG, lambda c: c.pop("base"))
    refuse(capfd, out, "--model", str(base), "--adapter", str(foreign), expect=("adapter", expect))


@pytest.mark.parametrize("edit,expect", [
    (lambda d: shutil.rmtree(d), "no adapter_config.json"),
    (lambda d: (d / ADAPTER_WEIGHTS).unlink(), f"no {ADAPTER_WEIGHTS}"),
    (lambda d: _cut_in_half(d / ADAPTER_WEIGHTS), "not a readable safetensors"),
    (lambda d: (d / ADAPTER_CONFIG).write_text("{"), "not valid JSON"),
    (lambda d: edit_json(d / ADAPTER_CONFIG, lambda c: c.update(adapter_type="ia3")),
     "no FFBA or LoRA adapter"),
], ids=["missing-dir", "missing-weights", "truncated-weights", "config-not-json",
        "unknown-type"])
def test_bad_adapter_files(capfd, base, adapter, out, edit, expect):
    edit(adapter)
    refuse(capfd, out, "--model", str(base), "--adapter", str(adapter), expect=(expect,))


# ---------------------------------------------------------------- names

@pytest.mark.parametrize("args,expect", [
    (["--target", "windows"], "unknown target 'windows'"),
    (["--quant", "int3"], "unknown quantization 'int3'"),
    (["--model", "llama9-70b"], "'llama9-70b'"),
], ids=["target", "quant", "preset"])
def test_unknown_names(capfd, out, args, expect):
    refuse(capfd, out, *args, expect=(expect,))


# ---------------------------------------------------------------- --out

def test_out_under_a_regular_file(capfd, base, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    refuse(capfd, blocker / "sub" / "export", "--model", str(base),
           expect=(str(blocker), "is a file"))
    assert blocker.read_text() == "not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "blocker"]


def test_out_is_foreign_directory(capfd, base, out):
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "data").mkdir()
    (out / "data" / "x.bin").write_bytes(b"\x00\x01")
    refuse(capfd, out, "--model", str(base), expect=(str(out), "--force"))
    assert (out / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- the console script

def console(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flora_export.cli", "--target", "android", *args],
                          capture_output=True, text=True, timeout=120)


def test_console_script_unknown_quant(tmp_path):
    out = tmp_path / "export"
    proc = console("--quant", "int3", "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "flora-export: error: unknown quantization 'int3' "
        "(fix: use one of: 8da4w, fp32, int8)"], proc.stderr
    assert not out.exists()


def test_console_script_keeps_library_logs_off_stderr(base, adapter, out):
    edit_tensors(adapter / ADAPTER_WEIGHTS, lambda t: t["layers.0.attn.A"].fill_(float("nan")))
    proc = console("--model", str(base), "--adapter", str(adapter), "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("flora-export: error: adapter tensor "
                                                   "'layers.0.attn.A' contains NaN"), proc.stderr
    assert "fix:" in lines[0]
    assert not out.exists()
    assert not list(out.parent.glob(".export.*"))
