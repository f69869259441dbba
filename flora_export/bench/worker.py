"""A benchmark worker: one artifact loaded in its own process, driven over stdin/stdout.

    python -m flora_export.bench.worker     (what the local and ssh transports start)

Protocol: one JSON object per line. Requests: {"op": "load", "spec", "engine",
"threads"}, {"op": "run", "prompt_ids", "prompt_text", "gen_len"}, {"op": "rss"},
{"op": "exit"}. Each gets one reply {"ok": true, ...} or {"ok": false, "error", "fix"}.
One process per artifact makes its peak RSS (VmHWM of this process) its own and
keeps runtimes from sharing thread pools or allocator state. Native runtimes print to
stdout, so the protocol uses a private copy of the original stdout and fd 1 is pointed
at stderr.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def _rss_mb() -> dict:
    """Peak and current RSS of this process. VmHWM/VmRSS from /proc (the peak of this
    program only: getrusage's ru_maxrss survives exec, so it would report the parent's
    peak if that was higher); ru_maxrss where /proc is missing."""
    status = {}
    try:
        with open("/proc/self/status") as f:
            status = {k: v.split()[0] for k, _, v in (ln.partition(":") for ln in f)
                      if k in ("VmHWM", "VmRSS")}
    except OSError:
        pass
    peak = (int(status["VmHWM"]) if "VmHWM" in status
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    current = int(status["VmRSS"]) / 1024 if "VmRSS" in status else None
    return {"peak_rss_mb": round(peak / 1024, 1), "rss_mb": current and round(current, 1)}


def serve(inp, out) -> None:
    from ..errors import FloraError
    from .runners import make_runner

    runner = None
    for line in inp:
        req = json.loads(line)
        op = req.get("op")
        try:
            if op == "load":
                t0 = time.perf_counter()
                runner = make_runner(req["spec"], req.get("engine"), int(req["threads"]))
                reply = {"info": {**runner.info(), "load_s": round(time.perf_counter() - t0, 3),
                                  **_rss_mb()}}
            elif op == "run":
                reply = {"sample": runner.generate(req["prompt_ids"], req.get("prompt_text", ""),
                                                   int(req["gen_len"]))}
            elif op == "rss":
                reply = _rss_mb()
            elif op == "exit":
                out.write(json.dumps({"ok": True, **_rss_mb()}) + "\n")
                out.flush()
                return
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}"}
        except FloraError as e:
            reply = {"ok": False, "error": e.problem, "fix": e.fix}
        except Exception as e:  # noqa: BLE001  (reported to the harness, which raises)
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps({"ok": True, **reply}) + "\n")
        out.flush()


def main() -> None:
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(sys.stdin, proto)


if __name__ == "__main__":
    main()
