"""The checkpoint's own chat template, rendered once into the one-turn format apps use.

The template is the Jinja text of `chat_template.jinja`, else `chat_template.json`'s
`chat_template`, else `tokenizer_config.json`'s `chat_template` (the `default` entry when
it is a list of named templates), the order transformers reads them in. It is rendered in
jinja2's `ImmutableSandboxedEnvironment`, with the options and helpers transformers gives
it (`trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`, `strftime_now`,
`tojson`), so a template runs no code of its own beyond Jinja's sandbox.

The app format: one user message holding a sentinel, `add_generation_prompt=True`, the
sentinel replaced by `{prompt}`. The end of an assistant turn is found by rendering a
user message and an assistant reply: the special token right after the reply (Qwen's
`<|im_end|>`, Gemma's `<end_of_turn>`, Phi's `<|end|>`, Mistral's `</s>`).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

log = logging.getLogger(__name__)

SLOT = "{prompt}"
_SENTINEL = "\ue000flora-prompt\ue001"
_REPLY = "\ue000flora-reply\ue001"
FILES = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json")


def fill(template: str, prompt: str) -> str:
    """The template with its `{prompt}` slot filled (a literal replace, as the apps do: a
    rendered template may hold other braces)."""
    return template.replace(SLOT, prompt)


def template_source(files: dict) -> tuple[str, dict] | None:
    """(Jinja text, tokenizer_config.json's content) from the checkpoint's files, or None."""
    config = _read_json(files.get("tokenizer_config.json")) or {}
    if files.get("chat_template.jinja"):
        return Path(files["chat_template.jinja"]).read_text(), config
    for source in (_read_json(files.get("chat_template.json")) or {}, config):
        t = source.get("chat_template")
        if isinstance(t, list):   # named templates: [{"name": "default", "template": ...}]
            t = next((e.get("template") for e in t if isinstance(e, dict)
                      and e.get("name") == "default"), None)
        if isinstance(t, str) and t.strip():
            return t, config
    return None


def render_format(template: str, tokens: dict[str, str], bos: str | None, eos: list[str],
                  specials: list[str]) -> dict | None:
    """The app format from a Jinja chat template, or None (logged) when it cannot be
    rendered into one: `tokens` are the special-token strings the template may use
    (bos_token, eos_token, ...), `specials` every special token's text."""
    try:
        one = _render(template, tokens, [{"role": "user", "content": _SENTINEL}], True)
    except Exception as e:  # noqa: BLE001  (a template is user input: any failure means "none")
        log.warning("the checkpoint's chat template does not render (%s: %s); the export "
                    "records no chat format", type(e).__name__, str(e)[:120])
        return None
    if one.count(_SENTINEL) != 1 or SLOT in one:
        log.warning("the checkpoint's chat template does not show the user message exactly "
                    "once; the export records no chat format")
        return None
    stop = [t for t in [_end_of_turn(template, tokens, specials), *eos] if t]
    stop = list(dict.fromkeys(stop))
    if not stop:
        log.warning("the checkpoint's chat template has no end-of-turn token and the model "
                    "no eos text; the export records no chat format")
        return None
    out = one.replace(_SENTINEL, SLOT)
    return {"template": out, "stop": stop,
            "bos": bos if bos and out.startswith(bos) else ""}


def _end_of_turn(template: str, tokens: dict, specials: list[str]) -> str | None:
    """The special token that closes an assistant reply in this template, if any."""
    try:
        two = _render(template, tokens, [{"role": "user", "content": _SENTINEL},
                                         {"role": "assistant", "content": _REPLY}], False)
    except Exception:  # noqa: BLE001  (then eos alone ends a reply)
        return None
    if two.count(_REPLY) != 1:
        return None
    after = two.split(_REPLY, 1)[1]
    hits = [s for s in specials if s and after.startswith(s)]
    return max(hits, key=len) if hits else None


def _render(template: str, tokens: dict, messages: list[dict], generation: bool) -> str:
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template).render(messages=messages, add_generation_prompt=generation,
                                            **tokens)


def token_strings(config: dict) -> dict[str, str]:
    """bos_token, eos_token, ... from tokenizer_config.json (a string or {"content": ...})."""
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        v = config.get(key)
        v = v.get("content") if isinstance(v, dict) else v
        if isinstance(v, str):
            out[key] = v
    return out


def _read_json(path) -> dict | None:
    if not path or not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
