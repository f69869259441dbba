"""Latency figures as docs/metrics.md defines them, from timestamps or runner stats.

TTFT: request start (prompt tokenization included where the runner tokenizes) to the
first generated token. TPOT: (t_last - t_first) / (n_generated - 1). Prefill tokens/s:
prompt tokens / TTFT. Decode tokens/s: 1000 / TPOT.
"""

from __future__ import annotations

import json
import math
import re
import statistics

METRICS = ("ttft_ms", "tpot_ms", "prefill_tps", "decode_tps")
OBSERVER_PREFIX = "PyTorchObserver "
_OBSERVER_RE = re.compile(r"PyTorchObserver (\{.*\})")
_RSS_RE = re.compile(r"RSS after [^:]*: ([0-9.]+) MiB")


def sample(t_start: float, stamps: list[float], prompt_tokens: int) -> dict:
    """Figures of one generation from `perf_counter` times (seconds): request start and
    the moment each generated token was available."""
    if len(stamps) < 2:
        raise ValueError("TPOT needs at least 2 generated tokens")
    ttft = (stamps[0] - t_start) * 1e3
    tpot = (stamps[-1] - stamps[0]) * 1e3 / (len(stamps) - 1)
    return _figures(ttft, tpot, prompt_tokens, len(stamps))


def _figures(ttft_ms: float, tpot_ms: float, prompt_tokens: int, generated: int) -> dict:
    # A 0 ms interval (ms-resolution runner stats on a tiny model) has no finite rate.
    return {"ttft_ms": ttft_ms, "tpot_ms": tpot_ms,
            "prefill_tps": prompt_tokens / ttft_ms * 1e3 if ttft_ms > 0 else None,
            "decode_tps": 1e3 / tpot_ms if tpot_ms > 0 else None,
            "prompt_tokens": prompt_tokens, "generated_tokens": generated}


def parse_observer(text: str) -> dict:
    """The last `PyTorchObserver {...}` stats line in a runner's output, as a dict."""
    found = _OBSERVER_RE.findall(text)
    if not found:
        raise ValueError("no 'PyTorchObserver {...}' stats line in the runner output")
    return json.loads(found[-1])


def observer_sample(stats: dict) -> dict:
    """Figures from ExecuTorch LLM-runner stats (the PyTorchObserver line or `Stats`).

    ExecuTorch's text runner stamps `first_token_ms` when prefill has produced the first
    token and counts in `generated_tokens` the tokens decoded after it (max_new_tokens=N
    gives N-1), so TPOT = (inference_end - first_token) / generated_tokens: the same
    quantity as (t_last - t_first) / (n - 1) with n = generated_tokens + 1.
    """
    unit = 1e3 / float(stats.get("SCALING_FACTOR_UNITS_PER_SECOND", 1000))
    decoded = int(stats["generated_tokens"])
    if decoded < 1:
        raise ValueError("the runner decoded no token after the first; TPOT is undefined")
    ttft = (stats["first_token_ms"] - stats["inference_start_ms"]) * unit
    tpot = (stats["inference_end_ms"] - stats["first_token_ms"]) * unit / decoded
    return _figures(ttft, tpot, int(stats["prompt_tokens"]), decoded + 1)


def stats_dict(stats) -> dict:
    """ExecuTorch's pybind `Stats` object as the PyTorchObserver dict."""
    return json.loads(stats.to_json_string())


def runner_peak_rss_mb(text: str) -> float | None:
    """Largest 'RSS after ...: X MiB' that ExecuTorch's text runner logs, if any."""
    values = [float(v) for v in _RSS_RE.findall(text)]
    return max(values) if values and max(values) > 0 else None


def summarize(values: list[float | None]) -> dict:
    """Median and spread of one metric over the measured runs (undefined values skipped)."""
    vals = sorted(v for v in values if v is not None and math.isfinite(v))
    if not vals:
        return {"median": None, "min": None, "max": None, "stdev": None, "spread_pct": None,
                "n": 0}
    med = statistics.median(vals)
    return {"median": round(med, 3), "min": round(vals[0], 3), "max": round(vals[-1], 3),
            "stdev": round(statistics.stdev(vals), 3) if len(vals) > 1 else 0.0,
            "spread_pct": round(100 * (vals[-1] - vals[0]) / med, 1) if med else 0.0,
            "n": len(vals)}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None
