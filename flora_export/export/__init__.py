"""The capture/lower/verify stages and the target table (one module per backend)."""

from .pipeline import ExportConfig, export, stage_names
from .targets import TARGETS, Target, target_row

__all__ = ["export", "ExportConfig", "stage_names", "TARGETS", "Target", "target_row"]
