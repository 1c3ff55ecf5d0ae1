"""Model registry: a name maps to a config dataclass and the module class built from it.

A model file registers itself::

    @dataclass(frozen=True, kw_only=True)
    class LSTMConfig:
        vocab_size: int
        d_model: int = 256

    @register("lstm", task="lm", config=LSTMConfig)
    class LSTMLanguageModel(CausalLM):
        def __init__(self, config: LSTMConfig): ...

and ``build("lstm", vocab_size=96, d_model=128)`` returns an instance. Names are unique per
task (``hmm`` is a language model and a tagger). An entry declares how its model trains:
``trains="trainer"`` (the one ``Trainer``, by gradient steps on the task's loss) or
``trains="fit"`` (its own ``fit(task, *, progress=False, deadline=None) -> self``: counting,
EM, L-BFGS). Configs hold plain JSON values only, so a checkpoint's ``config.json`` rebuilds
its model with nothing but seqlab. Every module of ``seqlab.models`` and ``seqlab.classical``
is imported on first use, so a new model file registers itself by existing.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Literal

from torch import nn

from seqlab.errors import ConfigError
from seqlab.fields import config_to_dict, make_config  # noqa: F401 (re-exported: registry.config_to_dict)

Trains = Literal["trainer", "fit"]
MODEL_PACKAGES = ("seqlab.models", "seqlab.classical", "seqlab.forecast", "seqlab.speech")


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its name, the task it solves, how it trains, its classes."""

    name: str
    task: str
    config_class: type
    model_class: type[nn.Module]
    summary: str
    trains: Trains = "trainer"
    in_default_compare: bool = True    # whether a bare `seqlab compare --task T` includes it


_REGISTRY: dict[tuple[str, str], ModelEntry] = {}    # (task, name): names are unique per task


def register(
    name: str, *, task: str, config: type, trains: Trains = "trainer", in_default_compare: bool = True
) -> Callable[[type], type]:
    """Class decorator adding a model class, built as ``model_class(config)``, to the registry.

    Raises:
        TypeError: ``config`` is not a dataclass, or ``trains`` does not match the class (a
            ``"fit"`` model must define ``fit``; a ``"trainer"`` model must not).
        ValueError: the name is already registered for ``task``.
    """
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"config of model {name!r} must be a dataclass, got {config!r}")
    if trains not in ("trainer", "fit"):
        raise TypeError(f"trains of model {name!r} must be 'trainer' or 'fit', got {trains!r}")

    def add(model_class: type) -> type:
        if (task, name) in _REGISTRY:
            raise ValueError(f"model name {name!r} is registered twice for task {task!r}")
        if (trains == "fit") != callable(getattr(model_class, "fit", None)):
            raise TypeError(f"model {name!r} is registered with trains={trains!r} but "
                            f"{'lacks' if trains == 'fit' else 'defines'} a fit method")
        doc = (model_class.__doc__ or "").strip().splitlines()
        entry = ModelEntry(name, task, config, model_class, doc[0] if doc else "", trains, in_default_compare)
        _REGISTRY[task, name] = entry
        model_class.registry_name = name
        model_class.registry_entry = entry
        return model_class

    return add


_loaded = False


def _ensure_loaded() -> None:
    """Import every module of the model packages, which runs every ``@register``."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for package_name in MODEL_PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.iter_modules(package.__path__, f"{package_name}."):
            importlib.import_module(module.name)


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
    listing = ", ".join(known) if known else "none"
    raise ConfigError(f"unknown model {name!r}{hint}; known models{where}: {listing}")


def entry_of(model: nn.Module) -> ModelEntry | None:
    """The registry entry ``model`` was built from (None for an unregistered module)."""
    entry = getattr(type(model), "registry_entry", None)
    return entry if entry is not None and type(model) is entry.model_class else None


def trains_by(model: nn.Module) -> Trains:
    """``"fit"`` for a registered model that fits itself, else ``"trainer"``."""
    entry = entry_of(model)
    return entry.trains if entry is not None else "trainer"


def build(name: str, task: Any = None, **overrides: Any) -> nn.Module:
    """Build the model registered as ``name`` with its default config updated by ``overrides``.

    ``task`` is a task instance (its data sizes fill the config, as
    ``seqlab.build("lstm", task, n_layers=3)``), a task name choosing between models of one
    name (``seqlab.build("hmm", "tag", ...)``), or None when only one task has ``name``.
    """
    if task is not None and not isinstance(task, str):
        return build_for_task(name, task.model_defaults(), overrides, task=task.name)
    entry = get(name, task)
    return _instantiate(entry, make_config(entry.config_class, overrides))


def build_for_task(name: str, task_defaults: dict[str, Any], overrides: dict[str, Any],
                   task: str | None = None) -> nn.Module:
    """Build ``name`` for a task: the task's values (vocabulary, context) for the config fields
    the model has, then the caller's ``overrides`` on top."""
    entry = get(name, task)
    fields = {f.name for f in dataclasses.fields(entry.config_class)}
    values = {key: value for key, value in task_defaults.items() if key in fields}
    return _instantiate(entry, make_config(entry.config_class, {**values, **overrides}))


def _instantiate(entry: ModelEntry, config: Any) -> nn.Module:
    """``entry.model_class(config)``, with a clear error when the machine cannot hold it."""
    try:
        return entry.model_class(config)
    except (MemoryError, RuntimeError) as error:
        if not isinstance(error, MemoryError) and "alloc" not in str(error).lower() \
                and "memory" not in str(error).lower():
            raise
        raise ConfigError(f"building {entry.name} with this config needs more memory than this machine has "
                          f"({str(error).splitlines()[0][:120]}); use a smaller config") from None


def parameter_count(model: nn.Module) -> int:
    """Number of distinct trainable parameters (tied weights counted once); for a model that
    fits itself (counts, EM), the number of values it stores, its tables included."""
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trains_by(model) == "fit":
        return trained + sum(b.numel() for b in model.buffers())
    return trained
