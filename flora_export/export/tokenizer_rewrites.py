"""Equivalent forms of a tokenizer.json that a runtime reads better.

Each step rewrites the file so that Hugging Face `tokenizers` gives the same ids for any
text (and, for the decoder step, the same text as a continuation); the gate still proves
every candidate on its probe set in the runtime itself. A runtime's candidates are its
steps applied cumulatively (step 1; steps 1 + 2; ...), skipping steps that change
nothing, so the first candidate that passes is the smallest change that works.

One step moves work to the caller: `drop_nfc` removes an NFC normalizer (both runtimes'
NFC differ from HF's) and records `input_normalization: "NFC"`: the app applies Unicode
NFC to the text itself before it calls the runtime's tokenizer (Java
`java.text.Normalizer`, Swift `precomposedStringWithCanonicalMapping`, Python
`unicodedata.normalize`). HF applies NFC before its pre-tokenizer, so NFC by the caller
then no normalizer gives the same ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .tokenizer_files import continuation_json

# a pre-tokenizer that keeps the whole text (each part between special tokens) as one piece:
# what "no pre-tokenizer" means in HF, spelled so that ORT-GenAI uses it instead of its own
# whitespace split
WHOLE_TEXT = {"type": "Split", "pattern": {"Regex": "[\\s\\S]+"}, "behavior": "Isolated",
              "invert": False}


@dataclass(frozen=True)
class Candidate:
    how: str                               # the steps applied, in words
    data: str                              # the tokenizer.json text
    input_normalization: str | None = None  # what the caller applies to text first


def _dump(j: dict) -> str:
    return json.dumps(j, ensure_ascii=False)


def no_strip(j: dict) -> tuple[dict, str] | None:
    cont = json.loads(continuation_json(_dump(j)))
    if cont.get("decoder") == j.get("decoder"):
        return None
    return cont, "decoder without its leading-space Strip (the text is streamed as a continuation)"


def metaspace_as_normalizer(j: dict) -> tuple[dict, str] | None:
    pre = j.get("pre_tokenizer") or {}
    if pre.get("type") != "Metaspace" or pre.get("split", True) or j.get("normalizer"):
        return None
    rep = pre.get("replacement", "\u2581")
    steps = [{"type": "Replace", "pattern": {"String": " "}, "content": rep}]
    if pre.get("prepend_scheme", "always") != "never":
        # Metaspace prepends the replacement unless the text already starts with it
        steps = ([{"type": "Prepend", "prepend": rep}] + steps
                 + [{"type": "Replace", "pattern": {"Regex": f"^{rep}{rep}"}, "content": rep}])
    j = dict(j, normalizer={"type": "Sequence", "normalizers": steps}, pre_tokenizer=None)
    return j, "Metaspace pre-tokenizer rewritten as Prepend + Replace normalizer steps"


def drop_nfc(j: dict) -> tuple[dict, str] | None:
    norm = j.get("normalizer") or {}
    if norm.get("type") == "NFC":
        rest = None
    elif norm.get("type") == "Sequence" and (norm.get("normalizers") or [{}])[0].get("type") == "NFC":
        inner = norm["normalizers"][1:]
        rest = None if not inner else {"type": "Sequence", "normalizers": inner}
    else:
        return None
    return dict(j, normalizer=rest), "NFC normalizer removed; the caller applies NFC to the text"


def whole_text_piece(j: dict) -> tuple[dict, str] | None:
    """SentencePiece-style BPE (byte fallback, no pre-tokenizer, or a literal Split the
    normalizer has already emptied): state 'one piece' explicitly."""
    model = j.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        return None
    pre = j.get("pre_tokenizer")
    if pre is not None and not _emptied_split(pre, j.get("normalizer")):
        return None
    return (dict(j, pre_tokenizer=WHOLE_TEXT),
            "whole text as one pre-token (an explicit Split that matches everything)")


def _emptied_split(pre: dict, norm: dict | None) -> bool:
    """A Split on a literal string that the normalizer replaces everywhere (Gemma's
    Split(' ') after Replace(' ' -> '▁')): it never matches, so it splits nothing."""
    lit = (pre.get("pattern") or {}).get("String") if pre.get("type") == "Split" else None
    steps = [] if not norm else (norm.get("normalizers") if norm.get("type") == "Sequence"
                                 else [norm])
    return lit is not None and any(
        s.get("type") == "Replace" and (s.get("pattern") or {}).get("String") == lit
        and lit not in s.get("content", lit) for s in steps or [])


# per runtime, in the order they are tried (cumulatively)
STEPS = {
    "executorch": (no_strip, metaspace_as_normalizer, drop_nfc),
    "onnx": (drop_nfc, whole_text_piece),
}


def candidates(runtime: str, tokenizer_json: str) -> list[Candidate]:
    """The rewritten files to try after the source's own, for `runtime`."""
    j, hows, out, seen = json.loads(tokenizer_json), [], [], {_dump(json.loads(tokenizer_json))}
    rule = None
    for step in STEPS[runtime]:
        done = step(j)
        if done is None:
            continue
        j, how = done
        hows.append(how)
        rule = "NFC" if step is drop_nfc else rule
        data = _dump(j)
        if data not in seen:
            seen.add(data)
            out.append(Candidate("; ".join(hows), data, rule))
    return out
