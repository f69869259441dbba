"""Where artifacts run: this host, a Linux board over ssh, an Android phone over adb.

A transport stages an artifact directory on its device, opens a session per artifact
and describes the device (before and after the runs: CPU frequencies, thermal zones,
load). Sessions:
  WorkerSession   the Python worker (flora_export.bench.worker) in its own process,
                  locally or through `ssh HOST python3 -m flora_export.bench.worker`
  CommandSession  a native LLM runner (ExecuTorch's `llama_main` built for the device)
                  started once per run; its PyTorchObserver stats line gives the figures
  AppSession      (android, `--runner app`) the flora chat app's benchmark mode: one
                  launch per artifact runs warm-up + runs (a batch session, bench/app.py)
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
from pathlib import Path

from ..adb import AdbDevice
from ..errors import FloraError
from .app import RESULT_DIR, AppSession, check_installed
from .machine import host_facts, loadavg
from .runners import EAGER_PREFIX, read_manifest
from .stats import observer_sample, parse_observer, runner_peak_rss_mb

_ROOT = Path(__file__).resolve().parents[2]      # the directory that holds flora_export/
APP_RUNNER = "app"                                # --runner app: the flora chat app (android)


class WorkerSession:
    """One artifact in a worker process; `command` starts the worker (stdin/stdout JSON)."""

    def __init__(self, command: list[str], spec: str, engine: str | None, threads: int,
                 env: dict | None = None):
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env=env, text=True, bufsize=1)
        self.info = self._call({"op": "load", "spec": spec, "engine": engine,
                                "threads": threads})["info"]

    def _call(self, req: dict) -> dict:
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            raise FloraError(f"the benchmark worker exited: {self._log_tail()}",
                             "check that the artifact runs (see the worker log above)")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise FloraError(reply.get("error", "worker error"), reply.get("fix"))
        return reply

    def _log_tail(self) -> str:
        self.log.seek(0)
        lines = [ln for ln in self.log.read().decode(errors="replace").splitlines() if ln.strip()]
        return " | ".join(lines[-3:]) or "no output"

    def run(self, prompt_ids: list[int], prompt_text: str, gen_len: int) -> dict:
        return self._call({"op": "run", "prompt_ids": prompt_ids, "prompt_text": prompt_text,
                           "gen_len": gen_len})["sample"]

    def close(self) -> dict:
        try:
            reply = self._call({"op": "exit"})
        finally:
            self.proc.wait(timeout=60)
            self.log.close()
        return {"peak_rss_mb": reply.get("peak_rss_mb")}


class LocalTransport:
    """This machine; each artifact in its own worker process."""

    name = "host"

    def describe(self) -> dict:
        return {**host_facts(), "loadavg": loadavg()}

    def stage(self, name: str, spec: str) -> str:
        return spec

    def worker_command(self) -> tuple[list[str], dict]:
        import sys
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        return [sys.executable, "-m", "flora_export.bench.worker"], env

    def open(self, spec: str, engine: str | None, threads: int):
        cmd, env = self.worker_command()
        return WorkerSession(cmd, spec, engine, threads, env)

    def close(self) -> None:
        pass


_FACTS_SH = ("uname -m; nproc; cat /proc/loadavg; "
             "cat /sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq 2>/dev/null | tr '\\n' ' '; "
             "echo; for z in /sys/class/thermal/thermal_zone*; do "
             "echo \"$(cat $z/type 2>/dev/null)=$(cat $z/temp 2>/dev/null)\"; done | tr '\\n' ' '")


def parse_facts(text: str) -> dict:
    """Output of _FACTS_SH -> arch, cores, load, CPU kHz list, thermal zones (°C)."""
    lines = (text.splitlines() + [""] * 5)[:5]
    thermal = {}
    for item in lines[4].split():
        zone, _, temp = item.partition("=")
        if temp.lstrip("-").isdigit():
            thermal[zone or "zone"] = int(temp) / 1000 if abs(int(temp)) > 200 else int(temp)
    return {"arch": lines[0].strip(), "cores": int(lines[1]) if lines[1].strip().isdigit() else None,
            "loadavg": [float(x) for x in lines[2].split()[:3]] if lines[2].strip() else None,
            "cpu_khz": [int(x) for x in lines[3].split() if x.isdigit()], "thermal_c": thermal}


class CommandSession:
    """A native runner started once per run through `execute(cmd) -> (rc, output)`."""

    def __init__(self, execute, command: str, info: dict):
        self.execute, self.command, self.info, self.peak = execute, command, info, None

    def run(self, prompt_ids: list[int], prompt_text: str, gen_len: int) -> dict:
        cmd = self.command.format(prompt=shlex.quote(prompt_text), gen_len=gen_len,
                                  threads=self.info["threads"])
        rc, out = self.execute(cmd)
        if rc != 0:
            raise FloraError(f"the runner failed (exit {rc}): {out.strip()[-300:]}",
                             "check --runner and that it runs on the device")
        rss = runner_peak_rss_mb(out)
        self.peak = max(filter(None, [self.peak, rss]), default=None)
        stats = parse_observer(out)
        return {**observer_sample(stats), "observer": stats}

    def close(self) -> dict:
        return {"peak_rss_mb": self.peak}


RUNNER_ARGS = ("--model_path={model} --tokenizer_path={tokenizer} --prompt={{prompt}} "
               "--temperature=0 --seq_len={seq_len} --max_new_tokens={{gen_len}} "
               "--cpu_threads={{threads}}")


class _RemoteTransport:
    """What ssh and adb share: staging directories and native-runner sessions."""

    remote_dir = "/tmp/flora-bench"

    def __init__(self, runner: str | None, runner_args: str = RUNNER_ARGS):
        self.runner, self.runner_args, self.staged = runner, runner_args, {}
        self.runner_remote = None

    def shell(self, cmd: str, check: bool = True) -> tuple[int, str]:
        raise NotImplementedError

    def push(self, local: Path, remote: str) -> None:
        raise NotImplementedError

    def stage(self, name: str, spec: str) -> str:
        if spec.startswith(EAGER_PREFIX):
            return spec
        remote = f"{self.remote_dir}/{name}"
        self.shell(f"rm -rf {shlex.quote(remote)} && mkdir -p {shlex.quote(remote)}")
        self.push(Path(spec), remote)
        self.staged[remote] = Path(spec)
        if self.runner and self.runner != APP_RUNNER and self.runner_remote is None:
            self.runner_remote = f"{self.remote_dir}/{Path(self.runner).name}"
            self.push(Path(self.runner), self.runner_remote)
            self.shell(f"chmod 755 {shlex.quote(self.runner_remote)}")
        return remote

    def command_session(self, remote: str, threads: int) -> CommandSession:
        local = self.staged[remote]
        manifest = read_manifest(local) or {}
        pte = next(local.glob("*.pte"), None)
        tok = next(local.glob("tokenizer*"), None)
        if pte is None or tok is None:
            raise FloraError(f"{local} has no .pte and tokenizer for a native runner",
                             "pass an ExecuTorch export directory")
        seq = manifest.get("runtime", {}).get("max_seq_len", 128)
        args = self.runner_args.format(model=shlex.quote(f"{remote}/{pte.name}"),
                                       tokenizer=shlex.quote(f"{remote}/{tok.name}"), seq_len=seq)
        return CommandSession(lambda c: self.shell(c, check=False),
                              f"{shlex.quote(self.runner_remote)} {args}",
                              {"engine": f"native:{Path(self.runner).name}", "threads": threads,
                               "vocab_size": None, "bos_id": None, "max_seq_len": seq})

    def describe(self) -> dict:
        return parse_facts(self.shell(_FACTS_SH)[1])

    def close(self) -> None:
        self.shell(f"rm -rf {shlex.quote(self.remote_dir)}", check=False)


class SshTransport(_RemoteTransport):
    """A Linux board over ssh (key authentication, batch mode). Artifacts are copied with
    tar over ssh; with `runner` a native llama_main-style binary runs them, otherwise the
    board's own `python3 -m flora_export.bench.worker` (flora-export installed there)."""

    def __init__(self, host: str, port: int | None = None, identity: str | None = None,
                 python: str = "python3", runner: str | None = None,
                 runner_args: str = RUNNER_ARGS, extra_opts: list[str] | None = None,
                 known_hosts: str | None = None):
        super().__init__(runner, runner_args)
        self.host, self.python, self.name = host, python, f"ssh:{host}"
        self.base = ["ssh", "-o", "BatchMode=yes", *(extra_opts or [])]
        if known_hosts:           # the board's host key, from a file of its own, checked
            if not Path(known_hosts).is_file():
                raise FloraError(f"known_hosts file {known_hosts} does not exist",
                                 "pass the file that holds the board's host key "
                                 "(ssh-keyscan -p PORT HOST > FILE, checked by hand)")
            self.base += ["-o", f"UserKnownHostsFile={known_hosts}",
                          "-o", "StrictHostKeyChecking=yes"]
        if port:
            self.base += ["-p", str(port)]
        if identity:
            self.base += ["-i", identity]

    def shell(self, cmd: str, check: bool = True) -> tuple[int, str]:
        proc = subprocess.run([*self.base, self.host, cmd], capture_output=True, text=True,
                              errors="replace")
        if check and proc.returncode != 0:
            raise FloraError(f"ssh {self.host} failed (exit {proc.returncode}): "
                             f"{proc.stderr.strip()[-300:]}", "check the host, key and port")
        return proc.returncode, proc.stdout + proc.stderr

    def push(self, local: Path, remote: str) -> None:
        if local.is_dir():
            tar = subprocess.Popen(["tar", "-C", str(local), "-cf", "-", "."], stdout=subprocess.PIPE)
            dest = f"mkdir -p {shlex.quote(remote)} && tar -C {shlex.quote(remote)} -xf -"
        else:
            tar = subprocess.Popen(["cat", str(local)], stdout=subprocess.PIPE)
            dest = f"cat > {shlex.quote(remote)}"
        proc = subprocess.run([*self.base, self.host, dest], stdin=tar.stdout, capture_output=True)
        tar.wait()
        if proc.returncode or tar.returncode:
            raise FloraError(f"copying {local} to {self.host}:{remote} failed: "
                             f"{proc.stderr.decode(errors='replace').strip()[-300:]}",
                             "check disk space and permissions on the board")

    def describe(self) -> dict:
        facts = super().describe()
        _, cpu = self.shell("grep -m1 -i 'model name\\|hardware' /proc/cpuinfo | cut -d: -f2",
                            check=False)
        return {"kind": "ssh", "host": self.host, "cpu": cpu.strip(), **facts}

    def open(self, spec: str, engine: str | None, threads: int):
        if self.runner:
            return self.command_session(spec, threads)
        return WorkerSession([*self.base, self.host, f"{self.python} -m flora_export.bench.worker"],
                             spec, engine, threads)


class AdbTransport(_RemoteTransport):
    """An Android device over adb: artifacts (and a native runner) go to /data/local/tmp.
    With a runner binary (ExecuTorch's llama_main built with the NDK) each run starts it
    and parses its PyTorchObserver line; with runner "app" the flora chat app's
    benchmark mode runs each artifact (AppSession). Device facts: getprop and sysfs."""

    remote_dir = "/data/local/tmp/flora-bench"
    app_result_dir = RESULT_DIR          # where the app writes its reports
    app_poll_s = 1.0                     # how often to look for a report
    PROPS = ("ro.product.manufacturer", "ro.product.model", "ro.soc.manufacturer", "ro.soc.model",
             "ro.board.platform", "ro.product.cpu.abi", "ro.build.version.release",
             "ro.build.version.sdk")

    def __init__(self, serial: str | None = None, runner: str | None = None,
                 runner_args: str = RUNNER_ARGS, adb: str = "adb",
                 app_timeout_s: float | None = None):
        if not runner:
            raise FloraError("--device android needs a native runner or the flora chat app",
                             "pass --runner app (the flora chat app, android_demo/README.md) or "
                             "--runner PATH/TO/llama_main (built for arm64-v8a with the NDK; see "
                             "benchmarks/README.md)")
        super().__init__(runner, runner_args)
        self.device = AdbDevice(serial, adb)
        self.name = f"android:{serial}" if serial else "android"
        self.app_timeout_s, self.app_apk = app_timeout_s, None

    def shell(self, cmd: str, check: bool = True) -> tuple[int, str]:
        return self.device.shell(cmd, check)

    def push(self, local: Path, remote: str) -> None:
        self.device.push(local, remote)

    def stage(self, name: str, spec: str) -> str:
        remote = super().stage(name, spec)
        if self.runner == APP_RUNNER:
            self.device.chmod_readable(self.remote_dir)      # the app reads it as another user
        return remote

    def describe(self) -> dict:
        if self.device.serial is None:          # one clear error for none or several devices
            self.device.select()
        _, props = self.shell("; ".join(f"echo {p}=$(getprop {p})" for p in self.PROPS))
        facts = {k: v for k, _, v in (ln.partition("=") for ln in props.splitlines()) if k}
        return {"kind": "android", **facts, **super().describe()}

    def open(self, spec: str, engine: str | None, threads: int):
        if self.runner != APP_RUNNER:
            return self.command_session(spec, threads)
        if self.app_apk is None:
            self.app_apk = check_installed(self.device)
        manifest = read_manifest(self.staged[spec]) or {}
        return AppSession(self.device, spec, self.app_result_dir, self.app_timeout_s,
                          self.app_poll_s, max_seq_len=manifest.get("runtime", {}).get("max_seq_len"))


def make_transport(device: str, runner: str | None = None, ssh_port: int | None = None,
                   ssh_identity: str | None = None, remote_python: str = "python3",
                   app_timeout_s: float | None = None, ssh_known_hosts: str | None = None):
    """`host` | `android[:SERIAL]` | `ssh:[USER@]HOST`; runner "app" only for android."""
    kind, _, target = device.partition(":")
    if runner == APP_RUNNER and kind != "android":
        raise FloraError("--runner app (the flora chat app) runs only on an Android device",
                         "pass --device android[:SERIAL]")
    if device == "host":
        return LocalTransport()
    if kind == "android":
        return AdbTransport(target or None, runner, app_timeout_s=app_timeout_s)
    if kind == "ssh" and target:
        return SshTransport(target, ssh_port, ssh_identity, remote_python, runner,
                            known_hosts=ssh_known_hosts)
    raise FloraError(f"unknown device {device!r}", "use host, android[:SERIAL] or ssh:HOST")
