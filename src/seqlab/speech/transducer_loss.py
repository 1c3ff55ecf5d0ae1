"""The RNN transducer loss: a log-space forward lattice over (frame, emitted labels).

Graves 2012, "Sequence Transduction with Recurrent Neural Networks", sec. 2.4. The joint network
gives, for every frame ``t`` and every number ``u`` of labels emitted so far, a distribution over
the vocabulary, ``log_probs[b, t, u] = log p(. | t, y_1..y_u)`` of shape (B, T, U+1, V). An
alignment walks the (T, U+1) lattice from (0, 0): a blank moves to the next frame (t+1, u), a label
``y_{u+1}`` moves to (t, u+1), and every alignment ends with the blank at (T-1, U); so each one has
exactly T blanks and U labels. The forward variable (Graves eq. 16, here in log space)

    alpha(0, 0) = 0
    alpha(t, u) = logaddexp(alpha(t-1, u) + blank(t-1, u),  alpha(t, u-1) + label(t, u-1))
    log p(y | x) = alpha(T-1, U) + blank(T-1, U)

with ``blank(t, u) = log_probs[t, u, BLANK]`` and ``label(t, u) = log_probs[t, u, y_{u+1}]``
(a term whose cell lies outside the lattice is left out). The loss is ``-log p(y | x)``.

Only those two numbers per cell enter the lattice, so every path here first *gathers* them,
(B, T, U+1) blank and (B, T, U) label log-probabilities, and then runs one lattice on them:

- :func:`rnnt_nll` gathers from a (B, T, U+1, V) tensor the caller already holds;
- :func:`rnnt_nll_from_joint` never holds it: it evaluates the joint network on slices of
  ``time_chunk`` frames, gathers, and wraps each slice in ``torch.utils.checkpoint`` so that the
  backward pass recomputes the slice instead of keeping its (B, t, U+1, V) activations. This is
  the transducer's memory problem (the 4-D joint dominates training memory); the sliced path keeps
  O(B T U) instead of O(B T U V) (``benchmarks/transducer_memory.py`` measures both).

The lattice, :func:`transducer_lattice_nll`, runs over anti-diagonals ``n = t + u``: every cell of
a diagonal depends only on the previous diagonal, so one short sequence of tensor operations
updates all cells of all utterances at once (T + U steps instead of T * U). Utterances of different
lengths share the loop; each reads its answer off its own final cell (T_b - 1, U_b), and cells
beyond an utterance's lengths never reach that cell, so padding cannot leak into the loss or its
gradient. :func:`rnnt_nll_ref` is the specification: a plain double loop per utterance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from seqlab.errors import ConfigError, DataError
from seqlab.speech.recogniser import BLANK

JointNetwork = Callable[[Tensor, Tensor], Tensor]


def _check_batch(lengths: Tensor, targets: Tensor, target_lengths: Tensor, batch_size: int, max_frames: int,
                 max_labels: int, blank: int, vocab_size: int | None) -> None:
    """Raise a one-line DataError when lengths or targets cannot be scored against a lattice of
    ``max_frames`` frames and ``max_labels`` labels."""
    if targets.dim() != 2 or targets.shape != (batch_size, max_labels):
        raise DataError(f"targets have shape {tuple(targets.shape)}, expected (B, U) = ({batch_size}, {max_labels}); "
                        "the lattice's third dimension is U + 1")
    for name, tensor in (("lengths", lengths), ("target_lengths", target_lengths)):
        if tensor.shape != (batch_size,):
            raise DataError(f"{name} has shape {tuple(tensor.shape)}, expected ({batch_size},)")
    for name, tensor, low, high in (("lengths", lengths, 1, max_frames), ("target_lengths", target_lengths, 0, max_labels)):
        bad = ((tensor < low) | (tensor > high)).nonzero()
        if len(bad):
            b = int(bad[0, 0])
            raise DataError(f"utterance {b} has {name} {int(tensor[b])}, outside [{low}, {high}]; "
                            "lengths must fit the padded tensors (and an utterance needs at least one frame)")
    real = torch.arange(max_labels, device=targets.device) < target_lengths[:, None]       # (B, U)
    blanks = (real & (targets == blank)).nonzero()
    if len(blanks):
        b, u = (int(i) for i in blanks[0])
        raise DataError(f"utterance {b}'s target holds the blank id {blank} at position {u}; "
                        "targets must be label ids, padded with 0 past target_lengths")
    if vocab_size is not None:
        outside = (real & ((targets < 0) | (targets >= vocab_size))).nonzero()
        if len(outside):
            b, u = (int(i) for i in outside[0])
            raise DataError(f"utterance {b}'s target id {int(targets[b, u])} at position {u} is outside "
                            f"the vocabulary of {vocab_size}")


def _check_blank(blank: int, vocab_size: int) -> None:
    if not 0 <= blank < vocab_size:
        raise ConfigError(f"blank id {blank} is outside the vocabulary of {vocab_size}")


def gather_lattice_inputs(log_probs: Tensor, targets: Tensor, *, blank: int = BLANK) -> tuple[Tensor, Tensor]:
    """The two log-probabilities per lattice cell that the transducer loss reads.

    Args:
        log_probs: (B, T, U+1, V) log-softmaxed joint outputs.
        targets: (B, U) label ids; padding (any id in range) is gathered but never used.
        blank: the blank id.
    Returns:
        ``log_blank`` (B, T, U+1), ``log_probs[b, t, u, blank]``, and ``log_label`` (B, T, U),
        ``log_probs[b, t, u, targets[b, u]]``.
    """
    batch_size, max_frames, _, _ = log_probs.shape
    max_labels = targets.shape[1]
    label_ids = targets[:, None, :, None].expand(batch_size, max_frames, max_labels, 1)   # (B, T, U, 1)
    log_label = log_probs[:, :, :max_labels].gather(-1, label_ids).squeeze(-1)           # (B, T, U)
    return log_probs[..., blank], log_label


def transducer_lattice_nll(log_blank: Tensor, log_label: Tensor, lengths: Tensor, target_lengths: Tensor) -> Tensor:
    """-log p(y | x) by the forward lattice of the module docstring, one anti-diagonal per step.

    On diagonal ``n`` the cell (t, u) has ``t = n - u``; ``alpha_n`` is a (B, U+1) tensor indexed
    by ``u``, and cells with ``t`` outside [0, T) hold a very negative finite number (not -inf, whose
    differences would make NaN gradients). Cells past an utterance's own lengths are computed from
    inputs replaced by 0 (so NaN or -inf padding cannot reach the gradient) and never read.

    Args:
        log_blank: (B, T, U+1) ``log p(blank | t, u)``.
        log_label: (B, T, U) ``log p(y_{u+1} | t, u)``.
        lengths: (B,) frames of each utterance, 1 <= T_b <= T.
        target_lengths: (B,) labels of each utterance, 0 <= U_b <= U.
    Returns:
        (B,) negative log-likelihoods, differentiable w.r.t. both inputs.
    """
    batch_size, max_frames, max_labels_plus_one = log_blank.shape
    device, dtype = log_blank.device, log_blank.dtype
    lengths, target_lengths = lengths.to(device, torch.long), target_lengths.to(device, torch.long)
    impossible = torch.finfo(dtype).min / 8              # two of these still add up to a finite number
    frame_ids = torch.arange(max_frames, device=device)
    label_ids = torch.arange(max_labels_plus_one, device=device)
    real_frames = frame_ids[None, :, None] < lengths[:, None, None]                         # (B, T, 1)
    log_blank = torch.where(real_frames & (label_ids <= target_lengths[:, None, None]), log_blank, 0.0)
    log_label = torch.where(real_frames & (label_ids[:-1] < target_lengths[:, None, None]), log_label, 0.0)

    final_diagonals = lengths - 1 + target_lengths                                          # (B,)
    final_blank = log_blank[torch.arange(batch_size, device=device), lengths - 1, target_lengths]   # (B,)
    log_alpha = torch.full((batch_size, max_labels_plus_one), impossible, device=device, dtype=dtype)
    log_alpha[:, 0] = 0.0
    log_likelihood = torch.where(final_diagonals == 0, log_alpha[:, 0] + final_blank, 0.0)
    no_predecessor = torch.full((batch_size, 1), impossible, device=device, dtype=dtype)
    for diagonal in range(1, int(final_diagonals.max()) + 1):
        frames = diagonal - label_ids                                                       # (U+1,) t of each cell
        from_blank = log_alpha + log_blank[:, (frames - 1).clamp(0, max_frames - 1), label_ids]   # (t-1, u) -> (t, u)
        from_label = log_alpha[:, :-1] + log_label[:, frames[1:].clamp(0, max_frames - 1), label_ids[:-1]]
        from_label = torch.cat([no_predecessor, from_label], dim=1)                          # (t, u-1) -> (t, u)
        inside = (frames >= 0) & (frames < max_frames)
        log_alpha = torch.where(inside, torch.logaddexp(from_blank, from_label), impossible)  # (B, U+1)
        at_final = log_alpha.gather(1, target_lengths[:, None]).squeeze(1) + final_blank
        log_likelihood = torch.where(final_diagonals == diagonal, at_final, log_likelihood)
    return -log_likelihood


def rnnt_nll(log_probs: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor, *,
             blank: int = BLANK) -> Tensor:
    """The RNN transducer's negative log-likelihood of each utterance (Graves 2012, eq. 16-17).

    Args:
        log_probs: (B, T, U+1, V) log-softmaxed joint outputs, padded past each utterance's
            lengths (the padding never changes the result).
        lengths: (B,) frames of each utterance, 1 <= T_b <= T.
        targets: (B, U) label ids, padded with 0 past ``target_lengths``.
        target_lengths: (B,) labels of each utterance, 0 <= U_b <= U.
        blank: the blank id (seqlab reserves 0).
    Returns:
        (B,) ``-log p(y_b | x_b)``; autograd gives the gradient.
    Raises:
        DataError: mismatched shapes, lengths outside the padded tensors, a target that contains
            the blank or an id outside the vocabulary.
        ConfigError: a blank id outside the vocabulary.
    """
    if log_probs.dim() != 4 or not log_probs.is_floating_point():
        raise DataError(f"log_probs must be a float (B, T, U+1, V) tensor, got {log_probs.dtype} "
                        f"of shape {tuple(log_probs.shape)}")
    batch_size, max_frames, max_labels_plus_one, vocab_size = log_probs.shape
    _check_blank(blank, vocab_size)
    _check_batch(lengths, targets, target_lengths, batch_size, max_frames, max_labels_plus_one - 1, blank, vocab_size)
    log_blank, log_label = gather_lattice_inputs(log_probs, targets, blank=blank)
    return transducer_lattice_nll(log_blank, log_label, lengths, target_lengths)


def rnnt_nll_from_joint(encoder_out: Tensor, predictor_out: Tensor, joint: JointNetwork, lengths: Tensor,
                        targets: Tensor, target_lengths: Tensor, *, blank: int = BLANK,
                        time_chunk: int | None = 16) -> Tensor:
    """:func:`rnnt_nll` of ``log_softmax(joint(encoder_out, predictor_out))`` without the 4-D joint.

    For each slice of ``time_chunk`` frames the joint's logits (B, t, U+1, V) are computed,
    log-softmaxed and reduced to the lattice inputs (B, t, U+1) and (B, t, U) inside
    ``torch.utils.checkpoint`` (non-reentrant): autograd keeps only the slice's inputs, and the
    backward pass recomputes the slice. Values and gradients (w.r.t. both inputs and the joint's
    parameters) equal the full computation's; a deterministic joint is assumed (checkpoint replays
    the RNG state, so dropout works too).

    Args:
        encoder_out: (B, T, D_e) encoder vectors.
        predictor_out: (B, U+1, D_p) prediction-network vectors; row ``u`` has read
            BLANK, y_1, ..., y_u.
        joint: ``joint(enc (B, t, 1, D_e), pred (B, 1, U+1, D_p)) -> logits (B, t, U+1, V)``
            (broadcasting over the two singleton dimensions), unnormalised.
        lengths, targets, target_lengths, blank: as in :func:`rnnt_nll`.
        time_chunk: frames per slice; ``None`` evaluates the whole joint at once, without
            checkpointing (the plain path, for comparison).
    Returns:
        (B,) negative log-likelihoods.
    Raises:
        DataError, ConfigError: as :func:`rnnt_nll`; ConfigError for ``time_chunk < 1``.
    """
    if encoder_out.dim() != 3 or predictor_out.dim() != 3 or encoder_out.shape[0] != predictor_out.shape[0]:
        raise DataError(f"encoder_out {tuple(encoder_out.shape)} and predictor_out {tuple(predictor_out.shape)} "
                        "must be (B, T, D_e) and (B, U+1, D_p) with the same B")
    if time_chunk is not None and time_chunk < 1:
        raise ConfigError(f"time_chunk is {time_chunk}; use a positive number of frames or None")
    batch_size, max_frames, _ = encoder_out.shape
    _check_batch(lengths, targets, target_lengths, batch_size, max_frames, predictor_out.shape[1] - 1, blank, None)

    def slice_inputs(encoder_slice: Tensor, predictor: Tensor) -> tuple[Tensor, Tensor]:
        logits = joint(encoder_slice[:, :, None], predictor[:, None])                       # (B, t, U+1, V)
        vocab_size = logits.shape[-1]
        _check_blank(blank, vocab_size)
        if targets.numel() and int(targets.max()) >= vocab_size:
            raise DataError(f"target id {int(targets.max())} is outside the joint's vocabulary of {vocab_size}")
        return gather_lattice_inputs(logits.log_softmax(dim=-1), targets, blank=blank)

    if time_chunk is None:
        log_blank, log_label = slice_inputs(encoder_out, predictor_out)
    else:
        slices = [checkpoint(slice_inputs, encoder_out[:, start:start + time_chunk], predictor_out, use_reentrant=False)
                  for start in range(0, max_frames, time_chunk)]
        log_blank = torch.cat([blank_part for blank_part, _ in slices], dim=1)             # (B, T, U+1)
        log_label = torch.cat([label_part for _, label_part in slices], dim=1)             # (B, T, U)
    return transducer_lattice_nll(log_blank, log_label, lengths, target_lengths)


def rnnt_nll_ref(log_probs: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor, *,
                 blank: int = BLANK) -> Tensor:
    """The specification of :func:`rnnt_nll`: the recursion of the module docstring as a plain
    double loop over (t, u) per utterance, in float64 (differentiable; slow, for tests).

    Args and Returns: as :func:`rnnt_nll` (the result is float64).
    """
    if log_probs.dim() != 4:
        raise DataError(f"log_probs must be (B, T, U+1, V), got shape {tuple(log_probs.shape)}")
    _check_batch(lengths, targets, target_lengths, log_probs.shape[0], log_probs.shape[1], log_probs.shape[2] - 1,
                 blank, log_probs.shape[3])
    log_probs = log_probs.double()
    losses = []
    for b in range(log_probs.shape[0]):
        frames, labels = int(lengths[b]), int(target_lengths[b])
        log_alpha: dict[tuple[int, int], Tensor] = {}
        for t in range(frames):
            for u in range(labels + 1):
                terms = []
                if t > 0:
                    terms.append(log_alpha[t - 1, u] + log_probs[b, t - 1, u, blank])
                if u > 0:
                    terms.append(log_alpha[t, u - 1] + log_probs[b, t, u - 1, int(targets[b, u - 1])])
                log_alpha[t, u] = torch.logsumexp(torch.stack(terms), 0) if terms else log_probs.new_zeros(())
        losses.append(-(log_alpha[frames - 1, labels] + log_probs[b, frames - 1, labels, blank]))
    return torch.stack(losses)


def saved_tensor_bytes(compute: Callable[[], Tensor], exclude: tuple[Tensor, ...] = ()) -> int:
    """Bytes that autograd keeps for the backward pass of ``compute()``.

    Every tensor saved for backward while ``compute`` runs is seen through
    ``torch.autograd.graph.saved_tensors_hooks``; the result is the sum of ``nbytes`` over the
    unique storages they live in (a view counts its whole storage, a storage counts once).
    Storages of ``exclude`` (inputs and parameters, alive anyway) are left out, so two ways of
    computing the same thing are compared on what they add. Tensors that a non-reentrant
    checkpoint keeps are only its inputs, which the caller holds anyway.

    Args:
        compute: a function of no arguments returning the tensor to differentiate.
        exclude: tensors whose storages are not counted.
    Returns:
        the number of bytes.
    """
    excluded = {tensor.untyped_storage().data_ptr() for tensor in exclude}
    storages: dict[int, torch.UntypedStorage] = {}     # holding them keeps their addresses unique

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        compute()
    return sum(storage.nbytes() for storage in storages.values())
