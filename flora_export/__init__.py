"""flora-export: put FFBA (fused forward-backward adapter) fine-tuned LLMs on phones.

Public API (imported lazily, so `import flora_export` stays light and never pulls in
a backend you do not use):

    model = load_model("path/to/hf_dir" or "llama3.2-1b")
    attach_ffba(model, FFBAConfig(width=64))          # trainable, unfused
    save_adapter(model, "adapter_dir"); load_adapter(model, "adapter_dir")
    fuse(model)                                       # widened qkv/o/gate_up/down
    export(model, target="android", out="out_dir")    # .pte + tokenizer + manifest
"""

from importlib import import_module

__version__ = "0.1.0"

_API = {
    "load_model": "flora_export.model",
    "LlamaModel": "flora_export.model",
    "FFBAConfig": "flora_export.adapters",
    "LoraConfig": "flora_export.adapters",
    "attach_ffba": "flora_export.adapters",
    "attach_lora": "flora_export.adapters",
    "save_adapter": "flora_export.adapters",
    "load_adapter": "flora_export.adapters",
    "fuse": "flora_export.fuse",
    "unfuse": "flora_export.fuse",
    "merge_lora": "flora_export.fuse",
    "QuantConfig": "flora_export.quantize",
    "quantize": "flora_export.quantize",
    "export": "flora_export.export",
    "ExportConfig": "flora_export.export",
    "FloraError": "flora_export.errors",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'flora_export' has no attribute {name!r}")
