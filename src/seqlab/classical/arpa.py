"""Word-level n-gram models as KenLM sees them: sentences, ``<s>`` ``</s>`` ``<unk>``, ARPA files.

KenLM's conventions, which SRILM shares:

- a sentence is scored as ``<s> w_1 ... w_m </s>``: ``<s>`` is context only (ARPA probability
  -99), ``</s>`` is predicted like any word, so ``log10 p(sentence) = sum_i log10 p(w_i | ...)
  + log10 p(</s> | ...)``;
- a word outside the vocabulary is ``<unk>``; n-grams never cross a sentence boundary;
- an ARPA file lists, for each order k, ``log10 p* <tab> w_1 ... w_k [<tab> log10 b]``, the
  back-off weight omitted when 0 and at the highest order, between a ``\\data\\`` header of
  counts and ``\\end\\`` (Stolcke 2002, SRILM; Heafield 2011, KenLM). seqlab writes tabs, as
  KenLM requires, and reads fields separated by any whitespace.
  A file without ``<unk>`` gets it with log10 probability -100, as KenLM substitutes. Every
  context of a stored n-gram must be stored, as KenLM's default (probing) structure requires.

In seqlab the words of a ``WordVocabulary`` are ids ``0 .. V - 1`` (``<unk>`` is 0, as in every
seqlab tokenizer) and ``<s>`` is the model's extra id V (``NGramLM.start_id``).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seqlab.classical import counts as ngrams
from seqlab.classical.ngram import NGramConfig, NGramLM
from seqlab.errors import ConfigError

SENTENCE_START, SENTENCE_END, UNKNOWN = "<s>", "</s>", "<unk>"
ZERO_LOG10 = -99.0                  # what ARPA writers put for probability 0 (and for <s>)
MISSING_UNKNOWN_LOG10 = -100.0      # KenLM's substitute when a file has no <unk>
LN10 = math.log(10)


@dataclass(frozen=True)
class WordVocabulary:
    """Words by id: ``words[0]`` is ``<unk>``; ``<s>`` is not a word but the id ``len(words)``.

    Raises:
        ConfigError: ``words[0]`` is not ``<unk>``, a word repeats, holds whitespace, or is ``<s>``.
    """

    words: tuple[str, ...]

    def __post_init__(self) -> None:
        self._check_ids()
        bad = next((w for w in self.words if not w or any(c.isspace() for c in w)), None)
        if bad is not None:
            raise ConfigError(f"ARPA words hold no whitespace and are not empty, got {bad!r}")

    def _check_ids(self) -> None:
        if not self.words or self.words[0] != UNKNOWN:
            raise ConfigError(f"a WordVocabulary starts with {UNKNOWN!r}, got {self.words[:1]}")
        if len(set(self.words)) != len(self.words) or SENTENCE_START in self.words:
            raise ConfigError(f"a WordVocabulary's words are distinct and exclude {SENTENCE_START!r}")

    @classmethod
    def _from_split_words(cls, words: tuple[str, ...]) -> WordVocabulary:
        """A vocabulary of words that ``str.split()`` produced (an ARPA reader's fields): every
        check of the constructor but the scan of each character for whitespace, which such words
        pass by construction (``str.split`` and ``str.isspace`` agree on what whitespace is)."""
        vocabulary = object.__new__(cls)
        object.__setattr__(vocabulary, "words", words)
        vocabulary._check_ids()
        return vocabulary

    @classmethod
    def from_sentences(cls, sentences: Sequence[str], min_count: int = 1) -> WordVocabulary:
        """``<unk>``, ``</s>``, then every whitespace-separated word seen at least ``min_count``
        times, most frequent first (ties in order of first appearance)."""
        return cls._with_stream(sentences, min_count)[0]

    @classmethod
    def _with_stream(cls, sentences: Sequence[str], min_count: int = 1) -> tuple[WordVocabulary, Tensor]:
        """The vocabulary of ``sentences`` and their stream, in one pass over the words."""
        if min_count < 1:
            raise ConfigError(f"min_count must be >= 1, got {min_count}")
        first_seen = _FirstSeenIndex()
        seen_ids, lengths = _word_ids(sentences, first_seen)
        seen = list(first_seen)
        frequency = torch.bincount(seen_ids, minlength=len(seen))
        special = torch.tensor([word in (UNKNOWN, SENTENCE_START, SENTENCE_END) for word in seen],
                               dtype=torch.bool)
        special |= frequency < min_count                           # these words become <unk>
        ranked = torch.sort(torch.where(special, 1, -frequency), stable=True).indices[: int((~special).sum())]
        new_id = torch.zeros(len(seen), dtype=torch.long)          # a literal <unk> or <s>: <unk>
        new_id[ranked] = torch.arange(2, 2 + len(ranked))
        if SENTENCE_END in first_seen:
            new_id[first_seen[SENTENCE_END]] = 1
        vocabulary = cls((UNKNOWN, SENTENCE_END, *(seen[i] for i in ranked.tolist())))
        return vocabulary, vocabulary._stream(new_id[seen_ids], lengths)

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other: object) -> bool:          # (any vocabulary of the same words, a cache's too)
        return isinstance(other, WordVocabulary) and self.words == other.words

    def __hash__(self) -> int:
        return hash(self.words)

    @property
    def start_id(self) -> int:
        return len(self)

    @functools.cached_property
    def end_id(self) -> int | None:
        """The id of ``</s>``; None if the vocabulary has none."""
        return self.words.index(SENTENCE_END) if SENTENCE_END in self.words else None

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Word -> id; a word not in the vocabulary looks up as 0 (``<unk>``)."""
        return _UnknownIsZero((word, i) for i, word in enumerate(self.words))

    @functools.cached_property
    def _marker_index(self) -> dict[str, int]:
        """``index`` with ``<s>`` as ``start_id``, for reading sentence markers in a joined text."""
        return {**self.index, SENTENCE_START: self.start_id}

    def encode(self, sentences: Sequence[str]) -> Tensor:
        """One stream ``<s> w_1 .. w_m </s> <s> ...``: (L,) int64, unknown words as 0.

        The sentences are joined into one text with the markers written between them,
        ``<s> s_1 </s> <s> s_2 ... </s>``, which one dictionary pass maps to the stream (a literal
        ``</s>`` in a sentence is the word ``</s>``, id 1, either way). A literal ``<s>`` would
        read as a sentence start, so text holding one is encoded sentence by sentence, as
        ``fit_sentences`` encodes, where it is ``<unk>``.
        """
        if SENTENCE_END not in self.index:
            raise ConfigError(f"the vocabulary has no {SENTENCE_END!r} to end sentences with")
        if not sentences:
            return torch.zeros(0, dtype=torch.long)
        between = f" {SENTENCE_END} {SENTENCE_START} "
        words = f"{SENTENCE_START} {between.join(sentences)} {SENTENCE_END}".split()
        stream = np.fromiter(map(self._marker_index.get, words, itertools.repeat(0)), np.int64, len(words))
        if np.count_nonzero(stream == self.start_id) != len(sentences):
            return self._stream(*_word_ids(sentences, self.index))
        return torch.from_numpy(stream)

    def _stream(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """Put ``<s>`` before and ``</s>`` after each sentence: ``ids`` (N,) all the words in
        order, ``lengths`` (S,) the words of each sentence."""
        if SENTENCE_END not in self.index:
            raise ConfigError(f"the vocabulary has no {SENTENCE_END!r} to end sentences with")
        ends = torch.cumsum(lengths + 2, 0) - 1                                  # where each </s> goes
        stream = torch.empty(int(ends[-1]) + 1 if len(ends) else 0, dtype=torch.long)
        is_word = torch.ones_like(stream, dtype=torch.bool)
        is_word[ends - lengths - 1] = False
        is_word[ends] = False
        stream[ends - lengths - 1] = self.start_id
        stream[ends] = self.index[SENTENCE_END]
        stream[is_word] = ids
        return stream


class _UnknownIsZero(dict):
    """A word index whose missing words are ``<unk>`` (0), for ``map(index.__getitem__, ...)``."""

    def __missing__(self, word: str) -> int:
        return 0


class _FirstSeenIndex(dict):
    """A word index that gives each new word the next id, in order of first appearance."""

    def __missing__(self, word: str) -> int:
        self[word] = len(self)
        return self[word]


def _word_ids(sentences: Sequence[str], index: dict[str, int]) -> tuple[Tensor, Tensor]:
    """The id of every word of every sentence, in order (N,), and each sentence's length (S,)."""
    split = [sentence.split() for sentence in sentences]
    ids = _ids(map(index.__getitem__, itertools.chain.from_iterable(split)))
    return ids, torch.tensor([len(words) for words in split], dtype=torch.long)


def _ids(ids: Iterable[int]) -> Tensor:
    return torch.from_numpy(np.array(list(ids), dtype=np.int64))


def fit_sentences(
    sentences: Sequence[str], vocabulary: WordVocabulary | None = None, min_count: int = 1, **config: Any
) -> tuple[NGramLM, WordVocabulary]:
    """An ``NGramLM`` fitted to whitespace-tokenised sentences, KenLM style.

    Args:
        sentences: one sentence per string.
        vocabulary: the words; None takes the words of ``sentences`` seen ``min_count`` times.
        min_count: words seen fewer times are ``<unk>`` in training (a closed vocabulary in
            which ``<unk>`` is a word like the others); 1 keeps every word (KenLM's default).
        config: ``NGramConfig`` values other than ``vocab_size`` (order, estimator, ...).
    Returns:
        the fitted model and its vocabulary.
    """
    if vocabulary is None:
        vocabulary, stream = WordVocabulary._with_stream(sentences, min_count)
    else:
        stream = vocabulary.encode(sentences)
    model = NGramLM(NGramConfig(vocab_size=len(vocabulary.words), **config))
    return model.fit_stream(stream), vocabulary


def sentence_log10_probs(model: NGramLM, vocabulary: WordVocabulary, sentences: Sequence[str]) -> Tensor:
    """``log10 p(<s> w_1 .. w_m </s>)`` of each sentence, as ``kenlm.Model.score`` computes it.

    All the sentences are scored at once by ``seqlab.classical.ngram_scoring`` (its words
    encoded bytewise, its n-grams found in hash tables, back-off combined vectorised), whose
    plain reference is ``score_sentences_ref``.

    Returns:
        (S,) float64.
    """
    from seqlab.classical.ngram_scoring import score_sentences

    _check_vocabulary(model, vocabulary)
    return torch.from_numpy(score_sentences(model, vocabulary, sentences).log10_probs).to(model.discounts.device)


def _check_vocabulary(model: NGramLM, vocabulary: WordVocabulary) -> None:
    if model.vocab_size != len(vocabulary):
        raise ConfigError(f"the model predicts {model.vocab_size} ids but the vocabulary has "
                          f"{len(vocabulary)} words")


def write_arpa(model: NGramLM, vocabulary: WordVocabulary, path: str | Path) -> None:
    """Write ``model`` as an ARPA file that ``kenlm.Model`` (and SRILM) read.

    Probabilities are written as log10 with 8 significant digits; probability 0 (``<s>``, and
    unseen words under ``mle``) as -99. Back-off weights are written for every order but the last.
    """
    _check_vocabulary(model, vocabulary)
    names = list(vocabulary.words) + [SENTENCE_START]
    lines = ["\\data\\", *(f"ngram {k}={len(table)}" for k, table in enumerate(model.tables, start=1)), ""]
    text = names                                  # the words of each n-gram of the order below
    for k, table in enumerate(model.tables, start=1):
        if k > 1:                                 # an n-gram's text is its prefix's, then its last word
            prefix, last = ngrams.prefixes_and_last(table.sorted_keys().cpu(), model.n_ids)
            text = [f"{text[p]} {names[w]}" for p, w in zip(prefix.tolist(), last.tolist())]
        lines.append(f"\\{k}-grams:")
        columns = [_log10_field(table.log_prob), text]
        if k < model.order:
            columns.append(_log10_field(table.log_backoff))
        lines.extend(map("\t".join, zip(*columns)))
        lines.append("")
    lines.append("\\end\\")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _log10_field(log_values: Tensor) -> list[str]:
    log10 = (log_values.double().cpu() / LN10).clamp(min=ZERO_LOG10).tolist()
    return list(map("%.8g".__mod__, log10))


def read_arpa(path: str | Path) -> tuple[NGramLM, WordVocabulary]:
    """Read an ARPA file into an ``NGramLM`` and its vocabulary.

    The model scores exactly as ``kenlm.Model`` scores the same file (its distributions are
    whatever the file says: not renormalised). The file is read once with vectorised parsing
    (``seqlab.classical.arpa_reader``; ``save_binary`` there caches the result).

    Raises:
        DataError: naming the line, for a missing or bad header, a count that does not match its
            section, a line with the wrong number of fields or a non-numeric value, an n-gram
            over a word that is not a unigram or whose context is not stored, a repeated
            n-gram, or a file that ends before ``\\end\\``.
    """
    from seqlab.classical.arpa_reader import read_arpa_file    # it builds on this module

    return read_arpa_file(path)
