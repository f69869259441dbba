"""TEST DOUBLE -- a fake Android device daemon (adbd) for the real `adb` client.

NOT A PHONE. It speaks enough of the adb wire protocol (CNXN, OPEN/OKAY/WRTE/CLSE,
the `shell:` service without shell protocol v2, and the legacy `sync:` service: STAT,
SEND/DATA/DONE, RECV, QUIT) for the real Debian `adb` client to `connect`, `shell`,
`push` and `pull` against 127.0.0.1. Shell commands run on THIS machine with /bin/sh,
with a fake `getprop` (canned "FakePhone" properties) first on PATH. It exists to test
flora-bench's adb transport end to end on a machine that has no phone or emulator;
every figure it yields is this host's, not a phone's. `add_command` puts more fake
device commands on that PATH (tests/fake_flora_app.py installs `am`, `pm`, `pidof`).
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import subprocess
import threading
from pathlib import Path

A_CNXN, A_OPEN, A_OKAY, A_CLSE, A_WRTE = (0x4E584E43, 0x4E45504F, 0x59414B4F, 0x45534C43,
                                         0x45545257)
VERSION, MAXDATA = 0x01000001, 256 * 1024
PROPS = {"ro.product.manufacturer": "TestDouble", "ro.product.model": "FakePhone",
         "ro.soc.manufacturer": "none", "ro.soc.model": "host-x86_64 (fake adbd)",
         "ro.board.platform": "fake", "ro.product.cpu.abi": "arm64-v8a",
         "ro.build.version.release": "0", "ro.build.version.sdk": "0"}


def _packet(cmd: int, a0: int, a1: int, data: bytes = b"") -> bytes:
    return struct.pack("<6I", cmd, a0, a1, len(data), sum(data) & 0xFFFFFFFF,
                       cmd ^ 0xFFFFFFFF) + data


class FakeAdbd:
    """Listen on 127.0.0.1:port; one thread per client connection."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.bindir = self.workdir / "fake-bin"
        self.bindir.mkdir(parents=True, exist_ok=True)
        cases = "".join(f'  {k}) echo "{v}";;\n' for k, v in PROPS.items())
        self.add_command("getprop", f'#!/bin/sh\ncase "$1" in\n{cases}  *) echo;;\nesac\n')
        self.env = {**os.environ, "PATH": f"{self.bindir}:{os.environ['PATH']}"}
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.shell_commands: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def add_command(self, name: str, script: str) -> Path:
        """An executable `name` (script text with its #! line) first on the device's PATH."""
        path = self.bindir / name
        path.write_text(script)
        path.chmod(0o755)
        return path

    def close(self) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=_Connection(self, conn).serve, daemon=True).start()


class _Connection:
    def __init__(self, daemon: FakeAdbd, conn: socket.socket):
        self.daemon, self.conn, self.lock = daemon, conn, threading.Lock()
        self.streams: dict[int, "_SyncStream"] = {}
        self.next_id = 1

    def send(self, cmd, a0, a1, data=b""):
        with self.lock:
            self.conn.sendall(_packet(cmd, a0, a1, data))

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.conn.recv(n - len(buf))
            if not chunk:
                raise ConnectionError
            buf += chunk
        return buf

    def serve(self) -> None:
        try:
            while True:
                cmd, a0, a1, length, _, _ = struct.unpack("<6I", self._recv_exact(24))
                data = self._recv_exact(length) if length else b""
                self.handle(cmd, a0, a1, data)
        except (ConnectionError, OSError):
            self.conn.close()

    def handle(self, cmd, a0, a1, data) -> None:
        if cmd == A_CNXN:
            banner = "device::" + ";".join(f"{k}={v}" for k, v in (
                ("ro.product.name", "fake"), ("ro.product.model", "FakePhone"),
                ("ro.product.device", "fake"))) + ";features="
            self.send(A_CNXN, VERSION, MAXDATA, banner.encode())
        elif cmd == A_OPEN:
            local, self.next_id = self.next_id, self.next_id + 1
            service = data.rstrip(b"\0").decode()
            self.send(A_OKAY, local, a0)
            if service.startswith("shell:"):
                threading.Thread(target=self.shell, args=(service[6:], local, a0),
                                 daemon=True).start()
            elif service.startswith("sync:"):
                self.streams[local] = _SyncStream(self, local, a0)
            else:
                self.send(A_CLSE, local, a0)
        elif cmd == A_WRTE:
            self.send(A_OKAY, a1, a0)
            if a1 in self.streams:
                self.streams[a1].feed(data)
        elif cmd == A_CLSE:
            self.streams.pop(a1, None)

    def shell(self, command: str, local: int, remote: int) -> None:
        self.daemon.shell_commands.append(command)
        proc = subprocess.run(["/bin/sh", "-c", command], capture_output=True,
                              env=self.daemon.env, cwd=self.daemon.workdir)
        out = proc.stdout + proc.stderr
        for i in range(0, len(out), MAXDATA // 2):
            self.send(A_WRTE, local, remote, out[i:i + MAXDATA // 2])
        self.send(A_CLSE, local, remote)


class _SyncStream:
    """The legacy file sync protocol: 8-byte (id, length) requests, buffered across WRTEs."""

    def __init__(self, conn: _Connection, local: int, remote: int):
        self.conn, self.local, self.remote = conn, local, remote
        self.buf, self.file, self.path = b"", None, None

    def reply(self, data: bytes) -> None:
        self.conn.send(A_WRTE, self.local, self.remote, data)

    def feed(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 8:
            ident, n = self.buf[:4], struct.unpack("<I", self.buf[4:8])[0]
            if ident == b"DONE" and self.file is not None:   # n is the mtime here
                self.buf = self.buf[8:]
                self.file.close()
                os.chmod(self.path, self.mode)
                self.file = None
                self.reply(b"OKAY" + struct.pack("<I", 0))
                continue
            if len(self.buf) < 8 + n:
                return
            payload, self.buf = self.buf[8:8 + n], self.buf[8 + n:]
            self.request(ident, payload)

    def request(self, ident: bytes, payload: bytes) -> None:
        if ident == b"STAT":
            p = Path(payload.decode())
            st = p.stat() if p.exists() else None
            self.reply(b"STAT" + struct.pack("<3I", st.st_mode if st else 0,
                                             st.st_size if st else 0, int(st.st_mtime) if st else 0))
        elif ident == b"SEND":
            path, _, mode = payload.decode().rpartition(",")
            self.path, self.mode = Path(path), stat.S_IMODE(int(mode)) or 0o644
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "wb")
        elif ident == b"DATA" and self.file is not None:
            self.file.write(payload)
        elif ident == b"RECV":
            data = Path(payload.decode()).read_bytes()
            for i in range(0, len(data), 64 * 1024):
                chunk = data[i:i + 64 * 1024]
                self.reply(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
            self.reply(b"DONE" + struct.pack("<I", 0))
        elif ident == b"QUIT":
            self.conn.send(A_CLSE, self.local, self.remote)
