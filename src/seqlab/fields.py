"""Dataclasses of plain values as configs and options: checked construction, docs, CLI flags.

Model configs, ``TrainConfig`` and every task's options are frozen, keyword-only dataclasses of
plain JSON values, documented in an ``Attributes:`` section of their docstring::

    @dataclass(frozen=True, kw_only=True)
    class LanguageModelingOptions:
        \"\"\"Attributes:
            context: window length in tokens.
        \"\"\"
        context: int = 128

From that one declaration this module derives the rest: ``make_config`` builds an instance
from strings (``--set context=64``) or JSON values, with a ``ConfigError`` naming the key;
``field_docs`` reads each field's sentence from the docstring; ``add_flags`` turns the fields
into ``argparse`` flags whose help is that sentence and the default. It imports nothing heavy,
so the command line can describe options without loading torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from typing import Any, Literal

from seqlab.errors import ConfigError

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def make_config(config_class: type, values: dict[str, Any]) -> Any:
    """Instantiate ``config_class`` from ``values``, checking every key and type.

    Strings are converted to the field's type (so ``--set n_layers=3`` works from the CLI);
    any other value must already have the field's type (an int is accepted for a float).

    Raises:
        ConfigError: naming the unknown key and the allowed ones, a missing required key, or
            the key whose value has the wrong type.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{config_class.__name__} needs a mapping of keys to values, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(config_class) if f.init}
    hints = typing.get_type_hints(config_class)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} for {config_class.__name__}; "
            f"allowed keys: {', '.join(fields)}"
        )
    converted = {key: convert(config_class, key, value, hints[key]) for key, value in values.items()}
    missing = [name for name, f in fields.items() if name not in converted and is_required(f)]
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


def is_required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def default_of(field: dataclasses.Field) -> Any:
    """The field's default value (``dataclasses.MISSING`` for a required field)."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def field_docs(config_class: type) -> dict[str, str]:
    """Each field's description, from the ``Attributes:`` sections of the class and its bases.

    A line ``name: text`` (or ``a, b, c: text`` for several fields) starts an entry; lines
    indented deeper continue it. Fields without an entry are absent from the result.
    """
    docs: dict[str, str] = {}
    for klass in reversed(inspect.getmro(config_class)):
        if "__doc__" in vars(klass) and klass.__doc__:
            docs.update(_attribute_section(inspect.cleandoc(klass.__doc__)))
    names = {f.name for f in dataclasses.fields(config_class)}
    return {name: text for name, text in docs.items() if name in names}


_ENTRY = re.compile(r"^\s*([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*:\s*(.*)$")


def _attribute_section(docstring: str) -> dict[str, str]:
    """Entries of the ``Attributes:`` section of a cleaned docstring."""
    lines = docstring.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "Attributes:"]
    if not starts:
        return {}
    entries: dict[str, str] = {}
    names: list[str] = []
    indent = None
    for line in lines[starts[0] + 1:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth < indent:
            break                        # the section ended: dedented text or a new heading
        match = _ENTRY.match(line)
        if depth == indent and match:
            names = [name.strip() for name in match.group(1).split(",")]
            for name in names:
                entries[name] = match.group(2).strip()
        elif names:
            for name in names:
                entries[name] = f"{entries[name]} {line.strip()}".strip()
    return entries


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_flags(parser: Any, config_class: type, *, defaults: dict[str, Any] | None = None,
              skip: tuple[str, ...] = ()) -> list[str]:
    """Add one flag per field of ``config_class`` to ``parser``; return the field names added.

    Every flag parses to None unless given, so that only what a user typed overrides a model's
    or a saved run's values; the help is the field's documentation and its default (from
    ``defaults`` when given there). Booleans become ``--x/--no-x``. Values are converted and
    checked later, by ``make_config``, so that every error has the same form.
    """
    docs = field_docs(config_class)
    hints = typing.get_type_hints(config_class)
    defaults = defaults or {}
    added = []
    for field in dataclasses.fields(config_class):
        if field.name in skip or not field.init:
            continue
        hint = hints[field.name]
        default = defaults.get(field.name, default_of(field))
        shown = "required" if default is dataclasses.MISSING else f"default: {_show(default)}"
        options: dict[str, Any] = {"default": None, "dest": field.name,
                                   "help": f"{docs.get(field.name, '')} ({shown})".strip()}
        if hint is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["metavar"] = _metavar(hint)
        parser.add_argument(flag_name(field.name), **options)
        added.append(field.name)
    return added


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def _metavar(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "{" + ",".join(map(str, args)) + "}"
    if origin in (typing.Union, types.UnionType):
        return _metavar(next(a for a in args if a is not type(None)))
    if origin in (tuple, list):
        return "A,B"
    return {int: "N", float: "X", str: "TEXT"}.get(hint, "VALUE")


def convert(config_class: type, key: str, value: Any, hint: Any) -> Any:
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
                return convert(config_class, key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be {type_name(hint)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
    if origin in (tuple, list):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        fixed = len(args) > 1 and ... not in args            # tuple[float, float]: exactly two
        if fixed and len(items) != len(args):
            raise ConfigError(f"{where} must have {len(args)} values, got {value!r}")
        item_hints = args if fixed else (args[0] if args else Any,) * len(items)
        return tuple(convert(config_class, key, item, item_hint) for item, item_hint in zip(items, item_hints))
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
    raise ConfigError(f"{where} must be {type_name(hint)}, got {value!r}")


def type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))
