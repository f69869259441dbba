"""Where a model's weights came from: the manifest's `model` record and the tokenizer files.

`load_model` sets `LlamaModel.source` to a `ModelSource`: a Hugging Face directory
(its resolved path and the sha256 of every input file), a preset (its seed), or a model
trained from scratch by flora-train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DIRECTORY, PRESET, FROM_SCRATCH = "directory", "preset", "trained from scratch"


@dataclass(frozen=True)
class ModelSource:
    name: str
    kind: str = DIRECTORY                 # DIRECTORY, PRESET or FROM_SCRATCH
    path: str | None = None               # DIRECTORY: the resolved directory
    seed: int | None = None               # PRESET: the seed of its random weights
    files: dict[str, str] = field(default_factory=dict)        # input file name -> sha256
    skipped_tensors: tuple[str, ...] = ()  # unused checkpoint tensors (--allow-unused-weights)
    # files beside tokenizer.json: tokenizer.model (a backend may ship it) and the chat
    # template's (tokenizer_config.json, chat_template.jinja, chat_template.json)
    tokenizer_files: dict[str, Path] = field(default_factory=dict)

    @property
    def random_weights(self) -> bool:
        return self.kind == PRESET

    def to_dict(self) -> dict:
        """The manifest's `model` keys for the source (docs/manifest.md)."""
        out: dict = {"name": self.name, "kind": self.kind}
        if self.path is not None:
            out["path"] = self.path
        if self.kind == PRESET:
            out["seed"] = self.seed
        out["files"] = dict(self.files)
        if self.skipped_tensors:
            out["skipped_tensors"] = list(self.skipped_tensors)
        return out


__all__ = ["ModelSource", "DIRECTORY", "PRESET", "FROM_SCRATCH"]
