"""The vectorised ARPA reader and the binary cache: a written file reads back as exactly the model
that wrote it, the fast reader equals the line-by-line reference, malformed files fail naming
the line, and a cache round-trips bit for bit or fails with a CheckpointError."""

import math

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import given, settings, strategies as st

from seqlab.classical.arpa import LN10, ZERO_LOG10, fit_sentences, write_arpa
from seqlab.classical.arpa_reader import (
    _parse_decimals, load_binary, read_arpa_file, read_arpa_reference, save_binary,
)
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
    exponents: the fast path takes what it can and hands the rest to the reference."""
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
        "no <unk>": "\n".join(line for line in lines if "\t<unk>" not in line).replace(
            f"ngram 1={len(vocabulary.words) + 1}", f"ngram 1={len(vocabulary.words)}"),
    }
    for name, text in variants.items():
        path.write_text(text, newline="")
        fast, fast_vocabulary = read_arpa_file(path)
        reference, reference_vocabulary = read_arpa_reference(path)
        assert_same_model(fast, reference, fast_vocabulary, reference_vocabulary, written=False)


def exponent_form(line: str) -> str:
    """An ARPA line with its probability written as ``-1.234567800000e-01``."""
    fields = line.split("\t")
    if len(fields) < 2:
        return line
    return "\t".join(["%.12e" % float(fields[0])] + fields[1:])


@settings(max_examples=200, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False, width=64),
       form=st.sampled_from(["%.8g", "%.17g", "%r", "%.3f", "%.12e", "%.0f", "%E"]))
def test_decimals_parse_exactly_as_python_float(value, form):
    text = form % value
    buffer = np.frombuffer(text.encode() + b"\n" + bytes(16), np.uint8)
    parsed = _parse_decimals(buffer, np.array([0]), np.array([len(text)]), text.encode())
    expected = float(text)
    if math.isinf(expected) and expected > 0:
        assert parsed is None
    else:
        assert parsed is not None and parsed[0] == expected and math.copysign(1, parsed[0]) == math.copysign(1, expected)


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
    "count does not match": (GOOD.replace("ngram 2=3", "ngram 2=4"), "declares 4 2-grams but the section has 3", 18),
    "more n-grams than counted": (GOOD.replace("ngram 1=5", "ngram 1=4"), "more 1-grams than the 4", 11),
    "non-numeric probability": (GOOD.replace("-0.6\tthe cat", "-0.6x\tthe cat"), "probability '-0.6x' is not a number", 15),
    "NaN back-off": (GOOD.replace("\tcat\t-0.2", "\tcat\tnan"), "back-off weight 'nan' is not a log10 value", 10),
    # A 3-gram among 2-grams reads as a 2-gram with a back-off weight, as in every ARPA reader.
    "wrong order": (GOOD.replace("-0.4\tcat sat", "-0.4\tthe cat sat the"), "a 2-gram line has 5 fields", 16),
    "a 3-gram among 2-grams": (GOOD.replace("-0.4\tcat sat", "-0.4\tthe cat sat"), "back-off weight 'sat'", 16),
    "back-off at the top": (GOOD.replace("\tthe cat sat", "\tthe cat sat\t-0.1"), "has 5 fields, expected 4", 20),
    "unknown word": (GOOD.replace("-0.4\tcat sat", "-0.4\tcat sits"), "'sits' is not among the 1-grams", 16),
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
    assert torch.equal(loaded.discounts, model.discounts)
    assert_same_model(loaded, model, loaded_vocabulary, vocabulary, written=False)


def test_corrupt_or_foreign_caches_raise_checkpoint_error(sentences, tmp_path):
    model, vocabulary = fit_sentences(sentences[:200], order=3)
    path = tmp_path / "model.ngram"
    save_binary(model, vocabulary, path)
    tensors = safetensors.torch.load_file(str(path))
    metadata = {"format": "seqlab-ngram-tables", "version": "1",
                "config": '{"vocab_size": %d, "order": 3}' % len(vocabulary.words)}
    cases = {
        "missing": None,
        "garbage": b"not a safetensors file",
        "truncated": path.read_bytes()[:-40],
        "version": ({**tensors}, {**metadata, "version": "99"}),
        "foreign": ({"weight": torch.zeros(3)}, {"format": "something else"}),
        "unsorted keys": ({**tensors, "order2.keys": tensors["order2.keys"].flip(0)}, metadata),
        "sizes": ({**tensors, "order3.log_prob": tensors["order3.log_prob"][:-1]}, metadata),
        "missing order": ({k: v for k, v in tensors.items() if not k.startswith("order3.")}, metadata),
    }
    for name, case in cases.items():
        bad = tmp_path / f"{name}.ngram"
        if isinstance(case, bytes):
            bad.write_bytes(case)
        elif case is not None:
            safetensors.torch.save_file(case[0], str(bad), metadata=case[1])
        with pytest.raises(CheckpointError) as raised:
            load_binary(bad)
        assert "\n" not in str(raised.value), name
