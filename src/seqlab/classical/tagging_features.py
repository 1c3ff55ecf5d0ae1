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

``sentence_features`` is the specification (the feature strings, also what crfsuite is given
in the benchmark); ``FeatureHasher`` is the fast path: it hashes each distinct word's own and
neighbour features once and assembles positions by array indexing.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

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
BEFORE, AFTER = "<BOS>", "<EOS>"       # the word seen beyond the start and the end of a sentence
_CACHE_LIMIT = 1_000_000               # distinct words a hasher remembers before starting afresh


def feature_bucket(feature: str, n_buckets: int) -> int:
    """The bucket of one feature string: ``crc32(utf8(feature)) mod n_buckets``."""
    return zlib.crc32(feature.encode("utf-8")) % n_buckets


def word_shape(word: str) -> str:
    """Upper case -> ``X``, lower case -> ``x``, digit -> ``d``, any other character as it is."""
    return "".join("X" if c.isupper() else "x" if c.islower() else "d" if c.isdigit() else c for c in word)


def short_shape(word: str) -> str:
    """``word_shape`` with each run of one character collapsed: ``Xxxxx`` -> ``Xx``."""
    shape = word_shape(word)
    return "".join(c for i, c in enumerate(shape) if i == 0 or c != shape[i - 1])


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
    """Hashes sentences' features into ``n_buckets``, each distinct word's features once.

    ``hasher(sentences)`` equals hashing ``sentence_features`` of each sentence, up to the
    order of features within a position (which a sum of weights does not see).
    """

    def __init__(self, n_buckets: int):
        if n_buckets <= 0:
            raise ConfigError(f"n_buckets must be > 0, got {n_buckets}")
        self.n_buckets = n_buckets
        self._own: dict[str, list[int]] = {}               # word -> buckets of word_features
        self._seen_from: dict[str, list[int]] = {}         # word -> buckets it gives each neighbour slot
        # Slots of neighbour features, in a fixed order: (offset of the neighbour, feature index).
        self._slots = [(offset, index) for offset, names in NEIGHBOUR_TEMPLATES.items() for index in range(len(names))]
        self._markers = [feature_bucket("BOS", n_buckets), feature_bucket("EOS", n_buckets)]

    def __call__(self, sentences: Sequence[Sequence[str]]) -> HashedFeatures:
        """The hashed features of every position of ``sentences`` (see ``HashedFeatures``)."""
        if not sentences:
            raise DataError("no sentences to extract features from")
        if len(self._own) > _CACHE_LIMIT:
            self._own.clear()
            self._seen_from.clear()
        types: dict[str, int] = {BEFORE: 0, AFTER: 1}
        token_types = []
        for index, sentence in enumerate(sentences):
            if not sentence or any(not word for word in sentence):
                raise DataError(f"sentence {index + 1} is empty or has an empty word")
            token_types.extend(types.setdefault(word, len(types)) for word in sentence)
        words = list(types)
        lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
        token_type = np.asarray(token_types, dtype=np.int64)                  # (N,)
        position = np.arange(len(token_type)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        length_of_token = np.repeat(lengths, lengths)

        own = [self._own_buckets(word) for word in words]
        width = max(map(len, own))
        own_table = np.full((len(words), width), -1, dtype=np.int64)         # (n_types, width), -1: absent
        for row, buckets in enumerate(own):
            own_table[row, :len(buckets)] = buckets
        seen_table = np.array([self._seen_from_buckets(word) for word in words], dtype=np.int64)

        columns = [own_table[token_type]]
        every = np.arange(len(token_type))
        for slot, (offset, _) in enumerate(self._slots):
            neighbour = token_type[np.clip(every + offset, 0, len(token_type) - 1)]
            neighbour = np.where(position + offset < 0, types[BEFORE], neighbour)
            neighbour = np.where(position + offset >= length_of_token, types[AFTER], neighbour)
            columns.append(seen_table[neighbour, slot][:, None])
        columns.append(self._bigrams(sentences))
        columns.append(np.where(position == 0, self._markers[0], -1)[:, None])
        columns.append(np.where(position == length_of_token - 1, self._markers[1], -1)[:, None])
        table = np.concatenate(columns, axis=1)                               # (N, slots)
        present = table >= 0
        counts = present.sum(axis=1)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return HashedFeatures(torch.from_numpy(table[present]), torch.from_numpy(offsets),
                              torch.from_numpy(lengths))

    def _own_buckets(self, word: str) -> list[int]:
        buckets = self._own.get(word)
        if buckets is None:
            buckets = self._own[word] = [feature_bucket(f, self.n_buckets) for f in word_features(word)]
        return buckets

    def _seen_from_buckets(self, word: str) -> list[int]:
        buckets = self._seen_from.get(word)
        if buckets is None:       # in the order of self._slots
            buckets = self._seen_from[word] = [feature_bucket(feature, self.n_buckets) for offset in NEIGHBOUR_TEMPLATES
                                               for feature in neighbour_features(word, offset)]
        return buckets

    def _bigrams(self, sentences: Sequence[Sequence[str]]) -> np.ndarray:
        """(N, 2) buckets of the two bigram features of every position (hashed position by position)."""
        buckets = []
        for sentence in sentences:
            padded = [BEFORE, *sentence, AFTER]
            for t in range(1, len(padded) - 1):
                buckets.append((feature_bucket(bigram_feature(padded[t - 1], padded[t], True), self.n_buckets),
                                feature_bucket(bigram_feature(padded[t], padded[t + 1], False), self.n_buckets)))
        return np.asarray(buckets, dtype=np.int64)
