"""Full-size presets end to end (minutes each, ~8-14 GB): run with `pytest -m slow`."""

from __future__ import annotations

import pytest

from flora_export.adapters import FFBAConfig, attach_ffba
from flora_export.export import ExportConfig, export
from flora_export.model import load_model

from conftest import randomize_adapter

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("target", ["android", "onnx"])
def test_llama32_1b_with_ffba_exports(target, tmp_path):
    model = load_model("llama3.2-1b")
    attach_ffba(model, FFBAConfig(width=86))          # LoRA r16's budget; padded to 96
    randomize_adapter(model, std=0.01)
    m = export(model, target, tmp_path / target, ExportConfig(max_seq=256))
    assert m["counts"]["quantized_linear_ops"] == 4 * 16 + 1
    assert m["counts"]["fused_linears"] == 4 * 16 and m["adapter"]["fused_width"] == 96
    assert m["parity"]["passed"]
