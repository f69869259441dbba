"""Held-out `shift` accuracy of the embedded demo model: the base alone, base + its FFBA
adapter (eager PyTorch), and the int4 `.pte` of `flora-export --target android` run
through the ExecuTorch runtime, on the same 200 held-out examples (flora-eval).

    python benchmarks/default_accuracy.py --work bench-out/default-accuracy

Writes benchmarks/results/default_accuracy.json (every flora-eval result, the machine's
facts and the load average before and after) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from flora_export.bench.machine import host_facts, loadavg

RESULTS = Path(__file__).resolve().parent / "results"


def run(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True)


def evaluate(name: str, args: list[str], work: Path, n: int) -> dict:
    out = work / f"{name}.json"
    run(["flora_export.eval_cli", *args, "--task", "shift", "-n", str(n), "--show", "0",
         "--json", str(out)])
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("bench-out/default-accuracy"))
    p.add_argument("-n", type=int, default=200, help="held-out examples (default 200)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started, before = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), loadavg()
    export = args.work / "android"
    run(["flora_export.cli", "--target", "android", "--out", str(export), "--force"])
    results = {"base": evaluate("base", ["--adapter", "none"], args.work, args.n),
               "base+ffba eager": evaluate("eager", [], args.work, args.n),
               "base+ffba int4 .pte": evaluate("pte", ["--export", str(export)], args.work,
                                               args.n)}
    summary = {"command": " ".join(["python", "benchmarks/default_accuracy.py", *sys.argv[1:]]),
               "started_utc": started, "loadavg_before": before, "loadavg_after": loadavg(),
               "machine": host_facts(), "task": "shift", "results": results}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "default_accuracy.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("| model | accuracy | loss |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {json.dumps(r.get('accuracy'))} | {json.dumps(r.get('loss'))} |")


if __name__ == "__main__":
    main()
