"""The runtimes' own tokenizers, loaded the way each runtime loads them.

ExecuTorch: `TextLLMRunner(pte, tokenizer_path)` picks its tokenizer in
`llm::load_tokenizer` (extension/llm/runner/llm_runner_helper.cpp): tekken.json, then
`tokenizers::HFTokenizer` (any JSON file), Tiktoken, `tokenizers::SPTokenizer`
(a SentencePiece .model), Llama2c. The wheel's `pytorch_tokenizers` binds the same C++
classes (`CppHFTokenizer`, `CppSPTokenizer`). The runner encodes the prompt with
`encode(prompt, num_bos, num_eos)` and streams each generated token as the bytes of
its piece, special tokens shown as their text.

ONNX: `onnxruntime_genai.Tokenizer` on the model folder (tokenizer.json +
tokenizer_config.json + genai_config.json), streamed with `create_stream()` as ORT-GenAI's
examples do; it hides special tokens.

The gate runs each of them inside `IsolatedTokenizer`, a forked child: both are native
code reading a file the user brought, and a crash or hang there must become a refusal
that names the runtime, not the end of flora-export.
"""

from __future__ import annotations

import builtins
import contextlib
import faulthandler
import multiprocessing
import os
import signal
import sys
import tempfile
from pathlib import Path

from ..utf8 import piece_bytes, stream_text


class ExecuTorchTokenizer:
    runtime = "ExecuTorch TextLLMRunner"
    specials_shown = True

    def __init__(self, path: Path):
        import pytorch_tokenizers as pt

        self.path = Path(path)
        sp = self.path.suffix == ".model"
        self.cls = "pytorch_tokenizers.CppSPTokenizer" if sp else "pytorch_tokenizers.CppHFTokenizer"
        self.tok = pt.CppSPTokenizer() if sp else pt.CppHFTokenizer()
        with quiet_fds():
            self.tok.load(str(self.path))

    def encode(self, text: str, num_bos: int = 0) -> list[int]:
        return list(self.tok.encode(text, num_bos, 0))

    def pieces(self, ids: list[int]) -> list[bytes]:
        return [piece_bytes(self.tok, i) for i in ids]

    def stream(self, ids: list[int]) -> str:
        return stream_text(self.pieces(ids))

    def bos(self) -> int:
        return int(self.tok.bos_tok())


class OrtGenAITokenizer:
    runtime = "ORT-GenAI"
    specials_shown = False
    cls = "onnxruntime_genai.Tokenizer"

    def __init__(self, folder: Path):
        import onnxruntime_genai as og

        self.tok = og.Tokenizer(str(folder))

    def encode(self, text: str, num_bos: int = 0) -> list[int]:
        return [int(i) for i in self.tok.encode(text)]

    def stream(self, ids: list[int]) -> str:
        s = self.tok.create_stream()
        return "".join(s.decode(int(i)) for i in ids)

    def whole(self, ids: list[int]) -> str:
        return self.tok.decode(ids)


class IsolatedTokenizer:
    """`cls(*args)` loaded and called in a forked child process; the same attributes and
    methods as `cls`. An exception in the child is raised here with its type and message;
    a child that dies (SIGSEGV, abort) or stays silent for `timeout` seconds raises
    RuntimeError naming it, and the child is gone. `close()` ends the child."""

    timeout = 60.0

    def __init__(self, cls, *args):
        self.runtime, self.specials_shown = cls.runtime, cls.specials_shown
        self._methods = {n for n in ("encode", "pieces", "stream", "whole", "bos")
                         if hasattr(cls, n)}
        ctx = multiprocessing.get_context("fork")   # no re-import: the child starts in ms
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, cls, args), daemon=True)
        self._proc.start()
        child.close()
        self.cls = self._call("__init__")        # its class name; raises what loading raised

    def __getattr__(self, name):
        if name.startswith("_") or name not in self._methods:
            raise AttributeError(name)
        return lambda *a: self._call(name, *a)

    def _call(self, name: str, *args):
        if self._proc is None:
            raise RuntimeError(f"{self.runtime}'s tokenizer is no longer running")
        try:
            self._conn.send((name, args))
            if not self._conn.poll(self.timeout):
                self.close()
                raise RuntimeError(f"{self.runtime}'s tokenizer did not answer {name} in "
                                   f"{self.timeout:.0f} s")
            status, value = self._conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self._proc.join(5)
            code = self._proc.exitcode
            self.close()
            how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
                   else f"exited with status {code}")
            raise RuntimeError(f"{self.runtime}'s tokenizer crashed ({how})") from None
        if status == "ok":
            return value
        kind, message = value
        exc = getattr(builtins, kind, None)
        raise (exc(message) if isinstance(exc, type) and issubclass(exc, Exception)
               else RuntimeError(f"{kind}: {message}"))

    def close(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._proc.kill()
            self._proc.join(5)
            self._proc = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


def _serve(conn, cls, args) -> None:
    """The child: load, then answer calls until the pipe closes. A crash is reported by the
    parent in one line, so the child prints no crash dump of its own."""
    faulthandler.disable()
    tok = None
    while True:
        try:
            name, call_args = conn.recv()
        except EOFError:
            os._exit(0)
        try:
            if name == "__init__":
                tok = cls(*args)
                value = tok.cls
            else:
                value = getattr(tok, name)(*call_args)
            reply = ("ok", value)
        except Exception as e:  # noqa: BLE001  (sent to the parent, raised there)
            reply = ("error", (type(e).__name__, str(e)[:400]))
        conn.send(reply)


@contextlib.contextmanager
def quiet_fds():
    """Native libraries log to fd 1/2; keep that out of the CLI's output."""
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def executorch_generate(pte: Path, tokenizer: Path, prompt: str, num_bos: int, n: int,
                        max_seq: int) -> tuple[bytes, int, int]:
    """Run ExecuTorch's TextLLMRunner greedily: (what it printed, prompt tokens, generated
    tokens). Its Python token_callback cannot carry a partial UTF-8 piece (the binding
    raises UnicodeDecodeError), so the runner's own output on fd 1 is read instead."""
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    from .executorch import load_runtime_ops

    load_runtime_ops()
    stats = []
    sys.stdout.flush()                # nothing of Python's own output lands in the capture
    with tempfile.TemporaryFile() as out:
        saved = os.dup(1)
        os.dup2(out.fileno(), 1)
        try:
            runner = TextLLMRunner(str(pte), str(tokenizer))
            runner.generate(prompt, GenerationConfig(
                max_new_tokens=n, temperature=0.0, echo=False, seq_len=max_seq,
                num_bos=num_bos), stats_callback=stats.append)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        out.seek(0)
        printed = out.read()
    text = printed.rpartition(b"\nPyTorchObserver ")[0]
    s = stats[-1]
    return text, int(s.num_prompt_tokens), int(s.num_generated_tokens)


def printed_like_runner(pieces: list[bytes]) -> bytes:
    """What TextLLMRunner prints for these pieces: its `safe_printf` skips a piece that is
    one byte that is neither printable nor whitespace (extension/llm/runner/util.h)."""
    keep = [p for p in pieces if p and not (len(p) == 1 and not _printable_or_space(p[0]))]
    return b"".join(keep)


def _printable_or_space(b: int) -> bool:   # C's isprint/isspace in the "C" locale
    return 0x20 <= b < 0x7F or b in b" \t\n\v\f\r"


def ortgenai_generate(folder: Path, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy ids from ORT-GenAI's generator (bounded by a token count: see docs)."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    total = len(prompt_ids) + n
    params.set_search_options(max_length=total, min_length=total, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array(prompt_ids, dtype=np.int32))
    out = []
    while len(out) < n and not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out
