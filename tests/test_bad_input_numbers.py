"""Bad numbers, bad training data and broken files: one line naming the problem and the fix,
exit code 2, no traceback, nothing written.

One test per class; each case is built in the test (a few bytes of JSONL, a recipe, a
copied export with one file damaged).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flora_export.bench.cli import main as bench_main
from flora_export.cli import main as export_main
from flora_export.eval_cli import main as eval_main
from flora_export.train.cli import main as train_main

RECIPE = Path(__file__).parents[1] / "recipes" / "default-adapter.yaml"
QUICK = ["train.steps=4", "train.batch_size=4", "data.eval_size=4", "train.warmup_steps=1",
         "train.save_every=0", "train.threads=1"]


def one_line_error(capsys, prog: str, code: int, want: str, expected_code: int = 2) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == expected_code, err
    assert len(err) == 1, err
    assert err[0].startswith(f"{prog}: error: ") and want in err[0], err[0]
    assert "Traceback" not in err[0]
    return err[0]


def exit_code(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:          # argparse refuses an option before any work starts
        return e.code


# ------------------------------------------------------- numbers on the command line

OPTIONS = [
    (export_main, "flora-export", ["--target", "android", "--max-seq", "0"], "--max-seq"),
    (export_main, "flora-export", ["--target", "android", "--max-seq", "8"], ">= 16"),
    (export_main, "flora-export", ["--target", "android", "--max-seq", "1e3"], "integer"),
    (export_main, "flora-export", ["--target", "android", "--seed", "-1"], "--seed"),
    (bench_main, "flora-bench", ["x", "--runs", "0"], "--runs: must be an integer >= 1"),
    (bench_main, "flora-bench", ["x", "--warmup", "-5"], "--warmup: must be an integer >= 0"),
    (bench_main, "flora-bench", ["x", "--cooldown", "-1"], "--cooldown: must be a finite"),
    (bench_main, "flora-bench", ["x", "--cooldown", "nan"], "--cooldown"),
    (bench_main, "flora-bench", ["x", "--gen-len", "1"], "--gen-len: must be an integer >= 2"),
    (bench_main, "flora-bench", ["x", "--prompt-len", "0"], "--prompt-len"),
    (bench_main, "flora-bench", ["x", "--threads", "0"], "--threads"),
    (bench_main, "flora-bench", ["x", "--threads", "100000"], "<= 1024"),
    (bench_main, "flora-bench", ["x", "--passes", "0"], "--passes"),
    (bench_main, "flora-bench", ["x", "--app-timeout", "inf"], "--app-timeout"),
    (bench_main, "flora-bench", ["x", "--ssh-port", "70000"], "<= 65535"),
    (eval_main, "flora-eval", ["--task", "shift", "-n", "-3"], "argument -n"),
    (eval_main, "flora-eval", ["--task", "shift", "--show", "-1"], "--show"),
    (train_main, "flora-train", ["--budget", "--lora-rank", "0"], "--lora-rank"),
    (train_main, "flora-train", ["--budget", "--ffba-width", "-2"], "--ffba-width"),
]


@pytest.mark.parametrize("main, prog, argv, want", OPTIONS,
                         ids=[" ".join(o[2][-2:]) + f" ({o[1]})" for o in OPTIONS])
def test_numeric_options_are_refused_before_any_work(main, prog, argv, want, capsys, tmp_path,
                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)            # nothing may appear here
    line = one_line_error(capsys, prog, exit_code(main, argv), want)
    assert "fix" in line
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------- numbers in recipes

FIELDS = [
    ("train.lr=.nan", "train.lr must be a finite number > 0 and <= 1, got nan"),
    ("train.lr=.inf", "train.lr must be"),
    ("train.lr=0", "train.lr must be"),
    ("train.lr=-1e-3", "train.lr must be"),
    ("train.lr=5", "<= 1"),
    ("train.grad_clip=-1", "train.grad_clip must be a finite number >= 0 (0 turns clipping off)"),
    ("train.grad_clip=.inf", "train.grad_clip"),
    ("train.log_every=0", "train.log_every must be an integer >= 1, got 0"),
    ("train.threads=-1", "train.threads must be an integer >= 0"),
    ("train.threads=100000", "train.threads"),
    ("train.steps=0", "train.steps must be an integer >= 1"),
    ("train.batch_size=-4", "train.batch_size"),
    ("train.warmup_steps=-5", "train.warmup_steps must be an integer >= 0"),
    ("train.warmup_steps=50", "is more than train.steps=4"),
    ("train.weight_decay=-0.1", "train.weight_decay"),
    ("train.weight_decay=1e4", "lr * train.weight_decay"),
    ("train.eval_every=-1", "train.eval_every"),
    ("train.save_every=-2", "train.save_every"),
    ("train.seed=-1", "train.seed"),
    ("model.seed=-1", "model.seed"),
    ("data.eval_size=0", "data.eval_size"),
    ("data.max_len=0", "data.max_len"),
    ("method.ffba.width=0", "method.ffba.width must be an integer >= 1"),
    ("method.ffba.alpha=.nan", "method.ffba.alpha must be a finite number > 0"),
    ("method.lora.rank=-1", "method.lora.rank"),
    ("method.lora.alpha=0", "method.lora.alpha"),
]


@pytest.mark.parametrize("override, want", FIELDS, ids=[f[0] for f in FIELDS])
def test_recipe_numbers_are_refused_by_field(override, want, capsys, tmp_path):
    out = tmp_path / "run"
    code = train_main([str(RECIPE), *[f"--set={s}" for s in QUICK], f"--set=out={out}",
                       f"--set={override}", "-q"])
    line = one_line_error(capsys, "flora-train", code, want)
    assert "fix: set" in line
    assert not out.exists()


def test_recipe_file_numbers_are_checked_like_overrides(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"out: {tmp_path / 'run'}\ntrain: {{lr: .nan, steps: 4}}\n")
    one_line_error(capsys, "flora-train", train_main([str(recipe), "-q"]),
                   "train.lr must be a finite number > 0 and <= 1, got nan")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------- the whole training data set

GOOD = '{"prompt": "reverse: abc", "response": "cba"}\n'


def good(n: int) -> str:
    """`n` valid records with distinct prompts (both splits get some)."""
    return "".join(json.dumps({"prompt": f"copy: w{i}", "response": f"w{i}"}) + "\n"
                   for i in range(n))
DATA = [
    (b'{"prompt": "a\xff", "response": "b"}\n', "d.jsonl:1 is not valid UTF-8"),
    (GOOD * 30 + '{"prompt": "x", "response": \n', "d.jsonl:31 is not valid JSON"),
    (GOOD * 3 + '{"prompt": "x"}\n', 'd.jsonl:4 needs string fields "prompt" and "response"'),
    (GOOD + '{"prompt": "x", "response": 5}\n', "d.jsonl:2 needs string fields"),
    (GOOD + '["prompt", "response"]\n', "d.jsonl:2 needs string fields"),
    (GOOD + '{"prompt": "x", "response": "y", "system": "be brief"}\n',
     "d.jsonl:2 has fields that are not read: system"),
    ('{"prompt": "a", "response": ""}\n' * 40, "d.jsonl:1 has an empty response"),
    (GOOD * 50 + '{"prompt": "x", "response": ""}\n', "d.jsonl:51 has an empty response"),
    (good(200) + '{"prompt": "%s", "response": "y"}\n' % ("long " * 40),
     "d.jsonl:201 is "),
    ("\n\n  \n", "holds no records"),
]


@pytest.mark.parametrize("content, want", DATA, ids=[w for _, w in DATA])
def test_training_data_is_checked_whole_before_step_one(content, want, capsys, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "run"
    code = train_main([str(RECIPE), *[f"--set={s}" for s in QUICK], f"--set=out={out}",
                       f"--set=data.jsonl={data}", "--set=data.tasks=", "-q"])
    line = one_line_error(capsys, "flora-train", code, want)
    assert str(data) in line or "holds no records" in line
    assert not out.exists(), "nothing is written (no train_log.jsonl) when the data is bad"


def test_overlong_held_out_example_and_generated_data_are_refused(capsys, tmp_path):
    out = tmp_path / "run"
    ev = tmp_path / "eval.jsonl"
    ev.write_text(GOOD * 3 + '{"prompt": "%s", "response": "y"}\n' % ("long " * 40))
    code = train_main([str(RECIPE), *[f"--set={s}" for s in QUICK], f"--set=out={out}",
                       f"--set=data.eval_jsonl={ev}", "-q"])
    one_line_error(capsys, "flora-train", code, "eval.jsonl:4 is ")
    code = train_main([str(RECIPE), *[f"--set={s}" for s in QUICK], f"--set=out={out}",
                       "--set=data.max_len=8", "-q"])
    one_line_error(capsys, "flora-train", code, "a training example is ")
    assert not out.exists()


# ------------------------------------------------------- broken files: no traceback

def test_corrupt_or_truncated_resume_checkpoint_is_refused(capsys, tmp_path):
    from flora_export.train import load_recipe

    out = tmp_path / "run"
    sets = [*QUICK, f"out={out}"]
    recipe = load_recipe(RECIPE, sets).to_dict()
    ckpt = out / "checkpoint"
    ckpt.mkdir(parents=True)
    cases = [
        ("{not json", b"", "state.json"),
        (json.dumps({"step": "three", "recipe": recipe}), b"", "integer step"),
        (json.dumps({"step": 2, "recipe": recipe}), b"\x08\x00\x00\x00\x00\x00\x00\x00{}",
         "state.safetensors"),                              # truncated header
        (json.dumps({"step": 2, "recipe": recipe}), None, "state.safetensors"),   # missing
    ]
    for meta, tensors, want in cases:
        (ckpt / "state.json").write_text(meta)
        (ckpt / "state.safetensors").unlink(missing_ok=True)
        if tensors is not None:
            (ckpt / "state.safetensors").write_bytes(tensors)
        code = train_main([str(RECIPE), *[f"--set={s}" for s in sets], "-q"])
        line = one_line_error(capsys, "flora-train", code, want)
        assert "unreadable" in line and "--restart" in line
        assert sorted(p.name for p in out.iterdir()) == ["checkpoint"]

    from safetensors.torch import save_file
    import torch
    save_file({"param.layers.0.mlp.adapter.A.weight": torch.zeros(3, 3)},
              str(ckpt / "state.safetensors"))
    code = train_main([str(RECIPE), *[f"--set={s}" for s in sets], "-q"])
    one_line_error(capsys, "flora-train", code, "the model needs")
    assert (ckpt / "state.json").is_file(), "the user's checkpoint is left alone"


@pytest.fixture
def export_copy(bench_et_export, tmp_path) -> Path:
    return Path(shutil.copytree(bench_et_export, tmp_path / "export"))


def _drop_runtime(d: Path):
    m = json.loads((d / "manifest.json").read_text())
    del m["runtime"]
    (d / "manifest.json").write_text(json.dumps(m))


def _bos_string(d: Path):
    m = json.loads((d / "manifest.json").read_text())
    m["runtime"]["bos_id"] = "1"
    (d / "manifest.json").write_text(json.dumps(m))


EXPORT_DAMAGE = [
    (lambda d: (d / "manifest.json").write_text("{corrupt"), "not readable JSON"),
    (lambda d: (d / "manifest.json").write_text("[]"), "not a JSON object"),
    (_drop_runtime, "runtime is missing"),
    (_bos_string, "runtime.bos_id"),
    (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    (lambda d: (d / "model.pte").write_bytes((d / "model.pte").read_bytes()[:4096]),
     "model.pte is not the file the export wrote"),
    (lambda d: (d / "model.pte").unlink(), "model.pte is missing"),
]


@pytest.mark.parametrize("damage, want", EXPORT_DAMAGE, ids=[w for _, w in EXPORT_DAMAGE])
def test_eval_of_a_damaged_export_is_one_line(export_copy, damage, want, capsys):
    damage(export_copy)
    code = eval_main(["--export", str(export_copy), "--task", "shift", "-n", "2"])
    one_line_error(capsys, "flora-eval", code, want)


def test_eval_jsonl_with_invalid_utf8_is_one_line(capsys, tmp_path):
    data = tmp_path / "e.jsonl"
    data.write_bytes(GOOD.encode() + b'{"prompt": "\xc3\x28", "response": "b"}\n')
    one_line_error(capsys, "flora-eval", eval_main(["--jsonl", str(data)]),
                   "e.jsonl:2 is not valid UTF-8")


def test_an_internal_error_is_one_line_with_a_log(capsys):
    from flora_export.console import run_command

    def broken():
        raise ZeroDivisionError("a bug")
    code = run_command("flora-x", False, broken)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("flora-x: internal error: ")
    log = Path(err[0].rsplit("details: ", 1)[1].rstrip(")"))
    assert "ZeroDivisionError: a bug" in log.read_text() and "Traceback" in log.read_text()
    log.unlink()


# ------------------------------------------------------- CI: an unexpected skip fails

GENERATED = '''
import sys
import pytest

def test_passes():
    pass

def test_skips_in_body():
    pytest.skip("needs the adb client")

@pytest.mark.skipif(True, reason="Swift chroot missing")
def test_skipif_marker():
    pass

@pytest.mark.macos_only
@pytest.mark.skipif(True, reason="Core ML predictions need macOS")
def test_macos_only_may_skip():
    pass

@pytest.mark.xfail(reason="known", strict=True)
def test_xfail_is_not_a_skip():
    assert False
'''


@pytest.mark.parametrize("ci", ["true", ""])
def test_ci_turns_unexpected_skips_into_failures(tmp_path, ci):
    import os
    import subprocess
    import sys

    tests = Path(__file__).parent
    (tmp_path / "conftest.py").write_text(
        "from skip_policy import pytest_make_collect_report, pytest_runtest_makereport\n")
    (tmp_path / "test_generated.py").write_text(GENERATED)
    (tmp_path / "test_needs_extra.py").write_text(
        "import pytest\npytest.importorskip('no_such_extra_module')\n\ndef test_x():\n    pass\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                           "-o", "addopts=", "-o", "markers=macos_only: m",
                           "--continue-on-collection-errors", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "CI": ci, "PYTHONPATH": str(tests)})
    out = proc.stdout
    summary = out.strip().splitlines()[-1]
    if ci:
        assert proc.returncode == 1, out
        assert "FAILED test_generated.py::test_skips_in_body" in out, out
        assert "ERROR test_generated.py::test_skipif_marker" in out, out     # at setup
        assert "ERROR test_needs_extra.py" in out, out                       # at collection
        assert out.count("skipped under CI=true") >= 3 and "adb client" in out
        assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 2 errors" in summary, summary
        assert "SKIPPED [1] test_generated.py" in out and "need macOS" in out
    else:
        assert proc.returncode == 0, out
        assert "1 passed, 4 skipped, 1 xfailed" in summary, summary


def test_batch_that_does_not_split_over_the_processes_is_refused():
    from flora_export.errors import FloraError
    from flora_export.train import load_recipe
    from flora_export.train.data import BatchSource, Encoder
    from flora_export.train.trainer import build_model

    recipe = load_recipe(RECIPE, [*QUICK, "train.batch_size=3"])
    source = BatchSource(recipe, Encoder.for_model(build_model(recipe)))
    source.check_processes(1)
    source.check_processes(3)
    with pytest.raises(FloraError, match=r"batch_size=3 does not split evenly over 2 "
                                         r"processes.*multiple of 2, e.g. 2"):
        source.check_processes(2)
