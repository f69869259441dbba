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
refused. Adapter files are unchanged: the base is not saved, and `QuantAwareLinear` is an
`nn.Linear` with the same parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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


def make_quant_aware(model: nn.Module) -> int:
    """Round the base's projections and head once and make every FFBA adapter matrix
    quantization-aware, in place; returns how many adapter matrices were. Fails, naming
    the projection, when an input size is not a multiple of the group."""
    from ..quantize import untie_head

    adapters = _adapter_linears(model)
    if not adapters:
        raise FloraError("train.quant_aware needs an FFBA adapter on the model",
                         "set method.kind=ffba, or train.quant_aware=false")
    ids = {id(lin) for lin, _ in adapters}
    untie_head(model)                        # the export rounds the head on its own
    with torch.no_grad():
        for name, lin in model.named_modules():
            if not isinstance(lin, nn.Linear) or id(lin) in ids:
                continue
            if lin.in_features % GROUP:
                raise FloraError(f"{name} reads {lin.in_features} inputs, not a multiple of "
                                 f"the int4 group ({GROUP}): its groups would not match the "
                                 "fused weight's", "set train.quant_aware=false for this base")
            lin.weight = nn.Parameter(fake_int4(lin.weight), requires_grad=False)
            mark(lin)
    for lin, fold in adapters:
        lin.__class__ = QuantAwareLinear
        lin.fold = fold
    return len(adapters)


def release_quant_aware(model: nn.Module) -> None:
    """Adapter matrices back to plain nn.Linear (the rounded base stays)."""
    for m in model.modules():
        if isinstance(m, QuantAwareLinear):
            m.__class__ = nn.Linear
