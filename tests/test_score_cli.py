"""`seqlab score`: sentences scored under an ARPA file as kenlm scores them, through an optional
binary cache that is never written over a file seqlab did not write."""

from __future__ import annotations

import os

import kenlm
import pytest
import safetensors
import safetensors.torch

from seqlab.classical.arpa import fit_sentences, write_arpa
from seqlab.classical.ngram_cache import BINARY_VERSION, CACHE_SUFFIX
from seqlab.cli import main
from seqlab.data.corpora import builtin_corpus

from helpers import fails_cleanly


@pytest.fixture(scope="module")
def arpa(tmp_path_factory):
    lines = [line for line in builtin_corpus().text.splitlines() if line.split()]
    model, vocabulary = fit_sentences(lines[:1500], order=4, estimator="modified_kneser_ney")
    path = tmp_path_factory.mktemp("lm") / "model.arpa"
    write_arpa(model, vocabulary, path)
    held_out = lines[1500:1600] + ["", "words nobody ever wrote here"]
    return path, held_out


def scored(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 0
    *rows, total = capsys.readouterr().out.splitlines()
    return [float(row) for row in rows], total


def test_scores_equal_kenlm_per_sentence_and_in_total(arpa, tmp_path, capsys):
    path, held_out = arpa
    sentences = tmp_path / "held_out.txt"
    sentences.write_text("\n".join(held_out) + "\n")
    values, total = scored(capsys, ["score", str(path), "--input", str(sentences)])
    reference = kenlm.Model(str(path))
    expected = [reference.score(sentence, bos=True, eos=True) for sentence in held_out]
    assert values == pytest.approx(expected, abs=1e-4)
    assert f"sentences {len(held_out)}" in total
    assert float(total.split()[3]) == pytest.approx(sum(expected), abs=1e-3)


def test_the_binary_cache_is_written_once_read_after_and_never_over_a_foreign_file(arpa, tmp_path, capsys):
    source, held_out = arpa
    path = tmp_path / "copy.arpa"
    path.write_bytes(source.read_bytes())
    sentences = tmp_path / "held_out.txt"
    sentences.write_text("\n".join(held_out) + "\n")
    plain = scored(capsys, ["score", str(path), "--input", str(sentences)])
    cache = tmp_path / ("copy.arpa" + CACHE_SUFFIX)
    assert not cache.exists()
    assert scored(capsys, ["score", str(path), "--input", str(sentences), "--cache"]) == plain
    written = cache.stat().st_mtime_ns
    assert scored(capsys, ["score", str(path), "--input", str(sentences), "--cache"]) == plain
    assert cache.stat().st_mtime_ns == written                    # read, not rewritten
    assert scored(capsys, ["score", str(cache), "--input", str(sentences)]) == plain
    os.utime(path, ns=(written + 10**9, written + 10**9))          # the ARPA file changed: refreshed
    assert scored(capsys, ["score", str(path), "--input", str(sentences), "--cache"]) == plain
    assert cache.stat().st_mtime_ns != written
    replacement = tmp_path / "other.arpa"                          # another model, dated in the past
    write_arpa(*fit_sentences(held_out[:40], order=2), replacement)
    os.utime(replacement, ns=(written - 10**9, written - 10**9))
    os.replace(replacement, path)
    other = scored(capsys, ["score", str(path), "--input", str(sentences)])
    assert other != plain
    assert scored(capsys, ["score", str(path), "--input", str(sentences), "--cache"]) == other
    cache.write_text("my notes")
    fails_cleanly(capsys, ["score", str(path), "--input", str(sentences), "--cache"], "not a seqlab n-gram cache")
    assert cache.read_text() == "my notes"
    cache.unlink()
    cache.mkdir()
    fails_cleanly(capsys, ["score", str(path), "--input", str(sentences), "--cache"], "not a seqlab n-gram cache")
    assert cache.is_dir() and not list(tmp_path.glob(".*partial"))


def test_bad_input_is_one_line(arpa, tmp_path, capsys):
    path, _ = arpa
    fails_cleanly(capsys, ["score", str(tmp_path / "missing.arpa"), "--input", str(path)], "missing.arpa")
    broken = tmp_path / "broken.arpa"
    broken.write_text(path.read_text().replace("\\data\\", "\\date\\", 1))
    fails_cleanly(capsys, ["score", str(broken)], "line")
    fails_cleanly(capsys, ["score", str(path), "--input", str(tmp_path / "none.txt")], "none.txt")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    fails_cleanly(capsys, ["score", str(path), "--input", str(latin)], "latin1.txt")


def test_only_a_line_feed_ends_a_sentence(arpa, tmp_path, capsys):
    """kenlm reads one sentence per line feed; a form feed or a Unicode line separator inside a
    line is white space between words, not a new sentence."""
    path, _ = arpa
    sentences = tmp_path / "odd.txt"
    sentences.write_text("the value\x0cof x\nthe\u2028name\r\n", encoding="utf-8")
    values, total = scored(capsys, ["score", str(path), "--input", str(sentences)])
    assert len(values) == 2 and "sentences 2" in total


def test_a_cache_of_an_older_version_is_remade_with_the_scorer_tables(arpa, tmp_path, capsys):
    """A version 1 cache (the model's tables only) made from the same file is seqlab's own: it is
    remade in this version, which holds the scorer's tables too, and scores the same."""
    source, held_out = arpa
    path = tmp_path / "model.arpa"
    path.write_bytes(source.read_bytes())
    sentences = tmp_path / "held_out.txt"
    sentences.write_text("\n".join(held_out) + "\n")
    plain = scored(capsys, ["score", str(path), "--input", str(sentences), "--cache"])
    cache = tmp_path / ("model.arpa" + CACHE_SUFFIX)
    tensors = safetensors.torch.load_file(str(cache))
    metadata = safetensors.safe_open(str(cache), "pt").metadata()
    safetensors.torch.save_file({k: v for k, v in tensors.items() if not k.startswith("scorer.")}, str(cache),
                                metadata={**metadata, "version": "1"})
    assert scored(capsys, ["score", str(path), "--input", str(sentences), "--cache"]) == plain
    assert safetensors.safe_open(str(cache), "pt").metadata()["version"] == BINARY_VERSION
    assert "scorer.slots" in safetensors.safe_open(str(cache), "pt").keys()
