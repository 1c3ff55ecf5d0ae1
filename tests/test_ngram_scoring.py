"""Batch sentence scoring (seqlab.classical.ngram_scoring) against its reference, the existing
stream scorer, and KenLM."""

from __future__ import annotations

from pathlib import Path

import kenlm
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqlab.classical.arpa import WordVocabulary, fit_sentences, sentence_log10_probs, write_arpa
from seqlab.classical.ngram_scoring import BLOCK, NGramScorer, score_sentences, score_sentences_ref
from seqlab.errors import ConfigError

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"

TRAIN = [
    "the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "the cat saw the dog",
    "on the mat the cat sat", "a dog on a log", "the extraordinarily-long-word sat", "naïve café sat",
    "the cat", "dog", "the the the", "sat on the cat and the dog and the mat",
]
HELD_OUT = [
    "the cat sat on the log",                  # every word known, some n-grams unseen
    "",                                        # <s> </s>
    "zebra",                                   # one unknown word
    "the zebra sat on the unicorn",            # unknown words mid-sentence
    "the cat sat on the mat the cat sat on the mat the dog",   # longer than the order
    "  the\tcat \n sat  ",                     # whitespace of several kinds, leading and trailing
    "the extraordinarily-long-word sat",       # a word longer than 16 bytes, known
    "the extraordinarily-long-wore sat",       # ... and one that differs only past byte 16
    "naïve café sat", "naïve cafe sat",        # multi-byte UTF-8
    "dog dog dog dog dog dog",
]


@pytest.fixture(scope="module", params=[1, 2, 3, 5])
def fitted(request):
    return fit_sentences(TRAIN, order=request.param)


def test_fast_path_equals_the_reference_and_the_stream_scorer(fitted):
    model, vocabulary = fitted
    fast = score_sentences(model, vocabulary, HELD_OUT).log10_probs
    np.testing.assert_allclose(fast, score_sentences_ref(model, vocabulary, HELD_OUT), rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast, sentence_log10_probs(model, vocabulary, HELD_OUT).numpy(), rtol=0, atol=1e-5)


WORDS = st.sampled_from(["a", "b", "c", "d", "zebra"])       # "zebra" is never trained: <unk>


@settings(max_examples=40, deadline=None)
@given(train=st.lists(st.lists(WORDS.filter(lambda w: w != "zebra"), min_size=1, max_size=12), min_size=1, max_size=12),
       held_out=st.lists(st.lists(WORDS, max_size=14), max_size=6), order=st.integers(1, 6))
def test_compiled_walk_equals_the_recursion_on_random_corpora(train, held_out, order):
    """A four-word language makes every order's n-grams recur, so the walk climbs and backs off
    through all of them, across sentence boundaries and unknown words."""
    model, vocabulary = fit_sentences([" ".join(words) for words in train], order=order)
    sentences = [" ".join(words) for words in held_out]
    np.testing.assert_allclose(score_sentences(model, vocabulary, sentences).log10_probs,
                               score_sentences_ref(model, vocabulary, sentences), rtol=0, atol=1e-9)


@pytest.mark.parametrize("order", [2, 3, 5])                   # KenLM reads bigram models and up
def test_equals_kenlm_on_the_written_arpa(order, tmp_path):
    model, vocabulary = fit_sentences(TRAIN, order=order)
    path = tmp_path / "model.arpa"
    write_arpa(model, vocabulary, path)
    reference = kenlm.Model(str(path))
    expected = [reference.score(sentence, bos=True, eos=True) for sentence in HELD_OUT]
    np.testing.assert_allclose(score_sentences(model, vocabulary, HELD_OUT).log10_probs, expected,
                               rtol=0, atol=1e-5)


def test_scores_hold_their_totals(fitted):
    model, vocabulary = fitted
    scores = score_sentences(model, vocabulary, ["the cat", "", "zebra zebra the"])
    assert scores.n_tokens == 3 + 1 + 4              # the words and one </s> each
    assert scores.n_unknown == 2
    assert scores.total_log10 == pytest.approx(float(scores.log10_probs.sum()), abs=0)
    assert scores.perplexity == pytest.approx(10 ** (-scores.total_log10 / 8), rel=1e-12)
    assert score_sentences(model, vocabulary, []).log10_probs.shape == (0,)


def test_the_first_word_is_scored_after_sentence_start(fitted):
    """<s> is context only: "cat" alone scores log10 p(cat | <s>) + log10 p(</s> | <s> cat)."""
    model, vocabulary = fitted
    one = score_sentences(model, vocabulary, ["cat"]).log10_probs
    np.testing.assert_allclose(one, score_sentences_ref(model, vocabulary, ["cat"]), rtol=0, atol=1e-9)
    empty = score_sentences(model, vocabulary, [""]).log10_probs[0]
    assert empty < 0 and np.isfinite(empty)


def test_a_refitted_model_is_not_scored_with_old_tables():
    model, vocabulary = fit_sentences(TRAIN, order=3)
    before = score_sentences(model, vocabulary, HELD_OUT).log10_probs
    model.fit_stream(vocabulary.encode(TRAIN[:6]))
    after = score_sentences(model, vocabulary, HELD_OUT).log10_probs
    assert np.abs(after - before).max() > 0.1
    np.testing.assert_allclose(after, score_sentences_ref(model, vocabulary, HELD_OUT), rtol=0, atol=1e-9)


def test_a_vocabulary_of_another_model_is_refused():
    model, _ = fit_sentences(TRAIN, order=3)
    with pytest.raises(ConfigError, match="vocabulary has"):
        NGramScorer(model, WordVocabulary(("<unk>", "</s>", "cat")))


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"{SHAKESPEARE} is absent")
def test_tinyshakespeare_lines_equal_kenlm(tmp_path):
    lines = [line for line in SHAKESPEARE.read_text(encoding="utf-8").splitlines() if line.strip()]
    train, held_out = lines[:8000], lines[8000:10000]
    model, vocabulary = fit_sentences(train, order=5)
    path = tmp_path / "shakespeare.arpa"
    write_arpa(model, vocabulary, path)
    reference = kenlm.Model(str(path))
    fast = score_sentences(model, vocabulary, held_out).log10_probs
    np.testing.assert_allclose(fast, [reference.score(line, bos=True, eos=True) for line in held_out],
                               rtol=0, atol=1e-5)
    np.testing.assert_allclose(fast, sentence_log10_probs(model, vocabulary, held_out).numpy(), rtol=0, atol=1e-5)


def test_sentences_across_blocks_and_one_longer_than_a_block(fitted):
    """The stream is scored a block of whole sentences at a time (BLOCK positions); a sentence
    longer than a block is one of its own. Blocks must not change any score."""
    model, vocabulary = fitted
    rng = np.random.default_rng(1)
    words = np.array(" ".join(TRAIN + ["zebra"]).split())
    short = [" ".join(rng.choice(words, size=rng.integers(0, 9))) for _ in range(2500)]
    long = " ".join(rng.choice(words, size=BLOCK + 500))
    sentences = short[:1200] + [long] + short[1200:]
    assert sum(len(s.split()) + 2 for s in sentences) > 2 * BLOCK + 500
    np.testing.assert_allclose(score_sentences(model, vocabulary, sentences).log10_probs,
                               score_sentences_ref(model, vocabulary, sentences), rtol=0, atol=1e-8)
