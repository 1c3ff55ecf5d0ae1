"""The TnT-style HMM tagger (seqlab.classical.hmm_tagger): normalised transitions and unseen-word
distributions, deleted interpolation against a plain loop, the suffix model, padding, the loss
against enumeration, checkpoints, config checks, and accuracy on UD English EWT. Its chain
algorithms are tested against enumeration in test_classical_trigram_chain.py."""

import itertools
import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings, strategies as st

from seqlab import registry
from seqlab.checkpoint import load_checkpoint, save_checkpoint
from seqlab.classical import hmm_tagger  # noqa: F401  (registers "hmm" for task "tag")
from seqlab.classical.hmm_tagger import HMMTagger, deleted_interpolation_weights, interpolated_transitions
from seqlab.classical.trigram_chain import path_score_ref, trigram_log_partition_ref
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
    assert tiny_task.tag_sentences(model, [["the", "frog", "zapped", "softly", "."]]) == [
        ["DET", "NOUN", "VERB", "ADV", "PUNCT"]]
    tags = tiny_task.tag_sentences(model, [["Zorblax", "qwerty", "Flimbed"]])
    assert len(tags[0]) == 3 and set(tags[0]) <= set(tiny_task.tag_names)
    # Without the words themselves (a batch as task.loss builds it) unseen words still get tags.
    batch = tiny_task.batch([["the", "frog", "zapped"]])
    batch.words = None
    assert model.tag(batch).shape == (1, 3)


def test_padding_changes_no_tags(tiny_task):
    model = fitted(tiny_task)
    sentences = [["the", "dog", "sang"], ["a", "Cat", "walked", "the", "zebra", "happily", "."], ["Anna"]]
    together = tiny_task.tag_sentences(model, sentences)
    assert together == [tiny_task.tag_sentences(model, [words])[0] for words in sentences]


def test_a_full_suffix_table_is_a_config_error(tiny_task):
    with pytest.raises(ConfigError, match="n_suffix_buckets = 4 is too small"):
        fitted(tiny_task, n_suffix_buckets=4)


# --- The loss: -log p(tags | words) per word ------------------------------------------------------


def test_loss_equals_enumeration_over_every_tag_sequence(tiny_task):
    # Sentences of 1 to 4 words, seen and unseen, capitalised and not, padded in one batch.
    sentences = [TaggedSentence(("Anna", "sang", "quietly", "."), ("PROPN", "VERB", "ADV", "PUNCT")),
                 TaggedSentence(("the", "Zebra"), ("DET", "NOUN")),
                 TaggedSentence(("walked",), ("VERB",)),
                 TaggedSentence(("a", "frog", "barked"), ("DET", "NOUN", "VERB"))]
    batch = tiny_task.batch(sentences)
    for capitalisation in (True, False):
        model = fitted(tiny_task, capitalisation=capitalisation)
        log_emit, classes = model.emissions(batch)
        transitions = model.log_transitions.double()
        total = 0.0
        for row, sentence in enumerate(sentences):
            n = len(sentence)
            row_emit, row_classes = log_emit[row, :n], classes[row, :n].tolist()
            gold = path_score_ref(transitions, row_emit, batch.tags[row, :n].tolist(), 3, row_classes)
            total -= gold - trigram_log_partition_ref(transitions, row_emit, 3, row_classes)
        loss = model.loss(batch)
        assert loss.dtype == torch.float64 and loss.shape == ()
        torch.testing.assert_close(loss, torch.tensor(total / 10, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_conditional_probabilities_of_every_tagging_of_a_sentence_sum_to_one(tiny_task):
    model = fitted(tiny_task)
    words = ("Bob", "zapped", ".")
    taggings = list(itertools.product(tiny_task.tag_names, repeat=len(words)))
    probabilities = [math.exp(-len(words) * model.loss(tiny_task.batch([TaggedSentence(words, tags)])).item())
                     for tags in taggings]
    assert math.fsum(probabilities) == pytest.approx(1.0, rel=0, abs=1e-9)
    assert max(probabilities) == probabilities[taggings.index(("PROPN", "VERB", "PUNCT"))]


def test_loss_is_finite_positive_and_lower_for_gold_than_random_tags(tiny_task):
    model = fitted(tiny_task)
    # Unseen words make the tags uncertain (on TRAIN itself, every word has one tag: loss ~ 0);
    # "WALK" is a capitalised NOUN, a symbol training never saw.
    batch = tiny_task.batch([sentence("the/DET frog/NOUN zapped/VERB softly/ADV ./PUNCT"),
                             sentence("Zorblax/PROPN flimbed/VERB the/DET WALK/NOUN"), *TRAIN])
    gold = model.loss(batch)
    assert torch.isfinite(gold) and gold > 0
    generator = torch.Generator().manual_seed(0)
    random_losses = []
    for _ in range(20):
        batch.tags = torch.randint(0, len(tiny_task.tag_names), batch.mask.shape, generator=generator)
        random_losses.append(model.loss(batch))
    random_losses = torch.stack(random_losses)
    assert torch.isfinite(random_losses).all() and gold < random_losses.mean()     # finite by the floor
    metrics = tiny_task.evaluate(model, "valid")
    assert metrics["loss"] == pytest.approx(model.loss(tiny_task.batch(tiny_task.splits["valid"])).item(), rel=1e-12)


def test_the_floor_makes_every_tagging_possible_and_zero_is_tnt(tiny_task):
    # A training word with a tag it never had ("walk" was a NOUN), and a (tag, case) symbol
    # training never saw (a capitalised NOUN): probability zero under TnT, finite with the floor.
    held_out = [sentence("Bob/PROPN walk/VERB quietly/ADV ./PUNCT"), sentence("the/DET WALK/NOUN ended/VERB ./PUNCT")]
    tnt, floored = fitted(tiny_task, smoothing=0.0), fitted(tiny_task)
    for row in range(2):
        batch = tiny_task.batch(held_out[row:row + 1])
        assert tnt.loss(batch) == math.inf and torch.isfinite(floored.loss(batch))
    s, symbols = floored.config.smoothing, tnt.trigram_counts.shape[0]
    floor = torch.full((symbols,), 1 / (symbols - 1), dtype=torch.float64)
    floor[symbols - 2] = 0.0                                                    # BOS never follows
    torch.testing.assert_close(floored.transition_probabilities(), (1 - s) * tnt.transition_probabilities() + s * floor,
                               rtol=1e-12, atol=0)
    sentences = [list(t.words) for t in TRAIN] + [["the", "frog", "zapped", "softly", "."]]
    assert tiny_task.tag_sentences(floored, sentences) == tiny_task.tag_sentences(tnt, sentences)


# --- Config and checkpoints -----------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"order": 1}, "order must be 2 or 3"),
    ({"order": 4}, "order must be 2 or 3"),
    ({"suffix_length": 0}, "suffix_length must be >= 1"),
    ({"rare_word_count": 0}, "rare_word_count must be >= 1"),
    ({"suffix_theta": -1.0}, "suffix_theta must be >= 0"),
    ({"smoothing": -0.1}, r"smoothing must be in \[0, 1\)"),
    ({"smoothing": 1.0}, r"smoothing must be in \[0, 1\)"),
])
def test_bad_config_is_a_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        registry.build("hmm", task="tag", n_words=10, n_tags=3, **overrides)


def test_fit_refuses_a_task_of_another_size_and_unknown_options(tiny_task):
    model = registry.build("hmm", task="tag", n_words=5, n_tags=tiny_task.model_defaults()["n_tags"])
    with pytest.raises(ConfigError, match="n_words = 5 but the task has"):
        model.fit(tiny_task)
    model = registry.build_for_task("hmm", tiny_task.model_defaults(), {}, task="tag")
    with pytest.raises(TypeError, match="unexpected keyword argument 'steps'"):
        model.fit(tiny_task, steps=10)
    assert model.fit(tiny_task, progress=False) is model


@pytest.mark.parametrize("order", [2, 3])
def test_checkpoint_round_trip_gives_identical_tags(tiny_task, tmp_path, order):
    model = fitted(tiny_task, order=order)
    save_checkpoint(tmp_path / "run", model, tiny_task)
    loaded = load_checkpoint(tmp_path / "run").model
    assert loaded.config == model.config
    torch.testing.assert_close(loaded.log_transitions, model.log_transitions, rtol=0, atol=0)
    sentences = [list(s.words) for s in TRAIN] + [["Zorblax", "flimbed", "the", "WALK", "sorrowfully"]]
    assert tiny_task.tag_sentences(loaded, sentences) == tiny_task.tag_sentences(model, sentences)


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
    assert 0.1 < third["loss"] < 0.4                                     # nats per word, finite by the floor
    # Unseen words against guessing the most frequent tag of the rarest training words.
    task = ewt["task"]
    counts = Counter(word for s in task.splits["train"] for word in s.words)
    singleton_tags = Counter(tag for s in task.splits["train"] for word, tag in zip(s.words, s.tags)
                             if counts[word] == 1)
    guess = singleton_tags.most_common(1)[0][0]
    unseen_tags = [tag for s in task.splits["test"] for word, tag in zip(s.words, s.tags) if word not in counts]
    baseline = unseen_tags.count(guess) / len(unseen_tags)
    assert third["unseen_accuracy"] >= baseline + 0.25
