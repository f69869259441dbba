"""Paths and flags where the model and adapter enter: an empty `--model` / `--adapter`
(an unset shell variable) is refused by every console script and the API, and
`--allow-unused-weights` is the only way past unused checkpoint tensors."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from flora_export.errors import FloraError
from flora_export.model import load_model

from conftest import shapes, write_base


@pytest.fixture
def base(tmp_path) -> Path:
    return write_base(tmp_path / "base", seed=3)


def test_empty_model_or_adapter_path_refused_by_the_api(base):
    from flora_export.adapters import load_adapter
    with pytest.raises(FloraError, match="empty string"):
        load_model("")
    with pytest.raises(FloraError, match="empty string"):
        load_adapter(load_model(base), "")


@pytest.mark.parametrize("prog,args", [
    ("flora-export", ["--target", "android", "--model", ""]),
    ("flora-export", ["--target", "android", "--adapter", ""]),
    ("flora-export", ["--target", "android", "--model", "  ", "--adapter", "none"]),
    ("flora-eval", ["--model", "", "--task", "arith"]),
    ("flora-eval", ["--adapter", "", "--task", "arith"]),
    ("flora-eval", ["--export", "", "--task", "arith"]),
    ("flora-train", ["--budget", "--model", "", "--lora-rank", "8"]),
], ids=["export-model", "export-adapter", "export-blank-model", "eval-model", "eval-adapter",
        "eval-export", "train-budget-model"])
def test_empty_path_refused_by_the_clis(capfd, tmp_path, monkeypatch, prog, args):
    """An unset shell variable (was: the embedded demo exported, or the adapter dropped)."""
    monkeypatch.chdir(tmp_path)
    module = {"flora-export": "flora_export.cli", "flora-eval": "flora_export.eval_cli",
              "flora-train": "flora_export.train.cli"}[prog]
    code = importlib.import_module(module).main(args)
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"{prog}: error:") and "empty string" in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_unused_weights_unless_flagged(capfd, tmp_path):
    """A 4-layer checkpoint whose config.json says 2: flora-export names the tensors and the
    flag; with the flag the load goes on (then stopped by a --max-seq too short for
    the verification, which comes after loading)."""
    from flora_export.cli import main
    path = write_base(tmp_path / "m", shapes(num_hidden_layers=4))
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 2}))
    args = ["--target", "android", "--model", str(path), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.layers.2." in err[0] and "--allow-unused-weights" in err[0]
    assert main([*args, "--allow-unused-weights", "--max-seq", "24"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_seq 24 cannot hold" in err[0], err
    assert not (tmp_path / "out").exists()
