"""Quantization-aware FFBA training (`train.quant_aware`): train against the weights the
int4 export runs.

The 8da4w export rounds every projection and the head to int4, one bf16 scale per 32
input columns (torchao's grid, export/onnx_grid.py: codes round(w / (max|w|/7.5)) clamped
to [-8, 7], times the scale rounded to bf16), and FFBA's
fused halves with them. An adapter trained on the float base loses much of what it learned
there (`benchmarks/int4_error.py`: on `mirror`, 86.5% eager, 58.5% with the export's
weights; base and adapter rounding each cost about half), while the int8 activations cost
nothing. So, with `quant_aware`:

- the frozen base's projections and head are replaced, once, by their int4 rounding: the
  export rounds the same float weights to the same values, so the adapter learns on top
  of exactly the base the device runs;
- each adapter matrix is rounded in every forward pass as it will be inside the fused
  weight (A along the hidden size, a row per fused neuron; B, times the fused scale,
  along its width zero-padded to the group), with straight-through gradients
  (`QuantAwareLinear`), so the saved float adapter is what the export will round.

The embedding (int8 per row in the export) stays float. The groups align with the fused
layout only when every base input size is a multiple of the group; other bases are
refused. `make_quant_aware` returns a `QuantAware` that keeps the base's original weights
(as loaded: 2 bytes a parameter for a bf16 base); `release()` puts them back and the
adapter matrices back to plain linears before the adapter is saved, so the saved adapter
records the base it was trained on (its fingerprint is of the original weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dataclasses import dataclass, field

from ..errors import FloraError
from ..model.storage import mark

GROUP = 32


def fake_int4(w: torch.Tensor, group: int = GROUP) -> torch.Tensor:
    """`w` [N, K] rounded to symmetric int4 with one bf16 scale per `group` columns (K
    zero-padded to the group), returned in float32: the values the export dequantizes to."""
    n, k = w.shape
    x = F.pad(w.float(), (0, -k % group)).view(n, -1, group)
    scale = (x.abs().amax(-1, keepdim=True) / 7.5).clamp(min=torch.finfo(torch.float32).tiny)
    codes = (x * (1.0 / scale)).round().clamp(-8, 7)
    return codes.mul(scale.to(torch.bfloat16).float()).view(n, -1)[:, :k]


class QuantAwareLinear(nn.Linear):
    """An adapter matrix that computes with its int4 rounding (as `fold` times it is rounded
    in the fused weight, divided back) and passes gradients straight through to its float
    weight."""

    fold: float = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        rounded = fake_int4(w.detach() * self.fold) / self.fold
        return F.linear(x, w + (rounded - w).detach(), self.bias)


def _adapter_linears(model: nn.Module) -> list[tuple[nn.Linear, float]]:
    """(matrix, the factor fusion multiplies it by) of every FFBA adapter of `model`."""
    found = []
    for m in model.modules():
        pair = getattr(m, "adapter", None)
        if pair is None:
            continue
        for name, lin in pair.named_children():
            if isinstance(lin, nn.Linear):
                found.append((lin, float(pair.scale) if name == "B" else 1.0))
    return found


@dataclass
class QuantAware:
    """What `make_quant_aware` changed: the base linears' original weights, and the adapter
    matrices made quantization-aware."""
    originals: list[tuple[nn.Linear, nn.Parameter]] = field(default_factory=list)
    adapters: list[nn.Linear] = field(default_factory=list)

    def release(self) -> None:
        """The original base weights and plain adapter linears back (the adapter's trained
        values stay)."""
        for lin, weight in self.originals:
            lin.weight = weight
            mark(lin)
        for lin in self.adapters:
            lin.__class__ = nn.Linear
        self.originals, self.adapters = [], []


def make_quant_aware(model: nn.Module) -> QuantAware:
    """Round the base's projections and head once and make every FFBA adapter matrix
    quantization-aware, in place. Fails, naming the projection, when an input size is
    not a multiple of the group."""
    from ..quantize import untie_head

    adapters = _adapter_linears(model)
    if not adapters:
        raise FloraError("train.quant_aware needs an FFBA adapter on the model",
                         "set method.kind=ffba, or train.quant_aware=false")
    ids = {id(lin) for lin, _ in adapters}
    base = [(name, lin) for name, lin in model.named_modules()
            if isinstance(lin, nn.Linear) and id(lin) not in ids]
    for name, lin in base:
        if lin.in_features % GROUP:
            raise FloraError(f"{name} reads {lin.in_features} inputs, not a multiple of the "
                             f"int4 group ({GROUP}): its groups would not match the fused "
                             "weight's", "set train.quant_aware=false for this base")
    state = QuantAware()
    tied = model.lm_head.weight is model.embed_tokens.weight
    untie_head(model)                        # the export rounds the head on its own
    with torch.no_grad():
        for _, lin in base:
            original = model.embed_tokens.weight if tied and lin is model.lm_head else lin.weight
            state.originals.append((lin, original))
            lin.weight = nn.Parameter(fake_int4(lin.weight), requires_grad=False)
            mark(lin)
    for lin, fold in adapters:
        lin.__class__ = QuantAwareLinear
        lin.fold = fold
        state.adapters.append(lin)
    return state
