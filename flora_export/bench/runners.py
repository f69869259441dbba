"""One runner per runtime: load an artifact once, then generate with exact lengths.

Every runner takes fixed prompt token ids and a forced generation length (EOS is
ignored), except the ExecuTorch LLM runner, which tokenizes a text prompt and stops at
EOS as on a phone; its figures come from its own stats (the PyTorchObserver fields).

Engines:
  executorch             the .pte in the ExecuTorch runtime (pybind Method.execute), greedy
  executorch-llm-runner  ExecuTorch's C++ TextLLMRunner (what llama_main / apps run)
  ort-genai              an ONNX Runtime GenAI folder (og.Generator with the KV buffer the
                         folder was built for, its genai_config search.max_length; EOS
                         held off until the forced length)
  eager                  the source model in PyTorch, float, static KV cache
  coreml                 extension point: Core ML prediction needs macOS

Runtimes are imported when a runner is built, never at package import. Each sample
carries the generated `text`, decoded by the runtime's own tokenizer (the file the
export's tokenizer gate checked) and streamed piece by piece through `Utf8Stream`, so a
token that is part of a character is held back, never dropped or raised on. The
ExecuTorch LLM runner is the exception: its Python `token_callback` raises
`UnicodeDecodeError` on such a piece and aborts the generation, so none is passed (the
C++ runner prints the text itself) and its figures come from its stats alone.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..errors import FloraError, unknown_name
from .stats import observer_sample, sample, stats_dict

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
EAGER_PREFIX = "eager:"


def tokenizer_file(path: Path, manifest: dict | None, backend: str) -> Path:
    """The tokenizer file the export's gate checked for `backend` (tokenizer.json when the
    manifest predates the gate)."""
    rec = ((manifest or {}).get("tokenizers") or {}).get(backend) or {}
    return Path(path) / rec.get("file", "tokenizer.json")


def read_manifest(path: Path) -> dict | None:
    f = Path(path) / MANIFEST
    return json.loads(f.read_text()) if f.exists() else None


def default_engine(spec: str) -> str:
    """The engine for an artifact: from its manifest, else from the files it holds."""
    if spec.startswith(EAGER_PREFIX):
        return "eager"
    path = Path(spec)
    if not path.is_dir():
        raise FloraError(f"artifact {spec} is not a directory",
                         "pass an export directory (model.pte or genai_config.json inside) "
                         "or eager:MODEL[+ADAPTER]")
    manifest = read_manifest(path) or {}
    backend = (manifest.get("backends") or [None])[0]
    if backend == "executorch-xnnpack" or (backend is None and any(path.glob("*.pte"))):
        return "executorch"
    if backend == "onnx" or (backend is None and (path / "genai_config.json").exists()):
        return "ort-genai"
    if backend == "coreml" or any(path.glob("*.mlpackage")):
        return "coreml"
    raise FloraError(f"{spec} holds no runnable export (no model.pte, genai_config.json or "
                     ".mlpackage)", "pass a flora-export output directory")


class Runner:
    """Load once in __init__; `generate` runs one request and returns its figures."""

    engine = ""

    def __init__(self, spec: str, threads: int):
        self.spec, self.threads = spec, threads
        self.manifest = None if spec.startswith(EAGER_PREFIX) else read_manifest(Path(spec))

    def info(self) -> dict:
        import os
        return {"engine": self.engine, "threads": self.threads, "vocab_size": self.vocab_size,
                "pid": os.getpid(),
                "bos_id": self.bos_id, "max_seq_len": self.max_seq}

    @property
    def bos_id(self) -> int | None:
        return (self.manifest or {}).get("runtime", {}).get("bos_id")

    def generate(self, prompt_ids: list[int], prompt_text: str, gen_len: int) -> dict:
        raise NotImplementedError

    def _check_length(self, n: int) -> None:
        if self.max_seq and n > self.max_seq:
            raise FloraError(f"prompt + generated tokens ({n}) exceed the export's max_seq_len "
                             f"{self.max_seq}", "lower --prompt-len/--gen-len or export with a "
                             "larger --max-seq")


def _greedy(logits, vocab: int) -> int:
    return int(logits.reshape(-1, vocab)[-1].argmax())


def _timed_greedy(step, prompt_ids: list[int], gen_len: int, vocab: int) -> dict:
    """Prefill, then greedy decode steps; `step(ids, pos)` returns logits. Time stamps are
    taken as each token is known (docs/metrics.md)."""
    t0 = time.perf_counter()
    nxt, pos = _greedy(step(prompt_ids, 0), vocab), len(prompt_ids)
    stamps, tokens = [time.perf_counter()], [nxt]
    for _ in range(gen_len - 1):
        nxt, pos = _greedy(step([nxt], pos), vocab), pos + 1
        stamps.append(time.perf_counter())
        tokens.append(nxt)
    return {**sample(t0, stamps, len(prompt_ids)), "tokens": tokens}


class ExecuTorchRunner(Runner):
    """The .pte through the ExecuTorch runtime; greedy argmax in Python (~0.1 ms/token)."""

    engine = "executorch"

    def __init__(self, spec: str, threads: int):
        super().__init__(spec, threads)
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        from ..export.executorch import load_runtime_ops

        self.torch = torch
        load_runtime_ops()
        portable_lib._unsafe_reset_threadpool(threads)
        self.threads = portable_lib._threadpool_get_thread_count()
        pte = _one(Path(spec), "*.pte", "ExecuTorch program")
        program = Runtime.get().load_program(pte)
        self.method = program.load_method("forward")
        self.vocab_size = int(self.method.metadata.output_tensor_meta(0).sizes()[-1])
        self.max_seq = _constant(program, "get_max_seq_len")
        if self.bos_id is None:
            self._bos = _constant(program, "get_bos_id")
        self.detok = _executorch_detokenizer(Path(spec), self.manifest)

    @property
    def bos_id(self):
        return super().bos_id if self.manifest else getattr(self, "_bos", None)

    def generate(self, prompt_ids, prompt_text, gen_len):
        torch, run = self.torch, self.method.execute
        self._check_length(len(prompt_ids) + gen_len)
        got = _timed_greedy(
            lambda ids, pos: run([torch.tensor([ids], dtype=torch.long), torch.tensor([pos])])[0],
            prompt_ids, gen_len, self.vocab_size)
        return {**got, "text": self.detok(got["tokens"])}


class ExecuTorchLLMRunner(Runner):
    """ExecuTorch's TextLLMRunner; figures from its stats, as a phone's llama_main gives."""

    engine = "executorch-llm-runner"

    def __init__(self, spec: str, threads: int):
        super().__init__(spec, threads)
        from executorch.extension.llm.runner import TextLLMRunner
        from executorch.extension.pybindings import portable_lib

        from ..export.executorch import load_runtime_ops

        load_runtime_ops()
        portable_lib._unsafe_reset_threadpool(threads)
        path = Path(spec)
        tok = tokenizer_file(path, self.manifest, "executorch-xnnpack")
        if not tok.is_file():
            tok = _one(path, "tokenizer*", "tokenizer")
        self.runner = TextLLMRunner(str(_one(path, "*.pte", "ExecuTorch program")), str(tok))
        vocab = ((self.manifest or {}).get("model", {}).get("config", {}).get("vocab_size"))
        self.vocab_size = vocab or self.runner.get_vocab_size()
        self.max_seq = (self.manifest or {}).get("runtime", {}).get("max_seq_len")

    def generate(self, prompt_ids, prompt_text, gen_len):
        from executorch.extension.llm.runner import GenerationConfig

        got = []
        cfg = GenerationConfig(max_new_tokens=gen_len, temperature=0.0, echo=False,
                               seq_len=self.max_seq or -1)
        # the same prompt as every engine (the harness's fixed ids, no bos), so prompt
        # lengths compare; a chat app applies runtime.bos_policy (docs/tokenizers.md)
        self.runner.generate(prompt_text, cfg, stats_callback=got.append)
        self.runner.reset()
        return {**observer_sample(stats_dict(got[-1])), "observer": stats_dict(got[-1])}


class OrtGenAIRunner(Runner):
    """An ORT-GenAI folder; intra-op threads set through a config overlay (files untouched)."""

    engine = "ort-genai"

    def __init__(self, spec: str, threads: int):
        super().__init__(spec, threads)
        import numpy as np
        import onnxruntime_genai as og

        self.og, self.np = og, np
        config = og.Config(spec)
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads}}}}))
        self.model = og.Model(config)
        genai = json.loads((Path(spec) / "genai_config.json").read_text())
        self.vocab_size = genai["model"]["vocab_size"]
        self.max_seq = (self.manifest or {}).get("runtime", {}).get("max_seq_len")
        self._bos = genai["model"].get("bos_token_id")
        # The folder's own KV buffer length: a folder whose attention keeps a ring buffer
        # of its sliding window (the model builder's `sliding_window_cache`) refuses a
        # buffer shorter than the window, and every folder is timed at what it was built for.
        self.kv_len = genai.get("search", {}).get("max_length")
        self.tokenizer = og.Tokenizer(self.model)

    @property
    def bos_id(self):
        return super().bos_id if self.manifest else self._bos

    def generate(self, prompt_ids, prompt_text, gen_len):
        total = len(prompt_ids) + gen_len
        self._check_length(total)
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=max(total, self.kv_len or 0), min_length=total,
                                  do_sample=False)
        t0 = time.perf_counter()
        gen = self.og.Generator(self.model, params)
        gen.append_tokens(self.np.array(prompt_ids, dtype=self.np.int32))
        stamps, tokens = [], []
        while not gen.is_done() and len(tokens) < gen_len:   # bounded: see docs/tokenizers.md
            gen.generate_next_token()
            tokens.append(int(gen.get_next_tokens()[0]))
            stamps.append(time.perf_counter())
        stream = self.tokenizer.create_stream()     # holds partial UTF-8 until it completes
        text = "".join(stream.decode(t) for t in tokens)
        return {**sample(t0, stamps, len(prompt_ids)), "tokens": tokens, "text": text}


class EagerRunner(Runner):
    """The float source model in PyTorch with its static KV cache (the reference the export
    was verified against), for `eager:MODEL[+ADAPTER]` or an export whose manifest names a
    reloadable source (a model directory or preset, an adapter directory)."""

    engine = "eager"

    def __init__(self, spec: str, threads: int):
        super().__init__(spec, threads)
        import torch

        from ..adapters import load_adapter
        from ..fuse import fuse, merge_lora
        from ..model import load_model

        torch.set_num_threads(threads)
        self.torch = torch
        model_src, adapter_src, max_seq, state = self._sources()
        model = load_model(model_src)
        if adapter_src:
            load_adapter(model, adapter_src)
            if model.adapter_state.is_ffba and state != "unfused":
                fuse(model)
            elif model.adapter_state.is_lora and state != "unmerged":
                merge_lora(model)
        self.model = model.setup_cache(max_seq).eval()
        self.vocab_size, self.max_seq = model.config.vocab_size, max_seq
        self._bos = model.config.bos_token_id

    @property
    def bos_id(self):
        return self._bos

    def _sources(self) -> tuple[str, str | None, int, str | None]:
        if self.spec.startswith(EAGER_PREFIX):
            model, _, adapter = self.spec[len(EAGER_PREFIX):].partition("+")
            return model, adapter or None, 512, None
        m = self.manifest or {}
        src, adapter = m.get("model", {}), m.get("adapter")
        model = src.get("name") if src.get("kind") == "preset" else src.get("path")
        if not model or src.get("seed", 0) != 0:
            raise FloraError(f"the manifest of {self.spec} names no reloadable source model",
                             "run the source eagerly with eager:MODEL[+ADAPTER]")
        if adapter and not (adapter.get("source") or {}).get("path"):
            raise FloraError(f"the adapter of {self.spec} was not loaded from a directory, so "
                             "it cannot be rebuilt eagerly", "use eager:MODEL+ADAPTER_DIR")
        return (model, adapter and adapter["source"]["path"], m["runtime"]["max_seq_len"],
                adapter and adapter.get("state"))

    def generate(self, prompt_ids, prompt_text, gen_len):
        torch = self.torch
        self._check_length(len(prompt_ids) + gen_len)
        with torch.inference_mode():
            return _timed_greedy(
                lambda ids, pos: self.model(torch.tensor([ids]), torch.tensor([pos]),
                                            last_only=True),
                prompt_ids, gen_len, self.vocab_size)


class CoreMLRunner(Runner):
    """Extension point for Core ML packages: prediction only runs on macOS."""

    engine = "coreml"

    def __init__(self, spec: str, threads: int):
        import platform

        if platform.system() != "Darwin":
            raise FloraError("Core ML prediction needs macOS (coremltools cannot run a model "
                             "on Linux)", "run flora-bench on a Mac, or pass --engine for "
                             "another backend of this export")
        raise FloraError("the Core ML runner is not implemented yet",
                         "register one with flora_export.bench.runners.register_engine")


ENGINES: dict[str, type[Runner]] = {
    "executorch": ExecuTorchRunner, "executorch-llm-runner": ExecuTorchLLMRunner,
    "ort-genai": OrtGenAIRunner, "eager": EagerRunner, "coreml": CoreMLRunner}


def register_engine(name: str, cls: type[Runner]) -> None:
    """Add a runner (for instance Core ML on macOS) under `name`."""
    ENGINES[name] = cls


def make_runner(spec: str, engine: str | None, threads: int) -> Runner:
    engine = engine or default_engine(spec)
    if engine not in ENGINES:
        raise unknown_name("engine", engine, ENGINES)
    return ENGINES[engine](spec, threads)


def _executorch_detokenizer(path: Path, manifest: dict | None):
    """ids -> text with the C++ tokenizer TextLLMRunner uses, streamed as an app must."""
    tok = tokenizer_file(path, manifest, "executorch-xnnpack")
    if not tok.is_file():
        return lambda ids: None
    from ..export.tokenizer_runtimes import ExecuTorchTokenizer

    return ExecuTorchTokenizer(tok).stream


def _one(path: Path, pattern: str, what: str) -> Path:
    found = sorted(p for p in path.glob(pattern) if p.is_file())
    if not found:
        raise FloraError(f"{path} holds no {what} ({pattern})", "pass a complete export directory")
    return found[0]


def _constant(program, name: str) -> int | None:
    try:
        return int(program.load_method(name).execute([])[0])
    except Exception:  # noqa: BLE001  (older programs lack the metadata method)
        return None
