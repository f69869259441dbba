"""The capture/lower/verify stages and the target table (one module per backend)."""

from .pipeline import STAGES, ExportConfig, export
from .targets import TARGETS, Target, target_row

__all__ = ["export", "ExportConfig", "STAGES", "TARGETS", "Target", "target_row"]
