"""The registry of input-file fields: each one is implemented, harmless, or refused by name.

Every JSON file flora-export reads (`config.json`, `generation_config.json`,
`tokenizer_config.json`, `model.safetensors.index.json`, `adapter_config.json`) has
one table here (the adapter tables are in `adapters/fields.py`). A `Field` is:

- `implemented`: read and applied exactly as transformers / PEFT apply it (tested
  against them in tests/test_bad_input_inputs.py and tests/test_model.py);
- `harmless`: does not change the computed logits (bookkeeping, training-only
  switches, decoding settings of `generate()`);
- `limited`: only the values `accepts` returns True for are honoured; any other
  value is refused in one line naming the field and its value.

Unknown fields follow `UNKNOWN_POLICY` of their table. For model and adapter files it
is "neutral": an unknown field is accepted only when its value is the *off* value
every optional feature of transformers and PEFT uses (null, false, "", [] or {}), and
refused otherwise. Ignoring it (what transformers' Llama class does with a field it
does not read) could silently run a different model than the file describes, e.g.
a `sliding_window`, `quantization_config` or `logit_softcapping` from another family;
refusing every unknown field would reject checkpoints for bookkeeping keys added by
other tools. For `tokenizer_config.json` it is "log": its fields configure the Python
tokenizer class, not the model; what the runtimes read is `tokenizer.json` (checked
by the tokenizer gate), so unknown keys there are logged, and only the listed keys
that change how transformers encodes on top of `tokenizer.json` are refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import FloraError

log = logging.getLogger(__name__)

IMPLEMENTED, HARMLESS, LIMITED = "implemented", "harmless", "limited"


@dataclass(frozen=True)
class Field:
    name: str
    role: str                                   # IMPLEMENTED, HARMLESS or LIMITED
    note: str                                   # what it does / why it is safe or refused
    accepts: Callable[[Any], bool] | None = None  # LIMITED: the values honoured
    allowed: str = ""                           # LIMITED: the honoured values, in words


@dataclass(frozen=True)
class FieldTable:
    file: str                                   # e.g. "config.json"
    fields: dict[str, Field]
    unknown_policy: str = "neutral"             # "neutral" (refuse non-off values) or "log"

    def check(self, data: dict, where: str) -> None:
        """Refuse (one line, naming field and value) what this table cannot honour."""
        unknown = []
        for name, value in data.items():
            f = self.fields.get(name)
            if f is None:
                if self.unknown_policy == "neutral" and not is_off(value):
                    raise FloraError(
                        f"{where}: unknown field {name}={_show(value)} (flora-export does not "
                        f"implement it, and it is not off)",
                        f"remove {name} if it does not change the model; flora-export honours "
                        f"only the fields listed in docs/inputs.md")
                unknown.append(name)
            elif f.role == LIMITED and not f.accepts(value):
                raise FloraError(f"{where}: {name}={_show(value)} is not supported ({f.note})",
                                 f"{name} must be {f.allowed}")
        if unknown:
            log.info("%s: ignored fields that are off or not read by the model: %s", where,
                     ", ".join(sorted(unknown)))


def is_off(value: Any) -> bool:
    """null, false, "", [] or {}: the value that turns an optional feature off."""
    return value is None or value is False or (isinstance(value, (str, list, dict)) and not value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def implemented(names: str, note: str) -> dict[str, Field]:
    return {n: Field(n, IMPLEMENTED, note) for n in names.split()}


def harmless(names: str, note: str) -> dict[str, Field]:
    return {n: Field(n, HARMLESS, note) for n in names.split()}


def limited(name: str, note: str, accepts: Callable[[Any], bool], allowed: str
            ) -> dict[str, Field]:
    return {name: Field(name, LIMITED, note, accepts, allowed)}


# -------------------------------------------------------------- config.json (Llama)

# gelu_new (GPT-2's tanh formula written out) is refused: Core ML's converter does not keep
# its matmuls mappable to the model's linears, and no Llama-family checkpoint uses it.
HIDDEN_ACTS = ("silu", "swish", "gelu", "gelu_pytorch_tanh", "relu")
ROPE_TYPES = ("default", "linear", "llama3", "longrope")


def _one_of(values) -> Callable[[Any], bool]:
    return lambda v: v in values


def _architecture(extra: str = "") -> dict[str, Field]:
    return implemented("vocab_size hidden_size intermediate_size num_hidden_layers "
                       "num_attention_heads num_key_value_heads head_dim rms_norm_eps "
                       "max_position_embeddings tie_word_embeddings " + extra,
                       "the architecture; parity with transformers' own class")


def _identity(model_type: str, architecture: str) -> dict[str, Field]:
    """model_type, architectures, and what no family honours (pre-quantized weights,
    remote code, interleaved RoPE)."""
    return {
        **limited("model_type", "the decoder family", lambda v: v == model_type, model_type),
        **limited("architectures", "the model class",
                  lambda v: is_off(v) or (isinstance(v, list) and architecture in v),
                  f'["{architecture}"]'),
        **limited("quantization_config",
                  "a pre-quantized checkpoint (GPTQ/AWQ/bitsandbytes...)", is_off,
                  "absent: pass the unquantized checkpoint; flora-export quantizes itself"),
        **limited("auto_map", "custom model code (flora-export never runs remote code)",
                  is_off, "absent"),
        **limited("rope_interleaved", "interleaved RoPE pairs (transformers uses rotate_half)",
                  is_off, "false"),
        **implemented("bos_token_id eos_token_id",
                      "recorded for the runners (generation_config.json's values win)"),
    }


def _rope(note: str = "RoPE with transformers 5's precedence: a non-empty rope_scaling "
          "replaces rope_parameters; rope_theta inside the dict wins over the top-level one"
          ) -> dict[str, Field]:
    return {
        **implemented("rope_theta rope_parameters rope_scaling", note),
        **limited("partial_rotary_factor", "RoPE on part of each head",
                  lambda v: v is None or v == 1 or v == 1.0, "1.0 (rotary on the whole head)"),
        **limited("original_max_position_embeddings",
                  "transformers reads it only inside the rope dict",
                  lambda v: True, "equal to the rope dict's value"),  # checked in config.py
    }


def _act(key: str = "hidden_act") -> dict[str, Field]:
    return limited(key, "the MLP activation", _one_of(HIDDEN_ACTS),
                   "one of " + ", ".join(HIDDEN_ACTS))


_BOOKKEEPING = harmless(
    "_name_or_path transformers_version torch_dtype dtype use_cache "
    "initializer_range pad_token_id output_attentions output_hidden_states "
    "return_dict chunk_size_feed_forward is_encoder_decoder id2label label2id "
    "problem_type _attn_implementation attn_implementation _commit_hash "
    "is_llama_config tokenizer_class torchscript use_bfloat16 tf_legacy_loss "
    "pruned_heads finetuning_task num_labels task_specific_params "
    "transformers.js_config _attn_implementation_autoset "
    "keys_to_ignore_at_inference",
    "bookkeeping; no effect on the logits")
_DROPOUT = harmless("attention_dropout", "dropout during transformers training only; "
                    "inference and flora-train (frozen base) do not apply it")
_DECODING = harmless(
    "max_length min_length do_sample early_stopping num_beams temperature top_k "
    "top_p repetition_penalty length_penalty no_repeat_ngram_size "
    "num_return_sequences bad_words_ids forced_bos_token_id forced_eos_token_id "
    "sep_token_id decoder_start_token_id",
    "legacy decoding defaults of generate(); the export computes logits")
_COMMON = {**_BOOKKEEPING, **_DROPOUT, **_DECODING}


def _not_read(names: str, family: str, why: str) -> dict[str, Field]:
    return harmless(names, f"transformers' {family} does not read it ({why})")


LLAMA_CONFIG = FieldTable("config.json", {
    **_architecture("attention_bias mlp_bias"), **_rope(), **_act(),
    **_identity("llama", "LlamaForCausalLM"), **_COMMON,
    **harmless("pretraining_tp", "transformers 5's Llama does not read it"),
})

_SLIDING_QWEN = implemented(
    "use_sliding_window sliding_window max_window_layers layer_types",
    "sliding-window attention as transformers' Qwen selects it: sliding_window only with "
    "use_sliding_window; without layer_types, layers from max_window_layers on slide")

QWEN2_CONFIG = FieldTable("config.json", {
    **_architecture(), **_rope(), **_act(), **_identity("qwen2", "Qwen2ForCausalLM"),
    **_COMMON, **_SLIDING_QWEN,
    **_not_read("attention_bias mlp_bias", "Qwen2",
                "q/k/v always carry a bias, o_proj and the MLP never do"),
})

QWEN3_CONFIG = FieldTable("config.json", {
    **_architecture("attention_bias"), **_rope(), **_act(),
    **_identity("qwen3", "Qwen3ForCausalLM"), **_COMMON, **_SLIDING_QWEN,
    **_not_read("mlp_bias", "Qwen3", "the MLP has no bias"),
})

MISTRAL_CONFIG = FieldTable("config.json", {
    **_architecture(), **_rope(), **_act(), **_identity("mistral", "MistralForCausalLM"),
    **_COMMON,
    **implemented("sliding_window", "every layer attends to the last sliding_window tokens; "
                  "absent means 4096, as transformers' Mistral; null turns it off"),
    **_not_read("attention_bias mlp_bias", "Mistral", "no projection has a bias"),
})

SMOLLM3_CONFIG = FieldTable("config.json", {
    **_architecture("attention_bias mlp_bias"), **_rope(), **_act(),
    **_identity("smollm3", "SmolLM3ForCausalLM"), **_COMMON,
    **implemented("no_rope_layers no_rope_layer_interval",
                  "NoPE layers: no_rope_layers[i] = 0 skips RoPE in layer i; without the "
                  "list, every no_rope_layer_interval-th layer skips it"),
    **implemented("use_sliding_window sliding_window layer_types",
                  "sliding-window attention on the layers layer_types marks (without "
                  "layer_types: the NoPE layers, when use_sliding_window)"),
    **_not_read("max_window_layers pretraining_tp", "SmolLM3", "a Qwen / Llama leftover"),
})

GEMMA3_TEXT_CONFIG = FieldTable("config.json", {
    **_architecture("attention_bias"), **_act("hidden_activation"),
    **_identity("gemma3_text", "Gemma3ForCausalLM"), **_COMMON,
    **implemented("rope_theta rope_local_base_freq rope_parameters rope_scaling",
                  "RoPE per layer type: full-attention layers use rope_theta and rope_scaling "
                  "(or rope_parameters.full_attention), sliding layers rope_local_base_freq "
                  "(or rope_parameters.sliding_attention)"),
    **limited("partial_rotary_factor", "RoPE on part of each head",
              lambda v: v is None or v == 1 or v == 1.0, "1.0 (rotary on the whole head)"),
    **implemented("sliding_window layer_types sliding_window_pattern",
                  "sliding layers attend to the last sliding_window tokens; without "
                  "layer_types, every sliding_window_pattern-th layer is full attention"),
    **implemented("query_pre_attn_scalar", "attention scale 1 / sqrt(query_pre_attn_scalar)"),
    **implemented("final_logit_softcapping", "logits = c * tanh(logits / c)"),
    **limited("attn_logit_softcapping", "transformers 5's Gemma 3 attention stores but does "
              "not apply it, so the file's intent is ambiguous", is_off, "null"),
    **limited("use_bidirectional_attention", "bidirectional (encoder) attention", is_off,
              "false"),
    **harmless("_sliding_window_pattern", "written by transformers beside layer_types; not "
               "read back"),
    **harmless("cache_implementation", "generate()'s cache choice; the export has its own"),
    **_not_read("hidden_act", "Gemma 3", "hidden_activation is"),
    **_not_read("mlp_bias", "Gemma 3", "the MLP has no bias"),
})

_PHI3_AUTO_MAP = ("configuration_phi3.Phi3Config", "modeling_phi3.Phi3ForCausalLM")

PHI3_CONFIG = FieldTable("config.json", {
    **_architecture(), **_act(), **_identity("phi3", "Phi3ForCausalLM"), **_COMMON,
    **implemented("rope_theta rope_parameters rope_scaling partial_rotary_factor "
                  "original_max_position_embeddings",
                  "RoPE on the first partial_rotary_factor of each head; longrope (su) "
                  "short/long factors with the top-level original_max_position_embeddings, "
                  "as transformers' Phi3 reads them"),
    **implemented("sliding_window", "every layer attends to the last sliding_window tokens"),
    **limited("auto_map", "remote code that transformers replaces with its own Phi3 class",
              lambda v: is_off(v) or (isinstance(v, dict) and all(
                  key == "AutoTokenizer" or (isinstance(x, str) and
                                             x.split("--")[-1] in _PHI3_AUTO_MAP)
                  for key, x in v.items())),
              "absent or naming only " + " / ".join(_PHI3_AUTO_MAP) +
              " (and an AutoTokenizer: the runtimes read tokenizer.json)"),
    **limited("full_attn_mod", "the remote code's full-attention layer period", _one_of((1,)),
              "1 (every layer full attention, as transformers' Phi3)"),
    **limited("interpolate_factor", "the remote code's position interpolation",
              _one_of((1, 1.0)), "1 (none, as transformers' Phi3)"),
    **limited("lm_head_bias", "a bias on the output head", is_off, "false"),
    **harmless("resid_pdrop embd_pdrop", "dropout during training only"),
    **_not_read("attention_bias mlp_bias", "Phi3", "no projection has a bias"),
})


# -------------------------------------------------------------- generation_config.json

GENERATION_CONFIG = FieldTable("generation_config.json", {
    **implemented("bos_token_id eos_token_id",
                  "the token ids generate() uses; they replace config.json's"),
    **harmless("_from_model_config transformers_version pad_token_id use_cache "
               "output_attentions output_hidden_states output_logits output_scores "
               "return_dict_in_generate",
               "bookkeeping"),
    **harmless("do_sample temperature top_k top_p min_p typical_p epsilon_cutoff eta_cutoff "
               "top_h repetition_penalty encoder_repetition_penalty length_penalty "
               "no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids "
               "force_words_ids begin_suppress_tokens suppress_tokens sequence_bias "
               "renormalize_logits remove_invalid_values exponential_decay_length_penalty "
               "max_length max_new_tokens min_length min_new_tokens max_time stop_strings "
               "num_beams num_beam_groups diversity_penalty early_stopping "
               "num_return_sequences penalty_alpha guidance_scale forced_bos_token_id "
               "forced_eos_token_id decoder_start_token_id low_memory cache_implementation "
               "cache_config max_cache_len compile_config disable_compile "
               "prefill_chunk_size watermarking_config constraints dola_layers "
               "token_healing",
               "decoding settings of transformers' generate(): not part of the exported "
               "program, which computes logits; the runner or app chooses the decoding"),
    **harmless("is_assistant assistant_confidence_threshold assistant_early_exit "
               "assistant_ensemble_weight assistant_lookbehind target_lookbehind "
               "num_assistant_tokens num_assistant_tokens_schedule prompt_lookup_num_tokens "
               "max_matching_ngram_size speculation_type use_mtp continuous_batching_config",
               "assisted / speculative decoding settings of generate()"),
})


# -------------------------------------------------------------- tokenizer_config.json

TOKENIZER_CONFIG = FieldTable("tokenizer_config.json", {
    **limited("add_eos_token", "transformers appends eos to every encoded text; the "
              "runtimes' tokenizers do not", lambda v: v is None or v is False, "false"),
    **limited("add_prefix_space", "transformers rewrites tokenizer.json's pre-tokenizer; "
              "the runtimes read tokenizer.json as it is", lambda v: v is None or v is False,
              "false or absent"),
    **limited("do_lower_case", "lower-casing outside tokenizer.json", lambda v: not v,
              "false or absent"),
    **harmless("add_bos_token", "the bos policy is recorded in the manifest by the export"),
    **implemented("chat_template", "rendered in jinja2's sandbox into the apps' one-turn "
                  "chat format, `runtime.chat` (see docs/tokenizers.md)"),
    **harmless("bos_token eos_token pad_token unk_token sep_token cls_token mask_token "
               "additional_special_tokens extra_special_tokens added_tokens_decoder "
               "model_max_length clean_up_tokenization_spaces legacy tokenizer_class "
               "padding_side truncation_side model_input_names spaces_between_special_tokens "
               "use_default_system_prompt split_special_tokens sp_model_kwargs errors "
               "tokenizer_file name_or_path auto_map processor_class "
               "backend fix_mistral_regex is_local",
               "Python tokenizer bookkeeping; the ids come from tokenizer.json"),
}, unknown_policy="log")


# -------------------------------------------------------------- model.safetensors.index.json

SAFETENSORS_INDEX = FieldTable("model.safetensors.index.json", {
    **implemented("weight_map", "tensor name -> shard file; exactly these shards are read"),
    **harmless("metadata", "total_size / total_parameters bookkeeping"),
})


# config.json's table per model_type: a new decoder family adds its own table here (its
# fields implemented or refused), and model/families.py reads that family's fields.
MODEL_CONFIGS: dict[str, FieldTable] = {
    "llama": LLAMA_CONFIG, "qwen2": QWEN2_CONFIG, "qwen3": QWEN3_CONFIG,
    "gemma3_text": GEMMA3_TEXT_CONFIG, "phi3": PHI3_CONFIG, "smollm3": SMOLLM3_CONFIG,
    "mistral": MISTRAL_CONFIG,
}

TABLES = {t.file: t for t in (LLAMA_CONFIG, GENERATION_CONFIG, TOKENIZER_CONFIG,
                              SAFETENSORS_INDEX)}
