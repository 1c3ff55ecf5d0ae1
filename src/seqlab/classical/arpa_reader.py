"""Reading ARPA files at C speed, and a binary cache of the tables they hold.

``read_arpa_file`` reads the file once as bytes and parses it with whole-array numpy operations,
so no Python object is made per n-gram:

1. every whitespace byte is found in one pass; the tokens are the runs between them, and a
   cumulative count of newlines gives each token its line;
2. the few lines that start with ``\\`` (``\\data\\``, ``\\k-grams:``, ``\\end\\``) and the counts
   lines are read in Python; each section is then a block of lines of k + 1 or k + 2 tokens;
3. probabilities and back-off weights are parsed as decimals: the mantissa digits M and the
   exponent E of ``M * 10^E`` column by column over blocks of tokens, then one multiplication
   or division by an exact power of ten (M < 2^53, |E| <= 22), which is correctly rounded, so
   the value is exactly Python's ``float`` of the text (Clinger 1990, the "fast path");
4. a word is the tuple of its bytes read eight at a time as little-endian uint64 (zero-padded:
   words hold no NUL byte); the words of the 1-grams are hashed into a table (one dict lookup
   per 1-gram), every other word is found in it by its hash and then compared chunk by chunk;
5. the keys are built as ``seqlab.classical.counts`` encodes them, one batched search per order.

Anything the fast path cannot vouch for (a line that is not a well-formed n-gram, a number it
does not parse, an unusual byte) hands the file to ``read_arpa_reference``, the line-by-line
reader that is the specification: it raises the ``DataError`` naming the line, or reads the
file if the fast path was only being cautious. Errors found after parsing (an unknown word, a
missing context, a repeated n-gram) are raised by the shared assembly with the line number.

The binary cache (``save_binary`` / ``load_binary``) is a safetensors file of each order's
sorted keys, ln p* and ln b as the model holds them, the discounts, the vocabulary as UTF-8
bytes and the config as metadata; loading it is a memory map and no parsing.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import safetensors
import safetensors.torch
import torch

from seqlab.classical import counts as ngrams
from seqlab.classical.arpa import LN10, MISSING_UNKNOWN_LOG10, SENTENCE_START, UNKNOWN, WordVocabulary
from seqlab.classical.ngram import NGramConfig, NGramLM
from seqlab.errors import CheckpointError, ConfigError, DataError

BINARY_FORMAT = "seqlab-ngram-tables"
BINARY_VERSION = "1"
BLOCK = 1 << 16                        # tokens parsed at once: (BLOCK, width) byte matrices
POWERS_OF_TEN = 10.0 ** np.arange(23)  # exact in float64
EXACT_MANTISSA = 2**53
INTEGER_POWERS = 10 ** np.arange(19, dtype=np.int64)


@dataclasses.dataclass
class _Order:
    """The n-grams of one order as read, in file order: ids (N, k) (-1 for a word that is not a
    1-gram), log10 p* (N,) and log10 b (N,) (0 where omitted)."""

    ids: np.ndarray
    log10_prob: np.ndarray
    log10_backoff: np.ndarray


class _Where:
    """Where things are in the file, for error messages: the line of each n-gram and the text of
    each word. ``lines[k - 1]`` (N_k,) holds 1-based line numbers."""

    def __init__(self, file_name: str, lines: Sequence[np.ndarray], word: Callable[[int, int, int], str]):
        self.file_name, self.lines, self.word = file_name, lines, word

    def line(self, order: int, row: int) -> str:
        return f"line {int(self.lines[order - 1][row])} of {self.file_name}"


def read_arpa_file(path: str | Path) -> tuple[NGramLM, WordVocabulary]:
    """``seqlab.classical.arpa.read_arpa``: the model and vocabulary of an ARPA file, read once
    with vectorised parsing (see the module docstring); the same result as
    ``read_arpa_reference``, and the same errors."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read ARPA file {str(path)!r}: {error}") from None
    parsed = _parse_fast(data, path.name)
    if parsed is None:
        return read_arpa_reference(path)
    return _assemble(*parsed)


# ---- the fast path: whole-array parsing -------------------------------------------------------


def _parse_fast(data: bytes, file_name: str) -> tuple | None:
    """The arguments of ``_assemble``, or None where the reference reader must decide."""
    size = len(data)
    buffer = np.frombuffer(data + b"\n" + bytes(16), np.uint8)   # a last newline; room for 8-byte loads
    text = buffer[: size + 1]
    separator = np.flatnonzero(text <= 32)                         # (S,) whitespace and control bytes
    char = text[separator]
    newline = char == 10
    if not np.all(newline | (char == 9) | (char == 32) | (char == 13)):
        return None                     # a form feed, a NUL...: splitlines() and split() disagree
    if not np.all(text[separator[char == 13] + 1] == 10):
        return None                     # a lone \r is a line break to the reference reader
    previous = np.empty_like(separator)
    previous[0], previous[1:] = -1, separator[:-1]
    ends_token = separator - previous > 1
    starts, ends = previous[ends_token] + 1, separator[ends_token]        # (T,) each token's bytes
    token_line = (np.cumsum(newline) - newline)[ends_token]              # (T,) 0-based line
    first = np.ones(len(starts), dtype=bool)
    first[1:] = token_line[1:] != token_line[:-1]
    line_first = np.flatnonzero(first)                                    # (R,) per non-blank line
    n_fields = np.diff(np.append(line_first, len(starts)))                # (R,)

    def line_text(row: int) -> str:
        return data[starts[line_first[row]]: ends[line_first[row] + n_fields[row] - 1]].decode("utf-8")

    headers = np.flatnonzero(text[starts[line_first]] == 92).tolist()     # lines that start with \
    try:
        if not headers or headers[0] != 0 or line_text(0) != "\\data\\":
            return None
        declared = [_parse_count_line(line_text(row), row) for row in range(1, headers[1] if len(headers) > 1 else 1)]
        highest = len(declared)
        if not highest or None in declared or len(headers) < highest + 2:
            return None
        names = [f"\\{k}-grams:" for k in range(1, highest + 1)] + ["\\end\\"]
        if [line_text(row) for row in headers[1: highest + 2]] != names:
            return None
    except UnicodeDecodeError:
        return None
    rows = [np.arange(headers[k] + 1, headers[k + 1]) for k in range(1, highest + 1)]
    for k, (section, count) in enumerate(zip(rows, declared), start=1):
        fields = n_fields[section]
        if len(section) != count or not np.all((fields == k + 1) | ((fields == k + 2) & (k < highest))):
            return None

    # Numbers: every probability, then every back-off weight that is written.
    first_tokens = [line_first[section] for section in rows]
    has_backoff = [n_fields[section] == k + 2 for k, section in enumerate(rows, start=1)]
    backoff_tokens = [t[b] + k + 1 for k, (t, b) in enumerate(zip(first_tokens, has_backoff), start=1)]
    number_tokens = np.concatenate(first_tokens + backoff_tokens)
    values = _parse_decimals(buffer, starts[number_tokens], ends[number_tokens] - starts[number_tokens], data)
    if values is None:
        return None
    splits = np.cumsum([len(t) for t in first_tokens + backoff_tokens])[:-1]
    parts = np.split(values, splits)
    log10_probs, log10_backoffs = parts[:highest], []
    for part, mask in zip(parts[highest:], has_backoff):
        backoff = np.zeros(len(mask))
        backoff[mask] = part
        log10_backoffs.append(backoff)

    # Words: the 1-grams' bytes make the table every other word is looked up in.
    unigram_tokens = first_tokens[0] + 1
    word_tokens = [(t[:, None] + np.arange(1, k + 1)).reshape(-1) for k, t in enumerate(first_tokens[1:], start=2)]
    try:
        unigram_words = [data[s:e].decode("utf-8") for s, e in zip(starts[unigram_tokens].tolist(),
                                                                 ends[unigram_tokens].tolist())]
    except UnicodeDecodeError:
        return None
    if any(len(word.split()) != 1 for word in unigram_words):
        return None                     # Unicode whitespace: the reference reader splits there
    queries = np.concatenate(word_tokens) if word_tokens else np.zeros(0, dtype=np.int64)
    unigram_row = _find_words(buffer, starts, ends - starts, unigram_tokens, queries)
    if unigram_row is None:
        return None
    orders = [_Order(np.zeros((0, 1), dtype=np.int64), log10_probs[0], log10_backoffs[0])]
    offset = 0
    for k, (tokens, prob, backoff) in enumerate(zip(word_tokens, log10_probs[1:], log10_backoffs[1:]), start=2):
        ids = unigram_row[offset: offset + len(tokens)].reshape(-1, k)
        offset += len(tokens)
        orders.append(_Order(ids, prob, backoff if k < highest else np.zeros(len(prob))))

    def word(order: int, row: int, column: int) -> str:
        token = word_tokens[order - 2][row * order + column]
        return data[starts[token]: ends[token]].decode("utf-8", errors="replace")

    lines = [token_line[t] + 1 for t in first_tokens]
    return unigram_words, orders, _Where(file_name, lines, word)


def _parse_count_line(text: str, order: int) -> int | None:
    """The count of ``ngram <order>=<count>``, None for anything else."""
    if not text.startswith("ngram "):
        return None
    k, _, count = text[len("ngram "):].partition("=")
    if not (k.strip().isdigit() and count.strip().isdigit()) or int(k) != order:
        return None
    return int(count)


def _parse_decimals(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, data: bytes) -> np.ndarray | None:
    """The float64 value of each token ``buffer[starts[i]: starts[i] + lengths[i]]``, as Python's
    ``float`` reads it; None where one is not a number or is NaN or +inf.

    Tokens of the form ``[+-]digits[.digits][(e|E)[+-]digits]`` with at most 17 significant
    digits and an exponent that keeps to the exact fast path are parsed here; the others (``-inf``,
    long mantissas) by ``float``, one by one.
    """
    values = np.empty(len(starts))
    slow = []
    for block in range(0, len(starts), BLOCK):
        start, length = starts[block: block + BLOCK], lengths[block: block + BLOCK]
        plain, good = _parse_plain(buffer, start, length)
        values[block: block + BLOCK] = plain
        rest = np.flatnonzero(~good)
        if len(rest):
            general, good = _parse_general(buffer, start[rest], length[rest])
            values[block + rest] = general
            slow.extend((block + rest[~good]).tolist())
    for i in slow:
        try:
            values[i] = float(data[starts[i]: starts[i] + lengths[i]].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return None
        if math.isnan(values[i]) or values[i] == math.inf:
            return None
    return values


def _parse_plain(buffer: np.ndarray, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[-]digits[.digits]`` (what ``%.8g`` writes but for small values): the value of each
    token and whether it had that form and fits the exact fast path."""
    length = np.minimum(length, 24)
    width = int(length.max()) if len(length) else 0
    column = np.arange(width, dtype=np.int16)
    inside = column < length[:, None]                                          # (m, W)
    chars = np.where(inside, buffer[start[:, None] + column], 48)              # (m, W) uint8, '0' past the end
    negative = chars[:, 0] == 45
    is_dot = chars == 46
    dot_at = np.where(is_dot.any(axis=1), is_dot.argmax(axis=1), -1).astype(np.int16)   # -1: no dot
    digit = chars - np.uint8(48)
    is_digit = digit < 10
    good = (is_digit | (column == dot_at[:, None]) | ((column == 0) & negative[:, None])).all(axis=1)
    place = (length - 1).astype(np.int16)[:, None] - column - (column < dot_at[:, None])   # digits to the right
    weight = np.where(is_digit & inside & (place >= 0), INTEGER_POWERS[np.clip(place, 0, 18)], 0)
    whole = (digit.astype(np.int64) * weight).sum(axis=1)
    fraction = np.where(dot_at >= 0, length - 1 - dot_at, 0)
    good &= (length - (dot_at >= 0) - negative >= 1) & (length <= 18) & (whole < EXACT_MANTISSA) & (fraction <= 22)
    magnitude = whole / POWERS_OF_TEN[np.minimum(fraction, 22)]
    return np.where(negative, -magnitude, magnitude), good


def _parse_general(buffer: np.ndarray, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[+-]digits[.digits][(e|E)[+-]digits]``: the value of each token and whether it had that
    form and fits the exact fast path."""
    too_long = length > 24
    length = np.minimum(length, 24)
    width = int(length.max()) if len(length) else 0
    column = np.arange(width)
    inside = column < length[:, None]                                          # (m, W)
    chars = np.where(inside, buffer[start[:, None] + column], 0)               # (m, W) uint8
    signed = (chars[:, 0] == 45) | (chars[:, 0] == 43)
    is_e = (chars == 101) | (chars == 69)
    has_e = is_e.any(axis=1)
    e_at = np.where(has_e, is_e.argmax(axis=1), length)
    is_digit = (chars >= 48) & (chars <= 57)
    is_dot = chars == 46
    mantissa = is_digit & (column < e_at[:, None])                              # (m, W)
    exponent = is_digit & (column > e_at[:, None])
    exponent_sign = (column == e_at[:, None] + 1) & ((chars == 45) | (chars == 43))
    allowed = (is_digit | (is_dot & (column < e_at[:, None])) | (is_e & (column == e_at[:, None]))
               | ((column == 0) & signed[:, None]) | exponent_sign | ~inside)
    n_mantissa, n_exponent = mantissa.sum(axis=1), exponent.sum(axis=1)
    dot_at = np.where(is_dot.any(axis=1), is_dot.argmax(axis=1), e_at)
    fraction = (mantissa & (column > dot_at[:, None])).sum(axis=1)
    digit = chars.astype(np.int64) - 48
    place = np.cumsum(mantissa[:, ::-1], axis=1)[:, ::-1] - 1                  # digits to the right
    whole = np.where(mantissa, digit * INTEGER_POWERS[np.clip(place, 0, 18)], 0).sum(axis=1)
    place = np.cumsum(exponent[:, ::-1], axis=1)[:, ::-1] - 1
    power = np.where(exponent, digit * INTEGER_POWERS[np.clip(place, 0, 3)], 0).sum(axis=1)
    negative_power = exponent_sign.any(axis=1) & (chars[np.arange(len(chars)), np.minimum(e_at + 1, width - 1)] == 45)
    power = np.where(negative_power, -power, power) - fraction
    good = (allowed.all(axis=1) & (is_dot.sum(axis=1) <= 1) & (is_e.sum(axis=1) <= 1) & (n_mantissa >= 1)
            & (n_mantissa <= 17) & (n_exponent <= 3) & (has_e <= (n_exponent >= 1))
            & (whole < EXACT_MANTISSA) & (np.abs(power) <= 22) & ~too_long)
    magnitude = np.where(power >= 0, whole * POWERS_OF_TEN[np.clip(power, 0, 22)],
                         whole / POWERS_OF_TEN[np.clip(-power, 0, 22)])
    return np.where(chars[:, 0] == 45, -magnitude, magnitude), good


def _word_chunks(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, chunk: int) -> np.ndarray:
    """Bytes ``8 chunk .. 8 chunk + 7`` of each token as a little-endian uint64, zero-padded."""
    loads = np.ndarray((len(buffer) - 7,), dtype="<u8", buffer=buffer, strides=(1,))
    remaining = np.clip(lengths - 8 * chunk, 0, 8).astype(np.uint64)
    mask = np.where(remaining == 8, np.uint64(2**64 - 1),
                    (np.uint64(1) << (np.uint64(8) * remaining)) - np.uint64(1))
    return loads[np.minimum(starts + 8 * chunk, len(loads) - 1)] & mask


def _find_words(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, unigram_tokens: np.ndarray,
                queries: np.ndarray) -> np.ndarray | None:
    """The 1-gram row of each query token's word, -1 where it is not a 1-gram; None on a hash
    collision (the reference reader then decides).

    A word's hash is ``sum_j chunk_j * M_j + length * M`` (mod 2^64) over its uint64 chunks; a
    query found by its hash is then compared chunk by chunk, so a collision cannot go unseen.
    """
    unigram_start, unigram_length = starts[unigram_tokens], lengths[unigram_tokens]
    query_start, query_length = starts[queries], lengths[queries]
    n_chunks = (int(max(unigram_length.max(initial=1), query_length.max(initial=1))) + 7) // 8
    multipliers = np.random.default_rng(0).integers(1, 2**63, size=n_chunks + 1, dtype=np.uint64) | np.uint64(1)
    unigram_chunks = np.stack([_word_chunks(buffer, unigram_start, unigram_length, chunk)
                               for chunk in range(n_chunks)], axis=1)                     # (V, C)
    query_chunks = []                                     # per chunk: the queries that reach it, their bytes
    with np.errstate(over="ignore"):
        unigram_hash = unigram_length.astype(np.uint64) * multipliers[-1] + (unigram_chunks * multipliers[:-1]).sum(
            axis=1, dtype=np.uint64)
        query_hash = query_length.astype(np.uint64) * multipliers[-1]
        for chunk in range(n_chunks):
            reaching = np.flatnonzero(query_length > 8 * chunk) if chunk else np.arange(len(queries))
            values = _word_chunks(buffer, query_start[reaching], query_length[reaching], chunk)
            query_hash[reaching] += values * multipliers[chunk]
            query_chunks.append((reaching, values))
    table = pd.Index(unigram_hash)
    if not table.is_unique:
        return None
    row = table.get_indexer(query_hash)
    same = unigram_length[row] == query_length
    for chunk, (reaching, values) in enumerate(query_chunks):
        same[reaching] &= unigram_chunks[row[reaching], chunk] == values
    return row if np.all(same | (row < 0)) else None


# ---- shared: from parsed sections to the model ------------------------------------------------


def _assemble(unigram_words: list[str], orders: list[_Order], where: _Where) -> tuple[NGramLM, WordVocabulary]:
    """The model of parsed sections, checking what parsing cannot: repeated n-grams, words that
    are not 1-grams, contexts that are not stored.

    Args:
        unigram_words: the 1-gram words in file order.
        orders: per order k; the ``ids`` of orders >= 2 are rows of the 1-gram section.
    """
    first_seen: dict[str, int] = {}
    dense = np.array([first_seen.setdefault(word, len(first_seen)) for word in unigram_words], dtype=np.int64)
    _reject_repeats(dense, where, 1)
    others = (word for word in unigram_words if word not in (UNKNOWN, SENTENCE_START))
    vocabulary = WordVocabulary((UNKNOWN, *others))
    index = {**vocabulary.index, SENTENCE_START: vocabulary.start_id}
    model = NGramLM(NGramConfig(vocab_size=len(vocabulary.words), order=len(orders)))
    n_ids = model.n_ids
    unigram_ids = np.array([index[word] for word in unigram_words], dtype=np.int64)

    unigram_log_prob = np.full(n_ids, -math.inf)
    unigram_log_prob[0] = MISSING_UNKNOWN_LOG10 * LN10
    unigram_backoff = np.zeros(n_ids)
    unigram_log_prob[unigram_ids] = orders[0].log10_prob * LN10
    unigram_backoff[unigram_ids] = orders[0].log10_backoff * LN10
    keys = [torch.arange(n_ids)]
    log_probs, log_backoffs = [torch.from_numpy(unigram_log_prob)], [torch.from_numpy(unigram_backoff)]
    for k, order in enumerate(orders[1:], start=2):
        unknown = np.flatnonzero((order.ids < 0).any(axis=1))
        if len(unknown):
            row = int(unknown[0])
            column = int(np.argmax(order.ids[row] < 0))
            raise DataError(f"{where.line(k, row)}: the word {where.word(k, row, column)!r} is not among the 1-grams")
        ids = torch.from_numpy(unigram_ids[order.ids])
        prefix = ngrams.prefix_indices(keys, ids, n_ids)
        missing = (prefix < 0).nonzero()
        if len(missing):
            row = int(missing[0])
            context = " ".join(where.word(k, row, j) for j in range(k - 1))
            raise DataError(f"{where.line(k, row)}: the context {context!r} of this {k}-gram is not a "
                            f"{k - 1}-gram (every context must be stored, as KenLM requires)")
        key = (prefix * n_ids + ids[:, -1]).numpy()
        ordering = _reject_repeats(key, where, k)
        keys.append(torch.from_numpy(key[ordering]))
        log_probs.append(torch.from_numpy(order.log10_prob[ordering] * LN10))
        log_backoffs.append(torch.from_numpy(order.log10_backoff[ordering] * LN10))
    log_backoffs[-1] = torch.zeros(0, dtype=torch.float64)
    model.set_tables(keys, log_probs, log_backoffs)
    return model, vocabulary


def _reject_repeats(keys: np.ndarray, where: _Where, order: int) -> np.ndarray:
    """The stable sorting order of ``keys``; DataError naming the second line of the first
    n-gram listed twice."""
    ordering = np.argsort(keys, kind="stable")
    ordered = keys[ordering]
    repeated = np.flatnonzero(ordered[1:] == ordered[:-1])
    if len(repeated):
        raise DataError(f"{where.line(order, int(ordering[int(repeated[0]) + 1]))}: this {order}-gram is listed twice")
    return ordering


# ---- the reference: line by line --------------------------------------------------------------


def read_arpa_reference(path: str | Path) -> tuple[NGramLM, WordVocabulary]:
    """The specification of ``read_arpa_file``: the file read line by line, every field checked
    as it comes, with a Python object per field.

    Raises:
        DataError: naming the line, for a missing or bad header, a count that does not match its
            section, a line with the wrong number of fields or a non-numeric value, an n-gram
            over a word that is not a unigram or whose context is not stored, a repeated
            n-gram, or a file that ends before ``\\end\\``.
    """
    path = Path(path)
    sections = _LineParser(path).parse()
    unigram_words = [words[0] for words in sections[0].words]
    unigram_row: dict[str, int] = {}
    for row, word in enumerate(unigram_words):
        unigram_row.setdefault(word, row)
    orders = [_Order(np.array([[unigram_row.get(word, -1) for word in words] for words in section.words],
                              dtype=np.int64).reshape(-1, k), section.log10_prob, section.log10_backoff)
              for k, section in enumerate(sections, start=1)]
    where = _Where(path.name, [np.array(section.lines) for section in sections],
                   lambda order, row, column: sections[order - 1].words[row][column])
    return _assemble(unigram_words, orders, where)


@dataclasses.dataclass
class _Section:
    """The n-grams of one order as the line parser reads them: words, log10 values, lines."""

    words: list[list[str]]
    log10_prob: np.ndarray       # (N,) float64
    log10_backoff: np.ndarray    # (N,) float64, 0 where omitted
    lines: list[int]             # 1-based line numbers


class _LineParser:
    """Reads the sections of an ARPA file, checking the format line by line."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"cannot read ARPA file {str(path)!r}: {error}") from None
        self.position = 0                     # index of the next line to read

    def error(self, message: str, line: int | None = None) -> DataError:
        line = self.position if line is None else line
        return DataError(f"line {line} of {self.path.name}: {message}")

    def next_content_line(self, what: str) -> str:
        """The next non-blank line (stripped), or a DataError saying the file ends early."""
        while self.position < len(self.lines):
            self.position += 1
            text = self.lines[self.position - 1].strip()
            if text:
                return text
        raise self.error(f"the file ends before {what} (truncated?)", len(self.lines) + 1)

    def parse(self) -> list[_Section]:
        text = self.next_content_line("the \\data\\ header")
        if text != "\\data\\":
            raise self.error(f"expected \\data\\ as the first line that is not blank, got {text!r}")
        declared = []
        text = self.next_content_line("the n-gram counts")
        while text.startswith("ngram "):
            count = _parse_count_line(text, len(declared) + 1)
            if count is None:
                raise self.error(f"expected 'ngram {len(declared) + 1}=<count>', got {text!r}")
            declared.append(count)
            text = self.next_content_line("the first section")
        if not declared:
            raise self.error(f"expected 'ngram 1=<count>' after \\data\\, got {text!r}")
        sections = []
        for k, count in enumerate(declared, start=1):
            if text != f"\\{k}-grams:":
                raise self.error(f"expected the section header '\\{k}-grams:', got {text!r}")
            sections.append(self.section(k, count, highest=k == len(declared)))
            text = self.next_content_line("\\end\\")
            if not text.startswith("\\"):
                raise self.error(f"more {k}-grams than the {count} the header declares")
        if text != "\\end\\":
            raise self.error(f"expected \\end\\, got {text!r}")
        return sections

    def section(self, order: int, count: int, highest: bool) -> _Section:
        words, probs, backoffs, lines = [], [], [], []
        fields_allowed = (order + 1,) if highest else (order + 1, order + 2)
        for _ in range(count):
            text = self.next_content_line(f"the {count} {order}-grams the header declares")
            fields = text.split()
            if text.startswith("\\") and len(fields) == 1:
                raise self.error(f"the header declares {count} {order}-grams but the section has {len(words)}")
            if len(fields) not in fields_allowed:
                expected = " or ".join(map(str, fields_allowed))
                raise self.error(f"a {order}-gram line has {len(fields)} fields, expected {expected}")
            probs.append(self.number(fields[0], "probability"))
            backoffs.append(self.number(fields[-1], "back-off weight") if len(fields) == order + 2 else 0.0)
            words.append(fields[1: order + 1])
            lines.append(self.position)
        return _Section(words, np.array(probs, dtype=np.float64), np.array(backoffs, dtype=np.float64), lines)

    def number(self, field: str, what: str) -> float:
        try:
            value = float(field)
        except ValueError:
            raise self.error(f"the {what} {field!r} is not a number") from None
        if math.isnan(value) or value == math.inf:
            raise self.error(f"the {what} {field!r} is not a log10 value")
        return value


# ---- the binary cache -------------------------------------------------------------------------


def save_binary(model: NGramLM, vocabulary: WordVocabulary, path: str | Path) -> None:
    """Write ``model``'s tables and ``vocabulary`` as one safetensors file for ``load_binary``.

    Tensors: ``order{k}.keys`` (N_k,) int64, ``order{k}.log_prob`` and ``order{k}.log_backoff``
    as the model holds them, ``discounts`` (n, 3) and ``vocabulary`` (bytes,) uint8, the words
    joined by newlines. Metadata: the format name and version and the ``NGramConfig`` as JSON.
    """
    if model.vocab_size != len(vocabulary.words):
        raise ConfigError(f"the model predicts {model.vocab_size} ids but the vocabulary has "
                          f"{len(vocabulary.words)} words")
    tensors = {"discounts": model.discounts.detach().cpu().contiguous(),
               "vocabulary": torch.frombuffer(bytearray("\n".join(vocabulary.words).encode("utf-8")), dtype=torch.uint8)}
    for k, table in enumerate(model.tables, start=1):
        for name in ("keys", "log_prob", "log_backoff"):
            tensors[f"order{k}.{name}"] = getattr(table, name).detach().cpu().contiguous()
    metadata = {"format": BINARY_FORMAT, "version": BINARY_VERSION,
                "config": json.dumps(dataclasses.asdict(model.config))}
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


CACHE_SUFFIX = ".seqlab.safetensors"


def load_arpa(path: str | Path, *, cache: bool = False) -> tuple[NGramLM, WordVocabulary]:
    """The model of an ARPA file or of a binary cache (a ``.safetensors`` file ``save_binary``
    wrote). With ``cache``, an ARPA file is read through ``PATH.seqlab.safetensors`` beside it:
    loaded from there when it is newer than the ARPA file, else the ARPA file is parsed and the
    cache written (aside, then renamed). A file at that name that seqlab did not write is never
    replaced.

    Raises:
        DataError: the ARPA file is missing or malformed. CheckpointError: the cache is corrupt.
        ConfigError: a file that is not seqlab's cache holds the cache's name.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_binary(path)
    if not cache:
        return read_arpa_file(path)
    cached = path.with_name(path.name + CACHE_SUFFIX)
    if cached.is_file():
        try:
            with safetensors.safe_open(str(cached), framework="pt") as handle:
                ours = (handle.metadata() or {}).get("format") == BINARY_FORMAT
        except (OSError, safetensors.SafetensorError):
            ours = False
        if not ours:
            raise ConfigError(f"{str(cached)!r} is not a seqlab n-gram cache; move it, or score without --cache")
        if path.is_file() and cached.stat().st_mtime >= path.stat().st_mtime:
            return load_binary(cached)
    model, vocabulary = read_arpa_file(path)
    staging = cached.with_name(f".{cached.name}.partial")
    save_binary(model, vocabulary, staging)
    staging.replace(cached)
    return model, vocabulary


def load_binary(path: str | Path) -> tuple[NGramLM, WordVocabulary]:
    """The model and vocabulary ``save_binary`` wrote, exactly.

    Raises:
        CheckpointError: the file is missing, not a safetensors file, of another format or
            version, or its tables do not fit together (sizes, unsorted keys, vocabulary).
    """
    path = Path(path)
    where = f"n-gram cache {str(path)!r}"
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != BINARY_FORMAT or metadata.get("version") != BINARY_VERSION:
                raise CheckpointError(f"{where} is not a {BINARY_FORMAT} file of version {BINARY_VERSION} "
                                      f"(found {metadata.get('format')!r} {metadata.get('version')!r}); "
                                      "rebuild it with save_binary")
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        config = NGramConfig(**json.loads(metadata["config"]))
        words = tuple(bytes(tensors.pop("vocabulary").numpy()).decode("utf-8").split("\n"))
        vocabulary = WordVocabulary(words)
        names = [f"order{k}.{name}" for k in range(1, config.order + 1) for name in ("keys", "log_prob", "log_backoff")]
        tables = [tensors.pop(name) for name in names]
        discounts = tensors.pop("discounts")
    except CheckpointError:
        raise
    except (OSError, safetensors.SafetensorError, KeyError, TypeError, ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{where} cannot be read as an n-gram cache: {error}".replace("\n", " ")) from None
    model = NGramLM(config)
    keys, log_probs, log_backoffs = tables[0::3], tables[1::3], tables[2::3]
    _check_tables(where, model, vocabulary, keys, log_probs, log_backoffs, discounts, sorted(tensors))
    model.set_tables(keys, log_probs, log_backoffs)
    model.discounts.copy_(discounts)
    return model, vocabulary


def _check_tables(where: str, model: NGramLM, vocabulary: WordVocabulary, keys: list[torch.Tensor],
                  log_probs: list[torch.Tensor], log_backoffs: list[torch.Tensor], discounts: torch.Tensor,
                  unexpected: list[str]) -> None:
    """CheckpointError unless the cached tables fit ``model``'s config and one another."""
    problem = None
    if unexpected:
        problem = f"holds unexpected tensors {unexpected}"
    elif len(vocabulary.words) != model.vocab_size:
        problem = f"holds {len(vocabulary.words)} words for a model of {model.vocab_size} ids"
    elif discounts.shape != model.discounts.shape:
        problem = f"holds discounts of shape {tuple(discounts.shape)}, expected {tuple(model.discounts.shape)}"
    for k, (key, log_prob, log_backoff) in enumerate(zip(keys, log_probs, log_backoffs), start=1):
        if problem:
            break
        backoffs = 0 if k == model.order else len(key)
        if key.dtype != torch.int64 or key.dim() != 1 or log_prob.shape != key.shape or len(log_backoff) != backoffs:
            problem = f"holds order {k} tables of mismatched sizes or types"
        elif k == 1 and not torch.equal(key, torch.arange(model.n_ids)):
            problem = f"holds 1-gram keys that are not 0 .. {model.n_ids - 1}"
        elif len(key) > 1 and not bool((key[1:] > key[:-1]).all()):
            problem = f"holds order {k} keys that are not strictly increasing"
    if problem:
        raise CheckpointError(f"{where} {problem}: it is corrupt; rebuild it with save_binary")
