"""flora-export: put FFBA (fused forward-backward adapter) fine-tuned LLMs on phones.

Public API (backends such as ExecuTorch are imported only when an export runs, so
`import flora_export` never pulls in a backend you do not use):

    model = load_model("path/to/hf_dir" or "llama3.2-1b")
    attach_ffba(model, FFBAConfig(width=64))          # trainable, unfused
    save_adapter(model, "adapter_dir"); load_adapter(model, "adapter_dir")
    fuse(model)                                       # widened qkv/o/gate_up/down
    export(model, target="android", out="out_dir")    # .pte + tokenizer + manifest
"""

from .adapters import (FFBAConfig, LoraConfig, attach_ffba, attach_lora, load_adapter,
                       save_adapter)
from .errors import FloraError
from .export import ExportConfig, export
from .fuse import fuse, merge_lora, unfuse
from .model import LlamaModel, load_model
from .quantize import QuantConfig, quantize
from .version import __version__

__all__ = ["load_model", "LlamaModel", "FFBAConfig", "LoraConfig", "attach_ffba", "attach_lora",
           "save_adapter", "load_adapter", "fuse", "unfuse", "merge_lora", "QuantConfig",
           "quantize", "export", "ExportConfig", "FloraError", "__version__"]
