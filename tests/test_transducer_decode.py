"""Transducer decoding on a toy transducer (an LSTM prediction network and a linear joint):
greedy against a recompute-everything reference, beam search against brute-force enumeration of
the frame-bounded process and against the transducer loss, beam 1 against greedy, bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from seqlab.errors import ConfigError, DataError
from seqlab.speech.recogniser import BLANK
from seqlab.speech.transducer_decode import Transducer, transducer_beam_search, transducer_greedy
from seqlab.speech.transducer_loss import rnnt_nll


class ToyTransducer(nn.Module):
    """An LSTM prediction network (state (h, c), each (1, B, H)) and a one-layer tanh joint,
    initialised so that both the frame and the prefix move the output distribution, and
    ``blank_bias`` makes blanks more frequent."""

    def __init__(self, vocab_size: int, encoder_dim: int = 4, hidden: int = 6, seed: int = 0, blank_bias: float = 1.0):
        super().__init__()
        torch.manual_seed(seed)
        self.embedding = nn.Embedding(vocab_size, hidden)
        self.lstm = nn.LSTM(hidden, hidden)
        self.encoder_proj = nn.Linear(encoder_dim, hidden)
        self.predictor_proj = nn.Linear(hidden, hidden, bias=False)
        self.output = nn.Linear(hidden, vocab_size)
        self.hidden = hidden
        with torch.no_grad():
            self.encoder_proj.weight.normal_(0.0, 0.5)
            self.predictor_proj.weight.normal_(0.0, 1.0)
            self.output.weight.normal_(0.0, 1.5)
            self.output.bias.zero_()[BLANK] = blank_bias
            for weight in self.lstm.parameters():
                weight.mul_(3.0)                       # a prediction network whose state matters
        self.double()

    def predictor_init(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = torch.zeros(1, batch_size, self.hidden, dtype=torch.float64)
        return zeros, zeros.clone()

    def predictor_step(self, tokens, state):
        output, state = self.lstm(self.embedding(tokens)[None], state)                 # (1, B, H)
        return output[0], state

    def joint(self, encoder_out, predictor_out):
        return self.output(torch.tanh(self.encoder_proj(encoder_out) + self.predictor_proj(predictor_out)))

    def predictor_sequence(self, labels: tuple[int, ...]) -> torch.Tensor:
        """(U+1, H) outputs after reading BLANK, y_1, ..., y_u: the whole prefix at once, without
        the step-by-step state the decoders carry."""
        tokens = torch.tensor([BLANK, *labels])
        output, _ = self.lstm(self.embedding(tokens)[:, None])                          # (U+1, 1, H)
        return output[:, 0]


def encoder_vectors(frames: int, seed: int, batch_size: int | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (frames, 4) if batch_size is None else (batch_size, frames, 4)
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def step_log_probs(model: ToyTransducer, encoder_out: torch.Tensor):
    """log p(. | t, prefix), cached, computed from scratch for every prefix."""
    cache: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}

    def log_probs(t: int, prefix: tuple[int, ...]) -> torch.Tensor:
        if (t, prefix) not in cache:
            with torch.no_grad():
                predictor_out = model.predictor_sequence(prefix)[-1]
                cache[t, prefix] = model.joint(encoder_out[t], predictor_out).log_softmax(-1)
        return cache[t, prefix]
    return log_probs


def greedy_reference(model: ToyTransducer, encoder_out: torch.Tensor, max_symbols_per_frame: int) -> list[int]:
    log_probs = step_log_probs(model, encoder_out)
    labels: tuple[int, ...] = ()
    for t in range(encoder_out.shape[0]):
        for _ in range(max_symbols_per_frame):
            best = int(log_probs(t, labels).argmax())
            if best == BLANK:
                break
            labels += (best,)
    return list(labels)


def brute_force_frame_bounded(model: ToyTransducer, encoder_out: torch.Tensor, vocab_size: int,
                              max_symbols_per_frame: int) -> dict[tuple[int, ...], float]:
    """log P_m(y) for every y: enumerate every alignment of the frame-bounded process (each frame
    emits k <= m labels, then a blank if k < m) and log-add the alignments of each label sequence."""
    log_probs = step_log_probs(model, encoder_out)
    labels = [v for v in range(vocab_size) if v != BLANK]
    frame_choices = [emitted for k in range(max_symbols_per_frame + 1) for emitted in itertools.product(labels, repeat=k)]
    totals: dict[tuple[int, ...], list[float]] = {}
    for alignment in itertools.product(frame_choices, repeat=encoder_out.shape[0]):
        prefix: tuple[int, ...] = ()
        total = 0.0
        for t, emitted in enumerate(alignment):
            for label in emitted:
                total += float(log_probs(t, prefix)[label])
                prefix += (label,)
            if len(emitted) < max_symbols_per_frame:
                total += float(log_probs(t, prefix)[BLANK])
        totals.setdefault(prefix, []).append(total)
    return {y: torch.logsumexp(torch.tensor(parts, dtype=torch.float64), 0).item() for y, parts in totals.items()}


def test_toy_model_is_a_transducer():
    assert isinstance(ToyTransducer(3), Transducer)


@pytest.mark.parametrize("max_symbols_per_frame", [1, 2, 4])
@pytest.mark.parametrize("seed", [0, 1, 3])
def test_batched_greedy_equals_per_utterance_reference(max_symbols_per_frame, seed):
    model = ToyTransducer(5, seed=seed)
    encoder_out = encoder_vectors(7, seed=2, batch_size=4)
    lengths = torch.tensor([7, 3, 0, 5])
    decoded = transducer_greedy(model, encoder_out, lengths, max_symbols_per_frame=max_symbols_per_frame)
    expected = [greedy_reference(model, encoder_out[b, :int(lengths[b])], max_symbols_per_frame) for b in range(4)]
    assert decoded == expected
    assert any(len(labels) > 2 for labels in decoded)                # the toy does emit


@pytest.mark.parametrize("max_symbols_per_frame", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_of_one_is_greedy(max_symbols_per_frame, seed):
    model = ToyTransducer(5, seed=seed)
    encoder_out = encoder_vectors(8, seed=seed + 10)
    (labels, _), = transducer_beam_search(model, encoder_out, beam_size=1, max_symbols_per_frame=max_symbols_per_frame)
    greedy, = transducer_greedy(model, encoder_out[None], torch.tensor([8]), max_symbols_per_frame=max_symbols_per_frame)
    assert labels == greedy


@pytest.mark.parametrize("frames,vocab_size,max_symbols_per_frame", [(1, 3, 2), (2, 3, 1), (2, 3, 2), (3, 3, 2),
                                                                     (3, 2, 3), (2, 4, 2)])
def test_wide_beam_equals_brute_force_frame_bounded_probabilities(frames, vocab_size, max_symbols_per_frame):
    model = ToyTransducer(vocab_size, seed=frames + vocab_size)
    encoder_out = encoder_vectors(frames, seed=3)
    expected = brute_force_frame_bounded(model, encoder_out, vocab_size, max_symbols_per_frame)
    found = transducer_beam_search(model, encoder_out, beam_size=10_000, max_symbols_per_frame=max_symbols_per_frame)
    assert len(found) == len(expected)
    for labels, log_prob in found:
        assert math.isclose(log_prob, expected[tuple(labels)], rel_tol=0, abs_tol=1e-10), labels
    assert found[0][0] == list(max(expected, key=expected.get))
    assert [score for _, score in found] == sorted((score for _, score in found), reverse=True)
    total = torch.logsumexp(torch.tensor([score for _, score in found], dtype=torch.float64), 0).item()
    assert abs(total) < 1e-10                                        # a proper distribution


@torch.no_grad()
def test_wide_beam_scores_of_short_sequences_equal_the_transducer_loss():
    """Every alignment of a y with |y| < m has fewer than m labels per frame, so P_m(y) is the
    lattice probability that the loss computes."""
    model = ToyTransducer(3, seed=4)
    encoder_out = encoder_vectors(3, seed=5)
    found = transducer_beam_search(model, encoder_out, beam_size=10_000, max_symbols_per_frame=3)
    checked = 0
    for labels, log_prob in found:
        if len(labels) >= 3:
            continue
        predictor_out = model.predictor_sequence(tuple(labels))                         # (U+1, H)
        log_probs = model.joint(encoder_out[:, None], predictor_out[None]).log_softmax(-1)   # (T, U+1, V)
        loss = rnnt_nll(log_probs[None], torch.tensor([3]), torch.tensor([labels]).reshape(1, -1),
                        torch.tensor([len(labels)]))
        assert math.isclose(-float(loss), log_prob, rel_tol=0, abs_tol=1e-10), labels
        checked += 1
    assert checked == 1 + 2 + 4


def test_narrow_beam_scores_are_lower_bounds_and_sorted():
    model = ToyTransducer(3, seed=6)
    encoder_out = encoder_vectors(3, seed=7)
    exact = brute_force_frame_bounded(model, encoder_out, 3, 2)
    found = transducer_beam_search(model, encoder_out, beam_size=3, max_symbols_per_frame=2)
    assert len(found) == 3                                             # the beam is full: more than 3 sequences
    assert len({tuple(labels) for labels, _ in found}) == 3           # equal label sequences were merged
    assert [score for _, score in found] == sorted((score for _, score in found), reverse=True)
    for labels, log_prob in found:
        assert log_prob <= exact[tuple(labels)] + 1e-12


def test_bad_input():
    model = ToyTransducer(3)
    with pytest.raises(ConfigError, match="beam_size is 0"):
        transducer_beam_search(model, encoder_vectors(3, 0), beam_size=0)
    with pytest.raises(ConfigError, match="max_symbols_per_frame is 0"):
        transducer_greedy(model, encoder_vectors(3, 0, 2), torch.tensor([3, 3]), max_symbols_per_frame=0)
    with pytest.raises(DataError, match="one utterance's"):
        transducer_beam_search(model, encoder_vectors(3, 0, 2))
    with pytest.raises(DataError, match="lengths must lie in"):
        transducer_greedy(model, encoder_vectors(3, 0, 2), torch.tensor([4, 3]))
    with pytest.raises(DataError, match="must be"):
        transducer_greedy(model, encoder_vectors(3, 0), torch.tensor([3]))
