"""The probe set and Hugging Face's reference answers (rewrites: tokenizer_rewrites.py).

The reference is HF `tokenizers` on the source's tokenizer.json. Decoding is compared
as a continuation, the way an app shows an answer after its prompt: a decoder's
leading-space `Strip` (Llama-2, Mistral: it removes the sentencepiece dummy prefix at
the start of a whole text) is left out of the reference, because the pieces a runtime
streams after a prompt keep that space.
"""

from __future__ import annotations

import json

from tokenizers import Tokenizer

from ..chat_template import fill

PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",      # ASCII
    "hi\nan ox is by me\nok",                            # short words starting a piece
    "two  spaces,   three,    four",                      # runs of spaces
    "  leading spaces", "trailing space ",
    "line one\nline two\n\nafter a blank\ttab\t\ttwo tabs",  # newlines and tabs
    "12 345 6789 3.14159 2026-12-01",                     # digits
    "café naïve résumé über straße",                      # accented Latin, NFC
    "cafe\u0301 nai\u0308ve re\u0301sume\u0301",          # the same, NFD
    "東京は日本の首都です。中文你好世界",                   # CJK
    "emoji 😀🚀 👍🏽 family 👨‍👩‍👧",                          # emoji, modifiers, ZWJ
)


def probe_texts(tokenizer_json: str, chat: dict | None) -> list[str]:
    """The fixed probes, each special token alone and between words, and the rendered
    chat template when the artifact declares one."""
    specials = [t["content"] for t in json.loads(tokenizer_json).get("added_tokens", [])
                if t.get("special")]
    texts = list(PROBE_TEXTS)
    for s in specials[:64]:
        texts += [s, f"word {s} word"]
    if chat:
        texts.append(fill(chat["template"], "Hi there, café 東京 😀 12345?"))
    return texts


def continuation_json(tokenizer_json: str) -> str:
    """tokenizer.json without leading-space Strip decoders (see the module docstring)."""
    j = json.loads(tokenizer_json)
    dec = j.get("decoder")
    if dec and dec.get("type") == "Strip" and dec.get("start", 0):
        j["decoder"] = None
    elif dec and dec.get("type") == "Sequence":
        dec["decoders"] = [d for d in dec["decoders"]
                           if not (d.get("type") == "Strip" and d.get("start", 0))]
    return json.dumps(j, ensure_ascii=False)


class Reference:
    """What HF `tokenizers` says: ids for a text, text for ids."""

    def __init__(self, tokenizer_json: str):
        self.tok = Tokenizer.from_str(tokenizer_json)
        self.cont = Tokenizer.from_str(continuation_json(tokenizer_json))

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def text(self, ids: list[int], specials: bool) -> str:
        return self.cont.decode(ids, skip_special_tokens=not specials)


def added_token_id(tokenizer_json: str, content: str) -> int | None:
    for t in json.loads(tokenizer_json).get("added_tokens", []):
        if t["content"] == content:
            return t["id"]
    return None


def token_text(tokenizer_json: str, token_id: int) -> str | None:
    """The added token's text for `token_id` (e.g. '<s>' for bos), if it is one."""
    for t in json.loads(tokenizer_json).get("added_tokens", []):
        if t["id"] == token_id:
            return t["content"]
    return None


def special_ids(tokenizer_json: str) -> set[int]:
    return {t["id"] for t in json.loads(tokenizer_json).get("added_tokens", []) if t.get("special")}
