"""export(): fuse -> reference -> per backend (quantize, capture, lower, verify) -> write.

Everything is built in a temporary directory beside `out` and renamed into place
only after the exported program has been run through its real runtime and has
matched the eager model: a failed export leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from torch import nn

from ..errors import FloraError
from ..fuse import count_fused_linears, fuse
from ..quantize import count_quantized_linears, quant_config
from ..verify import VerifyConfig
from .backend import BuildResult, backend
from .context import BuildContext, reference as verification_reference
from .outdir import FORMAT, MANIFEST, config_parameters, estimate_bytes, plan_out_dir, staging_dir
from .output import Stages, file_record, peak_rss_mb, versions, write_json
from . import tokenizer_gate
from ..prompt import chat_format, special_ids, verify_prompt
from .reference import REFERENCE, write_verify_reference
from .spill import restore, set_aside, weight_bytes
from .targets import target_row

log = logging.getLogger(__name__)

COMMON_STAGES = ["fuse", "reference"]
SET_ASIDE = ".weights-set-aside.bin"    # in the staging folder, deleted once read back


@dataclass(frozen=True)
class ExportConfig:
    quant: str = "8da4w"
    max_seq: int = 512
    fuse_adapters: bool = True          # False exports FFBA unfused (benchmark baseline)
    force: bool = False                 # write beside entries of `out` that are not the export's
    allow_tokenizer_mismatch: bool = False  # export although a runtime's tokenizer differs
    # ONNX: the embedding table is the tied output head's int4 codes, read by one
    # GatherBlockQuantized (as ORT-GenAI's builder stores a tied model); else the table
    # stays unquantized in the checkpoint's dtype (export/onnx.py)
    shared_embedding: bool = False
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    # free the eager model's weights once a backend no longer needs them (the CLI does: a
    # lower peak for the runtime checks); the model passed to export() is then spent
    free_weights: bool = False


def stage_names(target: str) -> list[str]:
    names = list(COMMON_STAGES)
    for b in target_row(target).builds:
        names += [s for s in backend(b).STAGES if s not in names]
    return names + ["tokenizer", "write"]


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
    plan = plan_out_dir(out, row.backends, config.force, need_bytes=export_size(model, qcfg, row))
    bos, eos = special_ids(model)
    _check_max_seq(model, config, len(verify_prompt(model, bos)))
    if config.shared_embedding:
        from .onnx_embedding import check_shared_embedding
        check_shared_embedding(model, qcfg, row.backends)
    for name in row.backends:          # what a backend cannot run, refused before any work
        getattr(backend(name), "check_model", lambda _model: None)(model)
    st = Stages(stage_names(target), progress)
    with st("fuse"):
        if model.adapter_state is not None and model.adapter_state.is_ffba \
                and config.fuse_adapters:
            fuse(model, pad_to=qcfg.group_size or 32)
    fused = count_fused_linears(model)
    parameters = sum(p.numel() for p in model.parameters())   # before a backend frees weights
    model.setup_cache(config.max_seq)
    with st("reference"):
        ref = verification_reference(model, verify_prompt(model, bos), config)
        text_case = tokenizer_gate.text_case(model, bos, eos, chat_format(model), config.max_seq)
    ctx = BuildContext(qcfg, config, bos=bos, eos=eos, stages=st, **ref)
    with staging_dir(plan) as tmp:
        results = {}
        for name, built in zip(row.builds, models_to_build(model, len(row.builds), tmp)):
            ctx.backend = name
            results[name] = backend(name).build(built, tmp, ctx)
            del built
        (tmp / "tokenizer.json").write_text(model.tokenizer_json)
        with st("tokenizer"):
            tokenizers = {name: tokenizer_gate.check(
                name, tmp, model, text_case, chat_format(model), qcfg.quantizes,
                config.max_seq, config.allow_tokenizer_mismatch) for name in row.backends}
        with st("write"):
            if ctx.references:         # `flora-export verify` re-runs these checks elsewhere
                reference = write_verify_reference(tmp / REFERENCE, ctx.tokens, ctx.prompt_len,
                                                   ctx.references)
            manifest = _manifest(model, row, qcfg, config, tmp, fused, parameters, results, st,
                                 bos, eos)
            if ctx.references:
                manifest["verify_reference"] = reference
            tokenizer_gate.add_to_manifest(manifest, tokenizers)
            write_json(tmp / MANIFEST, manifest)
    return manifest


def models_to_build(model, backends: int, folder: Path) -> Iterator[nn.Module]:
    """The model each of `backends` builds on, in build order: the first builds on `model`
    itself; with more than one, its matrices are set aside on disk first and every later
    backend builds on a skeleton restored from them (export/spill.py), so no build holds
    another's weights beside its own."""
    if backends == 1:
        yield model
        return
    skeletons, record = set_aside(model, folder / SET_ASIDE, copies=backends - 1)
    try:
        yield model
        for skeleton in skeletons:
            yield restore(skeleton, record)
    finally:
        record.path.unlink(missing_ok=True)


def export_size(model, qcfg, row) -> int:
    """estimate_bytes() for this model: every parameter but the embedding table is a linear
    weight (a tied LM head counts again as a linear), plus the tokenizer."""
    total = sum(p.numel() for p in model.parameters())
    _, embedding = config_parameters(model.config)
    linear = total if model.config.tie_word_embeddings else total - embedding
    aside = weight_bytes(model) if len(row.builds) > 1 else 0      # set aside meanwhile
    return estimate_bytes(linear, embedding, qcfg, row.backends,
                          len((model.tokenizer_json or "").encode()) + aside,
                          table_bytes=model.embed_tokens.weight.element_size())


def _check_max_seq(model, config: ExportConfig, prompt_len: int) -> None:
    limit = model.config.max_position_embeddings
    if not 16 <= config.max_seq <= limit:
        raise FloraError(f"max_seq {config.max_seq} is outside [16, {limit}] for this model",
                         f"pass --max-seq between 16 and {limit}")
    need = prompt_len + config.verify.decode_steps + 1
    if config.max_seq < need:
        raise FloraError(f"max_seq {config.max_seq} cannot hold the verification sequence "
                         f"({prompt_len} prompt + {config.verify.decode_steps} decode tokens)",
                         f"pass --max-seq {need} or more")


def _manifest(model, row, qcfg, config, tmp: Path, fused: int, parameters: int,
              results: dict[str, BuildResult], st, bos, eos) -> dict:
    adapter = model.adapter_state
    primary = results[row.backends[0]]
    eager_quantized = next((r.quantized_linears_eager for r in results.values()   # the .pte's
                            if r.quantized_linears_eager is not None), None)
    return {
        "format": FORMAT,
        "format_version": 1,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "target": row.name,
        "backends": list(row.backends),
        "model": {**model.source.to_dict(), "config": model.config.to_hf_dict(),
                  "parameters": parameters},
        "adapter": None if adapter is None else adapter.manifest(),
        "quantization": asdict(qcfg),
        "runtime": {"max_seq_len": config.max_seq, "bos_id": bos, "eos_ids": eos,
                    "chat": chat_format(model), **primary.runtime},
        "files": {p.name: file_record(p) for p in sorted(tmp.iterdir())
                  if p.name != MANIFEST},
        "counts": {"fused_linears": fused,
                   "quantized_linears_eager": (count_quantized_linears(model)
                                               if eager_quantized is None else eager_quantized),
                   **primary.counts.to_dict()},
        "parity": primary.gates.parity,
        "quality": primary.gates.quality,
        "results": {name: r.record() for name, r in results.items()},
        "timings_s": dict(st.seconds),
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_mb_after_stage": dict(st.rss_mb),
        "peak_rss_mb_in_stage": dict(st.stage_peak_mb),
        "versions": {**versions(), **_backend_versions(row)},
    }


def _backend_versions(row) -> dict:
    out = {}
    for name in row.backends:
        out.update(backend(name).versions())
    return out
