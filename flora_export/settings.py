"""Documented settings: dataclass fields that carry their doc, allowed range and choices.

One definition serves the API (an adapter config's `__post_init__`), recipes (which
build the same config types from YAML) and `flora-train --fields`: `setting()` declares
a field, `check_settings()` validates values against the declarations, naming the field
as the caller spells it ("FFBA width", "method.ffba.width"), the allowed values and a fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field

from .errors import unknown_name
from .limits import Limit, check


def setting(text: str, default=dataclasses.MISSING, factory=dataclasses.MISSING,
            limit: Limit | None = None, choices=None, optional: bool = False):
    """A dataclass field with its documentation, range (`limit`) or allowed values
    (`choices`: a collection, or for a tuple/list field the values its entries may take);
    `optional`: None is allowed too (and skips the checks)."""
    meta = {"doc": text, "limit": limit, "choices": choices, "optional": optional}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def settable(f: dataclasses.Field) -> bool:
    """A field that recipes and `--fields` show (declared with `setting()`)."""
    return "doc" in f.metadata and not f.metadata.get("internal")


def check_settings(cls, values: dict, prefix: str) -> None:
    """Check `values` (field name -> value) against `cls`'s declarations; errors name the
    field as `prefix + name`."""
    for f in dataclasses.fields(cls):
        if f.name not in values or "doc" not in f.metadata:
            continue
        value, meta, key = values[f.name], f.metadata, prefix + f.name
        if value is None and meta.get("optional"):
            continue
        if meta.get("limit") is not None:
            check(key, value, meta["limit"])
        choices = meta.get("choices")
        if choices is not None:
            entries = value if isinstance(value, (list, tuple)) else [value]
            for v in entries:
                if not isinstance(v, str) or v not in choices:
                    raise unknown_name(key, v, choices)


__all__ = ["setting", "settable", "check_settings"]
