"""flora-bench's ssh transport against a real OpenSSH server on loopback.

The "board" is this x86-64 machine: a real sshd on 127.0.0.1 with a generated key, the
artifact copied over ssh into a scratch directory, and the run done either by the
flora-bench worker started through ssh, or by a llama_main-style native-runner command
(here flora_export.bench.llama_main: ExecuTorch's TextLLMRunner) whose PyTorchObserver
line is parsed. No ARM board is involved; the figures are this machine's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flora_export.bench import BenchConfig, SshTransport, run_bench

from conftest import free_port

pytest.importorskip("executorch")
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
    reason="needs OpenSSH (apt-get install openssh-server openssh-client; .ci/run installs it)")


@pytest.fixture(scope="module")
def loopback_sshd(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\nPermitRootLogin yes\n"
        "PubkeyAuthentication yes\n")
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                            stderr=open(d / "sshd.log", "w"))
    opts = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR"]
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True,
                                                   text=True).stdout.strip()
    host = f"{user}@127.0.0.1"
    for _ in range(50):
        ok = subprocess.run(["ssh", "-o", "BatchMode=yes", *opts, "-p", str(port), "-i",
                             str(d / "user_key"), host, "true"], capture_output=True)
        if ok.returncode == 0:
            break
        time.sleep(0.2)
    else:
        proc.terminate()
        pytest.skip(f"loopback sshd did not accept the key: {(d / 'sshd.log').read_text()[-300:]}")
    yield {"host": host, "port": port, "key": str(d / "user_key"), "opts": opts, "dir": d}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def et_export(bench_et_export):
    return bench_et_export


def _transport(sshd, **kw) -> SshTransport:
    t = SshTransport(sshd["host"], sshd["port"], sshd["key"], extra_opts=sshd["opts"],
                     python=f"env PYTHONPATH={ROOT} {sys.executable}", **kw)
    t.remote_dir = str(sshd["dir"] / "board")
    return t


def test_worker_over_real_ssh(loopback_sshd, et_export):
    t = _transport(loopback_sshd)
    r = run_bench({"a": str(et_export)}, BenchConfig(prompt_len=10, gen_len=5, runs=2, threads=1),
                  transport=t)
    a = r["artifacts"]["a"]
    assert r["transport"] == f"ssh:{loopback_sshd['host']}"
    assert [s["generated_tokens"] for s in a["samples"]] == [5, 5] and a["peak_rss_mb"] > 50
    assert r["device_before"]["kind"] == "ssh" and r["device_before"]["arch"] == os.uname().machine
    assert r["device_before"]["cores"] == os.cpu_count()
    assert len(r["device_after"]["loadavg"]) == 3
    assert not Path(t.remote_dir).exists()          # the board's scratch directory is removed


def test_native_runner_over_real_ssh(loopback_sshd, et_export, tmp_path):
    runner = tmp_path / "llama_main"
    runner.write_text(f"#!/bin/sh\nexec env PYTHONPATH={ROOT} {sys.executable} -m "
                      "flora_export.bench.llama_main \"$@\"\n")
    runner.chmod(0o755)
    t = _transport(loopback_sshd, runner=str(runner))
    r = run_bench({"a": str(et_export)}, BenchConfig(prompt_len=10, gen_len=5, runs=2, threads=1),
                  transport=t)
    a = r["artifacts"]["a"]
    assert a["load"]["engine"] == "native:llama_main"
    for s in a["samples"]:
        assert s["prompt_tokens"] == 10 and 2 <= s["generated_tokens"] <= 5
        assert s["observer"]["prompt_tokens"] == 10 and s["tpot_ms"] >= 0
