"""The training loop: one recipe -> an adapter (or a full checkpoint) with its metrics.

The loop runs through Hugging Face Accelerate, so the same code runs as one CPU
process here and under `accelerate launch` on several GPUs or nodes (DDP or FSDP,
chosen by `accelerate config`, not by the recipe). Batches are a pure function of
(seed, step) and every process takes its slice of the same global batch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..adapters import FFBAConfig, LoraConfig, attach_ffba, attach_lora, save_adapter
from ..embedded import DEFAULT_BASE, EMBEDDED_BASE
from .evaluation import score_eager
from ..model import load_model, random_model, save_hf_checkpoint
from ..model.checkpoint import write_atomic
from ..model.source import FROM_SCRATCH, ModelSource
from ..model.storage import widen_all
from ..outputs import check_run_dir, json_with_keys, nonempty_path, write_failure
from ..version import __version__
from .checkpoint import (CHECKPOINT, drop_checkpoint, has_checkpoint, load_checkpoint,
                         save_checkpoint)
from .data import IGNORE, BatchSource, Encoder, check_lengths, held_out
from .quant_aware import make_quant_aware
from .recipe import Recipe, dump_recipe

log = logging.getLogger(__name__)


def base_source(recipe: Recipe) -> str:
    if recipe.model.base == EMBEDDED_BASE:
        return str(DEFAULT_BASE)
    return recipe.model.base


def build_model(recipe: Recipe):
    """The base (pretrained or re-initialized) with the recipe's fresh adapter attached."""
    model = load_model(base_source(recipe), seed=recipe.model.seed)
    if recipe.model.init == "random":
        fresh = random_model(model.config, seed=recipe.model.seed)
        fresh.tokenizer_json = model.tokenizer_json
        fresh.source = ModelSource(Path(recipe.out).name, FROM_SCRATCH)
        model = fresh
    torch.manual_seed(recipe.train.seed)       # adapter init draws from the global generator
    cfg = recipe.adapter_config()
    if isinstance(cfg, FFBAConfig):
        attach_ffba(model, cfg)
    elif isinstance(cfg, LoraConfig):
        attach_lora(model, cfg)
    else:                                    # full fine-tuning updates float32 weights
        widen_all(model).requires_grad_(True)
    return model.train()


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def lr_at(recipe: Recipe, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    t = recipe.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def masked_loss(model, batch, device) -> torch.Tensor:
    logits = model(batch.tokens.to(device))
    return F.cross_entropy(logits.flatten(0, 1).float(), batch.labels.to(device).flatten(),
                           ignore_index=IGNORE)


def train(recipe: Recipe, restart: bool = False, keep_checkpoint: bool = False,
          progress: bool = True) -> dict:
    """Run `recipe`; write the adapter/checkpoint, recipe.yaml and metrics.json to its out."""
    from accelerate import Accelerator

    t, out = recipe.train, check_out(recipe)
    if t.threads:
        torch.set_num_threads(t.threads)
    acc = Accelerator()
    model = build_model(recipe)
    rounded = make_quant_aware(model) if t.quant_aware else None
    if rounded:
        log.info("quantization-aware: base rounded to int4, %d adapter matrices rounded in "
                 "each forward pass", len(rounded.adapters))
    encoder = Encoder.for_model(model, recipe.data.chat_template)
    source, evals = BatchSource(recipe, encoder), held_out(recipe)
    source.check_lengths()                       # the whole data set, before step 1
    source.check_processes(acc.num_processes)
    check_lengths(encoder, evals, recipe.data.max_len, "a held-out example")
    params = trainable(model)
    opt = torch.optim.AdamW(params.values(), lr=t.lr, weight_decay=t.weight_decay)
    start = _resume(out, params, opt, recipe, restart)
    before = score_eager(model, encoder, evals) if start == 0 else None
    wrapped, opt = acc.prepare(model, opt)
    log_path = out / "train_log.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    bar = _bar(t.steps, start, progress and acc.is_main_process)
    t0, tokens, window = time.perf_counter(), 0, []
    for step in range(start, t.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(recipe, step)
        batch = source.batch(step, acc.process_index, acc.num_processes)
        loss = masked_loss(wrapped, batch, acc.device)
        acc.backward(loss)
        if t.grad_clip:
            acc.clip_grad_norm_(list(params.values()), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += batch.tokens.numel() * acc.num_processes
        window = (window + [loss.item()])[-t.log_every:]
        rate = tokens / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{sum(window) / len(window):.3f}", tok_s=f"{rate:,.0f}")
        bar.update(1)
        _periodic(acc, recipe, step + 1, window, rate, model, encoder, evals, params, opt,
                  log_path)
    bar.close()
    acc.wait_for_everyone()
    metrics = None
    if acc.is_main_process:
        model = acc.unwrap_model(wrapped).eval()
        after = score_eager(model, encoder, evals, show=5)
        metrics = _metrics(recipe, model, params, before, after, window, tokens,
                           time.perf_counter() - t0, acc)
        if rounded:                          # the adapter records the original base
            rounded.release()
        _write_outputs(recipe, model, metrics)
        if not keep_checkpoint:
            drop_checkpoint(out)
    acc.wait_for_everyone()
    return metrics


OUT_OPTION = "the recipe's out"
# What a run writes into `out` (an adapter, or a full model); nothing else there is touched.
RUN_FILES = ("adapter_config.json", "adapter_model.safetensors", "config.json",
             "model.safetensors", "tokenizer.json", "recipe.yaml", "metrics.json",
             "train_log.jsonl", CHECKPOINT)


def check_out(recipe: Recipe) -> Path:
    """Refuse, before training, an `out` that is a file, cannot be written, or holds files
    of the names a run writes that no flora-train run wrote."""
    return check_run_dir(Path(nonempty_path(recipe.out, OUT_OPTION)), OUT_OPTION, RUN_FILES,
                         is_train_run, "flora-train")


def is_train_run(folder: Path) -> bool:
    """A folder flora-train wrote into: its metrics, its checkpoint or its training log."""
    if json_with_keys(folder / "metrics.json", ("method", "trainable_params", "eval")):
        return True
    if (folder / CHECKPOINT / "state.json").is_file():   # even damaged: load_checkpoint says so
        return True
    try:
        with open(folder / "train_log.jsonl", encoding="utf-8") as f:
            first = json.loads(f.readline(1 << 16))
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and {"step", "loss"} <= set(first)


def _resume(out: Path, params, opt, recipe: Recipe, restart: bool) -> int:
    if restart:
        drop_checkpoint(out)
    if not has_checkpoint(out):
        return 0
    start = load_checkpoint(out, params, opt, recipe.to_dict())
    log.info("resumed %s at step %d", out, start)
    return start


def _bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", desc="train",
                dynamic_ncols=True)


def _periodic(acc, recipe: Recipe, done: int, window, rate, model, encoder, evals, params, opt,
              log_path: Path) -> None:
    t = recipe.train
    if not acc.is_main_process:
        return
    record = None
    if done % t.log_every == 0 or done == t.steps:
        record = {"step": done, "loss": round(sum(window) / len(window), 5),
                  "lr": lr_at(recipe, done - 1), "tokens_per_s": round(rate, 1)}
    if t.eval_every and done % t.eval_every == 0 and done != t.steps:
        res = score_eager(model, encoder, evals)
        record = {**(record or {"step": done}), "eval_accuracy": res.accuracy,
                  "eval_loss": round(res.loss, 5)}
    if record:
        try:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise write_failure(e, log_path, OUT_OPTION) or e from None
    if t.save_every and done % t.save_every == 0 and done != t.steps:
        save_checkpoint(log_path.parent, done, params, opt, recipe.to_dict())


def _metrics(recipe: Recipe, model, params, before, after, window, tokens, wall, acc) -> dict:
    n_train = sum(p.numel() for p in params.values())
    return {
        "recipe": Path(recipe.source).name if recipe.source else None,
        "method": recipe.method.kind,
        "adapter": None if recipe.adapter_config() is None else recipe.adapter_config().to_dict(),
        "trainable_params": n_train,
        "total_params": sum(p.numel() for p in model.parameters()),
        "steps": recipe.train.steps,
        "quant_aware": recipe.train.quant_aware,
        "final_train_loss": round(sum(window) / len(window), 5) if window else None,
        "eval_before": None if before is None else before.to_dict(),
        "eval": after.to_dict(),
        "tokens": tokens,
        "wall_s": round(wall, 1),
        "tokens_per_s": round(tokens / wall, 1) if wall else None,
        "processes": acc.num_processes,
        "device": str(acc.device),
        "torch_threads": torch.get_num_threads(),
        "versions": {"flora_export": __version__, "torch": torch.__version__},
    }


def _write_outputs(recipe: Recipe, model, metrics: dict) -> None:
    out = Path(recipe.out)
    if recipe.method.kind == "full":
        save_hf_checkpoint(model, out)
        write_atomic(out / "tokenizer.json", model.tokenizer_json.encode())
    else:
        save_adapter(model, out)
    write_atomic(out / "recipe.yaml", dump_recipe(recipe).encode())
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2).encode())
    log.info("wrote %s (eval accuracy %.1f%%)", out, 100 * metrics["eval"]["accuracy"])
