"""Streaming text out of token pieces without breaking on UTF-8.

A token is often part of a character (byte-level BPE splits 東 over two tokens; a
byte-fallback token `<0xE6>` is one byte), so a piece is bytes, not text. `Utf8Stream`
holds back an incomplete tail until the next piece completes it: nothing is dropped and
nothing raises. ExecuTorch's C++ tokenizer binding returns a piece as `str` and raises
`UnicodeDecodeError` when it is not valid UTF-8; `piece_bytes` takes the raw bytes from
that error instead.
"""

from __future__ import annotations

import codecs


class Utf8Stream:
    """push(bytes | str) -> the text completed so far; flush() -> the rest (U+FFFD for bytes
    that never became a character)."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""

    def push(self, piece: bytes | str) -> str:
        data = piece.encode("utf-8") if isinstance(piece, str) else bytes(piece)
        out = self._decoder.decode(data)
        self.text += out
        return out

    def flush(self) -> str:
        out = self._decoder.decode(b"", final=True)
        self.text += out
        return out


def piece_bytes(tokenizer, token: int) -> bytes:
    """One token's bytes from a `pytorch_tokenizers` C++ tokenizer (what TextLLMRunner emits
    for it), also when they are not valid UTF-8 on their own."""
    try:
        return tokenizer.decode(token).encode("utf-8")
    except UnicodeDecodeError as e:   # the binding's str conversion; the bytes are in e.object
        return bytes(e.object)


def stream_text(pieces) -> str:
    """Join pieces (bytes or str) the way a streaming app must."""
    s = Utf8Stream()
    for p in pieces:
        s.push(p)
    s.flush()
    return s.text
