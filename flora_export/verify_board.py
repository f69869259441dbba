"""Where `flora-export verify` runs an artifact: this machine, or a Linux board over ssh.

Either way the board side is flora_export/board.py (run as a script: on the board it is
sent on stdin), which replies with one JSON line and writes the logits to a safetensors
file; this side reads both back.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import FloraError

BOARD_PY = Path(__file__).with_name("board.py")
LOGITS = "board_logits.safetensors"


def _reply(proc_rc: int, stdout: str, stderr: str, where: str) -> dict:
    """The board's JSON reply; one clear error for a crash, a missing runtime, a bad CPU."""
    line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith("{")), None)
    if line is None:
        sig = -proc_rc if proc_rc < 0 else proc_rc - 128 if proc_rc > 128 else None
        name = signal.Signals(sig).name if sig and sig in signal.Signals._value2member_map_ else None
        tail = " | ".join(ln for ln in stderr.strip().splitlines()[-2:]) or "no output"
        raise FloraError(f"the verification run on {where} died "
                         f"({name or f'exit {proc_rc}'}): {tail[-300:]}",
                         "check that the runtime wheels run on this CPU (flora-export verify -v)")
    reply = json.loads(line)
    if reply.get("unsupported"):
        raise FloraError(f"{where} cannot run {reply['backend']}: {reply['unsupported']}",
                         "verify on an ARMv8.1+ board")
    if not reply.get("ok"):
        raise FloraError(f"the verification run on {where} failed: {reply.get('error')}",
                         "check that the board has the runtime wheels "
                         "(executorch / onnxruntime, numpy, safetensors)")
    return reply


def _load_logits(data: bytes) -> dict:
    from safetensors.torch import load

    return load(data)


def _job(exports: list[tuple], dirs: list[str], outs: list[str], threads: int) -> str:
    """exports: (folder, backends, tokenizer probes or None) -> board.py's JSON job."""
    return json.dumps({"exports": [{"dir": d, "out": o, "backends": e[1],
                                    "tokenizer": e[2] if len(e) > 2 else None}
                                   for e, d, o in zip(exports, dirs, outs)],
                       "threads": threads})


def stage_lib(where: Path) -> Path:
    """The modules board.py imports from flora_export (the runtimes' tokenizers), as a
    package without flora_export's own __init__ (which needs torch)."""
    pkg = where / "flora_export"
    (pkg / "export").mkdir(parents=True)
    for init in (pkg / "__init__.py", pkg / "export" / "__init__.py"):
        init.write_text("")
    src = Path(__file__).parent
    shutil.copy(src / "utf8.py", pkg / "utf8.py")
    shutil.copy(src / "export" / "tokenizer_runtimes.py", pkg / "export" / "tokenizer_runtimes.py")
    return where


class LocalBoard:
    """This machine, in a child process (native crashes stay there), with the same staged
    modules as a board."""

    name = "host"

    def run(self, exports: list[tuple], threads: int) -> tuple[dict, list]:
        with tempfile.TemporaryDirectory(prefix="flora-verify-") as tmp:
            outs = [str(Path(tmp) / f"{i}-{LOGITS}") for i in range(len(exports))]
            job = _job(exports, [str(Path(e[0]).absolute()) for e in exports], outs, threads)
            lib = stage_lib(Path(tmp) / "lib")
            proc = subprocess.run([sys.executable, str(BOARD_PY), "run", job],
                                  capture_output=True, text=True, errors="replace",
                                  env={**os.environ, "PYTHONPATH": str(lib)})
            reply = _reply(proc.returncode, proc.stdout, proc.stderr, self.name)
            return reply, [_load_logits(Path(o).read_bytes()) for o in outs]


class SshBoard:
    """A Linux board over ssh: the exports are copied to a scratch directory there,
    board.py runs once on stdin for all of them, the logits files come back over the
    same connection options."""

    def __init__(self, host: str, port: int | None, identity: str | None,
                 known_hosts: str | None, python: str):
        from .bench.transports import SshTransport

        self.t = SshTransport(host, port, identity, python=python, known_hosts=known_hosts)
        self.t.remote_dir = f"/tmp/flora-verify-{os.getpid()}"
        self.name, self.python = f"ssh:{host}", python

    def run(self, exports: list[tuple], threads: int) -> tuple[dict, list]:
        t, remote = self.t, self.t.remote_dir
        dirs = [f"{remote}/{i}" for i in range(len(exports))]
        outs = [f"{d}/{LOGITS}" for d in dirs]
        try:
            t.shell(f"rm -rf {shlex.quote(remote)} && mkdir -p {shlex.quote(remote)}")
            with tempfile.TemporaryDirectory(prefix="flora-verify-lib-") as tmp:
                t.push(stage_lib(Path(tmp) / "lib"), f"{remote}/lib")
            for e, d in zip(exports, dirs):
                t.push(Path(e[0]), f"{d}/export")
            job = _job(exports, [f"{d}/export" for d in dirs], outs, threads)
            proc = subprocess.run([*t.base, t.host, f"PYTHONPATH={shlex.quote(remote + '/lib')} "
                                   f"{self.python} - run {shlex.quote(job)}"],
                                  input=BOARD_PY.read_bytes(), capture_output=True)
            reply = _reply(proc.returncode, proc.stdout.decode(errors="replace"),
                           proc.stderr.decode(errors="replace"), self.name)
            return reply, [self._fetch(o) for o in outs]
        finally:
            t.close()

    def _fetch(self, remote: str) -> dict:
        got = subprocess.run([*self.t.base, self.t.host, f"cat {shlex.quote(remote)}"],
                             capture_output=True)
        if got.returncode:
            raise FloraError(f"reading the logits back from {self.name} failed: "
                             f"{got.stderr.decode(errors='replace').strip()[-300:]}",
                             "check disk space on the board")
        return _load_logits(got.stdout)


def make_board(args):
    device = args.device
    kind, _, target = device.partition(":")
    if device == "host":
        return LocalBoard()
    if kind == "android":
        raise FloraError("flora-export verify --device android needs an Android build of the "
                         "step runner (the check drives the runtime from Python, which a phone "
                         "does not have)", "verify on an arm64 Linux board with --device "
                         "ssh:HOST (same ARM64 kernels), or run the export in the flora chat app")
    if kind == "ssh" and target:
        return SshBoard(target, args.ssh_port, args.ssh_identity, args.ssh_known_hosts,
                        args.remote_python)
    raise FloraError(f"unknown device {device!r}", "use host, ssh:[USER@]HOST or android[:SERIAL]")
