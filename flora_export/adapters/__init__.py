"""The adapter stage: FFBA (ours) and LoRA (baseline), each a config + layer + injector."""

from .config import ALL_TARGETS, VARIANTS, AdapterConfig, FFBAConfig, LoraConfig
from .ffba import FFBAPair, attach_ffba
from .io import base_fingerprint, load_adapter, read_adapter_config, save_adapter
from .lora import LoraProjection, attach_lora
from .state import AdapterSource, AdapterState, AdapterStatus

__all__ = ["FFBAConfig", "FFBAPair", "attach_ffba", "LoraConfig", "LoraProjection", "attach_lora",
           "AdapterConfig", "AdapterState", "AdapterStatus", "AdapterSource",
           "save_adapter", "load_adapter", "read_adapter_config", "base_fingerprint",
           "VARIANTS", "ALL_TARGETS"]
