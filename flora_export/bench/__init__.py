"""flora-bench: latency and memory of exported models in their real runtimes.

    from flora_export.bench import BenchConfig, run_bench, write_all
    result = run_bench({"base": "out/base", "ffba": "out/ffba"}, BenchConfig(runs=5),
                       baseline="base")
    write_all(result, "bench-out")          # bench.json, bench.md, bench.png

Runtimes are imported inside the worker processes, never by this package.
"""

from .harness import BenchConfig, run_bench
from .report import markdown, write_all
from .transports import AdbTransport, LocalTransport, SshTransport, make_transport

__all__ = ["BenchConfig", "run_bench", "markdown", "write_all", "LocalTransport",
           "SshTransport", "AdbTransport", "make_transport"]
