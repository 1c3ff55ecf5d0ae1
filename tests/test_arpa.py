"""ARPA files: seqlab's written files score in kenlm as in seqlab, files in KenLM's conventions
written by hand score in seqlab as in kenlm, and malformed files raise DataError naming the line."""

import kenlm
import pytest
import torch
from hypothesis import given, settings, strategies as st

from seqlab.classical.arpa import (
    WordVocabulary, fit_sentences, read_arpa, sentence_log10_probs, write_arpa,
)
from seqlab.classical.ngram import ESTIMATORS
from seqlab.data.corpora import builtin_corpus
from seqlab.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def sentences() -> tuple[list[str], list[str]]:
    """Lines of the built-in corpus as sentences: a training and a held-out part."""
    lines = [line for line in builtin_corpus().text.splitlines() if line.strip()]
    return lines[:1500], lines[1500:1800]


def kenlm_scores(path, sentences: list[str]) -> torch.Tensor:
    model = kenlm.Model(str(path))
    return torch.tensor([model.score(sentence, bos=True, eos=True) for sentence in sentences], dtype=torch.float64)


@pytest.mark.parametrize("estimator, prune", [(e, False) for e in ESTIMATORS]
                         + [("modified_kneser_ney", True), ("good_turing", True)])
def test_kenlm_scores_seqlab_arpa_files_as_seqlab_does(estimator, prune, sentences, tmp_path):
    train, held_out = sentences
    model, vocabulary = fit_sentences(train, order=4, estimator=estimator, prune_singletons=prune)
    write_arpa(model, vocabulary, tmp_path / "model.arpa")
    # mle gives unseen words probability 0 (ARPA -99): score sentences it has seen.
    scored = train[:300] if estimator == "mle" else held_out
    ours = sentence_log10_probs(model, vocabulary, scored)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, kenlm_scores(tmp_path / "model.arpa", scored), rtol=0, atol=1e-4)


def test_reading_back_a_written_file_gives_the_same_model(sentences, tmp_path):
    model, vocabulary = fit_sentences(sentences[0], order=3)
    write_arpa(model, vocabulary, tmp_path / "model.arpa")
    loaded, loaded_vocabulary = read_arpa(tmp_path / "model.arpa")
    assert loaded_vocabulary == vocabulary and loaded.order == 3
    tokens = vocabulary.encode(sentences[1][:20])[None, 1:200]
    tokens = tokens.masked_fill(tokens == vocabulary.start_id, 0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), model(tokens), rtol=1e-6, atol=1e-6)


# A trigram model in KenLM's conventions, written by hand: <s> at -99, back-off weights on the
# orders below the last, some omitted (0), <unk> absent (KenLM substitutes -100).
FOREIGN = """\
\\data\\
ngram 1=8
ngram 2=9
ngram 3=4

\\1-grams:
-1.2041200\t</s>
-99\t<s>\t-0.5228787
-0.9030900\tthe\t-0.3010300
-1.0969100\tcat\t-0.2218487
-1.0969100\tdog\t-0.1760913
-1.3010300\tsat\t-0.1249387
-1.5228787\ton
-1.3979400	mat	-0.0969100

\\2-grams:
-0.3010300\t<s> the\t-0.1549020
-0.6020600\tthe cat\t-0.0457575
-0.6989700\tthe dog
-0.4771213\tcat sat\t-0.2041200
-0.5228787\tdog sat\t-0.0791812
-0.3010300\tsat on\t-0.0969100
-0.4771213\ton the\t-0.1760913
-0.2218487\tmat </s>
-0.8239087	the mat

\\3-grams:
-0.1249387\t<s> the cat
-0.2218487\tthe cat sat
-0.0969100\tsat on the
-0.1549020\ton the mat

\\end\\
"""


def test_a_file_in_kenlm_conventions_scores_as_in_kenlm(tmp_path):
    path = tmp_path / "foreign.arpa"
    path.write_text(FOREIGN)
    model, vocabulary = read_arpa(path)
    assert vocabulary.words[0] == "<unk>" and model.order == 3 and model.vocab_size == 8
    test = ["the cat sat on the mat", "the dog sat on the mat", "a cat sat", "mat the on sat dog",
            "the cat", "unknown words only", "sat sat sat on on the the cat dog mat"]
    torch.testing.assert_close(sentence_log10_probs(model, vocabulary, test), kenlm_scores(path, test),
                               rtol=0, atol=1e-4)
    # With <unk> in the file, its probability is the file's.
    with_unknown = FOREIGN.replace("ngram 1=8", "ngram 1=9").replace("\ton\n", "\ton\n-2.5\t<unk>\n")
    path.write_text(with_unknown)
    model, vocabulary = read_arpa(path)
    torch.testing.assert_close(sentence_log10_probs(model, vocabulary, test), kenlm_scores(path, test),
                               rtol=0, atol=1e-4)


MALFORMED = {
    "no header": ("\n\\1-grams:\n-1\ta\n", "expected \\data\\ as the first line", 2),
    "text before the header": ("written by hand\n" + FOREIGN, "got 'written by hand'", 1),
    "bad count": (FOREIGN.replace("ngram 2=9", "ngram 2=x9"), "ngram 2=<count>", 3),
    "fewer n-grams than declared": (
        FOREIGN.replace("ngram 3=4", "ngram 3=5"),
        "declares 5 3-grams but the section has 4", 33),
    "more n-grams than declared": (FOREIGN.replace("ngram 2=9", "ngram 2=8"), "more 2-grams than the 8", 25),
    "wrong field count": (
        FOREIGN.replace("-0.6989700\tthe dog", "-0.6989700\tthe"),
        "has 2 fields, expected 3 or 4", 19),
    "back-off on the top order": (
        FOREIGN.replace("\ton the mat", "\ton the mat\t-0.1"),
        "has 5 fields, expected 4", 31),
    "non-numeric probability": (
        FOREIGN.replace("-0.4771213\tcat sat", "minus\tcat sat"),
        "probability 'minus' is not a number", 20),
    "non-numeric back-off": (FOREIGN.replace("\tsat\t-0.1249387", "\tsat\tnan"), "back-off weight 'nan'", 12),
    "truncated": (FOREIGN[: FOREIGN.index("-0.0969100\tsat on the")], "ends before", 30),
    "missing \\end\\": (FOREIGN.replace("\\end\\\n", ""), "ends before \\end\\", 33),
    "unknown word": (
        FOREIGN.replace("-0.2218487\tmat </s>", "-0.2218487\tmats </s>"),
        "'mats' is not among the 1-grams", 24),
    "missing context": (
        FOREIGN.replace("\tsat on the\n", "\tsat dog the\n"),
        "context 'sat dog' of this 3-gram", 30),
    "repeated n-gram": (FOREIGN.replace("-0.6989700\tthe dog", "-0.6989700\tthe cat"), "listed twice", 19),
    "repeated word": (FOREIGN.replace("\tdog\t", "\tcat\t"), "this 1-gram is listed twice", 11),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_raise_data_error_naming_the_line(case, tmp_path):
    text, message, line = MALFORMED[case]
    path = tmp_path / "bad.arpa"
    path.write_text(text)
    with pytest.raises(DataError) as raised:
        read_arpa(path)
    assert message in str(raised.value)
    assert f"line {line} of bad.arpa" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_kenlm_agrees_in_a_closed_vocabulary_where_unk_is_trained(sentences, tmp_path):
    train, held_out = sentences
    model, vocabulary = fit_sentences(train, min_count=2, order=3)
    counts = {}
    for word in " ".join(train).split():
        counts[word] = counts.get(word, 0) + 1
    assert set(vocabulary.words[2:]) == {word for word, count in counts.items() if count >= 2}
    assert int(model.tables[0].keys.numel()) == len(vocabulary.words) + 1
    write_arpa(model, vocabulary, tmp_path / "closed.arpa")
    torch.testing.assert_close(sentence_log10_probs(model, vocabulary, held_out),
                               kenlm_scores(tmp_path / "closed.arpa", held_out), rtol=0, atol=1e-4)


def test_vocabulary_orders_words_and_encodes_kenlm_style():
    sentences = ["b a b", "", "c  b\ta", "x </s> <unk>"]
    vocabulary = WordVocabulary.from_sentences(sentences)
    assert vocabulary.words == ("<unk>", "</s>", "b", "a", "c", "x")     # by frequency, then first seen
    s, end = vocabulary.start_id, 1
    assert vocabulary.encode(sentences + ["a zzz"]).tolist() == [
        s, 2, 3, 2, end, s, end, s, 4, 2, 3, end, s, 5, end, 0, end, s, 3, 0, end]
    assert WordVocabulary.from_sentences(sentences, min_count=2).words == ("<unk>", "</s>", "b", "a")
    with pytest.raises(ConfigError, match="min_count"):
        WordVocabulary.from_sentences(sentences, min_count=0)


@settings(max_examples=60, deadline=None)
@given(sentences=st.lists(st.lists(st.sampled_from(["b", "a", "c", "zzz", "<unk>", "</s>", "<s>"]),
                                   max_size=6).map(" ".join), max_size=8),
       spacing=st.sampled_from([" ", "  ", "\t", " \n "]))
def test_encoding_the_joined_text_equals_encoding_sentence_by_sentence(sentences, spacing):
    vocabulary = WordVocabulary(("<unk>", "</s>", "b", "a", "c"))
    sentences = [sentence.replace(" ", spacing) for sentence in sentences]
    index = {word: i for i, word in enumerate(vocabulary.words)}
    expected = [i for sentence in sentences for i in
                [vocabulary.start_id, *(index.get(word, 0) for word in sentence.split()), 1]]
    assert vocabulary.encode(sentences).tolist() == expected                   # a literal <s> is <unk>


def test_scoring_all_sentences_at_once_equals_scoring_one_at_a_time(sentences, tmp_path):
    train, held_out = sentences
    model, vocabulary = fit_sentences(train, order=4)
    test = held_out[:150] + ["", "zzz unseen qqq words", "the </s> <unk> end", "   "]
    for batch in (test, test + ["a literal <s> inside"]):       # the joined text, and sentence by sentence
        one_at_a_time = torch.cat([sentence_log10_probs(model, vocabulary, [sentence]) for sentence in batch])
        torch.testing.assert_close(sentence_log10_probs(model, vocabulary, batch), one_at_a_time,
                                   rtol=0, atol=0)
    write_arpa(model, vocabulary, tmp_path / "model.arpa")
    torch.testing.assert_close(sentence_log10_probs(model, vocabulary, test),
                               kenlm_scores(tmp_path / "model.arpa", test), rtol=0, atol=1e-4)


def test_vocabularies_refuse_words_an_arpa_file_cannot_hold():
    with pytest.raises(ConfigError, match="whitespace"):
        WordVocabulary(("<unk>", "</s>", "two words"))
    with pytest.raises(ConfigError, match="starts with"):
        WordVocabulary(("</s>", "<unk>"))
    model, vocabulary = fit_sentences(["a b", "b c"], order=2)
    with pytest.raises(ConfigError, match="vocabulary has"):
        write_arpa(model, WordVocabulary(("<unk>", "</s>")), "unused.arpa")


def test_tinyshakespeare_parity_with_kenlm(shared_data, tmp_path):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    train, held_out = lines[:20_000], lines[20_000:21_000]
    model, vocabulary = fit_sentences(train, order=5)
    write_arpa(model, vocabulary, tmp_path / "shakespeare.arpa")
    torch.testing.assert_close(sentence_log10_probs(model, vocabulary, held_out),
                               kenlm_scores(tmp_path / "shakespeare.arpa", held_out), rtol=0, atol=1e-4)
