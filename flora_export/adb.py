"""An Android device through the `adb` client: shell commands, file copies, device choice.

Used by `flora-bench --device android` (flora_export.bench.transports.AdbTransport) and
`flora-export --push` (flora_export.export.push). Every failure is a FloraError naming
the problem and the fix.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from .errors import FloraError

ADB_FIX = "install Android platform-tools (Debian/Ubuntu: apt-get install adb) or put adb on PATH"


def parse_devices(text: str) -> list[tuple[str, str]]:
    """`adb devices` output -> [(serial, state)], state: device, unauthorized, offline, ..."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith(("List of devices", "*")):
            out.append((parts[0], parts[1]))
    return out


def choose_device(devices: list[tuple[str, str]], serial: str | None) -> str:
    """The serial to use: `serial` if it is connected, else the only device; a clear
    error for none, several, or one that is not ready (unauthorized, offline)."""
    if serial:
        found = [d for d in devices if d[0] == serial]
        if not found:
            listed = ", ".join(s for s, _ in devices) or "none"
            raise FloraError(f"device {serial} is not connected (connected: {listed})",
                             "check `adb devices` and the serial (adb connect HOST:PORT for "
                             "a device over the network)")
        devices = found
    if not devices:
        raise FloraError("no Android device is connected",
                         "connect a phone with USB debugging on and check `adb devices`")
    if len(devices) > 1:
        raise FloraError(f"{len(devices)} Android devices are connected "
                         f"({', '.join(s for s, _ in devices)})", "pick one with --serial SERIAL")
    name, state = devices[0]
    if state != "device":
        raise FloraError(f"device {name} is {state}",
                         "unlock the phone and accept its USB debugging prompt"
                         if state == "unauthorized" else "reconnect it and check `adb devices`")
    return name


class AdbDevice:
    """One device (`serial`, or adb's only device when None) through the `adb` client."""

    def __init__(self, serial: str | None = None, adb: str = "adb"):
        self.serial, self.adb = serial, adb

    @property
    def base(self) -> list[str]:
        return [self.adb] + (["-s", self.serial] if self.serial else [])

    def run(self, *args: str, check: bool = True, device: bool = True) -> subprocess.CompletedProcess:
        """`adb [-s SERIAL] ARGS` (without -s when `device` is False)."""
        cmd = [*(self.base if device else [self.adb]), *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
        except FileNotFoundError:
            raise FloraError(f"the adb client ({self.adb}) is not installed", ADB_FIX) from None
        if check and proc.returncode != 0:
            raise FloraError(f"adb {' '.join(args[:2])} failed: "
                             f"{(proc.stderr or proc.stdout).strip()[-300:]}",
                             "check `adb devices` and the device serial")
        return proc

    def select(self) -> str:
        """Check that the device is there and ready; fix `serial` to it."""
        self.serial = choose_device(parse_devices(self.run("devices", device=False).stdout),
                                    self.serial)
        return self.serial

    def shell(self, cmd: str, check: bool = True) -> tuple[int, str]:
        """(exit status, stdout + stderr) of `cmd` in the device's shell. The status is
        echoed by the command itself: old adb clients and devices drop it."""
        proc = self.run("shell", f"( {cmd} ) 2>&1; echo __rc=$?", check=check)
        out = proc.stdout + proc.stderr
        rc_line = out.rstrip().rsplit("__rc=", 1)
        rc = int(rc_line[1].split()[0]) if len(rc_line) == 2 and rc_line[1].split() else proc.returncode
        if check and rc != 0:
            raise FloraError(f"adb shell failed (exit {rc}): {out.strip()[-300:]}",
                             "check the device and its free space")
        return rc, rc_line[0]

    def push(self, local: Path, remote: str) -> list[str]:
        """Copy a file, or every file under a directory (keeping relative paths), to
        `remote`; returns the relative paths copied."""
        local = Path(local)
        if not local.is_dir():
            self.run("push", str(local), remote)
            return [local.name]
        rel = sorted(str(f.relative_to(local)) for f in local.rglob("*") if f.is_file())
        for r in rel:
            self.run("push", str(local / r), f"{remote}/{r}")
        return rel

    def pull(self, remote: str, local: Path) -> None:
        self.run("pull", remote, str(local))

    def chmod_readable(self, remote: str) -> None:
        """Let apps read `remote` (and traverse its directories): chmod -R a+rX."""
        self.shell(f"chmod -R a+rX {shlex.quote(remote)}")
