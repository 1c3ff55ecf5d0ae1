"""The linear chain: log partition, posterior marginals and Viterbi over masked batches.

A linear chain over K states scores a path ``y = (y_0, ..., y_{L-1})`` of a sequence of length L:

    score(y) = init[y_0] + sum_t emit_t[y_t] + sum_{t>0} trans[y_{t-1}, y_t] + final[y_{L-1}]

and ``log Z = log sum_y exp(score(y))``. The HMM, the CRF and CTC are all this chain:

- HMM: ``init = log pi``, ``trans = log A``, ``emit_t = log p(x_t | s)``, ``final = 0``, so
  ``log Z = log p(x)`` and ``exp(score(y) - log Z) = p(y | x)`` (Rabiner 1989).
- linear-chain CRF: free scores; ``p(y | x) = exp(score(y) - log Z)`` (Lafferty et al. 2001).
- CTC: states are positions of the blank-extended label sequence, with per-sequence (B, K, K)
  transitions (Graves et al. 2006).

Recursions (Rabiner 1989, eqs. 19-37, 30-35), in log space:

    log_alpha_0 = init + emit_0,   log_alpha_t(j) = emit_t(j) + logsumexp_i(log_alpha_{t-1}(i) + trans(i, j))
    log_beta_{L-1} = final,        log_beta_t(i) = logsumexp_j(trans(i, j) + emit_{t+1}(j) + log_beta_{t+1}(j))
    gamma_t(j) = softmax_j(log_alpha_t(j) + log_beta_t(j))
    xi_t(i, j) = softmax_(i,j)(log_alpha_{t-1}(i) + trans(i, j) + emit_t(j) + log_beta_t(j))
    Viterbi: the same forward recursion with max for logsumexp, then back-tracking.

The fast path computes each log-sum-exp as a matrix product of exponentials shifted by the
row's best entry, ``log sum_i exp(a_i + T_ij) = m + c_j + log sum_i exp(a_i - m) exp(T_ij - c_j)``
(``m = max_i a_i``, ``c_j = max_i T_ij``), keeps every row of messages near zero with its
shift summed in float64 (so T = 100,000 costs no precision in float32), and sums ``xi`` over
all positions with one more product. Rows whose sums underflowed (see below) are recomputed
by the textbook recursion. ``*_ref`` functions enumerate all K^L paths: the specification.

Only ``chain_log_partition`` and ``chain_path_score`` are differentiable (the former with a
hand-written backward pass: the posteriors); the other functions return plain tensors.

Conventions: ``log_init`` (K,) or (B, K); ``log_trans`` (K, K) or (B, K, K), ``[i, j]`` for
i -> j; ``log_emit`` (B, T, K); ``log_final`` (K,), (B, K) or None (zero); ``mask`` (B, T) bool,
true at real positions, sequences left-aligned and non-empty (None: all real). The only Python
loop is over time.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from seqlab.errors import DataError

_VITERBI_SHIFT_EVERY = 16    # Viterbi takes its scores' best out every this many steps


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
    """``log(exp(log_a) @ exp(log_b))``: ``log_a`` (..., K), ``log_b`` (K, N) -> (..., N).

    Shifted like the fast recursions (see the module docstring), so nothing overflows; terms more
    than ~87 nats (float32) below a row's best flush to zero. Differentiable.
    """
    exp_b, column_shift = _column_scaled(log_b)
    peak = log_a.amax(-1, keepdim=True).clamp_min(torch.finfo(log_a.dtype).min)
    return torch.exp(log_a - peak).matmul(exp_b).log() + peak + column_shift


@torch.no_grad()
def chain_forward(log_init: Tensor, log_trans: Tensor, log_emit: Tensor, mask: Tensor | None = None) -> Tensor:
    """Forward messages ``log_alpha`` (B, T, K); at padding they carry on with zero emissions."""
    emit, ended = _time_major(log_emit, check_chain_mask(log_emit, mask))
    return _forward(log_init, log_trans, emit, ended).absolute().transpose(0, 1)


@torch.no_grad()
def chain_backward(
    log_trans: Tensor, log_emit: Tensor, mask: Tensor | None = None, log_final: Tensor | None = None
) -> Tensor:
    """Backward messages ``log_beta`` (B, T, K); ``log_final`` at each sequence's last position and after."""
    emit, ended = _time_major(log_emit, check_chain_mask(log_emit, mask))
    return _backward(log_trans, emit, ended, _final(log_final, log_emit)).absolute().transpose(0, 1)


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


@torch.no_grad()
def chain_posteriors(
    log_init: Tensor, log_trans: Tensor, log_emit: Tensor, mask: Tensor | None = None,
    log_final: Tensor | None = None,
) -> ChainPosteriors:
    """log Z, ``gamma`` and expected transition counts by forward-backward (see ``ChainPosteriors``)."""
    emit, ended = _time_major(log_emit, check_chain_mask(log_emit, mask))
    log_final = _final(log_final, log_emit)
    forward = _forward(log_init, log_trans, emit, ended)
    log_z = _log_partition(forward, log_final, ended)
    backward = _backward(log_trans, emit, ended, log_final)
    return _posteriors(forward, backward, log_z, log_trans, emit, ended)


@torch.no_grad()
def chain_viterbi(
    log_init: Tensor, log_trans: Tensor, log_emit: Tensor, mask: Tensor | None = None,
    log_final: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The highest-scoring path of each sequence (Viterbi 1967; Rabiner 1989, eqs. 30-35).

    Returns:
        (B, T) int64 paths (0 at padding) and (B,) their scores.
    """
    mask = check_chain_mask(log_emit, mask)
    ended = ~mask.T[..., None]                                              # (T, B, 1)
    # Scores are kept (K, B), so that the max over predecessors of (previous, next, B) runs over
    # the outer dim; the argmax is taken only along the best path, while tracing it back.
    # Padding needs no zeroing: it only ever feeds later padding.
    emit_rows = log_emit.permute(1, 2, 0).contiguous().unbind(0)            # T x (K, B)
    by_previous = log_trans[..., None] if log_trans.dim() == 2 else log_trans.permute(1, 2, 0)
    peaks = log_emit.new_zeros(len(emit_rows), 1, log_emit.shape[0])       # shifts taken out, (T, 1, B)
    floor = torch.finfo(log_emit.dtype).min
    score = (log_init + log_emit[:, 0]).T                                   # (K, B)
    scores = [score]
    for t in range(1, len(emit_rows)):
        score = (score.unsqueeze(1) + by_previous).amax(dim=0).add_(emit_rows[t])
        if t % _VITERBI_SHIFT_EVERY == 0:     # keep scores near zero, so float32 resolves them at any T
            score.sub_(torch.amax(score, 0, keepdim=True, out=peaks[t]).clamp_min_(floor))
        scores.append(score)
    scores = torch.stack(scores).transpose(1, 2).contiguous()               # (T, B, K) for the argmax
    best_score, state = (_at_last(scores, ended) + _final(log_final, log_emit)).max(dim=-1)
    offsets = _at_last(peaks.double().cumsum(0).transpose(1, 2), ended)[:, 0]
    best_score = (best_score.double() + offsets).to(log_emit.dtype)
    into = log_trans.transpose(-1, -2).contiguous()                         # [..., j, i] = T_ij
    running = int(mask.sum(1).min())                                        # no sequence ends before this
    path = [state]
    for t in range(len(emit_rows) - 1, 0, -1):
        # into_state[b, i] = T[i, state_b]: the score of each predecessor of the chosen state.
        if into.dim() == 2:
            into_state = into.index_select(0, state)
        else:
            into_state = into.gather(1, state[:, None, None].expand(-1, 1, into.shape[-1]))[:, 0]
        previous = (scores[t - 1] + into_state).argmax(dim=-1)
        # Past a sequence's end the state stays the one at its last position.
        state = torch.where(ended[t, :, 0], state, previous) if t >= running else previous
        path.append(state)
    return torch.stack(path[::-1], dim=1).masked_fill(~mask, 0), best_score


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
        forward = _forward(log_init, log_trans, emit, ended)
        log_z = _log_partition(forward, log_final, ended)
        ctx.save_for_backward(log_init, log_trans, emit, log_final, ended, *forward, log_z)
        return log_z.to(emit.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_log_z):
        log_init, log_trans, emit, log_final, ended, *forward, log_z = ctx.saved_tensors
        backward = _backward(log_trans, emit, ended, log_final)
        posteriors = _posteriors(_Messages(*forward), backward, log_z, log_trans, emit, ended, weight=grad_log_z)
        unary = posteriors.unary                                            # (B, T, K), already weighted
        grad_init = _sum_to(unary[:, 0], log_init.shape)
        grad_final = _sum_to(_at_last(unary.transpose(0, 1), ended), log_final.shape)
        return grad_init, posteriors.pairwise, unary, grad_final, None


# Internals work time-major, (T, B, K), so that each step reads and writes contiguous rows;
# ``ended`` (T, B, 1) is true at padding. Messages are stored as ``relative + offset``: rows
# near zero in the working dtype, and the shifts taken out of them summed over time in float64
# (T, B, 1), so that neither float32 precision nor the magnitude of log Z limits T.
#
# The fast recursions exponentiate each row against its best entry before the matrix product,
# so a state whose every allowed predecessor (successor, going backward) lies more than ~87
# nats (float32; ~708 in float64) below the best one gets a sum that underflows. That happens
# only when hard constraints or near-zero transitions meet confident emissions; such rows are
# found after the pass and recomputed by the textbook recursion (``_forward_exact``,
# ``_backward_exact``), which is slower but exact at any range of scores.


class _Messages(NamedTuple):
    relative: Tensor            # (T, B, K) log messages less their offsets (forward: at most 0)
    offset: Tensor              # (T, B, 1) float64
    scaled: Tensor | None       # forward: (T, B, K) exp(relative), the next step's predecessor weights
    inflow: Tensor | None       # forward: (T - 1, B, K) sum_i scaled_{t-1}(i) exp(T_ij - c_j)
    repaired: Tensor | None     # (B,) rows recomputed by the exact recursion, or None

    def absolute(self) -> Tensor:
        return (self.relative.double() + self.offset).to(self.relative.dtype)


def _forward(log_init: Tensor, log_trans: Tensor, emit: Tensor, ended: Tensor) -> _Messages:
    exp_trans, column_shift = _column_scaled(log_trans)                    # (..., K, K), (..., 1, K)
    matmul = _row_matmul(exp_trans)
    floor = torch.finfo(emit.dtype).min                                     # an all -inf row stays -inf, not NaN
    # Steps write into preallocated buffers, through views made once (unbind).
    relative, scaled, inflow = torch.empty_like(emit), torch.empty_like(emit), torch.empty_like(emit[1:])
    peaks = emit.new_empty(*emit.shape[:2], 1)
    relative_rows, scaled_rows, inflow_rows, peak_rows = (x.unbind(0) for x in (relative, scaled, inflow, peaks))
    emit_rows = (emit + column_shift.squeeze(-2)).unbind(0)                 # T x (B, K)
    for t in range(len(emit_rows)):
        if t == 0:
            torch.add(log_init, emit[0], out=relative_rows[0])
        else:
            matmul(scaled_rows[t - 1], inflow_rows[t - 1])
            torch.log(inflow_rows[t - 1], out=relative_rows[t]).add_(emit_rows[t])
        peak = torch.amax(relative_rows[t], -1, keepdim=True, out=peak_rows[t]).clamp_min_(floor)
        torch.exp(relative_rows[t].sub_(peak), out=scaled_rows[t])
    offset = peaks.double().cumsum(0)
    threshold = _threshold(emit.dtype)
    rows = None
    if inflow.numel() and float(inflow.amin()) < threshold:                # one cheap pass first
        rows = _underflowed(inflow < threshold, relative[:-1], log_trans, ended[1:])
    if rows is not None:
        relative[:, rows], offset[:, rows] = _forward_exact(_rows(log_init, rows, 1), _rows(log_trans, rows, 2),
                                                            emit[:, rows])
    return _Messages(relative, offset, scaled, inflow, rows)


def _backward(log_trans: Tensor, emit: Tensor, ended: Tensor, log_final: Tensor) -> _Messages:
    row_shift = log_trans.amax(-1, keepdim=True)                            # (..., K, 1)
    row_shift = torch.where(torch.isfinite(row_shift), row_shift, torch.zeros_like(row_shift))
    matmul = _row_matmul(torch.exp(log_trans - row_shift).transpose(-1, -2))  # [j, i] = exp(T_ij - r_i)
    row_shift = row_shift.squeeze(-1)                                       # (K,) or (B, K)
    floor = torch.finfo(emit.dtype).min
    final = log_final.expand(emit.shape[1], emit.shape[2])                  # (B, K)
    running = int((~ended[:, :, 0]).sum(0).min())                          # no sequence ends before this
    relative, peaks = torch.empty_like(emit), emit.new_zeros(*emit.shape[:2], 1)
    relative_rows, peak_rows, emit_rows, ended_rows = (x.unbind(0) for x in (relative, peaks, emit, ended))
    relative_rows[-1].copy_(final)
    for t in range(len(emit_rows) - 2, -1, -1):
        # Bounded without renormalising: between T_ij* (j* the best next state) and r_i + log K.
        ahead = emit_rows[t + 1] + relative_rows[t + 1]                     # (B, K)
        peak = torch.amax(ahead, -1, keepdim=True, out=peak_rows[t]).clamp_min_(floor)
        matmul(ahead.sub_(peak).exp_(), relative_rows[t]).log_().add_(row_shift)
        if t + 1 >= running:
            torch.where(ended_rows[t + 1], final, relative_rows[t], out=relative_rows[t])
    peaks[:-1].masked_fill_(ended[1:], 0)                                   # steps that restarted at final
    offset = peaks.double().flip(0).cumsum(0).flip(0)
    log_threshold = math.log(_threshold(emit.dtype))
    rows = None
    if len(emit_rows) > 1 and float(relative[:-1].amin()) < float(row_shift.max()) + log_threshold:
        small = relative[:-1] < row_shift + log_threshold
        rows = _underflowed(small, emit[1:] + relative[1:], log_trans.transpose(-1, -2), ended[1:])
    if rows is not None:
        relative[:, rows], offset[:, rows] = _backward_exact(_rows(log_trans, rows, 2), emit[:, rows],
                                                             ended[:, rows], _rows(final, rows, 1))
    return _Messages(relative, offset, None, None, rows)


def _forward_exact(log_init: Tensor, log_trans: Tensor, emit: Tensor) -> tuple[Tensor, Tensor]:
    """The textbook forward recursion, a log-sum-exp over (B, K, K) per step; exact at any range."""
    floor = torch.finfo(emit.dtype).min
    relative, peaks = [], []
    for t in range(emit.shape[0]):
        scores = log_init + emit[0] if t == 0 else \
            torch.logsumexp(relative[-1].unsqueeze(-1) + log_trans, dim=-2) + emit[t]
        peaks.append(scores.amax(-1, keepdim=True).clamp_min(floor))
        relative.append(scores - peaks[-1])
    return torch.stack(relative), torch.stack(peaks).double().cumsum(0)


def _backward_exact(log_trans: Tensor, emit: Tensor, ended: Tensor, final: Tensor) -> tuple[Tensor, Tensor]:
    """The textbook backward recursion, a log-sum-exp over (B, K, K) per step; exact at any range."""
    floor = torch.finfo(emit.dtype).min
    relative, peaks = [final], [torch.zeros_like(final[:, :1])]
    for t in range(emit.shape[0] - 2, -1, -1):
        scores = torch.logsumexp(log_trans + (emit[t + 1] + relative[-1]).unsqueeze(-2), dim=-1)
        peak = scores.amax(-1, keepdim=True).clamp_min(floor).masked_fill(ended[t + 1], 0)
        relative.append(torch.where(ended[t + 1], final, scores - peak))
        peaks.append(peak)
    return torch.stack(relative[::-1]), torch.stack(peaks[::-1]).double().flip(0).cumsum(0).flip(0)


def _underflowed(small: Tensor, sources: Tensor, allowed_into: Tensor, ended: Tensor) -> Tensor | None:
    """(B,) rows where a state's sum came out ``small`` (T', B, K) although an allowed term
    (``allowed_into[..., i, j]`` finite, from a finite ``sources[t, b, i]``) exists; None if no row."""
    small = small & ~ended
    finite, allowed = torch.isfinite(sources).to(sources.dtype), torch.isfinite(allowed_into).to(sources.dtype)
    if allowed.dim() == 2:
        reachable = finite @ allowed > 0
    else:
        reachable = torch.einsum("tbi,bij->tbj", finite, allowed) > 0
    rows = (small & reachable).any(-1).any(0)
    return rows if bool(rows.any()) else None


def _threshold(dtype: torch.dtype) -> float:
    """Sums below this may have lost their dominant terms to underflow (tiny / eps^2)."""
    info = torch.finfo(dtype)
    return info.tiny / info.eps ** 2


def _rows(scores: Tensor, rows: Tensor, shared_dim: int) -> Tensor:
    """``scores`` for the selected sequences, when they are per sequence (more than ``shared_dim`` dims)."""
    return scores[rows] if scores.dim() > shared_dim else scores


def _row_matmul(matrix: Tensor):
    """``(rows (B, K), out (B, N)) -> out = rows @ matrix``, for a shared (K, N) or per-sequence
    (B, K, N) matrix."""
    if matrix.dim() == 2:
        return lambda rows, out: torch.mm(rows, matrix, out=out)
    return lambda rows, out: torch.bmm(rows.unsqueeze(1), matrix, out=out.unsqueeze(1)).squeeze(1)


def _posteriors(
    forward: _Messages, backward: _Messages, log_z: Tensor, log_trans: Tensor, emit: Tensor,
    ended: Tensor, weight: Tensor | None = None,
) -> ChainPosteriors:
    """gamma and summed xi; every term multiplied by ``weight`` (B,) of its sequence when given.

    ``gamma_t(j) = alpha_t(j) beta_t(j) / sum_k alpha_t(k) beta_t(k)`` (Rabiner 1989, eq. 27),
    normalised at each position, so the rounding that the two recursions pile up over time
    cancels. ``xi_t(i, j) = gamma_t(j) p(y_{t-1} = i | y_t = j, x_{<t})``, the forward step's own
    weights ``scaled_{t-1}(i) exp(T_ij - c_j) / inflow_t(j)``: summed over time by one product
    of (K, T B) by (T B, K) (per sequence when transitions are). Repaired rows take eq. 37.
    """
    unary = torch.softmax(torch.add(forward.relative, backward.relative), dim=-1)   # (T, B, K)
    if bool(ended.any()):
        unary.masked_fill_(ended, 0)
    if weight is not None:
        unary.mul_(weight[:, None])
    # A state the forward pass found unreachable has gamma = 0 and inflow = 0: its xi is 0.
    ratio = torch.div(unary[1:], forward.inflow).nan_to_num_(nan=0.0, posinf=math.inf)
    repaired = _either(forward.repaired, backward.repaired)
    if repaired is not None:
        ratio[:, repaired] = 0
    exp_trans, _ = _column_scaled(log_trans)
    if log_trans.dim() == 2:
        pairwise = forward.scaled[:-1].flatten(0, 1).T.matmul(ratio.flatten(0, 1)) * exp_trans
    else:
        pairwise = torch.einsum("tbi,tbj->bij", forward.scaled[:-1], ratio) * exp_trans
    if not bool(torch.isfinite(pairwise).all()):
        # Tiny inflows at many positions overflowed the sum: redo it term by term in log space.
        repaired = torch.ones_like(ended[0, :, 0])
        pairwise = torch.zeros_like(pairwise)
    if repaired is not None:
        exact = _pairwise_exact(forward.relative[:, repaired], backward.relative[:, repaired],
                                _rows(log_trans, repaired, 2), emit[:, repaired], ended[:, repaired],
                                None if weight is None else weight[repaired])
        if log_trans.dim() == 2:
            pairwise = pairwise + exact
        else:
            pairwise[repaired] += exact
    return ChainPosteriors(log_z.to(emit.dtype), unary.transpose(0, 1), pairwise)


def _pairwise_exact(
    forward: Tensor, backward: Tensor, log_trans: Tensor, emit: Tensor, ended: Tensor,
    weight: Tensor | None = None, max_elements: int = 1 << 24,
) -> Tensor:
    """``sum_t xi_t`` from relative forward and backward messages (T, B, K) by its definition
    (Rabiner 1989, eq. 37), each (K, K) term normalised; in time chunks."""
    length, batch, n_states = emit.shape
    weight = emit.new_ones(batch) if weight is None else weight
    pairwise = emit.new_zeros(batch, n_states, n_states)
    chunk = max(1, max_elements // (batch * n_states * n_states))
    for start in range(1, length, chunk):
        stop = min(length, start + chunk)
        log_xi = (forward[start - 1:stop - 1, :, :, None] + log_trans
                  + (emit[start:stop] + backward[start:stop])[:, :, None, :])     # (chunk, B, K, K)
        xi = torch.softmax(log_xi.flatten(-2), dim=-1).view(log_xi.shape)
        pairwise += xi.masked_fill_(ended[start:stop, :, :, None], 0).sum(0) * weight[:, None, None]
    return pairwise if log_trans.dim() == 3 else pairwise.sum(0)


def _either(first: Tensor | None, second: Tensor | None) -> Tensor | None:
    if first is None or second is None:
        return second if first is None else first
    return first | second


def _column_scaled(log_trans: Tensor) -> tuple[Tensor, Tensor]:
    """``exp(log_trans - c)`` and ``c`` (..., 1, K), the best score into each state (0 if none)."""
    shift = log_trans.amax(-2, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    return torch.exp(log_trans - shift), shift


def _time_major(log_emit: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(T, B, K) contiguous emissions, zero at padding (so whatever it holds, NaN included,
    cannot leak in), and ``ended`` (T, B, 1), true at padding. Emissions already stored
    time-major and without padding are used as they are: nothing here writes into them."""
    ended = ~mask.T[..., None]
    emit = log_emit.transpose(0, 1)
    padded = bool(ended.any())
    if not emit.is_contiguous():
        emit = emit.contiguous()
        return (emit.masked_fill_(ended, 0) if padded else emit), ended
    return (emit.masked_fill(ended, 0) if padded else emit), ended


def _final(log_final: Tensor | None, log_emit: Tensor) -> Tensor:
    if log_final is None:
        return log_emit.new_zeros(log_emit.shape[-1])
    return log_final


def _at_last(values: Tensor, ended: Tensor) -> Tensor:
    """``values[L_b - 1, b]`` of time-major (T, B, K) values: each sequence's last real position."""
    last = (~ended[:, :, 0]).sum(0) - 1                                     # (B,)
    return values[last, torch.arange(values.shape[1], device=values.device)]


def _log_partition(forward: _Messages, log_final: Tensor, ended: Tensor) -> Tensor:
    """(B,) float64 log Z from the forward messages at each sequence's last position."""
    last = torch.logsumexp(_at_last(forward.relative, ended) + log_final, dim=-1)
    return _at_last(forward.offset, ended)[:, 0] + last.double()


def _sum_to(gradient: Tensor, shape: torch.Size) -> Tensor:
    """Sum a (B, ...) gradient over the batch when the input was shared by every sequence."""
    return gradient.sum(0) if len(shape) < gradient.dim() else gradient


# --- References: enumerate every path. The specification; exponential in T, tiny inputs only. ---


def _enumerate(log_init: Tensor, log_trans: Tensor, log_emit: Tensor, mask: Tensor, log_final: Tensor | None,
               sequence: int) -> tuple[Tensor, Tensor]:
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


def chain_log_partition_ref(log_init: Tensor, log_trans: Tensor, log_emit: Tensor, mask: Tensor | None = None,
                            log_final: Tensor | None = None) -> Tensor:
    """log Z (B,) by summing over every path."""
    mask = check_chain_mask(log_emit, mask)
    return torch.stack([
        torch.logsumexp(_enumerate(log_init, log_trans, log_emit, mask, log_final, b)[1], dim=0)
        for b in range(log_emit.shape[0])
    ])


def chain_viterbi_ref(log_init: Tensor, log_trans: Tensor, log_emit: Tensor, mask: Tensor | None = None,
                      log_final: Tensor | None = None) -> tuple[Tensor, Tensor]:
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


def chain_posteriors_ref(log_init: Tensor, log_trans: Tensor, log_emit: Tensor, mask: Tensor | None = None,
                         log_final: Tensor | None = None) -> ChainPosteriors:
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
