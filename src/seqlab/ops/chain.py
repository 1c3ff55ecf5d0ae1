"""The linear chain: log partition, posterior marginals and Viterbi over masked batches.

A linear chain over K states scores a path ``y = (y_0, ..., y_{L-1})`` of a sequence of length L:

    score(y) = init[y_0] + sum_t emit_t[y_t] + sum_{t>0} trans[y_{t-1}, y_t] + final[y_{L-1}]

and ``log Z = log sum_y exp(score(y))``. The HMM, the CRF and CTC are all this chain:

- HMM: ``init = log pi``, ``trans = log A``, ``emit_t = log p(x_t | s)``, ``final = 0``, so
  ``log Z = log p(x)`` and ``exp(score(y) - log Z) = p(y | x)`` (Rabiner 1989).
- linear-chain CRF: free scores; ``p(y | x) = exp(score(y) - log Z)`` (Lafferty et al. 2001).
- CTC: states are positions of the blank-extended label sequence, with per-sequence (B, K, K)
  transitions (Graves et al. 2006).

Recursions (Rabiner 1989, eqs. 19-37), all in log space:

    log_alpha_0 = init + emit_0,   log_alpha_t(j) = emit_t(j) + logsumexp_i(log_alpha_{t-1}(i) + trans(i, j))
    log_beta_{L-1} = final,        log_beta_t(i) = logsumexp_j(trans(i, j) + emit_{t+1}(j) + log_beta_{t+1}(j))
    gamma_t(j) = exp(log_alpha_t(j) + log_beta_t(j) - log Z)
    xi_t(i, j) = exp(log_alpha_{t-1}(i) + trans(i, j) + emit_t(j) + log_beta_t(j) - log Z)

The sum over i is a matrix product of exponentials, shifted so nothing overflows:
``log sum_i exp(a_i + T_ij) = m + c_j + log sum_i exp(a_i - m) exp(T_ij - c_j)`` with
``m = max_i a_i`` and ``c_j = max_i T_ij`` (the column shift keeps rarely entered states exact).
It is exact except for terms more than about 87 nats (float32; 708 in float64) below the best
predecessor's, which flush to zero; they matter only when a transition into a state carries
that much more score than the best predecessor's (hard constraints against a confident
emission). Use float64 for such chains. The expected transition counts ``sum_t xi_t`` reuse the
forward step's weights and take one matrix product over all positions.

Conventions: ``log_init`` (K,) or (B, K); ``log_trans`` (K, K) or (B, K, K), ``[i, j]`` for
i -> j; ``log_emit`` (B, T, K); ``log_final`` (K,), (B, K) or None (zero); ``mask`` (B, T) bool,
true at real positions, sequences left-aligned and non-empty (None: all real). The only Python
loop is over time. ``*_ref`` functions enumerate all K^L paths: the specification, for tiny inputs.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from seqlab.errors import DataError


class ChainPosteriors(NamedTuple):
    """Posterior marginals of a chain.

    Attributes:
        log_partition: (B,) log Z.
        unary: (B, T, K) ``gamma_t(k) = p(y_t = k)``; zero at padding.
        pairwise: expected transition counts ``sum_t xi_t(i, j)`` in the shape of ``log_trans``:
            (K, K) summed over the batch when transitions are shared, (B, K, K) when per sequence.
    """

    log_partition: Tensor
    unary: Tensor
    pairwise: Tensor


def check_chain_mask(log_emit: Tensor, mask: Tensor | None) -> Tensor:
    """The mask of ``log_emit`` (B, T, K) as a bool tensor, or ``DataError`` naming the sequence.

    Checks that the mask is (B, T), that every sequence is non-empty and left-aligned.
    """
    if log_emit.dim() != 3:
        raise DataError(f"scores must have shape (B, T, K), got {tuple(log_emit.shape)}")
    batch, length, _ = log_emit.shape
    if length == 0:
        raise DataError("the batch has no positions (T = 0); every sequence needs at least one element")
    if mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=log_emit.device)
    if tuple(mask.shape) != (batch, length):
        raise DataError(
            f"mask has shape {tuple(mask.shape)} but the scores hold {batch} sequences of {length} positions"
        )
    mask = mask.to(device=log_emit.device, dtype=torch.bool)
    empty = (~mask[:, 0]).nonzero()
    if len(empty):
        raise DataError(f"sequence {int(empty[0, 0])} is empty (its mask has no true position)")
    gaps = (mask[:, 1:] & ~mask[:, :-1]).nonzero()
    if len(gaps):
        sequence, position = gaps[0].tolist()
        raise DataError(f"mask of sequence {sequence} is not left-aligned: position {position + 1} follows padding")
    return mask


def log_matmul_exp(log_a: Tensor, log_b: Tensor) -> Tensor:
    """``log(exp(log_a) @ exp(log_b))`` without overflow: ``log_a`` (..., K), ``log_b`` (K, N) -> (..., N)."""
    exp_b, column_shift = _column_scaled(log_b)
    peak = log_a.amax(-1, keepdim=True).clamp_min(torch.finfo(log_a.dtype).min)
    return torch.exp(log_a - peak).matmul(exp_b).log() + peak + column_shift


def chain_forward(log_init: Tensor, log_trans: Tensor, log_emit: Tensor, mask: Tensor | None = None) -> Tensor:
    """Forward messages ``log_alpha`` (B, T, K); at padding they carry on with zero emissions."""
    emit, _ = _time_major(log_emit, check_chain_mask(log_emit, mask))
    return _forward(log_init, log_trans, emit).log_alpha.transpose(0, 1)


def chain_backward(
    log_trans: Tensor, log_emit: Tensor, mask: Tensor | None = None, log_final: Tensor | None = None
) -> Tensor:
    """Backward messages ``log_beta`` (B, T, K); ``log_final`` at each sequence's last position and after."""
    emit, ended = _time_major(log_emit, check_chain_mask(log_emit, mask))
    return _backward(log_trans, emit, ended, _final(log_final, log_emit)).transpose(0, 1)


def chain_log_partition(
    log_init: Tensor, log_trans: Tensor, log_emit: Tensor, mask: Tensor | None = None,
    log_final: Tensor | None = None,
) -> Tensor:
    """log Z (B,) by the forward algorithm; differentiable in every score.

    Its backward pass is the backward algorithm: ``d log Z / d emit_t(k) = gamma_t(k)``,
    ``d log Z / d trans(i, j) = sum_t xi_t(i, j)``, and likewise for init and final.
    """
    mask = check_chain_mask(log_emit, mask)
    return _LogPartition.apply(log_init, log_trans, log_emit, _final(log_final, log_emit), mask)


def chain_posteriors(
    log_init: Tensor, log_trans: Tensor, log_emit: Tensor, mask: Tensor | None = None,
    log_final: Tensor | None = None,
) -> ChainPosteriors:
    """log Z, ``gamma`` and expected transition counts by forward-backward (see ``ChainPosteriors``)."""
    emit, ended = _time_major(log_emit, check_chain_mask(log_emit, mask))
    log_final = _final(log_final, log_emit)
    forward = _forward(log_init, log_trans, emit)
    log_z = _log_partition(forward.log_alpha, log_final, ended)
    log_beta = _backward(log_trans, emit, ended, log_final)
    return _posteriors(forward, log_beta, log_z, log_trans, emit, ended)


def chain_viterbi(
    log_init: Tensor, log_trans: Tensor, log_emit: Tensor, mask: Tensor | None = None,
    log_final: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The highest-scoring path of each sequence (Viterbi 1967; Rabiner 1989, eqs. 30-35).

    Returns:
        (B, T) int64 paths (0 at padding) and (B,) their scores.
    """
    emit, ended = _time_major(log_emit, check_chain_mask(log_emit, mask))
    score = log_init + emit[0]                                              # (B, K)
    scores, pointers = [score], []
    for t in range(1, emit.shape[0]):
        best, pointer = (score.unsqueeze(-1) + log_trans).max(dim=-2)       # over predecessors
        score = best + emit[t]
        scores.append(score)
        pointers.append(pointer)
    final_scores = _at_last(torch.stack(scores), ended) + _final(log_final, log_emit)
    best_score, state = final_scores.max(dim=-1)
    path = [state]
    for t in range(emit.shape[0] - 1, 0, -1):
        # Past a sequence's end the state stays the one at its last position.
        state = torch.where(ended[t, :, 0], state, pointers[t - 1].gather(1, state[:, None])[:, 0])
        path.append(state)
    return torch.stack(path[::-1], dim=1).masked_fill(ended[..., 0].T, 0), best_score


def chain_path_score(
    log_init: Tensor, log_trans: Tensor, log_emit: Tensor, path: Tensor, mask: Tensor | None = None,
    log_final: Tensor | None = None,
) -> Tensor:
    """``score(y)`` (B,) of given paths ``path`` (B, T) int64 (any value in range at padding)."""
    mask = check_chain_mask(log_emit, mask)
    batch, length, n_states = log_emit.shape
    path = path.masked_fill(~mask, 0)
    emit = log_emit.gather(-1, path[..., None])[..., 0].masked_fill(~mask, 0).sum(1)
    init = log_init.expand(batch, n_states).gather(1, path[:, :1])[:, 0]
    last = path.gather(1, mask.sum(1, keepdim=True) - 1)                    # (B, 1)
    final = _final(log_final, log_emit).expand(batch, n_states).gather(1, last)[:, 0]
    if log_trans.dim() == 2:
        trans = log_trans[path[:, :-1], path[:, 1:]]                        # (B, T - 1)
    else:
        trans = log_trans[torch.arange(batch, device=path.device)[:, None], path[:, :-1], path[:, 1:]]
    return init + emit + trans.masked_fill(~mask[:, 1:], 0).sum(1) + final


class _LogPartition(torch.autograd.Function):
    """log Z by the forward recursion; gradients are posterior marginals from the backward one."""

    @staticmethod
    def forward(ctx, log_init, log_trans, log_emit, log_final, mask):
        emit, ended = _time_major(log_emit, mask)
        forward = _forward(log_init, log_trans, emit)
        log_z = _log_partition(forward.log_alpha, log_final, ended)
        ctx.save_for_backward(log_init, log_trans, emit, log_final, ended, *forward, log_z)
        return log_z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_log_z):
        log_init, log_trans, emit, log_final, ended, *forward, log_z = ctx.saved_tensors
        log_beta = _backward(log_trans, emit, ended, log_final)
        posteriors = _posteriors(_Forward(*forward), log_beta, log_z, log_trans, emit, ended, weight=grad_log_z)
        unary = posteriors.unary                                            # (B, T, K), already weighted
        grad_init = _sum_to(unary[:, 0], log_init.shape)
        grad_final = _sum_to(_at_last(unary.transpose(0, 1), ended), log_final.shape)
        return grad_init, posteriors.pairwise, unary, grad_final, None


# Internals work time-major, (T, B, K), so that each step reads and writes contiguous rows.
# ``ended`` (T, B, 1) is true at padding.


class _Forward(NamedTuple):
    log_alpha: Tensor   # (T, B, K)
    scaled: Tensor      # (T - 1, B, K) exp(log_alpha_{t-1} - max_k log_alpha_{t-1}): predecessor weights
    inflow: Tensor      # (T - 1, B, K) sum_i scaled_{t-1}(i) exp(T_ij - c_j), for t = 1 .. T - 1


def _forward(log_init: Tensor, log_trans: Tensor, emit: Tensor) -> _Forward:
    exp_trans, column_shift = _column_scaled(log_trans)                    # (..., K, K), (..., 1, K)
    shifted_emit = emit + column_shift.squeeze(-2)                          # (T, B, K)
    matmul = _row_matmul(exp_trans)
    floor = torch.finfo(emit.dtype).min                                     # an all -inf row stays -inf, not NaN
    # Steps write into preallocated buffers: a list of per-step tensors and a stack cost more.
    log_alpha, scaled, inflow = torch.empty_like(emit), torch.empty_like(emit[1:]), torch.empty_like(emit[1:])
    torch.add(log_init, emit[0], out=log_alpha[0])
    for t in range(1, emit.shape[0]):
        peak = log_alpha[t - 1].amax(-1, keepdim=True).clamp_min_(floor)   # (B, 1)
        torch.exp(log_alpha[t - 1] - peak, out=scaled[t - 1])
        matmul(scaled[t - 1], inflow[t - 1])
        torch.log(inflow[t - 1], out=log_alpha[t]).add_(peak + shifted_emit[t])
    return _Forward(log_alpha, scaled, inflow)


def _backward(log_trans: Tensor, emit: Tensor, ended: Tensor, log_final: Tensor) -> Tensor:
    row_shift = log_trans.amax(-1, keepdim=True)                            # (..., K, 1)
    row_shift = torch.where(torch.isfinite(row_shift), row_shift, torch.zeros_like(row_shift))
    matmul = _row_matmul(torch.exp(log_trans - row_shift).transpose(-1, -2))  # [j, i] = exp(T_ij - r_i)
    row_shift = row_shift.squeeze(-1)                                       # (K,) or (B, K)
    floor = torch.finfo(emit.dtype).min
    final = log_final.expand(emit.shape[1], emit.shape[2])                  # (B, K)
    running = int((~ended[:, :, 0]).sum(0).min())                          # no sequence ends before this
    log_beta = torch.empty_like(emit)
    log_beta[-1] = final
    for t in range(emit.shape[0] - 2, -1, -1):
        ahead = emit[t + 1] + log_beta[t + 1]                               # (B, K)
        peak = ahead.amax(-1, keepdim=True).clamp_min_(floor)
        matmul(torch.exp(ahead - peak), log_beta[t]).log_().add_(peak + row_shift)
        if t + 1 >= running:
            torch.where(ended[t + 1], final, log_beta[t], out=log_beta[t])
    return log_beta


def _row_matmul(matrix: Tensor):
    """``(rows (B, K), out (B, N)) -> out = rows @ matrix``, for a shared (K, N) or per-sequence
    (B, K, N) matrix."""
    if matrix.dim() == 2:
        return lambda rows, out: torch.mm(rows, matrix, out=out)
    return lambda rows, out: torch.bmm(rows.unsqueeze(1), matrix, out=out.unsqueeze(1)).squeeze(1)


def _posteriors(
    forward: _Forward, log_beta: Tensor, log_z: Tensor, log_trans: Tensor, emit: Tensor,
    ended: Tensor, weight: Tensor | None = None,
) -> ChainPosteriors:
    """gamma and summed xi; every term multiplied by ``weight`` (B,) of its sequence when given.

    ``xi_t(i, j) = gamma_t(j) p(y_{t-1} = i | y_t = j, x_{<t})``: the forward step's own weights
    ``scaled_{t-1}(i) exp(T_ij - c_j) / inflow_t(j)``, so the sum over time is one product of
    (K, T B) by (T B, K) (per sequence when transitions are), consistent with the forward pass.
    """
    unary = torch.add(forward.log_alpha, log_beta).sub_(log_z[:, None]).exp_()
    unary = unary.masked_fill_(ended, 0)                                    # (T, B, K)
    if weight is not None:
        unary = unary.mul_(weight[:, None])
    # A state the forward pass found unreachable has gamma = 0 and inflow = 0: its xi is 0.
    ratio = unary[1:] / forward.inflow.clamp_min(torch.finfo(unary.dtype).tiny)
    exp_trans, _ = _column_scaled(log_trans)
    if log_trans.dim() == 2:
        pairwise = forward.scaled.flatten(0, 1).T.matmul(ratio.flatten(0, 1)) * exp_trans
    else:
        pairwise = torch.einsum("tbi,tbj->bij", forward.scaled, ratio) * exp_trans
    if not bool(torch.isfinite(pairwise).all()):
        # Tiny inflows at many positions overflowed the sum: redo it term by term in log space.
        pairwise = _pairwise_exact(forward.log_alpha, log_beta, log_z, log_trans, emit, ended, weight)
    return ChainPosteriors(log_z, unary.transpose(0, 1), pairwise)


def _pairwise_exact(
    log_alpha: Tensor, log_beta: Tensor, log_z: Tensor, log_trans: Tensor, emit: Tensor,
    ended: Tensor, weight: Tensor | None = None, max_elements: int = 1 << 24,
) -> Tensor:
    """``sum_t xi_t`` from its definition, exponentiating each (B, K, K) term; in time chunks."""
    length, batch, n_states = emit.shape
    weight = emit.new_ones(batch) if weight is None else weight
    pairwise = emit.new_zeros(batch, n_states, n_states)
    chunk = max(1, max_elements // (batch * n_states * n_states))
    for start in range(1, length, chunk):
        stop = min(length, start + chunk)
        log_xi = (log_alpha[start - 1:stop - 1, :, :, None] + log_trans
                  + (emit[start:stop] + log_beta[start:stop])[:, :, None, :]
                  - log_z[:, None, None])                                   # (chunk, B, K, K)
        xi = torch.exp(log_xi).masked_fill_(ended[start:stop, :, :, None], 0)
        pairwise += xi.sum(0) * weight[:, None, None]
    return pairwise if log_trans.dim() == 3 else pairwise.sum(0)


def _column_scaled(log_trans: Tensor) -> tuple[Tensor, Tensor]:
    """``exp(log_trans - c)`` and ``c`` (..., 1, K), the best score into each state (0 if none)."""
    shift = log_trans.amax(-2, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    return torch.exp(log_trans - shift), shift


def _time_major(log_emit: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(T, B, K) emissions, zero at padding (so whatever it holds, NaN included, cannot leak in),
    and ``ended`` (T, B, 1), true at padding."""
    ended = ~mask.T[..., None]
    emit = log_emit.transpose(0, 1).clone(memory_format=torch.contiguous_format)
    return emit.masked_fill_(ended, 0), ended


def _final(log_final: Tensor | None, log_emit: Tensor) -> Tensor:
    if log_final is None:
        return log_emit.new_zeros(log_emit.shape[-1])
    return log_final


def _at_last(values: Tensor, ended: Tensor) -> Tensor:
    """``values[L_b - 1, b]`` of time-major (T, B, K) values: each sequence's last real position."""
    last = (~ended[:, :, 0]).sum(0) - 1                                     # (B,)
    return values[last, torch.arange(values.shape[1], device=values.device)]


def _log_partition(log_alpha: Tensor, log_final: Tensor, ended: Tensor) -> Tensor:
    return torch.logsumexp(_at_last(log_alpha, ended) + log_final, dim=-1)


def _sum_to(gradient: Tensor, shape: torch.Size) -> Tensor:
    """Sum a (B, ...) gradient over the batch when the input was shared by every sequence."""
    return gradient.sum(0) if len(shape) < gradient.dim() else gradient


# --- References: enumerate every path. The specification; exponential in T, tiny inputs only. ---


def _enumerate(log_init, log_trans, log_emit, mask, log_final, sequence: int) -> tuple[Tensor, Tensor]:
    """All K^L paths (P, L) of one sequence and their scores (P,), straight from the definition."""
    length, n_states = int(mask[sequence].sum()), log_emit.shape[-1]
    paths = torch.tensor(list(itertools.product(range(n_states), repeat=length)), device=log_emit.device)
    init = log_init if log_init.dim() == 1 else log_init[sequence]
    trans = log_trans if log_trans.dim() == 2 else log_trans[sequence]
    final = _final(log_final, log_emit)
    final = final if final.dim() == 1 else final[sequence]
    scores = init[paths[:, 0]] + final[paths[:, -1]]
    for t in range(length):
        scores = scores + log_emit[sequence, t, paths[:, t]]
        if t > 0:
            scores = scores + trans[paths[:, t - 1], paths[:, t]]
    return paths, scores


def chain_log_partition_ref(log_init, log_trans, log_emit, mask=None, log_final=None) -> Tensor:
    """log Z (B,) by summing over every path."""
    mask = check_chain_mask(log_emit, mask)
    return torch.stack([
        torch.logsumexp(_enumerate(log_init, log_trans, log_emit, mask, log_final, b)[1], dim=0)
        for b in range(log_emit.shape[0])
    ])


def chain_viterbi_ref(log_init, log_trans, log_emit, mask=None, log_final=None) -> tuple[Tensor, Tensor]:
    """The best path (B, T) (0 at padding) and its score (B,) by trying every path."""
    mask = check_chain_mask(log_emit, mask)
    best_paths = torch.zeros(mask.shape, dtype=torch.long, device=log_emit.device)
    best_scores = []
    for b in range(log_emit.shape[0]):
        paths, scores = _enumerate(log_init, log_trans, log_emit, mask, log_final, b)
        best = scores.argmax()
        best_paths[b, : paths.shape[1]] = paths[best]
        best_scores.append(scores[best])
    return best_paths, torch.stack(best_scores)


def chain_posteriors_ref(log_init, log_trans, log_emit, mask=None, log_final=None) -> ChainPosteriors:
    """Marginals by weighting every path with ``exp(score - log Z)``."""
    mask = check_chain_mask(log_emit, mask)
    batch, length, n_states = log_emit.shape
    unary = log_emit.new_zeros(batch, length, n_states)
    pairwise = log_emit.new_zeros(batch, n_states, n_states)
    log_zs = []
    for b in range(batch):
        paths, scores = _enumerate(log_init, log_trans, log_emit, mask, log_final, b)
        log_zs.append(torch.logsumexp(scores, dim=0))
        probability = torch.exp(scores - log_zs[-1])                        # (P,)
        for t in range(paths.shape[1]):
            unary[b, t].index_add_(0, paths[:, t], probability)
            if t > 0:
                pairwise[b].index_put_((paths[:, t - 1], paths[:, t]), probability, accumulate=True)
    return ChainPosteriors(torch.stack(log_zs), unary, pairwise if log_trans.dim() == 3 else pairwise.sum(0))
