"""Output directories written atomically, the manifest, and per-stage timing."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import resource
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from ..errors import FloraError
from ..model import file_sha256

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def check_out_dir(out: Path, force: bool = False) -> None:
    """Fail early (before any work) if `out` cannot be written or would clobber other files."""
    out = Path(out).absolute()
    for p in [out, *out.parents]:
        if p.exists() and not p.is_dir():
            raise FloraError(f"output path {out} is not writable: {p} is a file",
                             "pass --out pointing to a directory path")
    existing = next(p for p in out.parents if p.exists())
    try:
        tempfile.NamedTemporaryFile(dir=existing, prefix=".flora-probe-").close()
    except OSError as e:
        raise FloraError(f"output directory {existing} is not writable ({e.strerror})",
                         "pass --out in a directory you can write to") from None
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists() and not force:
        raise FloraError(f"output directory {out} exists, is not empty and holds no flora-export "
                         "output", "choose another --out, or pass --force to replace it")


@contextmanager
def staging_dir(out: Path):
    """Yield a temporary sibling of `out`; it replaces `out` only if the block succeeds."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def file_record(path: Path) -> dict:
    if path.is_dir():   # a bundle such as a Core ML .mlpackage: sizes and hashes of its files
        files = {str(f.relative_to(path)): file_record(f)
                 for f in sorted(path.rglob("*")) if f.is_file()}
        return {"bytes": sum(r["bytes"] for r in files.values()), "files": files}
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def write_json(path: Path, data: dict) -> None:
    """Strict JSON: a non-finite number (the SQNR of an exact match is inf) becomes null,
    since apps' JSON readers (Kotlin, Swift) reject Python's bare Infinity / NaN."""
    path.write_text(json.dumps(strict_json(data), indent=2, sort_keys=False, allow_nan=False) + "\n")


def strict_json(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def peak_rss_mb() -> float:
    """The process's peak resident set so far (what `/usr/bin/time -v` reports at exit)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def rss_mb() -> float | None:
    """The process's resident set now (Linux; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


def release_free_memory() -> None:
    """Collect garbage cycles (exported programs hold many) and hand freed heap memory back
    to the OS (glibc's malloc_trim: freed blocks below its mmap threshold otherwise stay
    resident and inflate every later stage's peak), and drop this thread's widening buffer
    (storage.SCRATCH: a stage that widens no weight should not hold its 64 MB). The
    malloc_trim is a no-op where there is no glibc."""
    import ctypes
    import gc

    from ..model.storage import SCRATCH

    SCRATCH.release()
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakSampler:
    """The peak resident set while the block runs, sampled every `every` seconds by a
    daemon thread (getrusage only knows the peak of the whole run so far). A sample can
    miss a spike shorter than `every`; the run's true peak is `peak_rss_mb()`."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak = every, None
        self._stop = threading.Event()

    def _sample(self) -> None:
        now = rss_mb()
        if now is not None:
            self.peak = now if self.peak is None else max(self.peak, now)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self) -> "PeakSampler":
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


class Stages:
    """Times pipeline stages and reports each start/end to a progress callback."""

    def __init__(self, names: list[str], report: Callable[[str, int, int, float | None], None]
                 | None = None):
        self.names = names
        self.report = report or (lambda *a: None)
        self.seconds: dict[str, float] = {}
        self.rss_mb: dict[str, float] = {}        # the run's peak when the stage ended
        self.stage_peak_mb: dict[str, float] = {}  # the peak within the stage (sampled)

    @contextmanager
    def __call__(self, name: str):
        idx = self.names.index(name) + 1 if name in self.names else 0
        self.report(name, idx, len(self.names), None)
        t0 = time.perf_counter()
        with PeakSampler() as sampler:
            yield
            release_free_memory()
        self.seconds[name] = round(time.perf_counter() - t0, 3)
        self.rss_mb[name] = peak_rss_mb()
        if sampler.peak is not None:
            self.stage_peak_mb[name] = sampler.peak
        self.report(name, idx, len(self.names), self.seconds[name])
        log.info("stage %s: %.2f s, peak RSS in stage %s MB (run %.0f MB)", name,
                 self.seconds[name], self.stage_peak_mb.get(name, "?"), self.rss_mb[name])


def versions() -> dict:
    import torch
    import torchao

    from ..version import __version__
    return {"flora_export": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "torchao": torchao.__version__}
