"""What a model knows about its adapter: the config, the fuse/merge status, where it came from.

`LlamaModel.adapter_state` is an `AdapterState` (None: the base alone). The injectors
(`attach_ffba`, `attach_lora`) set it, `load_adapter` adds the `AdapterSource`, and the
fuse stage (`fuse`, `unfuse`, `merge_lora`) replaces it with the next status. The export
manifest's `adapter` record is `AdapterState.manifest()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum

from .config import AdapterConfig, FFBAConfig, LoraConfig


class AdapterStatus(str, Enum):
    """How the adapter's weights sit in the model (the manifest's `adapter.state`)."""

    UNFUSED = "unfused"      # FFBA pairs as their own matmuls (trainable)
    FUSED = "fused"          # FFBA folded into the widened projections (fuse.py)
    UNMERGED = "unmerged"    # LoRA pairs as their own matmuls (trainable)
    MERGED = "merged"        # LoRA folded into the base weights (merge_lora)


_ALLOWED = {FFBAConfig: (AdapterStatus.UNFUSED, AdapterStatus.FUSED),
            LoraConfig: (AdapterStatus.UNMERGED, AdapterStatus.MERGED)}


@dataclass(frozen=True)
class AdapterSource:
    """The adapter directory a loaded adapter was read from, and its files' sha256."""

    path: str
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"path": self.path, "files": dict(self.files)}


@dataclass(frozen=True)
class AdapterState:
    config: AdapterConfig
    status: AdapterStatus
    fused_width: int | None = None          # FFBA fused: the width padded to the group
    source: AdapterSource | None = None     # None: attached fresh (not loaded from files)

    def __post_init__(self):
        allowed = _ALLOWED[type(self.config)]
        if self.status not in allowed:
            raise ValueError(f"{type(self.config).__name__} cannot be {self.status.value}")

    @property
    def is_ffba(self) -> bool:
        return isinstance(self.config, FFBAConfig)

    @property
    def is_lora(self) -> bool:
        return isinstance(self.config, LoraConfig)

    def with_status(self, status: AdapterStatus, fused_width: int | None = None
                    ) -> "AdapterState":
        return dataclasses.replace(self, status=status, fused_width=fused_width)

    def manifest(self) -> dict:
        """The export manifest's `adapter` record (docs/manifest.md)."""
        return {**self.config.to_dict(), "state": self.status.value,
                "fused_width": self.fused_width,
                "source": None if self.source is None else self.source.to_dict()}


__all__ = ["AdapterState", "AdapterStatus", "AdapterSource"]
