"""Examples: built-in generated tasks and JSONL files of prompt/response records.

Generated tasks draw five-letter lowercase words from a seeded generator (a fixed
length keeps the demo model tiny and quick to train: every answer letter sits at a
fixed distance from its source). The held-out
split is fixed by a hash of the prompt (one prompt in ten), so train and eval never
share an example, whatever the seed or the number of examples drawn.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..errors import FloraError, unknown_name

LETTERS = string.ascii_lowercase


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str
    where: str = field(default="", compare=False)    # FILE:LINE of a JSONL record


def _shift(word: str) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + 1) % 26] for c in word)


def _mirror(word: str) -> str:
    return "".join(LETTERS[25 - LETTERS.index(c)] for c in word)


# name -> (answer function, description)
TASKS: dict[str, tuple[Callable[[str], str], str]] = {
    "copy": (lambda w: w, "copy: hello -> hello"),
    "upper": (str.upper, "upper: hello -> HELLO"),
    "reverse": (lambda w: w[::-1], "reverse: hello -> olleh"),
    "shift": (_shift, "shift: hello -> ifmmp (each letter to the next, z -> a)"),
    "rotate": (lambda w: w[1:] + w[:1], "rotate: hello -> elloh (the first letter to the end)"),
    "mirror": (_mirror, "mirror: hello -> svool (each letter mirrored in the alphabet, a <-> z)"),
}
WORD_LEN = 5


def is_eval(prompt: str) -> bool:
    """The fixed held-out split: one prompt in ten, by hash."""
    return hashlib.sha256(prompt.encode()).digest()[0] % 10 == 0


def task_example(task: str, rng: random.Random) -> Example:
    answer, _ = TASKS[task]
    word = "".join(rng.choice(LETTERS) for _ in range(WORD_LEN))
    # a word its own answer (a palindrome reversed, "aaaaa" rotated) teaches nothing
    while task in ("reverse", "rotate") and answer(word) == word:
        word = "".join(rng.choice(LETTERS) for _ in range(WORD_LEN))
    return Example(f"{task}: {word}", answer(word))


def generated(tasks: list[str], split: str, seed: int | str) -> Iterator[Example]:
    """An endless stream of examples of `split` ("train" or "eval"), tasks mixed uniformly."""
    for t in tasks:
        if t not in TASKS:
            raise unknown_name("task", t, TASKS)
    rng = random.Random(f"{seed}-{split}-{'+'.join(tasks)}")
    want_eval = split == "eval"
    while True:
        ex = task_example(tasks[rng.randrange(len(tasks))], rng)
        if is_eval(ex.prompt) == want_eval:
            yield ex


def eval_set(tasks: list[str], n: int, seed: int = 1234) -> list[Example]:
    """`n` distinct held-out examples (the same list for the same arguments)."""
    seen, out = set(), []
    for ex in generated(tasks, "eval", seed):
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            out.append(ex)
        if len(out) == n:
            return out
    raise AssertionError("unreachable")


def read_jsonl(path: Path) -> list[Example]:
    """prompt/response records, one JSON object per line (blank lines skipped), every one
    checked: UTF-8, JSON, exactly the string fields "prompt" and "response", a non-empty
    response. The first bad record is named by file and line number."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise FloraError(f"data file {path} {what}", "pass a JSONL file (data.jsonl in the "
                         "recipe, or --jsonl)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FloraError(f"data file {path} cannot be read ({e.strerror})",
                         "check its permissions") from None
    out = []
    # split on "\n" only: str.splitlines would also split inside a JSON string at U+2028
    for i, raw in enumerate(data.split(b"\n"), 1):
        line = _decode_line(path, i, raw.removeprefix(b"\xef\xbb\xbf") if i == 1 else raw)
        if not line.strip():
            continue
        out.append(_record(path, i, line))
    if not out:
        raise FloraError(f"data file {path} holds no records", "add prompt/response lines")
    return out


RECORD_FIX = 'write one {"prompt": "...", "response": "..."} object per line'


def _decode_line(path: Path, i: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FloraError(f"{path}:{i} is not valid UTF-8 (byte {e.start + 1} of the line)",
                         "save the file as UTF-8") from None


def _record(path: Path, i: int, line: str) -> Example:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise FloraError(f"{path}:{i} is not valid JSON ({e.msg})", RECORD_FIX) from None
    if not (isinstance(rec, dict) and isinstance(rec.get("prompt"), str)
            and isinstance(rec.get("response"), str)):
        raise FloraError(f"{path}:{i} needs string fields \"prompt\" and \"response\"",
                         RECORD_FIX)
    extra = sorted(set(rec) - {"prompt", "response"})
    if extra:
        raise FloraError(f"{path}:{i} has fields that are not read: {', '.join(extra)}",
                         'keep only "prompt" and "response" in each record')
    if not rec["response"]:
        raise FloraError(f"{path}:{i} has an empty response (it would teach only the stop "
                         "token)", "give every record a response, or drop the record")
    return Example(rec["prompt"], rec["response"], f"{path}:{i}")


def split_jsonl(records: list[Example], split: str) -> list[Example]:
    picked = [r for r in records if is_eval(r.prompt) == (split == "eval")]
    if not picked:
        raise FloraError(f"the {split} split of the JSONL data is empty (one prompt in ten, "
                         "by hash, is held out)", "add records or set data.eval_jsonl")
    return picked
