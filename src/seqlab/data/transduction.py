"""Source/target pairs for sequence-to-sequence tasks: synthetic transductions and parallel text.

Three sources of :class:`Pair`:

- **synthetic transductions** (:func:`generate_pairs`, :func:`generate_splits`), deterministic
  from a seed. Sources and targets are space-separated tokens (a ``word`` tokenizer reads them),
  except ``dates``, which is character-level text:

  ============  ==========================  ======================
  kind          source                      target
  ============  ==========================  ======================
  ``copy``      ``3 1 4 1 5``               ``3 1 4 1 5``
  ``reverse``   ``3 1 4 1 5``               ``5 1 4 1 3``
  ``sort``      ``3 1 4 1 5``               ``1 1 3 4 5``
  ``addition``  ``3 5 7 + 4 6``             ``4 0 3``
  ``dates``     ``sunday, march 5 2017``    ``2017-03-05``
  ============  ==========================  ======================

- **parallel text** from a ``source<TAB>target`` file (:func:`read_parallel_tsv`), such as the
  Tatoeba English-French pairs of the PyTorch seq2seq tutorial, with the tutorial's
  normalisation and filter reimplemented (:func:`normalize_tutorial`, :func:`tutorial_filter`);
- **splits of parallel text** that hold out whole source sentences (:func:`split_by_source`).

Every split of this module keeps a source sentence in one split only, so a test score measures
transduction of unseen sources, not recall of training pairs.
"""

from __future__ import annotations

import datetime
import hashlib
import random
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import NamedTuple

from seqlab.errors import ConfigError, DataError

SYNTHETIC_KINDS = ("copy", "reverse", "sort", "addition", "dates")
SPLITS = ("train", "valid", "test")
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"   # copy, reverse, sort use the first n_symbols

FIRST_DATE, LAST_DATE = datetime.date(1950, 1, 1), datetime.date(2049, 12, 31)
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
          "october", "november", "december")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DATE_FORMATS = (                     # each names one date only, and no two formats share a text
    "{month} {day}, {year}",                     # march 5, 2017
    "{day} {mon} {year}",                        # 5 mar 2017
    "{day:02d}/{month_number:02d}/{year}",       # 05/03/2017, day first
    "{year}.{month_number:02d}.{day:02d}",       # 2017.03.05
    "{weekday}, {month} {day} {year}",           # sunday, march 5 2017
    "{mon} {day:02d} {year}",                    # mar 05 2017
    "{day}{suffix} of {month} {year}",           # 5th of march 2017
)

ENG_PREFIXES = ("i am ", "i m ", "he is", "he s ", "she is", "she s ", "you are", "you re ",
                "we are", "we re ", "they are", "they re ")


class Pair(NamedTuple):
    """One source/target pair and where it came from (``file:line`` or ``reverse train example
    3``), for error messages."""

    source: str
    target: str
    where: str


# --- synthetic transductions ------------------------------------------------------------------


def _symbols(rng: random.Random, length: int, n_symbols: int) -> list[str]:
    return [ALPHABET[rng.randrange(n_symbols)] for _ in range(length)]


def _operand(rng: random.Random, n_digits: int) -> int:
    """A uniform number of exactly ``n_digits`` digits, no leading zero (0 is a 1-digit number)."""
    return rng.randrange(10) if n_digits == 1 else rng.randrange(10 ** (n_digits - 1), 10 ** n_digits)


def _ordinal_suffix(day: int) -> str:
    if day in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def _draw(kind: str, rng: random.Random, min_length: int, max_length: int, n_symbols: int) -> tuple[str, str]:
    """One (source, target) of ``kind``; see :func:`generate_pairs`."""
    if kind == "dates":
        date = FIRST_DATE + datetime.timedelta(days=rng.randrange((LAST_DATE - FIRST_DATE).days + 1))
        template = DATE_FORMATS[rng.randrange(len(DATE_FORMATS))]
        month = MONTHS[date.month - 1]
        source = template.format(year=date.year, month=month, mon=month[:3], month_number=date.month,
                                 day=date.day, suffix=_ordinal_suffix(date.day),
                                 weekday=WEEKDAYS[date.weekday()])
        return source, date.isoformat()
    if kind == "addition":
        left = _operand(rng, rng.randint(min_length, max_length))
        right = _operand(rng, rng.randint(min_length, max_length))
        return f"{' '.join(str(left))} + {' '.join(str(right))}", " ".join(str(left + right))
    symbols = _symbols(rng, rng.randint(min_length, max_length), n_symbols)
    if kind == "reverse":
        target = symbols[::-1]
    elif kind == "sort":
        target = sorted(symbols, key=ALPHABET.index)
    else:
        target = symbols
    return " ".join(symbols), " ".join(target)


def count_sources(kind: str, *, min_length: int, max_length: int, n_symbols: int = 10) -> int:
    """The number of distinct sources ``kind`` can produce within the bounds.

    - copy, reverse, sort: sequences of L symbols, summed over L: ``sum_L n_symbols ** L``;
    - addition: ordered pairs of operands, ``c ** 2`` with ``c = sum_d N(d)`` the numbers of
      ``d`` digits, ``N(1) = 10`` (0 to 9) and ``N(d) = 9 * 10 ** (d - 1)``;
    - dates: days from 1950-01-01 to 2049-12-31 times the formats (36,524 * 7 = 255,668).
    """
    _check_kind(kind)
    _check_bounds(min_length, max_length, n_symbols)
    if kind == "dates":
        return ((LAST_DATE - FIRST_DATE).days + 1) * len(DATE_FORMATS)
    if kind == "addition":
        operands = sum(10 if digits == 1 else 9 * 10 ** (digits - 1) for digits in range(min_length, max_length + 1))
        return operands ** 2
    return sum(n_symbols ** length for length in range(min_length, max_length + 1))


def _count_text(count: int) -> str:
    return f"{count:,}" if count < 10 ** 15 else "more than 10^15"


def _check_kind(kind: str) -> None:
    if kind not in SYNTHETIC_KINDS:
        raise ConfigError(f"unknown transduction kind {kind!r}; choose one of {', '.join(SYNTHETIC_KINDS)}")


def _check_bounds(min_length: int, max_length: int, n_symbols: int) -> None:
    if not 1 <= min_length <= max_length:
        raise ConfigError(f"min_length and max_length must satisfy 1 <= min_length <= max_length, "
                          f"got {min_length} and {max_length}")
    if not 1 <= n_symbols <= len(ALPHABET):
        raise ConfigError(f"n_symbols must be between 1 and {len(ALPHABET)} (digits, then letters), got {n_symbols}")


def _too_few_sources(kind: str, wanted: int, space: int, min_length: int, max_length: int) -> DataError:
    remedy = {"dates": "ask for fewer pairs",
              "addition": "raise max_length (digits per operand) or ask for fewer pairs"}.get(
        kind, "raise max_length or n_symbols, or ask for fewer pairs")
    return DataError(f"{kind} with lengths {min_length}-{max_length} has only {_count_text(space)} distinct sources, "
                     f"fewer than the {wanted:,} asked for; {remedy}")


def generate_pairs(kind: str, n: int, *, seed: int, min_length: int, max_length: int,
                   exclude: AbstractSet[str] = frozenset(), n_symbols: int = 10) -> list[Pair]:
    """``n`` pairs of a synthetic transduction, with distinct sources, deterministic from ``seed``.

    Each draw takes a length L uniformly from ``[min_length, max_length]`` and then the symbols
    uniformly; a source already drawn, or in ``exclude``, is drawn again. When the short lengths
    hold few sources (10 of length 1 with 10 symbols) they fill up and longer sources become
    more frequent than uniform lengths would give.

    - copy: L symbols from the first ``n_symbols`` of ``0-9a-z``; the target is the source;
    - reverse: the target is the source reversed;
    - sort: the target is the source sorted by symbol order (``0 < ... < 9 < a < ... < z``);
    - addition: ``a + b`` with each operand of L digits (L drawn for each), uniform among the
      numbers of that many digits, no leading zero (0 is the 1-digit number 0); the target is
      the digits of ``a + b``. Digits are space-separated: ``3 5 7 + 4 6`` -> ``4 0 3``;
    - dates: a uniform day of 1950-2049 written in one of :data:`DATE_FORMATS` (uniformly), the
      target its ISO form ``2017-03-05``. Character-level text, not space-separated tokens; the
      length range and ``n_symbols`` are ignored (but still validated).

    Args:
        kind: one of :data:`SYNTHETIC_KINDS`.
        n: the number of pairs, >= 1.
        seed: seeds the one ``random.Random`` every draw comes from.
        min_length, max_length: symbols per source, digits per operand for addition; both included.
        exclude: sources not to produce (e.g. another split's).
        n_symbols: the alphabet size of copy, reverse and sort, 1 to 36.
    Returns:
        ``n`` pairs in the order drawn, ``where`` reading ``KIND example I`` (I from 1).
    Raises:
        ConfigError: an unknown kind, ``n < 1`` or bounds outside ``1 <= min_length <= max_length``.
        DataError: fewer than ``n`` distinct sources within the bounds, or too few new ones
            found in ``50 * n + 1000`` draws (most of the space excluded).
    """
    _check_kind(kind)
    _check_bounds(min_length, max_length, n_symbols)
    if n < 1:
        raise ConfigError(f"the number of {kind} pairs must be >= 1, got {n}")
    space = count_sources(kind, min_length=min_length, max_length=max_length, n_symbols=n_symbols)
    if space < n:
        raise _too_few_sources(kind, n, space, min_length, max_length)
    rng = random.Random(seed)
    seen: set[str] = set()
    pairs: list[Pair] = []
    limit = 50 * n + 1000
    for _ in range(limit):
        source, target = _draw(kind, rng, min_length, max_length, n_symbols)
        if source in seen or source in exclude:
            continue
        seen.add(source)
        pairs.append(Pair(source, target, f"{kind} example {len(pairs) + 1}"))
        if len(pairs) == n:
            return pairs
    raise DataError(f"found only {len(pairs):,} of {n:,} distinct new {kind} sources in {limit:,} draws "
                    f"(lengths {min_length}-{max_length} hold {_count_text(space)}, {len(exclude):,} excluded); "
                    f"widen the length range or ask for fewer pairs")


def _derived_seed(seed: int, split: str) -> int:
    """A seed for one split, so each split's draws do not depend on the others' sizes."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{split}".encode()).digest()[:8], "big")


def generate_splits(kind: str, sizes: Mapping[str, int], *, seed: int, min_length: int, max_length: int,
                    n_symbols: int = 10) -> dict[str, list[Pair]]:
    """Train, valid and test pairs of a synthetic transduction, no source in two splits.

    Test is drawn first, then valid excluding test's sources, then train excluding both, each
    from its own seed derived from ``seed`` and the split's name: the test set of a seed stays
    the same whatever the train size. See :func:`generate_pairs` for the kinds and bounds.

    Args:
        sizes: pairs per split, keys exactly ``train``, ``valid`` and ``test``, each >= 1.
    Returns:
        ``{"train": [...], "valid": [...], "test": [...]}``, ``where`` reading
        ``KIND SPLIT example I``.
    Raises:
        ConfigError: other split names, a size < 1, an unknown kind or bad bounds.
        DataError: fewer distinct sources within the bounds than the sizes add up to.
    """
    _check_kind(kind)
    if set(sizes) != set(SPLITS):
        raise ConfigError(f"sizes must name exactly the splits train, valid and test, got {', '.join(map(str, sizes))}")
    space = count_sources(kind, min_length=min_length, max_length=max_length, n_symbols=n_symbols)
    total = sum(sizes.values())
    if space < total:
        raise _too_few_sources(kind, total, space, min_length, max_length)
    splits: dict[str, list[Pair]] = {}
    taken: set[str] = set()
    for split in ("test", "valid", "train"):
        pairs = generate_pairs(kind, sizes[split], seed=_derived_seed(seed, split), min_length=min_length,
                               max_length=max_length, exclude=taken, n_symbols=n_symbols)
        splits[split] = [pair._replace(where=f"{kind} {split} example {number}")
                         for number, pair in enumerate(pairs, start=1)]
        taken.update(pair.source for pair in pairs)
    return {split: splits[split] for split in SPLITS}


# --- parallel text ----------------------------------------------------------------------------


def read_parallel_tsv(path: Path) -> list[Pair]:
    """The ``source<TAB>target`` lines of ``path`` (UTF-8), in file order.

    Empty lines are skipped and a trailing ``\\r`` is removed; source and target are stripped of
    surrounding whitespace. A source may occur on several lines (several translations).

    Raises:
        DataError: an unreadable file, a file with no pairs, or a line that is not UTF-8, has no
            tab or more than one, or has an empty source or target, naming it as ``file:line``.
    """
    try:
        content = Path(path).read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {str(path)!r}: {error}") from None
    pairs = []
    for number, raw in enumerate(content.split(b"\n"), start=1):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError as error:
            raise DataError(f"{where} is not UTF-8 (byte {raw[error.start]:#04x} at column {error.start + 1}); "
                            f"save the file as UTF-8") from None
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            problem = "no tab" if len(fields) == 1 else f"{len(fields) - 1} tabs"
            raise DataError(f"{where} has {problem}; write each pair as source<TAB>target, "
                            f"one tab and none inside either side")
        source, target = fields[0].strip(), fields[1].strip()
        if not source:
            raise DataError(f"{where} has an empty source; write each pair as source<TAB>target, both non-empty")
        if not target:
            raise DataError(f"{where} has an empty target; write each pair as source<TAB>target, both non-empty")
        pairs.append(Pair(source, target, where))
    if not pairs:
        raise DataError(f"{path} has no pairs; write one source<TAB>target line per pair")
    return pairs


def normalize_tutorial(text: str) -> str:
    """``text`` normalised as the PyTorch seq2seq tutorial does (``normalizeString``).

    ASCII-fold (NFD, then drop the combining marks, Unicode category Mn), lowercase, strip, put
    a space before each ``.``, ``!`` and ``?``, turn every run of characters other than
    ``[a-zA-Z.!?]`` into one space, strip: ``"Je suis désolé!"`` -> ``"je suis desole !"``,
    ``"I'm OK."`` -> ``"i m ok ."``.
    """
    if not text.isascii():           # ASCII has no combining marks; skipping it is 5x faster
        text = "".join(char for char in unicodedata.normalize("NFD", text) if unicodedata.category(char) != "Mn")
    spaced = re.sub(r"([.!?])", r" \1", text.lower().strip())
    return re.sub(r"[^a-zA-Z.!?]+", " ", spaced).strip()


def tutorial_filter(pairs: Iterable[Pair], max_words: int = 10) -> list[Pair]:
    """The tutorial's English-French subset: pairs normalised by :func:`normalize_tutorial` on
    both sides, kept when each side has fewer than ``max_words`` words (split on spaces) and the
    English side, the source, starts with one of :data:`ENG_PREFIXES` ("i am ", "he is", ...).

    Returns:
        the kept pairs, normalised, in their order, with their ``where``.
    """
    if max_words < 1:
        raise ConfigError(f"max_words must be >= 1, got {max_words}")
    kept = []
    for pair in pairs:
        source = normalize_tutorial(pair.source)
        if not (source.startswith(ENG_PREFIXES) and len(source.split(" ")) < max_words):
            continue                 # most pairs end here, before the target is normalised
        target = normalize_tutorial(pair.target)
        if len(target.split(" ")) < max_words:
            kept.append(Pair(source, target, pair.where))
    return kept


def _split_counts(n_sources: int, fractions: Sequence[float]) -> list[int]:
    """``n_sources`` shared by ``fractions`` (largest remainders), each split at least one."""
    targets = [fraction / sum(fractions) * n_sources for fraction in fractions]
    counts = [int(target) for target in targets]
    by_remainder = sorted(range(len(targets)), key=lambda index: counts[index] - targets[index])
    for index in by_remainder[:n_sources - sum(counts)]:
        counts[index] += 1
    for index in range(len(counts)):
        if counts[index] == 0:
            counts[counts.index(max(counts))] -= 1
            counts[index] = 1
    return counts


def split_by_source(pairs: Sequence[Pair], fractions: Sequence[float] = (0.8, 0.1, 0.1),
                    seed: int = 0) -> dict[str, list[Pair]]:
    """Train, valid and test pairs with no source sentence in two splits.

    The distinct sources (exact strings) are shuffled with ``random.Random(seed)`` and dealt to
    train, valid and test by ``fractions`` of the distinct sources (largest remainders, each
    split at least one); every pair goes with its source, and each split keeps file order. A
    split's share of pairs can differ from its share of sources when sources repeat.

    Raises:
        ConfigError: ``fractions`` not three positive numbers summing to 1.
        DataError: fewer than three distinct sources.
    """
    if len(fractions) != 3 or any(not fraction > 0 for fraction in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ConfigError(f"fractions must be three positive numbers (train, valid, test) summing to 1, "
                          f"got {tuple(fractions)}")
    sources = list(dict.fromkeys(pair.source for pair in pairs))
    if len(sources) < len(SPLITS):
        raise DataError(f"{len(sources)} distinct source(s) cannot fill train, valid and test; "
                        f"give at least three different sources")
    random.Random(seed).shuffle(sources)
    split_of: dict[str, str] = {}
    start = 0
    for split, count in zip(SPLITS, _split_counts(len(sources), fractions)):
        split_of.update(dict.fromkeys(sources[start:start + count], split))
        start += count
    splits: dict[str, list[Pair]] = {split: [] for split in SPLITS}
    for pair in pairs:
        splits[split_of[pair.source]].append(pair)
    return splits
