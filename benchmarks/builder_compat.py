"""ORT-GenAI's model builder with one compatibility fix: run as the builder's own CLI.

    python benchmarks/builder_compat.py -i HF_DIR -o OUT -p int4 -e cpu ...

onnxruntime-genai 0.18's Gemma 3 class reads flat RoPE fields (`rope_parameters
["rope_type"]`, `rope_local_base_freq`), but transformers 5 gives Gemma 3 `rope_parameters`
keyed by layer type, so the builder stops with `KeyError: 'rope_type'`. Before the
builder's own `__init__`, a nested `rope_parameters` is flattened into what it reads:
the full-attention entry as `rope_parameters` and `rope_theta`, the sliding entry's
theta as `rope_local_base_freq`. Any other model runs through the builder unchanged.
"""

from __future__ import annotations

import runpy


def flatten_gemma3_rope(config) -> None:
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "full_attention" in rope:
        full, local = rope["full_attention"], rope.get("sliding_attention", rope["full_attention"])
        config.rope_parameters = dict(full)
        config.rope_theta = full["rope_theta"]
        config.rope_local_base_freq = local["rope_theta"]


def patch_builder() -> None:
    import importlib

    import onnxruntime_genai.models  # noqa: F401  (puts the builder's folder on sys.path)
    gemma = importlib.import_module("builders.gemma")     # the module builder.py imports
    init = gemma.Gemma3Model.__init__

    def patched(self, config, *args, **kwargs):
        flatten_gemma3_rope(config)
        init(self, config, *args, **kwargs)
    gemma.Gemma3Model.__init__ = patched


if __name__ == "__main__":
    patch_builder()
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
