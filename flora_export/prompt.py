"""Special tokens, the chat format recorded for apps, and the verification prompt."""

from __future__ import annotations

import json
import logging

from tokenizers import Tokenizer

from .errors import FloraError
from .chat_template import render_format, template_source, token_strings

log = logging.getLogger(__name__)

VERIFY_TEXT = "The quick brown fox jumps over the lazy dog. 12 + 30 = 42."
# Teacher-forced after the greedy continuation when a gate needs more decisive positions:
# prose, a list, code and numbers, so the extension covers varied tokens and positions.
EXTENSION_TEXTS = (
    " Once upon a time, in a small village by the sea, there lived an old fisherman who"
    " told the same story every evening.",
    "\nShopping list:\n- 3 apples\n- 2 loaves of bread\n- 1 litre of milk\n",
    "\ndef add(a, b):\n    return a + b\n\nprint(add(2, 40))\n",
    " The meeting is on Tuesday, 14 March 2023, at 10:30 in room 4B; please bring your notes.",
    " Water boils at 100 degrees Celsius at sea level, and freezes at 0 degrees.",
)
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>")
_EOS_NAMES = ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>", "</s>", "<eos>")
# Llama-3's template, bos included: a runner that tokenizes it (special tokens parsed)
# gets exactly the ids the model was trained on, whether or not it adds a bos itself.
_LLAMA3_CHAT = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")


def _added_tokens(model) -> dict[str, int]:
    added = json.loads(model.tokenizer_json).get("added_tokens", [])
    return {t["content"]: t["id"] for t in added}


def special_ids(model) -> tuple[int, list[int]]:
    """(bos id, eos ids) from config.json, else from the tokenizer's special tokens."""
    cfg = model.config
    added = _added_tokens(model)
    bos = cfg.bos_token_id
    if bos is None:
        bos = next((added[n] for n in _BOS_NAMES if n in added), None)
    eos = list(cfg.eos_token_ids) or [added[n] for n in _EOS_NAMES if n in added]
    if bos is None or not eos:
        raise FloraError("cannot tell the model's bos/eos token ids",
                         "set bos_token_id and eos_token_id in config.json")
    for i in [bos, *eos]:
        if not 0 <= i < cfg.vocab_size:
            raise FloraError(f"special token id {i} is outside the vocabulary "
                             f"(size {cfg.vocab_size})", "fix bos/eos_token_id in config.json")
    return bos, eos


def chat_format(model) -> dict | None:
    """The prompt template apps should use: the checkpoint's own chat template rendered
    into one turn (chat_template.py), else Llama-3's when the tokenizer has its chat
    tokens, else None (logged). Computed once per model."""
    cached = getattr(model, "_chat_format", False)
    if cached is not False:
        return cached
    fmt = _derive(model)
    try:
        model._chat_format = fmt
    except AttributeError:
        pass
    return fmt


def _derive(model) -> dict | None:
    added = _added_tokens(model)
    origin = getattr(model, "source", None)
    source = template_source(getattr(origin, "tokenizer_files", None) or {})
    if source is not None:
        text, config = source
        bos, eos = special_ids(model)
        names = {i: t for t, i in added.items()}
        tokens = {**{k: v for k, v in (("bos_token", names.get(bos)),
                                       ("eos_token", names.get(eos[0]))) if v},
                  **token_strings(config)}
        specials = [t["content"] for t in json.loads(model.tokenizer_json).get("added_tokens", [])
                    if t.get("special")]
        fmt = render_format(text, tokens, names.get(bos),
                            [names[i] for i in eos if i in names], specials)
        if fmt is not None:
            return fmt
    if {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
        } <= set(added):
        # `bos` starts only the first turn: apps that send a whole conversation repeat the
        # template without it after each reply + stop[0] (android_demo's ChatFormat does).
        return {"template": _LLAMA3_CHAT, "stop": ["<|eot_id|>", "<|end_of_text|>"],
                "bos": "<|begin_of_text|>"}
    if source is None:
        log.info("the checkpoint has no chat template and no Llama-3 chat tokens; the export "
                 "records no chat format (apps send the prompt as typed)")
    return None


def extension_tokens(model, n: int) -> list[int]:
    """`n` teacher-forcing tokens: EXTENSION_TEXTS encoded by the model's tokenizer, cycled."""
    tok = Tokenizer.from_str(model.tokenizer_json)
    ids = [i for text in EXTENSION_TEXTS for i in tok.encode(text, add_special_tokens=False).ids
           if i < model.config.vocab_size]
    if not ids:
        raise FloraError("the tokenizer encodes the verification texts to no in-vocabulary ids",
                         "check that tokenizer.json belongs to this model")
    return [ids[j % len(ids)] for j in range(n)]


def verify_prompt(model, bos: int) -> list[int]:
    """bos + a fixed English sentence, as the model's own tokenizer encodes it."""
    tok = Tokenizer.from_str(model.tokenizer_json)
    ids = tok.encode(VERIFY_TEXT, add_special_tokens=False).ids[:32]
    return [bos] + [i for i in ids if i < model.config.vocab_size]
