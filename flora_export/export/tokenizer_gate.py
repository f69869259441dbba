"""The runtime tokenizer gate: what the phone's runtime reads is what the model was made for.

Run in the export's staging directory, before anything is renamed into place. For each
backend the runtime's own tokenizer loads the file(s) the artifact would ship; on the
probe set (tokenizer_files.PROBE_TEXTS, the special tokens, the chat template) its
encode must equal Hugging Face's ids and its streamed decode HF's text. When the
source's tokenizer.json fails, equivalent files are tried (the source's SentencePiece
`tokenizer.model`; rewrites proven on the same probes) and the first that passes ships.
Otherwise the export is refused in one line, unless `allow_mismatch`, in which case the
manifest lists every mismatch. Then a real prompt goes through the runtime's tokenizer
with the bos policy recorded in the manifest, is generated greedily in the runtime,
detokenized there, and compared with the fp32 model's greedy text.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from ..errors import FloraError
from ..verify import reference_sequence
from ..chat_template import fill
from .tokenizer_files import Reference, probe_texts, special_ids, token_text
from .tokenizer_rewrites import candidates
from .tokenizer_runtimes import (ExecuTorchTokenizer, IsolatedTokenizer, OrtGenAITokenizer,
                                 executorch_generate, ortgenai_generate, printed_like_runner)

log = logging.getLogger(__name__)

TEXT_PROMPT = "Say café, 東京 or 😀 42:"
TEXT_STEPS = 12
_CAP = 24   # ids / characters kept per mismatch in the manifest
NOT_CHECKED = ("not checked here: the iOS app tokenizes with swift-transformers, which "
               "cannot run on this machine")


@dataclass
class TextCase:
    """The text-in/text-out case, computed on the fp32 model before quantization."""
    text: str            # the prompt as text, bos text first when the tokenizer has one
    bos_text: str | None
    ids: list[int]       # bos + HF ids: what the model must see
    greedy: list[int]    # the fp32 model's greedy continuation, up to the first eos
    note: str = ""       # why `greedy` is empty, when it is


def prompt_case(tokenizer_json: str, bos: int, chat: dict | None, vocab_size: int) -> TextCase:
    """The verification prompt as text and as the ids the model must see (no generation)."""
    ref = Reference(tokenizer_json)
    bos_text = token_text(tokenizer_json, bos)
    body = fill(chat["template"], TEXT_PROMPT) if chat else TEXT_PROMPT
    if bos_text and body.startswith(bos_text):
        body = body[len(bos_text):]
    ids = [bos] + [i for i in ref.encode(body) if i < vocab_size]
    return TextCase((bos_text or "") + body, bos_text, ids, [])


def text_case(model, bos: int, eos: list[int], chat: dict | None, max_seq: int) -> TextCase:
    """prompt_case + the fp32 model's greedy continuation (run before quantization). When the
    model answers the chat prompt with eos at once (a trained model may), the plain prompt
    is used, so the comparison has text to compare."""
    for fmt in ([chat, None] if chat else [None]):
        case = prompt_case(model.tokenizer_json, bos, fmt, model.config.vocab_size)
        steps = min(TEXT_STEPS, max_seq - len(case.ids) - 1)
        if steps < 1:   # the prompt fills the cache: no text to compare (recorded as such)
            case.note = f"the prompt ({len(case.ids)} tokens) leaves no room in max_seq {max_seq}"
            continue
        tokens, _ = reference_sequence(model, case.ids, steps)
        greedy = [int(t) for t in tokens[0, len(case.ids):]]
        case.greedy = greedy[:next((k for k, t in enumerate(greedy) if t in eos), len(greedy))]
        if case.greedy:
            break
        case.note = "the fp32 model answers with eos at once"
    return case


def check(backend: str, out: Path, model, case: TextCase, chat: dict | None,
          quantized: bool, max_seq: int, allow_mismatch: bool = False) -> dict:
    """Gate one backend's tokenizer and its text round trip; writes the file it ships into
    `out`; returns its manifest record."""
    if backend == "coreml":
        return {"runtime": "swift-transformers (iOS app)", "checked": False, "note": NOT_CHECKED,
                "file": "tokenizer.json"}
    with tempfile.TemporaryDirectory(prefix="flora-tok-") as scratch:
        record, chosen = choose(backend, out, model.tokenizer_json,
                                model.source.tokenizer_files if model.source else {}, case, chat,
                                allow_mismatch, Path(scratch))
        try:
            if chosen["_rt"] is not None and chosen["bos_policy"] is not None:
                record["text"] = _text(backend, out, chosen, Reference(model.tokenizer_json),
                                       case, quantized, max_seq, allow_mismatch)
        finally:
            for rt in chosen.pop("_all"):
                rt.close()
    return record


def choose(backend: str, out: Path, tokenizer_json: str, files: dict, case: TextCase,
           chat: dict | None, allow_mismatch: bool, scratch: Path) -> tuple[dict, dict]:
    """Try the candidate files in the runtime's tokenizer on the probe set; ship the first
    that passes (or refuse); (manifest record, the chosen candidate)."""
    ref = Reference(tokenizer_json)
    probes = probe_texts(tokenizer_json, chat)
    specials = special_ids(tokenizer_json)
    tried, chosen = [], None
    for i, (name, how, data, rule) in enumerate(_candidates(backend, tokenizer_json, files)):
        rt, problem = _load(backend, scratch / str(i), name, data, out)
        prep = prepare(rule)
        found = [problem] if problem else _probe(rt, ref, probes, prep)
        quirks = [f for f in found if _quirk(f, specials)]
        mism = [f for f in found if f not in quirks]
        policy = None if problem else _bos_policy(rt, backend, case, prep)
        if policy is None and not problem:
            mism.append({"check": "bos", "hf": case.ids[:_CAP],
                         "runtime": "no call gives bos + the prompt's ids"})
        tried.append({"file": name, "how": how, "class": rt.cls if rt else _cls(backend, name),
                      "input_normalization": rule, "mismatches": len(mism), "found": mism[:20],
                      "quirks": quirks[:8], "_rt": rt, "_data": data, "bos_policy": policy})
        if not mism:
            chosen = tried[-1]
            break
    if chosen is None:
        if not allow_mismatch:
            for t in tried:
                if t["_rt"] is not None:
                    t["_rt"].close()
            raise FloraError(_refusal(backend, tried, tokenizer_json),
                             "pass --allow-tokenizer-mismatch to export anyway (the manifest "
                             "lists every mismatch); docs/tokenizers.md lists the layouts "
                             "each runtime reads")
        chosen = next((t for t in tried if t["_rt"] is not None), tried[0])
    chosen["_all"] = [t["_rt"] for t in tried if t["_rt"] is not None]
    _ship(out, chosen)
    record = {"runtime": _runtime_name(backend), "checked": True, "file": chosen["file"],
              "how": chosen["how"], "class": chosen["class"],
              "input_normalization": chosen["input_normalization"], "probes": len(probes),
              "passed": chosen["mismatches"] == 0,
              "tried": [{k: v for k, v in t.items() if not k.startswith("_")} for t in tried],
              "bos_policy": chosen["bos_policy"]}
    return record, chosen


def _quirk(found: dict, specials: set[int]) -> bool:
    """ORT-GenAI's whole-sequence decode of special tokens alone returns U+FFFD where HF
    returns ''; apps stream (create_stream) and never see it. Recorded, not gating."""
    ids = found.get("ids") or []
    return found["check"] == "decode (whole)" and bool(ids) and set(ids) <= specials


def add_to_manifest(manifest: dict, records: dict) -> None:
    """The manifest's `tokenizers` section (per backend), `runtime.bos_policy` and
    `runtime.input_normalization`."""
    manifest["tokenizers"] = records
    checked = {b: r for b, r in records.items() if r.get("checked")}
    manifest["runtime"]["bos_policy"] = {b: r.get("bos_policy") for b, r in checked.items()}
    manifest["runtime"]["input_normalization"] = next(
        (r["input_normalization"] for r in checked.values() if r.get("input_normalization")),
        None)


def prepare(rule: str | None):
    """What the caller does to a text before the runtime's tokenizer sees it."""
    if rule is None:
        return lambda text: text
    if rule == "NFC":
        return lambda text: unicodedata.normalize("NFC", text)
    raise ValueError(f"unknown input normalization {rule!r}")


def _candidates(backend: str, src: str, files: dict) -> list[tuple[str, str, bytes, str | None]]:
    out = [("tokenizer.json", "the source's tokenizer.json", src.encode(), None)]
    sp = files.get("tokenizer.model")
    et = backend == "executorch-xnnpack"
    if et and sp:
        out.append(("tokenizer.model", "the source's SentencePiece tokenizer.model",
                    Path(sp).read_bytes(), None))
    name = "tokenizer.executorch.json" if et else "tokenizer.json"
    out += [(name, c.how, c.data.encode(), c.input_normalization)
            for c in candidates("executorch" if et else "onnx", src)]
    return out


def _load(backend: str, where: Path, name: str, data: bytes, out: Path):
    where.mkdir(parents=True)
    (where / name).write_bytes(data)
    try:
        if backend == "executorch-xnnpack":
            return IsolatedTokenizer(ExecuTorchTokenizer, where / name), None
        for f in ("genai_config.json", "tokenizer_config.json"):
            shutil.copy(out / f, where / f)
        return IsolatedTokenizer(OrtGenAITokenizer, where), None
    except Exception as e:  # noqa: BLE001  (the runtimes raise plain RuntimeError)
        return None, {"check": "load", "runtime": f"{type(e).__name__}: {str(e)[:160]}",
                      "hf": "loads"}


def _probe(rt, ref: Reference, probes: list[str], prep) -> list[dict]:
    found = []
    for text in probes:
        want = ref.encode(text)
        got = _try(rt.encode, prep(text))
        if got != want:
            found.append({"probe": text, "check": "encode", "hf": want[:_CAP],
                          "runtime": got[:_CAP] if isinstance(got, list) else got})
        want_text = ref.text(want, rt.specials_shown)
        for how in ("stream", "whole"):
            fn = getattr(rt, how, None)
            got_text = None if fn is None else _try(fn, want)
            if fn is not None and got_text != want_text:
                found.append({"probe": text, "check": f"decode ({how})", "hf": want_text,
                              "runtime": got_text, "ids": want[:_CAP]})
    return found


def _try(fn, arg):
    try:
        return fn(arg)
    except Exception as e:  # noqa: BLE001  (recorded as the runtime's answer)
        return f"error: {type(e).__name__}: {str(e)[:120]}"


def _bos_policy(rt, backend: str, case: TextCase, prep) -> dict | None:
    """How a prompt gets its bos in this runtime: in the text, or added by the runtime."""
    body = prep(case.text[len(case.bos_text or ""):])
    et = backend == "executorch-xnnpack"
    if case.bos_text and _try(rt.encode, prep(case.text)) == case.ids:
        call = ('runner.generate(prompt, GenerationConfig(num_bos=0, temperature=0.0, ...))'
                if et else "tokenizer.encode(prompt)")
        return {"runtime_adds_bos": False, "prompt_prefix": case.bos_text, "num_bos": 0,
                "call": f"{call} with prompt = {case.bos_text!r} + text"}
    if et and _try(lambda t: rt.encode(t, 1), body) == case.ids:
        return {"runtime_adds_bos": True, "prompt_prefix": "", "num_bos": 1,
                "call": "runner.generate(text, GenerationConfig(num_bos=1, temperature=0.0, ...))"}
    return None


def _ship(out: Path, chosen: dict) -> None:
    if chosen["file"] != "tokenizer.json" or chosen["how"] != "the source's tokenizer.json":
        (out / chosen["file"]).write_bytes(chosen["_data"])


def _text(backend, out: Path, chosen: dict, ref: Reference, case: TextCase, quantized: bool,
          max_seq: int, allow_mismatch: bool) -> dict:
    """A real prompt through the runtime's tokenizer, greedy generation and detokenizer."""
    rt, policy = chosen["_rt"], chosen["bos_policy"]
    prompt = prepare(chosen["input_normalization"])(
        case.text if not policy["runtime_adds_bos"] else case.text[len(case.bos_text or ""):])
    want = ref.text(case.greedy, rt.specials_shown)
    n = len(case.greedy)
    rec = {"prompt": prompt, "prompt_tokens": len(case.ids), "fp32_text": want}
    if n == 0:
        rec.update(runtime_text="", equal=None, note=case.note)
        return rec
    if backend == "executorch-xnnpack":
        printed, n_prompt, n_gen = executorch_generate(out / "model.pte", out / chosen["file"],
                                                       prompt, policy["num_bos"], n, max_seq)
        n_gen += 1   # the runner's count leaves out the token that prefill produced
        rec.update(runtime_prompt_tokens=n_prompt, generated_tokens=n_gen,
                   runtime_text=printed.decode("utf-8", "replace"),
                   streamed_text=rt.stream(case.greedy))
        ok_prompt = n_prompt == len(case.ids)
        equal = printed == printed_like_runner(rt.pieces(case.greedy)) and n_gen == n
    else:
        ids = rt.encode(prompt)
        gen = ortgenai_generate(out, ids, n)
        rec.update(runtime_prompt_tokens=len(ids), runtime_text=rt.stream(gen))
        ok_prompt = ids == case.ids
        # bytes that form no character: HF shows U+FFFD, ORT-GenAI's stream drops them; the
        # ids are compared exactly, the text on its characters
        rec["ids_equal"] = gen == case.greedy
        equal = rec["ids_equal"] and _chars(rec["runtime_text"]) == _chars(want)
        if "\ufffd" in want:
            rec["note"] = "the fp32 answer holds bytes that form no character (shown as U+FFFD)"
    rec["prompt_ids_equal"], rec["equal"] = ok_prompt, equal
    problem = (None if ok_prompt else "encodes the verification prompt to a different number "
               "of tokens than Hugging Face") or (None if equal or quantized else
                                                  "generates a different text than the fp32 model")
    if problem and not allow_mismatch:
        raise FloraError(f"{_runtime_name(backend)} {problem} (runtime: "
                         f"{rec['runtime_text'][:60]!r}, fp32: {want[:60]!r})",
                         "nothing was written; report this with the manifest inputs")
    return rec


def _chars(text: str) -> str:
    return text.replace("\ufffd", "")


def _runtime_name(backend: str) -> str:
    return {"executorch-xnnpack": ExecuTorchTokenizer.runtime,
            "onnx": OrtGenAITokenizer.runtime}.get(backend, backend)


def _cls(backend: str, name: str) -> str:
    if backend != "executorch-xnnpack":
        return OrtGenAITokenizer.cls
    return ("pytorch_tokenizers.CppSPTokenizer" if name.endswith(".model")
            else "pytorch_tokenizers.CppHFTokenizer")


def layout(tokenizer_json: str) -> str:
    """'BPE model, NFC normalizer, Split+ByteLevel pre-tokenizer' for messages."""
    j = json.loads(tokenizer_json)

    def names(part):
        if not part:
            return "none"
        inner = part.get("normalizers") or part.get("pretokenizers")
        return "+".join(p["type"] for p in inner) if inner else part["type"]
    return (f"{(j.get('model') or {}).get('type', '?')} model, {names(j.get('normalizer'))} "
            f"normalizer, {names(j.get('pre_tokenizer'))} pre-tokenizer")


def _refusal(backend: str, tried: list[dict], tokenizer_json: str) -> str:
    """One line: the runtime, its class, the layout, and the closest candidate's first
    mismatch (the one with the fewest), with the known reason when there is one."""
    name, kind = _runtime_name(backend), layout(tokenizer_json)
    loaded = [t for t in tried if not (t["found"] and t["found"][0]["check"] == "load")]
    if not loaded:
        return (f"{name}'s tokenizer ({tried[0]['class']}) cannot load this tokenizer.json "
                f"({kind}) and no equivalent file passed the probes")
    best = min(loaded, key=lambda t: t["mismatches"])
    m = best["found"][0]
    why = known_limit(backend, tokenizer_json)
    return (f"{name}'s tokenizer ({best['class']}) differs from Hugging Face on this "
            f"tokenizer.json ({kind}){f': {why}' if why else ''}; closest file "
            f"({best['how'][:80]}) fails {best['mismatches']} probe checks, e.g. {m['check']} of "
            f"{m.get('probe', '')[:40]!r}: {str(m['runtime'])[:60]} instead of "
            f"{str(m['hf'])[:60]}")


def known_limit(backend: str, tokenizer_json: str) -> str | None:
    """The measured reason a runtime cannot read a layout exactly (docs/tokenizers.md)."""
    j = json.loads(tokenizer_json)
    pre, norm = j.get("pre_tokenizer") or {}, j.get("normalizer") or {}
    steps = norm.get("normalizers") or [norm]
    stripped = [t["content"] for t in j.get("added_tokens", []) if t.get("rstrip") or t.get("lstrip")]
    if backend == "onnx" and pre.get("type") == "Metaspace" and pre.get("prepend_scheme") == "first":
        return ("ORT-GenAI's SentencePiece mode adds the '\u2581' prefix to every part of the "
                "text (after each special token, and before a leading space), Metaspace with "
                "prepend_scheme 'first' only at the start of the text")
    if backend == "onnx" and any(s.get("type") == "Prepend" for s in steps):
        return ("ORT-GenAI's SentencePiece decode drops the space that starts the token after a "
                "special token; Hugging Face keeps it")
    if backend == "executorch-xnnpack" and stripped:
        return (f"ExecuTorch's HFTokenizer ignores the rstrip/lstrip of added tokens "
                f"({', '.join(stripped[:3])}), so it keeps whitespace Hugging Face removes "
                "next to them")
    return None
