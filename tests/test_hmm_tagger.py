"""The TnT-style HMM tagger (seqlab.classical.hmm_tagger): Viterbi against enumeration, normalised
transitions and unseen-word distributions, deleted interpolation against a plain loop, the suffix
model, padding, checkpoints, config checks, and accuracy on UD English EWT."""

import itertools
from collections import Counter

import pytest
import torch
from hypothesis import given, settings, strategies as st

from seqlab import registry
from seqlab.checkpoint import load_checkpoint, save_checkpoint
from seqlab.classical import hmm_tagger  # noqa: F401  (registers "hmm" for task "tag")
from seqlab.classical.hmm_tagger import (HMMTagger, deleted_interpolation_weights, hmm_viterbi_ref,
                                         interpolated_transitions, trigram_viterbi)
from seqlab.data.conll import TaggedSentence
from seqlab.errors import ConfigError
from seqlab.tasks.tagging import Tagging


def sentence(text: str) -> TaggedSentence:
    """``"the/DET dog/NOUN"`` as a tagged sentence."""
    words, tags = zip(*(token.rsplit("/", 1) for token in text.split()))
    return TaggedSentence(words, tags)


TRAIN = [sentence(text) for text in (
    "the/DET dog/NOUN walked/VERB quickly/ADV ./PUNCT",
    "a/DET cat/NOUN jumped/VERB slowly/ADV ./PUNCT",
    "the/DET bird/NOUN sang/VERB loudly/ADV ./PUNCT",
    "Anna/PROPN played/VERB happily/ADV ./PUNCT",
    "a/DET dog/NOUN barked/VERB ./PUNCT",
    "the/DET cat/NOUN slept/VERB quietly/ADV ./PUNCT",
    "Bob/PROPN walked/VERB the/DET dog/NOUN ./PUNCT",
    "the/DET walk/NOUN ended/VERB ./PUNCT",
)]


@pytest.fixture(scope="module")
def tiny_task() -> Tagging:
    return Tagging({"train": TRAIN, "valid": TRAIN[:2], "test": TRAIN[2:4]})


def fitted(task: Tagging, **overrides) -> HMMTagger:
    return registry.build_for_task("hmm", task.model_defaults(), overrides, task="tag").fit(task)


# --- Decoding -------------------------------------------------------------------------------------


def random_log_transitions(k: int, n_classes: int, order: int, generator: torch.Generator) -> torch.Tensor:
    """Normalised random ``log P(z3 | history)`` over C K + 2 symbols, (S,)*order, float64."""
    s = n_classes * k + 2
    logits = torch.randn((s,) * order, generator=generator, dtype=torch.float64) * 2
    return torch.log_softmax(logits, dim=-1)


@settings(max_examples=60, deadline=None)
@given(order=st.sampled_from([2, 3]), k=st.integers(1, 3), n_classes=st.integers(1, 2),
       lengths=st.lists(st.integers(1, 4), min_size=1, max_size=3), seed=st.integers(0, 2 ** 16))
def test_viterbi_is_the_best_path_by_enumeration(order, k, n_classes, lengths, seed):
    generator = torch.Generator().manual_seed(seed)
    transitions = random_log_transitions(k, n_classes, order, generator)
    batch, length = len(lengths), max(lengths)
    log_emit = torch.randn(batch, length, k, generator=generator, dtype=torch.float64) * 3
    classes = torch.randint(0, n_classes, (batch, length), generator=generator)
    mask = torch.arange(length) < torch.tensor(lengths)[:, None]
    # A first-order model is a second-order one whose table does not depend on z1.
    table = transitions if order == 3 else transitions.expand((transitions.shape[0],) * 3)
    paths = trigram_viterbi(table, log_emit, mask, classes)
    for row, n in enumerate(lengths):
        best_tags, _ = hmm_viterbi_ref(transitions, log_emit[row, :n], order, classes[row, :n].tolist())
        torch.testing.assert_close(paths[row, :n], best_tags)
        assert (paths[row, n:] == 0).all()


def test_viterbi_reference_scores_a_worked_example():
    # Two tags, one word: the score is log P(t | BOS, BOS) + emit(t) + log P(EOS | BOS, t).
    transitions = torch.full((4, 4, 4), -10.0, dtype=torch.float64)
    transitions[2, 2, 0], transitions[2, 2, 1] = -1.0, -2.0             # BOS BOS -> t
    transitions[2, 0, 3], transitions[2, 1, 3] = -3.0, -0.5             # BOS t -> EOS
    log_emit = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    tags, score = hmm_viterbi_ref(transitions, log_emit, 3)
    assert tags.tolist() == [1] and score == pytest.approx(-2.0 - 1.0 - 0.5)
    assert trigram_viterbi(transitions, log_emit[None]).tolist() == [[1]]


# --- Transitions ----------------------------------------------------------------------------------


def lambdas_by_loop(counts: torch.Tensor, order: int) -> list[float]:
    """Brants (2000), Figure 1, written as the paper's loop over the n-grams."""
    trigram, bigram, unigram = counts.double(), counts.double().sum(0), counts.double().sum((0, 1))
    n = float(unigram.sum())
    weights = [0.0, 0.0, 0.0]

    def ratio(a, b):
        return a / b if b > 0 else 0.0

    ngrams = trigram if order == 3 else bigram
    for index in itertools.product(*(range(size) for size in ngrams.shape)):
        f = float(ngrams[index])
        if f <= 0:
            continue
        *history, t2, t3 = index if order == 3 else (None, *index)
        estimates = [ratio(float(unigram[t3]) - 1, n - 1),
                     ratio(float(bigram[t2, t3]) - 1, float(bigram[t2].sum()) - 1)]
        if order == 3:
            estimates.append(ratio(f - 1, float(trigram[history[0], t2].sum()) - 1))
        weights[estimates.index(max(estimates))] += f                   # first maximum: lower order
    return [w / sum(weights) for w in weights]


@settings(max_examples=40, deadline=None)
@given(order=st.sampled_from([2, 3]), s=st.integers(2, 5), seed=st.integers(0, 2 ** 16),
       sparsity=st.floats(0.0, 0.9))
def test_transitions_are_normalised_and_lambdas_follow_figure_1(order, s, seed, sparsity):
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 4, (s, s, s), generator=generator).float()
    counts *= torch.rand(s, s, s, generator=generator) >= sparsity      # unseen contexts too
    if counts.sum() == 0:
        counts[0, 0, 0] = 1.0
    weights = deleted_interpolation_weights(counts, order)
    torch.testing.assert_close(weights, torch.tensor(lambdas_by_loop(counts, order), dtype=torch.float64))
    assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()
    if order == 2:
        assert weights[2] == 0
    transitions = interpolated_transitions(counts, order)
    assert transitions.shape == (s, s, s) and (transitions >= 0).all()
    torch.testing.assert_close(transitions.sum(-1), torch.ones(s, s, dtype=torch.float64))
    if order == 2:
        torch.testing.assert_close(transitions, transitions[:1].expand(s, s, s))    # independent of z1


def test_fitted_transitions_are_normalised_over_every_context(tiny_task):
    for order in (2, 3):
        model = fitted(tiny_task, order=order)
        probabilities = model.log_transitions.double().exp()
        torch.testing.assert_close(probabilities.sum(-1), torch.ones(probabilities.shape[:2], dtype=torch.float64),
                                   rtol=1e-6, atol=1e-6)


def test_counts_match_the_training_sentences(tiny_task):
    model = fitted(tiny_task, capitalisation=False)
    k = model.config.n_tags
    bos, eos = k, k + 1
    tag = {name: index for index, name in enumerate(tiny_task.tag_names)}
    assert model.trigram_counts[bos, bos].sum() == len(TRAIN)              # one (BOS, BOS, t_1) per sentence
    assert model.trigram_counts[bos, bos, tag["DET"]] == 6
    assert model.bigram_counts[tag["PUNCT"], eos] == len(TRAIN)
    assert model.unigram_counts[:k].sum() == sum(map(len, TRAIN))
    dog = tiny_task.vocabulary.word_ids(["dog"])[0]
    assert model.emission_counts[dog].tolist() == [3.0 if t == tag["NOUN"] else 0.0 for t in range(k)]


# --- Unseen words ---------------------------------------------------------------------------------


def test_unseen_word_distributions_sum_to_one_and_read_the_suffix(tiny_task):
    for theta in (None, 1.0):
        model = fitted(tiny_task, suffix_theta=theta)
        words = ["zapped", "softly", "Zorblax", "q", "WALK", "xyzzy"]
        distribution = model.unseen_tag_distribution(words)
        torch.testing.assert_close(distribution.sum(-1), torch.ones(len(words), dtype=torch.float64))
        best = [tiny_task.tag_names[i] for i in distribution.argmax(-1).tolist()]
        assert best[:2] == ["VERB", "ADV"]                                  # -ed, -ly
        assert best[4] == "NOUN"                                            # case variant of "walk"


def test_a_sentence_of_unseen_words_is_tagged(tiny_task):
    model = fitted(tiny_task)
    assert tiny_task.predict(model, [["the", "frog", "zapped", "softly", "."]]) == [
        ["DET", "NOUN", "VERB", "ADV", "PUNCT"]]
    tags = tiny_task.predict(model, [["Zorblax", "qwerty", "Flimbed"]])
    assert len(tags[0]) == 3 and set(tags[0]) <= set(tiny_task.tag_names)
    # Without the words themselves (a batch as task.loss builds it) unseen words still get tags.
    batch = tiny_task.batch([["the", "frog", "zapped"]])
    batch.words = None
    assert model.tag(batch).shape == (1, 3)


def test_padding_changes_no_tags(tiny_task):
    model = fitted(tiny_task)
    sentences = [["the", "dog", "sang"], ["a", "Cat", "walked", "the", "zebra", "happily", "."], ["Anna"]]
    together = tiny_task.predict(model, sentences)
    assert together == [tiny_task.predict(model, [words])[0] for words in sentences]


def test_a_full_suffix_table_is_a_config_error(tiny_task):
    with pytest.raises(ConfigError, match="n_suffix_buckets = 4 is too small"):
        fitted(tiny_task, n_suffix_buckets=4)


# --- Config and checkpoints -----------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"order": 1}, "order must be 2 or 3"),
    ({"order": 4}, "order must be 2 or 3"),
    ({"suffix_length": 0}, "suffix_length must be >= 1"),
    ({"rare_word_count": 0}, "rare_word_count must be >= 1"),
    ({"suffix_theta": -1.0}, "suffix_theta must be >= 0"),
])
def test_bad_config_is_a_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        registry.build("hmm", task="tag", n_words=10, n_tags=3, **overrides)


def test_fit_refuses_a_task_of_another_size_and_training_options(tiny_task):
    model = registry.build("hmm", task="tag", n_words=5, n_tags=tiny_task.model_defaults()["n_tags"])
    with pytest.raises(ConfigError, match="n_words = 5 but the task has"):
        model.fit(tiny_task)
    model = registry.build_for_task("hmm", tiny_task.model_defaults(), {}, task="tag")
    with pytest.raises(ConfigError, match="takes no option 'steps'"):
        model.fit(tiny_task, steps=10)
    assert model.fit(tiny_task, progress=False) is model


@pytest.mark.parametrize("order", [2, 3])
def test_checkpoint_round_trip_gives_identical_tags(tiny_task, tmp_path, order):
    model = fitted(tiny_task, order=order)
    save_checkpoint(tmp_path / "run", model, tiny_task.tokenizer, info={"task": tiny_task.spec()})
    loaded = load_checkpoint(tmp_path / "run").model
    assert loaded.config == model.config
    torch.testing.assert_close(loaded.log_transitions, model.log_transitions, rtol=0, atol=0)
    sentences = [list(s.words) for s in TRAIN] + [["Zorblax", "flimbed", "the", "WALK", "sorrowfully"]]
    assert tiny_task.predict(loaded, sentences) == tiny_task.predict(model, sentences)


# --- UD English EWT -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ewt_cache() -> dict:
    return {}


@pytest.fixture
def ewt(shared_data, ewt_cache) -> dict:
    """The EWT task and both fitted orders, loaded once per module (the task takes ~7 s)."""
    if not ewt_cache:
        task = Tagging.from_data(shared_data / "ud_english_ewt")
        ewt_cache["task"] = task
        for order in (2, 3):
            ewt_cache[order] = task.evaluate(fitted(task, order=order), "test")
    return ewt_cache


def test_ewt_accuracy(ewt):
    second, third = ewt[2], ewt[3]
    assert third["accuracy"] >= 0.93
    assert third["accuracy"] >= second["accuracy"] - 0.002               # trigrams help, or tie within noise
    # Unseen words against guessing the most frequent tag of the rarest training words.
    task = ewt["task"]
    counts = Counter(word for s in task.splits["train"] for word in s.words)
    singleton_tags = Counter(tag for s in task.splits["train"] for word, tag in zip(s.words, s.tags)
                             if counts[word] == 1)
    guess = singleton_tags.most_common(1)[0][0]
    unseen_tags = [tag for s in task.splits["test"] for word, tag in zip(s.words, s.tags) if word not in counts]
    baseline = unseen_tags.count(guess) / len(unseen_tags)
    assert third["unseen_accuracy"] >= baseline + 0.25
