"""Examples -> token ids and loss masks, and the deterministic batch stream.

An example is encoded the way the apps will prompt the model: bos, the prompt in
the chat template recorded in the export manifest, then the response and the stop
token. Loss is taken on the response and the stop token only.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from ..errors import FloraError
from ..chat_template import fill
from ..prompt import chat_format, special_ids
from .recipe import Recipe
from .tasks import Example, eval_set, generated, read_jsonl, split_jsonl

IGNORE = -100
GENERATED_CHECK = 2_000_000      # generated examples whose length is checked before step 1


@dataclass(frozen=True)
class Encoded:
    prompt: list[int]      # bos + templated prompt
    target: list[int]      # response + stop token


class Encoder:
    """Tokenizes examples with the model's tokenizer and chat template."""

    def __init__(self, tokenizer_json: str, bos: int, eos: list[int], chat: dict | None):
        self.tok = Tokenizer.from_str(tokenizer_json)
        self.bos = bos
        self.template = chat["template"] if chat else "{prompt}"
        stop = self.tok.token_to_id(chat["stop"][0]) if chat else None
        self.stop = stop if stop is not None else eos[0]
        self.stop_ids = {self.stop, *eos}

    @classmethod
    def for_model(cls, model, chat_template: bool = True) -> "Encoder":
        bos, eos = special_ids(model)
        return cls(model.tokenizer_json, bos, eos,
                   chat_format(model) if chat_template else None)

    def prompt_ids(self, prompt: str) -> list[int]:
        """bos + the templated prompt (a template may start with the bos token itself)."""
        ids = self.tok.encode(fill(self.template, prompt), add_special_tokens=False).ids
        return ids if ids[:1] == [self.bos] else [self.bos] + ids

    def encode(self, ex: Example) -> Encoded:
        resp = self.tok.encode(ex.response, add_special_tokens=False).ids
        return Encoded(self.prompt_ids(ex.prompt), resp + [self.stop])

    def length(self, ex: Example) -> int:
        """len(prompt) + len(target) of the encoded example."""
        enc = self.encode(ex)
        return len(enc.prompt) + len(enc.target)

    def collate(self, examples: list[Example], max_len: int = 1 << 30) -> "Batch":
        return collate([self.encode(e) for e in examples], self.stop, max_len)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i not in self.stop_ids])


@dataclass
class Batch:
    tokens: torch.Tensor   # [B, S] right-padded
    labels: torch.Tensor   # [B, S] next-token targets, IGNORE off the response

    @property
    def n_target(self) -> int:
        return int((self.labels != IGNORE).sum())


def collate(items: list[Encoded], pad_id: int, max_len: int) -> Batch:
    longest = max(len(e.prompt) + len(e.target) for e in items)
    if longest > max_len:
        raise FloraError(f"an example is {longest} tokens, longer than data.max_len={max_len}",
                         f"raise data.max_len to at least {longest} or shorten the data")
    tokens = torch.full((len(items), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(items), longest), IGNORE, dtype=torch.long)
    for row, e in enumerate(items):
        seq = e.prompt + e.target
        tokens[row, :len(seq)] = torch.tensor(seq)
        p = len(e.prompt)
        labels[row, p - 1:p - 1 + len(e.target)] = torch.tensor(e.target)
    return Batch(tokens, labels)


class BatchSource:
    """Batch `step` is a pure function of (recipe seed, step): resumable and identical
    for any number of processes (each takes its slice of the global batch)."""

    def __init__(self, recipe: Recipe, encoder: Encoder):
        self.recipe, self.encoder = recipe, encoder
        d = recipe.data
        self.records = (split_jsonl(read_jsonl(recipe.resolve(d.jsonl)), "train")
                        if d.jsonl else None)

    def check_lengths(self) -> None:
        """Every example the run will see fits data.max_len: each JSONL record, or each
        generated example of every step (tokenizing one costs about 50 us, far less than its
        share of a training step). Beyond GENERATED_CHECK draws (about 100 s) the rest is
        checked batch by batch as it is drawn."""
        t = self.recipe.train
        steps = min(t.steps, max(1, GENERATED_CHECK // t.batch_size))
        examples = (self.records if self.records is not None else
                    (e for step in range(steps) for e in self.examples(step)))
        check_lengths(self.encoder, examples, self.recipe.data.max_len, "a training example")

    def check_processes(self, world: int) -> None:
        """Each process takes an equal slice of the global batch: nothing may be left over."""
        b = self.recipe.train.batch_size
        if b % world:
            raise FloraError(f"train.batch_size={b} does not split evenly over {world} "
                             "processes (the remainder would be dropped)",
                             f"set train.batch_size to a multiple of {world}, e.g. "
                             f"{max(world, b - b % world)}")

    def examples(self, step: int) -> list[Example]:
        t, d = self.recipe.train, self.recipe.data
        if self.records is None:
            stream = generated(d.tasks, "train", f"{t.seed}:{step}")
            return [next(stream) for _ in range(t.batch_size)]
        n = len(self.records)
        span = range(step * t.batch_size, (step + 1) * t.batch_size)
        return [self.records[self._epoch_order(g // n)[g % n]] for g in span]

    @functools.lru_cache(maxsize=2)
    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.records)))
        random.Random(f"{self.recipe.train.seed}-{epoch}").shuffle(order)
        return order

    def batch(self, step: int, rank: int = 0, world: int = 1) -> Batch:
        exs = self.examples(step)
        per = len(exs) // world
        if per == 0:
            raise FloraError(f"train.batch_size {len(exs)} is smaller than the {world} "
                             "processes", f"set train.batch_size to at least {world}")
        mine = exs[rank * per:(rank + 1) * per]
        return self.encoder.collate(mine, self.recipe.data.max_len)


def check_lengths(encoder: Encoder, examples, max_len: int, what: str) -> None:
    """Refuse, naming the first one (its FILE:LINE for JSONL records), examples longer than
    `max_len` tokens (bos + templated prompt + response + stop)."""
    first, longest = None, 0
    for ex in examples:
        n = encoder.length(ex)
        if n > max_len and first is None:
            first = (ex, n)
        longest = max(longest, n)
    if first:
        ex, n = first
        raise FloraError(f"{ex.where or what} is {n} tokens, longer than data.max_len="
                         f"{max_len} (prompt {ex.prompt[:40]!r})",
                         f"raise data.max_len to at least {longest} (the longest example) or "
                         "shorten the data")


def held_out(recipe: Recipe) -> list[Example]:
    """The recipe's held-out examples (data.eval_size of them)."""
    d = recipe.data
    if d.eval_jsonl:
        return read_jsonl(recipe.resolve(d.eval_jsonl))[:d.eval_size]
    if d.jsonl:
        return split_jsonl(read_jsonl(recipe.resolve(d.jsonl)), "eval")[:d.eval_size]
    return eval_set(d.tasks, d.eval_size)
