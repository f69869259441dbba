"""`llama_main` for Linux hosts and boards with the executorch wheel: the flags of
ExecuTorch's examples/models/llama runner, run by ExecuTorch's C++ TextLLMRunner (through
its Python binding), printing the runner's own `PyTorchObserver {...}` stats line.

    python -m flora_export.bench.llama_main --model_path=out/model.pte \\
        --tokenizer_path=out/tokenizer.json --prompt="Hello" --max_new_tokens=32

flora-bench's native-runner sessions (--runner) parse its output exactly as they parse
the C++ llama_main's on a phone, so the ssh transport can be exercised without an
arm64 build. It is not the Android binary (see benchmarks/README.md for that).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llama_main", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True)
    p.add_argument("--tokenizer_path", required=True)
    p.add_argument("--prompt", default="Hello")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seq_len", type=int, default=-1)
    p.add_argument("--max_new_tokens", type=int, default=-1)
    p.add_argument("--cpu_threads", type=int, default=-1)
    p.add_argument("--warmup", default="false")
    args = p.parse_args(argv)
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner
    from executorch.extension.pybindings import portable_lib

    from ..export.executorch import load_runtime_ops

    load_runtime_ops()
    if args.cpu_threads > 0:
        portable_lib._unsafe_reset_threadpool(args.cpu_threads)
    runner = TextLLMRunner(args.model_path, args.tokenizer_path)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           seq_len=args.seq_len, echo=False)
    if args.warmup.lower() in ("1", "true"):
        runner.generate(args.prompt, GenerationConfig(max_new_tokens=4, temperature=0.0,
                                                      seq_len=args.seq_len, warming=True))
        runner.reset()
    runner.generate(args.prompt, cfg)       # the C++ runner prints tokens and PyTorchObserver
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
