"""The fields of `adapter_config.json`, FFBA (ours) and PEFT LoRA: implemented, harmless
or refused by name. The policy for fields in neither table is model/fields.py's
"neutral" one: accepted only when off (null, false, "", [], {}), refused otherwise.

PEFT's list is PEFT 0.21's `LoraConfig` dataclass; tests/test_bad_input_inputs.py fails
when PEFT gains a field that is not classified here.
"""

from __future__ import annotations

from ..model.fields import FieldTable, harmless, implemented, is_off, limited


def _is(*values):
    return lambda v: v in values


_INIT_OK = (True, False, "gaussian", "orthogonal")

PEFT_LORA = FieldTable("adapter_config.json (PEFT LoRA)", {
    **implemented("r lora_alpha target_modules exclude_modules rank_pattern alpha_pattern "
                  "use_rslora layers_to_transform layers_pattern",
                  "which projections are adapted, each one's rank and scale (PEFT's matching)"),
    **harmless("fan_in_fan_out", "PEFT sets it to false for torch.nn.Linear targets (every "
               "Llama projection), so it never transposes them"),
    **limited("peft_type", "the adapter kind", _is("LORA"), '"LORA"'),
    **limited("task_type", "a task head on top of the decoder", _is(None, "CAUSAL_LM"),
              '"CAUSAL_LM" or null'),
    **limited("bias", "trained biases in the adapter", _is("none"), '"none"'),
    **limited("lora_bias", "a trained bias on LoRA's B", _is(False, None), "false"),
    **limited("use_dora", "DoRA (weight-decomposed LoRA)", _is(False, None), "false"),
    **limited("modules_to_save", "full trained copies of modules (e.g. lm_head, "
              "embed_tokens) saved beside the LoRA weights", is_off, "null or []"),
    **limited("trainable_token_indices", "trained rows of the embedding", is_off, "null"),
    **limited("layer_replication", "layers duplicated before adapting", is_off, "null"),
    **limited("target_parameters", "LoRA on raw parameters (MoE experts)", is_off, "null"),
    **limited("alora_invocation_tokens", "activated LoRA (applies after a token sequence)",
              is_off, "null"),
    **limited("use_qalora", "quantization-aware LoRA", _is(False, None), "false"),
    **limited("use_bdlora", "block-diagonal LoRA", is_off, "null"),
    **limited("megatron_config", "Megatron-parallel LoRA layers", is_off, "null"),
    **limited("arrow_config", "Arrow routing over several LoRAs", is_off, "null"),
    **limited("kasa_config", "KaSA (singular-value adapted LoRA)", is_off, "null"),
    **limited("velora_config", "VeLoRA layers", is_off, "null"),
    **limited("monteclora_config", "MonteCLoRA layers", is_off, "null"),
    **limited("init_lora_weights", "PiSSA/OLoRA/CorDA/LoftQ/EVA/LoRA-GA initialisations "
              "rewrite the base weights the adapter belongs to", _is(*_INIT_OK),
              "true, false, \"gaussian\" or \"orthogonal\" (use an adapter converted to plain "
              "LoRA: PEFT's path_initial_model_for_weight_conversion)"),
    **limited("loftq_config", "LoftQ (base re-quantized at init)", is_off, "{}"),
    **limited("eva_config", "EVA initialisation", is_off, "null"),
    **limited("corda_config", "CorDA initialisation", is_off, "null"),
    **limited("lora_ga_config", "LoRA-GA initialisation", is_off, "null"),
    **harmless("base_model_name_or_path revision peft_version auto_mapping inference_mode "
               "megatron_core qalora_group_size runtime_config ensure_weight_tying "
               "flora_base flora_export_version",
               "bookkeeping (the base is checked by its recorded fingerprint)"),
    **harmless("lora_dropout", "dropout while training only"),
})

FFBA = FieldTable("adapter_config.json (FFBA)", {
    **implemented("width alpha variant activation", "the FFBA adapter (adapters/ffba.py)"),
    **harmless("init", "how A was initialised before training (the file holds the trained "
               "weights)"),
    **limited("adapter_type", "the adapter kind", _is("ffba"), '"ffba"'),
    **harmless("base flora_export_version",
               "bookkeeping (the base is checked by its recorded fingerprint)"),
})
