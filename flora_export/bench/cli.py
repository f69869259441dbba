"""`flora-bench`: TTFT / TPOT / throughput / peak RSS of exported models, interleaved."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..console import ArgumentParser, run_command
from ..errors import FloraError
from ..limits import COUNT, THREADS, Limit, option

# TPOT = (t_last - t_first) / (n - 1) needs two generated tokens
GEN_LEN = Limit(int, 2, example="64")
SECONDS = Limit(float, 0, example="10")
PORT = Limit(int, 1, 65535, example="22")

EPILOG = """\
examples:
  flora-bench flora-out/android
      one export on this machine: 1 warm-up + 5 runs, 64-token prompt, 64 new tokens
  flora-bench base=out/base ffba=out/ffba lora=out/lora --baseline base --runs 8
      three exports interleaved (base ffba lora base ffba lora ...), ratios to base
  flora-bench out/onnx eager=eager:llama3.2-1b --threads 2 --out bench-out
      ONNX Runtime GenAI vs the eager PyTorch model
  flora-bench --reports coreml=r-coreml.json executorch=r-et.json --baseline executorch
      reports pulled from the iOS (or Android) app's benchmark mode: table, plot, ratios
  flora-bench base=out/base ffba=out/ffba --device android:R58M12345 \\
      --runner build-android/llama_main --cooldown 10
      on a phone over adb with ExecuTorch's llama_main (figures from PyTorchObserver)
  flora-bench base=out/base ffba=out/ffba --device android --runner app --passes 2
      on a phone with the flora chat app's benchmark mode (install android_demo's APK
      first); one app launch per artifact and pass, load order reversed in pass 2
  flora-bench out/base --device ssh:me@board.local --ssh-identity ~/.ssh/id_ed25519 \
      --ssh-known-hosts board_hosts
      on a Linux ARM board over ssh (flora-export installed there, or pass --runner);
      ExecuTorch's aarch64 wheel needs ARMv8.1+ (a Raspberry Pi 5, not a Pi 4)

Artifacts are export directories (NAME=DIR names one; default name: the directory's
name) or eager:MODEL[+ADAPTER] (a model directory or preset, run in PyTorch).
Definitions (docs/metrics.md): TTFT = request start to first generated token; TPOT =
(t_last - t_first) / (n - 1); prefill tok/s = prompt tokens / TTFT; decode tok/s =
1000 / TPOT; medians and min-max over --runs runs after --warmup. Prompt ids are
fixed and generation is forced to --gen-len tokens (EOS ignored), except for the
ExecuTorch LLM runner and native runners, which stop at EOS (counts are recorded).
Each artifact runs in its own process; peak RSS is that process's. Writes
bench.json, bench.md and bench.png (needs matplotlib: pip install 'flora-export[bench]').

--runner app (android): the export is pushed to /data/local/tmp/flora-bench and made
readable (chmod -R a+rX), the prompt goes to a JSON file next to it, and
dev.flora.chat/.BenchmarkActivity runs warm-up + runs in ONE launch per artifact
(fresh process, model loaded once; contract: android_demo/README.md "Benchmark mode").
Runs are therefore not interleaved across artifacts: use --passes 2 (or more) so
each artifact runs first as often as last, and --cooldown for the phone's heat.
Figures come from ExecuTorch's runner stats the app forwards (else the app's clock);
peak RSS is the app process's VmHWM. The app picks its own thread count.
"""


def build_parser() -> argparse.ArgumentParser:
    from .runners import ENGINES

    p = ArgumentParser(prog="flora-bench", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Measure exported models with their real runtimes "
                                            "(ExecuTorch, ONNX Runtime GenAI, PyTorch), on this "
                                            "machine, a phone (adb) or a board (ssh).")
    p.add_argument("artifacts", nargs="+", metavar="[NAME=]DIR|eager:MODEL[+ADAPTER]")
    p.add_argument("--reports", action="store_true",
                   help="the arguments are NAME=REPORT.json files pulled from the flora chat "
                        "app (iOS or Android benchmark mode): tabulate, plot and compare them "
                        "instead of running anything")
    p.add_argument("--baseline", help="artifact name the ratios refer to (default: the first)")
    p.add_argument("--runs", type=option(COUNT), default=5, help="measured runs per artifact (default 5)")
    p.add_argument("--warmup", type=option(Limit(int, 0, example="1")), default=1, help="warm-up runs per artifact (default 1)")
    p.add_argument("--passes", type=option(COUNT), default=1,
                   help="repeat with fresh worker processes, load order reversed each pass "
                        "(cancels load-order effects; samples are pooled; default 1)")
    p.add_argument("--prompt-len", type=option(COUNT), default=64, help="prompt tokens (default 64)")
    p.add_argument("--gen-len", type=option(GEN_LEN), default=64, help="generated tokens (default 64)")
    p.add_argument("--threads", type=option(THREADS), default=2, help="runtime threads (default 2)")
    p.add_argument("--engine", choices=sorted(ENGINES),
                   help="force one engine for all artifacts (default: from each manifest)")
    p.add_argument("--cooldown", type=option(SECONDS), default=0.0, metavar="S",
                   help="idle seconds before each run (phones: 5-30)")
    p.add_argument("--device", default="host", help="host (default), android[:SERIAL] or ssh:[USER@]HOST")
    p.add_argument("--runner", metavar="PATH|app",
                   help="a native LLM runner to push and run on the device (ExecuTorch's "
                        "llama_main; ssh: optional), or 'app' (android only): the flora chat "
                        "app's benchmark mode (install android_demo's APK first). android "
                        "needs one of the two")
    p.add_argument("--app-timeout", type=option(Limit(float, 0, low_open=True, example="600")),
                   metavar="S",
                   help="--runner app: seconds to wait for one artifact's result (default "
                        "600 + 0.5 s per prompt and generated token of every run)")
    p.add_argument("--ssh-port", type=option(PORT))
    p.add_argument("--ssh-identity")
    p.add_argument("--ssh-known-hosts", metavar="FILE",
                   help="known_hosts file that holds the board's host key; checked strictly "
                        "(default: ssh's own known_hosts and settings)")
    p.add_argument("--remote-python", default="python3",
                   help="python on the ssh board that has flora-export installed")
    p.add_argument("--out", default="bench-out",
                   help="directory for bench.json, bench.md, bench.png (default ./bench-out)")
    p.add_argument("--name", default="bench", help="file stem of the outputs (default bench)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def parse_artifacts(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or name.startswith("eager:"):
            name, spec = (Path(item).name if not item.startswith("eager:") else item), item
        if name in out:
            raise FloraError(f"two artifacts are named {name!r}", "name them: NAME=DIR")
        if not spec.startswith("eager:") and not Path(spec).is_dir():
            raise FloraError(f"artifact directory {spec} does not exist",
                             "pass an export directory (flora-export --out DIR)")
        out[name] = spec
    return out


def check_lengths(artifacts: dict[str, str], prompt_len: int, gen_len: int) -> None:
    """Prompt + generated tokens fit every export's KV cache, checked before any run."""
    import json

    for name, spec in artifacts.items():
        path = Path(spec) / "manifest.json"
        if spec.startswith("eager:") or not path.is_file():
            continue
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FloraError(f"{path} is not readable JSON ({e})",
                             "pass a flora-export output directory, or export it again"
                             ) from None
        rt = manifest.get("runtime") if isinstance(manifest, dict) else None
        max_seq = rt.get("max_seq_len") if isinstance(rt, dict) else None
        if not isinstance(max_seq, int):
            raise FloraError(f"{path} has no runtime.max_seq_len",
                             "pass a flora-export output directory, or export it again")
        if prompt_len + gen_len > max_seq:
            raise FloraError(f"--prompt-len {prompt_len} + --gen-len {gen_len} exceed the "
                             f"max_seq_len {max_seq} of {name} ({spec})",
                             "lower --prompt-len/--gen-len or export with a larger --max-seq")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("flora-bench", args.verbose, lambda: _bench(args))


def _bench(args) -> int:
    from .harness import BenchConfig, run_bench
    from .report import check_outputs, markdown, write_all
    from .transports import make_transport

    args.out = check_outputs(args.out, args.name)      # before any run: fail fast
    if args.reports:
        return _from_reports(args)
    artifacts = parse_artifacts(args.artifacts)
    check_lengths(artifacts, args.prompt_len, args.gen_len)
    config = BenchConfig(prompt_len=args.prompt_len, gen_len=args.gen_len, runs=args.runs,
                         warmup=args.warmup, threads=args.threads, cooldown_s=args.cooldown,
                         passes=args.passes, engine=args.engine)
    transport = make_transport(args.device, args.runner, args.ssh_port, args.ssh_identity,
                               args.remote_python, app_timeout_s=args.app_timeout,
                               ssh_known_hosts=args.ssh_known_hosts)
    result = run_bench(artifacts, config, transport, args.baseline,
                       progress=lambda m: print(m, file=sys.stderr, flush=True))
    paths = write_all(result, args.out, args.name)
    print(markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _from_reports(args) -> int:
    import json

    from .app import result_from_reports
    from .report import markdown, write_all

    reports = {}
    for item in args.artifacts:
        name, sep, path = item.partition("=")
        name, path = (name, Path(path)) if sep else (Path(item).stem, Path(item))
        if not path.is_file():
            raise FloraError(f"report {path} does not exist",
                             "pass the JSON files the app wrote (Documents/bench/ on iOS, "
                             "files/bench/ on Android)")
        try:
            reports[name] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FloraError(f"report {path} is not JSON ({e})", "pass the app's report file")
    result = result_from_reports(reports, args.baseline)
    cfg = result["config"]
    title = (f"{result['transport']}: prompt {cfg['prompt_len']}, up to {cfg['gen_len']} new, "
             f"{cfg['runs']} runs (median, min–max)")
    paths = write_all(result, args.out, args.name, title)
    print(markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
