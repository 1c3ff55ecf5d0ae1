"""CTC prefix beam search: exact against brute force over every labelling (with and without a
language model, a hand-made bigram table and a fitted seqlab NGramLM), its probability
bookkeeping, and the NGramLM adapter against the LM's own scoring."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqlab.classical.ngram import NGramConfig, NGramLM
from seqlab.errors import ConfigError, DataError
from seqlab.speech.ctc import collapse
from seqlab.speech.ctc_beam import NGramScorer, PrefixScorer, ctc_prefix_beam_search, ctc_prefix_beam_search_batch

FULL_BEAM = 1000        # more than the 1 + 3 + ... + 3^4 = 121 labellings of T <= 4, V <= 4


def ctc_log_probs_of_every_labelling(log_probs: torch.Tensor) -> dict[tuple[int, ...], float]:
    """log p(y | x) for every labelling y of positive probability, summing all V^T paths."""
    frames, vocab = log_probs.shape
    by_labelling: dict[tuple[int, ...], list[float]] = {}
    for path in itertools.product(range(vocab), repeat=frames):
        score = sum(float(log_probs[t, k]) for t, k in enumerate(path))
        by_labelling.setdefault(tuple(collapse(list(path))), []).append(score)
    return {y: float(torch.logsumexp(torch.tensor(s, dtype=torch.float64), 0)) for y, s in by_labelling.items()}


def brute_force_best(log_probs, lm_log_prob, lm_weight, length_bonus) -> tuple[list[int], float]:
    """argmax over every labelling y (length <= T) of the fused score, and the maximum."""
    frames, vocab = log_probs.shape
    ctc = ctc_log_probs_of_every_labelling(log_probs)
    candidates = (y for n in range(frames + 1) for y in itertools.product(range(1, vocab), repeat=n))
    scored = [(ctc.get(y, -math.inf) + lm_weight * lm_log_prob(list(y)) + length_bonus * len(y), y)
              for y in candidates]
    best_score, best = max(scored)
    return list(best), best_score


class BigramScorer:
    """A random bigram table over symbols 1 .. V-1 and an end, as a PrefixScorer (state: last symbol)."""

    def __init__(self, vocab: int, generator: torch.Generator):
        # Row 0 is the start context; column 0 is the end.
        self.table = (torch.randn(vocab, vocab, generator=generator, dtype=torch.float64) * 1.5).log_softmax(-1)

    def initial(self) -> int:
        return 0

    def advance(self, state: int, symbol: int) -> tuple[float, int]:
        return float(self.table[state, symbol]), symbol

    def finish(self, state: int) -> float:
        return float(self.table[state, 0])

    def log_prob(self, labelling: list[int]) -> float:
        """The same, from the definition: sum of table entries along <s> y </s>."""
        context = [0] + labelling
        return sum(float(self.table[a, b]) for a, b in zip(context, labelling + [0]))


def fitted_ngram(order: int, sentence_start_inside: bool) -> NGramLM:
    """An NGramLM over LM ids 0..2 (symbols 1..3 shifted down one), 3 = </s>, fitted on a few
    short sentences; <s> its own id (5) or id 4 among its ids."""
    start = 4 if sentence_start_inside else 5
    config = NGramConfig(vocab_size=5, order=order, estimator="kneser_ney",
                         sentence_start_id=4 if sentence_start_inside else None)
    sentences = [[0, 1], [1, 1, 2], [2, 0], [0, 0, 1, 2], [1]]
    stream = [i for s in sentences for i in [start] + s + [3]]
    return NGramLM(config).fit_stream(torch.tensor(stream))


SYMBOL_TO_LM_ID = {1: 0, 2: 1, 3: 2}


def ngram_log_prob(lm: NGramLM, labelling: list[int]) -> float:
    """log p(y </s>) from the LM's own scoring of the whole stream <s> y </s>."""
    history = torch.tensor([[lm.start_id] + [SYMBOL_TO_LM_ID[s] for s in labelling] + [3]])
    return float(lm.score_stream(history).double().sum())


def random_log_probs(seed: int, frames: int, vocab: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(frames, vocab, generator=generator, dtype=torch.float64) * 2).log_softmax(-1)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), frames=st.integers(1, 4), vocab=st.integers(2, 4),
       lm_weight=st.sampled_from([0.0, 0.5, 1.3]), length_bonus=st.sampled_from([-1.0, 0.0, 0.7]))
def test_a_full_beam_finds_the_brute_force_best_with_a_bigram_scorer(seed, frames, vocab, lm_weight, length_bonus):
    log_probs = random_log_probs(seed, frames, vocab)
    scorer = BigramScorer(vocab, torch.Generator().manual_seed(seed + 1))
    best, best_score = brute_force_best(log_probs, scorer.log_prob, lm_weight, length_bonus)
    hypotheses = ctc_prefix_beam_search(log_probs, beam_size=FULL_BEAM, scorer=scorer, lm_weight=lm_weight,
                                        length_bonus=length_bonus)
    assert hypotheses[0][0] == best
    assert math.isclose(hypotheses[0][1], best_score, rel_tol=1e-9, abs_tol=1e-9)
    assert [h[1] for h in hypotheses] == sorted((h[1] for h in hypotheses), reverse=True)


@pytest.mark.parametrize("order,sentence_start_inside", [(2, False), (3, False), (3, True)])
def test_a_full_beam_finds_the_brute_force_best_with_a_fitted_ngram_lm(order, sentence_start_inside):
    lm = fitted_ngram(order, sentence_start_inside)
    scorer = NGramScorer(lm, SYMBOL_TO_LM_ID, end_lm_id=3)
    for seed, frames, lm_weight, length_bonus in [(0, 4, 1.0, 0.0), (1, 4, 2.0, 1.0), (2, 3, 0.6, -0.5), (3, 4, 3.0, 2.0)]:
        log_probs = random_log_probs(seed, frames, 4)
        best, best_score = brute_force_best(log_probs, lambda y: ngram_log_prob(lm, y), lm_weight, length_bonus)
        hypotheses = ctc_prefix_beam_search(log_probs, beam_size=FULL_BEAM, scorer=scorer, lm_weight=lm_weight,
                                            length_bonus=length_bonus)
        assert hypotheses[0][0] == best
        assert math.isclose(hypotheses[0][1], best_score, rel_tol=1e-6, abs_tol=1e-6)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), frames=st.integers(1, 4), vocab=st.integers(2, 4))
def test_a_full_beam_without_lm_returns_every_labelling_with_its_ctc_probability(seed, frames, vocab):
    log_probs = random_log_probs(seed, frames, vocab)
    expected = ctc_log_probs_of_every_labelling(log_probs)
    hypotheses = ctc_prefix_beam_search(log_probs, beam_size=FULL_BEAM)
    assert sorted(tuple(y) for y, _ in hypotheses) == sorted(expected)
    for labelling, score in hypotheses:
        assert math.isclose(math.exp(score), math.exp(expected[tuple(labelling)]), rel_tol=1e-9, abs_tol=1e-15)
    assert math.isclose(sum(math.exp(score) for _, score in hypotheses), 1.0, rel_tol=1e-9)


def test_a_small_beam_keeps_beam_size_hypotheses_and_pruning_by_log_prob_drops_symbols():
    log_probs = random_log_probs(5, 6, 4)
    hypotheses = ctc_prefix_beam_search(log_probs, beam_size=3)
    assert len(hypotheses) == 3
    full = dict((tuple(y), s) for y, s in ctc_prefix_beam_search(log_probs, beam_size=FULL_BEAM))
    for labelling, score in hypotheses:            # a beam never overstates a prefix's probability
        assert score <= full[tuple(labelling)] + 1e-12
    peaked = torch.full((3, 4), -30.0, dtype=torch.float64)
    peaked[:, 0], peaked[1, 2] = -0.1, -2.4
    pruned = ctc_prefix_beam_search(peaked, beam_size=FULL_BEAM, prune_log_prob=-5.0)
    assert sorted(y for y, _ in pruned) == [[], [2]]


def test_the_batched_search_equals_one_utterance_at_a_time():
    log_probs = torch.stack([random_log_probs(seed, 5, 4) for seed in range(3)])
    lengths = torch.tensor([5, 2, 4])
    batched = ctc_prefix_beam_search_batch(log_probs, lengths, beam_size=4, length_bonus=0.2)
    for b in range(3):
        assert batched[b] == ctc_prefix_beam_search(log_probs[b, : lengths[b]], beam_size=4, length_bonus=0.2)
    with pytest.raises(DataError, match="utterance 1 of the batch has length 0"):
        ctc_prefix_beam_search_batch(log_probs, torch.tensor([5, 0, 4]), beam_size=2)


class CountingLM(NGramLM):
    steps = 0

    def step(self, token, state):
        CountingLM.steps += 1
        return super().step(token, state)


def advance_through(scorer, labelling: list[int]) -> float:
    """log p(y </s>) by the scorer, one symbol at a time."""
    state, total = scorer.initial(), 0.0
    for symbol in labelling:
        log_p, state = scorer.advance(state, symbol)
        total += log_p
    return total + scorer.finish(state)


def test_the_ngram_scorer_scores_like_the_lm():
    lm = fitted_ngram(3, False)
    scorer = NGramScorer(lm, SYMBOL_TO_LM_ID, end_lm_id=3)
    assert isinstance(scorer, PrefixScorer)
    for labelling in ([], [1], [2, 2, 3], [3, 1, 1, 2, 2, 1]):
        assert math.isclose(advance_through(scorer, labelling), ngram_log_prob(lm, labelling), rel_tol=1e-6)


def test_the_ngram_scorer_steps_once_per_extended_prefix_and_shares_steps_of_equal_contexts():
    lm = fitted_ngram(3, False)
    counting = CountingLM(lm.config)
    counting.load_state_dict(lm.state_dict())
    scorer = NGramScorer(counting, SYMBOL_TO_LM_ID, end_lm_id=3)
    CountingLM.steps = 0
    root = scorer.initial()
    children = [scorer.advance(root, symbol)[1] for symbol in (1, 2, 3)]
    assert CountingLM.steps == 0                                  # <s>'s distribution needs no step
    for child in children:
        for symbol in (1, 2, 3):
            scorer.advance(child, symbol)
        scorer.finish(child)
    assert CountingLM.steps == 3                                  # one per extended prefix
    CountingLM.steps = 0
    advance_through(scorer, [1, 2, 3])                            # steps reading 2 and 3 (1 is cached)
    assert CountingLM.steps == 2
    advance_through(scorer, [3, 1, 2, 3])       # reading 1 after 3, 2 after 3 1; 3 after (1, 2) is cached
    assert CountingLM.steps == 4


def test_an_lm_started_by_an_id_it_reads_equals_its_own_start():
    lm = fitted_ngram(3, True)                                    # <s> is id 4, among the LM's ids
    own, read = NGramScorer(lm, SYMBOL_TO_LM_ID, end_lm_id=3), NGramScorer(lm, SYMBOL_TO_LM_ID, start_lm_id=4,
                                                                           end_lm_id=3)
    for scorer in (own, read):
        assert math.isclose(advance_through(scorer, [2, 1, 1]), ngram_log_prob(lm, [2, 1, 1]), rel_tol=1e-6)


def test_bad_scorer_and_search_arguments_are_clear_errors():
    lm = fitted_ngram(2, False)
    with pytest.raises(ConfigError, match=r"symbol_to_lm_id\[3\] = 9 is outside the LM's 5 ids"):
        NGramScorer(lm, {1: 0, 3: 9})
    with pytest.raises(DataError, match="symbol 2 has no LM id"):
        NGramScorer(lm, {1: 0}).advance(NGramScorer(lm, {1: 0}).initial(), 2)
    with pytest.raises(ConfigError, match="beam_size must be >= 1"):
        ctc_prefix_beam_search(random_log_probs(0, 2, 3), beam_size=0)
    with pytest.raises(DataError, match=r"log_probs must be a \(T, V\) float tensor"):
        ctc_prefix_beam_search(random_log_probs(0, 2, 3)[None], beam_size=2)
