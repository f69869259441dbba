"""flora-bench on host: runners in their real runtimes, the interleaved harness, reports, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flora_export.bench import BenchConfig, run_bench
from flora_export.bench.cli import main as bench_main
from flora_export.bench.runners import make_runner
from flora_export.bench.harness import ratios
from flora_export.bench.stats import observer_sample, parse_observer, sample, summarize
from flora_export.errors import FloraError

from conftest import fp32_export

pytest.importorskip("executorch")
pytest.importorskip("onnxruntime_genai")


@pytest.fixture(scope="module")
def exports(tiny_base, tiny_ffba, bench_et_export, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    return {"executorch": bench_et_export,
            "onnx": fp32_export(tiny_base, tiny_ffba, "onnx", root / "onnx")[1],
            "base": tiny_base, "adapter": tiny_ffba}


def test_figures_follow_the_design_definitions():
    s = sample(10.0, [10.5, 10.6, 10.7, 10.9], prompt_tokens=50)
    assert s["ttft_ms"] == pytest.approx(500.0)
    assert s["tpot_ms"] == pytest.approx(400.0 / 3)          # (t_last - t_first) / (n - 1)
    assert s["prefill_tps"] == pytest.approx(100.0) and s["generated_tokens"] == 4
    line = ('noise PyTorchObserver {"prompt_tokens":8,"generated_tokens":3,"model_load_start_ms":0,'
            '"model_load_end_ms":5,"inference_start_ms":100,"token_encode_end_ms":101,'
            '"model_execution_start_ms":101,"model_execution_end_ms":190,"inference_end_ms":190,'
            '"prompt_eval_end_ms":130,"first_token_ms":130,"aggregate_sampling_time_ms":1,'
            '"SCALING_FACTOR_UNITS_PER_SECOND":1000}\n')
    o = observer_sample(parse_observer(line))
    assert o["ttft_ms"] == 30 and o["tpot_ms"] == 20 and o["generated_tokens"] == 4
    with pytest.raises(ValueError):
        parse_observer("no stats here")


def test_summary_of_known_samples():
    """Median, min, max, sample stdev and spread (100 (max - min) / median) of fixed values;
    undefined values (None, inf) are skipped."""
    assert summarize([5.0, 1.0, 3.0, None, float("inf"), 2.0, 4.0]) == {
        "median": 3.0, "min": 1.0, "max": 5.0, "stdev": 1.581, "spread_pct": 133.3, "n": 5}
    assert summarize([2.0, 4.0]) == {"median": 3.0, "min": 2.0, "max": 4.0, "stdev": 1.414,
                                     "spread_pct": 66.7, "n": 2}
    assert summarize([7.0])["stdev"] == 0.0 and summarize([None])["median"] is None


def test_ratios_of_known_samples():
    """2 passes x 2 runs. Baseline TPOT 10, 12 | 11, 13; artifact 11, 13.2 | 12.1, 13 ms.
    Ratio of medians 12.55 / 11.5; paired: median of 1.1, 1.1, 1.1, 1.0; per pass
    12.1 / 11 and 12.55 / 12; balanced: their geometric mean."""
    def art(tpots):
        samples = [{"tpot_ms": t, "ttft_ms": 100.0} for t in tpots]
        return {"samples": samples, "summary": {m: summarize([s[m] for s in samples])
                                                for m in ("tpot_ms", "ttft_ms")}}
    arts = {"base": art([10.0, 12.0, 11.0, 13.0]), "x": art([11.0, 13.2, 12.1, 13.0])}
    r = ratios(arts, "base", runs=2, passes=2)["x"]
    assert r["tpot"] == 1.091 and r["tpot_paired"] == 1.1
    assert r["tpot_per_pass"] == [1.1, 1.046] and r["tpot_balanced"] == 1.073
    assert r["ttft"] == r["ttft_paired"] == r["ttft_balanced"] == 1.0


def test_all_runtimes_generate_the_eager_greedy_tokens(exports):
    """fp32 exports: ExecuTorch runtime, ORT-GenAI and eager PyTorch (rebuilt from the
    manifest, and from eager:MODEL+ADAPTER) decode the same greedy tokens, exact lengths."""
    ids = list(range(40, 60))
    got = {}
    for name, spec, engine in [("et", exports["executorch"], None), ("ort", exports["onnx"], None),
                               ("eager-manifest", exports["executorch"], "eager"),
                               ("eager-spec", f"eager:{exports['base']}+{exports['adapter']}", None)]:
        runner = make_runner(str(spec), engine, threads=1)
        s = runner.generate(ids, "", 12)
        assert s["generated_tokens"] == 12 and s["prompt_tokens"] == 20 and len(s["tokens"]) == 12
        assert 0 < s["ttft_ms"] and 0 < s["tpot_ms"]
        got[name] = s["tokens"]
    assert got["et"] == got["ort"] == got["eager-manifest"] == got["eager-spec"], got


def test_llm_runner_stats_are_the_real_observer_line(exports):
    """ExecuTorch's TextLLMRunner in a subprocess prints PyTorchObserver; its parse equals the
    figures the llm-runner engine derives from the same runner's Stats object."""
    out = exports["executorch"]
    proc = subprocess.run([sys.executable, "-m", "flora_export.bench.llama_main",
                           f"--model_path={out}/model.pte", f"--tokenizer_path={out}/tokenizer.json",
                           "--prompt=Hello there, how are you", "--max_new_tokens=6"],
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = parse_observer(proc.stdout.decode(errors="replace"))
    assert {"prompt_tokens", "generated_tokens", "inference_start_ms", "first_token_ms",
            "inference_end_ms", "SCALING_FACTOR_UNITS_PER_SECOND"} <= stats.keys()
    assert stats["prompt_tokens"] == len("Hello there, how are you".encode())  # byte tokenizer
    s = make_runner(str(out), "executorch-llm-runner", 1).generate([], "Hello there, how are you", 6)
    core = {"prompt_tokens", "generated_tokens", "inference_start_ms", "first_token_ms",
            "inference_end_ms", "model_load_start_ms", "model_load_end_ms"}
    assert core <= s["observer"].keys() and core <= stats.keys()
    assert s["prompt_tokens"] == stats["prompt_tokens"]
    assert s["generated_tokens"] == stats["generated_tokens"] + 1 <= 6


def test_interleaved_run_reports_each_artifact_in_its_own_process(exports, tmp_path):
    arts = {"et": str(exports["executorch"]), "onnx": str(exports["onnx"]),
            "et2": str(exports["executorch"])}
    r = run_bench(arts, BenchConfig(prompt_len=12, gen_len=6, runs=2, warmup=1, threads=1,
                                    passes=2), baseline="et")
    assert list(r["artifacts"]) == ["et", "onnx", "et2"] and r["baseline"] == "et"
    pids = {a["load"]["pid"] for a in r["artifacts"].values()}
    assert len(pids) == 3                                   # one worker process each
    for name, a in r["artifacts"].items():
        assert len(a["samples"]) == 4 and a["summary"]["tpot_ms"]["n"] == 4   # 2 passes x 2
        assert all(s["generated_tokens"] == 6 and s["prompt_tokens"] == 12 for s in a["samples"])
        tpots = sorted(s["tpot_ms"] for s in a["samples"])  # the summary is of these samples
        assert a["summary"]["tpot_ms"] == summarize(tpots)
        assert a["summary"]["tpot_ms"]["median"] == round((tpots[1] + tpots[2]) / 2, 3)
        assert (a["summary"]["tpot_ms"]["min"], a["summary"]["tpot_ms"]["max"]) == (
            round(tpots[0], 3), round(tpots[-1], 3))
        assert a["peak_rss_mb"] > 50
    assert r["ratios"]["et"] == {"ttft": 1.0, "ttft_paired": 1.0, "tpot": 1.0, "tpot_paired": 1.0,
                                 "ttft_per_pass": [1.0, 1.0], "ttft_balanced": 1.0,
                                 "tpot_per_pass": [1.0, 1.0], "tpot_balanced": 1.0}
    onnx = r["ratios"]["onnx"]
    assert onnx["tpot_balanced"] == pytest.approx(
        (onnx["tpot_per_pass"][0] * onnx["tpot_per_pass"][1]) ** 0.5, abs=2e-3)
    assert r["artifacts"]["et"]["samples"][0]["tokens"] == r["artifacts"]["et2"]["samples"][0]["tokens"]
    assert len(r["prompt_ids"]) == 12 and r["host_loadavg_before"] is not None
    assert r["device_before"]["logical_cores"] >= 1 and "cpu" in r["device_before"]


def test_cli_writes_json_markdown_and_plot(exports, tmp_path, capsys):
    rc = bench_main([f"a={exports['executorch']}", f"b={exports['onnx']}", "--runs", "2",
                     "--prompt-len", "8", "--gen-len", "4", "--threads", "1",
                     "--out", str(tmp_path), "--baseline", "b"])
    assert rc == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["baseline"] == "b" and result["ratios"]["b"]["tpot"] == 1.0
    assert result["config"]["threads"] == 1 and result["config"]["prompt_len"] == 8
    table = (tmp_path / "bench.md").read_text()
    assert "| a | executorch |" in table and "| b | ort-genai |" in table
    pytest.importorskip("matplotlib")
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, message", [
    (["/nonexistent/export"], "does not exist"),
    (["{et}", "--baseline", "zzz"], "baseline 'zzz'"),
    (["x={et}", "x={et}"], "two artifacts are named"),
    (["{et}", "--gen-len", "1"], "--gen-len: must be an integer >= 2"),
    (["{et}", "--device", "android"], "needs a native runner"),
    (["{et}", "--device", "toaster"], "unknown device"),
    (["{et}", "--gen-len", "200"], "exceed the max_seq_len 128"),
])
def test_cli_bad_input_is_one_line_and_exit_2(exports, tmp_path, capsys, argv, message):
    argv = [a.format(et=exports["executorch"]) for a in argv] + ["--out", str(tmp_path)]
    try:
        code = bench_main(argv)
    except SystemExit as e:        # argparse refuses an option's value before any work
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("flora-bench: error:") and message in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_coreml_engine_is_an_extension_point(exports):
    with pytest.raises(FloraError, match="Core ML prediction needs macOS"):
        make_runner(str(exports["executorch"]), "coreml", 1)
