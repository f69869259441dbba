"""The backend protocol, the backend table, and the schema every backend fills.

A backend (one module of this package per runtime) provides `STAGES`, `build()` and
`versions()`; `build()` lowers the model, counts the saved program's quantized linear
ops into a `LoweringCounts`, loads the program's device weights back into the eager
model (`load_device_weights`) for the gates, runs them through `BuildContext.verify`,
writes its files and returns a `BuildResult`. The pipeline reaches a backend only
through `backend(name)`, so adding one is a row in `BACKENDS`.

`LoweringCounts` and `BuildResult` are the one schema of the manifest's `counts`,
`parity`, `quality` and `results.*` (docs/manifest.md).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Protocol

import torch
from torch import nn

from ..errors import FloraError
from ..model.storage import COMPUTE_DTYPE, NARROW_DTYPES, HoldsCodes, mark
from ..quantize import quantizable_linears, untie_head  # noqa: F401  (a backend helper)

if TYPE_CHECKING:
    from ..quantize import QuantConfig
    from .context import BuildContext

log = logging.getLogger(__name__)


class Backend(Protocol):
    """What the pipeline needs from a backend module (optionally also
    `check_model(model)`: refuse, before any work, a model the backend cannot run)."""

    STAGES: list[str]

    def build(self, model: nn.Module, out: Path, ctx: "BuildContext") -> "BuildResult": ...

    def versions(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class BackendInfo:
    """One row of the backend table: where the backend lives and what it needs installed."""

    name: str
    module: str             # module of this package implementing `Backend`
    runtime: str            # the package whose absence makes the backend unavailable
    extra: str              # the pip extra that installs it


BACKENDS: dict[str, BackendInfo] = {b.name: b for b in (
    BackendInfo("executorch-xnnpack", "executorch", "executorch", "android"),
    BackendInfo("onnx", "onnx", "onnxruntime", "onnx"),
    BackendInfo("coreml", "coreml", "coremltools", "coreml"),
)}


def backend(name: str) -> Backend:
    """The backend's module; fails clearly when its runtime package is not installed."""
    info = BACKENDS[name]
    try:
        import_module(info.runtime)
    except ImportError:
        raise FloraError(f"the {name} backend needs the {info.runtime} package, which is not "
                         "installed", f'pip install "flora-export[{info.extra}]"') from None
    return import_module(f"{__package__}.{info.module}")


# --- the schema ------------------------------------------------------------------------

@dataclass
class LoweringCounts:
    """Linear ops of a backend's saved program: how many were expected quantized (one per
    projection and the head, by projection), how many are, and at which widths.
    `details` holds the backend's own op counts (delegates, nodes, states, ...)."""

    expected_quantized_linear_ops: int
    quantized_linear_ops: int
    linear_ops: int
    quantized_weight_bits: dict[str, int]            # "int4" / "int8" -> ops
    quantized_per_projection: dict[str, int]         # projection ("qkv_proj", "lm_head") -> ops
    expected_per_projection: dict[str, int] = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    @property
    def float_weight_linear_ops(self) -> int:
        return self.linear_ops - self.quantized_linear_ops

    def check(self, what: str) -> "LoweringCounts":
        """Raise FloraError unless every projection and the head is one quantized op."""
        if self.quantized_linear_ops != self.expected_quantized_linear_ops:
            raise FloraError(
                f"the {what} has {self.quantized_linear_ops} quantized linear ops, expected "
                f"{self.expected_quantized_linear_ops} (one per projection and the output head)",
                "some projections fell back to float; report this with the manifest inputs")
        if "?" not in self.quantized_per_projection and \
                self.quantized_per_projection != self.expected_per_projection:
            raise FloraError(
                f"the {what} has quantized linear ops {self.quantized_per_projection} by "
                f"projection, expected {self.expected_per_projection}",
                "some projections fell back to float; report this with the manifest inputs")
        return self

    def to_dict(self) -> dict:
        return {"expected_quantized_linear_ops": self.expected_quantized_linear_ops,
                "quantized_linear_ops": self.quantized_linear_ops,
                "linear_ops": self.linear_ops,
                "float_weight_linear_ops": self.float_weight_linear_ops,
                "quantized_weight_bits": dict(self.quantized_weight_bits),
                "quantized_per_projection": dict(self.quantized_per_projection),
                **self.details}


@dataclass
class Gates:
    """Both gates' records (verify.Parity.to_dict(), or a deferred record for a program
    this machine cannot run): the manifest's `parity` and `quality`."""

    parity: dict
    quality: dict | None


@dataclass
class BuildResult:
    """One backend's build: the manifest's `results.BACKEND` (its `runtime` goes to the
    top-level `runtime` when the backend is the primary one)."""

    files: list[str]
    counts: LoweringCounts
    gates: Gates
    runtime: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)      # backend facts: onnx_quantization, coreml
    # linears the eager model held quantized (by torchao), counted before a backend that
    # frees the eager weights once they are no longer needed (None: count the model after)
    quantized_linears_eager: int | None = None

    def record(self) -> dict:
        return {"files": list(self.files), "counts": self.counts.to_dict(),
                "parity": self.gates.parity, "quality": self.gates.quality, **self.extra}


# --- helpers every backend uses (with quantize.untie_head) --------------------------------

def projection(fqn: str) -> str:
    """The projection a linear's module name is ("layers.3.self_attn.qkv_proj.base" ->
    "qkv_proj", "model.lm_head" -> "lm_head")."""
    parts = [p for p in fqn.split(".") if p]
    if parts and parts[0] == "model":
        parts = parts[1:]
    if parts and parts[-1] == "base":          # an unmerged LoRA's base linear
        parts = parts[:-1]
    return parts[-1] if parts else "?"


def per_projection(fqns: Iterable[str | None]) -> dict[str, int]:
    """Count by projection; a name the backend could not attribute counts as "?"."""
    return dict(sorted(Counter(projection(f) if f else "?" for f in fqns).items()))


def expected_quantized(model: nn.Module, quant: "QuantConfig") -> dict[str, int]:
    """The quantized linear ops a lowering must produce, by projection: every linear but
    unmerged LoRA halves (none for an unquantized export)."""
    if not quant.quantizes:
        return {}
    return per_projection(fqn for fqn, _ in quantizable_linears(model))


def lowering_counts(expected: dict[str, int], quantized: Iterable[str | None], linear_ops: int,
                    bits: dict[str, int], **details) -> LoweringCounts:
    """LoweringCounts from the names (module FQNs, None if unknown) of the quantized ops."""
    names = list(quantized)
    return LoweringCounts(expected_quantized_linear_ops=sum(expected.values()),
                          quantized_linear_ops=len(names), linear_ops=linear_ops,
                          quantized_weight_bits=dict(bits),
                          quantized_per_projection=per_projection(names),
                          expected_per_projection=dict(expected), details=details)


KEPT_DTYPES = (COMPUTE_DTYPE, *NARROW_DTYPES)   # what a device weight may be held in


def drop_weights(modules) -> None:
    """Free the weights of `modules` (each gets an empty one; modules that shared a weight,
    a tied head and embedding, share the empty one): the model keeps its structure, ties,
    config, tokenizer and adapter state, but those modules can no longer run."""
    empty: dict[int, nn.Parameter] = {}
    for m in modules:
        if isinstance(m, HoldsCodes):
            m.drop_codes()
        m.weight = empty.setdefault(id(m.weight), nn.Parameter(torch.empty(0),
                                                               requires_grad=False))


def release_weights(model: nn.Module) -> None:
    """Free every matrix of the eager model (ExportConfig.free_weights), once the logits
    the gates compare against are computed: the artifact is then all that runs, and keeping
    both would add the model's size again to the peak of the runtime checks."""
    drop_weights(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding)))


def load_device_weights(model: nn.Module, weights: dict[str, torch.Tensor], expected: int,
                        what: str) -> int:
    """Give the eager model the device's dequantized weights, by module name, so the gates'
    reference computes with exactly what the runtime uses; a weight given in bf16/fp16
    (exact_narrow) stays so, and its module computes in float32 (model/storage.py). Modules
    given the same tensor (a tied head and embedding) share one parameter. Returns how many
    modules were set; fails when fewer than `expected` linears got a weight."""
    params: dict[int, nn.Parameter] = {}
    linears = 0
    with torch.no_grad():
        for fqn, w in weights.items():
            module = model.get_submodule(fqn)
            if id(w) not in params:       # the module's shape, unless its weight was freed
                shaped = w.reshape(module.weight.shape) if module.weight.numel() else w
                if shaped.dtype not in KEPT_DTYPES:
                    shaped = shaped.float()
                params[id(w)] = nn.Parameter(shaped.contiguous(), requires_grad=False)
            module.weight = params[id(w)]
            mark(module)
            linears += isinstance(module, nn.Linear)
    if linears < expected:
        raise FloraError(f"only {linears} of the {what}'s {expected} quantized weights map to "
                         "the model's linears", "report this with the manifest inputs")
    return len(weights)
