"""A benchmark result's parts: the baseline, one artifact's entry, the ratios to the baseline.

Shared by the interleaved runs (harness.py) and the results rebuilt from app reports
(app.py); bench.json's layout is in docs/metrics.md.
"""

from __future__ import annotations

import math
import statistics

from ..errors import FloraError
from .stats import METRICS, ratio, summarize


def pick_baseline(names: list[str], baseline: str | None) -> str:
    """`baseline`, or the first name; a clear error when there is nothing to compare."""
    if not names:
        raise FloraError("no artifacts to benchmark", "pass at least one export directory")
    if baseline is not None and baseline not in names:
        raise FloraError(f"baseline {baseline!r} is not one of the artifacts {names}",
                         "pass --baseline NAME with NAME one of the artifact names")
    return baseline or names[0]


def artifact_entry(spec: str | None, load: dict, rss: dict, export: dict | None,
                   samples: list[dict]) -> dict:
    """One artifact of a result: how it was loaded, its peak RSS, what was exported, the
    median and spread of every metric, and the samples."""
    return {"spec": spec, "load": load, **rss, "export": export,
            "summary": {m: summarize([s[m] for s in samples]) for m in METRICS},
            "samples": samples}


def ratios(arts: dict, baseline: str, runs: int | None = None, passes: int = 1) -> dict:
    """Per artifact, TTFT and TPOT over the baseline's: the ratio of the medians; the median
    of the per-round paired ratios (each run against the baseline's run of the same round);
    with several passes, the ratio of medians within each pass and their geometric mean
    (`*_balanced`), which cancels a penalty that depends on the load order (reversed
    between passes), since each artifact is loaded first as often as last."""
    base = arts[baseline]
    out = {}
    for name, a in arts.items():
        row = {}
        for m in ("ttft_ms", "tpot_ms"):
            key = m[:-3]
            row[key] = ratio(a["summary"][m]["median"], base["summary"][m]["median"])
            pairs = [s[m] / b[m] for s, b in zip(a["samples"], base["samples"]) if b[m] and s[m]]
            row[f"{key}_paired"] = round(statistics.median(pairs), 3) if pairs else None
            if passes > 1 and runs:
                per = []
                for p in range(passes):
                    mine = [s[m] for s in a["samples"][p * runs:(p + 1) * runs] if s[m]]
                    ref = [s[m] for s in base["samples"][p * runs:(p + 1) * runs] if s[m]]
                    if mine and ref:
                        per.append(statistics.median(mine) / statistics.median(ref))
                row[f"{key}_per_pass"] = [round(x, 3) for x in per]
                row[f"{key}_balanced"] = (round(math.exp(sum(map(math.log, per)) / len(per)), 3)
                                          if len(per) == passes else None)
        out[name] = row
    return out
