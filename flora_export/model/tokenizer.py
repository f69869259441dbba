"""Tokenizer files (`tokenizer.json`, HF `tokenizers` format).

Presets come without a real vocabulary (nothing is downloaded), so they get a
byte-level BPE tokenizer: 256 byte tokens, ASCII filler tokens up to the model's
vocabulary, and Llama-3 style special tokens at the ids the architecture uses.
"""

from __future__ import annotations

import itertools
import json
import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from ..errors import FloraError

LLAMA3_SPECIALS = {
    "<|begin_of_text|>": 0, "<|end_of_text|>": 1, "<|start_header_id|>": 6,
    "<|end_header_id|>": 7, "<|eom_id|>": 8, "<|eot_id|>": 9,
}  # offsets from the first special id


def byte_level_tokenizer(vocab_size: int, special_base: int) -> Tokenizer:
    """A tokenizer whose ids cover `[0, vocab_size)`, specials from `special_base`."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    fillers = _ascii_words()
    while len(vocab) < special_base:
        word = next(fillers)
        if word not in vocab:
            vocab[word] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = [(name, special_base + off) for name, off in LLAMA3_SPECIALS.items()]
    reserved = {i for _, i in specials}
    for i in range(special_base, vocab_size):
        if i not in reserved:
            specials.append((f"<|reserved_special_token_{i - special_base}|>", i))
    specials.sort(key=lambda s: s[1])
    tok.add_special_tokens([name for name, _ in specials])
    if tok.get_vocab_size() != vocab_size:
        raise AssertionError(f"built {tok.get_vocab_size()} tokens, wanted {vocab_size}")
    return tok


def _ascii_words():
    """Filler tokens that no pre-tokenized piece can equal (each mixes a letter and a
    digit, which the ByteLevel regex always splits): HF's BPE without merges never
    produces them, and neither does ExecuTorch's C++ tokenizer, which looks a whole piece
    up in the vocabulary before merging (plain letter fillers like "The" made the two
    encode the same text differently)."""
    chars = string.ascii_letters + string.digits
    for n in itertools.count(2):
        for combo in itertools.product(chars, repeat=n):
            word = "".join(combo)
            if any(c.isdigit() for c in word) and any(c.isalpha() for c in word):
                yield word


def check_tokenizer(path: Path, vocab_size: int) -> Tokenizer:
    """Open `tokenizer.json` and check that its ids fit the model's vocabulary."""
    path = Path(path)
    if not path.is_file():
        raise FloraError(f"no tokenizer.json at {path}",
                         "put the model's tokenizer.json (HF tokenizers format) in the model "
                         "directory")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception subclasses
        raise FloraError(f"{path} is not a valid HF tokenizer.json ({str(e)[:120]})",
                         "restore the tokenizer.json saved with the model") from None
    if tok.get_vocab_size() > vocab_size:
        raise FloraError(f"tokenizer has {tok.get_vocab_size()} tokens but the model only "
                         f"{vocab_size}", "use the tokenizer that belongs to this model")
    return tok


def special_id(path: Path, names: tuple[str, ...]) -> int | None:
    """The id of the first of `names` that the tokenizer knows, or None."""
    added = json.loads(Path(path).read_text()).get("added_tokens", [])
    ids = {t["content"]: t["id"] for t in added}
    return next((ids[n] for n in names if n in ids), None)
