"""Where the embedded default lives: the shipped demo base and adapter, and their recipes.

Read by the trainer (a recipe's `model.base: flora-default`), the CLIs (no `--model`)
and the tool that rebuilds them (default.py).
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_BASE = "flora-default"      # the name recipes and `--model` use for the shipped base
ASSETS = Path(__file__).parent / "assets" / "default"
DEFAULT_BASE = ASSETS / "base"
DEFAULT_ADAPTER = ASSETS / "adapter"
RECIPES = Path(__file__).resolve().parents[1] / "recipes"

__all__ = ["EMBEDDED_BASE", "ASSETS", "DEFAULT_BASE", "DEFAULT_ADAPTER", "RECIPES"]
