"""The target table: what a user asks for (`--target`) -> the backends that build it."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FloraError, unknown_name
from .backend import BACKENDS


@dataclass(frozen=True)
class Target:
    name: str
    backends: tuple[str, ...]          # as the manifest lists them: the primary one first
    description: str
    build_order: tuple[str, ...] = ()  # the order they are built in, where it differs

    @property
    def builds(self) -> tuple[str, ...]:
        """The backends in build order: the first builds on the model, each later one on a
        copy restored from the matrices set aside on disk meanwhile (export/spill.py)."""
        return self.build_order or self.backends


TARGETS: dict[str, Target] = {
    "android": Target("android", ("executorch-xnnpack",),
                      "ExecuTorch .pte on XNNPACK (CPU), for ExecuTorch's Android LLM runner"),
    # built .pte first, on the model; Core ML after, on the matrices set aside on disk
    # meanwhile (export/spill.py), coding each in place
    "ios": Target("ios", ("coreml", "executorch-xnnpack"),
                  "Core ML .mlpackage plus the ExecuTorch .pte for iOS",
                  build_order=("executorch-xnnpack", "coreml")),
    "coreml": Target("coreml", ("coreml",), "Core ML .mlpackage alone"),
    "onnx": Target("onnx", ("onnx",), "ONNX with int4 MatMulNBits, for ONNX Runtime (GenAI)"),
}

# Backends this version can build (the backend table); a target naming another fails clearly.
AVAILABLE_BACKENDS = tuple(BACKENDS)


def target_row(name: str) -> Target:
    if name not in TARGETS:
        raise unknown_name("target", name, TARGETS)
    row = TARGETS[name]
    missing = [b for b in row.backends if b not in AVAILABLE_BACKENDS]
    if missing:
        ready = [t for t, r in TARGETS.items() if set(r.backends) <= set(AVAILABLE_BACKENDS)]
        raise FloraError(f"target {name!r} needs the {', '.join(missing)} backend, which this "
                         "version of flora-export does not provide yet",
                         f"use a target whose backends are available: {', '.join(ready)}")
    return row
