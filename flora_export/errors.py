"""The one exception type the toolchain raises for bad input.

Every message names what is wrong and how to fix it; the CLI prints it as one
line and exits non-zero, never with a traceback.
"""

from __future__ import annotations


class FloraError(Exception):
    """Bad input or a failed check, with the fix for it."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} (fix: {fix})" if fix else problem)


def unknown_name(kind: str, name: str, allowed) -> FloraError:
    """The error for a name that is not in a registry, listing the valid ones."""
    choices = ", ".join(sorted(allowed))
    return FloraError(f"unknown {kind} {name!r}", f"use one of: {choices}")
