"""The public API, the CLI's help and the embedded default model."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import torch

import flora_export
from flora_export.adapters import load_adapter
from flora_export.cli import build_parser, main
from flora_export.default import DEFAULT_ADAPTER, DEFAULT_BASE
from flora_export.model import load_model


def test_public_api_names_resolve():
    for name in ("load_model", "FFBAConfig", "attach_ffba", "save_adapter", "load_adapter",
                 "fuse", "export"):
        assert callable(getattr(flora_export, name))


def test_import_pulls_in_no_backend():
    code = ("import sys, flora_export; flora_export.FFBAConfig; flora_export.fuse; "
            "print(sorted(m for m in ('executorch', 'coremltools', 'onnx', 'onnxruntime') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]"


def test_help_explains_targets_quant_and_presets():
    text = build_parser().format_help()
    for word in ("android", "onnx", "8da4w", "int8", "fp32", "llama3.2-1b", "--adapter",
                 "manifest.json", "TextLLMRunner"):
        assert word in text


def test_shipped_default_metrics_are_reproduced():
    """The shipped adapter's recorded held-out figures are what evaluation gives today."""
    from flora_export.train.evaluation import score_eager
    from flora_export.train.data import Encoder
    from flora_export.train.recipe import load_recipe
    from flora_export.train.tasks import eval_set

    recorded = json.loads((DEFAULT_ADAPTER / "metrics.json").read_text())
    recipe = load_recipe(DEFAULT_ADAPTER / "recipe.yaml")
    model = load_model(DEFAULT_BASE)
    load_adapter(model, DEFAULT_ADAPTER)
    examples = eval_set(recipe.data.tasks, recipe.data.eval_size)
    got = score_eager(model, Encoder.for_model(model), examples)
    assert abs(got.correct - recorded["eval"]["correct"]) <= 2
    assert abs(got.loss - recorded["eval"]["loss"]) < 1e-3


def test_default_adapter_fits_default_base_and_trains():
    model = load_model(DEFAULT_BASE)
    load_adapter(model, DEFAULT_ADAPTER)         # base fingerprint checked
    assert model.adapter_state.config.width == 48
    model.train()
    tokens = torch.randint(0, model.config.vocab_size, (2, 16))
    loss = torch.nn.functional.cross_entropy(model(tokens)[:, :-1].flatten(0, 1),
                                             tokens[:, 1:].flatten())
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(".adapter." in n for n in grads)


def test_default_export_from_the_cli(tmp_path, capfd):
    """The README's main command: no --model exports the embedded default."""
    out = tmp_path / "android"
    assert main(["--target", "android", "--out", str(out)]) == 0
    printed = capfd.readouterr().out
    assert "quantized linear ops  17 of 17" in printed
    assert re.search(r"\[(\d+)/\1\] write", printed)          # the last stage
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["name"] == "base" and m["adapter"]["fused_width"] == 64
    assert m["counts"]["fused_linears"] == 16 and m["counts"]["quantized_linear_ops"] == 17
