"""A language-modelling text: its train / valid / test split, and text read one sentence per line.

``split`` strings: "90/5/5" (percentages or fractions summing to 1, also with commas) give the
shares of consecutive characters, or of consecutive lines when the text is read as sentences;
"none" means no split (``parse_split``).

Sentences are counted as KenLM and SRILM count them: ``<s> w_1 .. w_n </s>`` per line.

Lines are separated by ``\\n`` (a ``\\r`` before it is whitespace, so CRLF files read alike);
a line without a word is blank and skipped. The words of a line are its ``\\S+`` runs, read by
a ``word`` tokenizer trained with ``markers=True``, whose vocabulary holds ``<s>`` and ``</s>``
(``seqlab.data.tokenizers``). The stream of a text is every kept line's sentence in order,

    <s> w_1 .. w_n </s> <s> w_1 .. </s> ...

with a word outside the vocabulary as ``<unk>``. A literal ``<s>`` or ``</s>`` in a line would
read as a marker, so it is refused (KenLM's lmplz refuses them too).

Characters (for bits per character): a sentence covers its line and the line break after it,
``len(line) + 1``; each word owns the text from the end of the word before it in the line (or
the line's start) to its own end, ``</s>`` owns the rest of the line and the line break, and
``<s>`` owns none. So the characters of the scored tokens (words and ``</s>``) are those of
the kept lines with their line breaks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from seqlab.data.tokenizers import SENTENCE_END, SENTENCE_START, WORD, Tokenizer
from seqlab.errors import ConfigError, DataError

DEFAULT_SPLIT = (0.9, 0.05, 0.05)
NO_SPLIT = "none"


def parse_split(split: Any, where: str = "") -> tuple[float, float, float] | None:
    """Train, valid and test fractions from ``split``: "none" (None: no split), or three
    positive numbers summing to 1 or to 100, as a string "90/5/5" (or "0.9,0.05,0.05") or a
    sequence.

    Raises:
        ConfigError: anything else, naming ``where`` + "split".
    """
    if isinstance(split, str) and split.strip().lower() == NO_SPLIT:
        return None
    parts = split.replace(",", "/").split("/") if isinstance(split, str) else split
    try:
        shares = [float(part) for part in parts]
    except (TypeError, ValueError):
        shares = []
    total = sum(shares)
    if len(shares) != 3 or not all(0 < share < math.inf for share in shares) or not (
            math.isclose(total, 1.0) or math.isclose(total, 100.0)):
        raise ConfigError(f"{where}split must be 'none' or three positive shares of train, valid and test "
                          f"summing to 100 or 1, e.g. '90/5/5'; got {split!r}")
    return tuple(share / total for share in shares)


def split_consecutive(text: str | list[str], fractions: tuple[float, float, float]) -> dict[str, Any]:
    """Consecutive train / valid / test runs of ``text``'s characters (or of a list of lines) by
    the fractions of their count."""
    n = len(text)
    first = round(n * fractions[0])
    second = first + round(n * fractions[1])
    return {"train": text[:first], "valid": text[first:second], "test": text[second:]}


def sentence_lines(text: str, where: str = "the text") -> list[str]:
    """The lines of ``text`` that hold a word, in order.

    Raises:
        DataError: a line holds the word ``<s>`` or ``</s>``, naming it and ``where``.
    """
    lines = []
    for number, line in enumerate(text.split("\n"), start=1):
        if (SENTENCE_START in line or SENTENCE_END in line) and (
                marker := next((w for w in WORD.findall(line) if w in (SENTENCE_START, SENTENCE_END)), None)):
            raise DataError(f"line {number} of {where} holds the word {marker!r}, which marks sentences here; "
                            "remove it (KenLM's lmplz refuses it too)")
        if WORD.search(line):
            lines.append(line)
    return lines


def sentence_markers(tokenizer: Tokenizer) -> tuple[int, int]:
    """The ids of ``<s>`` and ``</s>`` in ``tokenizer``'s vocabulary.

    Raises:
        ConfigError: it has no sentence markers.
    """
    if tokenizer.marker_ids is None:
        raise ConfigError(f"sentence mode needs a word tokenizer with {SENTENCE_START} and {SENTENCE_END} in its "
                          "vocabulary (train_tokenizer('word', text, markers=True)); this one has none")
    return tokenizer.marker_ids


def encode_sentences(tokenizer: Tokenizer, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The stream ``<s> w_1 .. w_n </s> ...`` of ``lines`` (as ``sentence_lines`` gives them),
    with the characters each token owns (see the module docstring).

    Args:
        tokenizer: a word tokenizer with sentence markers.
        lines: the sentences, without line breaks.
    Returns:
        ids: (L,) int64, L = words + 2 S.
        char_lengths: (L,) int64, summing to ``sum(len(line) + 1)``.
    Raises:
        ConfigError: the tokenizer has no sentence markers.
        DataError: a sentence holds a literal ``<s>`` or ``</s>``, naming it.
    """
    start_id, end_id = sentence_markers(tokenizer)
    text = "\n".join(lines)
    word_ids, starts, ends = tokenizer.encode_with_spans(text, unknown="replace")
    line_length = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))       # (S,)
    line_start = np.cumsum(line_length + 1) - line_length - 1
    line_of = np.searchsorted(line_start, starts, side="right") - 1                      # (N,)
    marker = np.flatnonzero((word_ids == start_id) | (word_ids == end_id))
    if len(marker):
        first = marker[0]
        raise DataError(f"sentence {line_of[first] + 1} holds the word {text[starts[first]:ends[first]]!r}, which "
                        "marks sentences here; remove it")
    n_words = np.bincount(line_of, minlength=len(lines))                                  # (S,)
    sentence_end = np.cumsum(n_words + 2) - 1                                             # where each </s> goes
    sentence_start = sentence_end - n_words - 1
    ids = np.empty(int(sentence_end[-1]) + 1 if len(lines) else 0, dtype=np.int64)
    char_lengths = np.zeros_like(ids)
    is_word = np.ones(len(ids), dtype=bool)
    is_word[sentence_start] = is_word[sentence_end] = False
    ids[sentence_start], ids[sentence_end] = start_id, end_id
    ids[is_word] = word_ids
    # A word owns the text from the previous word's end in its line (or the line start) to its end.
    first_in_line = np.ones(len(word_ids), dtype=bool)
    first_in_line[1:] = line_of[1:] != line_of[:-1]
    previous_end = np.where(first_in_line, line_start[line_of], np.roll(ends, 1))
    char_lengths[is_word] = ends - previous_end
    last_end = line_start.copy()                                      # the end of each line's last word
    np.maximum.at(last_end, line_of, ends)
    char_lengths[sentence_end] = line_start + line_length - last_end + 1
    return ids, char_lengths
