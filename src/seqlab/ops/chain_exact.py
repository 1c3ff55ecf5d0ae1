"""The linear chain's exact fallback: the textbook recursions in log space, for rows whose fast sums underflowed.

The fast path (``seqlab.ops.chain_scaled``) sums exponentials of scores shifted by each row's best,
so a term more than ~87 nats (float32; ~708 in float64) below its row's best flushes to zero.
That is harmless unless the lost terms were the only way on: hard constraints or near-zero
transitions meeting confident emissions. ``underflowed_rows`` finds the sequences where a sum
came out below ``underflow_threshold`` although it had an allowed term; the functions here
recompute them with a log-sum-exp over (B, K, K) per step (Rabiner 1989, eqs. 19-37), slower
but exact at any range of scores:

    log_alpha_0 = init + emit_0,   log_alpha_t(j) = emit_t(j) + logsumexp_i(log_alpha_{t-1}(i) + trans(i, j))
    log_beta_{L-1} = final,        log_beta_t(i) = logsumexp_j(trans(i, j) + emit_{t+1}(j) + log_beta_{t+1}(j))
    gamma_t(j) = softmax_j(log_alpha_t(j) + log_beta_t(j))
    xi_t(i, j) = softmax_(i,j)(log_alpha_{t-1}(i) + trans(i, j) + emit_t(j) + log_beta_t(j))

Everything is time-major like the fast path's internals: ``emit`` (T, B, K), zero at padding;
``ended`` (T, B, 1), true at padding; ``log_trans`` (K, K) or (B, K, K); ``final`` (B, K).
Messages come back as ``relative + offset``: rows near zero in the working dtype and (T, B, 1)
float64 offsets summed over time, so float32 keeps its precision at any T.
"""

from __future__ import annotations

import torch
from torch import Tensor


def at_last(values: Tensor, ended: Tensor) -> Tensor:
    """``values[L_b - 1, b]`` of time-major (T, B, ...) values: each sequence's last real position."""
    last = (~ended[:, :, 0]).sum(0) - 1                                     # (B,)
    return values[last, torch.arange(values.shape[1], device=values.device)]


def underflow_threshold(dtype: torch.dtype) -> float:
    """Sums of row-normalised terms below this may have lost their dominant terms (tiny / eps^2)."""
    info = torch.finfo(dtype)
    return info.tiny / info.eps ** 2


def underflowed_rows(small: Tensor, sources: Tensor, allowed: Tensor, ended: Tensor) -> Tensor | None:
    """(B,) sequences where a state's sum came out ``small`` (T', B, K) although it had a term:
    a possible state ``sources[t, b, i]`` (T', B, K) bool with an allowed step ``allowed[..., i, j]``
    (K, K) or (B, K, K) bool into it. Positions where ``ended`` (T', B, 1) are ignored. None if no row."""
    small = small & ~ended
    sources, allowed = sources.to(torch.float32), allowed.to(torch.float32)
    if allowed.dim() == 2:
        reachable = sources @ allowed > 0
    else:
        reachable = torch.einsum("tbi,bij->tbj", sources, allowed) > 0
    rows = (small & reachable).any(-1).any(0)
    return rows if bool(rows.any()) else None


def exact_forward(log_init: Tensor, log_trans: Tensor, emit: Tensor) -> tuple[Tensor, Tensor]:
    """``log_alpha`` as (relative (T, B, K), offset (T, B, 1) float64); padding carries on."""
    floor = torch.finfo(emit.dtype).min                                     # an all -inf row stays -inf
    relative, peaks = [], []
    for t in range(emit.shape[0]):
        scores = log_init + emit[0] if t == 0 else \
            torch.logsumexp(relative[-1].unsqueeze(-1) + log_trans, dim=-2) + emit[t]
        peaks.append(scores.amax(-1, keepdim=True).clamp_min(floor))
        relative.append(scores - peaks[-1])
    return torch.stack(relative), torch.stack(peaks).double().cumsum(0)


def exact_backward(log_trans: Tensor, emit: Tensor, ended: Tensor, final: Tensor) -> tuple[Tensor, Tensor]:
    """``log_beta`` as (relative (T, B, K), offset (T, B, 1) float64); ``final`` (B, K) from each
    sequence's last position on."""
    floor = torch.finfo(emit.dtype).min
    relative, peaks = [final], [torch.zeros_like(final[:, :1])]
    for t in range(emit.shape[0] - 2, -1, -1):
        scores = torch.logsumexp(log_trans + (emit[t + 1] + relative[-1]).unsqueeze(-2), dim=-1)
        peak = scores.amax(-1, keepdim=True).clamp_min(floor).masked_fill(ended[t + 1], 0)
        relative.append(torch.where(ended[t + 1], final, scores - peak))
        peaks.append(peak)
    return torch.stack(relative[::-1]), torch.stack(peaks[::-1]).double().flip(0).cumsum(0).flip(0)


def exact_log_partition(log_init: Tensor, log_trans: Tensor, emit: Tensor, ended: Tensor, final: Tensor) -> Tensor:
    """(B,) float64 log Z by ``exact_forward``."""
    relative, offset = exact_forward(log_init, log_trans, emit)
    return at_last(offset, ended)[:, 0] + torch.logsumexp(at_last(relative, ended) + final, dim=-1).double()


def exact_pairwise(
    log_alpha: Tensor, log_beta: Tensor, log_trans: Tensor, emit: Tensor, ended: Tensor,
    weight: Tensor | None = None, max_elements: int = 1 << 24,
) -> Tensor:
    """``sum_t xi_t`` from forward and backward log messages (T, B, K), any per-position offsets
    left out, by its definition (Rabiner 1989, eq. 37), each (K, K) term normalised; in time chunks
    of at most ``max_elements``. Each sequence's terms are multiplied by ``weight`` (B,) when given.

    Returns:
        (K, K) summed over the batch for shared transitions, (B, K, K) for per-sequence ones.
    """
    length, batch, n_states = emit.shape
    weight = emit.new_ones(batch) if weight is None else weight
    pairwise = emit.new_zeros(batch, n_states, n_states)
    chunk = max(1, max_elements // (batch * n_states * n_states))
    for start in range(1, length, chunk):
        stop = min(length, start + chunk)
        log_xi = (log_alpha[start - 1:stop - 1, :, :, None] + log_trans
                  + (emit[start:stop] + log_beta[start:stop])[:, :, None, :])     # (chunk, B, K, K)
        xi = torch.softmax(log_xi.flatten(-2), dim=-1).view(log_xi.shape)
        pairwise += xi.masked_fill_(ended[start:stop, :, :, None], 0).sum(0) * weight[:, None, None]
    return pairwise if log_trans.dim() == 3 else pairwise.sum(0)


def exact_posteriors(
    log_init: Tensor, log_trans: Tensor, emit: Tensor, ended: Tensor, final: Tensor, weight: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """log Z (B,) float64, ``gamma`` (T, B, K) (zero at padding) and ``sum_t xi_t`` (as
    ``exact_pairwise``), with ``gamma`` and ``xi`` multiplied by ``weight`` (B,) when given."""
    alpha, alpha_offset = exact_forward(log_init, log_trans, emit)
    beta, _ = exact_backward(log_trans, emit, ended, final)
    log_z = at_last(alpha_offset, ended)[:, 0] + torch.logsumexp(at_last(alpha, ended) + final, dim=-1).double()
    unary = torch.softmax(alpha + beta, dim=-1).masked_fill_(ended, 0)
    if weight is not None:
        unary.mul_(weight[:, None])
    return log_z, unary, exact_pairwise(alpha, beta, log_trans, emit, ended, weight)

