"""flora-bench `--runner app`: the flora chat app's benchmark mode, driven over adb.

No phone, emulator or Android runtime exists on this machine, so the device side is two
TEST DOUBLES: tests/fake_adbd.py (a fake adbd for the real `adb` client; shell commands
run on this host) and tests/fake_flora_app.py (NOT THE APP: a Python stand-in that
implements the app's side of the contract in android_demo/README.md, "Benchmark mode",
with the real ExecuTorch runtime on this host). What is tested is flora-bench's side of
that contract: staging, am start extras, polling, report parsing, errors. No figure
here describes a phone.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from flora_export.bench import AdbTransport, BenchConfig, run_bench
from flora_export.bench.app import (APP_FIGURES, REPORT_FORMAT, RESULT_DIR, parse_app_report,
                                    run_id_for, run_sample)
from flora_export.bench.cli import main as bench_main
from flora_export.bench.harness import prompt_for
from flora_export.bench.stats import observer_sample
from flora_export.errors import FloraError

import fake_flora_app

ROOT = Path(__file__).resolve().parents[1]
OBSERVER = {"prompt_tokens": 12, "generated_tokens": 7, "model_load_start_ms": 0,
            "model_load_end_ms": 5, "inference_start_ms": 1000, "token_encode_end_ms": 1001,
            "model_execution_start_ms": 1001, "model_execution_end_ms": 1240,
            "inference_end_ms": 1240, "prompt_eval_end_ms": 1030, "first_token_ms": 1030,
            "aggregate_sampling_time_ms": 1, "SCALING_FACTOR_UNITS_PER_SECOND": 1000}


def _run(index, warmup=False, observer=None, ttft=40.0, tpot=25.0):
    return {"index": index, "warmup": warmup, "prompt_index": 0, "ttft_ms": ttft,
            "tpot_ms": tpot, "prefill_tps": 12 / ttft * 1e3, "decode_tps": 1e3 / tpot,
            "prompt_tokens": 12, "generated_tokens": 8, "wall_ms": 300.0, "text": "hi there",
            "observer": observer}


def _report(runs, status="ok", error=None, fmt=REPORT_FORMAT):
    return {"format": fmt, "run_id": "r1", "status": status, "error": error,
            "app": {"package": "dev.flora.chat", "version": "0.1.0"},
            "device": {"manufacturer": "M", "model": "P", "soc": "S", "abi": "arm64-v8a",
                       "sdk": 34},
            "model": {"dir": "/data/local/tmp/flora/x", "pte": "model.pte"},
            "config": {"warmup": 1, "runs": 2}, "load_ms": 812.0, "runs": runs,
            "peak_rss_mb": 1290.5, "started_ms": 1, "finished_ms": 2}


def test_report_figures_come_from_the_observer_else_the_app_clock():
    report = _report([_run(0, warmup=True, observer=OBSERVER), _run(1, observer=OBSERVER),
                      _run(2, observer=None, ttft=50.0, tpot=20.0)])
    samples, peak, info = parse_app_report(report)
    assert len(samples) == 2 and peak == 1290.5                    # the warm-up is not counted
    first, second = samples
    assert first["source"] == "observer" and first["ttft_ms"] == 30 and first["tpot_ms"] == 30
    assert first["generated_tokens"] == 8 and first["prompt_tokens"] == 12   # 7 decoded + 1
    assert first["app"]["text"] == "hi there" and first["app"]["ttft_ms"] == 40.0
    assert "observer" not in first["app"] and first["observer"] == OBSERVER
    assert second["source"] == "app-clock" and second["ttft_ms"] == 50.0
    assert {k: second[k] for k in APP_FIGURES} == {k: _run(2, ttft=50.0, tpot=20.0)[k]
                                                   for k in APP_FIGURES}
    assert info["engine"] == "app:dev.flora.chat 0.1.0" and info["load_s"] == 0.812
    assert info["device"]["soc"] == "S" and info["threads"] is None


def test_report_errors_are_one_line_with_the_app_message():
    with pytest.raises(FloraError, match="'flora-chat-bench/0'"):
        parse_app_report(_report([], fmt="flora-chat-bench/0"))
    with pytest.raises(FloraError, match="cannot open model.pte: bad magic"):
        parse_app_report(_report([_run(0, warmup=True)], status="error",
                                 error="cannot open model.pte: bad magic"))
    with pytest.raises(FloraError, match="neither observer stats nor ttft_ms"):
        run_sample({"index": 3, "observer": None})
    broken = run_sample(_run(1, observer={"prompt_tokens": 3}))    # unusable stats: app clock
    assert broken["source"] == "app-clock" and broken["ttft_ms"] == 40.0


def test_run_ids_are_names_the_app_accepts():
    rid = run_id_for("ffba 8da4w/é" + "x" * 100)
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,80}", rid) and rid.startswith("flora-bench-ffba_8da4w__")


@pytest.fixture(scope="module")
def fake_app(fake_phone):
    """The app TEST DOUBLE installed on the fake device: (serial, daemon, result dir)."""
    pytest.importorskip("executorch")
    serial, daemon = fake_phone
    for cmd in ("am", "pm", "pidof"):
        daemon.add_command(cmd, f"#!/bin/sh\nexec env PYTHONPATH={ROOT} {sys.executable} "
                                f"{Path(fake_flora_app.__file__)} --root {daemon.workdir} "
                                f"{cmd} \"$@\"\n")
    fake_flora_app.install(daemon.workdir)
    yield serial, daemon, daemon.workdir / RESULT_DIR.lstrip("/")
    (daemon.workdir / "fake-app-fault").unlink(missing_ok=True)


def _transport(fake_app, tmp_name: str, **kw) -> AdbTransport:
    serial, daemon, results = fake_app
    t = AdbTransport(serial, runner="app", **kw)
    t.remote_dir = str(daemon.workdir / "data" / "local" / "tmp" / tmp_name)
    t.app_result_dir, t.app_poll_s = str(results), 0.2
    return t


def test_app_runner_over_adb(fake_app, bench_et_export):
    serial, daemon, results = fake_app
    t = _transport(fake_app, "flora-bench")
    # 24 new tokens: enough decode time for the runner's millisecond stats on a tiny model
    config = BenchConfig(prompt_len=10, gen_len=24, runs=2, warmup=1, cooldown_s=0.01)
    r = run_bench({"a": str(bench_et_export), "b": str(bench_et_export)}, config, transport=t)
    for name in ("a", "b"):
        a = r["artifacts"][name]
        assert len(a["samples"]) == 2
        for s in a["samples"]:
            assert s["source"] == "observer" and s["observer"]["prompt_tokens"] == 10
            assert s["ttft_ms"] == observer_sample(s["observer"])["ttft_ms"]
            assert 2 <= s["generated_tokens"] <= 24 and s["app"]["warmup"] is False
            assert set(s["app"]) >= {"index", "prompt_index", "wall_ms", "text", *APP_FIGURES}
            assert s["app"]["text"] and s["app"]["ttft_ms"] > 0    # the app's own clock
        assert a["peak_rss_mb"] > 50                               # the fake app's VmHWM
        load = a["load"]
        assert load["engine"] == "app:dev.flora.chat 0.0-test-double" and load["load_s"] > 0
        assert load["schedule"] == "batch" and load["device"]["model"] == "FakePhone"
        assert load["config"]["prompts"] == [prompt_for([str(bench_et_export)], 10)[1]]
    assert r["ratios"]["b"]["tpot"] > 0 and r["ratios"]["a"]["tpot"] == 1.0
    launches = [c for c in daemon.shell_commands if "am start" in c]
    assert [Path(c.split("--es model ")[1].split()[0]).name for c in launches] == ["a", "b"]
    assert all("--ei warmup 1 --ei runs 2 --ei max_new_tokens 24 --ei cooldown_ms 10" in c
               for c in launches)
    assert any(c.startswith("( chmod -R a+rX") for c in daemon.shell_commands)
    assert not list(results.glob("flora-bench-*.json"))            # reports read and removed
    assert not Path(t.remote_dir).exists()


class _BatchOnly:
    """A session with run_batch only (what the app session offers); figures are made up."""

    def __init__(self, spec, log):
        self.spec, self.log, self.info = spec, log, {"engine": "batch-test"}

    def run_batch(self, ids, text, gen_len, warmup, runs, cooldown_s):
        self.log.append(self.spec)
        tpot = 10.0 if self.spec == "a" else 15.0 * (1 + len(self.log) % 2)
        return [{"ttft_ms": 20.0, "tpot_ms": tpot, "prefill_tps": 1.0, "decode_tps": 1.0,
                 "prompt_tokens": len(ids), "generated_tokens": gen_len}] * runs

    def close(self):
        return {"peak_rss_mb": 1.0}


class _BatchTransport:
    name = "batch-test"

    def __init__(self):
        self.log = []

    def describe(self):
        return {}

    def stage(self, name, spec):
        return name

    def open(self, spec, engine, threads):
        return _BatchOnly(spec, self.log)

    def close(self):
        pass


def test_batch_sessions_run_one_batch_each_load_order_reversed_per_pass(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    t = _BatchTransport()
    r = run_bench({"a": str(tmp_path / "a"), "b": str(tmp_path / "b")},
                  BenchConfig(prompt_len=4, gen_len=4, runs=3, passes=2), transport=t)
    assert t.log == ["a", "b", "b", "a"]
    b = r["ratios"]["b"]                        # b: TPOT 15 in pass 1 (2nd), 30 in pass 2 (1st)
    assert b["tpot_per_pass"] == [1.5, 3.0] and b["tpot_balanced"] == pytest.approx(2.121, abs=1e-3)
    assert len(r["artifacts"]["a"]["samples"]) == 6 and r["artifacts"]["b"]["load"]["schedule"] == "batch"


def test_app_error_status_is_a_flora_error_with_the_app_message(fake_app, bench_et_export,
                                                                  tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.pte").write_bytes(b"not a program" * 100)
    shutil.copy(bench_et_export / "tokenizer.json", bad / "tokenizer.json")
    with pytest.raises(FloraError, match="the app's benchmark failed") as err:
        run_bench({"bad": str(bad)}, BenchConfig(prompt_len=10, gen_len=5, runs=1),
                  transport=_transport(fake_app, "flora-bench-err"))
    assert "Failed to create text llm runner" in err.value.problem       # the runtime's words
    assert "bad/model.pte" in err.value.problem and "logcat -s FloraBench" in err.value.fix


def test_missing_app_crash_and_timeout_are_clear_errors(fake_app, bench_et_export):
    serial, daemon, _ = fake_app
    art, cfg = {"a": str(bench_et_export)}, BenchConfig(prompt_len=10, gen_len=5, runs=1)
    apk = fake_flora_app.apk(daemon.workdir)
    apk.rename(apk.with_suffix(".gone"))
    try:
        with pytest.raises(FloraError, match=r"\(dev.flora.chat\) is not installed.*gradlew installDebug"):
            run_bench(art, cfg, transport=_transport(fake_app, "fb-missing"))
    finally:
        apk.with_suffix(".gone").rename(apk)
    fault = daemon.workdir / "fake-app-fault"
    fault.write_text("crash")
    with pytest.raises(FloraError, match="ended without writing .*logcat -s FloraBench"):
        run_bench(art, cfg, transport=_transport(fake_app, "fb-crash"))
    fault.write_text("hang")
    with pytest.raises(FloraError, match=r"no benchmark result after 2 s: .*\.json did not appear"):
        run_bench(art, cfg, transport=_transport(fake_app, "fb-hang", app_timeout_s=2))
    assert fake_flora_app.running_pid(daemon.workdir) is None      # force-stopped
    fault.unlink()


def test_cli_runner_app_needs_android_and_reports_errors(capsys, bench_et_export):
    assert bench_main([str(bench_et_export), "--runner", "app"]) == 2
    assert "runs only on an Android device" in capsys.readouterr().err
    assert bench_main([str(bench_et_export), "--device", "ssh:x", "--runner", "app"]) == 2


def test_cli_tabulates_reports_pulled_from_the_app(tmp_path, capsys):
    """`flora-bench --reports`: app reports (iOS has no adb transport) become the same
    bench.json / .md / .png as a run, with ratios to the baseline."""
    from flora_export.bench.cli import main

    fast = _report([_run(0, warmup=True), _run(1, ttft=40.0, tpot=20.0),
                    _run(2, ttft=44.0, tpot=22.0)])
    slow = _report([_run(0, warmup=True), _run(1, ttft=80.0, tpot=30.0),
                    _run(2, ttft=88.0, tpot=33.0)])
    for name, rep in (("fast", fast), ("slow", slow)):
        (tmp_path / f"{name}.json").write_text(json.dumps(rep))
    out = tmp_path / "out"
    assert main(["--reports", f"coreml={tmp_path / 'fast.json'}", str(tmp_path / "slow.json"),
                 "--baseline", "slow", "--out", str(out)]) == 0
    result = json.loads((out / "bench.json").read_text())
    assert list(result["artifacts"]) == ["coreml", "slow"]
    assert result["artifacts"]["coreml"]["summary"]["tpot_ms"]["median"] == 21.0
    assert result["ratios"]["coreml"]["tpot"] == round(21.0 / 31.5, 3)
    assert result["ratios"]["coreml"]["ttft"] == round(42.0 / 84.0, 3)
    assert result["artifacts"]["slow"]["peak_rss_mb"] == 1290.5
    printed = capsys.readouterr().out
    assert "one launch per artifact" in printed and "| coreml |" in printed
    assert (out / "bench.md").exists()
    assert main(["--reports", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
