"""Console progress for pipeline stages: a line per stage, a live timer on a terminal."""

from __future__ import annotations

import resource
import threading
import time
from typing import TextIO


class StageProgress:
    """Callable as `progress(name, index, total, seconds)`; seconds is None at a stage's start."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def __call__(self, name: str, idx: int, total: int, seconds: float | None) -> None:
        label = f"[{idx}/{total}] {name}"
        if seconds is None:
            self._start(label)
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
            self._finish(f"{label} done in {seconds:.1f} s (peak RSS so far {peak:.2f} GB)")

    def _start(self, label: str) -> None:
        if not self.stream.isatty():
            print(f"{label} ...", file=self.stream, flush=True)
            return
        self._stop, t0 = threading.Event(), time.monotonic()

        def tick():
            while not self._stop.wait(0.5):
                self.stream.write(f"\r{label} ... {time.monotonic() - t0:.0f} s")
                self.stream.flush()
        self.stream.write(f"{label} ...")
        self._thread = threading.Thread(target=tick, daemon=True)
        self._thread.start()

    def _finish(self, line: str) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join()
            self._stop = None
            self.stream.write("\r\033[K")
        print(line, file=self.stream, flush=True)
