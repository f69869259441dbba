"""What every console script does with the files it writes: checks before the work,
atomic writes, one-line errors for a full or broken disk, and SIGTERM handled like SIGINT.

flora-export (its output folder: export/outdir.py), flora-train (the recipe's `out`),
flora-eval (`--json`) and flora-bench (`--out`) all use these functions, so an output
path that cannot be written is refused in one line *before* the work starts, and a
failure while writing never leaves a half-written file behind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .errors import FloraError

# ---------------------------------------------------------------- signals


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP) delivered while a command runs: cleaned up like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal number, as a shell reports a process killed by it: 130 / 143."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)


def interrupt_name(interrupt: KeyboardInterrupt) -> str:
    return signal.Signals(getattr(interrupt, "signum", signal.SIGINT)).name


@contextmanager
def termination_as_interrupt():
    """Within the block SIGTERM and SIGHUP raise `Terminated`, so every `finally` and
    `except BaseException` that cleans up after Ctrl-C (staging folders, temporary
    files, log files) runs for them too. Only the main thread can install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated(signum)

    saved = {s: signal.signal(s, raise_terminated) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


@contextmanager
def signals_deferred():
    """Block SIGINT/SIGTERM/SIGHUP during a few renames that must not be cut in two; a
    signal that arrives meanwhile is delivered (and raised) when the block ends."""
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ---------------------------------------------------------------- checks before the work


def nonempty_path(value: str | os.PathLike, option: str) -> Path:
    """`value` as a Path; an empty string (an unset shell variable) is refused, since
    Path("") is the current directory."""
    if str(value).strip() == "":
        raise FloraError(f"{option} is empty", f"give {option} a path (is a shell variable unset?)")
    return Path(value)


def real_target(path: Path, option: str) -> Path:
    """The path an output really goes to (symlinks followed); a link to nothing, or a
    path under a regular file, is refused."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise FloraError(f"{option} {path} is a symbolic link to {os.readlink(path)}, which "
                         "does not exist", f"create its target first, or use another path for {option}")
    real = Path(os.path.realpath(path))
    for p in real.parents:
        if p.exists() and not p.is_dir():
            raise FloraError(f"{option} {path} cannot be created: {p} is a file, not a directory",
                             f"use a path inside a directory for {option}")
    return real


def existing_ancestor(path: Path) -> Path:
    return next(p for p in [path, *path.parents] if p.exists())


def check_writable_dir(directory: Path, option: str, shown: Path | None = None) -> None:
    """Create and remove a probe file in `directory`; refuse in one line if that fails."""
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".flora-probe-")
    except OSError as e:
        where = f"{option} {shown}: " if shown is not None else ""
        raise FloraError(f"{where}cannot write in {directory} ({e.strerror})",
                         f"use a directory you can write to for {option}") from None
    os.close(fd)
    os.unlink(probe)


def check_free_space(directory: Path, need: int, option: str) -> None:
    """Refuse when `directory`'s file system has fewer than `need` bytes free."""
    free = shutil.disk_usage(directory).free
    if free < need:
        raise FloraError(f"not enough free space in {directory}: about {need:,} bytes needed, "
                         f"{free:,} bytes free",
                         f"free some space there, or use a path on another disk for {option}")


def check_dir_target(path: Path, option: str) -> Path:
    """An output directory: refuse a file in its place, a link to nothing, a path under a
    file or a place that cannot be written. Returns the real path (links followed)."""
    real = real_target(path, option)
    if real.exists() and not real.is_dir():
        raise FloraError(f"{option} {path} is a file, not a directory",
                         f"use a directory path for {option}; a missing one is created")
    check_writable_dir(existing_ancestor(real), option, path)
    return real


def check_file_target(path: Path, option: str, ours: Callable[[Path], bool] | None = None
                      ) -> Path:
    """An output file: refuse a directory in its place, an unwritable directory, and an
    existing file that this program did not write (`ours` recognises its own files)."""
    real = real_target(path, option)
    if real.is_dir():
        raise FloraError(f"{option} {path} is a directory", f"use a file path for {option}, e.g. "
                         f"{Path(path) / 'result.json'}")
    if real.exists() and ours is not None and not ours(real):
        raise FloraError(f"{option} {path} exists and was not written by this program; it is "
                         "left as it is", f"use another path for {option}, or move the file away")
    check_writable_dir(existing_ancestor(real.parent), option, path)
    return real


def check_run_dir(path: Path, option: str, writes: tuple[str, ...],
                  recognised: Callable[[Path], bool], prog: str) -> Path:
    """A folder a program writes a fixed set of entries into (`writes`), keeping whatever
    else is there: refuse it when it already holds one of those entries and is not
    recognised as this program's output (they would be overwritten)."""
    real = check_dir_target(path, option)
    if real.is_dir() and not recognised(real):
        clash = [n for n in writes if os.path.lexists(real / n)]
        if clash:
            raise FloraError(f"{option} {path} holds {', '.join(clash)}, which {prog} would "
                             "overwrite but did not write",
                             f"use another path for {option}, or move them away")
    return real


def json_with_keys(path: Path, keys: tuple[str, ...], limit: int = 64 << 20) -> bool:
    """True when `path` is a JSON object holding all `keys` (how a program recognises a
    result file it wrote before, to replace it)."""
    try:
        if path.stat().st_size > limit:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(k in data for k in keys)


# ---------------------------------------------------------------- writing


DISK_ERRNOS = {errno.ENOSPC: "no space left on the device",
               errno.EDQUOT: "disk quota exceeded",
               errno.EIO: "input/output error",
               errno.EROFS: "read-only file system",
               errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted"}


def write_failure(exc: BaseException, where: Path, option: str) -> FloraError | None:
    """The one-line error for a write that failed on the disk (full, quota, I/O error,
    read-only), or None when `exc` is something else. A native library that reports a
    short write as a RuntimeError counts as "full" when the disk has no room left."""
    code = getattr(exc, "errno", None)
    if not isinstance(exc, OSError) or code not in DISK_ERRNOS:
        try:
            full = shutil.disk_usage(existing_ancestor(Path(where))).free < (64 << 10)
        except OSError:
            full = False
        if not (full and isinstance(exc, Exception)):
            return None
        code = errno.ENOSPC
    fix = {errno.ENOSPC: f"free some space there, or use a path on another disk for {option}",
           errno.EDQUOT: f"free some of your quota, or use a path on another disk for {option}",
           errno.EIO: f"check the disk (dmesg), or use a path on another disk for {option}"}.get(
        code, f"use a directory you can write to for {option}")
    free = ""
    try:
        free = f", {shutil.disk_usage(existing_ancestor(Path(where))).free:,} bytes free"
    except OSError:
        pass
    return FloraError(f"writing {where} failed: {DISK_ERRNOS[code]}{free}; nothing was "
                      "written", fix)


def write_atomic(path: Path, data: bytes, option: str = "the output") -> None:
    """Write `data` to a temporary file beside `path`, flush it to disk, rename it into
    place: readers see the old file or the new one, never a part. Disk failures become
    one FloraError naming the path; the temporary file is removed in every case."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    write_file_atomic(path, write, option, suffix=".tmp")


def write_file_atomic(path: Path, write: Callable[[Path], None], option: str = "the output",
                      suffix: str | None = None) -> None:
    """Like write_atomic for a writer that needs a file name (`write(tmp_path)`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                               suffix=path.suffix if suffix is None else suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        err = write_failure(e, path, option)
        if err is not None:
            raise err from None
        raise


_UMASK: list[int] = []


def _umask() -> int:
    """The process umask (read once: os.umask can only be read by setting it)."""
    if not _UMASK:
        mask = os.umask(0o022)
        os.umask(mask)
        _UMASK.append(mask)
    return _UMASK[0]
