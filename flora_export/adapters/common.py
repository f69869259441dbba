"""What every adapter injector does first."""

from __future__ import annotations

from ..errors import FloraError
from ..model.llama import LlamaModel


def prepare_base(model: LlamaModel, freeze_base: bool) -> None:
    """Refuse a second adapter; freeze the base so only the adapter trains."""
    if model.adapter_state is not None:
        raise FloraError("the model already carries an adapter",
                         "load a fresh base model before attaching another adapter")
    if freeze_base:
        model.requires_grad_(False)
