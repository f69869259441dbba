"""The board side of `flora-export verify`: CPU facts, the ISA check, the runtime's logits.

A standalone script: it imports only the standard library, numpy, safetensors and the
runtime it drives (ExecuTorch's Python runtime loads torch itself; ONNX needs no torch),
never flora_export, so `flora-export verify --device ssh:HOST` sends it to the board on
stdin and the board needs no flora-export install:

    python3 - run JOB_JSON     # < board.py; JOB_JSON {"exports": [{"dir", "out", "backends"}],
                               #   "threads"}; prints one JSON line
    python3 board.py facts                          # this machine's CPU and runtimes
    python3 board.py cpuinfo N                      # an arm64 /proc/cpuinfo (emulated boards)

`run` drives each backend of each export through its verification sequence (the tokens and
prompt length stored in verify_reference.safetensors): a prefill, then one decode step per
position, the same steps as the export's own check, and writes the logits to the job's
`out` (safetensors, float32 [positions, vocab] per backend). One process serves all the
exports of a command, so a runtime's import (~20 s under emulation) is paid once. The comparison with the eager
reference and the thresholds run on the host (flora_export.verify_cli), with verify.py.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

REFERENCE = "verify_reference.safetensors"

# Linux arm64 HWCAP / HWCAP2 bits (arch/arm64/include/uapi/asm/hwcap.h), as /proc/cpuinfo
# names them in its Features line
HWCAP = ["fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp",
         "asimdhp", "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4",
         "asimddp", "sha512", "sve", "asimdfhm", "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb",
         "paca", "pacg"]
HWCAP2 = ["dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2",
          "frint", "svei8mm", "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "dgh", "rng",
          "bti", "mte", "ecv", "afp", "rpres", "mte3", "sme"]
AT_HWCAP, AT_HWCAP2 = 16, 26

# What each runtime's aarch64 wheel needs beyond ARMv8.0 (measured under QEMU, docs/arm64.md):
# ExecuTorch's custom-ops library (llama.custom_sdpa / update_cache) uses LSE atomics
# (`ldaddal`) and dies with SIGILL on an ARMv8.0 core such as the Cortex-A72 (Raspberry Pi 4).
REQUIRED_FEATURES = {"executorch-xnnpack": {"atomics": "ARMv8.1 LSE atomics"}, "onnx": {}}
# Features that pick the int8/int4 kernels (reported, not required)
KERNEL_FEATURES = ("asimd", "atomics", "asimddp", "i8mm", "sve", "sve2", "bf16", "fphp",
                   "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                   "avx512_bf16", "amx_tile", "amx_int8")

# MIDR (implementer, part) for an emulated CPU's cpuinfo; QEMU's own `max` is reported as a
# Neoverse N1 (any valid MIDR satisfies the cpuinfo library), its features are the HWCAPs
_MIDR = {"a64fx": (0x46, 0x001), "cortex-a53": (0x41, 0xd03), "cortex-a55": (0x41, 0xd05),
         "cortex-a57": (0x41, 0xd07), "cortex-a72": (0x41, 0xd08), "cortex-a76": (0x41, 0xd0b),
         "neoverse-n1": (0x41, 0xd0c), "neoverse-v1": (0x41, 0xd40), "neoverse-n2": (0x41, 0xd49)}


def hwcap_features() -> list[str] | None:
    """The kernel's (or QEMU's) HWCAP feature names on aarch64; None elsewhere."""
    if platform.machine() not in ("aarch64", "arm64"):
        return None
    import ctypes

    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    bits = (libc.getauxval(AT_HWCAP), libc.getauxval(AT_HWCAP2))
    return [name for word, names in zip(bits, (HWCAP, HWCAP2))
            for i, name in enumerate(names) if word >> i & 1]


def cpuinfo_features() -> list[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("Features", "flags"):
                    return value.split()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor()
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "model name" in fields:
        return fields["model name"]
    if "CPU implementer" in fields:
        return f"implementer {fields['CPU implementer']} part {fields.get('CPU part', '?')}"
    return fields.get("Hardware", platform.processor())


def facts() -> dict:
    feats = hwcap_features()
    source = "HWCAP" if feats is not None else "/proc/cpuinfo"
    feats = feats if feats is not None else (cpuinfo_features() or [])
    return {"arch": platform.machine(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "features_source": source, "features": feats,
            "kernel_features": [x for x in KERNEL_FEATURES if x in feats],
            "qemu_cpu": os.environ.get("QEMU_CPU"), "python": platform.python_version(),
            "versions": runtime_versions()}


def runtime_versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("executorch", "onnxruntime", "onnxruntime-genai", "torch", "numpy",
                 "safetensors", "tokenizers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def unsupported(backend: str, f: dict) -> str | None:
    """Why this CPU cannot run `backend`'s runtime, or None."""
    if f["arch"] not in ("aarch64", "arm64"):
        return None
    missing = [what for feat, what in REQUIRED_FEATURES.get(backend, {}).items()
               if feat not in f["features"]]
    if not missing:
        return None
    return (f"this CPU ({f['cpu']}) lacks {', '.join(missing)}, which the {backend} runtime's "
            "aarch64 build needs (ARMv8.1 or later: e.g. Cortex-A55/A76, Raspberry Pi 5, "
            "Neoverse; not ARMv8.0 cores such as the Cortex-A53/A72 of a Raspberry Pi 3/4)")


def cpuinfo(n: int) -> str:
    """An arm64 /proc/cpuinfo for n cores: the HWCAP features, a MIDR for $QEMU_CPU."""
    impl, part = _MIDR.get(os.environ.get("QEMU_CPU", "max"), _MIDR["neoverse-n1"])
    feats = " ".join(hwcap_features() or [])
    block = (f"BogoMIPS\t: 50.00\nFeatures\t: {feats}\nCPU implementer\t: {impl:#04x}\n"
             f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part:#05x}\n"
             "CPU revision\t: 0\n")
    return "".join(f"processor\t: {i}\n{block}\n" for i in range(n))


# --- the runtimes, driven step by step ------------------------------------------------------

def executorch_step(folder: str, manifest: dict, threads: int):
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (llama.* kernels)
    import executorch.kernels.quantized  # noqa: F401
    import torch

    if threads:
        portable_lib._unsafe_reset_threadpool(threads)
    pte = os.path.join(folder, "model.pte")
    method = Runtime.get().load_program(pte).load_method("forward")

    def step(tokens, pos):
        out = method.execute([torch.from_numpy(tokens), torch.tensor([pos], dtype=torch.long)])
        return out[0].reshape(-1).float().numpy()
    return step


def onnx_step(folder: str, manifest: dict, threads: int):
    import numpy as np
    import onnxruntime as ort

    cfg = manifest["model"]["config"]
    n_layers, n_kv = cfg["num_hidden_layers"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    max_seq = manifest["runtime"]["max_seq_len"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(os.path.join(folder, "model.onnx"), opts,
                                providers=["CPUExecutionProvider"])
    names = ["input_ids", "attention_mask"] + [f"past_key_values.{i}.{kv}"
                                               for i in range(n_layers) for kv in ("key", "value")]
    past = [np.zeros((1, n_kv, max_seq, head_dim), np.float32) for _ in range(2 * n_layers)]

    def step(tokens, pos):
        total = pos + tokens.shape[1]
        outs = sess.run(None, dict(zip(names, [tokens, np.ones((1, total), np.int64), *past])))
        past[:] = outs[1:]
        return np.asarray(outs[0][0, -1], dtype=np.float32)
    return step


def genai_step(folder: str, manifest: dict, threads: int):
    """ORT-GenAI's generator, teacher-forced: append the prompt, then one token per step
    (the engine the ORT-GenAI apps run; its logits after each append)."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(folder)
    gen = og.Generator(model, og.GeneratorParams(model))

    def step(tokens, pos):
        gen.append_tokens([int(t) for t in tokens[0]])
        return np.asarray(gen.get_logits(), dtype=np.float32).reshape(-1)
    return step


STEPS = {"executorch": executorch_step, "onnxruntime": onnx_step, "ort-genai": genai_step}
# backend -> the engines that run it; each is compared with the backend's reference
ENGINES = {"executorch-xnnpack": ("executorch",), "onnx": ("onnxruntime", "ort-genai")}
_OPTIONAL = {"ort-genai": "onnxruntime_genai"}     # reported as skipped when not installed


def run_sequence(step, tokens, prompt_len: int, positions: int) -> list:
    """Prefill tokens[:, :prompt_len], then decode steps: `positions` logits in all (the
    export's run_steps + continue_steps order)."""
    out = [step(tokens[:, :prompt_len], 0)]
    for i in range(positions - 1):
        pos = prompt_len + i
        out.append(step(tokens[:, pos:pos + 1], pos))
    return out


def read_reference(folder: str):
    """(tokens [1, T] int64, prompt_len, {backend: positions}) from the export's reference."""
    import numpy as np
    from safetensors.numpy import load_file

    path = os.path.join(folder, REFERENCE)
    with open(path, "rb") as fh:                    # the header's metadata
        meta = json.loads(fh.read(int.from_bytes(fh.read(8), "little"))).get("__metadata__", {})
    tokens = load_file(path)["tokens"].astype(np.int64)
    return tokens, int(meta["prompt_len"]), {b: int(n) for b, n in
                                             json.loads(meta["positions"]).items()}


def tokenizer_answers(folder: str, backend: str, probe: dict) -> dict:
    """The runtime's own tokenizer on the shipped file: encode each probe text, decode HF's
    ids streamed and whole (flora_export.export.tokenizer_runtimes, staged beside this
    script without the rest of flora_export)."""
    from flora_export.export.tokenizer_runtimes import ExecuTorchTokenizer, OrtGenAITokenizer

    try:
        rt = (ExecuTorchTokenizer(os.path.join(folder, probe["file"]))
              if backend == "executorch-xnnpack" else OrtGenAITokenizer(folder))
    except Exception as e:  # the runtimes raise plain RuntimeError
        return {"load_error": f"{type(e).__name__}: {str(e)[:200]}"}

    def attempt(fn, arg):
        try:
            return fn(arg)
        except Exception as e:  # recorded as the runtime's answer
            return f"error: {type(e).__name__}: {str(e)[:120]}"
    return {"runtime": rt.runtime, "answers": [
        {"encode": attempt(rt.encode, text), "stream": attempt(rt.stream, ids),
         "whole": attempt(rt.whole, ids) if hasattr(rt, "whole") else None}
        for text, ids in zip(probe["texts"], probe["ids"])]}


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run(jobs: list[dict], threads: int = 0) -> dict:
    """jobs: [{"dir", "out", "backends"}]; every backend is checked against this CPU first."""
    import numpy as np
    from safetensors.numpy import save_file

    f = facts()
    for job in jobs:
        for b in job["backends"]:
            why = unsupported(b, f)
            if why:
                return {"ok": False, "unsupported": why, "backend": b, "facts": f}
    results = []
    for job in jobs:
        with open(os.path.join(job["dir"], "manifest.json")) as fh:
            manifest = json.load(fh)
        tokens, prompt_len, positions = read_reference(job["dir"])
        logits, report = {}, {}
        for b in job["backends"]:
            for engine in ENGINES[b]:
                if engine in _OPTIONAL and not _importable(_OPTIONAL[engine]):
                    report[engine] = {"backend": b, "skipped": f"{_OPTIONAL[engine]} is not "
                                                               "installed"}
                    continue
                t0 = time.perf_counter()
                step = STEPS[engine](job["dir"], manifest, threads)
                t1 = time.perf_counter()
                got = run_sequence(step, tokens, prompt_len, positions[b])
                t2 = time.perf_counter()
                del step
                logits[engine] = np.stack(got).astype(np.float32)
                report[engine] = {"backend": b, "positions": positions[b],
                                  "load_s": round(t1 - t0, 3), "steps_s": round(t2 - t1, 3)}
        save_file(logits, job["out"])
        for b, probe in (job.get("tokenizer") or {}).items():
            report.setdefault("tokenizer", {})[b] = tokenizer_answers(job["dir"], b, probe)
        results.append(report)
    return {"ok": True, "facts": f, "exports": results}


def main(argv: list[str]) -> int:
    if argv[:1] == ["facts"]:
        print(json.dumps(facts()))
        return 0
    if argv[:1] == ["cpuinfo"] and len(argv) == 2:
        sys.stdout.write(cpuinfo(int(argv[1])))
        return 0
    if argv[:1] == ["run"] and len(argv) == 2:
        # native runtimes print to fd 1: keep the JSON line on a private copy of stdout
        reply_fd = os.dup(1)
        os.dup2(2, 1)
        try:
            job = json.loads(argv[1])
            reply = run(job["exports"], int(job.get("threads", 0)))
        except Exception as e:  # reported to the host as one line
            reply = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:400]}"}
        os.write(reply_fd, (json.dumps(reply) + "\n").encode())
        return 0
    print("usage: board.py facts | cpuinfo N | run JOB_JSON", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
