"""export(): fuse -> reference -> quantize -> capture -> lower -> verify -> write.

Everything is built in a temporary directory beside `out` and renamed into place
only after the exported program has been run through its real runtime and has
matched the eager model: a failed export leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable


from ..adapters.ffba import FFBAConfig
from ..errors import FloraError
from ..fuse import count_fused_linears, fuse
from ..quantize import count_quantized_linears, quant_config, quantizable_linears, quantize
from ..verify import (Parity, VerifyConfig, check, compare, eager_step, reference_sequence,
                      run_steps)
from . import executorch as et
from .capture import capture
from .output import (MANIFEST, Stages, check_out_dir, file_record, peak_rss_mb, staging_dir,
                     versions, write_json)
from .prompt import chat_format, special_ids, verify_prompt
from .targets import target_row

log = logging.getLogger(__name__)

STAGES = ["fuse", "reference", "quantize", "quant-reference", "capture", "lower", "serialize",
          "verify", "write"]


@dataclass(frozen=True)
class ExportConfig:
    quant: str = "8da4w"
    max_seq: int = 512
    fuse_adapters: bool = True          # False exports FFBA unfused (benchmark baseline)
    force: bool = False                 # replace a non-empty directory that is not an export
    verify: VerifyConfig = field(default_factory=VerifyConfig)


def export(model, target: str = "android", out: str | Path = "flora-out/android",
           config: ExportConfig = ExportConfig(),
           progress: Callable[[str, int, int, float | None], None] | None = None) -> dict:
    """Export `model` for `target` into `out`; returns the manifest (also written there).

    The model is changed in place: an FFBA adapter is fused, weights are quantized and
    KV caches allocated. Load it again to export another variant.
    """
    row = target_row(target)
    qcfg = quant_config(config.quant)
    out = Path(out)
    check_out_dir(out, config.force)
    _check_max_seq(model, config)
    bos, eos = special_ids(model)
    st = Stages(STAGES, progress)
    with st("fuse"):
        if isinstance(getattr(model, "adapter_config", None), FFBAConfig) and config.fuse_adapters:
            fuse(model, pad_to=qcfg.group_size or 32)
    model.setup_cache(config.max_seq)
    with st("reference"):
        prompt = verify_prompt(model, bos)
        tokens, fp32_logits = reference_sequence(model, prompt, config.verify.decode_steps)
    with st("quantize"):
        quantize(model, qcfg)
    with st("quant-reference"):
        eager_logits = run_steps(eager_step(model), tokens, len(prompt), config.verify.decode_steps)
    with st("capture"):
        model.set_attention_impl("executorch").reset_cache()
        ep = capture(model, config.max_seq)
    with staging_dir(out) as tmp:
        with st("lower"):
            edge = et.lower(ep, et.runner_metadata(model, config.max_seq, bos, eos))
            counts = et.lowered_op_counts(edge)
            _check_counts(model, qcfg, counts)
        with st("serialize"):
            et.to_pte(edge, tmp / et.PTE_NAME)
            del edge, ep
        with st("verify"):
            pte_logits = run_steps(et.runtime_step(tmp / et.PTE_NAME), tokens, len(prompt),
                                   config.verify.decode_steps)
            parity = _parity(fp32_logits, eager_logits, pte_logits, qcfg.quantizes, config)
        with st("write"):
            (tmp / "tokenizer.json").write_text(model.tokenizer_json)
            manifest = _manifest(model, row, qcfg, config, tmp, counts, parity, st, bos, eos)
            write_json(tmp / MANIFEST, manifest)
    model.set_attention_impl("sdpa")
    return manifest


def _check_max_seq(model, config: ExportConfig) -> None:
    limit = model.config.max_position_embeddings
    if not 16 <= config.max_seq <= limit:
        raise FloraError(f"max_seq {config.max_seq} is outside [16, {limit}] for this model",
                         f"pass --max-seq between 16 and {limit}")


def _check_counts(model, qcfg, counts: dict) -> None:
    expected = len(quantizable_linears(model)) if qcfg.quantizes else 0
    if counts["quantized_linear_ops"] != expected:
        raise FloraError(
            f"the lowered program has {counts['quantized_linear_ops']} quantized linear ops, "
            f"expected {expected} (one per projection and the output head)",
            "some projections fell back to float; report this with the manifest inputs")


def _parity(fp32, eager, exported, quantized: bool, config: ExportConfig) -> Parity:
    parity = compare(eager, exported)
    if quantized:
        parity.quant_sqnr_db_vs_fp32 = compare(fp32, eager).sqnr_db
    return check(parity, quantized, config.verify, "the exported .pte")


def _manifest(model, row, qcfg, config, tmp: Path, counts, parity, st, bos, eos) -> dict:
    adapter = getattr(model, "adapter_config", None)
    return {
        "format_version": 1,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "target": row.name,
        "backends": list(row.backends),
        "model": {**model.source, "config": model.config.to_hf_dict(),
                  "parameters": sum(p.numel() for p in model.parameters())},
        "adapter": None if adapter is None else {
            **adapter.to_dict(), "state": model.adapter_state,
            "fused_width": getattr(model, "fused_width", None),
            "source": getattr(model, "adapter_source", None)},
        "quantization": asdict(qcfg),
        "runtime": {"max_seq_len": config.max_seq, "bos_id": bos, "eos_ids": eos,
                    "chat": chat_format(model), "method": "forward",
                    "inputs": ["tokens[1,S] int64", "input_pos[1] int64"],
                    "outputs": ["logits[1,1,vocab] float32"]},
        "files": {p.name: file_record(p) for p in sorted(tmp.iterdir())
                  if p.name != MANIFEST},
        "counts": {"fused_linears": count_fused_linears(model),
                   "quantized_linears_eager": count_quantized_linears(model), **counts},
        "parity": parity.to_dict(),
        "timings_s": dict(st.seconds),
        "peak_rss_mb": peak_rss_mb(),
        "versions": {**versions(), **et.versions()},
    }
