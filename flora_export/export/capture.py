"""Capture: one `torch.export` program (static KV cache, dynamic prompt length)."""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

log = logging.getLogger(__name__)


class LastTokenLM(nn.Module):
    """forward(tokens [1, S], input_pos [1]) -> logits of the last token [1, 1, V]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self.model(tokens, input_pos, last_only=True)


def capture(model: nn.Module, max_seq: int) -> torch.export.ExportedProgram:
    """Export the cached inference step; prompt length is dynamic in [1, max_seq - 1]."""
    wrapper = LastTokenLM(model).eval()
    seq = torch.export.Dim("seq", min=1, max=max_seq - 1)
    example = (torch.zeros(1, 2, dtype=torch.long), torch.tensor([0], dtype=torch.long))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(wrapper, example, dynamic_shapes=({1: seq}, None), strict=False)
