"""Facts about the machine a benchmark ran on, and its measured memory bandwidth."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata

_PACKAGES = ("flora-export", "torch", "executorch", "onnxruntime", "onnxruntime-genai")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def mem_total_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1])
        return round(kb / 2 ** 20, 1)
    except (OSError, StopIteration):
        return None


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def host_facts() -> dict:
    """This machine: CPU, cores, memory, OS, runtime versions (no GPU is used)."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"kind": "host", "cpu": cpu_model(), "arch": platform.machine(),
            "logical_cores": os.cpu_count(), "usable_cores": affinity,
            "mem_total_gb": mem_total_gb(), "os": platform.platform(), "versions": versions()}


def memory_bandwidth_gbs(threads: int, size_mb: int = 1024, repeats: int = 5) -> float:
    """Read bandwidth (GB/s) of this machine: `threads` threads each reducing its share of
    a `size_mb` buffer (numpy sum and max, which stream memory like a decode step reads
    its weights); the best rate over methods and repeats. It bounds the true bandwidth
    from below, so the derived TPOT bound is, if anything, too slow."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    buf = np.ones(size_mb * 2 ** 20 // 4, dtype=np.float32)
    chunks = np.array_split(buf, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for reduce in (np.sum, np.max):
            list(pool.map(reduce, chunks))
            for _ in range(repeats):
                t0 = time.perf_counter()
                list(pool.map(reduce, chunks))
                best = min(best, time.perf_counter() - t0)
    return round(buf.nbytes / best / 1e9, 2)
