"""Markov chains: transitions against counting by hand, the stationary distribution and entropy
rate against closed forms and an eigenvector in float64, sampling, NLTK, and bad input."""

import math
from collections import Counter

import nltk.lm
import pytest
import torch
from hypothesis import given, settings, strategies as st

from seqlab import registry
from seqlab.classical.markov import MarkovChain, MarkovConfig
from seqlab.errors import ConfigError, DataError


def chain(stream: list[int], vocab: int, order: int = 1, add_k: float = 0.0) -> MarkovChain:
    return MarkovChain(MarkovConfig(vocab_size=vocab, order=order, add_k=add_k)).fit_stream(torch.tensor(stream))


def reference_next(stream: list[int], history: list[int], vocab: int, order: int, add_k: float) -> list[float]:
    """p(. | history) counted by hand: the longest suffix (<= order) seen followed by a token."""
    for length in range(min(order, len(history)), 0, -1):
        context = tuple(history[-length:])
        followers = Counter(stream[i + length] for i in range(len(stream) - length)
                            if tuple(stream[i:i + length]) == context)
        total = sum(followers.values())
        if total:
            return [(followers[w] + add_k) / (total + add_k * vocab) for w in range(vocab)]
    counts = Counter(stream)
    return [(counts[w] + add_k) / (len(stream) + add_k * vocab) for w in range(vocab)]


@settings(max_examples=40, deadline=None)
@given(vocab=st.integers(2, 5), order=st.integers(1, 3), add_k=st.sampled_from([0.0, 0.5, 1.0]),
       stream=st.lists(st.integers(0, 4), min_size=1, max_size=40),
       tail=st.lists(st.integers(0, 4), min_size=1, max_size=6))
def test_transitions_are_counts_over_totals(vocab, order, add_k, stream, tail):
    stream = [token % vocab for token in stream]
    query = stream[: len(stream) // 2] + [token % vocab for token in tail]    # seen, then unseen contexts
    model = chain(stream, vocab, order, add_k)
    expected = torch.tensor([reference_next(stream, query[: t + 1], vocab, order, add_k) for t in range(len(query))],
                            dtype=torch.float64)
    with torch.no_grad():
        probs = model(torch.tensor([query]))[0].double().exp()
    torch.testing.assert_close(probs, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(query), dtype=torch.float64), rtol=0, atol=1e-5)


def test_two_state_chain_against_closed_forms():
    # 0 -> 1 with probability a, 1 -> 0 with probability b: pi = (b, a) / (a + b) and
    # H = pi_0 h(a) + pi_1 h(b), h the binary entropy in nats.
    stream = [0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 0, 1, 0, 0, 0]
    pairs = Counter(zip(stream, stream[1:]))
    a = pairs[0, 1] / (pairs[0, 0] + pairs[0, 1])
    b = pairs[1, 0] / (pairs[1, 0] + pairs[1, 1])
    model = chain(stream, 2)
    torch.testing.assert_close(model.transition_matrix(),
                               torch.tensor([[1 - a, a], [b, 1 - b]], dtype=torch.float64), rtol=1e-15, atol=0)
    torch.testing.assert_close(model.stationary_distribution(),
                               torch.tensor([b / (a + b), a / (a + b)], dtype=torch.float64), rtol=1e-12, atol=0)

    def h(p: float) -> float:
        return -p * math.log(p) - (1 - p) * math.log(1 - p)

    assert model.entropy_rate() == pytest.approx(b / (a + b) * h(a) + a / (a + b) * h(b), rel=1e-12)


def test_stationary_distribution_is_the_unit_eigenvector_in_float64():
    generator = torch.Generator().manual_seed(0)
    stream = torch.randint(0, 6, (500,), generator=generator).tolist()
    model = chain(stream, 6, add_k=0.5)
    transition = model.transition_matrix()
    eigenvalues, eigenvectors = torch.linalg.eig(transition.T)
    unit = eigenvectors[:, (eigenvalues - 1).abs().argmin()].real
    torch.testing.assert_close(model.stationary_distribution(), unit / unit.sum(), rtol=1e-10, atol=1e-12)
    pi = model.stationary_distribution()
    torch.testing.assert_close(pi @ transition, pi, rtol=1e-12, atol=1e-14)
    expected = -(pi[:, None] * transition * transition.log()).sum().item()
    assert model.entropy_rate() == pytest.approx(expected, rel=1e-12)


def test_states_never_followed_move_by_the_order_zero_distribution():
    # 0 never occurs and 3 only last: their rows are (n(w) + a) / (N + a V), N = 5, V = 4.
    model = chain([1, 2, 1, 2, 3], 4, add_k=0.5)
    order_zero = torch.tensor([0.5, 2.5, 2.5, 1.5], dtype=torch.float64) / 7
    transition = model.transition_matrix()
    torch.testing.assert_close(transition[[0, 3]], order_zero.expand(2, -1), rtol=1e-15, atol=0)
    torch.testing.assert_close(transition[1], torch.tensor([0.5, 0.5, 2.5, 0.5], dtype=torch.float64) / 4,
                               rtol=1e-15, atol=0)


def test_samples_follow_the_chain():
    # 3 states: a chain fitted to a sample recovers the transitions and the stationary
    # distribution to within ~5 standard errors (about 1,700 visits per state).
    source = chain([0, 1, 1, 2, 0, 0, 2, 1, 0, 2, 2, 2, 1, 0, 1, 2, 0, 1, 1, 1, 0], 3, add_k=0.5)
    sample = source.sample(5_000, seed=0)
    assert sample.shape == (5_000,) and int(sample.min()) >= 0 and int(sample.max()) < 3
    refitted = chain(sample.tolist(), 3)
    torch.testing.assert_close(refitted.transition_matrix(), source.transition_matrix(), rtol=0, atol=0.06)
    frequencies = torch.bincount(sample, minlength=3).double() / len(sample)
    torch.testing.assert_close(frequencies, source.stationary_distribution(), rtol=0, atol=0.06)
    assert torch.equal(source.sample(50, seed=1), source.sample(50, seed=1))


def test_matches_nltk_mle_and_laplace_on_seen_contexts():
    # A Markov chain of order k is NLTK's MLE / Laplace (k + 1)-gram model wherever the context
    # was seen: both are (n(c w) + a) / (n(c .) + a V) there (NLTK has no back-off, and gives
    # 0 or 1/V on unseen contexts, where ours falls back to a shorter context).
    generator = torch.Generator().manual_seed(1)
    stream = torch.randint(1, 5, (200,), generator=generator).tolist()        # ids 1..4; 0 is <unk>
    words = list(map(str, stream))
    for add_k, reference in ((0.0, nltk.lm.MLE(3)), (1.0, nltk.lm.Laplace(3))):
        reference.fit([list(nltk.everygrams(words, max_len=3))], vocabulary_text=words)
        assert len(reference.vocab) == 5                                      # 4 words and <UNK>
        model = chain(stream, 5, order=2, add_k=add_k)
        contexts = sorted({tuple(stream[i:i + 2]) for i in range(len(stream) - 2)})
        with torch.no_grad():
            ours = model(torch.tensor(contexts))[:, 1].double().exp()          # (contexts, V)
        theirs = torch.tensor([[reference.score("<UNK>", list(map(str, c)))]
                               + [reference.score(str(w), list(map(str, c))) for w in range(1, 5)]
                               for c in contexts], dtype=torch.float64)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)


def test_an_unfitted_chain_is_uniform():
    model = MarkovChain(MarkovConfig(vocab_size=9))
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([[1, 2, 3, 4]])), torch.full((1, 4, 9), -math.log(9)),
                                   rtol=0, atol=1e-6)


def test_bad_input_raises_one_line_errors():
    cases = [
        (ConfigError, lambda: registry.build("markov", vocab_size=5, order=0), "order"),
        (ConfigError, lambda: registry.build("markov", vocab_size=5, add_k=-1), "add_k"),
        (DataError, lambda: chain([], 5), "empty"),
        (DataError, lambda: chain([1, 9], 5), "outside"),
        (DataError, lambda: chain([1, 2], 5)(torch.tensor([[-1, 2]])), "outside"),
        (ConfigError, lambda: chain([1, 2, 3], 5, order=2).stationary_distribution(), "order 1"),
        (ConfigError, lambda: chain([1, 2], 5).sample(0), "length"),
    ]
    for error, action, needle in cases:
        with pytest.raises(error, match=needle) as raised:
            action()
        assert "\n" not in str(raised.value)
