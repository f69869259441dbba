"""Exact-match accuracy and loss on held-out examples: eager PyTorch or an export's runtime.

An answer is correct when greedy decoding reproduces the response and then the stop
token. Greedy decoding follows the reference exactly as long as every step's argmax
is the next reference token, so one teacher-forced pass gives both the exact-match
verdict and the loss (mean negative log-likelihood per response token). Exports run
that pass the way the phone does: a prompt prefill, then one decode step per token
through the runtime's KV cache.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from ..errors import FloraError
from ..verify import Step, eager_step, run_steps
from .data import IGNORE, Encoder
from .tasks import Example

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    n: int
    correct: int
    loss: float
    samples: list[dict] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def to_dict(self) -> dict:
        return {"n": self.n, "correct": self.correct, "accuracy": round(self.accuracy, 4),
                "loss": round(self.loss, 4), "samples": self.samples}


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def score_eager(model, encoder: Encoder, examples: list[Example], batch_size: int = 64,
                show: int = 0) -> EvalResult:
    """Teacher-forced, batched forward passes of an eager model (no KV cache)."""
    was_training = model.training
    model.eval()
    correct, nll, tokens = 0, 0.0, 0
    device = next(model.parameters()).device
    for chunk in _chunks(examples, batch_size):
        batch = encoder.collate(chunk)
        logits = model(batch.tokens.to(device)).float()
        labels = batch.labels.to(device)
        mask = labels != IGNORE
        nll += F.cross_entropy(logits[mask], labels[mask], reduction="sum").item()
        tokens += int(mask.sum())
        hit = (logits.argmax(-1) == labels) | ~mask
        correct += int(hit.all(dim=1).sum())
    model.train(was_training)
    result = EvalResult(len(examples), correct, nll / max(tokens, 1))
    if show:
        model.setup_cache(max(len(e.prompt) + len(e.target) for e in map(encoder.encode,
                                                                          examples[:show])) + 8)
        result.samples = samples(eager_step(model), encoder, examples[:show])
    return result


def score_steps(step: Step, encoder: Encoder, examples: list[Example], show: int = 0,
                progress: Callable[[int], None] | None = None) -> EvalResult:
    """Teacher-forced prefill + decode steps through a runtime `Step`."""
    correct, nll, tokens = 0, 0.0, 0
    for ex in examples:
        enc = encoder.encode(ex)
        logits = _teacher_forced(step, enc.prompt, enc.target)
        target = torch.tensor(enc.target)
        nll += F.cross_entropy(logits, target, reduction="sum").item()
        tokens += len(enc.target)
        correct += bool((logits.argmax(-1) == target).all())
        if progress:
            progress(1)
    result = EvalResult(len(examples), correct, nll / max(tokens, 1))
    result.samples = samples(step, encoder, examples[:show])
    return result


def _teacher_forced(step: Step, prompt: list[int], target: list[int]) -> torch.Tensor:
    """Logits predicting each target token: a prefill, then one decode step per token."""
    tokens = torch.tensor([prompt + target])
    return torch.stack(run_steps(step, tokens, len(prompt), len(target) - 1)).float()


def generate(step: Step, prompt: list[int], max_new: int, stop_ids: set[int]) -> list[int]:
    """Greedy decoding through `step` until a stop token or `max_new` tokens."""
    out: list[int] = []
    logits = step(torch.tensor([prompt]), torch.tensor([0]))
    while len(out) < max_new:
        nxt = int(logits.argmax())
        out.append(nxt)
        if nxt in stop_ids:
            break
        logits = step(torch.tensor([[nxt]]), torch.tensor([len(prompt) + len(out) - 1]))
    return out


def samples(step: Step, encoder: Encoder, examples: list[Example]) -> list[dict]:
    """What the model actually answers to the first few examples."""
    rows = []
    for ex in examples:
        enc = encoder.encode(ex)
        got = encoder.decode(generate(step, enc.prompt, len(enc.target) + 4, encoder.stop_ids))
        rows.append({"prompt": ex.prompt, "expected": ex.response, "got": got})
    return rows


def check_fits(encoder: Encoder, examples: list[Example], max_seq: int) -> None:
    longest = max(len(e.prompt) + len(e.target) for e in map(encoder.encode, examples))
    if longest > max_seq:
        raise FloraError(f"an example needs {longest} positions but the export holds "
                         f"{max_seq}", f"export with --max-seq {longest} or more")


__all__ = ["EvalResult", "score_eager", "score_steps", "generate", "check_fits"]
