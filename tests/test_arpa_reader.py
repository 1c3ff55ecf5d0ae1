"""The vectorised ARPA reader and the binary cache: a written file reads back as exactly the model
that wrote it, the fast reader equals the line-by-line reference, malformed files fail naming
the line, and a cache round-trips bit for bit or fails with a CheckpointError."""

import json
import math
import mmap

import numba
import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import given, settings, strategies as st

from seqlab.classical import arpa_reader, decimals
from seqlab.classical.arpa import LN10, ZERO_LOG10, WordVocabulary, fit_sentences, write_arpa
from seqlab.classical.arpa_reader import UNICODE_SPACES, _plain_utf8, read_arpa_file, read_arpa_reference
from seqlab.classical.decimals import _parse_packed, parse_decimals
from seqlab.classical import compiled as compiled_loops, ngram_cache
from seqlab.classical.ngram_cache import load_arpa, load_binary, load_scorer, save_binary
from seqlab.classical.ngram_scoring import score_sentences, scorer_for
from seqlab.data.corpora import builtin_corpus
from seqlab.errors import CheckpointError, DataError


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return [line for line in builtin_corpus().text.splitlines() if line.strip()][:1200]


def as_written(log_values: torch.Tensor) -> torch.Tensor:
    """What a model value becomes through ``write_arpa`` (log10, 8 significant digits, -99 for
    zero) and back: the value a reader must return, to the bit."""
    log10 = (log_values.double() / LN10).clamp(min=ZERO_LOG10).tolist()
    return torch.tensor([float("%.8g" % value) for value in log10], dtype=torch.float64).mul(LN10).float()


def assert_same_model(read, expected, vocabulary_read, vocabulary_expected, written=True):
    assert vocabulary_read == vocabulary_expected and read.order == expected.order
    for k, (table, reference) in enumerate(zip(read.tables, expected.tables), start=1):
        assert torch.equal(table.keys, reference.keys), f"order {k} keys"
        for name in ("log_prob", "log_backoff"):
            want = getattr(reference, name)
            if written:
                want = as_written(want)
                if k == 1 and name == "log_prob":        # <s> is written -99; <unk> as the model has it
                    want[read.start_id] = ZERO_LOG10 * LN10
            assert torch.equal(getattr(table, name), want), f"order {k} {name}"


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_a_written_file_reads_back_exactly_and_as_the_reference_reads_it(order, sentences, tmp_path):
    model, vocabulary = fit_sentences(sentences, order=order, prune_singletons=order >= 4)
    path = tmp_path / "model.arpa"
    write_arpa(model, vocabulary, path)
    fast, fast_vocabulary = read_arpa_file(path)
    assert_same_model(fast, model, fast_vocabulary, vocabulary)
    reference, reference_vocabulary = read_arpa_reference(path)
    assert_same_model(fast, reference, fast_vocabulary, reference_vocabulary, written=False)


def test_files_in_other_layouts_read_as_the_reference_reads_them(sentences, tmp_path):
    """Spaces for tabs, CRLF line ends, blank lines, n-grams out of order, <unk> absent, -inf and
    exponents, whitespace and line breaks above ASCII, bytes that are not UTF-8: the fast path
    takes what it can and hands the rest to the reference, which reads it or fails alike."""
    model, vocabulary = fit_sentences(sentences[:300], order=3)
    path = tmp_path / "model.arpa"
    write_arpa(model, vocabulary, path)
    lines = path.read_text().splitlines()
    body = [i for i, line in enumerate(lines) if "\t" in line]
    shuffled = list(lines)
    for start in (body[0], body[-1]):                  # reverse the n-grams of the first and last sections
        end = start
        while end < len(lines) and "\t" in lines[end]:
            end += 1
        shuffled[start:end] = lines[start:end][::-1]
    variants = {
        "shuffled": "\n".join(shuffled) + "\n",
        "spaces": "\n".join(line.replace("\t", "  ") for line in lines) + "\n",
        "crlf": "\r\n".join(lines) + "\r\n",
        "blank lines": "\n\n".join(lines) + "\n",
        "exponents and -inf": "\n".join(exponent_form(line).replace("-9.900000000000e+01\t<s>", "-inf\t<s>")
                                        for line in lines) + "\n",
        "no-break spaces after words": "\n".join(line.replace("\t", "\u00a0\t").replace("\u00a0\t", "\t", 1)
                                                  for line in lines) + "\n",
        "ideographic spaces between words": "\n".join(line.replace(" ", "\u3000") for line in lines) + "\n",
        "a line separator": "\n".join(lines[:12] + [lines[12].replace("\t", "\u2028", 1)] + lines[13:]) + "\n",
        "not UTF-8": "\n".join(lines) + "\n",
        "no <unk>": "\n".join(line for line in lines if "\t<unk>" not in line).replace(
            f"ngram 1={len(vocabulary.words) + 1}", f"ngram 1={len(vocabulary.words)}"),
    }
    for name, text in variants.items():
        path.write_text(text, newline="")
        if name == "not UTF-8":
            path.write_bytes(text.encode().replace(b"\t", b"\xff\t", 1))
        try:
            reference, reference_vocabulary = read_arpa_reference(path)
        except DataError as error:                     # then the fast reader fails alike
            with pytest.raises(DataError) as raised:
                read_arpa_file(path)
            assert str(raised.value) == str(error), name
            continue
        fast, fast_vocabulary = read_arpa_file(path)
        assert_same_model(fast, reference, fast_vocabulary, reference_vocabulary, written=False)


@pytest.mark.parametrize("blocks", [(1 << 14, 1 << 16), (3, 5)])
def test_words_of_every_length_are_found_as_the_reference_finds_them(blocks, tmp_path, monkeypatch):
    """Words of 1 to 25 bytes (one uint64 chunk, exactly 8 bytes, several chunks, non-ASCII),
    and a long word whose first 8 bytes are a short 1-gram: found, or not, exactly; numbers and
    words parsed in blocks of any size."""
    monkeypatch.setattr(decimals, "BLOCK", blocks[0])
    monkeypatch.setattr(arpa_reader, "WORD_BLOCK", blocks[1])
    words = ["abcdefghijklmnopqrstuvwxy"[:n] for n in range(1, 26)] + ["ça", "naïveté-über-straße"]
    sentences = [" ".join(words[i::3]) for i in range(3)] + [" ".join(reversed(words))]
    model, vocabulary = fit_sentences(sentences, order=3)
    path = tmp_path / "model.arpa"
    write_arpa(model, vocabulary, path)
    fast, fast_vocabulary = read_arpa_file(path)
    assert_same_model(fast, model, fast_vocabulary, vocabulary)
    text = path.read_text()
    bigram = next(line for line in text.splitlines() if "\t" in line and line.split("\t")[1].endswith(" abcdefgh"))
    for unknown in ("abcdefghZ", "abcdefghijklmnopqrstZ", "abcdefZ", "naïveté-über-straßZ"):
        path.write_text(text.replace(bigram, bigram.replace(" abcdefgh", f" {unknown}"), 1))
        for reader in (read_arpa_file, read_arpa_reference):
            with pytest.raises(DataError, match=f"the word '{unknown}' is not among the 1-grams"):
                reader(path)


def test_unicode_spaces_are_the_ones_python_splits_at():
    assert set(UNICODE_SPACES) == {chr(c) for c in range(128, 0x110000) if chr(c).isspace()}
    for space in UNICODE_SPACES:
        for text in (f"{space}abc", f"ab{space}c", f"abc{space}"):
            data = text.encode("utf-8")
            assert not _plain_utf8(np.frombuffer(data + bytes(16), np.uint8), len(data)), repr(text)
    data = "naïve 日本語 \u2027\u202a\u3001\u1681 ç\t-1.5\n".encode("utf-8")   # neighbours of spaces
    assert _plain_utf8(np.frombuffer(data + bytes(16), np.uint8), len(data))
    assert not _plain_utf8(np.frombuffer(b"ab\xff" + bytes(16), np.uint8), 3)


def exponent_form(line: str) -> str:
    """An ARPA line with its probability written as ``-1.234567800000e-01``."""
    fields = line.split("\t")
    if len(fields) < 2:
        return line
    return "\t".join(["%.12e" % float(fields[0])] + fields[1:])


def parse_as_in_a_file(texts: list[str]) -> tuple[np.ndarray | None, np.ndarray]:
    """``_parse_decimals`` of tokens laid out as in a file: the first at byte 0 (before the 16
    bytes the packed parser reads back from a token's end), the others after a line of text.
    Also returns whether ``_parse_packed`` took each token."""
    data, starts = b"", []
    for i, text in enumerate(texts):
        data += b"" if i == 0 else b"\t<s> the cat sat on the mat\n"
        starts.append(len(data))
        data += text.encode()
    buffer = np.frombuffer(data + b"\n" + bytes(16), np.uint8)
    starts, lengths = np.array(starts), np.array([len(text.encode()) for text in texts])
    return parse_decimals(buffer, starts, lengths, data), _parse_packed(buffer, starts, lengths)[1]


def assert_parsed_as_python_float(texts: list[str]) -> None:
    parsed, _ = parse_as_in_a_file(texts)
    expected = []
    for text in texts:
        try:
            expected.append(float(text))
        except ValueError:
            expected.append(math.nan)
    if any(math.isnan(value) or value == math.inf for value in expected):
        assert parsed is None, texts
    else:
        assert parsed is not None, texts
        for text, value, want in zip(texts, parsed, expected):
            assert value == want and math.copysign(1, value) == math.copysign(1, want), (text, value, want)


@settings(max_examples=200, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False, width=64),
       form=st.sampled_from(["%.8g", "%.17g", "%r", "%.3f", "%.12e", "%.0f", "%E", "%.16f", "%.6f"]))
def test_decimals_parse_exactly_as_python_float(value, form):
    text = form % value
    assert_parsed_as_python_float([text, text, "-1.0282758"])
    assert_parsed_as_python_float(["-0.27653734", text])


@settings(max_examples=300, deadline=None)
@given(text=st.from_regex(r"\A[-+]?[0-9]{0,18}\.?[0-9]{0,18}([eE][-+]?[0-9]{0,3})?\Z")
       | st.text(alphabet="0123456789.-+eE", min_size=1, max_size=20))
def test_decimal_like_tokens_parse_as_python_float_or_fail(text):
    """The packed parser's edges (16 digits, a dot first or last, two dots, signs, a lone '-')
    and the general parser's: a token parses to ``float(text)`` or the whole parse fails."""
    assert_parsed_as_python_float(["-1.5", text])


def test_the_packed_parser_takes_what_seqlab_and_kenlm_write():
    texts = ["-1.0282758", "-0.27653734", "-0.012345678", "0", "-99", "-0", "5.", ".5", "-.5",
             "1234567890123456", "-12345678.0123456", "1234.56789012345"]
    parsed, packed = parse_as_in_a_file(["0"] + texts)
    assert packed[1:].all()
    assert parsed[1:].tolist() == [float(text) for text in texts]
    assert math.copysign(1, parsed[texts.index("-0") + 1]) == -1.0
    _, packed = parse_as_in_a_file(["0", "9007199254740993", "-1e-05", "+1.5", "1.2.3", "-", ".", "0x1",
                                    "12345678901234567"])
    assert not packed[1:].any()                  # >= 2^53, exponent, '+', two dots, no digit, 17 digits


# A small file and its malformed variants: (text, message, line).
GOOD = """\
\\data\\
ngram 1=5
ngram 2=3
ngram 3=2

\\1-grams:
-1.0\t</s>
-99\t<s>\t-0.5
-0.8\tthe\t-0.3
-1.1\tcat\t-0.2
-1.2\tsat

\\2-grams:
-0.3\t<s> the\t-0.1
-0.6\tthe cat\t-0.05
-0.4\tcat sat

\\3-grams:
-0.2\t<s> the cat
-0.1\tthe cat sat

\\end\\
"""

MALFORMED = {
    "missing \\data\\": (GOOD.replace("\\data\\\n", ""), "expected \\data\\", 1),
    "blank": ("\n \n", "the file ends before the \\data\\ header", 3),
    "count does not match": (GOOD.replace("ngram 2=3", "ngram 2=4"), "declares 4 2-grams but the section has 3", 18),
    "more n-grams than counted": (GOOD.replace("ngram 1=5", "ngram 1=4"), "more 1-grams than the 4", 11),
    "non-numeric probability": (GOOD.replace("-0.6\tthe cat", "-0.6x\tthe cat"), "probability '-0.6x' is not a number", 15),
    "NaN back-off": (GOOD.replace("\tcat\t-0.2", "\tcat\tnan"), "back-off weight 'nan' is not a log10 value", 10),
    # A 3-gram among 2-grams reads as a 2-gram with a back-off weight, as in every ARPA reader.
    "wrong order": (GOOD.replace("-0.4\tcat sat", "-0.4\tthe cat sat the"), "a 2-gram line has 5 fields", 16),
    "a 3-gram among 2-grams": (GOOD.replace("-0.4\tcat sat", "-0.4\tthe cat sat"), "back-off weight 'sat'", 16),
    "back-off at the top": (GOOD.replace("\tthe cat sat", "\tthe cat sat\t-0.1"), "has 5 fields, expected 4", 20),
    "unknown word": (GOOD.replace("-0.4\tcat sat", "-0.4\tcat sits"), "'sits' is not among the 1-grams", 16),
    # No 1-gram is longer than 8 bytes; an unknown 9-byte word starts with an 8-byte 1-gram.
    "unknown long word": (GOOD.replace("sat", "abcdefgh").replace("cat abcdefgh\n", "cat abcdefghX\n"),
                          "'abcdefghX' is not among the 1-grams", 16),
    "missing context": (GOOD.replace("\tthe cat sat", "\tcat the sat"), "context 'cat the' of this 3-gram", 20),
    "repeated n-gram": (GOOD.replace("-0.4\tcat sat", "-0.4\tthe cat"), "this 2-gram is listed twice", 16),
    "repeated 1-gram": (GOOD.replace("\tsat\n", "\tcat\n"), "this 1-gram is listed twice", 11),
    "truncated": (GOOD[: GOOD.index("\\3-grams:")], "ends before", 18),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_fail_naming_the_line(case, tmp_path):
    text, message, line = MALFORMED[case]
    path = tmp_path / "bad.arpa"
    path.write_text(text)
    for reader in (read_arpa_file, read_arpa_reference):
        with pytest.raises(DataError) as raised:
            reader(path)
        assert message in str(raised.value) and f"line {line} of bad.arpa" in str(raised.value), str(raised.value)


@pytest.mark.parametrize("spelled_below", [0, 2**63])
def test_contexts_are_found_by_spelling_and_by_search_alike(spelled_below, sentences, tmp_path, monkeypatch):
    """Contexts are found as base-n_ids numbers while they fit in int64 (the threshold 0 forces
    ``counts.prefix_indices`` from order 3 on, as for a vocabulary too large to spell)."""
    monkeypatch.setattr(arpa_reader, "SPELLED_BELOW", spelled_below)
    model, vocabulary = fit_sentences(sentences[:400], order=5)
    path = tmp_path / "model.arpa"
    write_arpa(model, vocabulary, path)
    lines = path.read_text().splitlines()
    assert lines[-2:] == ["", "\\end\\"] and lines[-4].count(" ") == 4
    lines[-4:-2] = lines[-4:-2][::-1]                      # the last two 5-grams out of order
    path.write_text("\n".join(lines) + "\n")
    fast, fast_vocabulary = read_arpa_file(path)
    assert_same_model(fast, model, fast_vocabulary, vocabulary)
    text, message, line = MALFORMED["missing context"]
    path.write_text(text)
    with pytest.raises(DataError, match=f"line {line} of model.arpa: the {message}"):
        read_arpa_file(path)


def test_the_small_file_reads(tmp_path):
    path = tmp_path / "good.arpa"
    path.write_text(GOOD)
    model, vocabulary = read_arpa_file(path)
    assert vocabulary.words == ("<unk>", "</s>", "the", "cat", "sat")
    assert [len(table) for table in model.tables] == [6, 3, 2]
    the, cat, sat, start = 2, 3, 4, model.start_id
    bigrams = model.tables[1]
    assert bigrams.keys.tolist() == [the * 6 + cat, cat * 6 + sat, start * 6 + the]     # sorted by prefix
    assert bigrams.log_prob.tolist() == torch.tensor([-0.6, -0.4, -0.3], dtype=torch.float64).mul(LN10).float().tolist()
    assert bigrams.log_backoff.tolist() == torch.tensor([-0.05, 0, -0.1], dtype=torch.float64).mul(LN10).float().tolist()


def test_binary_cache_round_trips_bit_for_bit(sentences, tmp_path):
    model, vocabulary = fit_sentences(sentences, order=4, estimator="kneser_ney")
    save_binary(model, vocabulary, tmp_path / "model.ngram")
    loaded, loaded_vocabulary = load_binary(tmp_path / "model.ngram")
    assert loaded.config == model.config and loaded_vocabulary == vocabulary
    assert len(loaded_vocabulary) == len(vocabulary) and loaded_vocabulary.end_id == vocabulary.end_id
    assert torch.equal(loaded.discounts, model.discounts)
    assert_same_model(loaded, model, loaded_vocabulary, vocabulary, written=False)


def test_the_cache_is_a_safetensors_file_that_safetensors_reads(sentences, tmp_path):
    """seqlab writes the file itself (each array in one write): safetensors' own reader must read
    every tensor and the metadata as seqlab's reader does, and each tensor starts aligned to its type."""
    model, vocabulary = fit_sentences(sentences[:300], order=3)
    path = tmp_path / "model.ngram"
    save_binary(model, vocabulary, path, source="made here")
    tensors = ngram_cache.MappedTensors(path)
    metadata, mapped = tensors.metadata, {name: tensors.take(name) for name in tensors.names()}
    with safetensors.safe_open(str(path), framework="numpy") as handle:
        assert handle.metadata() == metadata and metadata["source"] == "made here"
        assert sorted(handle.keys()) == sorted(mapped)
        for name in handle.keys():
            np.testing.assert_array_equal(handle.get_tensor(name), mapped[name], err_msg=name)
            assert handle.get_tensor(name).dtype == mapped[name].dtype, name
    assert all(array.ctypes.data % array.dtype.itemsize == 0 for array in mapped.values())


def test_the_cache_is_written_whole_when_the_system_writes_a_little_at_a_time(sentences, tmp_path, monkeypatch):
    """``os.writev`` may write fewer bytes than asked (a call writes at most ~2 GiB) and takes at
    most IOV_MAX buffers: the writer goes on until every byte is written."""
    model, vocabulary = fit_sentences(sentences[:300], order=3)
    save_binary(model, vocabulary, tmp_path / "whole.ngram", source="s")
    real_writev = ngram_cache.os.writev

    def a_little(fd, buffers):
        assert len(buffers) <= 3
        return real_writev(fd, [bytes(memoryview(buffers[0])[:777])])
    monkeypatch.setattr(ngram_cache, "IOV_MAX", 3)
    monkeypatch.setattr(ngram_cache.os, "writev", a_little)
    save_binary(model, vocabulary, tmp_path / "little.ngram", source="s")
    assert (tmp_path / "little.ngram").read_bytes() == (tmp_path / "whole.ngram").read_bytes()


def respelled(vocabulary: torch.Tensor, index: int, spelling: str) -> torch.Tensor:
    """The cached vocabulary's bytes with word ``index`` spelled ``spelling`` (as many words)."""
    words = bytes(vocabulary.numpy()).decode("utf-8").split("\n")
    words[index] = spelling
    return torch.frombuffer(bytearray("\n".join(words).encode("utf-8")), dtype=torch.uint8)


def test_corrupt_or_foreign_caches_raise_checkpoint_error(sentences, tmp_path):
    """What every reader relies on (the header, types, sizes) is checked at load; the order of the
    keys at the model's first search and the words when they are first read (a scorer whose word
    table came with the cache needs neither). Each fails as a one-line CheckpointError."""
    model, vocabulary = fit_sentences(sentences[:200], order=3)
    path = tmp_path / "model.ngram"
    save_binary(model, vocabulary, path)
    tensors = safetensors.torch.load_file(str(path))
    metadata = {"format": "seqlab-ngram-tables", "version": "1",
                "config": '{"vocab_size": %d, "order": 3}' % len(vocabulary.words)}
    at_load = {
        "missing": None,
        "garbage": b"not a safetensors file",
        "truncated": path.read_bytes()[:-40],
        "version": ({**tensors}, {**metadata, "version": "99"}),
        "foreign": ({"weight": torch.zeros(3)}, {"format": "something else"}),
        "sizes": ({**tensors, "order3.log_prob": tensors["order3.log_prob"][:-1]}, metadata),
        "missing order": ({k: v for k, v in tensors.items() if not k.startswith("order3.")}, metadata),
        "a word too many": ({**tensors, "vocabulary": respelled(tensors["vocabulary"], 5, "a\nb")}, metadata),
    }
    searched = lambda model, vocabulary: model.log_prob(torch.tensor([[2, 3, 4]]))     # noqa: E731
    words = lambda model, vocabulary: vocabulary.words                                # noqa: E731
    duplicate = bytes(tensors["vocabulary"].numpy()).decode("utf-8").split("\n")[6]
    later = {
        "unsorted keys": ({**tensors, "order2.keys": tensors["order2.keys"].flip(0)}, searched),
        "word with a tab": ({**tensors, "vocabulary": respelled(tensors["vocabulary"], 5, "a\tb")}, words),
        "word with a Unicode space": ({**tensors, "vocabulary": respelled(tensors["vocabulary"], 5, "a\u00a0b")},
                                      words),
        "empty word": ({**tensors, "vocabulary": respelled(tensors["vocabulary"], 5, "")}, words),
        "repeated word": ({**tensors, "vocabulary": respelled(tensors["vocabulary"], 5, duplicate)}, words),
        "<s> as a word": ({**tensors, "vocabulary": respelled(tensors["vocabulary"], 5, "<s>")}, words),
        "not UTF-8": ({**tensors, "vocabulary": torch.cat([tensors["vocabulary"][:-1], torch.tensor([255],
                                                                                                     dtype=torch.uint8)])},
                      words),
    }
    for name, case in at_load.items():
        bad = tmp_path / f"{name}.ngram"
        if isinstance(case, bytes):
            bad.write_bytes(case)
        elif case is not None:
            safetensors.torch.save_file(case[0], str(bad), metadata=case[1])
        with pytest.raises(CheckpointError) as raised:
            load_binary(bad)
        assert "\n" not in str(raised.value), name
    for name, (changed, use) in later.items():
        bad = tmp_path / f"{name}.ngram"
        safetensors.torch.save_file(changed, str(bad), metadata=metadata)
        loaded = load_binary(bad)
        for _ in range(2):                                          # and again: a failed check holds
            with pytest.raises(CheckpointError, match="corrupt") as raised:
                use(*loaded)
            assert str(bad) in str(raised.value) and "\n" not in str(raised.value), name
    header = safetensors.safe_open(str(path), "pt").metadata()       # version 3: the header gives length and </s>
    for name, end_id in {"end not a word": "99999", "end not an id": '"x"', "end elsewhere": "2"}.items():
        bad = tmp_path / f"{name}.ngram"
        safetensors.torch.save_file(tensors, str(bad), metadata={**header, "end_id": end_id})
        with pytest.raises(CheckpointError, match="</s>"):
            load_binary(bad)
    for name, (changed, changed_header) in {
            "a word too many": ({**tensors, "vocabulary": respelled(tensors["vocabulary"], 5, "zzqa\nzzqb")},
                                header)}.items():
        bad = tmp_path / f"{name}.ngram"
        safetensors.torch.save_file(changed, str(bad), metadata=changed_header)
        loaded = load_binary(bad)
        with pytest.raises(CheckpointError, match="header says") as raised:
            loaded[1].words
        assert "\n" not in str(raised.value), name
    loaded, loaded_vocabulary = load_binary(path)                  # the sound file passes both
    assert loaded_vocabulary.words == vocabulary.words
    torch.testing.assert_close(loaded.log_prob(torch.tensor([[2, 3, 4]])), model.log_prob(torch.tensor([[2, 3, 4]])),
                               rtol=0, atol=0)


def with_header(path, change) -> bytes:
    """The file at ``path`` with its safetensors header (a dict) passed through ``change``."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = change(json.loads(data[8: 8 + size]))
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size:]


def test_hostile_headers_and_tables_fail_as_one_line_errors(sentences, tmp_path):
    """Headers a reviewer crafted (shapes and offsets that are not natural numbers, unknown types,
    deep nesting, configs of the wrong types or sizes, keys outside their orders, a 0-d or
    integer value table, long words without ids) fail at load, in both loaders, with a short
    one-line CheckpointError; none is another exception or a crash."""
    model, vocabulary = fit_sentences(sentences[:300], order=3)
    path = tmp_path / "model.safetensors"
    save_binary(model, vocabulary, path)

    def entry(name, **fields):
        return lambda header: {**header, name: {**header[name], **fields}}

    def config(**fields):
        return lambda header: {**header, "__metadata__": {**header["__metadata__"], "config": json.dumps(
            {**json.loads(header["__metadata__"]["config"]), **fields})}}
    changes = {
        "shape -1": entry("scorer.sizes", shape=[-1, -4]), "shape bool": entry("scorer.sizes", shape=[True, 4]),
        "shape float": entry("scorer.sizes", shape=[2.0, 2.0]),
        "offsets float": entry("discounts", data_offsets=[0.0, 72.0]), "bf16": entry("discounts", dtype="BF16"),
        "vocab_size huge": config(vocab_size=2**63), "vocab_size float": config(vocab_size=3.0),
        "vocab_size true": config(vocab_size=True), "order float": config(order=3.0), "order huge": config(order=10**5),
        "order 2**64": config(order=2**64),
    }
    for name, change in changes.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(with_header(path, change))
        for load in (load_binary, load_scorer):
            with pytest.raises(CheckpointError) as raised:
                load(bad)
            assert "\n" not in str(raised.value) and len(str(raised.value)) < 400, (name, load)
    nested = tmp_path / "nested.safetensors"
    nested.write_bytes((200_000).to_bytes(8, "little") + b"[" * 200_000)
    for load in (load_binary, load_scorer):
        with pytest.raises(CheckpointError, match="nests"):
            load(nested)
    tensors = safetensors.torch.load_file(str(path))
    metadata = safetensors.safe_open(str(path), "pt").metadata()
    keys = tensors["order3.keys"].clone()
    keys[-1] = len(tensors["order2.keys"]) * (len(vocabulary.words) + 1)          # past order 2's prefixes
    tables = {"key past its prefixes": {"order3.keys": keys},
              "0-d back-off": {"order1.log_backoff": torch.tensor(0.0)},
              "float64 values": {"order2.log_prob": tensors["order2.log_prob"].to(torch.float64)},
              "long text without ids": {"scorer.word_long_ids": torch.zeros(0, dtype=torch.int64),
                                        "scorer.word_long_text": torch.tensor(list(b"abcdefghijklmnopqrs"),
                                                                              dtype=torch.uint8)}}
    for name, change in tables.items():
        bad = tmp_path / f"{name}.safetensors"
        safetensors.torch.save_file({**tensors, **change}, str(bad), metadata=metadata)
        loads = (load_binary,) if name.startswith(("key", "0-d", "float64")) else (load_binary, load_scorer)
        for load in loads:
            with pytest.raises(CheckpointError, match="corrupt"):
                load(bad)


def test_a_loaded_cache_saved_over_itself_keeps_scoring(sentences, tmp_path):
    """The file is replaced by a rename, not rewritten in place: the loaded model keeps the pages
    of the file it mapped (rewriting it would truncate them under the model: a bus error)."""
    model, vocabulary = fit_sentences(sentences[:300], order=3)
    path = tmp_path / "model.safetensors"
    save_binary(model, vocabulary, path)
    held_out = sentences[300:350]
    expected = score_sentences(model, vocabulary, held_out).log10_probs
    loaded, loaded_vocabulary = load_binary(path)
    scorer = load_scorer(path)
    save_binary(loaded, loaded_vocabulary, path)
    np.testing.assert_array_equal(score_sentences(loaded, loaded_vocabulary, held_out).log10_probs, expected)
    np.testing.assert_array_equal(scorer.score(held_out).log10_probs, expected)
    np.testing.assert_array_equal(load_scorer(path).score(held_out).log10_probs, expected)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]           # no staging file left


@pytest.mark.parametrize("step", ["mkstemp", "_write_safetensors", "chmod", "replace"])
def test_a_save_that_fails_at_any_step_leaves_the_old_file_whole(step, sentences, tmp_path, monkeypatch):
    """A fault injected at each step of ``save_binary`` (making the staging file, writing it,
    setting its mode, renaming it into place): the file already there still loads as it was,
    and no partial file is left."""
    model, vocabulary = fit_sentences(sentences[:300], order=3)
    path = tmp_path / "model.safetensors"
    save_binary(model, vocabulary, path)
    before = path.read_bytes()
    bigger, bigger_vocabulary = fit_sentences(sentences[:600], order=3)

    real_write = ngram_cache._write_safetensors

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    def write_half_then_fail(path, arrays, metadata):               # the disk fills mid-write
        real_write(path, {name: array[: len(array) // 2] for name, array in arrays.items()}, metadata)
        fail()
    if step == "_write_safetensors":
        monkeypatch.setattr(ngram_cache, step, write_half_then_fail)
    else:
        monkeypatch.setattr(ngram_cache.tempfile if step == "mkstemp" else ngram_cache.os, step, fail)
    with pytest.raises(OSError):
        save_binary(bigger, bigger_vocabulary, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert load_binary(path)[1] == vocabulary


def test_a_save_through_a_symbolic_link_replaces_its_target_and_keeps_the_link(sentences, tmp_path):
    model, vocabulary = fit_sentences(sentences[:300], order=3)
    target, link = tmp_path / "target.safetensors", tmp_path / "link.safetensors"
    target.write_bytes(b"old")
    target.chmod(0o640)
    link.symlink_to(target)
    save_binary(model, vocabulary, link)
    assert link.is_symlink() and link.resolve() == target and target.stat().st_mode & 0o777 == 0o640
    assert load_binary(target)[1] == vocabulary


def test_the_cache_hands_over_its_scorer_which_scores_as_a_fresh_one(sentences, tmp_path):
    """The scorer's hash tables come from the file (no rebuild), and score every held-out
    sentence to the bit as a scorer built from the tables does; a version 1 cache, without them,
    still loads and scores the same."""
    model, vocabulary = fit_sentences(sentences[:1000], order=4)
    held_out = sentences[1000:1200] + ["", "zebra unicorn", "the the the the the"]
    path = tmp_path / "model.ngram"
    save_binary(model, vocabulary, path)
    built = scorer_for(model, vocabulary)
    loaded, loaded_vocabulary = load_binary(path)
    handed = scorer_for(loaded, loaded_vocabulary)
    memory = handed.slots
    while isinstance(memory, np.ndarray):
        memory = memory.base
    assert isinstance(memory.obj, mmap.mmap)                               # the file's pages, not a copy
    for name, array in built.arrays().items():
        np.testing.assert_array_equal(handed.arrays()[name], array, err_msg=name)
    expected = score_sentences(model, vocabulary, held_out).log10_probs
    np.testing.assert_array_equal(score_sentences(loaded, loaded_vocabulary, held_out).log10_probs, expected)
    tensors = safetensors.torch.load_file(str(path))
    old = tmp_path / "old.safetensors"
    safetensors.torch.save_file({k: v for k, v in tensors.items() if not k.startswith("scorer.")}, str(old),
                                metadata={**safetensors.safe_open(str(path), "pt").metadata(), "version": "1"})
    np.testing.assert_array_equal(score_sentences(*load_binary(old), held_out).log10_probs, expected)
    np.testing.assert_array_equal(load_scorer(old).score(held_out).log10_probs, expected)
    two = tmp_path / "two.safetensors"                          # version 2: without the long words' text
    safetensors.torch.save_file({k: v for k, v in tensors.items() if k != "scorer.word_long_text"}, str(two),
                                metadata={**safetensors.safe_open(str(path), "pt").metadata(), "version": "2"})
    long_held_out = held_out + [" ".join(w for w in vocabulary.words if len(w.encode()) > 16)]
    np.testing.assert_array_equal(load_scorer(two).score(long_held_out).log10_probs,
                                  score_sentences(model, vocabulary, long_held_out).log10_probs)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(st.sampled_from("</s>ab\u00e9"), min_size=1, max_size=6), unique=True, max_size=8),
       st.integers(0, 8))
def test_a_cached_vocabulary_knows_its_length_and_end_without_splitting(others, at):
    """The length and the id of ``</s>`` read from the joined bytes are the split vocabulary's,
    wherever ``</s>`` is (first after <unk>, inside, last, absent) among words that contain it."""
    words = [w for w in others if w not in ("<unk>", "<s>")]
    if at < len(words) + 1 and "</s>" not in words:
        words.insert(at, "</s>")
    vocabulary = WordVocabulary(("<unk>", *words))
    cached = ngram_cache.CachedVocabulary.counting("\n".join(vocabulary.words).encode("utf-8"), "test")
    assert len(cached) == len(vocabulary) and cached.end_id == vocabulary.end_id
    assert "words" not in cached.__dict__
    assert cached.words == vocabulary.words and cached == vocabulary


def test_a_scorer_opens_a_cache_without_building_the_model(sentences, tmp_path, monkeypatch):
    """``load_scorer`` maps the cache and takes its scorer (no NGramLM is made, nor its words
    split), scoring to the bit as the model does; through ``cache=True`` the first call writes
    the cache and the next maps it."""
    model, vocabulary = fit_sentences(sentences[:1000], order=4)
    held_out = sentences[1000:1100] + ["", "zebra unicorn", "a" * 40]
    expected = score_sentences(model, vocabulary, held_out).log10_probs
    arpa = tmp_path / "model.arpa"
    write_arpa(model, vocabulary, arpa)
    from_arpa = load_scorer(arpa, cache=True).score(held_out).log10_probs        # writes the cache
    np.testing.assert_allclose(from_arpa, expected, rtol=0, atol=1e-6)        # (through the ARPA's 8 digits)

    def no_model(*args, **kwargs):
        raise AssertionError("load_scorer built a model")
    monkeypatch.setattr(ngram_cache.NGramLM, "__init__", no_model)
    scorer = load_scorer(arpa, cache=True)
    np.testing.assert_array_equal(scorer.score(held_out).log10_probs, from_arpa)
    assert "words" not in scorer.vocabulary.__dict__                          # never split
    save_binary(model, vocabulary, tmp_path / "model.safetensors")
    np.testing.assert_array_equal(load_scorer(tmp_path / "model.safetensors").score(held_out).log10_probs, expected)


def test_changing_a_loaded_model_never_writes_to_its_cache(sentences, tmp_path):
    model, vocabulary = fit_sentences(sentences[:300], order=3)
    path = tmp_path / "model.ngram"
    save_binary(model, vocabulary, path)
    before = path.read_bytes()
    loaded, loaded_vocabulary = load_binary(path)
    loaded.tables[1].log_prob.zero_()
    scorer_for(loaded, loaded_vocabulary).slots[:] = 0
    assert path.read_bytes() == before
    assert torch.equal(load_binary(path)[0].tables[1].log_prob, model.tables[1].log_prob)


def test_a_cache_whose_scorer_does_not_fit_raises_checkpoint_error(sentences, tmp_path):
    """Every size the compiled lookups index by is checked at load, and the word ids each time
    words are looked up: a table that did not fit would be read outside its memory (a crash or
    silent garbage, never an error)."""
    model, vocabulary = fit_sentences(sentences[:300], order=3)
    path = tmp_path / "model.ngram"
    save_binary(model, vocabulary, path)
    tensors = safetensors.torch.load_file(str(path))
    metadata = safetensors.safe_open(str(path), "pt").metadata()
    word_slots = tensors["scorer.word_slots"].clone()
    shifted = (word_slots[:, 0] != -1) & (word_slots[:, 1] != vocabulary.end_id)   # (</s>'s is checked at load)
    word_slots[shifted, 1] += len(vocabulary.words)                           # ids past the vocabulary
    sizes = tensors["scorer.sizes"].clone()
    sizes[3] += 1
    displacements = tensors["scorer.max_displacements"].clone()
    displacements[2] = sizes[2]                                               # probing past the table
    miss_row = tensors["scorer.word_slots"].clone()
    miss_row[-1, 1] = 10**9                                                   # the id every unknown word reads
    cases = {
        "miss row": {"scorer.word_slots": miss_row},
        "settings": {"scorer.word_settings": tensors["scorer.word_settings"].repeat(2, 1)},
        "slots cut": {"scorer.slots": tensors["scorer.slots"][:-3]},
        "sizes": {"scorer.sizes": sizes},
        "displacement": {"scorer.max_displacements": displacements},
        "unigrams": {"scorer.log10_unigrams": tensors["scorer.log10_unigrams"][:-1]},
        "types": {"scorer.word_low": tensors["scorer.word_low"].to(torch.int64)},
    }
    for name, change in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        safetensors.torch.save_file({**tensors, **change}, str(bad), metadata=metadata)
        for load in (load_binary, load_scorer):
            with pytest.raises(CheckpointError, match="corrupt") as raised:
                load(bad)
            assert "\n" not in str(raised.value), name
    missing = tmp_path / "missing.ngram"
    safetensors.torch.save_file({k: v for k, v in tensors.items() if k != "scorer.word_high"}, str(missing),
                                metadata=metadata)
    with pytest.raises(CheckpointError, match="word_high"):
        load_binary(missing)
    bad_ids = tmp_path / "word ids.safetensors"
    safetensors.torch.save_file({**tensors, "scorer.word_slots": word_slots}, str(bad_ids), metadata=metadata)
    loaded = load_binary(bad_ids)
    with pytest.raises(CheckpointError, match="outside the vocabulary") as raised:
        score_sentences(*loaded, sentences[300:310])
    assert "\n" not in str(raised.value)
    with pytest.raises(CheckpointError, match="outside the vocabulary"):
        load_scorer(bad_ids).score(sentences[300:310])


def test_a_cache_rewritten_in_place_after_loading_does_not_change_what_was_checked(sentences, tmp_path):
    """Mapped pages that were only read follow the file: the sizes and offsets the compiled lookups
    index by were copied when they were checked, and the word ids are checked at each lookup, so a
    hostile file copied over the loaded one cannot make them read outside their memory."""
    model, vocabulary = fit_sentences(sentences[:300], order=3)
    path = tmp_path / "model.ngram"
    save_binary(model, vocabulary, path)
    metadata = safetensors.safe_open(str(path), "pt").metadata()
    tensors = safetensors.torch.load_file(str(path))
    word_slots = tensors["scorer.word_slots"].clone()
    word_slots[:, 1] = 10**9
    hostile = {"offsets": {"scorer.offsets": tensors["scorer.offsets"] * 1000,
                           "scorer.sizes": tensors["scorer.sizes"] * 1000,
                           "scorer.max_displacements": tensors["scorer.max_displacements"] + 10**6},
               "word ids": {"scorer.word_slots": word_slots}}
    loaded, loaded_vocabulary = load_binary(path)
    held_out = sentences[300:400] + ["zebra unicorn"]
    before = score_sentences(loaded, loaded_vocabulary, held_out).log10_probs
    for name, change in hostile.items():
        rewritten = tmp_path / f"{name}.ngram"
        save_binary_like(path, {**tensors, **change}, metadata, rewritten)
        with open(path, "r+b") as file:                       # in place: the same inode, as cp does
            file.write(rewritten.read_bytes())
        if name == "offsets":
            np.testing.assert_array_equal(score_sentences(loaded, loaded_vocabulary, held_out).log10_probs, before)
        else:
            with pytest.raises(CheckpointError, match="rewritten after loading"):
                score_sentences(loaded, loaded_vocabulary, held_out)


def save_binary_like(original, tensors, metadata, path):
    """``tensors`` written as ``original`` is laid out (the same names at the same offsets), so that
    copying the file over ``original`` changes its values only."""
    ngram_cache._write_safetensors(path, {name: tensors[name].numpy()
                                          for name in ngram_cache.MappedTensors(original).names()}, metadata)
    assert path.stat().st_size == original.stat().st_size


def test_malformed_headers_and_an_unwritable_cache_are_one_line_errors(sentences, tmp_path, monkeypatch):
    path = tmp_path / "list.ngram"
    header = b'{"__metadata__": ["not", "an", "object"]}'
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(CheckpointError, match="header"):
        load_binary(path)
    model, vocabulary = fit_sentences(sentences[:50], order=2)
    arpa = tmp_path / "model.arpa"
    write_arpa(model, vocabulary, arpa)

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(ngram_cache.tempfile, "mkstemp", refused)
    with pytest.raises(DataError, match="cannot write the n-gram cache"):
        load_arpa(arpa, cache=True)


def test_kernels_compile_without_a_disk_cache_where_numba_has_none(monkeypatch):
    """numba refuses cache=True when no place is writable; the kernels then compile per process."""
    calls, real_njit = [], numba.njit

    def njit(**options):
        calls.append(options)
        if options.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'f.py'")
        return real_njit(**options)
    monkeypatch.setattr(compiled_loops.numba, "njit", njit)
    doubled = compiled_loops.compiled(lambda x: 2 * x)
    monkeypatch.undo()
    assert doubled(21) == 42 and [bool(c.get("cache")) for c in calls] == [True, False]
