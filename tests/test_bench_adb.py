"""flora-bench's adb transport with the real `adb` client against a TEST DOUBLE device.

There is no phone or emulator on this machine. tests/fake_adbd.py is a fake adbd (a
test double, labelled as such in its own docstring) on 127.0.0.1: the real Debian adb
client connects to it, pushes the artifact and the runner with the sync protocol and
runs shell commands, which execute on THIS x86-64 host. The runner pushed is a wrapper
around flora_export.bench.llama_main (ExecuTorch's TextLLMRunner with llama_main's
flags), so the PyTorchObserver parsing is exercised on real runner output. Nothing
here ran on a phone and no figure from it describes one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flora_export.bench import AdbTransport, BenchConfig, run_bench

pytest.importorskip("executorch")
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("adb") is None,
                                reason="needs the adb client (apt-get install adb; .ci/run does)")


def test_real_adb_client_talks_to_the_test_double(fake_phone, tmp_path):
    serial, daemon = fake_phone
    assert subprocess.run(["adb", "-s", serial, "shell", "getprop", "ro.product.model"],
                          capture_output=True, text=True).stdout.strip() == "FakePhone"
    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(300_000))
    remote = str(daemon.workdir / "sd" / "blob.bin")
    subprocess.run(["adb", "-s", serial, "push", str(src), remote], check=True,
                   capture_output=True)
    subprocess.run(["adb", "-s", serial, "pull", remote, str(tmp_path / "back.bin")], check=True,
                   capture_output=True)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (src, tmp_path / "back.bin")]
    assert digest[0] == digest[1]


def test_bench_over_adb_parses_the_runner_observer_line(fake_phone, bench_et_export, tmp_path):
    serial, daemon = fake_phone
    out = bench_et_export
    runner = tmp_path / "llama_main"
    runner.write_text(f"#!/bin/sh\nexec env PYTHONPATH={ROOT} {sys.executable} -m "
                      "flora_export.bench.llama_main \"$@\"\n")
    t = AdbTransport(serial, runner=str(runner))
    t.remote_dir = str(daemon.workdir / "data" / "local" / "tmp" / "flora-bench")
    r = run_bench({"a": str(out)}, BenchConfig(prompt_len=10, gen_len=5, runs=2, threads=1),
                  transport=t)
    dev = r["device_before"]
    assert dev["kind"] == "android" and dev["ro.product.model"] == "FakePhone"
    assert dev["ro.product.cpu.abi"] == "arm64-v8a" and r["transport"] == f"android:{serial}"
    a = r["artifacts"]["a"]
    assert a["load"]["engine"] == "native:llama_main" and len(a["samples"]) == 2
    for s in a["samples"]:
        assert s["observer"]["prompt_tokens"] == 10 and 2 <= s["generated_tokens"] <= 5
    runs = [c for c in daemon.shell_commands if "--model_path=" in c]
    assert len(runs) == 3 and all("--max_new_tokens=5" in c and "--cpu_threads=1" in c
                                  for c in runs)           # warm-up + 2 runs
    assert a["peak_rss_mb"] and a["peak_rss_mb"] > 50      # the runner's own RSS log lines
    assert not Path(t.remote_dir).exists()
