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
"""

from __future__ import annotations

import contextlib
import os
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
