"""What every adapter injector does first."""

from __future__ import annotations

from torch import nn

from ..errors import FloraError


def prepare_base(model: nn.Module, freeze_base: bool) -> None:
    """Refuse a second adapter; freeze the base so only the adapter trains."""
    if getattr(model, "adapter_config", None) is not None:
        raise FloraError("the model already carries an adapter",
                         "load a fresh base model before attaching another adapter")
    if freeze_base:
        model.requires_grad_(False)
