#!/usr/bin/env python3
"""Summarize benchmark reports pulled from the iOS app (Documents/bench/<run_id>.json).

    python ios_demo/tools/bench_report.py r-coreml.json r-executorch.json
    python ios_demo/tools/bench_report.py --json summary.json bench/*.json

Reads each `flora-chat-bench/1` report with flora-bench's own reader
(`flora_export.bench.app.parse_app_report`, the one `--runner app` uses for the Android
app), so the figures follow the same rules: the runner's stats (`observer`) when present,
else the app's clock. Prints the median and spread of TTFT, TPOT and the rates per report.
A report with status "error" is named with the app's message; the exit status is then 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flora_export.bench.app import parse_app_report
from flora_export.bench.stats import METRICS, summarize
from flora_export.errors import FloraError


def summary(report: dict) -> dict:
    """{engine, model, device, runs, source, peak_rss_mb, load_s, <metric>: summarize(...)}."""
    samples, peak, info = parse_app_report(report)
    model, device = info.get("model") or {}, info.get("device") or {}
    out = {"run_id": info.get("run_id"), "engine": model.get("engine") or "executorch",
           "model": model.get("dir"), "device": device.get("model"), "runs": len(samples),
           "source": sorted({s["source"] for s in samples}), "peak_rss_mb": peak,
           "load_s": info.get("load_s")}
    out.update({m: summarize([s.get(m) for s in samples]) for m in METRICS})
    return out


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="example: python ios_demo/tools/bench_report.py bench/*.json",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", type=Path, help="report files pulled from the phone")
    p.add_argument("--json", type=Path, help="also write the summaries to this JSON file")
    args = p.parse_args(argv)
    rows, failed = [], False
    for path in args.reports:
        try:
            rows.append({"file": str(path), **summary(json.loads(path.read_text()))})
        except FloraError as e:      # the reader's fix speaks of adb; the app's message is enough
            print(f"{path}: {e.problem}", file=sys.stderr)
            failed = True
        except (OSError, json.JSONDecodeError) as e:
            print(f"{path}: cannot read a report ({e})", file=sys.stderr)
            failed = True
    print(f"{'report':<28} {'engine':<10} {'runs':>4} {'TTFT ms':>9} {'TPOT ms':>9} "
          f"{'decode tok/s':>12} {'peak MB':>8}")
    for r in rows:
        ttft, tpot, tps = (_fmt(r[m]["median"]) for m in ("ttft_ms", "tpot_ms", "decode_tps"))
        print(f"{Path(r['file']).name:<28} {r['engine']:<10} {r['runs']:>4} {ttft:>9} {tpot:>9} "
              f"{tps:>12} {_fmt(r['peak_rss_mb']):>8}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
