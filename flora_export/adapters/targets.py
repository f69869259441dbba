"""Which projections a LoRA config adapts, with which rank and scale: PEFT's rules.

PEFT decides on the module names of the transformers model it wraps
(`model.layers.3.self_attn.q_proj`, `lm_head`, ...). We enumerate the same names for
the model's transformers class (its family's `hf_layout`: LlamaForCausalLM's seven
projections, or Phi3ForCausalLM's fused `qkv_proj`, `o_proj`, `gate_up_proj`,
`down_proj`) and apply PEFT 0.21's matching (`check_target_module_exists`,
`get_pattern_key` in peft/tuners/tuners_utils.py and peft/utils/other.py):

- `target_modules` a string: a regex that must match the whole name (`re.fullmatch`);
  `layers_to_transform` does not apply then (PEFT ignores it for a regex);
  `"all-linear"` (any case): every projection, as a list of names;
- a list: a name equal to an entry or ending in `.entry`; then `layers_to_transform`
  (an int or a list) keeps only those layer indices, the index being the number after
  the first `layers_pattern` (or after the second dotted segment when unset); entries
  that match nothing are ignored, as PEFT ignores them (logged when they are another
  class's projection names, e.g. `q_proj` for Phi3); none matching is refused, as PEFT
  refuses it;
- `exclude_modules` (regex string, or names) removes names first;
- rank and alpha per module: the first key of `rank_pattern` / `alpha_pattern` for which
  `(.*\\.)?(KEY)$` matches the name, else `r` / `lora_alpha`;
- scale = alpha / sqrt(rank) with `use_rslora`, else alpha / rank.

Our own `targets` (recipes, `LoraConfig(targets=...)`, used when `target_modules` is
unset) must each be a projection of the model's class; another one is refused by name.
A matched module that is not a projection (lm_head, embed_tokens, a norm ...) is
refused by name: flora-export implements LoRA on the projections only.
"""

from __future__ import annotations

import logging
import math
import re
from typing import TYPE_CHECKING

from ..errors import FloraError
from ..model.families import KNOWN_PROJECTIONS, Family, HFLayout

if TYPE_CHECKING:
    from .lora import LoraConfig

log = logging.getLogger(__name__)
ALL_LINEAR = "all-linear"


def hf_module_names(layout: HFLayout, num_layers: int) -> list[str]:
    """Every `named_modules()` name of the transformers class with this layer layout."""
    names = ["", "model", "model.embed_tokens", "model.layers", "model.norm", "model.rotary_emb",
             "lm_head"]
    for i in range(num_layers):
        prefix = f"model.layers.{i}"
        names += [prefix, *(f"{prefix}.{p}" for p in layout.layer_modules),
                  *(f"{prefix}.{p.parent}.{p.name}" for p in layout.projections)]
    return names


# PEFT's LoRA targets when adapter_config.json has no target_modules, per model_type
# (peft.utils.constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING); PEFT has none for
# phi3 and smollm3 and refuses such a config there.
PEFT_DEFAULT_TARGETS = {t: ("q_proj", "v_proj")
                        for t in ("llama", "mistral", "gemma3_text", "qwen2", "qwen3")}


def peft_default_targets(fam: Family, where: str) -> tuple[str, ...]:
    """The targets PEFT gives a LoRA config without target_modules on `fam`'s class."""
    if fam.model_type not in PEFT_DEFAULT_TARGETS:
        raise FloraError(f"{where} has no target_modules, and PEFT has no default LoRA "
                         f"targets for model_type {fam.model_type}",
                         f"add \"target_modules\" (some of {', '.join(fam.hf_layout.names)}) "
                         "as the adapter was trained")
    return PEFT_DEFAULT_TARGETS[fam.model_type]


def resolved_targets(cfg: "LoraConfig", fam: Family, where: str) -> str | tuple[str, ...]:
    """The config's targets as PEFT matches them on `fam`'s class: target_modules (a regex,
    names; "all-linear": every projection), else our `targets`, checked by name."""
    layout = fam.hf_layout
    if cfg.target_modules is None:
        foreign = [t for t in cfg.targets if t not in layout.names]
        if foreign:
            raise FloraError(f"{where}: LoRA target {foreign[0]} is not a projection of "
                             f"{fam.architecture} (model_type {fam.model_type})",
                             f"name some of {', '.join(layout.names)}")
        return cfg.targets
    if isinstance(cfg.target_modules, str) and cfg.target_modules.lower() == ALL_LINEAR:
        return layout.names
    if not isinstance(cfg.target_modules, str):
        foreign = [t for t in cfg.target_modules
                   if t in KNOWN_PROJECTIONS and t not in layout.names]
        if foreign:
            log.warning("%s: target_modules %s name no module of %s (its projections: %s); "
                        "PEFT ignores them too", where, ", ".join(foreign), fam.architecture,
                        ", ".join(layout.names))
    return cfg.target_modules


def _excluded(cfg: "LoraConfig", key: str) -> bool:
    ex = cfg.exclude_modules
    if not ex:
        return False
    if isinstance(ex, str):
        return re.fullmatch(ex, key) is not None
    return key in ex or any(key.endswith(f".{e}") for e in ex)


def _targeted(cfg: "LoraConfig", targets, key: str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, key) is not None
    if key in targets:
        return True
    if not any(key.endswith(f".{t}") for t in targets):
        return False
    layers = cfg.layers_to_transform
    if layers is None or (isinstance(layers, (list, tuple)) and not layers):
        return True
    if not cfg.layers_pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        patterns = [cfg.layers_pattern] if isinstance(cfg.layers_pattern, str) \
            else cfg.layers_pattern
        match = None
        for pattern in patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    if match is None:
        return False
    index = int(match.group("idx"))
    return index == layers if isinstance(layers, int) else index in layers


def _pattern_value(patterns: dict, key: str, default):
    for pattern in patterns:
        if re.match(rf"(.*\.)?({pattern})$", key):
            return patterns[pattern]
    return patterns.get(key, default)


def lora_sites(cfg: "LoraConfig", fam: Family, num_layers: int,
               where: str = "the LoRA config") -> dict[tuple[int, str], tuple[int, float]]:
    """(layer, HF projection name) -> (rank, scale) for every module the config adapts on
    `fam`'s transformers class."""
    layout = fam.hf_layout
    names = ", ".join(layout.names)
    targets = resolved_targets(cfg, fam, where)
    sites = {}
    try:
        for key in hf_module_names(layout, num_layers):
            if _excluded(cfg, key) or not _targeted(cfg, targets, key):
                continue
            parts = key.split(".")
            if len(parts) != 5 or layout.projection(parts[4]) is None:
                what = {"lm_head": "the output head lm_head",
                        "model.embed_tokens": "the embedding embed_tokens"}.get(key, key or "the "
                                                                                "root module")
                raise FloraError(f"{where}: target_modules selects {what}; LoRA there is not "
                                 "supported by flora-export",
                                 f"train LoRA on the projections only ({names})")
            rank = _pattern_value(cfg.rank_pattern, key, cfg.rank)
            alpha = _pattern_value(cfg.alpha_pattern, key, cfg.alpha)
            if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
                raise FloraError(f"{where}: rank for {key} is {rank!r}",
                                 "ranks (r, rank_pattern values) must be positive integers")
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) \
                    or not math.isfinite(alpha):
                raise FloraError(f"{where}: lora_alpha for {key} is {alpha!r}",
                                 "lora_alpha and alpha_pattern values must be finite numbers")
            scale = alpha / math.sqrt(rank) if cfg.use_rslora else alpha / rank
            sites[(int(parts[2]), parts[4])] = (rank, float(scale))
    except re.error as e:
        raise FloraError(f"{where}: a module pattern is not a valid regular expression ({e})",
                         "fix target_modules / exclude_modules / rank_pattern / alpha_pattern / "
                         "layers_pattern") from None
    if not sites:
        raise FloraError(f"{where}: target_modules {_shown(targets)} selects no projection of "
                         f"{fam.architecture} (model_type {fam.model_type})",
                         f"PEFT refuses such a config too; its projections are {names}")
    return sites


def _shown(targets) -> str:
    return repr(targets) if isinstance(targets, str) else "[" + ", ".join(targets) + "]"
