"""Every key of a real manifest must be listed in docs/manifest.md (used by the export tests).

docs/manifest.md lists field paths in the first column of its tables, dotted, with `*`
for one key of a data-keyed map (file, stage, backend names) and a trailing `**` for a
subtree described in words. `results.BACKEND.counts|parity.*` are the `counts` / `parity`
fields again, and `parity.torch_program_vs_eager.*` repeats `parity.*`.
"""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "manifest.md"
_ROW = re.compile(r"^\| `([^`]+)` \|", re.M)


def documented_patterns(text: str | None = None) -> list[tuple[str, ...]]:
    text = DOC.read_text() if text is None else text
    return [tuple(p.split(".")) for p in _ROW.findall(text)]


def _matches(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    if pattern and pattern[-1] == "**":
        head = pattern[:-1]
        return len(path) > len(head) and _matches(head, path[:len(head)])
    return len(pattern) == len(path) and all(p in ("*", k) for p, k in zip(pattern, path))


def _canonical(path: tuple[str, ...]) -> tuple[str, ...]:
    """Paths the doc describes once: a backend's own counts/parity, Core ML's program check."""
    if len(path) >= 3 and path[0] == "results" and path[2] in ("counts", "parity", "quality"):
        path = path[2:]
    if path and path[0] == "quality":
        path = ("parity",) + path[1:]
    if len(path) >= 2 and path[:2] == ("parity", "torch_program_vs_eager"):
        path = ("parity",) + path[2:]
    return path


def key_paths(value, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of a JSON object (lists are leaves: their items are values)."""
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            out.append(prefix + (k,))
            out += key_paths(v, prefix + (k,))
    return out


def undocumented(manifest: dict, patterns: list[tuple[str, ...]] | None = None) -> list[str]:
    patterns = documented_patterns() if patterns is None else patterns
    missing = []
    for path in key_paths(manifest):
        canon = _canonical(path)
        if not any(_matches(p, canon) or _matches(p, path) for p in patterns):
            missing.append(".".join(path))
    return missing


def assert_documented(manifest: dict) -> None:
    missing = undocumented(manifest)
    assert not missing, f"manifest fields missing from docs/manifest.md: {missing}"
