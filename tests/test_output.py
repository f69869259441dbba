"""Manifest writing: strict JSON that the apps' readers (Kotlin, Swift) accept."""

from __future__ import annotations

import json

import pytest

from flora_export.export.output import write_json


def test_non_finite_figures_are_written_as_null(tmp_path):
    path = tmp_path / "manifest.json"
    write_json(path, {"parity": {"sqnr_db": float("inf"), "diffs": [1.5, float("nan")],
                                 "pair": (float("-inf"), 2)}, "ok": True})
    text = path.read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    assert data == {"parity": {"sqnr_db": None, "diffs": [1.5, None], "pair": [None, 2]}, "ok": True}
