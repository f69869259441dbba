"""`flora-export --push`: copy an Android export to a connected phone for the chat app.

The output directory goes to /data/local/tmp/flora/<name> (the directory's name) with
`adb push`, file by file, into `<dir>.partial`; every file is checked on the device
(sha256sum, or its size where the device has no sha256sum), the copy is renamed into
place and made readable to apps (chmod -R a+rX), so the flora chat app
(android_demo/) can open it:

    adb shell am start -n dev.flora.chat/.ChatActivity --es model /data/local/tmp/flora/<name>
"""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path
from typing import Callable

from ..adb import AdbDevice
from ..bench.app import CHAT_ACTIVITY
from ..errors import FloraError
from ..model import file_sha256
from .targets import TARGETS

log = logging.getLogger(__name__)

REMOTE_ROOT = "/data/local/tmp/flora"
PUSH_BACKENDS = ("executorch-xnnpack",)      # what the chat app runs


def pushable_targets() -> list[str]:
    return [name for name, row in TARGETS.items() if set(row.backends) <= set(PUSH_BACKENDS)]


def check_pushable(target: str) -> None:
    if target not in pushable_targets():
        raise FloraError(f"--push copies an export for the Android chat app; target {target!r} "
                         "is not one", f"use --push with --target {' or '.join(pushable_targets())}")


def remote_dir_for(out: Path, push_to: str | None = None) -> str:
    """--push-to, else REMOTE_ROOT/<output directory's name>."""
    remote = (push_to or f"{REMOTE_ROOT}/{Path(out).resolve().name}").rstrip("/")
    if not remote.startswith("/") or remote.count("/") < 2:
        raise FloraError(f"device directory {remote!r} is not an absolute path below the root",
                         f"pass --push-to {REMOTE_ROOT}/NAME")
    return remote


def open_command(remote: str, serial: str | None = None) -> str:
    """The adb command that opens `remote` in the flora chat app."""
    adb = f"adb -s {shlex.quote(serial)}" if serial else "adb"
    return f"{adb} shell am start -n {CHAT_ACTIVITY} --es model {shlex.quote(remote)}"


def push_export(out: Path, device: AdbDevice, remote: str,
                progress: Callable | None = None) -> dict:
    """Copy `out` to `remote` on `device`, verify it and make it readable; returns what was
    copied: {"remote", "files", "bytes", "check"} (check: "sha256" or "size")."""
    out, step = Path(out), progress or (lambda *a: None)
    local = {str(f.relative_to(out)): f for f in sorted(out.rglob("*")) if f.is_file()}
    if not local:
        raise FloraError(f"{out} holds no files to push", "export first (flora-export --target "
                         "android --out DIR)")
    q, partial = shlex.quote, f"{remote}.partial"
    device.shell(f"rm -rf {q(partial)} && mkdir -p {q(partial)}")
    step("copy to the device", 1, 2, None)
    t0 = time.perf_counter()
    device.push(out, partial)
    step("copy to the device", 1, 2, time.perf_counter() - t0)
    step("check on the device", 2, 2, None)
    t0 = time.perf_counter()
    check = _verify(device, partial, local)
    device.shell(f"rm -rf {q(remote)} && mv {q(partial)} {q(remote)}")
    device.chmod_readable(remote)
    parent = remote.rsplit("/", 1)[0]
    if device.shell(f"chmod a+rx {q(parent)}", check=False)[0] != 0:
        log.warning("could not make %s traversable for apps (chmod a+rx)", parent)
    step("check on the device", 2, 2, time.perf_counter() - t0)
    return {"remote": remote, "files": len(local),
            "bytes": sum(f.stat().st_size for f in local.values()), "check": check}


def _verify(device: AdbDevice, remote: str, local: dict[str, Path]) -> str:
    """sha256 (or, without sha256sum on the device, the size) of every copied file."""
    names = " ".join(shlex.quote(r) for r in local)
    script = (f"cd {shlex.quote(remote)} && if command -v sha256sum >/dev/null; then "
              f"echo mode=sha256; sha256sum -- {names}; else echo mode=size; "
              f"for f in {names}; do echo \"$(wc -c < \"$f\") $f\"; done; fi")
    lines = device.shell(script)[1].splitlines()
    mode = next((ln[5:].strip() for ln in lines if ln.startswith("mode=")), None)
    got = {}
    for ln in lines:
        value, _, name = ln.strip().partition(" ")
        if name:
            got[name.strip().lstrip("*")] = value
    for rel, f in local.items():
        want = file_sha256(f) if mode == "sha256" else str(f.stat().st_size)
        if got.get(rel) != want:
            raise FloraError(f"{rel} differs on the device after the copy ({mode} "
                             f"{got.get(rel) or 'missing'}, expected {want})",
                             "push again and check the device's free space (adb shell df "
                             f"{shlex.quote(remote.rsplit('/', 1)[0])})")
    return mode or "size"
