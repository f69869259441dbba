"""RoPE settings read from config.json the way each family's transformers class reads them.

transformers 5 standardises the rope keys (`RotaryEmbeddingConfigMixin` in
`transformers/modeling_rope_utils.py`); the families differ only in where the dicts
come from and which rope types and keys they take:

- flat (Llama, Qwen2/3, Mistral, SmolLM3): a non-empty `rope_scaling` replaces
  `rope_parameters` whole; `rope_theta` inside the dict wins over the top-level one;
  `rope_type` wins over the legacy `type`;
- Phi3: the same dicts, `su` / `yarn` read as `longrope`, `partial_rotary_factor`
  honoured, and the top-level `original_max_position_embeddings` (default 4096) always
  wins (`Phi3Config` keeps it as an attribute, which `standardize_rope_params` prefers);
- Gemma 3: `rope_parameters` nested by layer type; a legacy `rope_scaling` updates the
  full-attention dict; `rope_theta` / `rope_local_base_freq` are the two thetas.

Each returns `(rope dict without rope_theta, or None for default RoPE; rope_theta)`.
"""

from __future__ import annotations

from ..errors import FloraError

ROPE_KEYS = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
             "longrope": ("short_factor", "long_factor", "original_max_position_embeddings")}
ROPE_OPTIONAL = {"llama3": ("original_max_position_embeddings",),
                 "longrope": ("factor", "attention_factor")}
FLAT_TYPES = ("default", "linear", "llama3")
_LAYER_TYPES = ("full_attention", "sliding_attention")


def _check_objects(d: dict, where: str, keys=("rope_scaling", "rope_parameters")) -> None:
    for key in keys:
        if d.get(key) is not None and not isinstance(d[key], dict):
            raise FloraError(f"{where}: {key} must be an object, got {d[key]!r}",
                             "fix the model's config.json")


def _parse(rope: dict, where: str, name: str, types: tuple[str, ...], theta_default,
           partial_default=None) -> tuple[str, dict, float, object]:
    """(rope_type, its keys, theta, partial_rotary_factor) of one rope dict; keys the type
    does not use are refused by name."""
    rope = dict(rope)
    theta = rope.pop("rope_theta", None)
    theta = theta_default if theta is None else theta
    legacy = rope.pop("type", None)
    kind = rope.pop("rope_type", None) or legacy or "default"
    factor = rope.pop("partial_rotary_factor", None)
    factor = partial_default if factor is None else factor
    if kind not in types:
        raise FloraError(f"{where}: {name} rope_type={kind!r} is not supported",
                         f"use one of: {', '.join(types)}")
    known = ROPE_KEYS.get(kind, ()) + ROPE_OPTIONAL.get(kind, ())
    for key, value in rope.items():
        if key not in known and value is not None:
            raise FloraError(f"{where}: {name}.{key}={value!r} is not used by rope_type "
                             f"{kind!r}", f"remove it, or use a rope_type that takes {key}")
    return kind, {k: v for k, v in rope.items() if k in known and v is not None}, theta, factor


def _refuse_partial(factor, where: str) -> None:
    if factor not in (None, 1, 1.0):
        raise FloraError(f"{where}: partial_rotary_factor={factor!r} is not supported (RoPE on "
                         "part of each head)", "partial_rotary_factor must be 1.0")


def flat_rope(d: dict, where: str, theta_default: float = 10000.0) -> tuple[dict | None, float]:
    """Llama, Qwen2/3, Mistral, SmolLM3. A llama3 rope without
    `original_max_position_embeddings` uses `max_position_embeddings`; a top-level
    `original_max_position_embeddings` is not read, so one that differs is refused."""
    _check_objects(d, where)
    name = "rope_scaling" if d.get("rope_scaling") else "rope_parameters"
    kind, rope, theta, factor = _parse(d.get(name) or {}, where, name, FLAT_TYPES,
                                       d.get("rope_theta", theta_default),
                                       d.get("partial_rotary_factor"))
    _refuse_partial(factor, where)
    if kind == "llama3":
        rope.setdefault("original_max_position_embeddings", d.get("max_position_embeddings", 2048))
    top = d.get("original_max_position_embeddings")
    if top is not None and kind == "llama3" and top != rope["original_max_position_embeddings"]:
        raise FloraError(
            f"{where}: original_max_position_embeddings={top!r} differs from "
            f"{name}.original_max_position_embeddings={rope['original_max_position_embeddings']!r}"
            " (transformers uses the latter, or max_position_embeddings when absent)",
            "make them equal or remove the top-level key")
    return (None if kind == "default" else {"rope_type": kind, **rope}), theta


def phi3_rope(d: dict, where: str) -> tuple[dict | None, float, float]:
    """Phi3: (rope dict, theta, partial_rotary_factor)."""
    _check_objects(d, where)
    name = "rope_scaling" if d.get("rope_scaling") else "rope_parameters"
    rope = dict(d.get(name) or {})
    legacy = rope.get("rope_type") or rope.get("type")
    if legacy in ("su", "yarn"):   # Phi3Config reads both as longrope
        rope.pop("type", None)
        rope["rope_type"] = "longrope"
    kind, rope, theta, factor = _parse(rope, where, name, ("default", "longrope"),
                                       d.get("rope_theta", 10000.0),
                                       d.get("partial_rotary_factor", 1.0))
    if kind == "default":
        return None, theta, factor
    top = d.get("original_max_position_embeddings", 4096)
    inner = rope.get("original_max_position_embeddings", top)
    if inner != top:
        raise FloraError(
            f"{where}: {name}.original_max_position_embeddings={inner!r} differs from the "
            f"top-level original_max_position_embeddings={top!r} (transformers' Phi3 uses the "
            "top-level value, 4096 when absent)", "make them equal or remove the inner key")
    rope["original_max_position_embeddings"] = top
    missing = [k for k in ("short_factor", "long_factor") if k not in rope]
    if missing:
        raise FloraError(f"{where}: {name} of type 'longrope' lacks {', '.join(missing)}",
                         "fix the model's config.json")
    return {"rope_type": "longrope", **rope}, theta, factor


def gemma3_rope(d: dict, where: str) -> tuple[dict | None, float, float]:
    """Gemma 3: (full-attention rope dict, full-attention theta, sliding-layer theta)."""
    _check_objects(d, where)
    params = d.get("rope_parameters") or {}
    flat = sorted(k for k in params if k not in _LAYER_TYPES)
    if flat:
        raise FloraError(f"{where}: rope_parameters.{flat[0]} is not a layer type (Gemma 3 "
                         "nests rope_parameters by layer type)",
                         'use {"full_attention": {...}, "sliding_attention": {...}}')
    _check_objects(params, where, _LAYER_TYPES)
    full = dict(params.get("full_attention") or {"rope_type": "default"})
    if d.get("rope_scaling") is not None:
        full.update(d["rope_scaling"])
    kind, rope, theta, factor = _parse(full, where, "rope_parameters.full_attention",
                                       FLAT_TYPES, d.get("rope_theta", 1000000.0),
                                       d.get("partial_rotary_factor"))
    _refuse_partial(factor, where)
    if kind == "llama3":
        rope.setdefault("original_max_position_embeddings", d.get("max_position_embeddings",
                                                                  131072))
    local = params.get("sliding_attention") or {"rope_type": "default"}
    _, _, local_theta, factor = _parse(local, where, "rope_parameters.sliding_attention",
                                       ("default",), d.get("rope_local_base_freq", 10000.0),
                                       d.get("partial_rotary_factor"))
    _refuse_partial(factor, where)
    return (None if kind == "default" else {"rope_type": kind, **rope}), theta, local_theta
