"""The app chat format is the checkpoint's own chat template, rendered like transformers'
`apply_chat_template`: for each family's template (their essential logic, copied here),
`fill(template, prompt)` equals transformers' text for one user message with the
generation prompt, and `stop` ends an assistant turn as the template does."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer, models

from flora_export.chat_template import fill
from flora_export.prompt import chat_format

QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content']"
    " + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba "
    "Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}\n"
    "{%- for message in messages %}{%- if (message.role == \"user\") or (message.role == "
    "\"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls)"
    " %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n")
QWEN3 = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + "
    "'<|im_end|>\\n' }}{%- endif %}\n"
    "{%- for message in messages %}\n"
    "  {%- if message.role == \"user\" or (message.role == \"system\" and not loop.first) %}\n"
    "    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "  {%- elif message.role == \"assistant\" %}\n"
    "    {%- set content = message.content %}\n"
    "    {%- if '</think>' in content %}{%- set content = content.split('</think>')[-1]"
    ".lstrip('\\n') %}{%- endif %}\n"
    "    {{- '<|im_start|>' + message.role + '\\n' + content }}{{- '<|im_end|>\\n' }}\n"
    "  {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}\n{%- endif %}")
GEMMA3 = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = messages[0]['content']"
    " + '\\n\\n' -%}{%- set loop_messages = messages[1:] -%}{%- else -%}"
    "{%- set first_user_prefix = \"\" -%}{%- set loop_messages = messages -%}{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}"
    "{%- endif -%}\n"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}"
    "{%- set role = message['role'] -%}{%- endif -%}\n"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}{%- endif -%}\n"
    "{{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\\n'}}{%- endif -%}\n")
PHI35 = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}")
PHI4 = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and "
    "message['tools'] is not none %}{{ '<|' + message['role'] + '|>' + message['content'] + "
    "'<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}{% else %}{{ '<|' + "
    "message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}")
MISTRAL = (
    "{%- if messages[0][\"role\"] == \"system\" %}{%- set system_message = messages[0][\"content\"]"
    " %}{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}"
    "{%- endif %}\n{{- bos_token }}\n{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('After the optional system message, conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{%- endif %}\n"
    "    {%- if message[\"role\"] == \"user\" %}\n"
    "        {%- if loop.last and system_message is defined %}"
    "{{- \"[INST] \" + system_message + \"\\n\\n\" + message[\"content\"] + \"[/INST]\" }}\n"
    "        {%- else %}{{- \"[INST] \" + message[\"content\"] + \"[/INST]\" }}{%- endif %}\n"
    "    {%- elif message[\"role\"] == \"assistant\" %}"
    "{{- \" \" + message[\"content\"]|trim + eos_token}}\n"
    "    {%- else %}{{- raise_exception(\"Only user and assistant roles are supported!\") }}\n"
    "    {%- endif %}\n{%- endfor %}\n")
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}")

CHATML = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# family: (template, specials (the first is bos, the second eos), bos, eos, stop, bos field)
FAMILIES = {
    "qwen2.5": (QWEN25, CHATML, "<|endoftext|>", "<|im_end|>", ["<|im_end|>"], ""),
    "qwen3": (QWEN3, CHATML, "<|endoftext|>", "<|im_end|>", ["<|im_end|>"], ""),
    "gemma3": (GEMMA3, ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>",
               ["<end_of_turn>", "<eos>"], "<bos>"),
    "phi3.5": (PHI35, ["<s>", "<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>"], "<s>",
               "<|endoftext|>", ["<|end|>", "<|endoftext|>"], ""),
    "phi4-mini": (PHI4, ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"],
                  "<|endoftext|>", "<|endoftext|>", ["<|end|>", "<|endoftext|>"], ""),
    "mistral": (MISTRAL, ["<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>", ["</s>"], "<s>"),
    "smollm2": (SMOLLM2, CHATML, "<|endoftext|>", "<|im_end|>", ["<|im_end|>"], ""),
}
PROMPTS = ("Hi there, café 東京 😀?", "a {brace} and a {prompt}-like slot", "line one\nline two")


def _tokenizer_json(specials: list[str]) -> str:
    tok = Tokenizer(models.BPE())
    tok.add_special_tokens(specials)
    return tok.to_str()


def _model(tmp_path, specials, bos, eos, files: dict[str, object], tj: str | None = None):
    """What chat_format reads of a loaded model: tokenizer.json, config ids, the files."""
    tj = tj or _tokenizer_json(list(dict.fromkeys([*specials, bos, eos])))
    ids = {t["content"]: t["id"] for t in json.loads(tj)["added_tokens"]}
    paths = {}
    for name, content in files.items():
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
        paths[name] = tmp_path / name
    cfg = SimpleNamespace(bos_token_id=ids[bos], eos_token_ids=(ids[eos],), vocab_size=512)
    source = SimpleNamespace(tokenizer_files=paths)
    return SimpleNamespace(tokenizer_json=tj, config=cfg, source=source), tj


def _hf(tj: str, template: str, bos: str, eos: str, messages: list[dict], generation: bool):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tj), bos_token=bos,
                                  eos_token=eos)
    return tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                   add_generation_prompt=generation)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_app_format_is_what_transformers_renders(tmp_path, family):
    template, specials, bos, eos, stop, bos_field = FAMILIES[family]
    model, tj = _model(tmp_path, specials, bos, eos, {"tokenizer_config.json": {
        "chat_template": template, "bos_token": bos, "eos_token": eos}})
    fmt = chat_format(model)
    for p in PROMPTS:
        assert fill(fmt["template"], p) == _hf(tj, template, bos, eos,
                                               [{"role": "user", "content": p}], True), p
    full_stop = list(dict.fromkeys([*stop, eos]))
    assert fmt["stop"] == full_stop and fmt["bos"] == bos_field
    # the first stop string is what the template writes right after an assistant reply
    two = _hf(tj, template, bos, eos, [{"role": "user", "content": "q"},
                                       {"role": "assistant", "content": "REPLY"}], False)
    assert two.split("REPLY", 1)[1].startswith(fmt["stop"][0])


@pytest.mark.parametrize("where", ["chat_template.jinja", "chat_template.json", "named list"])
def test_the_template_is_read_where_transformers_reads_it(tmp_path, where):
    files = {"tokenizer_config.json": {"chat_template": "{{ 'wrong' }}", "eos_token": "<|im_end|>"}}
    if where == "chat_template.jinja":
        files["chat_template.jinja"] = SMOLLM2
    elif where == "chat_template.json":
        files["chat_template.json"] = {"chat_template": SMOLLM2}
    else:
        files["tokenizer_config.json"]["chat_template"] = [
            {"name": "tool_use", "template": "{{ 'tools' }}"}, {"name": "default", "template": SMOLLM2}]
    model, _ = _model(tmp_path, CHATML, "<|endoftext|>", "<|im_end|>", files)
    assert chat_format(model)["template"].endswith("<|im_start|>user\n{prompt}<|im_end|>\n"
                                                   "<|im_start|>assistant\n")


def test_without_a_template_llama3_tokens_give_llama3s_format_and_others_none(tmp_path, caplog):
    llama3 = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
              "<|eot_id|>"]
    model, _ = _model(tmp_path, llama3, "<|begin_of_text|>", "<|eot_id|>", {})
    fmt = chat_format(model)
    assert fmt["template"].startswith("<|begin_of_text|><|start_header_id|>user")
    assert fmt["stop"][0] == "<|eot_id|>" and fmt["bos"] == "<|begin_of_text|>"
    with caplog.at_level(logging.INFO, logger="flora_export.prompt"):
        none, _ = _model(tmp_path, CHATML, "<|endoftext|>", "<|im_end|>", {})
        assert chat_format(none) is None
    assert "no chat template" in caplog.text


@pytest.mark.parametrize("bad", [
    "{{ raise_exception('no') }}",                       # the template refuses
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",    # the sandbox refuses
    "{% for m in messages %}{{ m.content }}{{ m.content }}{% endfor %}",   # the message twice
    "{{ messages[0].content | upper }}",                  # the message altered
])
def test_a_template_that_cannot_render_one_turn_gives_none_and_a_warning(tmp_path, caplog, bad):
    model, _ = _model(tmp_path, CHATML, "<|endoftext|>", "<|im_end|>",
                      {"tokenizer_config.json": {"chat_template": bad}})
    with caplog.at_level(logging.WARNING):
        assert chat_format(model) is None
    assert "records no chat format" in caplog.text


def test_training_encodes_prompts_with_the_checkpoints_template(tmp_path):
    """Encoder.for_model: bos + the rendered template's ids, as transformers tokenizes the
    conversation; the response ends with the template's end-of-turn token."""
    from transformers import PreTrainedTokenizerFast

    from flora_export.train.data import Encoder
    from flora_export.train.tasks import Example

    import tokenizer_layouts as L

    model, tj = _model(tmp_path, CHATML, "<|endoftext|>", "<|im_end|>",
                       {"tokenizer_config.json": {"chat_template": QWEN3}}, L.qwen3().to_str())
    enc = Encoder.for_model(model)
    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tj))
    text = hf.apply_chat_template([{"role": "user", "content": "hi café"}], chat_template=QWEN3,
                                  tokenize=False, add_generation_prompt=True)
    want = hf(text, add_special_tokens=False)["input_ids"]
    assert len(want) > 8 and enc.prompt_ids("hi café") == [model.config.bos_token_id] + want
    assert enc.encode(Example("hi", "ok")).target[-1] == hf.convert_tokens_to_ids("<|im_end|>")
