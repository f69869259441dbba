"""ExecuTorch's own LLM exporter on the same architecture: the peer a user would pick.

`python -m executorch.extension.llm.export.export_llm --config cfg.yaml` with the
model_class ExecuTorch has for the preset's family (llama3_2 for Llama, qwen3_0_6b for
Qwen3: its Llama transformer with HF-style RoPE and q/k norms before RoPE; export_llm
has no Gemma 3 text model), a params.json of the preset's shapes, a random checkpoint in
Meta's key names (ExecuTorch's loader reads it with torch.load, so it is written with
torch.save: plain tensors only, in the benchmark's work directory), KV cache with
ExecuTorch's SDPA op, 8da4w group 32, int8 embedding, XNNPACK. The LoRA peer adds a
PEFT LoRA r=16 adapter on all 7 projections (ExecuTorch's unfused LoRA). Each export
runs in its own process: wall time and peak RSS are recorded next to the .pte.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml

from variants import LORA_RANK, run_measured

PEERS = ("et-export", "et-export-lora")
MODEL_CLASS = {"llama": "llama3_2", "qwen3": "qwen3_0_6b"}   # family -> export_llm model_class


def model_class(cfg) -> str:
    if cfg.model_type not in MODEL_CLASS:
        raise SystemExit(f"ExecuTorch's export_llm has no model for model_type "
                         f"{cfg.model_type!r} (this benchmark knows {sorted(MODEL_CLASS)}); "
                         f"drop --with-executorch-peer")
    return MODEL_CLASS[cfg.model_type]


def params(cfg) -> dict:
    out = {"dim": cfg.hidden_size, "hidden_dim": cfg.intermediate_size,
           "n_heads": cfg.num_attention_heads, "n_kv_heads": cfg.num_key_value_heads,
           "n_layers": cfg.num_hidden_layers, "head_dim": cfg.head_dim,
           "norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
           "use_scaled_rope": bool(cfg.rope_scaling), "vocab_size": cfg.vocab_size}
    if cfg.model_type == "qwen3":            # ExecuTorch's Qwen3 params
        out.update(use_hf_rope=True, attention_qkv_bias=False, use_qk_norm=True,
                   qk_norm_before_rope=True)
    return out


def write_inputs(preset: str, work: Path) -> None:
    """params.json, checkpoint.pth (random, Meta names), a PEFT LoRA adapter, tokenizer."""
    import torch

    from flora_export import LoraConfig, attach_lora, save_adapter
    from flora_export.model import PRESETS, random_model
    from flora_export.model.presets import special_base
    from flora_export.model.tokenizer import byte_level_tokenizer

    cfg = PRESETS[preset]
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.json").write_text(json.dumps(params(cfg)))
    byte_level_tokenizer(cfg.vocab_size, special_base(cfg)).save(str(work / "tokenizer.json"))
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen) * 0.02

    h, q, kv, f = cfg.hidden_size, cfg.q_dim, cfg.kv_dim, cfg.intermediate_size
    sd = {"tok_embeddings.weight": rnd(cfg.vocab_size, h), "norm.weight": torch.ones(h),
          "output.weight": rnd(cfg.vocab_size, h)}
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        sd.update({p + "attention.wq.weight": rnd(q, h), p + "attention.wk.weight": rnd(kv, h),
                   p + "attention.wv.weight": rnd(kv, h), p + "attention.wo.weight": rnd(h, q),
                   p + "feed_forward.w1.weight": rnd(f, h), p + "feed_forward.w2.weight": rnd(h, f),
                   p + "feed_forward.w3.weight": rnd(f, h), p + "attention_norm.weight":
                   torch.ones(h), p + "ffn_norm.weight": torch.ones(h)})
        if cfg.model_type == "qwen3":
            sd.update({p + "attention.q_norm_fn.weight": torch.ones(cfg.head_dim),
                       p + "attention.k_norm_fn.weight": torch.ones(cfg.head_dim)})
    torch.save(sd, work / "checkpoint.pth")
    del sd
    model = random_model(cfg)
    attach_lora(model, LoraConfig(rank=LORA_RANK, alpha=2.0 * LORA_RANK))
    with torch.no_grad():
        for prm in model.parameters():
            if prm.requires_grad:
                prm.normal_(0.0, 0.02, generator=gen)
    save_adapter(model, work / "lora")


def config_yaml(cfg, work: Path, name: str, max_seq: int, lora: bool) -> dict:
    base = {"model_class": model_class(cfg), "params": str(work / "params.json"),
            "checkpoint": str(work / "checkpoint.pth")}
    if lora:
        base["lora_config"] = {"adapter_checkpoint": str(work / "lora" / "adapter_model.safetensors"),
                               "adapter_config": str(work / "lora" / "adapter_config.json")}
    return {"base": base,
            "model": {"use_kv_cache": True, "use_sdpa_with_kv_cache": True,
                      "enable_dynamic_shape": True},
            "export": {"max_seq_length": max_seq, "max_context_length": max_seq,
                       "output_dir": str(work / name), "output_name": "model.pte"},
            "quantization": {"qmode": "8da4w", "group_size": 32, "embedding_quantize": "8,0"},
            "backend": {"xnnpack": {"enabled": True}}}


def build_peers(preset: str, work: Path, max_seq: int, which=PEERS) -> dict[str, Path]:
    """{name: directory with model.pte + tokenizer.json + cost.json}, built when missing."""
    from flora_export.model import PRESETS

    cfg_model = PRESETS[preset]
    model_class(cfg_model)                   # refuse an unknown family before any work
    work = work / "executorch-peer"
    if not (work / "checkpoint.pth").exists():
        print("writing the ExecuTorch peer's inputs", flush=True)
        write_inputs(preset, work)
    dirs = {}
    for name in which:
        out = work / name
        if not (out / "cost.json").exists():
            print(f"building {name} with ExecuTorch's export_llm -> {out}", flush=True)
            out.mkdir(parents=True, exist_ok=True)
            cfg = work / f"{name}.yaml"
            cfg.write_text(yaml.safe_dump(config_yaml(cfg_model, work, name, max_seq,
                                                      name.endswith("lora"))))
            try:
                cost = run_measured([sys.executable, "-m",
                                     "executorch.extension.llm.export.export_llm", "--config",
                                     str(cfg)], work / f"{name}.log", cwd=out)
            except RuntimeError as e:
                print(f"  {e}", flush=True)
                continue
            pte = next(out.rglob("*.pte"), None) or next(Path(out).glob("*.pte"), None)
            if pte is None:
                print(f"  no .pte written (see {work / f'{name}.log'})", flush=True)
                continue
            if pte != out / "model.pte":
                shutil.move(pte, out / "model.pte")
            shutil.copy(work / "tokenizer.json", out / "tokenizer.json")
            (out / "cost.json").write_text(json.dumps(cost))
        dirs[name] = out
    return dirs


if __name__ == "__main__":
    print(build_peers(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])))
