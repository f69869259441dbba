"""Allowed ranges of numbers, checked where they enter: command-line options and recipe fields.

One `Limit` describes a range (integer or finite real, bounds, what 0 means when it
means "off"); `check` turns a value outside it into a FloraError naming the field,
the value, the range and a fix, and `option` makes an argparse `type=` from it, so an
option is refused before any work starts.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from .errors import FloraError


@dataclass(frozen=True)
class Limit:
    kind: type = int                 # int or float (a float must also be finite)
    low: float | None = None         # inclusive unless low_open
    high: float | None = None        # inclusive
    low_open: bool = False
    example: str = "1"               # a valid value, for the fix
    note: str = ""                   # e.g. "0 turns it off"

    def text(self) -> str:
        """The range in words: 'an integer >= 1', 'a finite number > 0 and <= 1'."""
        what = "an integer" if self.kind is int else "a finite number"
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_num(self.low)}")
        if self.high is not None:
            parts.append(f"<= {_num(self.high)}")
        text = f"{what} {' and '.join(parts)}".rstrip()
        return f"{text} ({self.note})" if self.note else text

    def problem(self, value) -> bool:
        """True when `value` is outside the range (or not a number of the right kind)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True
        if self.kind is int and not isinstance(value, int):
            return True
        if not math.isfinite(value):
            return True
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return True
        return self.high is not None and value > self.high


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


# Shared ranges. Seeds: torch.manual_seed takes at most 64 bits; 2**63 - 1 fits every RNG.
SEED = Limit(int, 0, 2**63 - 1, example="0")
COUNT = Limit(int, 1)                    # steps, runs, sizes, widths, ranks
OPTIONAL_COUNT = Limit(int, 0, example="0", note="0 turns it off")
# torch.set_num_threads(100000) crashes the interpreter at exit (measured); a thread pool
# larger than 1024 is never faster on any CPU this runs on.
THREADS = Limit(int, 1, 1024, example="2")
POSITIVE = Limit(float, 0, low_open=True)


def check(name: str, value, limit: Limit, fix: str | None = None):
    """`value`, or a FloraError naming `name`, the value and the allowed range."""
    if limit.problem(value):
        raise FloraError(f"{name} must be {limit.text()}, got {value!r}",
                         fix or f"set {name} to {limit.example} or another value in that range")
    return value


def option(limit: Limit):
    """An argparse `type=` that parses and range-checks an option's value."""
    def parse(text: str):
        try:
            value = limit.kind(text)
        except ValueError:
            value = None
        if value is None or limit.problem(value):
            raise argparse.ArgumentTypeError(
                f"must be {limit.text()}, got {text!r} (fix: pass e.g. {limit.example})")
        return value
    parse.__name__ = "int" if limit.kind is int else "float"
    return parse


__all__ = ["Limit", "check", "option", "SEED", "COUNT", "OPTIONAL_COUNT", "THREADS",
           "POSITIVE"]
