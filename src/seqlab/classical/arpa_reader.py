"""Reading ARPA files at C speed.

``read_arpa_file`` reads the file once as bytes and parses it with whole-array numpy operations,
so no Python object is made per n-gram:

1. every whitespace byte is found in one pass; the tokens are the runs between them, and a
   token whose previous separators hold a newline starts a line (line numbers are counted only
   for an error message);
2. the few lines that start with ``\\`` (``\\data\\``, ``\\k-grams:``, ``\\end\\``) and the counts
   lines are read in Python; each section is then a block of lines of k + 1 or k + 2 tokens;
3. probabilities and back-off weights are parsed as decimals ``M * 10^E``, then one
   multiplication or division by an exact power of ten (M < 2^53, |E| <= 22), which is
   correctly rounded, so the value is exactly Python's ``float`` of the text (Clinger 1990, the
   "fast path"). What seqlab and KenLM write (``-1.2345678``, ``-0.12345678``, ``0``, ``-99``)
   is read as two 8-byte words per number, the digits combined by multiply-shifts (SWAR);
   exponents and other forms digit column by digit column;
4. a word of at most 8 bytes is its bytes as one little-endian uint64 (zero-padded: words hold
   no NUL byte), looked up exactly in a hash table of the short 1-grams; a longer word is
   hashed over its 8-byte chunks, looked up among the long 1-grams and compared chunk by chunk;
5. the keys are built as ``seqlab.classical.counts`` encodes them; a context is found among
   the n-grams of the order below as one base-``n_ids`` number (one binary search per order).

Anything the fast path cannot vouch for (a line that is not a well-formed n-gram, a number it
does not parse, an unusual byte) hands the file to ``read_arpa_reference``, the line-by-line
reader that is the specification: it raises the ``DataError`` naming the line, or reads the
file if the fast path was only being cautious. Errors found after parsing (an unknown word, a
missing context, a repeated n-gram) are raised by the shared assembly with the line number.

Numbers are parsed by ``seqlab.classical.decimals``; the binary cache of the tables is
``seqlab.classical.ngram_cache``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from seqlab.classical import counts as ngrams
from seqlab.classical.arpa import LN10, MISSING_UNKNOWN_LOG10, SENTENCE_START, UNKNOWN, WordVocabulary
from seqlab.classical.ngram import NGramConfig, NGramLM
from seqlab.classical.decimals import LOW_BYTES, parse_decimals
from seqlab.errors import DataError

WORD_BLOCK = 1 << 16                   # words looked up at once
SPELLED_BELOW = 2**63                  # n-grams are looked up as base-n_ids numbers while these fit in int64


@dataclasses.dataclass
class _Order:
    """The n-grams of one order as read, in file order: ids (N, k) (-1 for a word that is not a
    1-gram), log10 p* (N,) and log10 b (N,) (0 where omitted)."""

    ids: np.ndarray
    log10_prob: np.ndarray
    log10_backoff: np.ndarray


class _Where:
    """Where things are in the file, for error messages, looked up only when one is raised:
    ``line_number(k, row)`` the 1-based line of the row-th k-gram, ``word(k, row, column)`` the
    text of one of its words."""

    def __init__(self, file_name: str, line_number: Callable[[int, int], int], word: Callable[[int, int, int], str]):
        self.file_name, self.line_number, self.word = file_name, line_number, word

    def line(self, order: int, row: int) -> str:
        return f"line {self.line_number(order, row)} of {self.file_name}"


def read_arpa_file(path: str | Path) -> tuple[NGramLM, WordVocabulary]:
    """``seqlab.classical.arpa.read_arpa``: the model and vocabulary of an ARPA file, read once
    with vectorised parsing (see the module docstring); the same result as
    ``read_arpa_reference``, and the same errors."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            buffer = np.zeros(size + 17, np.uint8)      # a last newline; room for 8-byte loads
            complete = handle.readinto(memoryview(buffer)[:size]) == size and not handle.read(1)
    except OSError as error:
        raise DataError(f"cannot read ARPA file {str(path)!r}: {error}") from None
    buffer[size] = 10
    parsed = _parse_fast(buffer, size, path.name) if complete else None
    if parsed is None:
        return read_arpa_reference(path)
    return _assemble(*parsed)


# ---- the fast path: whole-array parsing -------------------------------------------------------


def _parse_fast(buffer: np.ndarray, size: int, file_name: str) -> tuple | None:
    """The arguments of ``_assemble``, or None where the reference reader must decide.

    ``buffer`` holds the file's ``size`` bytes, a newline and 16 zero bytes.
    """
    text = buffer[: size + 1]
    data = memoryview(buffer)
    is_ascii = text.max() < 128
    if not is_ascii and not _plain_utf8(buffer, size):
        return None
    tokens = _tokens(text)
    if tokens is None:
        return None
    starts, ends, first = tokens
    line_first = np.flatnonzero(first)                                    # (R,) per non-blank line
    n_fields = np.diff(np.append(line_first, len(starts)))                # (R,)

    def line_text(row: int) -> str:
        return str(data[starts[line_first[row]]: ends[line_first[row] + n_fields[row] - 1]], "utf-8")

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
    number_starts = starts[number_tokens]
    values = parse_decimals(buffer, number_starts, ends[number_tokens] - number_starts, data)
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
    unigram_starts, unigram_ends = starts[unigram_tokens], ends[unigram_tokens]
    section = bytes(data[unigram_starts[0]: unigram_ends[-1]]) if len(unigram_tokens) else b""
    if is_ascii:                                    # offsets in bytes are offsets in characters
        section = section.decode("ascii")
    unigram_words = [section[s:e] for s, e in zip((unigram_starts - unigram_starts[:1]).tolist(),
                                                  (unigram_ends - unigram_starts[:1]).tolist())]
    if not is_ascii:
        unigram_words = [word.decode("utf-8") for word in unigram_words]
    queries = np.concatenate(word_tokens) if word_tokens else np.zeros(0, dtype=np.int64)
    unigram_row = _find_words(buffer, starts, ends, unigram_tokens, queries)
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
        return str(data[starts[token]: ends[token]], "utf-8")

    def line_number(order: int, row: int) -> int:
        return bytes(data[: starts[first_tokens[order - 1][row]]]).count(b"\n") + 1

    return unigram_words, orders, _Where(file_name, line_number, word)


def _tokens(text: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Each token's first byte and the byte after it (T,), and whether it starts a line (T,),
    of ``text``, which ends with a newline; None where a byte would make the reference reader
    split differently (a control byte other than tab, LF, CR; a CR not before an LF)."""
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
    starts, ends = previous[ends_token] + 1, separator[ends_token]        # (T,)
    first = np.empty(len(starts), dtype=bool)                             # (T,) first of its line
    first[:1] = True
    first[1:] = text[starts[1:] - 1] == 10                                # a newline just before
    several = np.flatnonzero(starts[1:] - ends[:-1] > 1)                 # or anywhere in a longer gap
    if len(several) > 100:                                                # CRLF, indented lines...
        newlines = separator[newline]
        first[several + 1] = (np.searchsorted(newlines, starts[several + 1])
                              > np.searchsorted(newlines, ends[several]))
    for gap in several.tolist() if len(several) <= 100 else []:          # blank lines
        first[gap + 1] = np.any(text[ends[gap]: starts[gap + 1]] == 10)
    return starts, ends, first


# Python's whitespace (``str.isspace``, where ``str.split`` and ``str.splitlines`` break) above ASCII.
UNICODE_SPACES = "\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
                 "\u2028\u2029\u202f\u205f\u3000"


def _plain_utf8(buffer: np.ndarray, size: int) -> bool:
    """Whether the first ``size`` bytes (followed by at least two more) are UTF-8 without
    whitespace above ASCII: the reference reader would reject the file otherwise, or break lines
    or fields where the fast path does not.

    In valid UTF-8 a character's bytes occur nowhere else, so each space is looked for as the
    first byte of its encoding followed by the rest (2 or 3 bytes).
    """
    try:
        str(memoryview(buffer)[:size], "utf-8")
    except UnicodeDecodeError:
        return False
    encodings = [space.encode("utf-8") for space in UNICODE_SPACES]
    leads = np.flatnonzero(np.isin(buffer[:size], [encoding[0] for encoding in encodings]))
    following = buffer[leads + 1].astype(np.int64) << 8 | buffer[leads + 2]
    lead = buffer[leads]
    for encoding in encodings:
        rest = encoding[1] << 8 | (encoding[2] if len(encoding) == 3 else 0)
        mask = 0xFFFF if len(encoding) == 3 else 0xFF00
        if np.any((lead == encoding[0]) & (following & mask == rest)):
            return False
    return True


def _parse_count_line(text: str, order: int) -> int | None:
    """The count of ``ngram <order>=<count>``, None for anything else."""
    if not text.startswith("ngram "):
        return None
    k, _, count = text[len("ngram "):].partition("=")
    if not (k.strip().isdigit() and count.strip().isdigit()) or int(k) != order:
        return None
    return int(count)


def _word_chunks(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, chunk: int) -> np.ndarray:
    """Bytes ``8 chunk .. 8 chunk + 7`` of each token as a little-endian uint64, zero-padded."""
    loads = np.ndarray((len(buffer) - 7,), dtype="<u8", buffer=buffer, strides=(1,))
    if chunk == 0:                                                # every token starts inside the file
        return loads[starts] & LOW_BYTES[np.minimum(lengths, 8)]
    remaining = np.clip(lengths - 8 * chunk, 0, 8)
    return loads[np.minimum(starts + 8 * chunk, len(loads) - 1)] & LOW_BYTES[remaining]


def _find_words(buffer: np.ndarray, starts: np.ndarray, ends: np.ndarray, unigram_tokens: np.ndarray,
                queries: np.ndarray) -> np.ndarray | None:
    """The 1-gram row of each query token's word (token i is ``buffer[starts[i]: ends[i]]``), -1
    where it is not a 1-gram; None on a hash collision or a repeated 1-gram (the reference
    reader then decides).

    A word of at most 8 bytes is its zero-padded bytes as one uint64 (words hold no NUL byte),
    looked up exactly among the short 1-grams. A longer word is looked up among the long 1-grams
    by ``sum_j chunk_j * M_j + length * M`` (mod 2^64) over its uint64 chunks, then compared
    chunk by chunk, so a collision cannot go unseen.
    """
    unigram_start = starts[unigram_tokens]
    unigram_length = ends[unigram_tokens] - unigram_start
    long_unigrams = np.flatnonzero(unigram_length > 8)
    first_chunks = _word_chunks(buffer, unigram_start, unigram_length, 0)
    first_chunks[long_unigrams] = long_unigrams.astype(np.uint64) << np.uint64(8) | np.uint64(1)   # no word's
    table = pd.Index(first_chunks)                # bytes: a word's first byte is above 32, these are 1
    if not table.is_unique:
        return None
    row = np.empty(len(queries), dtype=np.int64)
    long_queries = []
    for block in range(0, len(queries), WORD_BLOCK):           # blocks whose temporaries stay in cache
        query_start = starts[queries[block: block + WORD_BLOCK]]
        query_length = ends[queries[block: block + WORD_BLOCK]] - query_start
        row[block: block + WORD_BLOCK] = table.get_indexer(_word_chunks(buffer, query_start, query_length, 0))
        long_queries.append(block + np.flatnonzero(query_length > 8))   # their first chunk may be an 8-byte word's
    long_queries = np.concatenate(long_queries) if long_queries else np.zeros(0, dtype=np.int64)
    row[long_queries] = -1
    query_start = starts[queries[long_queries]]
    query_length = ends[queries[long_queries]] - query_start
    if len(long_queries) and len(long_unigrams):
        found = _find_long_words(buffer, unigram_start[long_unigrams], unigram_length[long_unigrams],
                                 query_start, query_length)
        if found is None:
            return None
        row[long_queries] = np.where(found >= 0, long_unigrams[found], -1)
    return row


def _find_long_words(buffer: np.ndarray, unigram_start: np.ndarray, unigram_length: np.ndarray,
                     query_start: np.ndarray, query_length: np.ndarray) -> np.ndarray | None:
    """``_find_words`` by hash and comparison: the row of each query among the given 1-grams."""
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
            reaching = np.flatnonzero(query_length > 8 * chunk) if chunk else np.arange(len(query_start))
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
    vocabulary = WordVocabulary._from_split_words((UNKNOWN, *others))
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
    spelled = np.arange(n_ids)          # the n-grams of the order below, sorted, as base-n_ids numbers
    for k, order in enumerate(orders[1:], start=2):
        unknown = np.flatnonzero((order.ids < 0).any(axis=1)) if order.ids.size and order.ids.min() < 0 else []
        if len(unknown):
            row = int(unknown[0])
            column = int(np.argmax(order.ids[row] < 0))
            raise DataError(f"{where.line(k, row)}: the word {where.word(k, row, column)!r} is not among the 1-grams")
        ids = unigram_ids[order.ids]                                            # (N, k)
        if spelled is not None:
            context = ids[:, 0]
            for j in range(1, k - 1):
                context = context * n_ids + ids[:, j]
            prefix = _find_spelled(spelled, context)
        else:
            prefix = ngrams.prefix_indices(keys, torch.from_numpy(ids), n_ids).numpy()
        missing = np.flatnonzero(prefix < 0)
        if len(missing):
            row = int(missing[0])
            context = " ".join(where.word(k, row, j) for j in range(k - 1))
            raise DataError(f"{where.line(k, row)}: the context {context!r} of this {k}-gram is not a "
                            f"{k - 1}-gram (every context must be stored, as KenLM requires)")
        key = prefix * n_ids + ids[:, -1]
        ordering = _reject_repeats(key, where, k)
        spelled = (context * n_ids + ids[:, -1])[ordering] if spelled is not None and n_ids**k < SPELLED_BELOW else None
        keys.append(torch.from_numpy(key[ordering]))
        log_probs.append(torch.from_numpy(order.log10_prob[ordering] * LN10))
        log_backoffs.append(torch.from_numpy(order.log10_backoff[ordering] * LN10))
    log_backoffs[-1] = torch.zeros(0, dtype=torch.float64)
    model.set_tables(keys, log_probs, log_backoffs)
    return model, vocabulary


def _find_spelled(spelled: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The index of each query in ``spelled``, ``ABSENT`` where it is not there.

    Keys are sorted by (prefix index, last id) and prefix indices are ranks in sorted order, so
    the sorted n-grams of an order are in lexicographic order of their ids: written as base-n_ids
    numbers ``sum_j w_j n_ids^(k - 1 - j)`` they are increasing, and one binary search finds a
    context, where ``counts.prefix_indices`` searches once per word.
    """
    if not len(spelled):
        return np.full(len(queries), ngrams.ABSENT)
    position = np.minimum(np.searchsorted(spelled, queries), len(spelled) - 1)
    return np.where(spelled[position] == queries, position, ngrams.ABSENT)


def _reject_repeats(keys: np.ndarray, where: _Where, order: int) -> np.ndarray | slice:
    """The stable sorting order of ``keys`` (all of them, in order, where they are increasing,
    as a file seqlab wrote lists them); DataError naming the second line of the first n-gram
    listed twice."""
    if np.all(keys[1:] > keys[:-1]):
        return slice(None)
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
    where = _Where(path.name, lambda order, row: sections[order - 1].lines[row],
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
