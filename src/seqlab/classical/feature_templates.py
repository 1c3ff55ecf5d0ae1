"""Feature templates: which features each position of a sentence fires, written as crfsuite and CRF++ users write them.

A template set is text: templates separated by white space or new lines, ``#`` starting a
comment that runs to the end of its line. A template is one of

- ``bias``: fires ``bias`` at every position;
- ``BOS`` / ``EOS``: fires ``BOS`` at the first position, ``EOS`` at the last;
- ``[name=]view[offset]|view[offset]|...``: reads views of the words at ``t + offset`` (CRF++'s
  ``%x[offset,column]`` with a view for a column; crfsuite's ``w[-1]|w[0]`` in its examples) and
  fires one feature made of their values.

Views of a word: ``w`` (or ``word``) itself; ``lower``; ``shape`` (upper -> X, lower -> x,
digit -> d, any other character kept) and ``short_shape`` (runs collapsed); ``prefixN`` and
``suffixN`` (N >= 1) of the lowercase word; the flags ``title``, ``upper``, ``digit`` (all
digits), ``hyphen`` and ``has_digit``.

The feature string of ``name=v_1[o_1]|...|v_m[o_m]`` at position t is

    "{name}={value}"                                  one view at offset 0 (a flag: "{name}" when true)
    "{o_1}|...|{o_m}:{name}={value_1}|...|{value_m}"  otherwise; offsets written 0, +1, -2, ...

with the name defaulting to the views' names joined by ``|`` (``word`` for ``w``); a flag in a
join has the value ``1`` or ``0``, and a lone flag at another offset fires ``{o}:{name}`` when
true. Beyond the sentence the word is ``<BOS>`` (before it) or ``<EOS>`` (after it): a lone view
fires that marker as its value, and a view in a join is applied to it as to a word (``lower``
gives ``<bos>``), which is what the built-in features have always done.

``DEFAULT_TEMPLATES`` spells the built-in features (``seqlab.classical.tagging_features``)
string for string. ``template_features`` is the specification; ``FeatureHasher`` hashes
template sets fast.
"""

from __future__ import annotations

import functools
import re
from typing import Callable, NamedTuple, Sequence

from seqlab.errors import ConfigError

BEFORE, AFTER = "<BOS>", "<EOS>"       # the word seen beyond the start and the end of a sentence

DEFAULT_TEMPLATES = """
bias  w[0]  lower[0]
prefix1[0]  prefix2[0]  prefix3[0]  prefix4[0]
suffix1[0]  suffix2[0]  suffix3[0]  suffix4[0]
shape[0]  short_shape[0]
title[0]  upper[0]  digit[0]  hyphen[0]  has_digit[0]
lower[-2]
lower[-1]  suffix3[-1]  short_shape[-1]
lower[1]  suffix3[1]  short_shape[1]
lower[2]
bigram=lower[-1]|lower[0]  bigram=lower[0]|lower[1]
BOS  EOS
"""


def word_shape(word: str) -> str:
    """Upper case -> ``X``, lower case -> ``x``, digit -> ``d``, any other character as it is."""
    return "".join("X" if c.isupper() else "x" if c.islower() else "d" if c.isdigit() else c for c in word)


def short_shape(word: str) -> str:
    """``word_shape`` with each run of one character collapsed: ``Xxxxx`` -> ``Xx``."""
    shape = word_shape(word)
    return "".join(c for i, c in enumerate(shape) if i == 0 or c != shape[i - 1])


VALUE_VIEWS: dict[str, Callable[[str], str]] = {
    "word": lambda word: word,
    "lower": str.lower,
    "shape": word_shape,
    "short_shape": short_shape,
}
FLAG_VIEWS: dict[str, Callable[[str], bool]] = {
    "title": str.istitle,
    "upper": str.isupper,
    "digit": str.isdigit,
    "hyphen": lambda word: "-" in word,
    "has_digit": lambda word: any(c.isdigit() for c in word),
}
_AFFIX = re.compile(r"(prefix|suffix)([1-9][0-9]*)")
_VIEW = re.compile(r"([A-Za-z_][A-Za-z_0-9]*)\[([+-]?[0-9]+)\]")
_NAME = re.compile(r"[^\s=|\[\]:]+")


class View(NamedTuple):
    """One view (``lower``, ``suffix3``, a flag...) of the word at ``t + offset``."""

    name: str
    offset: int

    def of(self, word: str) -> str | bool:
        """The view's value of ``word``: a string, or a bool for a flag."""
        return view_function(self.name)(word)


@functools.cache
def view_function(name: str) -> Callable[[str], str | bool]:
    """The function a view applies to a word (a flag's returns a bool)."""
    if name in FLAG_VIEWS:
        return FLAG_VIEWS[name]
    if name in VALUE_VIEWS:
        return VALUE_VIEWS[name]
    kind, length = _AFFIX.fullmatch(name).groups()
    if kind == "prefix":
        return lambda word: word.lower()[:int(length)]
    return lambda word: word.lower()[-int(length):]


class Template(NamedTuple):
    """A parsed template: ``kind`` "bias", "BOS", "EOS" or "views" (then ``name`` and ``views``)."""

    kind: str
    name: str = ""
    views: tuple[View, ...] = ()

    @property
    def is_single(self) -> bool:
        """One view: its feature depends on one word only (hashed once per distinct word)."""
        return self.kind == "views" and len(self.views) == 1

    def feature(self, word_at: Callable[[int], str | None]) -> str | None:
        """The feature string this template fires at a position whose word at offset o is
        ``word_at(o)`` (None beyond the sentence), or None (a false flag)."""
        if self.kind != "views":
            return self.kind
        if self.is_single:
            view = self.views[0]
            word = word_at(view.offset)
            value = _marker(view.offset) if word is None else view.of(word)
            prefix = "" if view.offset == 0 else f"{_offset(view.offset)}:"
            if isinstance(value, bool):
                return prefix + self.name if value else None
            return f"{prefix}{self.name}={value}"
        values = [view.of(_marker(view.offset) if word_at(view.offset) is None else word_at(view.offset))
                  for view in self.views]
        text = "|".join(str(int(v)) if isinstance(v, bool) else v for v in values)
        return f"{'|'.join(_offset(view.offset) for view in self.views)}:{self.name}={text}"


def _marker(offset: int) -> str:
    return BEFORE if offset < 0 else AFTER


def _offset(offset: int) -> str:
    return "0" if offset == 0 else f"{offset:+d}"


def parse_templates(text: str) -> tuple[Template, ...]:
    """The templates of a template set (see the module docstring).

    Raises:
        ConfigError: a template that does not parse, naming it, its number and the character
            where parsing failed; or an empty set.
    """
    templates = []
    for line_number, line in enumerate(text.splitlines(), 1):
        for match in re.finditer(r"\S+", line.split("#", 1)[0]):
            templates.append(_parse_one(match.group(), f"template {match.group()!r} (line {line_number}, "
                                                        f"column {match.start() + 1})"))
    if not templates:
        raise ConfigError("the feature template set is empty; give at least one template, e.g. 'bias w[0]'")
    return tuple(templates)


def _parse_one(text: str, where: str) -> Template:
    if text in ("bias", "BOS", "EOS"):
        return Template(text)
    name, equals, body = text.rpartition("=")
    if equals and not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: the name {name!r} before '=' may not hold white space, '|', '[', ']' or ':'")
    views, position = [], len(name) + len(equals)
    for part in body.split("|"):
        match = _VIEW.fullmatch(part)
        if match is None:
            raise ConfigError(f"{where}, at character {position + 1}: expected view[offset] such as w[-1] or "
                              f"suffix3[0], got {part!r}")
        view = View(match.group(1), int(match.group(2)))
        if view.name == "w":
            view = View("word", view.offset)
        if view.name not in VALUE_VIEWS and view.name not in FLAG_VIEWS and not _AFFIX.fullmatch(view.name):
            raise ConfigError(f"{where}, at character {position + 1}: unknown view {match.group(1)!r}; views are w, "
                              f"{', '.join([*VALUE_VIEWS][1:])}, prefixN, suffixN, {', '.join(FLAG_VIEWS)}")
        views.append(view)
        position += len(part) + 1
    return Template("views", name if equals else "|".join(view.name for view in views), tuple(views))


def template_features(words: Sequence[str], templates: Sequence[Template]) -> list[list[str]]:
    """Every feature string of every position of one sentence under ``templates`` (the specification)."""
    length = len(words)
    features = []
    for t in range(length):
        def word_at(offset: int, t: int = t) -> str | None:
            return words[t + offset] if 0 <= t + offset < length else None

        fired = []
        for template in templates:
            if template.kind == "BOS" and t != 0 or template.kind == "EOS" and t != length - 1:
                continue
            feature = template.feature(word_at)
            if feature is not None:
                fired.append(feature)
        features.append(fired)
    return features
