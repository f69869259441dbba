"""Tiny tokenizers in the layouts real checkpoints ship, trained here in seconds.

Each builder writes `tokenizer.json` (and `tokenizer.model` for the SentencePiece
layouts) into a directory; vocabularies stay under 512 so the `tiny` preset's shapes fit.
Nothing is downloaded: the training text is generated from a fixed word list.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

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


def _byte_level(pre, normalizer=None, specials=LLAMA3_SPECIALS, added=()) -> Tokenizer:
    """Byte-level BPE; `specials` special added tokens, `added` plain ones (Qwen3's <think>)."""
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if added:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    return tok


def _split_byte_level(pattern: str):
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def llama3() -> Tokenizer:
    return _byte_level(_split_byte_level(LLAMA3_PATTERN))


CHATML = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def smollm2() -> Tokenizer:
    """SmolLM2: Digits + ByteLevel(use_regex), ChatML specials."""
    return _byte_level(pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]), specials=CHATML)


def smollm3() -> Tokenizer:
    """SmolLM3: Llama-3's split regex + ByteLevel, Llama-3's bos/eos and ChatML turns."""
    return _byte_level(_split_byte_level(LLAMA3_PATTERN),
                       specials=["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>",
                                 "<|im_end|>"])


def qwen2() -> Tokenizer:
    """Qwen2 / Qwen2.5: NFC, Qwen's split regex (single digits), ByteLevel, ChatML."""
    return _byte_level(_split_byte_level(QWEN_PATTERN), normalizer=normalizers.NFC(),
                       specials=QWEN_SPECIALS)


def qwen3() -> Tokenizer:
    """Qwen3: Qwen2's layout plus the plain added tokens of its template (<think>, tools)."""
    return _byte_level(_split_byte_level(QWEN_PATTERN), normalizer=normalizers.NFC(),
                       specials=QWEN_SPECIALS,
                       added=["<tool_call>", "</tool_call>", "<think>", "</think>"])


PHI4_PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
                r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PHI4_SPECIALS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def phi4mini() -> Tokenizer:
    """Phi-4-mini: the o200k (tiktoken-like) split regex + ByteLevel, Phi chat markers."""
    return _byte_level(_split_byte_level(PHI4_PATTERN), specials=PHI4_SPECIALS)


def _sentencepiece(path: Path, dummy_prefix: bool, symbols: list[str], **ids) -> Path:
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=buf, vocab_size=VOCAB, model_type="bpe",
        byte_fallback=True, add_dummy_prefix=dummy_prefix, character_coverage=1.0,
        remove_extra_whitespaces=False, normalization_rule_name="identity",
        user_defined_symbols=symbols, split_digits=True, allow_whitespace_only_pieces=True,
        **({"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1} | ids), minloglevel=2)
    path.write_bytes(buf.getvalue())
    return path


def _from_sentencepiece(model_file: Path, specials: list[dict]) -> Tokenizer:
    """tokenizer.json's BPE from a SentencePiece model, as transformers converts it: the
    control pieces and `specials` as special added tokens (not normalized), the other
    user-defined pieces as plain added tokens. `specials`: AddedToken keyword arguments."""
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    kw = SentencePieceExtractor(str(model_file)).extract(models.BPE)
    unk = "<unk>"
    tok = Tokenizer(models.BPE(vocab=kw["vocab"], merges=kw["merges"], unk_token=unk,
                               byte_fallback=True, fuse_unk=True))
    named = {d["content"]: d for d in specials}
    extra = [str(t) for t in kw["additional_special_tokens"]]
    ordered = sorted({unk, *extra, *named}, key=lambda t: kw["vocab"].get(t, 1 << 30))
    for t in ordered:
        special = t in named or t == unk or t in _CONTROL
        opts = {"special": special, "normalized": False, **named.get(t, {})}
        tok.add_tokens([AddedToken(**{"content": t, **opts})])
    return tok


_CONTROL = {"<s>", "</s>", "<bos>", "<eos>", "<pad>", "<unk>"}


def _sp_decoder(strip: bool):
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    return decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if strip else []))


def _llama2_normalizer():
    return normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])


def llama2(out: Path) -> Tokenizer:
    """Llama-2 / TinyLlama: Prepend + Replace normalizer, BPE byte fallback, + .model."""
    tok = _from_sentencepiece(_sentencepiece(out / "tokenizer.model", True, []), [])
    tok.normalizer = _llama2_normalizer()
    tok.decoder = _sp_decoder(strip=True)
    return tok


PHI35_SPECIALS = ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]


def phi35(out: Path) -> Tokenizer:
    """Phi-3.5-mini: the Llama-2 layout with chat markers; every marker but <|endoftext|>
    strips the whitespace to its right (`rstrip`), as in Phi-3's tokenizer.json."""
    tok = _from_sentencepiece(
        _sentencepiece(out / "tokenizer.model", True, PHI35_SPECIALS),
        [{"content": t, "rstrip": t != "<|endoftext|>"} for t in PHI35_SPECIALS])
    tok.normalizer = _llama2_normalizer()
    tok.decoder = _sp_decoder(strip=True)
    return tok


def mistral(out: Path) -> Tokenizer:
    """Mistral v0.3: Metaspace pre-tokenizer (prepend first, no split), byte fallback,
    [INST] / [/INST] control tokens."""
    marks = ["[INST]", "[/INST]"]
    tok = _from_sentencepiece(_sentencepiece(out / "tokenizer.model", True, marks),
                              [{"content": t} for t in marks])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                 split=False)
    tok.decoder = _sp_decoder(strip=True)
    return tok


def gemma(out: Path) -> Tokenizer:
    """Gemma style: no dummy prefix, Replace normalizer, byte fallback, turn markers."""
    marks = ["<start_of_turn>", "<end_of_turn>"]
    tok = _from_sentencepiece(_sentencepiece(out / "tokenizer.model", False, marks), [])
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = _sp_decoder(strip=False)
    return tok


GEMMA3_SPECIALS = ["<start_of_turn>", "<end_of_turn>"]


def gemma3(out: Path) -> Tokenizer:
    """Gemma 3: <pad> 0, <eos> 1, <bos> 2, <unk> 3; Replace normalizer; the Split(' ',
    merged with previous) pre-tokenizer that transformers writes (a no-op after the
    normalizer); byte fallback; <start_of_turn> / <end_of_turn> special."""
    model = _sentencepiece(out / "tokenizer.model", False, GEMMA3_SPECIALS, pad_id=0,
                           eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
                           bos_piece="<bos>", unk_piece="<unk>")
    tok = _from_sentencepiece(model, [{"content": t} for t in GEMMA3_SPECIALS])
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
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


BUILDERS = {"llama3": llama3, "smollm2": smollm2, "smollm3": smollm3, "qwen2": qwen2,
            "qwen3": qwen3, "phi4mini": phi4mini, "llama2": llama2, "phi35": phi35,
            "mistral": mistral, "gemma": gemma, "gemma3": gemma3, "wordlevel": wordlevel,
            "unigram": unigram}
_NEEDS_DIR = {"llama2", "phi35", "mistral", "gemma", "gemma3"}


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
