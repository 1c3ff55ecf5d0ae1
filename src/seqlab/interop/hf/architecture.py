"""What seqlab knows of one Hugging Face architecture: how its config.json maps to a seqlab
config, and its weight table.

Each architecture file (``gpt2.py``, ``llama.py``, ...) defines one :class:`Architecture`.
Reading a config goes through :class:`HFConfig`, which refuses, by name, every option seqlab
does not implement (a rope scaling type, an attention variant) instead of ignoring it: a model
that imports without complaint must compute what the original computes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from seqlab.errors import ConfigError
from seqlab.interop.hf.mapping import Rule

_MISSING = object()


class HFConfig:
    """A config.json, read with checks; every error names the architecture and the key.

    ``tensor_names`` are the checkpoint's tensors, for what config.json leaves unsaid (a T5
    saved by transformers 5 says its head is tied and stores an untied ``lm_head`` beside it).
    """

    def __init__(self, values: dict[str, Any], model_type: str, tensor_names: frozenset[str] = frozenset()):
        self.values = values
        self.model_type = model_type
        self.tensor_names = tensor_names

    def get(self, key: str, default: Any = _MISSING, *, kind: type | tuple[type, ...] | None = None) -> Any:
        """``values[key]``, or ``default`` when absent (a missing key without one is an error)."""
        if key not in self.values or self.values[key] is None and default is not _MISSING:
            if default is _MISSING:
                raise ConfigError(f"{self.model_type} config.json has no {key!r}; the file is incomplete")
            return default
        value = self.values[key]
        if kind is not None and (not isinstance(value, kind) or isinstance(value, bool) and bool not in
                                 (kind if isinstance(kind, tuple) else (kind,))):
            raise ConfigError(f"{self.model_type} config.json: {key!r} is {value!r}, expected "
                              f"{getattr(kind, '__name__', kind)}")
        return value

    def require(self, key: str, allowed: Sequence[Any], default: Any = None) -> Any:
        """The value of ``key`` (``default`` when absent), refused unless in ``allowed``."""
        value = self.values.get(key, default)
        if value not in allowed:
            shown = ", ".join(repr(item) for item in allowed)
            raise ConfigError(f"{self.model_type} config.json sets {key}={value!r}, which seqlab does not "
                              f"implement (supported: {shown}); the model would compute something else")
        return value


@dataclass(frozen=True)
class Architecture:
    """One HF architecture that seqlab reads and writes.

    Attributes:
        model_type: config.json's ``model_type``.
        hf_class: the transformers class written to ``architectures`` on export.
        model: the seqlab registry name it becomes.
        exports_from: the seqlab registry names it can express (``model`` and more, e.g. a
            ``transformer`` whose config is GPT-2's); none means ``model`` alone.
        task: the seqlab task of that model.
        table: the weight table (``seqlab.interop.hf.mapping``), under the HF class's names.
        config_from_hf: an :class:`HFConfig` -> the seqlab config's values (refusing what
            seqlab does not implement).
        config_to_hf: a seqlab config -> config.json's values (``model_type`` and
            ``architectures`` are added); refuses (ConfigError) a config HF cannot express.
        base_prefix: the prefix of the backbone's tensors (``transformer.``, ``model.``) that a
            checkpoint of the bare backbone class lacks; added back on import.
        ignored: regular expressions of HF tensor names that carry nothing (buffers, tied copies).
        n_layers: the layer count of a seqlab config that ``{i}`` runs over.
    """

    model_type: str
    hf_class: str
    model: str
    task: str
    table: tuple[Rule, ...]
    config_from_hf: Callable[[HFConfig], dict[str, Any]]
    config_to_hf: Callable[[Any], dict[str, Any]]
    exports_from: tuple[str, ...] = ()
    base_prefix: str = ""
    ignored: tuple[str, ...] = ()
    n_layers: Callable[[Any], int] = field(default=lambda config: config.n_layers)


def check_exportable(config: Any, family: str, *, grouped_query: bool = False, **fits: Any) -> None:
    """Refuse a seqlab config that ``family`` cannot express: every field named in ``fits``
    must have that value, and the key/value heads must be the query heads unless
    ``grouped_query`` (a ConfigError naming the field)."""
    for key, value in fits.items():
        if getattr(config, key) != value:
            raise ConfigError(f"{family} needs {key}={value!r}, this model has {getattr(config, key)!r}")
    if not grouped_query and config.n_kv_heads not in (None, config.n_heads):
        raise ConfigError(f"{family} has no grouped-query attention; this model has n_kv_heads={config.n_kv_heads}")
