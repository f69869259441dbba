"""A benchmark worker: one artifact loaded in its own process, driven over stdin/stdout.

    python -m flora_export.bench.worker     (what the local and ssh transports start)

Protocol: one JSON object per line. Requests: {"op": "load", "spec", "engine",
"threads"}, {"op": "run", "prompt_ids", "prompt_text", "gen_len"}, {"op": "rss"},
{"op": "exit"}. Each gets one reply {"ok": true, ...} or {"ok": false, "error", "fix"}.
One process per artifact makes its peak RSS (getrusage of this process) its own and
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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    current = None
    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        pass
    return {"peak_rss_mb": round(peak, 1), "rss_mb": current and round(current, 1)}


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
