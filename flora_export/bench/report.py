"""Benchmark results as JSON, a markdown table and a PNG plot (matplotlib, optional)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..outputs import (check_dir_target, check_file_target, json_with_keys, nonempty_path,
                       write_atomic, write_file_atomic)

log = logging.getLogger(__name__)


def _fmt(s: dict, digits: int = 1) -> str:
    if s["median"] is None:
        return "–"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def number_text(x: float | None, digits: int) -> str:
    """`x` with `digits` decimals, or an en dash when it is undefined."""
    return "–" if x is None else f"{x:.{digits}f}"


def _per_pass(r: dict) -> str:
    per = r.get("tpot_per_pass")
    if not per:
        return "–"
    return " / ".join(f"{x:.3f}" for x in per) + f" ({number_text(r.get('tpot_balanced'), 3)})"


def markdown(result: dict) -> str:
    """One row per artifact: medians (min–max), throughputs, peak RSS, ratios to baseline."""
    cfg, base = result["config"], result["baseline"]
    passes = cfg.get("passes", 1)
    runs = f"{passes} passes x {cfg['runs']}" if passes > 1 else f"{cfg['runs']}"
    batch = all(a["load"].get("schedule") == "batch" for a in result["artifacts"].values())
    how = ("runs (one launch per artifact)" if batch else "interleaved runs")
    threads = "the app's threads" if batch else f"{cfg['threads']} threads"
    lines = [f"prompt {cfg['prompt_len']} tokens, {cfg['gen_len']} generated, {runs} "
             f"{how} after {cfg['warmup']} warm-up, {threads}, on "
             f"{result['transport']}; ratios (of medians) to `{base}`",
             "",
             "| artifact | engine | TTFT ms median (min–max) | TPOT ms median (min–max) | "
             "prefill tok/s | decode tok/s | peak RSS MB | TTFT × | TPOT × | TPOT × per pass "
             "(balanced) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, a in result["artifacts"].items():
        s, r = a["summary"], result["ratios"][name]
        lines.append(f"| {name} | {a['load'].get('engine')} | {_fmt(s['ttft_ms'])} | "
                     f"{_fmt(s['tpot_ms'], 2)} | {number_text(s['prefill_tps']['median'], 0)} | "
                     f"{number_text(s['decode_tps']['median'], 1)} | {a.get('peak_rss_mb') or '–'} | "
                     f"{number_text(r['ttft'], 3)} | {number_text(r['tpot'], 3)} | {_per_pass(r)} |")
    return "\n".join(lines) + "\n"


def write_json(result: dict, path: Path) -> None:
    """Atomically (temporary file + rename)."""
    write_atomic(Path(path), (json.dumps(result, indent=2) + "\n").encode(), "--out")


def plot(result: dict, path: Path, title: str | None = None) -> bool:
    """TTFT and TPOT medians with min–max bars per artifact; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot (pip install 'flora-export[bench]')")
        return False
    names = list(result["artifacts"])
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(names) + 4), 4.2))
    for ax, metric, label in zip(axes, ("ttft_ms", "tpot_ms"), ("TTFT (ms)", "TPOT (ms)")):
        s = [result["artifacts"][n]["summary"][metric] for n in names]
        med = [x["median"] or 0.0 for x in s]
        err = [[m - (x["min"] or m) for m, x in zip(med, s)],
               [(x["max"] or m) - m for m, x in zip(med, s)]]
        ax.bar(range(len(names)), med, yerr=err, capsize=4,
               color=["#888" if n == result["baseline"] else "#3b7dd8" for n in names])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    cfg = result["config"]
    fig.suptitle(title or f"{result['transport']}: prompt {cfg['prompt_len']}, gen "
                 f"{cfg['gen_len']}, {cfg['runs']} runs, {cfg['threads']} threads "
                 "(median, min–max)")
    fig.tight_layout()
    try:
        write_file_atomic(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, format="png"), "--out")
    finally:
        plt.close(fig)
    return True


def check_outputs(out_dir: str | Path, stem: str = "bench") -> Path:
    """Before any run: `out_dir` can hold `stem`.json/.md/.png, and those that exist are
    a previous flora-bench result (its JSON is recognised), never the user's files."""
    real = check_dir_target(nonempty_path(out_dir, "--out"), "--out")
    previous = json_with_keys(real / f"{stem}.json", ("format_version", "config", "artifacts"))
    for suffix in (".json", ".md", ".png"):
        check_file_target(real / f"{stem}{suffix}", "--out", lambda p: previous)
    return real


def write_all(result: dict, out_dir: Path, stem: str = "bench", title: str | None = None) -> dict:
    """`stem`.json, `stem`.md and `stem`.png in out_dir; returns their paths."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / f"{stem}.json", "markdown": out_dir / f"{stem}.md",
             "png": out_dir / f"{stem}.png"}
    write_json(result, paths["json"])
    write_atomic(paths["markdown"], markdown(result).encode(), "--out")
    if not plot(result, paths["png"], title):
        paths.pop("png")
    return paths
