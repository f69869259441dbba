"""Exact-match accuracy and loss on held-out examples: eager PyTorch or an export's runtime.

An answer is correct when greedy decoding reproduces the response and then the stop
token. Greedy decoding follows the reference exactly as long as every step's argmax
is the next reference token, so one teacher-forced pass gives both the exact-match
verdict and the loss (mean negative log-likelihood per response token). Exports run
that pass the way the phone does: a prompt prefill, then one decode step per token
through the runtime's KV cache.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from .errors import FloraError
from .train.data import IGNORE, Encoder
from .train.tasks import Example
from .verify import Step, eager_step, run_steps

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


# ------------------------------------------------------------- exports

def export_step(export_dir: Path) -> tuple[Step, Encoder, dict]:
    """A runtime `Step` for an export directory (.pte via ExecuTorch, else ONNX Runtime).
    The manifest, the tokenizer and the model file are checked (fields, sizes and sha256
    against the manifest) before the runtime loads anything."""
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    rt = manifest["runtime"]
    names = [n for n in ("model.pte", "model.onnx") if n in manifest["files"]]
    if not names:
        raise FloraError(f"{export_dir / 'manifest.json'} lists neither model.pte nor "
                         "model.onnx", "pass an android, ios or onnx export directory")
    data = [n for n in manifest["files"] if n.startswith(names[0] + ".")]   # model.onnx.data
    check_files(export_dir, manifest, ["tokenizer.json", names[0], *data])
    encoder = _encoder(export_dir / "tokenizer.json", rt)
    model_file = export_dir / names[0]
    try:
        if model_file.suffix == ".pte":
            from .export.executorch import runtime_step
            return runtime_step(model_file), encoder, manifest
        from .export.onnx import runtime_step
        cfg = manifest["model"]["config"]
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        step = runtime_step(model_file, cfg["num_hidden_layers"], cfg["num_key_value_heads"],
                            head_dim, rt["max_seq_len"])
        return step, encoder, manifest
    except (KeyError, TypeError, ZeroDivisionError) as e:
        raise _bad_manifest(export_dir, f"model.config lacks a usable {e}") from None
    except RuntimeError as e:             # the runtime refused the file
        raise FloraError(f"{model_file} cannot be loaded by its runtime "
                         f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})",
                         "export it again with flora-export") from None


def _bad_manifest(export_dir: Path, why: str) -> FloraError:
    return FloraError(f"{export_dir / 'manifest.json'} is not a flora-export manifest ({why})",
                      "pass a directory written by flora-export, or export it again")


def read_manifest(export_dir: Path) -> dict:
    """An export's manifest.json with the fields evaluation reads, each of the right type."""
    path = Path(export_dir) / "manifest.json"
    if not path.is_file():
        raise FloraError(f"{export_dir} has no manifest.json", "pass a directory written by "
                         "flora-export")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad_manifest(export_dir, f"not readable JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise _bad_manifest(export_dir, "not a JSON object")
    rt = manifest.get("runtime")
    want = {"runtime": isinstance(rt, dict),
            "runtime.max_seq_len": isinstance(rt, dict) and _is_int(rt.get("max_seq_len")),
            "runtime.bos_id": isinstance(rt, dict) and _is_int(rt.get("bos_id")),
            "runtime.eos_ids": isinstance(rt, dict) and isinstance(rt.get("eos_ids"), list)
            and bool(rt["eos_ids"]) and all(map(_is_int, rt["eos_ids"])),
            "files": isinstance(manifest.get("files"), dict),
            "target": isinstance(manifest.get("target"), str),
            "quantization.name": isinstance(manifest.get("quantization"), dict)
            and isinstance(manifest["quantization"].get("name"), str)}
    missing = [k for k, ok in want.items() if not ok]
    if missing:
        raise _bad_manifest(export_dir, f"{missing[0]} is missing or of the wrong type")
    chat = rt.get("chat")
    if chat is not None and not (isinstance(chat, dict) and isinstance(chat.get("template"), str)
                                 and "{prompt}" in chat["template"]
                                 and isinstance(chat.get("stop"), list) and chat["stop"]):
        raise _bad_manifest(export_dir, "runtime.chat needs a template with {prompt} and stop")
    return manifest


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_files(export_dir: Path, manifest: dict, names: list[str]) -> None:
    """Each file present with the size and sha256 the manifest records (truncated, replaced
    or missing files are named)."""
    from .model import file_sha256
    for name in names:
        path, rec = Path(export_dir) / name, manifest["files"].get(name)
        if not path.is_file():
            raise FloraError(f"{path} is missing", "pass a complete flora-export output "
                             "directory, or export it again")
        if rec is None and name == "tokenizer.json":
            continue                      # older manifests list only the model files
        if not isinstance(rec, dict):
            raise _bad_manifest(export_dir, f"files.{name} is not a record")
        size = path.stat().st_size
        if size != rec.get("bytes") or file_sha256(path) != rec.get("sha256"):
            raise FloraError(f"{path} is not the file the export wrote ({size} bytes, the "
                             f"manifest records {rec.get('bytes')} and its sha256; truncated "
                             "or modified)", "export it again with flora-export")


def _encoder(tokenizer: Path, rt: dict) -> Encoder:
    try:
        return Encoder(tokenizer.read_text(encoding="utf-8"), rt["bos_id"], rt["eos_ids"],
                       rt.get("chat"))
    except Exception as e:   # tokenizers raises its own exception types for a bad file
        raise FloraError(f"{tokenizer} is not a readable tokenizer ({str(e)[:200]})",
                         "export it again with flora-export") from None


def check_fits(encoder: Encoder, examples: list[Example], max_seq: int) -> None:
    longest = max(len(e.prompt) + len(e.target) for e in map(encoder.encode, examples))
    if longest > max_seq:
        raise FloraError(f"an example needs {longest} positions but the export holds "
                         f"{max_seq}", f"export with --max-seq {longest} or more")


__all__ = ["EvalResult", "score_eager", "score_steps", "generate", "export_step",
           "read_manifest"]
