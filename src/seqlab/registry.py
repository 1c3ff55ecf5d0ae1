"""Model registry: a name maps to a config dataclass and the module class built from it.

A model file registers itself::

    @dataclass(frozen=True, kw_only=True)
    class LSTMConfig:
        vocab_size: int
        d_model: int = 256

    @register("lstm", task="lm", config=LSTMConfig)
    class LSTMLanguageModel(CausalLM):
        def __init__(self, config: LSTMConfig): ...

and ``build("lstm", vocab_size=96, d_model=128)`` returns an instance. Configs hold plain
JSON values only, so a checkpoint's ``config.json`` rebuilds its model with nothing but seqlab.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal

from torch import nn

from seqlab.errors import ConfigError


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its name, the task it solves, its config and module classes."""

    name: str
    task: str
    config_class: type
    model_class: type[nn.Module]
    summary: str
    in_default_compare: bool = True    # whether a bare `seqlab compare` includes it


_REGISTRY: dict[tuple[str, str], ModelEntry] = {}    # (task, name): names are unique per task


def register(
    name: str, *, task: str, config: type, in_default_compare: bool = True
) -> Callable[[type], type]:
    """Class decorator adding a model class, built as ``model_class(config)``, to the registry."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"config of model {name!r} must be a dataclass, got {config!r}")

    def add(model_class: type) -> type:
        if (task, name) in _REGISTRY:
            raise ValueError(f"model name {name!r} is registered twice for task {task!r}")
        doc = (model_class.__doc__ or "").strip().splitlines()
        summary = doc[0] if doc else ""
        _REGISTRY[task, name] = ModelEntry(name, task, config, model_class, summary, in_default_compare)
        model_class.registry_name = name
        return model_class

    return add


def _ensure_loaded() -> None:
    # Importing the model package runs every @register.
    import seqlab.models  # noqa: F401


def entries(task: str | None = None) -> list[ModelEntry]:
    """Registered models in registration order, optionally only those for ``task``."""
    _ensure_loaded()
    return [e for e in _REGISTRY.values() if task is None or e.task == task]


def get(name: str, task: str | None = None) -> ModelEntry:
    """The entry registered as ``name`` (for ``task``; None: the only task that has ``name``).

    Raises:
        ConfigError: an unknown name (with close matches), or a name several tasks use when no
            task is given.
    """
    _ensure_loaded()
    matches = [entry for (entry_task, entry_name), entry in _REGISTRY.items()
               if entry_name == name and task in (None, entry_task)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        tasks = ", ".join(entry.task for entry in matches)
        raise ConfigError(f"model name {name!r} exists for several tasks ({tasks}); choose one with --task")
    known = sorted({entry_name for (entry_task, entry_name) in _REGISTRY if task in (None, entry_task)})
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = f" for task {task!r}" if task else ""
    raise ConfigError(f"unknown model {name!r}{hint}; known models{where}: {', '.join(known)}")


def make_config(config_class: type, values: dict[str, Any]) -> Any:
    """Instantiate ``config_class`` from ``values``, checking every key and type.

    Strings are converted to the field's type (so ``--set n_layers=3`` works from the CLI);
    any other value must already have the field's type (an int is accepted for a float).

    Raises:
        ConfigError: naming the unknown key and the allowed ones, a missing required key, or
            the key whose value has the wrong type.
    """
    fields = {f.name: f for f in dataclasses.fields(config_class) if f.init}
    hints = typing.get_type_hints(config_class)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} for {config_class.__name__}; "
            f"allowed keys: {', '.join(fields)}"
        )
    converted = {key: _convert(config_class, key, value, hints[key]) for key, value in values.items()}
    missing = [
        name for name, f in fields.items()
        if name not in converted
        and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{config_class.__name__} needs a value for {missing[0]!r}")
    try:
        return config_class(**converted)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"invalid {config_class.__name__}: {error}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as a JSON-ready dict (tuples become lists)."""
    return dataclasses.asdict(config)


def build(name: str, task: str | None = None, **overrides: Any) -> nn.Module:
    """Build the model registered as ``name`` with its default config updated by ``overrides``.

    Example: ``seqlab.build("lstm", vocab_size=96, n_layers=3)``; ``task`` picks between models
    of one name (``seqlab.build("hmm", task="tag", ...)``).
    """
    entry = get(name, task)
    return entry.model_class(make_config(entry.config_class, overrides))


def build_for_task(name: str, task_defaults: dict[str, Any], overrides: dict[str, Any],
                   task: str | None = None) -> nn.Module:
    """Build ``name`` for a task: the task's values (vocabulary, context) for the config fields
    the model has, then the caller's ``overrides`` on top."""
    entry = get(name, task)
    fields = {f.name for f in dataclasses.fields(entry.config_class)}
    values = {key: value for key, value in task_defaults.items() if key in fields}
    return entry.model_class(make_config(entry.config_class, {**values, **overrides}))


def parameter_count(model: nn.Module) -> int:
    """Number of distinct trainable parameters (tied weights counted once); for a model fitted
    in closed form (it has ``fit``), the number of values it stores, its tables included."""
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if callable(getattr(model, "fit", None)):
        return trained + sum(b.numel() for b in model.buffers())
    return trained


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def _convert(config_class: type, key: str, value: Any, hint: Any) -> Any:
    """``value`` as an instance of the type ``hint``, or ``ConfigError`` naming ``key``."""
    where = f"{config_class.__name__}.{key}"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            if type(None) in args:
                return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(config_class, key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be {_type_name(hint)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
    if origin in (tuple, list):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item_hint = args[0] if args else Any
        return tuple(_convert(config_class, key, item, item_hint) for item in items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
    elif hint in (int, float) and not isinstance(value, bool):
        # An int is a float too; a float is not an int; strings are parsed.
        if isinstance(value, int) or (hint is float and isinstance(value, float)):
            return hint(value)
        if isinstance(value, str):
            try:
                return hint(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Any:
        return value
    raise ConfigError(f"{where} must be {_type_name(hint)}, got {value!r}")


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))
