"""Hand-written word features for a feature-based tagger, hashed into a fixed number of buckets.

Every position ``t`` of a sentence ``w_0 .. w_{L-1}`` fires a set of binary features, each a
string such as ``"suffix3=ing"`` (the templates of Ratnaparkhi 1996 and of the crfsuite POS
examples, Okazaki 2007):

- of the word itself: ``bias``, the word, its lowercase, the prefixes and suffixes of length
  1..4 of the lowercase word, its shape (``Xxxx``, ``dd-dd``: upper -> X, lower -> x,
  digit -> d, any other character kept) and short shape (runs of one shape character
  collapsed: ``Xx``, ``d-d``), and the flags ``title``, ``upper``, ``digit`` (all digits),
  ``hyphen`` (has a hyphen) and ``has_digit``, each present only when true;
- of its neighbours (``NEIGHBOUR_TEMPLATES``): the lowercase words at offsets -2, -1, +1, +2,
  the lowercase suffix of length 3 and the short shape at -1 and +1 (``<BOS>``/``<EOS>``
  beyond the sentence), and the word bigrams ``w_{t-1}|w_t`` and ``w_t|w_{t+1}`` (lowercase);
- ``BOS`` at the first position and ``EOS`` at the last.

A feature string ``f`` goes to bucket ``crc32(utf8(f)) mod n_buckets`` (the hashing trick,
Weinberger et al. 2009). CRC-32 is fixed by its polynomial, so a bucket is the same in every
process and on every machine, unlike Python's salted ``hash``. Distinct features that share a
bucket share their weights.

``sentence_features`` is the specification of these built-in features (the feature strings,
also what crfsuite is given in the benchmark); ``seqlab.classical.feature_templates`` spells
them as a template set (``DEFAULT_TEMPLATES``), and users may write their own.
``FeatureHasher`` is the fast path for any template set: it hashes each distinct word's
features once and assembles positions by array indexing; for the default set it gives the
buckets of ``sentence_features`` in their order.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from seqlab.classical.feature_templates import (AFTER, BEFORE, DEFAULT_TEMPLATES, Template, parse_templates,
                                               short_shape, view_function, word_shape)
from seqlab.errors import ConfigError, DataError

AFFIX_LENGTHS = (1, 2, 3, 4)
# What position t reads of the word at t + offset: name -> (word, its lowercase) -> value.
NEIGHBOUR_VIEWS = {
    "lower": lambda word, lower: lower,
    "suffix3": lambda word, lower: lower[-3:],
    "short_shape": lambda word, lower: short_shape(word),
}
NEIGHBOUR_TEMPLATES = {-2: ("lower",), -1: ("lower", "suffix3", "short_shape"),
                       1: ("lower", "suffix3", "short_shape"), 2: ("lower",)}
_CACHE_LIMIT = 1_000_000               # distinct words a hasher remembers before starting afresh


def feature_bucket(feature: str, n_buckets: int) -> int:
    """The bucket of one feature string: ``crc32(utf8(feature)) mod n_buckets``."""
    return zlib.crc32(feature.encode("utf-8")) % n_buckets


def word_features(word: str) -> list[str]:
    """The features a word fires wherever it stands (everything but its neighbours')."""
    lower = word.lower()
    features = ["bias", "word=" + word, "lower=" + lower]
    features += [f"prefix{n}={lower[:n]}" for n in AFFIX_LENGTHS]
    features += [f"suffix{n}={lower[-n:]}" for n in AFFIX_LENGTHS]
    features += ["shape=" + word_shape(word), "short_shape=" + short_shape(word)]
    flags = {"title": word.istitle(), "upper": word.isupper(), "digit": word.isdigit(),
             "hyphen": "-" in word, "has_digit": any(c.isdigit() for c in word)}
    return features + [name for name, on in flags.items() if on]


def neighbour_features(word: str, offset: int) -> list[str]:
    """The features position t fires when ``w_{t + offset}`` is ``word`` (or ``<BOS>``/``<EOS>``,
    whose every view is itself)."""
    if word in (BEFORE, AFTER):
        return [f"{offset:+d}:{name}={word}" for name in NEIGHBOUR_TEMPLATES[offset]]
    lower = word.lower()
    return [f"{offset:+d}:{name}={NEIGHBOUR_VIEWS[name](word, lower)}" for name in NEIGHBOUR_TEMPLATES[offset]]


def bigram_feature(previous: str, following: str, at_second: bool) -> str:
    """The lowercase word bigram ``previous|following`` seen from its second (or first) word."""
    return f"{'-1|0' if at_second else '0|+1'}:bigram={previous.lower()}|{following.lower()}"


def sentence_features(words: Sequence[str]) -> list[list[str]]:
    """Every feature string of every position of one sentence (the specification)."""
    length = len(words)

    def at(t: int) -> str:
        return BEFORE if t < 0 else AFTER if t >= length else words[t]

    features = []
    for t, word in enumerate(words):
        fired = word_features(word)
        for offset in NEIGHBOUR_TEMPLATES:
            fired += neighbour_features(at(t + offset), offset)
        fired += [bigram_feature(at(t - 1), word, True), bigram_feature(word, at(t + 1), False)]
        fired += ["BOS"] * (t == 0) + ["EOS"] * (t == length - 1)
        features.append(fired)
    return features


class HashedFeatures(NamedTuple):
    """The active buckets of N positions, position after position (an ``EmbeddingBag`` input).

    Attributes:
        buckets: (F,) int64 bucket ids; position i owns ``buckets[offsets[i]:offsets[i + 1]]``.
        offsets: (N,) int64 start of each position's buckets.
        lengths: (S,) int64 positions per sentence; sentences follow one another.
    """

    buckets: Tensor
    offsets: Tensor
    lengths: Tensor


class FeatureHasher:
    """Hashes the features of a template set (default: the built-in features) into ``n_buckets``.

    ``hasher(sentences)`` equals hashing ``template_features`` of each sentence (for the default
    templates, ``sentence_features``), each position's features in the templates' order. A template of one view depends on one word only: its bucket
    is computed once per distinct word (and remembered across calls) and gathered by array
    indexing; a join is hashed once per distinct combination of words.

    Raises:
        ConfigError: ``n_buckets`` < 1 or a template that does not parse.
    """

    def __init__(self, n_buckets: int, templates: str | None = None):
        if n_buckets <= 0:
            raise ConfigError(f"n_buckets must be > 0, got {n_buckets}")
        self.n_buckets = n_buckets
        self.templates = parse_templates(DEFAULT_TEMPLATES if templates is None else templates)
        self._single_positions = [index for index, template in enumerate(self.templates) if template.is_single]
        self._singles = [self.templates[index] for index in self._single_positions]
        by_offset: dict[int, list[int]] = {}
        for column, template in enumerate(self._singles):
            by_offset.setdefault(template.views[0].offset, []).append(column)
        self._columns_by_offset = {offset: np.array(columns) for offset, columns in by_offset.items()}
        # Each single template's "prefix name=" as a CRC-32 to carry on from, and its feature as a flag.
        self._single_heads = []
        for template in self._singles:
            offset = template.views[0].offset
            prefix = "" if offset == 0 else f"{offset:+d}:"
            self._single_heads.append((zlib.crc32(f"{prefix}{template.name}=".encode("utf-8")),
                                       feature_bucket(prefix + template.name, n_buckets)))
        # Rows 0 and 1 of the per-word table: what the single templates fire beyond the start and the end.
        self._marker_rows = [self._buckets_of_word(None, before) for before in (True, False)]
        self._words: dict[str, list[int]] = {}             # word -> buckets of the single templates, -1: none

    def __call__(self, sentences: Sequence[Sequence[str]]) -> HashedFeatures:
        """The hashed features of every position of ``sentences`` (see ``HashedFeatures``)."""
        if not sentences:
            raise DataError("no sentences to extract features from")
        if len(self._words) > _CACHE_LIMIT:
            self._words.clear()
        types: dict[str, int] = {}
        token_types = []
        for index, sentence in enumerate(sentences):
            if not sentence or any(not word for word in sentence):
                raise DataError(f"sentence {index + 1} is empty or has an empty word")
            token_types.extend(types.setdefault(word, len(types) + 2) for word in sentence)
        words = list(types)
        lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
        token_type = np.asarray(token_types, dtype=np.int64)                  # (N,) 0, 1: the markers
        position = np.arange(len(token_type)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        length_of_token = np.repeat(lengths, lengths)

        def type_at(offset: int) -> np.ndarray:
            """(N,) the type of the word at t + offset of every position t (0 or 1 beyond the sentence)."""
            neighbour = token_type[np.clip(np.arange(len(token_type)) + offset, 0, len(token_type) - 1)]
            neighbour = np.where(position + offset < 0, 0, neighbour)
            return np.where(position + offset >= length_of_token, 1, neighbour)

        word_table = np.array(self._marker_rows + [self._word_buckets(word) for word in words],
                              dtype=np.int64).reshape(len(words) + 2, len(self._singles))   # (n_types + 2, singles)
        columns: list[np.ndarray] = [np.empty(0)] * len(self.templates)     # (N,) each, in the templates' order
        for offset, chosen in self._columns_by_offset.items():
            gathered = word_table[type_at(offset)][:, chosen]                # (N, single templates at this offset)
            for column, single in enumerate(chosen):
                columns[self._single_positions[single]] = gathered[:, column]
        for index, template in enumerate(self.templates):
            if template.kind == "views" and not template.is_single:
                columns[index] = self._join_buckets(template, [type_at(view.offset) for view in template.views],
                                                    [None, None, *words])
            elif template.kind != "views":
                bucket = feature_bucket(template.kind, self.n_buckets)
                fires = {"bias": position >= 0, "BOS": position == 0, "EOS": position == length_of_token - 1}
                columns[index] = np.where(fires[template.kind], bucket, -1)
        table = np.stack(columns, axis=1)                                     # (N, templates)
        present = table >= 0
        counts = present.sum(axis=1)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return HashedFeatures(torch.from_numpy(table[present]), torch.from_numpy(offsets),
                              torch.from_numpy(lengths))

    def _buckets_of_word(self, word: str | None, before: bool = True) -> list[int]:
        """The bucket of each single template (-1: fires nothing) when its word is ``word``
        (None: beyond the start, or the end when not ``before``, of the sentence)."""
        if word is None:
            buckets = []
            for template in self._singles:
                offset = template.views[0].offset
                reaches = offset < 0 if before else offset > 0          # can this template look out there?
                buckets.append(feature_bucket(template.feature(lambda _: None), self.n_buckets) if reaches else -1)
            return buckets
        # Template.feature, unrolled (this runs once per word and template): the CRC-32 of
        # "prefix name=value" is carried on from that of "prefix name=" (zlib.crc32's start).
        buckets, values = [], {}
        for template, (head_crc, flag_bucket) in zip(self._singles, self._single_heads):
            name = template.views[0].name
            value = values.get(name)
            if value is None:
                value = values[name] = template.views[0].of(word)
            if isinstance(value, bool):
                buckets.append(flag_bucket if value else -1)
            else:
                buckets.append(zlib.crc32(value.encode("utf-8"), head_crc) % self.n_buckets)
        return buckets

    def _word_buckets(self, word: str) -> list[int]:
        buckets = self._words.get(word)
        if buckets is None:
            buckets = self._words[word] = self._buckets_of_word(word)
        return buckets

    def _join_buckets(self, join: Template, view_types: list[np.ndarray], word_of_type: list[str | None]) -> np.ndarray:
        """(N,) buckets of one join template, hashed once per distinct combination of words."""
        n_types = len(word_of_type)
        if n_types ** len(view_types) < 2**62:     # a combination as one integer: a fast 1-D unique
            code = np.zeros_like(view_types[0])
            for types in view_types:
                code = code * n_types + types
            combinations, inverse = np.unique(code, return_inverse=True)
            combinations = np.stack([combinations // n_types ** i % n_types for i in reversed(range(len(view_types)))],
                                    axis=1)
        else:
            combinations, inverse = np.unique(np.stack(view_types, axis=1), axis=0, return_inverse=True)
        # Template.feature, unrolled: each view's value of each type is computed once, and the
        # CRC-32 of "head value_1|value_2..." carried on from one part to the next (zlib.crc32's start).
        head = f"{'|'.join('0' if v.offset == 0 else f'{v.offset:+d}' for v in join.views)}:{join.name}="
        parts = []
        for index, view in enumerate(join.views):
            marker = BEFORE if view.offset < 0 else AFTER
            function = view_function(view.name)
            parts.append([(("|" if index else "") + _text(function(marker if word is None else word))).encode("utf-8")
                          for word in word_of_type])
        head_crc = zlib.crc32(head.encode("utf-8"))
        crcs = [zlib.crc32(part, head_crc) for part in parts[0]]                # (n_types,) after the first view
        columns = combinations.T.tolist()
        running = [crcs[type_] for type_ in columns[0]]
        for view_parts, types in zip(parts[1:], columns[1:]):
            running = [zlib.crc32(view_parts[type_], crc) for type_, crc in zip(types, running)]
        buckets = np.asarray(running, dtype=np.int64) % self.n_buckets
        return buckets[inverse.reshape(-1)]


def _text(value: str | bool) -> str:
    return str(int(value)) if isinstance(value, bool) else value
