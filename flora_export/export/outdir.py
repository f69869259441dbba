"""flora-export's output folder: what counts as a previous export, what may be replaced,
and how a finished export is moved into place without touching anything else.

A previous export is recognised by its manifest's format marker (`"format":
"flora-export-manifest"`; manifests of the first release carry `format_version: 1` and
`versions.flora_export` instead), never by a file name. Replacing one removes exactly
the entries its manifest lists, plus manifest.json. Anything else in the folder is the
user's: the export is refused, naming those entries, or with `force` written beside
them, leaving them untouched; an entry of the user's that has the name of a file the
export writes is never overwritten, not even with `force`.

Two ways to put an export in place, both after it was built and verified in a staging
folder: "swap" renames the staging folder over `out` (atomic: readers see the old
export or the new one), used when `out` holds only the previous export; "in place"
moves the entries one by one inside `out`, used when `out` is a mount point (a
`docker -v` volume cannot be renamed), holds the user's files (kept), or sits in a
folder that cannot be written. A symbolic link is followed: its target is replaced,
the link stays. Staging and trash folders carry this process's id in their names; a
run finds and removes the ones left by a process that no longer exists (SIGKILL).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import FloraError
from ..outputs import (_umask, check_free_space, check_writable_dir, existing_ancestor,
                       real_target, signals_deferred, write_failure)
from .reference import REFERENCE

MANIFEST = "manifest.json"
FORMAT = "flora-export-manifest"
COMMON_FILES = (MANIFEST, "tokenizer.json", REFERENCE)
# The entries each backend writes (executorch.PTE_NAME, onnx.MODEL_NAME/DATA_NAME and the
# GenAI configs, coreml.PACKAGE/REFERENCE); tests/test_bad_input_output.py checks that a
# real export writes no other names.
BACKEND_FILES = {"executorch-xnnpack": ("model.pte", "tokenizer.executorch.json",  # the file
                                        "tokenizer.model"),   # the tokenizer gate ships
                 "onnx": ("model.onnx", "model.onnx.data", "genai_config.json",
                          "tokenizer_config.json"),
                 "coreml": ("model.mlpackage", "coreml_reference.safetensors")}
_TEMP = re.compile(r"^\.(?:.*\.)?flora-(staging|old)-(\d+)-[A-Za-z0-9_]+$")
_MANIFEST_LIMIT = 64 << 20          # a "manifest.json" larger than this is not ours


def export_names(backends) -> set[str]:
    return {*COMMON_FILES, *(n for b in backends for n in BACKEND_FILES.get(b, ()))}


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a flora-export output in `folder`, or None if there is none."""
    path = Path(folder) / MANIFEST
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > _MANIFEST_LIMIT:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return None
    legacy = (data.get("format_version") == 1 and isinstance(data.get("versions"), dict)
              and "flora_export" in data["versions"])
    return data if data.get("format") == FORMAT or legacy else None


def _listed(manifest: dict) -> dict[str, dict]:
    """The manifest's file records whose names are plain entry names (never a path)."""
    return {n: r for n, r in manifest["files"].items()
            if isinstance(n, str) and n not in ("", ".", "..", MANIFEST) and "/" not in n
            and "\\" not in n and isinstance(r, dict)}


def _state(path: Path, record: dict) -> str:
    """'ours' (as the export wrote it), 'modified' (its size changed), or 'foreign' (the
    user's: a link, or a folder with files the export did not write)."""
    if path.is_symlink():
        return "foreign"
    if isinstance(record.get("files"), dict):           # a bundle such as model.mlpackage
        if not path.is_dir():
            return "modified" if path.is_file() else "foreign"
        found = {str(f.relative_to(path)): f for f in path.rglob("*")
                 if f.is_file() or f.is_symlink()}
        if set(found) - set(record["files"]) or any(f.is_symlink() for f in found.values()):
            return "foreign"
        same = all(isinstance(record["files"][k], dict) and
                   record["files"][k].get("bytes") == f.stat().st_size for k, f in found.items())
        return "ours" if same and len(found) == len(record["files"]) else "modified"
    if not path.is_file():
        return "foreign"
    return "ours" if record.get("bytes") == path.stat().st_size else "modified"


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def is_mount_point(path: Path) -> bool:
    """True for a mount point, bind mounts of a folder of the same file system included
    (os.path.ismount misses those: same device). Linux lists them in mountinfo."""
    if os.path.ismount(path):
        return True
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    real = os.path.realpath(path)
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4 and _unescape(fields[4]) == real:
            return True
    return False


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _writable(directory: Path) -> bool:
    try:
        check_writable_dir(directory, "--out")
    except FloraError:
        return False
    return True


def _remove_stale(directory: Path, stem: str | None) -> None:
    """Staging/trash folders of ours whose process is gone (killed with SIGKILL)."""
    try:
        entries = list(directory.iterdir())
    except OSError:
        return
    for p in entries:
        m = _TEMP.match(p.name)
        if not m or not p.is_dir() or p.is_symlink():
            continue
        if stem is not None and not p.name.startswith(f".{stem}.flora-"):
            continue
        pid = int(m.group(2))
        if pid == os.getpid() or _alive(pid):
            continue
        if m.group(1) == "old" and stem is not None and not (directory / stem).exists():
            continue                 # the previous export, cut off mid-swap: keep it
        shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@dataclass(frozen=True)
class OutPlan:
    """Where and how an export goes: decided (and checked) before any work."""
    given: Path                  # --out as passed
    real: Path                   # symlinks followed
    mode: str                    # "swap" or "inplace"
    replace: tuple[str, ...]     # entries of the previous export that the new one replaces
    keep: tuple[str, ...]        # the user's entries, left untouched (--force)


def plan_out_dir(out: Path, backends, force: bool = False, need_bytes: int | None = None,
                 option: str = "--out") -> OutPlan:
    """Check `out` before the export starts; refuse in one line what would fail or
    touch files flora-export did not write. `need_bytes`: estimate_bytes()."""
    out = Path(out)
    real = real_target(out, option)
    if real.exists() and not real.is_dir():
        raise FloraError(f"{option} {out} is a file, not a directory",
                         f"use a directory path for {option}; a missing one is created")
    if not real.exists():
        anc = existing_ancestor(real)
        check_writable_dir(anc, option, out)
        if need_bytes:
            check_free_space(anc, need_bytes, option)
        return OutPlan(out, real, "swap", (), ())
    _remove_stale(real.parent, real.name)
    _remove_stale(real, None)
    manifest = read_manifest(real)
    listed = _listed(manifest) if manifest else {}
    ours, modified, foreign = ([MANIFEST] if manifest else []), [], []
    for p in sorted(real.iterdir()):
        if _TEMP.match(p.name) or (manifest and p.name == MANIFEST):
            continue
        state = _state(p, listed[p.name]) if p.name in listed else "foreign"
        {"ours": ours, "modified": modified, "foreign": foreign}[state].append(p.name)
    clash = [n for n in foreign if n in export_names(backends)]
    if clash:
        raise FloraError(
            f"{option} {out} holds {_names(clash)}, which the export would overwrite but did "
            "not write" + (" (no flora-export manifest there)" if not manifest else ""),
            f"move {'it' if len(clash) == 1 else 'them'} away, or pass another {option}; "
            "--force never overwrites files flora-export did not write")
    if (foreign or modified) and not force:
        what = ("a previous export and entries it did not write" if manifest else
                "entries that are not a flora-export output")
        changed = f" (changed since the export: {_names(modified)})" if modified else ""
        raise FloraError(f"{option} {out} holds {what}: {_names(foreign + modified)}{changed}",
                         f"pass another {option}, move them away, or pass --force to replace "
                         "only the export's own files and leave the others untouched")
    check_writable_dir(real, option, out)
    in_place = bool(foreign) or is_mount_point(real) or not _writable(real.parent)
    if need_bytes:
        check_free_space(real, need_bytes, option)
    return OutPlan(out, real, "inplace" if in_place else "swap", tuple(ours + modified),
                   tuple(foreign))


def estimate_bytes(linear_params: int, embedding_params: int, qcfg, backends,
                   extra_bytes: int = 0, table_bytes: float = 4.0) -> int:
    """About how many bytes an export writes, to refuse a too-full disk before the work.

    Linear weights cost weight_bits/8 bytes each plus a 4-byte scale and a 4-byte zero
    point per group of `group_size` (4 bytes in fp32), the embedding table
    embedding_bits/8 (per-row scales are negligible), except in an ONNX folder, which
    keeps the table unquantized in the checkpoint's dtype: `table_bytes` a weight (its
    element size once the model is loaded; before, 4, float32's, the most it takes). The
    LM head counts as a linear of
    its own even when tied: the export holds it separately from the embedding. Each
    backend writes its own copy (ios: .mlpackage and .pte). 15% margin for what the
    count leaves out (the fused adapter's padding to a group multiple, program
    metadata) plus 1 MiB (tokenizer, manifest, configs). Measured on the embedded demo
    (1.05 M parameters, docs/outputs.md): fp32 model.pte 4.93 MB against an estimate
    of 6.5 MB; 8da4w 0.94 MB against 2.2 MB.
    """
    if qcfg.weight_bits:
        per_linear = qcfg.weight_bits / 8 + (8 / qcfg.group_size if qcfg.group_size else 0)
    else:
        per_linear = 4.0
    per_embedding = qcfg.embedding_bits / 8 if qcfg.embedding_bits else 4.0
    total = sum(linear_params * per_linear + embedding_params *
                (table_bytes if name == "onnx" else per_embedding) for name in backends)
    return int(1.15 * total) + extra_bytes + (1 << 20)


def config_parameters(cfg) -> tuple[int, int]:
    """(linear, embedding) parameter counts of a Llama config, LM head included."""
    h, v = cfg.hidden_size, cfg.vocab_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * cfg.intermediate_size
    return cfg.num_hidden_layers * per_layer + v * h, v * h


@contextmanager
def staging_dir(plan: OutPlan, option: str = "--out"):
    """Yield an empty staging folder; when the block succeeds, its entries replace the
    previous export in `plan.real` (see the module docstring). On any failure or
    signal the staging folder is removed; a full or failing disk becomes one line."""
    where = plan.real.parent if plan.mode == "swap" else plan.real
    prefix = (f".{plan.real.name}.flora-staging-{os.getpid()}-" if plan.mode == "swap"
              else f".flora-staging-{os.getpid()}-")
    tmp = None
    try:
        where.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
        yield tmp
        with signals_deferred():
            _commit(plan, tmp)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        err = None if isinstance(e, FloraError) else write_failure(e, plan.real, option)
        if err is not None:
            raise err from None
        raise


def _commit(plan: OutPlan, tmp: Path) -> None:
    os.chmod(tmp, 0o777 & ~_umask())
    real = plan.real
    if plan.mode == "swap":
        if not real.exists():
            os.replace(tmp, real)
            return
        now = {p.name for p in real.iterdir() if not _TEMP.match(p.name)}
        if now <= set(plan.replace):
            old = Path(tempfile.mkdtemp(prefix=f".{real.name}.flora-old-{os.getpid()}-",
                                        dir=real.parent))
            try:
                os.replace(real, old)
            except OSError as e:
                old.rmdir()
                if e.errno not in (errno.EBUSY, errno.EXDEV, errno.EACCES, errno.EPERM):
                    raise
            else:
                try:
                    os.replace(tmp, real)
                except BaseException:
                    os.replace(old, real)
                    raise
                shutil.rmtree(old, ignore_errors=True)
                return
    _commit_in_place(real, tmp, plan.replace)


def _commit_in_place(real: Path, tmp: Path, replace) -> None:
    """Move the previous export's entries to a trash folder in `real`, the new ones in
    (manifest.json last), then empty the trash; on failure, put everything back."""
    new = sorted((p.name for p in tmp.iterdir()), key=lambda n: (n == MANIFEST, n))
    clash = [n for n in new if n not in replace and os.path.lexists(real / n)]
    if clash:
        raise FloraError(f"{real} now holds {_names(clash)}, which appeared during the export "
                         "and would be overwritten; nothing was written",
                         "move them away and export again")
    trash = Path(tempfile.mkdtemp(prefix=f".flora-old-{os.getpid()}-", dir=real))
    moved_old, moved_new = [], []
    try:
        for n in sorted(replace, key=lambda n: (n != MANIFEST, n)):
            if os.path.lexists(real / n):
                os.replace(real / n, trash / n)
                moved_old.append(n)
        for n in new:
            _move(tmp / n, real / n)
            moved_new.append(n)
    except BaseException:
        for n in reversed(moved_new):
            _move(real / n, tmp / n)
        for n in reversed(moved_old):
            os.replace(trash / n, real / n)
        shutil.rmtree(trash, ignore_errors=True)
        raise
    shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


def _move(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        shutil.move(str(src), str(dst))
