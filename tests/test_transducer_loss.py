"""The RNN transducer loss against brute-force alignment enumeration and the float64 loop
reference, in value and gradient; padding; the sliced joint (values, gradients, memory); bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from seqlab.errors import ConfigError, DataError
from seqlab.speech.transducer_loss import (rnnt_nll, rnnt_nll_from_joint, rnnt_nll_ref, saved_tensor_bytes)


def random_batch(lengths: list[int], target_lengths: list[int], vocab_size: int, seed: int = 0,
                 max_frames: int | None = None, max_labels: int | None = None):
    """Log-softmaxed float64 joint outputs (B, T, U+1, V) and targets padded with 0."""
    generator = torch.Generator().manual_seed(seed)
    max_frames = max_frames or max(lengths)
    max_labels = max(target_lengths) if max_labels is None else max_labels
    log_probs = torch.randn(len(lengths), max_frames, max_labels + 1, vocab_size, generator=generator,
                            dtype=torch.float64).mul(2).log_softmax(-1)
    targets = torch.randint(1, vocab_size, (len(lengths), max_labels), generator=generator)
    targets[torch.arange(max_labels) >= torch.tensor(target_lengths)[:, None]] = 0
    return log_probs, torch.tensor(lengths), targets, torch.tensor(target_lengths)


def brute_force_log_likelihood(log_probs: torch.Tensor, targets: list[int], blank: int = 0) -> float:
    """log p(y | x) by enumerating every alignment: the first T - 1 + U steps interleave T - 1
    blanks with the U labels in every possible way, and the last step is the blank at (T-1, U)."""
    max_frames, labels = log_probs.shape[0], len(targets)
    path_log_probs = []
    for label_steps in itertools.combinations(range(max_frames - 1 + labels), labels):
        t = u = 0
        total = 0.0
        for step in range(max_frames - 1 + labels):
            if step in label_steps:
                total += float(log_probs[t, u, targets[u]])
                u += 1
            else:
                total += float(log_probs[t, u, blank])
                t += 1
        assert (t, u) == (max_frames - 1, labels)
        path_log_probs.append(total + float(log_probs[t, u, blank]))
    top = max(path_log_probs)
    return top + math.log(sum(math.exp(p - top) for p in path_log_probs))


@pytest.mark.parametrize("frames,labels,vocab_size", [(1, 0, 2), (1, 3, 4), (4, 0, 3), (2, 2, 2), (3, 2, 4),
                                                      (4, 3, 4), (4, 3, 3)])
@pytest.mark.parametrize("blank", [0, 1])
def test_equals_brute_force_enumeration(frames, labels, vocab_size, blank):
    log_probs, lengths, targets, target_lengths = random_batch([frames], [labels], vocab_size, seed=frames * 10 + labels)
    if blank == 1:
        targets[targets == 1] = 0                                # then 0 is a label like any other
    expected = brute_force_log_likelihood(log_probs[0], targets[0, :labels].tolist(), blank=blank)
    loss = rnnt_nll(log_probs, lengths, targets, target_lengths, blank=blank)
    torch.testing.assert_close(loss, torch.tensor([-expected], dtype=torch.float64), rtol=0, atol=1e-10)


def test_batch_of_mixed_lengths_equals_brute_force_per_utterance():
    lengths, target_lengths = [4, 1, 3, 2], [3, 2, 0, 1]
    log_probs, lengths_t, targets, target_lengths_t = random_batch(lengths, target_lengths, 4, seed=3)
    loss = rnnt_nll(log_probs, lengths_t, targets, target_lengths_t)
    expected = [-brute_force_log_likelihood(log_probs[b, :lengths[b], :target_lengths[b] + 1],
                                            targets[b, :target_lengths[b]].tolist()) for b in range(4)]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-10)


def assert_value_and_gradient_equal_reference(log_probs, lengths, targets, target_lengths):
    log_probs = log_probs.detach().requires_grad_()
    loss = rnnt_nll(log_probs, lengths, targets, target_lengths)
    reference = rnnt_nll_ref(log_probs, lengths, targets, target_lengths)
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=1e-12)
    weights = torch.linspace(0.5, 1.5, len(lengths), dtype=torch.float64)     # distinct per utterance
    gradient, = torch.autograd.grad((loss * weights).sum(), log_probs)
    reference_gradient, = torch.autograd.grad((reference * weights).sum(), log_probs)
    torch.testing.assert_close(gradient, reference_gradient, rtol=1e-10, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 7), st.integers(0, 5)), min_size=1, max_size=4),
       st.integers(2, 6), st.integers(0, 2), st.integers(0, 2), st.integers(0, 10_000))
def test_equals_loop_reference_in_value_and_gradient(shapes, vocab_size, extra_frames, extra_labels, seed):
    lengths, target_lengths = [s[0] for s in shapes], [s[1] for s in shapes]
    batch = random_batch(lengths, target_lengths, vocab_size, seed=seed, max_frames=max(lengths) + extra_frames,
                         max_labels=max(target_lengths) + extra_labels)
    assert_value_and_gradient_equal_reference(*batch)


def test_gradcheck():
    log_probs, lengths, targets, target_lengths = random_batch([3, 2], [2, 1], 3, seed=5)
    torch.autograd.gradcheck(lambda x: rnnt_nll(x, lengths, targets, target_lengths),
                             (log_probs.detach().requires_grad_(),))


def test_gradient_is_posterior_occupation():
    """Identity: d log p / d blank(t, u) summed over a frame's cells is 1 for every real frame
    (each alignment emits exactly one blank per frame)."""
    log_probs, lengths, targets, target_lengths = random_batch([5, 3], [3, 2], 4, seed=7)
    log_probs.requires_grad_()
    gradient, = torch.autograd.grad(-rnnt_nll(log_probs, lengths, targets, target_lengths).sum(), log_probs)
    blanks_per_frame = gradient[..., 0].sum(-1)                                          # (B, T)
    expected = (torch.arange(5) < lengths[:, None]).double()
    torch.testing.assert_close(blanks_per_frame, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("padding", ["random", "nan", "-inf"])
def test_padding_does_not_leak(padding):
    lengths, target_lengths = [5, 2, 3], [1, 3, 0]
    log_probs, lengths_t, targets, target_lengths_t = random_batch(lengths, target_lengths, 4, seed=11,
                                                                   max_frames=6, max_labels=4)
    real = torch.zeros_like(log_probs, dtype=torch.bool)
    for b, (frames, labels) in enumerate(zip(lengths, target_lengths)):
        real[b, :frames, :labels + 1] = True
    filler = {"random": torch.randn_like(log_probs) * 5, "nan": torch.full_like(log_probs, math.nan),
              "-inf": torch.full_like(log_probs, -math.inf)}[padding]
    changed = torch.where(real, log_probs, filler)
    padded_targets = targets.clone()
    padded_targets[padded_targets == 0] = 3                   # padding ids need not be 0 (nor blank)

    results = []
    for inputs, target_ids in ((log_probs, targets), (changed, padded_targets)):
        inputs = inputs.clone().requires_grad_()
        loss = rnnt_nll(inputs, lengths_t, target_ids, target_lengths_t)
        gradient, = torch.autograd.grad(loss.sum(), inputs)
        results.append((loss, gradient))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=0)
    assert torch.all(results[0][1][~real] == 0)
    single = [rnnt_nll(log_probs[b:b + 1, :f, :u + 1], torch.tensor([f]), targets[b:b + 1, :u], torch.tensor([u]))
              for b, (f, u) in enumerate(zip(lengths, target_lengths))]
    torch.testing.assert_close(results[0][0], torch.cat(single), rtol=0, atol=1e-12)


class TinyJoint(nn.Module):
    """logits = W tanh(A enc + B pred), broadcasting enc (B, t, 1, D_e) with pred (B, 1, U+1, D_p)."""

    def __init__(self, encoder_dim: int, predictor_dim: int, hidden: int, vocab_size: int):
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, hidden)
        self.predictor_proj = nn.Linear(predictor_dim, hidden, bias=False)
        self.output = nn.Linear(hidden, vocab_size)

    def forward(self, encoder_out: torch.Tensor, predictor_out: torch.Tensor) -> torch.Tensor:
        return self.output(torch.tanh(self.encoder_proj(encoder_out) + self.predictor_proj(predictor_out)))


def joint_problem(batch_size, frames, labels, vocab_size, dim, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    joint = TinyJoint(dim, dim + 1, dim, vocab_size).to(dtype)
    encoder_out = torch.randn(batch_size, frames, dim, dtype=dtype, requires_grad=True)
    predictor_out = torch.randn(batch_size, labels + 1, dim + 1, dtype=dtype, requires_grad=True)
    lengths = torch.randint(1, frames + 1, (batch_size,))
    lengths[0] = frames
    target_lengths = torch.randint(0, labels + 1, (batch_size,))
    targets = torch.randint(1, vocab_size, (batch_size, labels))
    targets[torch.arange(labels) >= target_lengths[:, None]] = 0
    return joint, encoder_out, predictor_out, lengths, targets, target_lengths


@pytest.mark.parametrize("time_chunk", [1, 3, 7, 50])
def test_sliced_joint_equals_full_joint_in_value_and_gradients(time_chunk):
    joint, encoder_out, predictor_out, lengths, targets, target_lengths = joint_problem(3, 10, 4, 5, 6)
    inputs = (encoder_out, predictor_out, *joint.parameters())

    full_log_probs = joint(encoder_out[:, :, None], predictor_out[:, None]).log_softmax(-1)
    full = rnnt_nll(full_log_probs, lengths, targets, target_lengths)
    full_gradients = torch.autograd.grad(full.sum(), inputs)
    sliced = rnnt_nll_from_joint(encoder_out, predictor_out, joint, lengths, targets, target_lengths,
                                 time_chunk=time_chunk)
    sliced_gradients = torch.autograd.grad(sliced.sum(), inputs)

    torch.testing.assert_close(sliced, full, rtol=1e-12, atol=1e-12)
    for sliced_gradient, full_gradient in zip(sliced_gradients, full_gradients):
        assert full_gradient.abs().max() > 0
        torch.testing.assert_close(sliced_gradient, full_gradient, rtol=1e-10, atol=1e-12)
    unsliced = rnnt_nll_from_joint(encoder_out, predictor_out, joint, lengths, targets, target_lengths, time_chunk=None)
    torch.testing.assert_close(unsliced, full, rtol=0, atol=0)


def test_sliced_joint_saves_at_most_a_quarter_of_the_full_joints_memory():
    joint, encoder_out, predictor_out, lengths, targets, target_lengths = joint_problem(4, 200, 20, 30, 64,
                                                                                       dtype=torch.float32)
    inputs = (encoder_out, predictor_out, *joint.parameters())

    def full():
        log_probs = joint(encoder_out[:, :, None], predictor_out[:, None]).log_softmax(-1)
        return rnnt_nll(log_probs, lengths, targets, target_lengths).sum()

    def sliced():
        return rnnt_nll_from_joint(encoder_out, predictor_out, joint, lengths, targets, target_lengths,
                                   time_chunk=16).sum()

    full_bytes, sliced_bytes = saved_tensor_bytes(full, inputs), saved_tensor_bytes(sliced, inputs)
    hidden_bytes = 4 * 200 * 21 * 64 * 4                     # the joint's tanh output alone, float32
    assert full_bytes > hidden_bytes
    assert sliced_bytes * 4 <= full_bytes, (full_bytes, sliced_bytes)


def test_saved_tensor_bytes_counts_unique_storages():
    x = torch.randn(100, requires_grad=True)

    def compute():
        y = x.exp()                              # saves its output: 400 bytes
        return (y * y[:50].sum()).sum()          # saves y again and the 4-byte sum

    assert saved_tensor_bytes(compute, (x,)) == 400 + 4


def valid_batch():
    return random_batch([3, 2], [2, 1], 4, seed=1)


@pytest.mark.parametrize("change,message", [
    (lambda lp, l, t, tl: (lp[0], l, t, tl), "log_probs must be"),
    (lambda lp, l, t, tl: (lp.long(), l, t, tl), "log_probs must be"),
    (lambda lp, l, t, tl: (lp, l, t[:, :1], tl), "targets have shape"),
    (lambda lp, l, t, tl: (lp, l[:1], t, tl), "lengths has shape"),
    (lambda lp, l, t, tl: (lp, torch.tensor([4, 2]), t, tl), "utterance 0 has lengths 4"),
    (lambda lp, l, t, tl: (lp, torch.tensor([3, 0]), t, tl), "utterance 1 has lengths 0"),
    (lambda lp, l, t, tl: (lp, l, t, torch.tensor([2, 3])), "utterance 1 has target_lengths 3"),
    (lambda lp, l, t, tl: (lp, l, torch.tensor([[1, 0], [2, 0]]), tl), "utterance 0's target holds the blank"),
    (lambda lp, l, t, tl: (lp, l, torch.tensor([[1, 4], [2, 0]]), tl), "target id 4 at position 1"),
])
def test_bad_input_is_a_clear_data_error(change, message):
    with pytest.raises(DataError, match=message):
        rnnt_nll(*change(*valid_batch()))


def test_bad_blank_and_time_chunk_are_config_errors():
    with pytest.raises(ConfigError, match="blank id 4"):
        rnnt_nll(*valid_batch(), blank=4)
    joint, encoder_out, predictor_out, lengths, targets, target_lengths = joint_problem(2, 4, 2, 3, 4)
    with pytest.raises(ConfigError, match="time_chunk is 0"):
        rnnt_nll_from_joint(encoder_out, predictor_out, joint, lengths, targets, target_lengths, time_chunk=0)
    with pytest.raises(DataError, match="outside the joint's vocabulary of 3"):
        rnnt_nll_from_joint(encoder_out, predictor_out, joint, lengths, targets.clamp(min=1) + 2,
                            target_lengths.clamp(min=1))
    with pytest.raises(DataError, match="same B"):
        rnnt_nll_from_joint(encoder_out[:1], predictor_out, joint, lengths, targets, target_lengths)
