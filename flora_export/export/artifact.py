"""An export directory, opened for evaluation: its manifest and files checked, its model
as a runtime `Step` (a `.pte` in ExecuTorch, an ONNX model in ONNX Runtime) and its
tokenizer as the `Encoder` that frames prompts as the apps do. flora-eval and the
accuracy benchmarks score exports through this."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import FloraError
from ..train.data import Encoder
from ..verify import Step


def export_step(export_dir: Path) -> tuple[Step, Encoder, dict]:
    """A runtime `Step` for an export directory (.pte via ExecuTorch, else ONNX Runtime).
    The manifest, the tokenizer and the model file are checked (fields, sizes and sha256
    against the manifest) before the runtime loads anything."""
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    rt = manifest["runtime"]
    names = [n for n in ("model.pte", "model.onnx") if n in manifest["files"]]
    if not names:
        raise FloraError(f"{export_dir / 'manifest.json'} lists neither model.pte nor "
                         "model.onnx", "pass an android, ios or onnx export directory")
    data = [n for n in manifest["files"] if n.startswith(names[0] + ".")]   # model.onnx.data
    check_files(export_dir, manifest, ["tokenizer.json", names[0], *data])
    encoder = _encoder(export_dir / "tokenizer.json", rt)
    model_file = export_dir / names[0]
    try:
        if model_file.suffix == ".pte":
            from .executorch import runtime_step
            return runtime_step(model_file), encoder, manifest
        from .onnx import runtime_step
        cfg = manifest["model"]["config"]
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        step = runtime_step(model_file, cfg["num_hidden_layers"], cfg["num_key_value_heads"],
                            head_dim, rt["max_seq_len"])
        return step, encoder, manifest
    except (KeyError, TypeError, ZeroDivisionError) as e:
        raise _bad_manifest(export_dir, f"model.config lacks a usable {e}") from None
    except RuntimeError as e:             # the runtime refused the file
        raise FloraError(f"{model_file} cannot be loaded by its runtime "
                         f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})",
                         "export it again with flora-export") from None


def _bad_manifest(export_dir: Path, why: str) -> FloraError:
    return FloraError(f"{export_dir / 'manifest.json'} is not a flora-export manifest ({why})",
                      "pass a directory written by flora-export, or export it again")


def read_manifest(export_dir: Path) -> dict:
    """An export's manifest.json with the fields evaluation reads, each of the right type."""
    path = Path(export_dir) / "manifest.json"
    if not path.is_file():
        raise FloraError(f"{export_dir} has no manifest.json", "pass a directory written by "
                         "flora-export")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad_manifest(export_dir, f"not readable JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise _bad_manifest(export_dir, "not a JSON object")
    rt = manifest.get("runtime")
    want = {"runtime": isinstance(rt, dict),
            "runtime.max_seq_len": isinstance(rt, dict) and _is_int(rt.get("max_seq_len")),
            "runtime.bos_id": isinstance(rt, dict) and _is_int(rt.get("bos_id")),
            "runtime.eos_ids": isinstance(rt, dict) and isinstance(rt.get("eos_ids"), list)
            and bool(rt["eos_ids"]) and all(map(_is_int, rt["eos_ids"])),
            "files": isinstance(manifest.get("files"), dict),
            "target": isinstance(manifest.get("target"), str),
            "quantization.name": isinstance(manifest.get("quantization"), dict)
            and isinstance(manifest["quantization"].get("name"), str)}
    missing = [k for k, ok in want.items() if not ok]
    if missing:
        raise _bad_manifest(export_dir, f"{missing[0]} is missing or of the wrong type")
    chat = rt.get("chat")
    if chat is not None and not (isinstance(chat, dict) and isinstance(chat.get("template"), str)
                                 and "{prompt}" in chat["template"]
                                 and isinstance(chat.get("stop"), list) and chat["stop"]):
        raise _bad_manifest(export_dir, "runtime.chat needs a template with {prompt} and stop")
    return manifest


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_files(export_dir: Path, manifest: dict, names: list[str]) -> None:
    """Each file present with the size and sha256 the manifest records (truncated, replaced
    or missing files are named)."""
    from ..model import file_sha256
    for name in names:
        path, rec = Path(export_dir) / name, manifest["files"].get(name)
        if not path.is_file():
            raise FloraError(f"{path} is missing", "pass a complete flora-export output "
                             "directory, or export it again")
        if rec is None and name == "tokenizer.json":
            continue                      # older manifests list only the model files
        if not isinstance(rec, dict):
            raise _bad_manifest(export_dir, f"files.{name} is not a record")
        size = path.stat().st_size
        if size != rec.get("bytes") or file_sha256(path) != rec.get("sha256"):
            raise FloraError(f"{path} is not the file the export wrote ({size} bytes, the "
                             f"manifest records {rec.get('bytes')} and its sha256; truncated "
                             "or modified)", "export it again with flora-export")


def _encoder(tokenizer: Path, rt: dict) -> Encoder:
    try:
        return Encoder(tokenizer.read_text(encoding="utf-8"), rt["bos_id"], rt["eos_ids"],
                       rt.get("chat"))
    except Exception as e:   # tokenizers raises its own exception types for a bad file
        raise FloraError(f"{tokenizer} is not a readable tokenizer ({str(e)[:200]})",
                         "export it again with flora-export") from None


__all__ = ["export_step", "read_manifest", "check_files"]
