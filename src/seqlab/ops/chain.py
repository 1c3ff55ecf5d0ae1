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
    Viterbi: the same forward recursion with max for logsumexp, then back-tracking
    (``seqlab.ops.chain_viterbi``).

The fast path (``seqlab.ops.chain_scaled``) runs them in the probability domain with a
normaliser per step, so a step costs one (B, K) by (K, K) product and no logarithm or
exponential; rows whose sums underflow there are recomputed by the textbook recursion
(``seqlab.ops.chain_exact``). ``seqlab.ops.chain_reference`` enumerates all K^L paths: the
specification. Emissions over a finite alphabet may come as an ``EmissionTable``.

Only ``chain_log_partition`` and ``chain_path_score`` are differentiable (the former with a
hand-written backward pass: the posteriors); the other functions return plain tensors.

Conventions: ``log_init`` (K,) or (B, K); ``log_trans`` (K, K) or (B, K, K), ``[i, j]`` for
i -> j; ``log_emit`` (B, T, K); ``log_final`` (K,), (B, K) or None (zero); ``mask`` (B, T) bool,
true at real positions, sequences left-aligned and non-empty (None: all real). The only Python
loop is over time.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from seqlab.errors import DataError
from seqlab.ops.chain_exact import at_last, exact_backward, exact_forward
from seqlab.ops.chain_scaled import (Chain, EmissionTable, Scaled, backward_pass, column_scaled, either,
                                     final_scores, forward_pass, gathered, inflow, log_partition, posteriors,
                                     scale_chain)
from seqlab.ops.chain_viterbi import max_product_path

_REFERENCES = ("chain_log_partition_ref", "chain_posteriors_ref", "chain_viterbi_ref")


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


def check_chain_mask(log_emit: Tensor | EmissionTable, mask: Tensor | None) -> Tensor:
    """The mask of ``log_emit`` (B, T, K) as a bool tensor, or ``DataError`` naming the sequence.

    Checks that the mask is (B, T), that every sequence is non-empty and left-aligned.
    """
    if isinstance(log_emit, EmissionTable):
        if log_emit.table.dim() != 2 or log_emit.symbols.dim() != 2:
            raise DataError(f"an emission table needs a (V, K) table and (B, T) symbols, got "
                            f"{tuple(log_emit.table.shape)} and {tuple(log_emit.symbols.shape)}")
        (batch, length), device = log_emit.symbols.shape, log_emit.table.device
    elif log_emit.dim() != 3:
        raise DataError(f"scores must have shape (B, T, K), got {tuple(log_emit.shape)}")
    else:
        (batch, length, _), device = log_emit.shape, log_emit.device
    if length == 0:
        raise DataError("the batch has no positions (T = 0); every sequence needs at least one element")
    if mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if tuple(mask.shape) != (batch, length):
        raise DataError(
            f"mask has shape {tuple(mask.shape)} but the scores hold {batch} sequences of {length} positions"
        )
    mask = mask.to(device=device, dtype=torch.bool)
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

    Shifted like the fast recursions (``seqlab.ops.chain_scaled``), so nothing overflows; terms more
    than ~87 nats (float32) below a row's best flush to zero. Differentiable.
    """
    exp_b, column_shift = column_scaled(log_b)
    peak = log_a.amax(-1, keepdim=True).clamp_min(torch.finfo(log_a.dtype).min)
    return torch.exp(log_a - peak).matmul(exp_b).log() + peak + column_shift


@torch.no_grad()
def chain_forward(log_init: Tensor, log_trans: Tensor, log_emit: Tensor | EmissionTable,
                  mask: Tensor | None = None) -> Tensor:
    """Forward messages ``log_alpha`` (B, T, K); at padding they carry on with zero emissions."""
    log_emit = gathered(log_emit)
    chain = Chain.of(log_init, log_trans, log_emit, check_chain_mask(log_emit, mask), None)
    scaled = scale_chain(chain)
    forward = forward_pass(chain, scaled)
    # log_alpha_t(j) = log u_t(j) + emit_t(j) + c_j + offset_{t-1}: the emission is added in log
    # space, so a state far below its row's best keeps its score (in a_t it flushes to zero).
    log_alpha = torch.empty_like(chain.emit)                                # emit: gathered above
    torch.add(chain.log_init, chain.emit[0], out=log_alpha[0])
    torch.add(inflow(forward.messages, scaled.exp_trans).log(), chain.emit[1:] + scaled.column_shift,
              out=log_alpha[1:])
    log_alpha = log_alpha.double()
    log_alpha[1:] += forward.offset[:-1]
    if forward.underflowed is not None:
        rows = forward.underflowed
        exact = chain.rows(rows)
        relative, offset = exact_forward(exact.log_init, exact.log_trans, exact.emit)
        log_alpha[:, rows] = relative.double() + offset
    return log_alpha.to(chain.dtype).transpose(0, 1)


@torch.no_grad()
def chain_backward(
    log_trans: Tensor, log_emit: Tensor | EmissionTable, mask: Tensor | None = None, log_final: Tensor | None = None
) -> Tensor:
    """Backward messages ``log_beta`` (B, T, K); ``log_final`` at each sequence's last position and after."""
    log_emit = gathered(log_emit)
    log_init = log_emit.new_zeros(log_emit.shape[-1])                      # not used going backward
    chain = Chain.of(log_init, log_trans, log_emit, check_chain_mask(log_emit, mask), log_final)
    scaled = scale_chain(chain)
    backward = backward_pass(chain, scaled)
    # log_beta_t = log b_t + f + sum_{t' > t} (m_t' + log r_t'), restarting at each sequence's end.
    steps = (scaled.peaks[1:].double() + backward.norms.double().log()).masked_fill_(chain.ended[1:], 0)
    offset = torch.cat([steps.flip(0).cumsum(0).flip(0), torch.zeros_like(steps[:1])])
    log_beta = backward.messages.log().double().add_(offset).add_(scaled.final_peak.double())
    restarted = torch.cat([chain.ended[1:], torch.ones_like(chain.ended[:1])])       # (T, B, 1)
    log_beta = torch.where(restarted, chain.log_final.double(), log_beta)
    if backward.underflowed is not None:
        rows = backward.underflowed
        exact = chain.rows(rows)
        relative, offset = exact_backward(exact.log_trans, exact.emit, exact.ended, exact.log_final)
        log_beta[:, rows] = relative.double() + offset
    return log_beta.to(chain.dtype).transpose(0, 1)


def chain_log_partition(
    log_init: Tensor, log_trans: Tensor, log_emit: Tensor | EmissionTable, mask: Tensor | None = None,
    log_final: Tensor | None = None,
) -> Tensor:
    """log Z (B,) by the forward algorithm; differentiable in every score.

    Its backward pass is the backward algorithm: ``d log Z / d emit_t(k) = gamma_t(k)``,
    ``d log Z / d trans(i, j) = sum_t xi_t(i, j)``, and likewise for init and final (and for an
    emission table, ``gamma`` summed over the positions of each symbol).
    """
    mask = check_chain_mask(log_emit, mask)
    if isinstance(log_emit, EmissionTable):
        final = final_scores(log_final, log_emit.table)
        return _LogPartition.apply(log_init, log_trans, None, *log_emit, final, mask)
    return _LogPartition.apply(log_init, log_trans, log_emit, None, None, final_scores(log_final, log_emit), mask)


@torch.no_grad()
def chain_posteriors(
    log_init: Tensor, log_trans: Tensor, log_emit: Tensor | EmissionTable, mask: Tensor | None = None,
    log_final: Tensor | None = None,
) -> ChainPosteriors:
    """log Z, ``gamma`` and expected transition counts by forward-backward (see ``ChainPosteriors``)."""
    chain = Chain.of(log_init, log_trans, log_emit, check_chain_mask(log_emit, mask), log_final)
    scaled = scale_chain(chain)
    forward = forward_pass(chain, scaled)
    log_z, repaired = log_partition(chain, scaled, forward)
    backward = backward_pass(chain, scaled, overwrite=True)
    unary, pairwise = posteriors(chain, scaled, forward.messages, forward.norms, backward, log_z,
                                 either(repaired, backward.underflowed))
    return ChainPosteriors(log_z.to(chain.dtype), unary.transpose(0, 1), pairwise)


@torch.no_grad()
def chain_viterbi(
    log_init: Tensor, log_trans: Tensor, log_emit: Tensor | EmissionTable, mask: Tensor | None = None,
    log_final: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The highest-scoring path of each sequence (Viterbi 1967; Rabiner 1989, eqs. 30-35), by
    max-product and back-tracking (``seqlab.ops.chain_viterbi``).

    Returns:
        (B, T) int64 paths (0 at padding) and (B,) their scores.
    """
    log_emit = gathered(log_emit)
    return max_product_path(log_init, log_trans, log_emit, check_chain_mask(log_emit, mask),
                            final_scores(log_final, log_emit))


def chain_path_score(
    log_init: Tensor, log_trans: Tensor, log_emit: Tensor | EmissionTable, path: Tensor, mask: Tensor | None = None,
    log_final: Tensor | None = None,
) -> Tensor:
    """``score(y)`` (B,) of given paths ``path`` (B, T) int64 (any value in range at padding)."""
    log_emit = gathered(log_emit)
    mask = check_chain_mask(log_emit, mask)
    batch, length, n_states = log_emit.shape
    path = path.masked_fill(~mask, 0)
    emit = log_emit.gather(-1, path[..., None])[..., 0].masked_fill(~mask, 0).sum(1)
    init = log_init.expand(batch, n_states).gather(1, path[:, :1])[:, 0]
    last = path.gather(1, mask.sum(1, keepdim=True) - 1)                    # (B, 1)
    final = final_scores(log_final, log_emit).expand(batch, n_states).gather(1, last)[:, 0]
    if log_trans.dim() == 2:
        trans = log_trans[path[:, :-1], path[:, 1:]]                        # (B, T - 1)
    else:
        trans = log_trans[torch.arange(batch, device=path.device)[:, None], path[:, :-1], path[:, 1:]]
    return init + emit + trans.masked_fill(~mask[:, 1:], 0).sum(1) + final


def __getattr__(name: str):
    # The brute-force references live in ``chain_reference``, which imports this module; they
    # stay importable from here, loaded on first use.
    if name in _REFERENCES:
        from seqlab.ops import chain_reference
        return getattr(chain_reference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _LogPartition(torch.autograd.Function):
    """log Z by the forward recursion; gradients are posterior marginals from the backward one."""

    @staticmethod
    def forward(ctx, log_init, log_trans, log_emit, table, symbols, log_final, mask):
        # Emissions come either as scores ``log_emit`` or as a ``table`` and ``symbols``.
        emissions = EmissionTable(table, symbols) if log_emit is None else log_emit
        chain = Chain.of(log_init, log_trans, emissions, mask, log_final)
        scaled = scale_chain(chain)
        forward = forward_pass(chain, scaled)
        log_z, repaired = log_partition(chain, scaled, forward)
        emit = None if isinstance(chain.emit, EmissionTable) else chain.emit
        ctx.save_for_backward(log_init, log_trans, emit, chain.ended, log_final, table, symbols, *scaled,
                              forward.messages, forward.norms, repaired)
        return log_z.to(chain.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_log_z):
        log_init, log_trans, emit, ended, log_final, table, symbols, *rest = ctx.saved_tensors
        emissions = EmissionTable(table, symbols) if emit is None else emit
        chain = Chain(log_init, log_trans, emissions, ended, log_final)
        scaled, (messages, norms, repaired) = Scaled(*rest[:6]), rest[6:]
        backward = backward_pass(chain, scaled)
        unary, pairwise = posteriors(chain, scaled, messages, norms, backward, None,
                                     either(repaired, backward.underflowed), weight=grad_log_z)
        grad_init = _sum_to(unary[0], log_init.shape)                       # unary (T, B, K), weighted
        grad_final = _sum_to(at_last(unary, ended), log_final.shape)
        if table is None:
            return grad_init, pairwise, unary.transpose(0, 1), None, None, grad_final, None
        # d log Z / d table[v] = gamma summed over the positions that hold symbol v.
        grad_table = torch.zeros_like(table).index_add_(0, symbols.T.flatten(), unary.flatten(0, 1))
        return grad_init, pairwise, None, grad_table, None, grad_final, None


def _sum_to(gradient: Tensor, shape: torch.Size) -> Tensor:
    """Sum a (B, ...) gradient over the batch when the input was shared by every sequence."""
    return gradient.sum(0) if len(shape) < gradient.dim() else gradient
