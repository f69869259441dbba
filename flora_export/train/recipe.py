"""Training recipes: typed, documented configuration read from YAML.

A recipe is four sections (`model`, `method`, `data`, `train`) and an `out`
directory. Every field has a type, a default and a one-line doc (`flora-train
--fields` prints them all); `--set section.field=value` overrides are parsed with
the field's own type, so a typo or a wrong type is an error, never a silent default.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..adapters.config import FFBAConfig, LoraConfig
from ..errors import FloraError, unknown_name
from ..limits import COUNT, OPTIONAL_COUNT, SEED, THREADS, Limit, check
from ..settings import check_settings, settable
from ..settings import setting as doc     # a documented (and range-checked) field

METHODS = ("ffba", "lora", "full")
# Adam moves each weight by about lr per step: a step above 1 is never a fine-tuning rate.
LR = Limit(float, 0, 1, low_open=True, example="1e-3")
# The held-out set is scored at every evaluation; built-in tasks have about 1.2M distinct
# held-out prompts, so a larger set could never be drawn.
EVAL_SIZE = Limit(int, 1, 100_000, example="200")
NON_NEGATIVE = Limit(float, 0, example="0")


@dataclass
class ModelSpec:
    base: str = doc("model directory (HF Llama), preset name, or 'flora-default' (the embedded "
                    "base)", "flora-default")
    init: str = doc("'pretrained' keeps the base weights; 'random' re-initializes them "
                    "(training from scratch)", "pretrained")
    seed: int = doc("seed of the random weights ('random' init and presets)", 0, limit=SEED)


@dataclass
class MethodSpec:
    kind: str = doc("what trains: ffba (an FFBA adapter), lora (a LoRA adapter) or full "
                    "(every weight; saves a full checkpoint)", "ffba")
    ffba: FFBAConfig = doc("FFBA settings (kind: ffba): the API's FFBAConfig",
                           factory=FFBAConfig)
    lora: LoraConfig = doc("LoRA settings (kind: lora): the API's LoraConfig",
                           factory=LoraConfig)


@dataclass
class DataSpec:
    tasks: list[str] = doc("built-in generated tasks, mixed uniformly (see `flora-train "
                           "--tasks`); empty when `jsonl` is given", factory=lambda: ["shift"])
    jsonl: str = doc("JSONL file of {\"prompt\", \"response\"} records (relative to the recipe "
                     "file); replaces `tasks`", "")
    eval_jsonl: str = doc("held-out JSONL; default: every 10th record of `jsonl` by prompt "
                          "hash", "")
    eval_size: int = doc("held-out examples used for accuracy", 200, limit=EVAL_SIZE)
    max_len: int = doc("longest tokenized example (prompt template + response); longer ones "
                       "are an error", 96, limit=COUNT)
    chat_template: bool = doc("wrap prompts in the Llama-3 chat template, as the apps do", True)


@dataclass
class TrainSpec:
    steps: int = doc("optimizer steps", 600, limit=COUNT)
    batch_size: int = doc("examples per step (all processes together)", 32, limit=COUNT)
    lr: float = doc("peak learning rate (AdamW)", 3e-3, limit=LR)
    weight_decay: float = doc("AdamW weight decay (lr * weight_decay must stay below 1)", 0.0,
                              limit=NON_NEGATIVE)
    warmup_steps: int = doc("linear warm-up steps (at most steps), then cosine decay to 10% "
                            "of lr", 30, limit=Limit(int, 0, example="30"))
    grad_clip: float = doc("max gradient norm (0: off)", 1.0,
                           limit=Limit(float, 0, example="1.0", note="0 turns clipping off"))
    seed: int = doc("seed of the adapter init and of the data stream", 0, limit=SEED)
    eval_every: int = doc("steps between held-out evaluations (0: only at the end)", 0,
                          limit=OPTIONAL_COUNT)
    save_every: int = doc("steps between resumable checkpoints (0: none)", 200,
                          limit=OPTIONAL_COUNT)
    log_every: int = doc("steps between loss lines in train_log.jsonl", 10, limit=COUNT)
    quant_aware: bool = doc("train against the int4 export's weights (FFBA only): the base "
                            "rounded to int4 once, the adapter in every forward pass with "
                            "straight-through gradients (docs/ffba.md)", False)
    threads: int = doc("CPU threads for torch (0: torch's default)", 0,
                       limit=Limit(int, 0, THREADS.high, example="2",
                                   note="0 keeps torch's default"))


@dataclass
class Recipe:
    description: str = doc("what the recipe trains and why", "")
    out: str = doc("output directory (relative to the working directory)", "runs/recipe")
    model: ModelSpec = doc("the base model", factory=ModelSpec)
    method: MethodSpec = doc("what is trained", factory=MethodSpec)
    data: DataSpec = doc("training and held-out data", factory=DataSpec)
    train: TrainSpec = doc("optimization", factory=TrainSpec)
    source: str = field(default="", metadata={"doc": "", "internal": True})

    def to_dict(self) -> dict:
        """The settable fields as plain YAML/JSON values (what recipe.yaml records)."""
        return _plain(self)

    def validate(self) -> "Recipe":
        if self.method.kind not in METHODS:
            raise unknown_name("method.kind", self.method.kind, METHODS)
        if self.model.init not in ("pretrained", "random"):
            raise unknown_name("model.init", self.model.init, ("pretrained", "random"))
        if self.method.kind != "full" and self.model.init == "random":
            raise FloraError("an adapter on randomly initialized base weights learns nothing "
                             "useful", "use method.kind=full with model.init=random")
        check_ranges(self)
        if self.train.quant_aware and self.method.kind != "ffba":
            raise FloraError(f"train.quant_aware applies to FFBA adapters, not method.kind="
                             f"{self.method.kind} (a merged LoRA or full model is rounded "
                             "with the base)", "set train.quant_aware=false or method.kind=ffba")
        if not self.data.tasks and not self.data.jsonl:
            raise FloraError("the recipe names no data", "set data.tasks or data.jsonl")
        from .tasks import TASKS
        for t in self.data.tasks:
            if t not in TASKS:
                raise unknown_name("data task", t, TASKS)
        return self

    def adapter_config(self) -> FFBAConfig | LoraConfig | None:
        """The adapter this recipe trains (None for method.kind full)."""
        return {"ffba": self.method.ffba, "lora": self.method.lora}.get(self.method.kind)

    def resolve(self, path: str) -> Path:
        """A data path relative to the recipe file."""
        p = Path(path)
        return p if p.is_absolute() or not self.source else Path(self.source).parent / p


def _plain(obj) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        if not settable(f):
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = _plain(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def get_field(recipe: Recipe, key: str):
    obj = recipe
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def check_ranges(recipe: Recipe) -> None:
    """Every numeric field within its documented range, and the fields that bound each other."""
    for key, limit in field_limits().items():
        value = get_field(recipe, key)
        if value is not None or not _optional(key):
            check(key, value, limit)
    t = recipe.train
    if t.warmup_steps > t.steps:
        raise FloraError(f"train.warmup_steps={t.warmup_steps} is more than train.steps="
                         f"{t.steps} (the learning rate would never reach its peak)",
                         f"set train.warmup_steps to at most {t.steps}")
    if t.lr * t.weight_decay >= 1:
        raise FloraError(f"train.lr * train.weight_decay = {t.lr * t.weight_decay:g} must be "
                         "below 1 (AdamW multiplies each weight by 1 - lr * weight_decay per "
                         "step)", f"set train.weight_decay below {1 / t.lr:g}, e.g. 0.01")


def field_limits(cls=None, prefix: str = "") -> dict[str, Limit]:
    """Dotted key -> allowed range, for every field that has one."""
    cls = cls or Recipe
    out = {}
    for f in dataclasses.fields(cls):
        if not settable(f):
            continue
        ftype = _field_type(cls, f.name)
        if dataclasses.is_dataclass(ftype):
            out.update(field_limits(ftype, f"{prefix}{f.name}."))
        elif f.metadata.get("limit") is not None:
            out[prefix + f.name] = f.metadata["limit"]
    return out


def _optional(key: str) -> bool:
    *parents, name = key.split(".")
    cls = Recipe
    for part in parents:
        cls = _field_type(cls, part)
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata.get("optional")


# ------------------------------------------------------------------ loading

def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a YAML recipe, apply `section.field=value` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise FloraError(f"recipe {path} does not exist", "pass a YAML file, e.g. "
                         "recipes/default-adapter.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError) as e:
        raise FloraError(f"recipe {path} cannot be read as UTF-8 text ({e})",
                         "save the recipe as UTF-8 YAML") from None
    except yaml.YAMLError as e:
        raise FloraError(f"recipe {path} is not valid YAML ({str(e).splitlines()[0]})",
                         "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise FloraError(f"recipe {path} is not a mapping", "write `section: {field: value}`")
    recipe = from_dict(Recipe, data, "")
    recipe.source = str(path)
    for item in overrides:
        apply_override(recipe, item)
    return recipe.validate()


def from_dict(cls, data: dict, prefix: str):
    fields = {f.name: f for f in dataclasses.fields(cls) if settable(f)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise unknown_name("recipe field", prefix + unknown[0], [prefix + k for k in fields])
    kwargs = {}
    for name, value in data.items():
        ftype = _field_type(cls, name)
        if dataclasses.is_dataclass(ftype):
            if not isinstance(value, dict):
                raise FloraError(f"recipe field {prefix}{name} must be a mapping",
                                 f"write `{name}:` followed by indented fields")
            kwargs[name] = from_dict(ftype, value, f"{prefix}{name}.")
        else:
            kwargs[name] = coerce(value, ftype, prefix + name)
    check_settings(cls, kwargs, prefix)     # the type's own checks, named as the recipe's keys
    return cls(**kwargs)


def _field_type(cls, name: str):
    return typing.get_type_hints(cls)[name]


def coerce(value, ftype, key: str):
    """`value` as `ftype` (int, float, str, bool, list[str], or one of them or None);
    strings are parsed."""
    origin = typing.get_origin(ftype)
    if origin is types.UnionType:
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            return None
        ftype = next(t for t in typing.get_args(ftype) if t is not type(None))
        origin = typing.get_origin(ftype)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise FloraError(f"{key} must be a list, got {value!r}", f"write {key}=a,b,c")
        return [coerce(v, typing.get_args(ftype)[0], key) for v in value]
    if ftype is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "yes", "1", "false", "no", "0"):
            return str(value).lower() in ("true", "yes", "1")
    elif ftype in (int, float):
        try:
            number = ftype(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is not None and (ftype is float or float(value) == int(number)):
            return number
    elif ftype is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise FloraError(f"{key} must be {_type_name(ftype)}, got {value!r}",
                     f"set {key} to {_type_name(ftype)}")


def _type_name(ftype) -> str:
    if typing.get_origin(ftype) is types.UnionType:
        return " or ".join(_type_name(t) if t is not type(None) else "null"
                           for t in typing.get_args(ftype))
    if typing.get_origin(ftype) in (list, tuple):
        return "a list"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"
            }.get(ftype, str(ftype))


def apply_override(recipe: Recipe, item: str) -> None:
    """`section.field=value` (or `field=value` for top-level fields), type-checked."""
    key, sep, raw = item.partition("=")
    if not sep:
        raise FloraError(f"override {item!r} has no '='", "write --set train.lr=1e-3")
    *parents, name = key.strip().split(".")
    obj = recipe
    for part in parents:
        if not hasattr(obj, part) or not dataclasses.is_dataclass(getattr(obj, part)):
            raise unknown_name("recipe section", key, list(field_docs()))
        obj = getattr(obj, part)
    names = [f.name for f in dataclasses.fields(obj) if settable(f)]
    if name not in names or dataclasses.is_dataclass(getattr(obj, name)):
        raise unknown_name("recipe field", key, list(field_docs()))
    value = yaml.safe_load(raw) if raw.strip() else ""
    value = coerce(value, _field_type(type(obj), name), key)
    check_settings(type(obj), {name: value}, key[:-len(name)])
    if type(obj).__dataclass_params__.frozen:     # an adapter config: a new one in its place
        owner = get_field(recipe, ".".join(parents[:-1])) if len(parents) > 1 else recipe
        setattr(owner, parents[-1], dataclasses.replace(obj, **{name: value}))
    else:
        setattr(obj, name, value)


def field_docs(cls=Recipe, prefix: str = "") -> dict[str, tuple[str, object, str]]:
    """Every settable field: dotted key -> (type, default, doc)."""
    out = {}
    instance = cls()
    for f in dataclasses.fields(cls):
        if not settable(f):
            continue
        ftype = _field_type(cls, f.name)
        if dataclasses.is_dataclass(ftype):
            out.update(field_docs(ftype, f"{prefix}{f.name}."))
        else:
            short = _short_type(ftype)
            limit = f.metadata.get("limit")
            out[prefix + f.name] = (short, getattr(instance, f.name), f.metadata["doc"] + (
                f"; {limit.text()}" if limit else ""))
    return out


def _short_type(ftype) -> str:
    if typing.get_origin(ftype) is types.UnionType:
        return "|".join(_short_type(t) if t is not type(None) else "null"
                        for t in typing.get_args(ftype))
    return "list" if typing.get_origin(ftype) in (list, tuple) else ftype.__name__


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (saved next to what it trained)."""
    return yaml.safe_dump(json.loads(json.dumps(recipe.to_dict())), sort_keys=False)


__all__ = ["Recipe", "load_recipe", "apply_override", "field_docs", "dump_recipe", "METHODS"]
