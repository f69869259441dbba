"""The adapter stage: FFBA (ours) and LoRA (baseline), each a config + layer + injector."""

from .ffba import VARIANTS, FFBAConfig, FFBAPair, attach_ffba
from .io import base_fingerprint, load_adapter, read_adapter_config, save_adapter
from .lora import ALL_TARGETS, LoraConfig, LoraProjection, attach_lora

__all__ = ["FFBAConfig", "FFBAPair", "attach_ffba", "LoraConfig", "LoraProjection", "attach_lora",
           "save_adapter", "load_adapter", "read_adapter_config", "base_fingerprint",
           "VARIANTS", "ALL_TARGETS"]
