"""The second-order HMM chain (seqlab.classical.trigram_chain): Viterbi, the forward algorithm,
path scores and the conditional log-likelihood, each against enumeration of every tag sequence
in float64, on padded batches with and without capitalisation classes."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from seqlab.classical.trigram_chain import (hmm_viterbi_ref, path_score_ref, trigram_log_likelihood,
                                            trigram_log_partition, trigram_log_partition_ref, trigram_path_score,
                                            trigram_viterbi)
from seqlab.errors import DataError


def random_log_transitions(k: int, n_classes: int, order: int, generator: torch.Generator) -> torch.Tensor:
    """Normalised random ``log P(z3 | history)`` over C K + 2 symbols, (S,)*order, float64."""
    s = n_classes * k + 2
    logits = torch.randn((s,) * order, generator=generator, dtype=torch.float64) * 2
    return torch.log_softmax(logits, dim=-1)


def random_chain(order: int, k: int, n_classes: int, lengths: list[int], seed: int):
    """Transitions (the reference's table and the (S, S, S) one), padded emissions (B, T, K),
    classes (B, T) and mask (B, T) of a random second- or first-order chain."""
    generator = torch.Generator().manual_seed(seed)
    transitions = random_log_transitions(k, n_classes, order, generator)
    batch, length = len(lengths), max(lengths)
    log_emit = torch.randn(batch, length, k, generator=generator, dtype=torch.float64) * 3
    classes = torch.randint(0, n_classes, (batch, length), generator=generator)
    mask = torch.arange(length) < torch.tensor(lengths)[:, None]
    # A first-order model is a second-order one whose table does not depend on z1.
    table = transitions if order == 3 else transitions.expand((transitions.shape[0],) * 3)
    return transitions, table, log_emit, classes, mask


CHAINS = dict(order=st.sampled_from([2, 3]), k=st.integers(1, 3), n_classes=st.integers(1, 2),
              lengths=st.lists(st.integers(1, 4), min_size=1, max_size=3), seed=st.integers(0, 2 ** 16))


# --- Viterbi --------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(**CHAINS)
def test_viterbi_is_the_best_path_by_enumeration(order, k, n_classes, lengths, seed):
    transitions, table, log_emit, classes, mask = random_chain(order, k, n_classes, lengths, seed)
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
    # The forward algorithm sums the two paths: log(e^-5 + e^-3.5).
    expected = math.log(math.exp(-1.0 - 1.0 - 3.0) + math.exp(-2.0 - 1.0 - 0.5))
    assert trigram_log_partition_ref(transitions, log_emit, 3) == pytest.approx(expected, rel=1e-15)
    torch.testing.assert_close(trigram_log_partition(transitions, log_emit[None]),
                               torch.tensor([expected], dtype=torch.float64), rtol=1e-15, atol=0)


# --- The forward algorithm and the conditional log-likelihood -------------------------------------


@settings(max_examples=80, deadline=None)
@given(**CHAINS)
def test_log_partition_path_score_and_log_likelihood_equal_enumeration(order, k, n_classes, lengths, seed):
    transitions, table, log_emit, classes, mask = random_chain(order, k, n_classes, lengths, seed)
    tags = torch.randint(0, k, mask.shape, generator=torch.Generator().manual_seed(seed + 1))
    tags[~mask] = 7                                                     # padding may hold anything
    log_z = trigram_log_partition(table, log_emit, mask, classes)
    score = trigram_path_score(table, log_emit, tags, mask, classes)
    log_likelihood = trigram_log_likelihood(table, log_emit, tags, mask, classes)
    expected_log_z, expected_score = [], []
    for row, n in enumerate(lengths):
        row_classes = classes[row, :n].tolist()
        expected_log_z.append(trigram_log_partition_ref(transitions, log_emit[row, :n], order, row_classes))
        expected_score.append(path_score_ref(transitions, log_emit[row, :n], tags[row, :n].tolist(), order,
                                             row_classes))
    expected_log_z, expected_score = (torch.tensor(x, dtype=torch.float64) for x in (expected_log_z, expected_score))
    torch.testing.assert_close(log_z, expected_log_z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(score, expected_score, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_likelihood, expected_score - expected_log_z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_classes", [1, 2])
@pytest.mark.parametrize("length", [1, 2, 3, 4])
def test_conditional_probabilities_of_every_tag_sequence_sum_to_one(length, n_classes):
    # Every one of the K^L tag sequences of one sentence, as rows of one batch.
    k = 3
    _, table, log_emit, classes, mask = random_chain(3, k, n_classes, [length], seed=length + 10 * n_classes)
    every = torch.tensor(list(itertools.product(range(k), repeat=length)))             # (K^L, L)
    rows = len(every)
    log_likelihood = trigram_log_likelihood(table, log_emit.expand(rows, -1, -1), every, mask.expand(rows, -1),
                                            classes.expand(rows, -1))
    assert log_likelihood.shape == (k ** length,) and (log_likelihood <= 0).all()
    torch.testing.assert_close(log_likelihood.exp().sum(), torch.tensor(1.0, dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_padding_changes_nothing_and_a_zero_probability_path_is_minus_infinity():
    transitions, table, log_emit, classes, mask = random_chain(3, 3, 2, [4, 2, 1], seed=5)
    tags = torch.randint(0, 3, mask.shape, generator=torch.Generator().manual_seed(6))
    together = trigram_log_likelihood(table, log_emit, tags, mask, classes)
    for row, n in enumerate([4, 2, 1]):
        alone = trigram_log_likelihood(table, log_emit[row:row + 1, :n], tags[row:row + 1, :n], None,
                                       classes[row:row + 1, :n])
        torch.testing.assert_close(together[row:row + 1], alone, rtol=1e-14, atol=1e-14)
    impossible = log_emit.clone()
    impossible[0, 1, tags[0, 1]] = -math.inf                            # the gold tag cannot emit word 1
    log_likelihood = trigram_log_likelihood(table, impossible, tags, mask, classes)
    assert log_likelihood[0] == -math.inf and torch.isfinite(log_likelihood[1:]).all()


def test_bad_shapes_and_tags_raise_data_errors():
    _, table, log_emit, classes, mask = random_chain(3, 3, 1, [3, 2], seed=7)
    with pytest.raises(DataError, match="do not fit 2 tags"):
        trigram_log_partition(table, log_emit[..., :2], mask)
    with pytest.raises(DataError, match=r"tags must have shape \(2, 3\)"):
        trigram_path_score(table, log_emit, torch.zeros(2, 2, dtype=torch.long), mask)
    with pytest.raises(DataError, match=r"tag 3 of word 1 of sentence 0 is outside \[0, 3\)"):
        trigram_path_score(table, log_emit, torch.tensor([[0, 3, 0], [0, 0, 0]]), mask)
