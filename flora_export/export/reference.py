"""Reference files: the verification sequence and the eager logits an export was checked
against, stored beside the artifact so the check can be re-run elsewhere.

* `verify_reference.safetensors` (every ExecuTorch / ONNX export): the tokens, the prompt
  length, and per backend the eager model's logits at each verified position (for a
  quantized export: the eager model carrying the artifact's quantized weights). Read by
  `flora-export verify DIR [--device ssh:HOST]` (flora_export/verify_cli.py), which runs
  the same steps on another machine and applies the export's thresholds.
* `coreml_reference.safetensors` (Core ML): the same for the macOS parity check.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

REFERENCE = "verify_reference.safetensors"


def save_reference(path: Path, tokens: torch.Tensor, prompt_len: int,
                   tensors: dict[str, torch.Tensor], **metadata: str) -> None:
    """tokens [1, T] + named float32 tensors; prompt_len and `metadata` in the header."""
    from safetensors.torch import save_file

    save_file({"tokens": tokens.to(torch.int64).contiguous(),
               **{k: v.float().contiguous() for k, v in tensors.items()}},
              str(path), metadata={"prompt_len": str(prompt_len), **metadata})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)    # safetensors writes 0600; readable like the other outputs


def write_verify_reference(path: Path, tokens: torch.Tensor, prompt_len: int,
                           references: dict[str, list[torch.Tensor]]) -> dict:
    """verify_reference.safetensors for `references` {backend: per-position eager logits};
    returns its manifest record."""
    positions = {b: len(r) for b, r in references.items()}
    save_reference(path, tokens, prompt_len,
                   {f"{b}.reference_logits": torch.stack(r) for b, r in references.items()},
                   positions=json.dumps(positions))
    return {"file": path.name, "prompt_len": prompt_len, "positions": positions,
            "command": f"flora-export verify DIR [--device ssh:HOST]"}


def read_verify_reference(path: Path) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
    """(tokens [1, T], prompt_len, {backend: reference logits [N, V]})."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        tokens = f.get_tensor("tokens")
        refs = {k.removesuffix(".reference_logits"): f.get_tensor(k) for k in f.keys()
                if k.endswith(".reference_logits")}
    return tokens, int(meta["prompt_len"]), refs
