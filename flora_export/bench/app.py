"""The flora chat app's benchmark mode as a flora-bench session (`--runner app`).

The contract is android_demo/README.md, section "Benchmark mode": flora-bench writes the
prompt to a JSON file on the device, starts `dev.flora.chat/.BenchmarkActivity` with
`am start -S -W` and the extras below, and polls for the result file the app writes
(atomically) in its external files directory. One launch loads the model once and runs
warm-up + measured generations back to back in a fresh process, so an app session is a
*batch* session (`run_batch`): the harness runs each artifact's batch in turn instead of
interleaving single runs (see flora_export.bench.harness).

Figures come from each run's `observer` (ExecuTorch's runner stats, the same
definitions as llama_main's PyTorchObserver line) when present, else from the app's own
clock; peak RSS is the benchmark process's VmHWM as the app reports it.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import tempfile
import time
from pathlib import Path

from ..errors import FloraError
from .result import artifact_entry, pick_baseline, ratios
from .stats import observer_sample

log = logging.getLogger(__name__)

APP_PACKAGE = "dev.flora.chat"
BENCH_ACTIVITY = f"{APP_PACKAGE}/.BenchmarkActivity"
CHAT_ACTIVITY = f"{APP_PACKAGE}/.ChatActivity"
BENCH_PROCESS = f"{APP_PACKAGE}:bench"
RESULT_DIR = f"/sdcard/Android/data/{APP_PACKAGE}/files/bench"
REPORT_FORMAT = "flora-chat-bench/1"
LOG_TAG = "FloraBench"
INSTALL_FIX = ("build and install it with Gradle: cd android_demo && ./gradlew installDebug "
               "(android_demo/README.md)")
APP_FIGURES = ("ttft_ms", "tpot_ms", "prefill_tps", "decode_tps", "prompt_tokens",
               "generated_tokens")
_LOGCAT = f"see what the app did: adb logcat -s {LOG_TAG}"


def parse_app_report(report: dict) -> tuple[list[dict], float | None, dict]:
    """A `flora-chat-bench/1` report -> (one sample per measured run, peak RSS MB, facts
    about the app, device and model). Raises FloraError for another format or an error
    status (with the app's own message)."""
    fmt = report.get("format") if isinstance(report, dict) else None
    if fmt != REPORT_FORMAT:
        raise FloraError(f"the app wrote a {fmt!r} report; this flora-bench reads "
                         f"{REPORT_FORMAT!r}", "install the app built from this flora-export "
                         "version (android_demo/README.md)")
    if report.get("status") != "ok":
        raise FloraError(f"the app's benchmark failed ({report.get('status')}): "
                         f"{report.get('error') or 'no message'}",
                         f"check that the model directory is a flora-export --target android "
                         f"output; {_LOGCAT}")
    samples = [run_sample(r) for r in report.get("runs") or [] if not r.get("warmup")]
    app = report.get("app") or {}
    load_ms = report.get("load_ms")
    info = {"engine": f"app:{app.get('package', APP_PACKAGE)} {app.get('version', '?')}".strip(),
            "threads": None, "vocab_size": None, "bos_id": None,
            "load_s": round(load_ms / 1e3, 3) if load_ms is not None else None,
            "run_id": report.get("run_id"), "app": app, "device": report.get("device"),
            "model": report.get("model"), "config": report.get("config")}
    return samples, report.get("peak_rss_mb"), info


def run_sample(run: dict) -> dict:
    """One run of the report as a harness sample: figures from `observer` when it has
    them, else the app's clock; the run as the app reported it under "app"."""
    observer = run.get("observer")
    figures, source = None, "observer"
    if observer:
        try:
            figures = observer_sample(observer)
        except (KeyError, TypeError, ValueError) as e:
            log.warning("run %s: unusable observer stats (%s); using the app's clock",
                        run.get("index"), e)
    if figures is None:
        if run.get("ttft_ms") is None:
            raise FloraError(f"run {run.get('index')} of the app's report has neither observer "
                             "stats nor ttft_ms", "install the app built from this version")
        figures, source = {k: run.get(k) for k in APP_FIGURES}, "app-clock"
    return {**figures, "source": source, "observer": observer,
            "app": {k: v for k, v in run.items() if k != "observer"}}


def default_timeout_s(generations: int, prompt_tokens: int, gen_len: int,
                      cooldown_s: float) -> float:
    """Generous: 10 min for installing/loading plus 0.5 s per token and the cool-downs."""
    return 600.0 + generations * (0.5 * (prompt_tokens + gen_len) + cooldown_s)


def run_id_for(name: str) -> str:
    """A result-file name the app accepts: letters, digits, '.', '_', '-', at most 80."""
    return f"flora-bench-{re.sub(r'[^A-Za-z0-9._-]', '_', name)[:40]}-{int(time.time() * 1e3)}"


def check_installed(device) -> str:
    """The APK path of the app on `device` (an AdbDevice), or a FloraError."""
    rc, out = device.shell(f"pm path {APP_PACKAGE}", check=False)
    paths = [ln.strip()[len("package:"):] for ln in out.splitlines() if ln.startswith("package:")]
    if rc != 0 or not paths:
        raise FloraError(f"the flora chat app ({APP_PACKAGE}) is not installed on "
                         f"{device.serial or 'the device'}", INSTALL_FIX)
    return paths[0]


class AppSession:
    """One artifact staged at `remote` on `device`, run by the app in one launch."""

    def __init__(self, device, remote: str, result_dir: str = RESULT_DIR,
                 timeout_s: float | None = None, poll_s: float = 1.0,
                 max_seq_len: int | None = None):
        self.device, self.remote, self.result_dir = device, remote, result_dir
        self.timeout_s, self.poll_s, self.peak = timeout_s, poll_s, None
        self.info = {"engine": f"app:{APP_PACKAGE}", "threads": None, "vocab_size": None,
                     "bos_id": None, "max_seq_len": max_seq_len}

    def run(self, prompt_ids, prompt_text, gen_len):
        raise FloraError("the app runs warm-up and measured runs in one launch",
                         "drive it with run_batch (flora-bench does)")

    def run_batch(self, prompt_ids: list[int], prompt_text: str, gen_len: int, warmup: int,
                  runs: int, cooldown_s: float) -> list[dict]:
        run_id = run_id_for(Path(self.remote).name)
        result = f"{self.result_dir}/{run_id}.json"
        prompts = self._push_prompts(prompt_text)
        q = shlex.quote
        self.device.shell(f"rm -f {q(result)} {q(result + '.tmp')}", check=False)
        extras = (f"--es model {q(self.remote)} --es run_id {q(run_id)} --es prompts_file "
                  f"{q(prompts)} --ei warmup {warmup} --ei runs {runs} --ei max_new_tokens "
                  f"{gen_len} --ei cooldown_ms {round(cooldown_s * 1e3)}")
        _, out = self.device.shell(f"am start -S -W -n {BENCH_ACTIVITY} {extras}", check=False)
        failed = [ln for ln in out.splitlines() if ln.startswith(("Error", "Exception"))]
        if failed or ("Status: ok" not in out and "Starting:" not in out):
            raise FloraError(f"starting {BENCH_ACTIVITY} failed: {(failed or [out.strip()])[0]}",
                             f"reinstall the app; {INSTALL_FIX}")
        timeout = self.timeout_s or default_timeout_s(warmup + runs, len(prompt_ids), gen_len,
                                                      cooldown_s)
        self._wait(result, timeout)
        report = self._fetch(result)
        samples, peak, info = parse_app_report(report)
        if len(samples) != runs:
            raise FloraError(f"the app reported {len(samples)} measured runs, {runs} were asked "
                             f"for ({result})", f"install the app built from this version; {_LOGCAT}")
        self.peak = max(filter(None, [self.peak, peak]), default=None)
        self.info.update(info)
        return samples

    def _push_prompts(self, text: str) -> str:
        remote = f"{self.remote}.prompts.json"
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "prompts.json"
            f.write_text(json.dumps({"prompts": [text]}, ensure_ascii=False))
            self.device.push(f, remote)
        self.device.chmod_readable(remote)
        return remote

    def _wait(self, result: str, timeout: float) -> None:
        """Until `result` exists; a FloraError when the benchmark process has been gone
        for three polls without writing it, or after `timeout` seconds."""
        q = shlex.quote(result)
        probe = (f"if [ -f {q} ]; then echo ready; elif command -v pidof >/dev/null && "
                 f"! pidof {BENCH_PROCESS} >/dev/null; then echo gone; else echo running; fi")
        t0, gone = time.monotonic(), 0
        while True:
            state = self.device.shell(probe, check=False)[1].strip()
            if state.endswith("ready"):
                return
            gone = gone + 1 if state.endswith("gone") else 0
            if gone >= 3:
                raise FloraError(f"the app's benchmark process ({BENCH_PROCESS}) ended without "
                                 f"writing {result}", _LOGCAT + " AndroidRuntime DEBUG")
            if time.monotonic() - t0 > timeout:
                self.device.shell(f"am force-stop {APP_PACKAGE}", check=False)
                raise FloraError(f"no benchmark result after {timeout:.0f} s: {result} did not "
                                 "appear (the app was stopped)",
                                 f"{_LOGCAT}; raise --app-timeout for a slow model")
            time.sleep(self.poll_s)

    def _fetch(self, result: str) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "result.json"
            self.device.pull(result, local)
            text = local.read_text(errors="replace")
        self.device.shell(f"rm -f {shlex.quote(result)}", check=False)
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise FloraError(f"the app's result {result} is not JSON ({e})", _LOGCAT) from None

    def close(self) -> dict:
        return {"peak_rss_mb": self.peak}


def result_from_reports(reports: dict[str, dict], baseline: str | None = None) -> dict:
    """A flora-bench result (bench.json / .md / .png, ratios to `baseline`) from app
    reports pulled by hand: the iOS app's, or Android's. Each report is one artifact; its
    runs were one launch, so the schedule is `batch`."""
    import datetime as dt

    baseline = pick_baseline(list(reports), baseline)
    arts = {}
    for name, report in reports.items():
        samples, peak, info = parse_app_report(report)
        arts[name] = artifact_entry((info.get("model") or {}).get("dir"),
                                    {**info, "schedule": "batch"}, {"peak_rss_mb": peak},
                                    None, samples)
    first = next(iter(reports.values()))
    cfg = first.get("config") or {}
    started = first.get("started_ms")
    prompt_tokens = next((s.get("prompt_tokens") for a in arts.values() for s in a["samples"]), None)
    device = first.get("device") or {}
    return {"format_version": 1,
            "started_utc": (dt.datetime.fromtimestamp(started / 1e3, dt.timezone.utc)
                            .isoformat(timespec="seconds") if started else None),
            "config": {"prompt_len": prompt_tokens, "gen_len": cfg.get("max_new_tokens"),
                       "runs": cfg.get("runs"), "warmup": cfg.get("warmup"), "threads": None,
                       "cooldown_s": (cfg.get("cooldown_ms") or 0) / 1e3, "passes": 1,
                       "engine": "app"},
            "baseline": baseline, "prompt_ids": None,
            "transport": f"app reports ({device.get('model') or 'device'})",
            "device_before": device, "device_after": device,
            "host_loadavg_before": None, "host_loadavg_after": None,
            "artifacts": arts, "ratios": ratios(arts, baseline)}
