"""CTC: torch's loss against the chain reference and brute-force enumeration of every path;
greedy decoding; forced alignment against brute force; word timestamps on a constructed case."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqlab.errors import DataError
from seqlab.speech.ctc import (
    collapse, ctc_align, ctc_greedy, ctc_nll, ctc_nll_ref, repeated_labels, word_timestamps,
)


def brute_force(log_probs: torch.Tensor, target: list[int]) -> tuple[float, float]:
    """log p(target | x) and the best path's log-probability, over all V^T paths of (T, V)."""
    frames, vocab = log_probs.shape
    scores = [sum(float(log_probs[t, k]) for t, k in enumerate(path))
              for path in itertools.product(range(vocab), repeat=frames) if collapse(list(path)) == target]
    if not scores:
        return -math.inf, -math.inf
    return float(torch.logsumexp(torch.tensor(scores, dtype=torch.float64), 0)), max(scores)


def random_batch(seed: int, batch: int, max_frames: int, vocab: int, max_target: int):
    """Random log-softmaxed logits (float64), feasible lengths, targets with repeats, padding."""
    generator = torch.Generator().manual_seed(seed)
    target_lengths = torch.randint(0, max_target + 1, (batch,), generator=generator)
    targets = torch.randint(1, vocab, (batch, max_target), generator=generator)
    targets = targets.masked_fill(torch.arange(max_target)[None] >= target_lengths[:, None], 0)
    needed = (target_lengths + repeated_labels(targets, target_lengths)).clamp_min(1)
    lengths = needed + torch.randint(0, 3, (batch,), generator=generator)
    frames = max(int(lengths.max()), max_frames)
    logits = torch.randn(batch, frames, vocab, generator=generator, dtype=torch.float64) * 2
    return logits, lengths, targets, target_lengths


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), batch=st.integers(1, 4), vocab=st.integers(2, 5), max_target=st.integers(0, 5))
def test_torch_loss_equals_the_chain_reference_in_value_and_gradient(seed, batch, vocab, max_target):
    logits, lengths, targets, target_lengths = random_batch(seed, batch, 8, vocab, max_target)
    logits.requires_grad_(True)
    losses, grads = [], []
    for nll in (ctc_nll, ctc_nll_ref):
        loss = nll(logits.log_softmax(-1), lengths, targets, target_lengths)
        # A weighted sum, so that each utterance's gradient is checked on its own.
        weights = torch.arange(1, batch + 1, dtype=torch.float64)
        losses.append(loss.detach())
        grads.append(torch.autograd.grad((loss * weights).sum(), logits)[0])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-12)


def test_gradients_with_respect_to_log_probs_differ_by_exactly_exp_log_probs():
    # torch's ctc_loss presumes a log-softmax before it (module docstring): its d/d log_probs is
    # exp(log_probs) - gamma at real frames, the reference's -gamma, the exact one.
    logits, lengths, targets, target_lengths = random_batch(3, 3, 6, 4, 3)
    log_probs = logits.log_softmax(-1).requires_grad_(True)
    torch_grad = torch.autograd.grad(ctc_nll(log_probs, lengths, targets, target_lengths).sum(), log_probs)[0]
    ref_grad = torch.autograd.grad(ctc_nll_ref(log_probs, lengths, targets, target_lengths).sum(), log_probs)[0]
    real = (torch.arange(log_probs.shape[1])[None, :, None] < lengths[:, None, None])
    torch.testing.assert_close(torch_grad - ref_grad, log_probs.exp().detach() * real, rtol=1e-9, atol=1e-12)
    # -gamma: at every real frame the posteriors over ids sum to one.
    torch.testing.assert_close(-ref_grad.sum(-1), real[..., 0].double(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("frames,vocab", [(1, 2), (3, 2), (4, 3), (5, 3)])
def test_loss_and_alignment_equal_brute_force_over_every_path(frames, vocab):
    generator = torch.Generator().manual_seed(frames * 10 + vocab)
    targets_to_try = [[]] + [list(y) for n in (1, 2, 3) for y in itertools.product(range(1, vocab), repeat=n)]
    for target in targets_to_try:
        log_probs = (torch.randn(frames, vocab, generator=generator, dtype=torch.float64) * 2).log_softmax(-1)
        log_p, best = brute_force(log_probs, target)
        if log_p == -math.inf:          # too short: an error, tested below
            continue
        args = (log_probs[None], torch.tensor([frames]), torch.tensor([target + [0]]), torch.tensor([len(target)]))
        for nll in (ctc_nll, ctc_nll_ref):
            torch.testing.assert_close(nll(*args), torch.tensor([-log_p], dtype=torch.float64), rtol=1e-10, atol=1e-12)
        alignment = ctc_align(log_probs, None, torch.tensor(target, dtype=torch.long))
        path = alignment.symbols.tolist()
        assert collapse(path) == target
        assert math.isclose(float(alignment.log_prob), best, rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(sum(float(log_probs[t, k]) for t, k in enumerate(path)), best, rel_tol=1e-12)


def test_batched_alignment_collapses_to_each_target_and_positions_match_symbols():
    logits, lengths, targets, target_lengths = random_batch(7, 4, 9, 4, 4)
    alignment = ctc_align(logits.log_softmax(-1), lengths, targets, target_lengths)
    for b in range(4):
        one = alignment.utterance(b)
        n, target = int(lengths[b]), targets[b, : int(target_lengths[b])].tolist()
        assert collapse(one.symbols[:n].tolist()) == target
        assert (one.symbols[n:] == 0).all() and (one.positions[n:] == -1).all()
        for position, symbol in zip(one.positions.tolist(), one.symbols.tolist()):
            assert symbol == (0 if position < 0 else target[position])
        single = ctc_align(logits[b, :n].log_softmax(-1), None, torch.tensor(target, dtype=torch.long))
        assert math.isclose(float(single.log_prob), float(one.log_prob), rel_tol=1e-12)


def test_word_timestamps_of_a_peaky_recording():
    # ids: 0 blank, 3 "a", 4 "b", 5 " ". Transcript "ab a": frames 1-2 "a", 3 "b", 5 " ", 7-8 "a".
    target = [3, 4, 5, 3]
    frame_ids = [0, 3, 3, 4, 0, 5, 0, 3, 3, 0]
    log_probs = torch.full((len(frame_ids), 6), -20.0, dtype=torch.float64)
    log_probs[torch.arange(len(frame_ids)), frame_ids] = 0.0
    alignment = ctc_align(log_probs.log_softmax(-1), None, torch.tensor(target))
    assert alignment.symbols.tolist() == frame_ids
    assert alignment.positions.tolist() == [-1, 0, 0, 1, -1, 2, -1, 3, 3, -1]
    words = word_timestamps(alignment, torch.tensor(target + [0, 0]), separator_id=5, frame_seconds=0.04)
    assert [w for w, _, _ in words] == [[3, 4], [3]]
    for (_, start, end), (first, last) in zip(words, [(1, 3), (7, 8)]):
        assert math.isclose(start, first * 0.04) and math.isclose(end, (last + 1) * 0.04)


def test_greedy_takes_the_best_path_merges_runs_and_drops_blanks():
    frame_ids = [[1, 1, 0, 1, 2, 2, 0], [3, 0, 3, 3, 0, 0, 0]]
    log_probs = torch.full((2, 7, 4), -5.0)
    log_probs.scatter_(2, torch.tensor(frame_ids)[..., None], 0.0)
    assert ctc_greedy(log_probs, torch.tensor([7, 3])) == [[1, 1, 2], [3, 3]]
    assert ctc_greedy(log_probs[1]) == [[3, 3]]


def test_an_utterance_too_short_for_its_target_names_it_and_says_what_to_do():
    log_probs = torch.randn(2, 4, 5).log_softmax(-1)
    targets = torch.tensor([[1, 2, 0], [2, 2, 3]])          # "2 2 3" needs 4 frames: a blank between 2s
    assert torch.isinf(torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), targets, torch.tensor([4, 3]),
                                                    torch.tensor([2, 3]), reduction="none")[1])
    for nll in (ctc_nll, ctc_nll_ref):
        with pytest.raises(DataError, match=r"utterance 1 of the batch has 3 frames .* needs at least 4.*subsampling"):
            nll(log_probs, torch.tensor([4, 3]), targets, torch.tensor([2, 3]))
        with pytest.raises(DataError, match=r"^theo_7\.wav has 3 frames"):
            nll(log_probs, torch.tensor([4, 3]), targets, torch.tensor([2, 3]), names=["a.wav", "theo_7.wav"])
    nll = ctc_nll(log_probs, torch.tensor([4, 4]), targets, torch.tensor([2, 3]))
    assert torch.isfinite(nll).all()


@pytest.mark.parametrize("change,message", [
    (dict(targets=torch.tensor([[1, 0, 2], [2, 2, 3]])), "target symbol 0 at position 1, which is the blank"),
    (dict(targets=torch.tensor([[1, 7, 0], [2, 2, 3]])), "target symbol 7 at position 1, which is outside the 5 ids"),
    (dict(lengths=torch.tensor([4, 5])), "utterance 1 of the batch must have between 1 and T = 4 frames"),
    (dict(lengths=torch.tensor([0, 4])), "utterance 0 of the batch must have between 1 and T = 4 frames"),
    (dict(target_lengths=torch.tensor([2, 4])), "must have a target length between 0 and L = 3"),
    (dict(log_probs=torch.zeros(2, 4, 5, dtype=torch.long)), "log_probs must be a (B, T, V) float tensor"),
    (dict(targets=torch.tensor([[1.0, 2.0, 0.0], [2.0, 2.0, 3.0]])), "targets must be a (B, L)"),
    (dict(lengths=torch.tensor([4])), "lengths must be a (2,) integer tensor"),
    (dict(names=["only one"]), "names holds 1 names for a batch of 2"),
])
def test_bad_batches_are_clear_errors(change, message):
    args = dict(log_probs=torch.randn(2, 4, 5).log_softmax(-1), lengths=torch.tensor([4, 4]),
                targets=torch.tensor([[1, 2, 0], [2, 2, 3]]), target_lengths=torch.tensor([2, 3])) | change
    names = args.pop("names", None)
    for function in (ctc_nll, ctc_nll_ref, ctc_align):
        with pytest.raises(DataError) as error:
            function(*args.values(), names=names)
        assert message in str(error.value)
