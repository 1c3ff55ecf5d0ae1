"""Transduction data: synthetic targets by independent checks, distinct sources and disjoint
splits, the parallel TSV reader's errors, the tutorial's normalisation and filter, source splits."""

import datetime
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqlab.data.transduction import (
    ALPHABET,
    SYNTHETIC_KINDS,
    Pair,
    count_sources,
    generate_pairs,
    generate_splits,
    normalize_tutorial,
    read_parallel_tsv,
    split_by_source,
    tutorial_filter,
)
from seqlab.errors import ConfigError, DataError

PROPERTY = settings(max_examples=40, deadline=None)
SIZES = {"train": 200, "valid": 30, "test": 30}


def digits_value(text: str) -> int:
    digits = text.split()
    assert all(len(digit) == 1 and digit.isdigit() for digit in digits)
    assert digits[0] != "0" or len(digits) == 1, f"leading zero in {text!r}"
    return int("".join(digits))


def parse_date(source: str) -> datetime.date:
    """The date a source names, by ``strptime`` (its month and weekday names are English in the
    C locale), the ordinal suffix checked by hand; the weekday, when written, must be right."""
    ordinal = re.fullmatch(r"(\d+)(st|nd|rd|th) of (.*)", source)
    if ordinal:
        day, suffix, rest = ordinal.groups()
        expected = "th" if int(day) in (11, 12, 13) else {"1": "st", "2": "nd", "3": "rd"}.get(day[-1], "th")
        assert suffix == expected, source
        return datetime.datetime.strptime(f"{day} {rest}", "%d %B %Y").date()
    for layout in ("%B %d, %Y", "%d %b %Y", "%d/%m/%Y", "%Y.%m.%d", "%A, %B %d %Y", "%b %d %Y"):
        try:
            parsed = datetime.datetime.strptime(source, layout).date()
        except ValueError:
            continue
        return parsed
    raise AssertionError(f"no date layout reads {source!r}")


def check_pair(kind: str, pair: Pair, min_length: int, max_length: int) -> None:
    """The target of ``pair`` by a computation independent of the generator, and its length."""
    if kind == "dates":
        date = parse_date(pair.source)
        assert datetime.date(1950, 1, 1) <= date <= datetime.date(2049, 12, 31)
        assert datetime.date.fromisoformat(pair.target) == date and len(pair.target) == 10
        return
    if kind == "addition":
        left, plus, right = pair.source.partition(" + ")
        assert plus
        for operand in (left, right):
            assert min_length <= len(operand.split()) <= max_length
        assert digits_value(pair.target) == digits_value(left) + digits_value(right)
        return
    symbols = pair.source.split()
    assert " ".join(symbols) == pair.source               # single spaces, one symbol per token
    assert min_length <= len(symbols) <= max_length
    assert all(len(symbol) == 1 and symbol in "0123456789" for symbol in symbols)
    expected = {"copy": symbols, "reverse": list(reversed(symbols)), "sort": sorted(symbols)}[kind]
    assert pair.target.split() == expected


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_targets_are_correct_and_sources_distinct(kind):
    pairs = generate_pairs(kind, 300, seed=3, min_length=1, max_length=6)
    assert len(pairs) == 300
    assert len({pair.source for pair in pairs}) == 300
    for pair in pairs:
        check_pair(kind, pair, 1, 6)
    assert pairs[2].where == f"{kind} example 3"


def test_dates_use_every_format_and_the_weekday_is_right():
    pairs = generate_pairs("dates", 700, seed=0, min_length=1, max_length=1)
    layouts = Counter(re.sub(r"[a-z]+", "w", re.sub(r"\d", "9", pair.source)) for pair in pairs)
    assert len(layouts) >= 7            # seven formats; "9 w 9999" and "99 w 9999" are one
    weekdays = 0
    for pair in pairs:
        first = pair.source.split(",")[0]
        if first.endswith("day"):                    # strptime reads %A but does not check it
            weekdays += 1
            assert parse_date(pair.source).strftime("%A").lower() == first
    assert weekdays > 50


def test_addition_hand_worked_and_lengths_count_digits():
    pairs = generate_pairs("addition", 200, seed=1, min_length=3, max_length=3)
    for pair in pairs:
        left, right = pair.source.split(" + ")
        assert len(left.split()) == len(right.split()) == 3
        assert digits_value(left) >= 100 and digits_value(right) >= 100
    zeros = generate_pairs("addition", 100, seed=1, min_length=1, max_length=1)
    assert len(zeros) == 100            # all 10 x 10 one-digit sums, 0 + 0 among them
    assert Pair("0 + 0", "0", "") in [pair._replace(where="") for pair in zeros]


def test_sort_orders_letters_after_digits():
    pairs = generate_pairs("sort", 50, seed=2, min_length=4, max_length=8, n_symbols=20)
    assert any(symbol in ALPHABET[10:20] for pair in pairs for symbol in pair.source.split())
    for pair in pairs:
        assert pair.target.split() == sorted(pair.source.split(), key=ALPHABET.index)
        assert set(pair.source.split()) <= set(ALPHABET[:20])


@PROPERTY
@given(kind=st.sampled_from(SYNTHETIC_KINDS), seed=st.integers(0, 2**32), min_length=st.integers(1, 5),
       extra=st.integers(0, 5), n=st.integers(1, 40))
def test_any_seed_and_range_gives_correct_distinct_pairs_deterministically(kind, seed, min_length, extra, n):
    max_length = min_length + extra
    if count_sources(kind, min_length=min_length, max_length=max_length) < 3 * n:
        return                          # near a small space's size the draws get slow; tested below
    pairs = generate_pairs(kind, n, seed=seed, min_length=min_length, max_length=max_length)
    assert pairs == generate_pairs(kind, n, seed=seed, min_length=min_length, max_length=max_length)
    assert len({pair.source for pair in pairs}) == n
    for pair in pairs:
        check_pair(kind, pair, min_length, max_length)


def test_lengths_cover_the_whole_range():
    pairs = generate_pairs("copy", 500, seed=0, min_length=3, max_length=7)
    assert Counter(len(pair.source.split()) for pair in pairs).keys() == {3, 4, 5, 6, 7}


def test_seeds_differ_and_exclude_is_respected():
    first = generate_pairs("reverse", 50, seed=0, min_length=2, max_length=6)
    second = generate_pairs("reverse", 50, seed=1, min_length=2, max_length=6)
    assert first != second
    excluded = {pair.source for pair in first}
    others = generate_pairs("reverse", 200, seed=0, min_length=2, max_length=6, exclude=excluded)
    assert not excluded & {pair.source for pair in others}


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_splits_are_disjoint_deterministic_and_named(kind):
    splits = generate_splits(kind, SIZES, seed=5, min_length=1, max_length=5)
    assert list(splits) == ["train", "valid", "test"]
    assert {split: len(pairs) for split, pairs in splits.items()} == SIZES
    sources = [{pair.source for pair in pairs} for pairs in splits.values()]
    assert sum(map(len, sources)) == len(set().union(*sources)) == sum(SIZES.values())
    assert splits == generate_splits(kind, SIZES, seed=5, min_length=1, max_length=5)
    assert splits["valid"][2].where == f"{kind} valid example 3"
    # Test is drawn first from its own seed: a bigger train split leaves it as it is.
    bigger = generate_splits(kind, {**SIZES, "train": 400}, seed=5, min_length=1, max_length=5)
    assert bigger["test"] == splits["test"] and bigger["valid"] == splits["valid"]


def test_the_whole_space_can_be_drawn():
    pairs = generate_pairs("reverse", 110, seed=0, min_length=1, max_length=2)
    assert len({pair.source for pair in pairs}) == 110 == count_sources("reverse", min_length=1, max_length=2)


@pytest.mark.parametrize("call, message", [
    (lambda: generate_pairs("reverse", 111, seed=0, min_length=1, max_length=2), "only 110 distinct sources"),
    (lambda: generate_pairs("addition", 101, seed=0, min_length=1, max_length=1), "only 100 distinct sources"),
    (lambda: generate_splits("copy", {"train": 100, "valid": 5, "test": 6}, seed=0, min_length=1, max_length=2),
     "only 110 distinct sources, fewer than the 111"),
    (lambda: generate_pairs("copy", 11, seed=0, min_length=1, max_length=2,     # 10 of 110 left
                            exclude={str(digit) for digit in range(10)}
                            | {f"{first} {second}" for first in "0123456789" for second in "012345678"}),
     "found only 10 of 11"),
])
def test_too_small_a_space_is_a_data_error(call, message):
    with pytest.raises(DataError, match=message):
        call()


@pytest.mark.parametrize("call, message", [
    (lambda: generate_pairs("rotate", 5, seed=0, min_length=1, max_length=3), "copy, reverse, sort, addition, dates"),
    (lambda: generate_pairs("copy", 0, seed=0, min_length=1, max_length=3), ">= 1"),
    (lambda: generate_pairs("copy", 5, seed=0, min_length=0, max_length=3), "1 <= min_length"),
    (lambda: generate_pairs("copy", 5, seed=0, min_length=4, max_length=3), "1 <= min_length"),
    (lambda: generate_pairs("copy", 5, seed=0, min_length=1, max_length=3, n_symbols=37), "n_symbols"),
    (lambda: generate_splits("copy", {"train": 5, "dev": 1, "test": 1}, seed=0, min_length=1, max_length=3),
     "train, valid and test"),
    (lambda: generate_splits("copy", {"train": 5, "valid": 0, "test": 1}, seed=0, min_length=1, max_length=3),
     ">= 1"),
])
def test_bad_settings_are_config_errors(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


# --- parallel TSV ---------------------------------------------------------------------------------


def test_read_parallel_tsv(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes("Go.\tVa !\r\n\nJe suis désolé!\t I'm sorry. \n".encode())
    assert read_parallel_tsv(path) == [Pair("Go.", "Va !", f"{path}:1"),
                                       Pair("Je suis désolé!", "I'm sorry.", f"{path}:3")]


@pytest.mark.parametrize("content, message", [
    (b"a\tb\nno tab here\n", r":2 has no tab; write each pair as source<TAB>target"),
    (b"a\tb\n\na\tb\tc\n", r":3 has 2 tabs"),
    (b"a\tb\n\tb\n", r":2 has an empty source"),
    (b"a\tb\n  \tb\n", r":2 has an empty source"),
    (b"a\tb\na\t\r\n", r":2 has an empty target"),
    (b"a\tb\nd\xe9j\xe0\tvu\n", r":2 is not UTF-8 \(byte 0xe9 at column 2\)"),
    (b"", r"has no pairs"),
    (b"\n\r\n\n", r"has no pairs"),
])
def test_read_parallel_tsv_errors_name_the_line(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as caught:
        read_parallel_tsv(path)
    assert "\n" not in str(caught.value)


def test_read_parallel_tsv_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_parallel_tsv(tmp_path / "absent.tsv")


# --- the tutorial's normalisation and filter ----------------------------------------------------------


@pytest.mark.parametrize("text, normalised", [
    ("Je suis désolé!", "je suis desole !"),
    ("I'm OK.", "i m ok ."),
    ("  Ça va ?  ", "ca va ?"),
    ("Wait... what?!", "wait . . . what ? !"),
    ("I’m 20 years old.", "i m years old ."),       # digits and the curly apostrophe go
    ("Où est l'hôtel—là-bas ?", "ou est l hotel la bas ?"),
    ("", ""),
])
def test_normalize_tutorial(text, normalised):
    assert normalize_tutorial(text) == normalised


def test_tutorial_filter_prefixes_and_lengths():
    pairs = [
        Pair("I'm OK.", "Je vais bien.", "1"),
        Pair("You are nice.", "Tu es gentil.", "2"),
        Pair("Hello!", "Salut !", "3"),                                       # no prefix
        Pair("I'm the one who did all of this.", "C'est moi.", "4"),          # 10 words: too long
        Pair("I'm the one who did all this.", "C'est moi.", "5"),             # 9 words: kept
        Pair("He is here.", "Il est ici, il est là, il est partout !", "6"),  # French side 10 words
        Pair("Hey, I'm here.", "Je suis là.", "7"),                           # prefix not at the start
    ]
    kept = tutorial_filter(pairs)
    assert [pair.where for pair in kept] == ["1", "2", "5"]
    assert kept[0] == Pair("i m ok .", "je vais bien .", "1")
    assert [pair.where for pair in tutorial_filter(pairs, max_words=5)] == ["1", "2"]   # 4 words each side


def test_tutorial_filter_on_eng_fra(shared_data):
    path = shared_data / "eng_fra" / "eng-fra.txt"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    pairs = read_parallel_tsv(path)
    assert len(pairs) == 142_787
    kept = tutorial_filter(pairs)
    assert len(kept) == 10_922                       # the data README's count
    assert len({pair.source for pair in kept}) == 6_786
    english = {word for pair in kept for word in pair.source.split(" ")}
    french = {word for pair in kept for word in pair.target.split(" ")}
    assert (len(english) + 2, len(french) + 2) == (2_843, 4_414)   # with SOS and EOS, as the README
    splits = split_by_source(kept, seed=0)
    assert sum(map(len, splits.values())) == len(kept)
    sources = [{pair.source for pair in split} for split in splits.values()]
    assert not (sources[0] & sources[1] or sources[0] & sources[2] or sources[1] & sources[2])


# --- splits by source -------------------------------------------------------------------------------


def test_split_by_source_holds_out_whole_sources(tmp_path):
    lines = []
    for number in range(40):
        for translation in range(1 + number % 3):                       # 1 to 3 targets per source
            lines.append(f"source {number}\ttarget {number}.{translation}")
    path = tmp_path / "parallel.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pairs = read_parallel_tsv(path)
    splits = split_by_source(pairs, fractions=(0.5, 0.25, 0.25), seed=7)
    assert splits == split_by_source(pairs, fractions=(0.5, 0.25, 0.25), seed=7)
    assert splits != split_by_source(pairs, fractions=(0.5, 0.25, 0.25), seed=8)
    sources = {split: {pair.source for pair in split_pairs} for split, split_pairs in splits.items()}
    assert [len(sources[split]) for split in ("train", "valid", "test")] == [20, 10, 10]
    assert not (sources["train"] & sources["valid"] or sources["train"] & sources["test"]
                or sources["valid"] & sources["test"])
    by_source = Counter(pair.source for pair in pairs)
    for split, split_pairs in splits.items():
        assert all(Counter(pair.source for pair in split_pairs)[source] == by_source[source]
                   for source in sources[split])                         # every translation goes along
        lines_in_order = [int(pair.where.rsplit(":", 1)[1]) for pair in split_pairs]
        assert lines_in_order == sorted(lines_in_order)                   # file order is kept
    assert sorted(pair.where for split in splits.values() for pair in split) == sorted(pair.where for pair in pairs)


def test_split_by_source_gives_every_split_one():
    pairs = [Pair(f"s{number}", "t", str(number)) for number in range(3)] * 2
    splits = split_by_source(pairs)                                      # 0.8 * 3 would leave none
    assert [len({pair.source for pair in splits[split]}) for split in ("train", "valid", "test")] == [1, 1, 1]
    assert all(len(split) == 2 for split in splits.values())
    five = split_by_source([Pair(f"s{number}", "t", "") for number in range(5)])
    assert [len(five[split]) for split in ("train", "valid", "test")] == [3, 1, 1]


@pytest.mark.parametrize("fractions", [(0.8, 0.2), (0.8, 0.2, 0.0), (0.5, 0.3, 0.3), (1.2, -0.1, -0.1)])
def test_split_by_source_bad_fractions(fractions):
    pairs = [Pair(f"s{number}", "t", "") for number in range(10)]
    with pytest.raises(ConfigError, match="three positive numbers"):
        split_by_source(pairs, fractions=fractions)


def test_split_by_source_too_few_sources():
    pairs = [Pair("same", f"t{number}", "") for number in range(10)] + [Pair("other", "t", "")]
    with pytest.raises(DataError, match="2 distinct source"):
        split_by_source(pairs)
