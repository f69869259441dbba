"""The runtime tokenizer gate of an export, re-run by `flora-export verify` on a board.

The export's gate (export/tokenizer_gate.py) proved that the runtime's own tokenizer, on
the file the artifact ships, encodes the probe set to Hugging Face's ids and decodes HF's
ids to HF's text. Here the same probes (tokenizer_files.probe_texts, HF's answers from the
export's tokenizer.json) go to the board's runtime (board.tokenizer_answers) and the
answers are compared the same way. Backends the export did not gate (Core ML) or whose
gate recorded mismatches (--allow-tokenizer-mismatch) are reported, not enforced.
"""

from __future__ import annotations

import json
from pathlib import Path


def probes(folder: Path, manifest: dict, backends: list[str]) -> dict | None:
    """{backend: {"file", "texts", "ids"}} for the gated backends, or None (no gate)."""
    from .export.tokenizer_files import Reference, probe_texts
    from .export.tokenizer_gate import prepare

    records = manifest.get("tokenizers") or {}
    gated = [b for b in backends if (records.get(b) or {}).get("checked")]
    if not gated or not (folder / "tokenizer.json").is_file():
        return None
    src = (folder / "tokenizer.json").read_text()
    ref = Reference(src)
    texts = probe_texts(src, (manifest.get("runtime") or {}).get("chat"))
    out = {}
    for b in gated:
        # the caller's input rule applied, as the app applies it; HF's ids are the same for
        # the prepared text (its own normalizer starts with that rule)
        prep = prepare(records[b].get("input_normalization"))
        prepared = [prep(t) for t in texts]
        out[b] = {"file": records[b].get("file", "tokenizer.json"), "texts": prepared,
                  "ids": [ref.encode(t) for t in prepared]}
    return out


class _Replay:
    """The board runtime's answers, replayed through the export gate's own probe check."""

    def __init__(self, backend: str, probe: dict, answers: list[dict]):
        from .export.tokenizer_runtimes import ExecuTorchTokenizer, OrtGenAITokenizer

        cls = ExecuTorchTokenizer if backend == "executorch-xnnpack" else OrtGenAITokenizer
        self.specials_shown = cls.specials_shown
        self._enc = {t: a["encode"] for t, a in zip(probe["texts"], answers)}
        self._dec = {tuple(i): a for i, a in zip(probe["ids"], answers)}
        if hasattr(cls, "whole"):
            self.whole = lambda ids: self._answer(ids, "whole")

    def _answer(self, ids, how: str):
        got = self._dec[tuple(ids)][how]
        if isinstance(got, str) and got.startswith("error: "):
            raise RuntimeError(got.removeprefix("error: "))
        return got

    def encode(self, text: str):
        got = self._enc[text]
        if isinstance(got, str):
            raise RuntimeError(got.removeprefix("error: "))
        return got

    def stream(self, ids):
        return self._answer(ids, "stream")


def judge(folder: Path, manifest: dict, backend: str, probe: dict, answers: dict) -> dict:
    """The export gate's probe check (tokenizer_gate._probe, its quirk rule) on the board's
    answers; enforced when the export's own gate passed."""
    from .export.tokenizer_files import Reference, special_ids
    from .export.tokenizer_gate import _probe, _quirk

    record = manifest["tokenizers"][backend]
    enforced = bool(record.get("passed"))
    if "load_error" in answers:
        return {"passed": not enforced, "enforced": enforced, "probes": len(probe["texts"]),
                "mismatches": [{"check": "load", "runtime": answers["load_error"]}],
                "mismatch_count": 1}
    src = (folder / "tokenizer.json").read_text()
    found = _probe(_Replay(backend, probe, answers["answers"]), Reference(src), probe["texts"],
                   lambda text: text)
    specials = special_ids(src)
    quirks = [f for f in found if _quirk(f, specials)]
    bad = [f for f in found if f not in quirks]
    return {"passed": not (bad and enforced), "enforced": enforced, "runtime": answers["runtime"],
            "probes": len(probe["texts"]), "mismatches": bad[:8], "mismatch_count": len(bad),
            "quirks": len(quirks)}


def summary(r: dict) -> str:
    state = "passed" if r["passed"] and not r.get("mismatch_count") else (
        "FAILED" if not r["passed"] else "mismatches allowed by the export")
    first = r["mismatches"][0] if r.get("mismatches") else None
    return (f"{state}: {r['probes']} probes, {r.get('mismatch_count', len(r['mismatches']))} "
            f"mismatches" + (f" (first: {json.dumps(first, ensure_ascii=False)[:160]})"
                             if first else ""))
