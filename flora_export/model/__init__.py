"""The model stage: one Llama-family decoder, its checkpoints, presets and tokenizers."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import FloraError
from .checkpoint import INDEX, checkpoint_files, load_hf_checkpoint, save_hf_checkpoint
from .config import LlamaConfig
from .llama import LlamaModel
from .source import PRESET, ModelSource
from .presets import PRESETS, preset_config, random_model, special_base
from .tokenizer import byte_level_tokenizer, check_tokenizer

__all__ = ["LlamaConfig", "LlamaModel", "ModelSource", "PRESETS", "load_model",
           "save_hf_checkpoint",
           "random_model", "file_sha256"]

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "chat_template.jinja",
                   "chat_template.json")


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_model(source: str | Path, dtype: torch.dtype = torch.float32, seed: int = 0,
               allow_unused_weights: bool = False) -> LlamaModel:
    """Load an HF Llama directory, or build a named preset with random weights.

    With `dtype` float32 the model computes in float32 while the matrices a checkpoint
    stores in bf16/fp16 stay in that dtype (model/storage.py: 2 bytes a parameter, the same
    function); a preset's matrices are drawn in bf16. Another `dtype` converts everything.

    The returned model carries `tokenizer_json` (the tokenizer file's text) and
    `source` (a ModelSource: name, kind and sha256 of every input file) for the manifest. Tensors in
    the checkpoint that config.json does not use are refused unless
    `allow_unused_weights` (then skipped with a warning naming them).
    """
    if not str(source).strip():
        raise FloraError("the model path is an empty string (an unset shell variable?)",
                         "pass a Hugging Face model directory or a preset name "
                         f"({', '.join(sorted(PRESETS))})")
    path = Path(source)
    if path.is_dir():
        return _load_dir(path, dtype, allow_unused_weights)
    if str(source) in PRESETS:
        return _load_preset(str(source), dtype, seed)
    if path.exists() or any(c in str(source) for c in "/\\"):
        raise FloraError(f"model path {source} is not a directory",
                         "pass a Hugging Face model directory or a preset name "
                         f"({', '.join(sorted(PRESETS))})")
    raise FloraError(f"{source!r} is neither a model directory nor a preset",
                     f"pass an existing directory or one of: {', '.join(sorted(PRESETS))}")


def _load_dir(path: Path, dtype: torch.dtype, allow_unused_weights: bool) -> LlamaModel:
    cfg = LlamaConfig.from_dir(path)
    check_tokenizer(path / "tokenizer.json", cfg.vocab_size)
    model = load_hf_checkpoint(path, dtype, allow_unused_weights)
    model.tokenizer_json = (path / "tokenizer.json").read_text()
    # beside tokenizer.json: the SentencePiece model (a runtime may read it) and the files
    # that may hold the chat template (chat_template.py)
    tokenizer_files = {n: path / n for n in TOKENIZER_FILES if (path / n).is_file()}
    extra = ("generation_config.json", INDEX, *tokenizer_files)
    files = sorted({path / "config.json", path / "tokenizer.json",
                    *checkpoint_files(path, quiet=True),
                    *(path / n for n in extra if (path / n).is_file())})
    model.source = replace(model.source, files={p.name: file_sha256(p) for p in files},
                           tokenizer_files=tokenizer_files)
    log.info("loaded %s (%d layers, d=%d)", path, cfg.num_hidden_layers, cfg.hidden_size)
    return model


def _load_preset(name: str, dtype: torch.dtype, seed: int) -> LlamaModel:
    cfg = preset_config(name)
    model = random_model(cfg, seed=seed, stored=torch.bfloat16) if dtype == torch.float32 \
        else random_model(cfg, seed=seed).to(dtype)
    model.tokenizer_json = byte_level_tokenizer(cfg.vocab_size, special_base(cfg)).to_str()
    model.source = ModelSource(name, PRESET, seed=seed)
    log.info("built preset %s with random weights (seed %d)", name, seed)
    return model
