"""Tiny tokenizers in the layouts real checkpoints ship, trained here in seconds.

Each builder writes `tokenizer.json` (and `tokenizer.model` for the SentencePiece
layouts) into a directory; vocabularies stay under 512 so the `tiny` preset's shapes fit.
Nothing is downloaded: the training text is generated from a fixed word list.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                  r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_WORDS = ("the quick brown fox jumps over lazy dog model export phone token runtime "
          "café naïve résumé über straße déjà vu 東京 日本語 中文 你好 世界 😀 🚀 👍 "
          "hello world data 12 345 2026 3.14 tab\tline\nnew  two   spaces").split(" ")
VOCAB = 400


def corpus(n: int = 1500, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def _byte_level(pre, normalizer=None, specials=LLAMA3_SPECIALS) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def llama3() -> Tokenizer:
    return _byte_level(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))


def smollm2() -> Tokenizer:
    return _byte_level(pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])


def qwen2() -> Tokenizer:
    return _byte_level(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        normalizer=normalizers.NFC(), specials=QWEN_SPECIALS)


def _sentencepiece(path: Path, dummy_prefix: bool, specials: list[str]) -> Path:
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=buf, vocab_size=VOCAB, model_type="bpe",
        byte_fallback=True, add_dummy_prefix=dummy_prefix, character_coverage=1.0,
        remove_extra_whitespaces=False, normalization_rule_name="identity",
        user_defined_symbols=specials, split_digits=True, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    path.write_bytes(buf.getvalue())
    return path


def _from_sentencepiece(model_file: Path) -> Tokenizer:
    """tokenizer.json's BPE from a SentencePiece model (as transformers converts it)."""
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    kw = SentencePieceExtractor(str(model_file)).extract(models.BPE)
    tok = Tokenizer(models.BPE(vocab=kw["vocab"], merges=kw["merges"], unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.add_tokens([str(t) for t in kw["additional_special_tokens"]])
    return tok


def _sp_decoder(strip: bool):
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    return decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if strip else []))


def llama2(out: Path) -> Tokenizer:
    """Llama-2 / TinyLlama: Prepend + Replace normalizer, BPE byte fallback, + .model."""
    tok = _from_sentencepiece(_sentencepiece(out / "tokenizer.model", True, []))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.decoder = _sp_decoder(strip=True)
    return tok


def mistral(out: Path) -> Tokenizer:
    """Mistral v0.3: Metaspace pre-tokenizer (prepend first, no split), byte fallback."""
    tok = _from_sentencepiece(_sentencepiece(out / "tokenizer.model", True, ["[INST]", "[/INST]"]))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                 split=False)
    tok.decoder = _sp_decoder(strip=True)
    return tok


def gemma(out: Path) -> Tokenizer:
    """Gemma style: no dummy prefix, Replace normalizer, byte fallback, turn markers."""
    tok = _from_sentencepiece(_sentencepiece(out / "tokenizer.model", False,
                                             ["<start_of_turn>", "<end_of_turn>"]))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = _sp_decoder(strip=False)
    return tok


def wordlevel() -> Tokenizer:
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus(), trainers.WordLevelTrainer(
        vocab_size=VOCAB, special_tokens=["[UNK]", "<s>", "</s>"], show_progress=False))
    return tok


def unigram() -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(corpus(), trainers.UnigramTrainer(
        vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>",
        show_progress=False))
    return tok


BUILDERS = {"llama3": llama3, "smollm2": smollm2, "qwen2": qwen2, "llama2": llama2,
            "mistral": mistral, "gemma": gemma, "wordlevel": wordlevel, "unigram": unigram}
_NEEDS_DIR = {"llama2", "mistral", "gemma"}


def build(layout: str, out: Path) -> Path:
    """Write `layout`'s tokenizer.json (+ tokenizer.model) into `out`; returns `out`."""
    out.mkdir(parents=True, exist_ok=True)
    fn = BUILDERS[layout]
    tok = fn(out) if layout in _NEEDS_DIR else fn()
    tok.save(str(out / "tokenizer.json"))
    return out


def special(out: Path, names: tuple[str, ...]) -> int | None:
    added = json.loads((out / "tokenizer.json").read_text()).get("added_tokens", [])
    ids = {t["content"]: t["id"] for t in added}
    return next((ids[n] for n in names if n in ids), None)
