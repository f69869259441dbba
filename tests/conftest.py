"""Shared fixtures: small Hugging Face-format Llama checkpoints and FFBA adapters on disk."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from flora_export.adapters import FFBAConfig, attach_ffba, save_adapter
from flora_export.model import PRESETS, random_model, save_hf_checkpoint
from flora_export.model.tokenizer import byte_level_tokenizer


def write_base(path: Path, cfg=None, seed: int = 0, dtype=None) -> Path:
    """A random-weight HF Llama directory (config.json, model.safetensors, tokenizer.json)."""
    cfg = cfg or PRESETS["tiny"]
    path.mkdir(parents=True, exist_ok=True)
    byte_level_tokenizer(cfg.vocab_size, cfg.bos_token_id).save(str(path / "tokenizer.json"))
    save_hf_checkpoint(random_model(cfg, seed=seed), path, dtype=dtype)
    return path


def randomize_adapter(model, seed: int = 0, std: float = 0.05) -> None:
    """Give every adapter weight random values (a fresh adapter is a no-op: B = 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, std, generator=gen)


def write_ffba(base_dir: Path, path: Path, cfg: FFBAConfig, seed: int = 0) -> Path:
    from flora_export.model import load_model

    model = load_model(base_dir)
    attach_ffba(model, cfg)
    randomize_adapter(model, seed)
    save_adapter(model, path)
    return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return write_base(tmp_path_factory.mktemp("tiny_base"))


@pytest.fixture(scope="session")
def tiny_ffba(tiny_base, tmp_path_factory) -> Path:
    """FFBA width 40 (padded to 64 when fused), SiLU: exercises padding and activation."""
    return write_ffba(tiny_base, tmp_path_factory.mktemp("tiny_ffba"),
                      FFBAConfig(width=40, alpha=80.0, activation="silu"))


def shapes(**changes):
    """The tiny preset with some fields changed."""
    return dataclasses.replace(PRESETS["tiny"], **changes)
