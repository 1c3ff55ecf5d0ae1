"""Connectionist temporal classification: the loss, its chain reference, greedy decoding and
forced alignment (Graves, Fernandez, Gomez and Schmidhuber 2006).

An utterance has T frames of log-probabilities ``log_probs[t, k]`` over V ids, id 0 the blank.
A *path* is one id per frame; collapsing it (merge runs of equal ids, then drop blanks) gives a
labelling, and

    p(y | x) = sum over paths pi with collapse(pi) = y of prod_t exp(log_probs[t, pi_t]).

The paths that collapse to ``y = (y_1, ..., y_L)`` are the paths of a linear chain over the
blank-extended labelling ``y' = (0, y_1, 0, y_2, ..., 0, y_L, 0)`` of K = 2L + 1 states
(Graves et al. 2006, section 4.1): from state s a frame may stay at s, advance to s + 1, or skip
to s + 2 when ``y'_{s+2}`` is a label that differs from ``y'_s`` (skipping the blank between
two different labels); a path starts in state 0 or 1 and ends in state K - 1 or K - 2. With

    log_emit_t(s) = log_probs[t, y'_s],    trans(s, s') = 0 if allowed, -inf otherwise,

the forward recursion of ``seqlab.ops.chain`` is the CTC recursion (eqs. 6-7 of the paper):

    alpha_1(s) = log_emit_1(s) for s in {0, 1}
    alpha_t(s) = log_emit_t(s) + logsumexp(alpha_{t-1}(s), alpha_{t-1}(s - 1),
                                           alpha_{t-1}(s - 2) if y'_s != 0 and y'_s != y'_{s-2})
    log p(y | x) = logsumexp(alpha_T(K - 1), alpha_T(K - 2))

and Viterbi on the same chain is forced alignment: the most probable path that collapses to y.
A path needs at least ``L + r`` frames, r the number of adjacent equal labels in y (a blank must
separate them); with fewer, p(y | x) = 0.

``ctc_nll`` goes through ``torch.nn.functional.ctc_loss``; ``ctc_nll_ref`` is the chain, the
specification it is tested against. Note that torch's gradient with respect to ``log_probs``
is ``exp(log_probs) - gamma`` rather than ``-gamma`` (gamma the state posteriors summed per id):
it presumes ``log_probs`` came out of a log-softmax, whose backward pass sends the extra term
``exp(log_probs)`` to zero, so the two agree on the logits before the log-softmax.

Shapes: B utterances, T frames, V ids (blank 0 included), L target symbols, K = 2L + 1 states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlab.errors import DataError
from seqlab.ops.chain import chain_log_partition, chain_viterbi
from seqlab.speech.recogniser import BLANK


def ctc_nll(log_probs: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor, *,
            names: list[str] | None = None) -> Tensor:
    """Each utterance's negative log-likelihood ``-log p(y | x)``, by torch's ``ctc_loss``.

    Args:
        log_probs: (B, T, V) log-softmaxed scores, id 0 the blank.
        lengths: (B,) frames of each utterance, 1 <= lengths <= T.
        targets: (B, L) ids in [1, V), padded with 0 past ``target_lengths``.
        target_lengths: (B,) symbols of each target, 0 <= target_lengths <= L.
        names: optional name of each utterance, used in error messages.
    Returns:
        (B,) negative log-likelihoods in nats (differentiable in ``log_probs``).
    Raises:
        DataError: a shape, dtype or id out of range, or an utterance with fewer frames than
            its target needs (torch would silently return inf).
    """
    lengths, target_lengths = check_ctc_batch(log_probs, lengths, targets, target_lengths, names)
    return F.ctc_loss(log_probs.transpose(0, 1), targets.long(), lengths, target_lengths,
                      blank=BLANK, reduction="none", zero_infinity=False)


def ctc_nll_ref(log_probs: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor, *,
                names: list[str] | None = None) -> Tensor:
    """``ctc_nll`` computed as ``-log Z`` of the CTC chain (``seqlab.ops.chain``); see the module
    docstring. Same arguments, result and errors as ``ctc_nll``; its gradient with respect to
    ``log_probs`` is ``-gamma``, the exact one."""
    lengths, target_lengths = check_ctc_batch(log_probs, lengths, targets, target_lengths, names)
    chain = _ctc_chain(log_probs, lengths, targets, target_lengths)
    return -chain_log_partition(chain.log_init, chain.log_trans, chain.log_emit, chain.mask, chain.log_final)


def ctc_greedy(log_probs: Tensor, lengths: Tensor | None = None) -> list[list[int]]:
    """Best-path decoding: the most probable id of each frame, runs merged, blanks dropped.

    Args:
        log_probs: (B, T, V) or (T, V) scores.
        lengths: (B,) frames of each utterance; None: all T.
    Returns:
        One id list per utterance (a list of one for a (T, V) input).
    """
    log_probs = log_probs[None] if log_probs.dim() == 2 else log_probs
    best = log_probs.argmax(-1).tolist()                                    # (B, T)
    frames = [len(row) for row in best] if lengths is None else lengths.tolist()
    return [collapse(row[:n]) for row, n in zip(best, frames)]


def collapse(path: list[int]) -> list[int]:
    """CTC's many-to-one map: merge runs of equal ids, then drop blanks."""
    return [k for t, k in enumerate(path) if k != BLANK and (t == 0 or path[t - 1] != k)]


@dataclass(frozen=True)
class CTCAlignment:
    """A forced alignment: which target symbol each frame emits.

    Attributes:
        positions: (B, T) or (T,) int64 index into the target of the symbol each frame emits,
            -1 where the frame emits a blank and at padding.
        symbols: same shape, the id each frame emits (0: blank, and at padding).
        log_prob: (B,) or () log-probability of the aligned path.
    """

    positions: Tensor
    symbols: Tensor
    log_prob: Tensor

    def utterance(self, index: int) -> CTCAlignment:
        """The alignment of one utterance of a batched alignment."""
        return CTCAlignment(self.positions[index], self.symbols[index], self.log_prob[index])


@torch.no_grad()
def ctc_align(log_probs: Tensor, lengths: Tensor | None, targets: Tensor, target_lengths: Tensor | None = None, *,
              names: list[str] | None = None) -> CTCAlignment:
    """Forced alignment: the most probable path that collapses to the target, by Viterbi on the
    CTC chain (``seqlab.ops.chain.chain_viterbi``).

    Args:
        log_probs: (B, T, V) or, for one utterance, (T, V).
        lengths: (B,) frames; None: all T.
        targets: (B, L), or (L,) for one utterance.
        target_lengths: (B,); None: all L.
        names: optional utterance names for error messages.
    Returns:
        A ``CTCAlignment``, unbatched for a (T, V) input.
    Raises:
        DataError: as ``ctc_nll``.
    """
    single = log_probs.dim() == 2
    if single:
        log_probs, targets = log_probs[None], targets.reshape(1, -1)
    batch, frames, _ = log_probs.shape
    if lengths is None:
        lengths = torch.full((batch,), frames, dtype=torch.long)
    if target_lengths is None:
        target_lengths = torch.full((batch,), targets.shape[-1], dtype=torch.long)
    lengths, target_lengths = check_ctc_batch(log_probs, lengths, targets, target_lengths, names)
    chain = _ctc_chain(log_probs, lengths, targets, target_lengths)
    path, score = chain_viterbi(chain.log_init, chain.log_trans, chain.log_emit, chain.mask, chain.log_final)
    emits_label = (path % 2 == 1) & chain.mask                              # odd states hold labels
    positions = torch.where(emits_label, (path - 1) // 2, -1)
    symbols = chain.extended.gather(1, path).masked_fill(~chain.mask, BLANK)
    alignment = CTCAlignment(positions, symbols, score)
    return alignment.utterance(0) if single else alignment


def word_timestamps(alignment: CTCAlignment, targets: Tensor | list[int], separator_id: int,
                    frame_seconds: float) -> list[tuple[list[int], float, float]]:
    """Words of a target and when they are spoken, from a forced alignment of one utterance.

    A word is a maximal run of target symbols that are not ``separator_id``; it starts at the
    first frame aligned to one of its symbols and ends after the last one.

    Args:
        alignment: one utterance's ``CTCAlignment`` (``positions`` (T,)).
        targets: (L,) the target it aligns (padding past its length may follow).
        separator_id: the id between words (e.g. the space character's).
        frame_seconds: the duration of one frame (the encoder's output stride).
    Returns:
        ``(word ids, start seconds, end seconds)`` per word, in order.
    Raises:
        DataError: a batched alignment.
    """
    if alignment.positions.dim() != 1:
        raise DataError("word_timestamps reads one utterance; pass alignment.utterance(i) of a batch")
    ids = targets.tolist() if isinstance(targets, Tensor) else list(targets)
    first_frame: dict[int, int] = {}
    last_frame: dict[int, int] = {}
    for frame, position in enumerate(alignment.positions.tolist()):
        if position >= 0:
            first_frame.setdefault(position, frame)
            last_frame[position] = frame
    words: list[list[int]] = [[]]          # target positions of each word
    for position in range(max(last_frame, default=-1) + 1):   # every symbol is aligned to a frame
        if ids[position] == separator_id:
            words.append([])
        else:
            words[-1].append(position)
    words = [word for word in words if word]
    return [([ids[p] for p in word], first_frame[word[0]] * frame_seconds, (last_frame[word[-1]] + 1) * frame_seconds)
            for word in words]


def repeated_labels(targets: Tensor, target_lengths: Tensor) -> Tensor:
    """(B,) the number of adjacent equal symbols within each target's length."""
    within = torch.arange(targets.shape[1], device=targets.device)[None, 1:] < target_lengths[:, None]
    return ((targets[:, 1:] == targets[:, :-1]) & within).sum(1)


def check_ctc_batch(log_probs: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor,
                    names: list[str] | None) -> tuple[Tensor, Tensor]:
    """Check a CTC batch; return ``lengths`` and ``target_lengths`` as int64 on ``log_probs``' device.

    Raises:
        DataError: naming the first utterance (``names[i]`` or "utterance i of the batch") at
            fault and what to do.
    """
    if log_probs.dim() != 3 or not log_probs.is_floating_point():
        raise DataError(f"log_probs must be a (B, T, V) float tensor, got {tuple(log_probs.shape)} {log_probs.dtype}")
    batch, frames, vocab = log_probs.shape
    if targets.dim() != 2 or targets.shape[0] != batch or targets.is_floating_point():
        raise DataError(f"targets must be a (B, L) = ({batch}, L) integer tensor, got "
                        f"{tuple(targets.shape)} {targets.dtype}")
    for name, tensor in (("lengths", lengths), ("target_lengths", target_lengths)):
        if tuple(tensor.shape) != (batch,) or tensor.is_floating_point():
            raise DataError(f"{name} must be a ({batch},) integer tensor, got {tuple(tensor.shape)} {tensor.dtype}")
    if names is not None and len(names) != batch:
        raise DataError(f"names holds {len(names)} names for a batch of {batch} utterances")
    device = log_probs.device
    lengths, target_lengths, targets = lengths.to(device).long(), target_lengths.to(device).long(), targets.to(device)

    def utterance(index: Tensor) -> str:
        i = int(index[0])
        return names[i] if names is not None else f"utterance {i} of the batch"

    for bad, problem in (((lengths < 1) | (lengths > frames), f"must have between 1 and T = {frames} frames"),
                         ((target_lengths < 0) | (target_lengths > targets.shape[1]),
                          f"must have a target length between 0 and L = {targets.shape[1]}")):
        if bad.any():
            index = bad.nonzero()[0]
            raise DataError(f"{utterance(index)} {problem}; got lengths {int(lengths[index])} and "
                            f"target length {int(target_lengths[index])}")
    within = torch.arange(targets.shape[1], device=device)[None] < target_lengths[:, None]
    out_of_range = within & ((targets < 1) | (targets >= vocab))
    if out_of_range.any():
        index = out_of_range.nonzero()[0]
        symbol = int(targets[index[0], index[1]])
        what = "the blank (0)" if symbol == BLANK else f"outside the {vocab} ids of log_probs"
        raise DataError(f"{utterance(index)} has target symbol {symbol} at position {int(index[1])}, which is "
                        f"{what}; targets hold ids in [1, {vocab}) and are padded with 0 only past their length")
    needed = target_lengths + repeated_labels(targets, target_lengths)
    too_short = lengths < needed
    if too_short.any():
        index = too_short.nonzero()[0]
        raise DataError(f"{utterance(index)} has {int(lengths[index])} frames but its target of "
                        f"{int(target_lengths[index])} symbols needs at least {int(needed[index])} (one per "
                        f"symbol and one blank between repeats); lower the encoder's subsampling or drop it")
    return lengths, target_lengths


@dataclass(frozen=True)
class _CTCChain:
    extended: Tensor     # (B, K) the blank-extended targets y'
    log_init: Tensor     # (B, K)
    log_trans: Tensor    # (B, K, K)
    log_emit: Tensor     # (B, T, K)
    mask: Tensor         # (B, T)
    log_final: Tensor    # (B, K)


def _ctc_chain(log_probs: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> _CTCChain:
    """The linear chain whose paths are the alignments of each target (module docstring)."""
    batch, frames, _ = log_probs.shape
    n_states = 2 * targets.shape[1] + 1
    device = log_probs.device
    extended = torch.zeros(batch, n_states, dtype=torch.long, device=device)
    extended[:, 1::2] = targets
    state = torch.arange(n_states, device=device)
    real = state[None] < (2 * target_lengths + 1)[:, None]                  # (B, K) states of each target
    step = state[None, :] - state[:, None]                                  # [s, s'] = s' - s
    skips = (extended[:, None, :] != BLANK) & (extended[:, None, :] != extended[:, :, None])
    allowed = (step == 0) | (step == 1) | ((step == 2) & skips)             # (B, K, K)
    allowed &= real[:, :, None] & real[:, None, :]
    first = real & (state[None] <= 1)
    last = real & (state[None] >= (2 * target_lengths - 1)[:, None])

    def log_of(allowed_states: Tensor) -> Tensor:
        return torch.zeros((), dtype=log_probs.dtype, device=device).masked_fill(~allowed_states, float("-inf"))

    log_emit = log_probs.gather(2, extended[:, None, :].expand(batch, frames, n_states))   # (B, T, K)
    mask = torch.arange(frames, device=device)[None] < lengths[:, None]
    return _CTCChain(extended, log_of(first), log_of(allowed), log_emit, mask, log_of(last))
