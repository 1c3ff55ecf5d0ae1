"""The feature CRF tagger (seqlab.classical.feature_crf), its features and its optimiser.

Oracles: the feature strings themselves (the hashed fast path against hashing them one by
one), a dictionary model with one weight vector per feature string, central finite differences
of the objective in float64, the soft-thresholding closed form of an L1 problem, and
python-crfsuite trained on the same feature strings.
"""

import itertools
import json
import math
import os
import subprocess
import sys
import time
import zlib

import pycrfsuite
import pytest
import safetensors.torch
import torch
from hypothesis import given, settings, strategies as st

from seqlab import registry
from seqlab.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from seqlab.classical.feature_crf import FeatureCRFConfig, FeatureCRFTagger, PenalisedLikelihood
from seqlab.classical.feature_templates import DEFAULT_TEMPLATES, parse_templates, template_features
from seqlab.classical.tagging_features import (FeatureHasher, feature_bucket, sentence_features, short_shape,
                                               word_shape)
from seqlab.data.conll import TaggedSentence, read_conllu
from seqlab.errors import ConfigError, DataError
from seqlab.optim import minimize, pseudo_gradient
from seqlab.runs import initialise_from
from seqlab.tasks.tagging import Tagging

SENTENCES = [("The", "well-known", "cat", "sat", "on", "3", "mats", "."), ("Go",), ("E-mail", "me", "at", "9:30", "!")]


def tagged(text: str) -> TaggedSentence:
    """'the/D cat/N' -> words and tags."""
    words, tags = zip(*(pair.split("/") for pair in text.split()))
    return TaggedSentence(words, tags)


@pytest.fixture
def tiny_task() -> Tagging:
    train = [tagged("the/D cat/N sat/V"), tagged("a/D dog/N ran/V far/A"), tagged("the/D dog/N"),
             tagged("Dogs/N ran/V"), tagged("a/D cat/N sat/V quietly/A")]
    test = [tagged("the/D bird/N flew/V"), tagged("a/D cat/N ran/V away/A")]
    return Tagging({"train": train, "valid": test, "test": test})


# ---- features -------------------------------------------------------------------------------


def test_feature_strings_of_a_word():
    features = sentence_features(["Go", "3-4"])
    assert features[0][:3] == ["bias", "word=Go", "lower=go"]
    assert {"prefix1=g", "prefix4=go", "suffix3=go", "shape=Xx", "short_shape=Xx", "title", "BOS",
            "+1:lower=3-4", "+2:lower=<EOS>", "-1:lower=<BOS>", "+1:suffix3=3-4", "-1|0:bigram=<bos>|go"} \
        <= set(features[0])
    assert "EOS" not in features[0] and "upper" not in features[0]
    assert {"shape=d-d", "hyphen", "has_digit", "EOS", "-1:suffix3=go", "-1:short_shape=Xx"} <= set(features[1])
    assert "digit" not in features[1] and "digit" in sentence_features(["12"])[0]
    assert word_shape("Ab-12") == "Xx-dd"
    assert short_shape("Aaaa--12") == "Xx-d"


def test_buckets_are_crc32_and_the_same_in_every_process():
    assert feature_bucket("suffix3=ing", 2**20) == 769053              # zlib.crc32(b"suffix3=ing") % 2**20
    assert feature_bucket("word=Straße", 1000) == zlib.crc32("word=Straße".encode("utf-8")) % 1000
    script = ("from seqlab.classical.tagging_features import FeatureHasher;"
              "print(FeatureHasher(4096)([['Cats', 'purr', '.']]).buckets.tolist())")
    # Another process, with another salt for Python's own hash, finds the same buckets.
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    assert other == str(FeatureHasher(4096)([["Cats", "purr", "."]]).buckets.tolist()) + "\n"


def bucket_lists(features, n_positions):
    ends = torch.cat([features.offsets[1:], torch.tensor([len(features.buckets)])])
    return [sorted(features.buckets[features.offsets[i]:ends[i]].tolist()) for i in range(n_positions)]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.text(st.sampled_from("aB3-é.x"), min_size=1, max_size=6), min_size=1, max_size=5),
                min_size=1, max_size=4))
def test_hasher_equals_hashing_every_feature_string(sentences):
    hasher = FeatureHasher(97)
    for _ in range(2):                        # the second call answers from the hasher's cache
        features = hasher(sentences)
        expected = [sorted(feature_bucket(f, 97) for f in position)
                    for sentence in sentences for position in sentence_features(sentence)]
        assert bucket_lists(features, len(expected)) == expected
        assert features.lengths.tolist() == [len(s) for s in sentences]


def test_hasher_rejects_empty_input():
    with pytest.raises(DataError, match="sentence 2 is empty"):
        FeatureHasher(8)([["a"], []])


def test_emissions_equal_a_dictionary_model():
    """One weight vector per feature string, summed over each position's features: no hashing."""
    n_tags, n_buckets = 3, 2**20
    strings = sorted({f for sentence in SENTENCES for position in sentence_features(sentence) for f in position})
    assert len({feature_bucket(f, n_buckets) for f in strings}) == len(strings)     # no collisions here
    generator = torch.Generator().manual_seed(0)
    table = {f: torch.randn(n_tags, generator=generator, dtype=torch.float64) for f in strings}
    model = FeatureCRFTagger(FeatureCRFConfig(n_tags=n_tags, n_buckets=n_buckets)).double()
    with torch.no_grad():
        for feature, weights in table.items():
            model.feature_weights[feature_bucket(feature, n_buckets)] = weights
    emissions = model.emissions(model.hasher(SENTENCES))
    expected = torch.stack([sum(table[f] for f in position)
                            for sentence in SENTENCES for position in sentence_features(sentence)])
    torch.testing.assert_close(emissions, expected, rtol=1e-12, atol=1e-12)


# ---- the objective and its fit --------------------------------------------------------------


def test_gradient_equals_finite_differences():
    sentences = [("the", "cat", "sat"), ("a", "dog"), ("Dogs",), ("the", "dog", "ran", "far")]
    tags = [[0, 1, 2], [0, 1], [1], [0, 1, 2, 0]]
    model = FeatureCRFTagger(FeatureCRFConfig(n_tags=3, n_buckets=16, c2=0.3, words_per_chunk=6)).double()
    objective = PenalisedLikelihood(model, sentences, tags)
    assert len(objective.chunks) > 1                              # the chunking is exercised too
    theta = torch.randn(objective.initial().shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    value, gradient = objective(theta)
    step = 1e-6
    numeric = torch.empty_like(theta)
    for i in range(len(theta)):
        shift = torch.zeros_like(theta)
        shift[i] = step
        numeric[i] = (objective(theta + shift)[0] - objective(theta - shift)[0]) / (2 * step)
    torch.testing.assert_close(gradient, numeric, rtol=1e-6, atol=1e-6)
    # F itself: the summed negative log-likelihood (by the CRF layer, no chunks) plus c2 ||theta||^2.
    objective.store(theta)
    emissions = model.emissions(model.hasher(sentences))
    nll = -sum(model.crf.log_likelihood(emissions[start:start + len(s)][None], torch.tensor([t]))[0]
               for start, s, t in zip([0, 3, 5, 6], sentences, tags))
    assert math.isclose(value, nll.item() + 0.3 * float(theta @ theta), rel_tol=1e-12)


def test_objective_does_not_depend_on_how_sentences_are_chunked():
    """One chunk per sentence (no padding) against one chunk of all (padded): same F and gradient."""
    sentences = [("the", "cat", "sat"), ("a", "dog"), ("Dogs",), ("the", "dog", "ran", "far"), ("a", "cat")]
    tags = [[0, 1, 2], [0, 1], [1], [0, 1, 2, 0], [0, 2]]
    results = []
    for words_per_chunk in (1, 1000):
        model = FeatureCRFTagger(FeatureCRFConfig(n_tags=3, n_buckets=64, c2=0.2, words_per_chunk=words_per_chunk))
        objective = PenalisedLikelihood(model.double(), sentences, tags)
        assert len(objective.chunks) == (5 if words_per_chunk == 1 else 1)
        theta = torch.randn(objective.initial().shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        results.append(objective(theta))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-13)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-12, atol=1e-12)


def test_fit_learns_the_tiny_task_and_survives_a_checkpoint(tiny_task, tmp_path):
    model = registry.build_for_task("crf", tiny_task.model_defaults(), {"n_buckets": 4096, "c2": 0.01}, task="tag")
    model.fit(tiny_task)
    assert tiny_task.evaluate(model, "test")["accuracy"] == 1.0
    save_checkpoint(tmp_path / "crf", model, tiny_task)
    loaded = load_checkpoint(tmp_path / "crf").model
    batch = tiny_task.batch(tiny_task.splits["test"] + [tagged("Cats/N ran/V")])
    assert torch.equal(loaded.tag(batch), model.tag(batch))
    assert torch.equal(loaded.feature_weights, model.feature_weights)


def test_init_from_a_fitted_crf_loads_its_weights(tiny_task, tmp_path):
    """The checkpoint stores the non-zero rows only; --init-from still carries every weight."""
    model = registry.build_for_task("crf", tiny_task.model_defaults(), {"n_buckets": 4096, "c2": 0.01}, task="tag")
    model.fit(tiny_task)
    save_checkpoint(tmp_path / "crf", model, tiny_task)
    fresh = registry.build_for_task("crf", tiny_task.model_defaults(), {"n_buckets": 4096, "c2": 0.01}, task="tag")
    report = initialise_from(fresh, tmp_path / "crf", tiny_task)
    assert "feature_weights" in report.loaded and not report.skipped
    assert torch.equal(fresh.feature_weights, model.feature_weights)


def test_padding_does_not_change_the_tags(tiny_task):
    model = FeatureCRFTagger(FeatureCRFConfig(n_tags=4, n_buckets=4096)).fit(tiny_task)
    sentences = [["a", "dog", "sat", "quietly", "far"], ["Cats"], ["the", "bird", "ran"]]
    together = model.tag(tiny_task.batch(sentences))
    for row, sentence in enumerate(sentences):
        alone = model.tag(tiny_task.batch([sentence]))
        assert together[row, :len(sentence)].tolist() == alone[0].tolist()


def test_l1_fit_gives_exact_zeros(tiny_task):
    fitted = {c1: FeatureCRFTagger(FeatureCRFConfig(n_tags=4, n_buckets=4096, c1=c1, c2=0.0)).fit(tiny_task)
              for c1 in (0.0, 0.5)}
    active = fitted[0.0].feature_weights != 0
    sparse = fitted[0.5].feature_weights
    assert (sparse[active] == 0).sum() > active.sum() // 2          # most weights are exactly zero
    assert tiny_task.evaluate(fitted[0.5], "test")["accuracy"] == 1.0


@pytest.mark.parametrize("values, message", [({"n_buckets": 0}, "n_buckets must be >= 1"),
                                             ({"c2": -1.0}, "c2 must be a finite number >= 0"),
                                             ({"c1": float("nan")}, "c1 must be"),
                                             ({"max_iterations": -1}, "max_iterations must be >= 0")])
def test_bad_config_raises(values, message):
    with pytest.raises(ConfigError, match=message):
        registry.build("crf", task="tag", n_tags=17, **values)


def test_fit_checks_the_tag_set_and_its_options(tiny_task):
    with pytest.raises(DataError, match="the task has 4 tags but the model was built for 5"):
        FeatureCRFTagger(FeatureCRFConfig(n_tags=5, n_buckets=64)).fit(tiny_task)
    with pytest.raises(TypeError, match="unexpected keyword argument 'steps'"):
        FeatureCRFTagger(FeatureCRFConfig(n_tags=4, n_buckets=64)).fit(tiny_task, steps=10)


def test_fit_stops_at_a_past_deadline_after_one_iteration_and_still_tags(tiny_task, capsys):
    config = FeatureCRFConfig(n_tags=4, n_buckets=4096, c2=0.01)
    stopped = FeatureCRFTagger(config).fit(tiny_task, deadline=time.monotonic() - 1, progress=True)
    assert stopped.fit_result.stopped_by == "deadline" and stopped.fit_result.iterations == 1
    assert capsys.readouterr().err.splitlines() == [f"crf iteration 1: F = {stopped.fit_result.value:.4f}"]
    assert torch.isfinite(stopped.feature_weights).all() and stopped.feature_weights.abs().sum() > 0
    tags = stopped.tag(tiny_task.batch(tiny_task.splits["test"]))
    assert tags.shape == (2, 4) and 0 <= int(tags.min()) and int(tags.max()) < 4
    unlimited = FeatureCRFTagger(config).fit(tiny_task)
    far = FeatureCRFTagger(config).fit(tiny_task, deadline=time.monotonic() + 3600)
    assert far.fit_result.stopped_by == unlimited.fit_result.stopped_by != "deadline"
    assert far.fit_result.iterations == unlimited.fit_result.iterations > 1
    assert torch.equal(far.feature_weights, unlimited.feature_weights)
    assert stopped.fit_result.value > unlimited.fit_result.value


# ---- the loss: -log p(tags | words) per word ------------------------------------------------


def log_likelihood_by_enumeration(model: FeatureCRFTagger, words, tags) -> float:
    """log p(tags | words) of one sentence: its chain score against the log-sum-exp of the
    scores of every one of the K^L tag paths, from the emissions of the hashed features."""
    emissions = model.emissions(model.hasher([words])).detach()                          # (L, K)
    start, transitions, end = (p.detach() for p in model.crf.chain_scores())

    def score(path) -> torch.Tensor:
        steps = sum((transitions[a, b] for a, b in itertools.pairwise(path)), torch.tensor(0.0, dtype=emissions.dtype))
        return start[path[0]] + emissions[range(len(path)), list(path)].sum() + steps + end[path[-1]]

    every = torch.stack([score(path) for path in itertools.product(range(model.config.n_tags), repeat=len(words))])
    return float(score(tuple(tags)) - torch.logsumexp(every, dim=0))


def test_loss_equals_the_log_likelihood_by_enumeration(tiny_task):
    model = FeatureCRFTagger(FeatureCRFConfig(n_tags=4, n_buckets=4096, c2=0.01)).double().fit(tiny_task)
    sentences = [tagged("a/D bird/N ran/V away/A"), tagged("Cats/N"), tagged("the/D dog/N sat/V"),
                 tagged("quietly/A the/D")]
    batch = tiny_task.batch(sentences)
    loss = model.loss(batch)
    expected = -sum(log_likelihood_by_enumeration(model, s.words, batch.tags[i, :len(s)].tolist())
                    for i, s in enumerate(sentences)) / sum(map(len, sentences))
    assert loss.shape == () and loss.requires_grad
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    metrics = tiny_task.evaluate(model, "test")
    assert metrics["loss"] == pytest.approx(model.loss(tiny_task.batch(tiny_task.splits["test"])).item(), rel=1e-12)
    with pytest.raises(DataError, match="gold tags"):
        model.loss(tiny_task.batch([["a", "cat"]]))


def test_loss_is_positive_and_lower_for_gold_than_random_tags(tiny_task):
    model = FeatureCRFTagger(FeatureCRFConfig(n_tags=4, n_buckets=4096)).fit(tiny_task)
    batch = tiny_task.batch(tiny_task.splits["test"] + tiny_task.splits["train"])
    gold = model.loss(batch)
    assert torch.isfinite(gold) and gold > 0
    generator = torch.Generator().manual_seed(0)
    random_losses = []
    for _ in range(20):
        batch.tags = torch.randint(0, 4, batch.mask.shape, generator=generator)
        random_losses.append(model.loss(batch).detach())
    assert torch.isfinite(torch.stack(random_losses)).all()
    assert gold < torch.stack(random_losses).mean()


# ---- OWL-QN ---------------------------------------------------------------------------------


def quadratic(matrix, target):
    """f(x) = 0.5 (x - target)' A (x - target) and its gradient."""
    def objective(x):
        residual = x - target
        return 0.5 * float(residual @ matrix @ residual), matrix @ residual
    return objective


def test_pseudo_gradient_by_cases():
    x = torch.tensor([1.0, -1.0, 0.0, 0.0, 0.0])
    gradient = torch.tensor([0.5, 0.5, -2.0, 2.0, 0.3])
    assert pseudo_gradient(x, gradient, 1.0).tolist() == [1.5, -0.5, -1.0, 1.0, 0.0]


def test_owlqn_finds_the_soft_threshold_with_exact_zeros():
    target = torch.tensor([3.0, -0.5, 0.2, -2.0, 0.0, 1.0], dtype=torch.float64)
    result = minimize(quadratic(torch.eye(6, dtype=torch.float64), target), torch.zeros(6, dtype=torch.float64),
                      c1=1.0, epsilon=1e-10)
    expected = target.sign() * (target.abs() - 1.0).clamp_min(0)
    torch.testing.assert_close(result.x, expected, rtol=0, atol=1e-8)
    assert (result.x[expected == 0] == 0).all()


def test_minimize_stops_at_a_deadline_after_one_iteration():
    target = torch.tensor([3.0, -0.5, 2.0], dtype=torch.float64)
    objective = quadratic(torch.diag(torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)), target)
    start = torch.zeros(3, dtype=torch.float64)
    for c1 in (0.0, 0.5):
        stopped = minimize(objective, start, c1=c1, deadline=time.monotonic() - 1)
        assert stopped.stopped_by == "deadline" and stopped.iterations == 1
        assert stopped.value < objective(start)[0]                     # an accepted step was kept
        assert stopped.value == pytest.approx(objective(stopped.x)[0] + c1 * float(stopped.x.abs().sum()), rel=1e-15)
        unlimited = minimize(objective, start, c1=c1, epsilon=1e-10)
        far = minimize(objective, start, c1=c1, epsilon=1e-10, deadline=time.monotonic() + 3600)
        assert unlimited.stopped_by == far.stopped_by == "converged"
        assert far.iterations == unlimited.iterations and torch.equal(far.x, unlimited.x)


def test_lbfgs_solves_a_quadratic():
    generator = torch.Generator().manual_seed(0)
    root = torch.randn(8, 8, generator=generator, dtype=torch.float64)
    matrix = root @ root.T + 0.1 * torch.eye(8, dtype=torch.float64)
    target = torch.randn(8, generator=generator, dtype=torch.float64)
    result = minimize(quadratic(matrix, target), torch.zeros(8, dtype=torch.float64), epsilon=1e-12,
                      max_iterations=500, past=0)
    assert result.stopped_by == "converged"
    torch.testing.assert_close(result.x, target, rtol=0, atol=1e-6)


def test_owlqn_beats_projected_gradient_steps_on_a_lasso():
    """Same number of gradient evaluations; OWL-QN reaches a lower F with exact zeros."""
    generator = torch.Generator().manual_seed(3)
    design = torch.randn(40, 20, generator=generator, dtype=torch.float64)
    truth = torch.zeros(20, dtype=torch.float64)
    truth[:4] = torch.tensor([2.0, -3.0, 1.5, 1.0])
    observed = design @ truth + 0.1 * torch.randn(40, generator=generator, dtype=torch.float64)
    c1 = 2.0

    def least_squares(x):
        residual = design @ x - observed
        return 0.5 * float(residual @ residual), design.T @ residual

    result = minimize(least_squares, torch.zeros(20, dtype=torch.float64), c1=c1, max_iterations=30, past=0,
                      epsilon=1e-12)
    x = torch.zeros(20, dtype=torch.float64)                          # proximal (projected) gradient steps
    step = 1.0 / float(torch.linalg.matrix_norm(design, 2)) ** 2
    for _ in range(result.evaluations):
        shifted = x - step * least_squares(x)[1]
        x = shifted.sign() * (shifted.abs() - step * c1).clamp_min(0)
    projected_value = least_squares(x)[0] + c1 * float(x.abs().sum())
    assert (result.x == 0).sum() >= 10
    assert result.value < projected_value


# ---- against crfsuite -----------------------------------------------------------------------


def test_accuracy_matches_crfsuite_on_the_same_features(shared_data, tmp_path):
    """1500 dev sentences for training, 1000 test sentences; crfsuite gets the feature strings."""
    treebank = shared_data / "ud_english_ewt"
    train = read_conllu(treebank / "en_ewt-ud-dev.conllu")[:1500]
    test = read_conllu(treebank / "en_ewt-ud-test.conllu")[:1000]
    task = Tagging({"train": train, "test": test})
    model = FeatureCRFTagger(FeatureCRFConfig(n_tags=len(task.tag_names), max_iterations=60))
    config = model.config
    accuracy = task.evaluate(model.fit(task), "test")["accuracy"]
    trainer = pycrfsuite.Trainer(verbose=False)
    for sentence in train:
        trainer.append(sentence_features(sentence.words), list(sentence.tags))
    trainer.set_params({"c1": config.c1, "c2": config.c2, "max_iterations": config.max_iterations,
                        "feature.possible_transitions": True})
    trainer.train(str(tmp_path / "crfsuite.model"))
    tagger = pycrfsuite.Tagger()
    tagger.open(str(tmp_path / "crfsuite.model"))
    gold = [tag for sentence in test for tag in sentence.tags]
    predicted = [tag for sentence in test for tag in tagger.tag(sentence_features(sentence.words))]
    their_accuracy = sum(g == p for g, p in zip(gold, predicted)) / len(gold)
    assert abs(accuracy - their_accuracy) <= 0.005, (accuracy, their_accuracy)
    assert accuracy > 0.88


# ---- feature templates ----------------------------------------------------------------------


WORDS = st.text(st.sampled_from("aB3-é.xZ"), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(st.lists(WORDS, min_size=1, max_size=7))
def test_default_templates_spell_the_builtin_features(words):
    assert template_features(words, parse_templates(DEFAULT_TEMPLATES)) == sentence_features(words)


def test_custom_templates_fire_the_features_they_say():
    templates = parse_templates("w[0] suffix2[-1]  # a comment\n shape[0]|w[1] title[-1] pair=lower[-1]|title[0] EOS")
    assert template_features(["The", "Cat", "sat"], templates) == [
        ["word=The", "-1:suffix2=<BOS>", "0|+1:shape|word=Xxx|Cat", "-1:title=<BOS>", "-1|0:pair=<bos>|1"],
        ["word=Cat", "-1:suffix2=he", "0|+1:shape|word=Xxx|sat", "-1:title", "-1|0:pair=the|1"],
        ["word=sat", "-1:suffix2=at", "0|+1:shape|word=xxx|<EOS>", "-1:title", "-1|0:pair=cat|0", "EOS"]]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(WORDS, min_size=1, max_size=5), min_size=1, max_size=4))
def test_hasher_equals_hashing_every_template_feature(sentences):
    text = "bias w[-3] prefix2[2] upper[1] hyphen[0] x=digit[-1]|w[0]|suffix1[+2] lower[0]|short_shape[0] BOS BOS"
    hasher = FeatureHasher(97, text)
    for _ in range(2):                        # the second call answers from the hasher's cache
        features = hasher(sentences)
        expected = [[feature_bucket(f, 97) for f in position]
                    for sentence in sentences for position in template_features(sentence, parse_templates(text))]
        assert ordered_bucket_lists(features, len(expected)) == expected       # in the templates' order


def test_the_default_template_set_hashes_like_the_builtin_features():
    explicit = FeatureHasher(4096, DEFAULT_TEMPLATES)(SENTENCES)
    default = FeatureHasher(4096)(SENTENCES)
    expected = [[feature_bucket(f, 4096) for f in position]
                for sentence in SENTENCES for position in sentence_features(sentence)]
    # The same buckets in the same order: a sum of weights adds them up exactly as before templates.
    assert ordered_bucket_lists(explicit, len(expected)) == ordered_bucket_lists(default, len(expected)) == expected


def ordered_bucket_lists(features, n_positions):
    ends = torch.cat([features.offsets[1:], torch.tensor([len(features.buckets)])])
    return [features.buckets[features.offsets[i]:ends[i]].tolist() for i in range(n_positions)]


@pytest.mark.parametrize("text, message", [
    ("w[0] w[x]", r"template 'w\[x\]' \(line 1, column 6\), at character 1: expected view\[offset\]"),
    ("w[0]\n  lower[-1]|foo[0]", r"template 'lower\[-1\]\|foo\[0\]' \(line 2, column 3\), at character 11: "
                                 r"unknown view 'foo'"),
    ("a|b=w[0]", r"the name 'a\|b' before '=' may not hold"),
    ("prefix0[0]", "unknown view 'prefix0'"),
    ("w[0]|", r"at character 6: expected view\[offset\]"),
    ("  # nothing\n", "the feature template set is empty")])
def test_bad_templates_raise_one_line_naming_the_place(text, message):
    with pytest.raises(ConfigError, match=message) as caught:
        parse_templates(text)
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="FeatureCRFConfig.templates: .*" + message):
        registry.build("crf", task="tag", n_tags=3, templates=text)


def test_a_template_set_changes_the_model_and_survives_a_checkpoint(tiny_task, tmp_path):
    config = {"n_buckets": 4096, "c2": 0.01, "templates": "bias w[0] suffix2[0] w[-1]|w[0]"}
    model = registry.build_for_task("crf", tiny_task.model_defaults(), config, task="tag").fit(tiny_task)
    assert int(model.feature_weights.ne(0).any(1).sum()) <= len({
        feature_bucket(f, 4096) for s in tiny_task.splits["train"]
        for position in template_features(s.words, parse_templates(config["templates"])) for f in position})
    assert tiny_task.evaluate(model, "test")["accuracy"] >= 0.75
    save_checkpoint(tmp_path / "crf", model, tiny_task)
    loaded = load_checkpoint(tmp_path / "crf").model
    assert loaded.config.templates == config["templates"]
    batch = tiny_task.batch(tiny_task.splits["test"] + [tagged("Cats/N ran/V")])
    assert torch.equal(loaded.tag(batch), model.tag(batch))
    assert torch.equal(loaded.emissions(loaded.hasher([["a", "cat"]])), model.emissions(model.hasher([["a", "cat"]])))


# ---- sparse storage -------------------------------------------------------------------------


def test_checkpoint_stores_only_the_non_zero_rows(tiny_task, tmp_path):
    model = FeatureCRFTagger(FeatureCRFConfig(n_tags=4, n_buckets=2**16, c1=0.05, c2=0.01)).fit(tiny_task)
    used = model.feature_weights.ne(0).any(1).nonzero()[:, 0]
    assert 0 < len(used) < 300
    state = model.state_dict()
    assert "feature_weights" not in state and torch.equal(state["feature_buckets"], used)
    assert torch.equal(state["feature_rows"], model.feature_weights[used])
    directory = save_checkpoint(tmp_path / "crf", model, tiny_task)
    assert (directory / "model.safetensors").stat().st_size < 40_000          # dense: 2^16 x 4 x 4 bytes = 1 MB
    loaded = load_checkpoint(tmp_path / "crf").model
    assert torch.equal(loaded.feature_weights, model.feature_weights)
    batch = tiny_task.batch(tiny_task.splits["test"])
    assert torch.equal(loaded.tag(batch), model.tag(batch))


def test_old_dense_checkpoints_still_load(tiny_task, tmp_path):
    model = FeatureCRFTagger(FeatureCRFConfig(n_tags=4, n_buckets=4096, c2=0.01)).fit(tiny_task)
    directory = save_checkpoint(tmp_path / "crf", model, tiny_task)
    dense = {"feature_weights": model.feature_weights.detach(),
             **{f"crf.{name}": tensor for name, tensor in model.crf.state_dict().items()}}
    safetensors.torch.save_file(dense, str(directory / "model.safetensors"))     # as before sparse storage
    info = json.loads((directory / "config.json").read_text())
    info["weights_sha256"] = file_sha256(directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(info))
    loaded = load_checkpoint(directory).model
    assert torch.equal(loaded.feature_weights, model.feature_weights)
    fresh = FeatureCRFTagger(model.config)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.feature_weights, model.feature_weights)


@pytest.mark.parametrize("change, message", [
    (lambda state: state.pop("feature_rows"), "need both feature_buckets and feature_rows"),
    (lambda state: state.update(feature_buckets=state["feature_buckets"].flip(0)), "must be increasing bucket ids"),
    (lambda state: state.update(feature_buckets=state["feature_buckets"] + 4096), r"in \[0, 4096\)"),
    (lambda state: state.update(feature_rows=state["feature_rows"][:, :2]), r"feature_rows \(R, 4\)")])
def test_a_damaged_sparse_state_is_refused(tiny_task, change, message):
    model = FeatureCRFTagger(FeatureCRFConfig(n_tags=4, n_buckets=4096, c2=0.01)).fit(tiny_task)
    state = model.state_dict()
    change(state)
    with pytest.raises(RuntimeError, match=message):
        FeatureCRFTagger(model.config).load_state_dict(state)
