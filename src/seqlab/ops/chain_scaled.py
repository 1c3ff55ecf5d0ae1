"""The linear chain's fast path: the scaled forward-backward over masked batches.

The recursions of ``seqlab.ops.chain`` (Rabiner 1989, eqs. 19-37), run in the probability
domain with a normaliser per step, the scaled forward-backward (Rabiner 1989, sec. V.A), every
exponential shifted by its best so that free scores neither overflow nor lose their best terms:

    E = exp(trans - c),  c_j = max_i trans(i, j)               every column's best entry is 1
    P_t = exp(emit_t + c - m_t),  m_t = max_j (emit_t(j) + c_j)   every row's best entry is 1
                                                               (P_0 = exp(init + emit_0 - m_0))
    forward:  a_0 = P_0 / s_0;  u_t = a_{t-1} E,  a_t = u_t P_t / s_t       (s_t: the row's sum)
    backward: b_{L-1} = exp(final - f);  v_t = P_t b_t / r_t,  b_{t-1} = E v_t   (r_t: the row's sum)

(``f = max final``; products of rows are elementwise). Then ``log alpha_t = log a_t + sum_{t' <= t}
(m_t' + log s_t')``, with the sums over time in float64 so T = 100,000 costs no precision in
float32, ``log Z = log sum_j alpha_{L-1}(j) exp(final_j)``, and

    gamma_t = a_t b_t / z_t,   z_t = sum_j a_t(j) b_t(j)
    xi_t(i, j) = a_{t-1}(i) E_ij v_t(j) r_t / (s_t z_t)

each normalised at its own position, so the rounding that the recursions pile up over time
cancels; ``sum_t xi_t`` is one matrix product over all positions. A step costs one (B, K) by
(K, K) product, a row sum (a product with ones) and two elementwise passes; no logarithm or
exponential runs inside the loop.

Every row entering a product sums to one, so a sum can lose its dominant terms to underflow only
within one step: when a state's every allowed predecessor (successor, going backward) lies more
than ~55 nats (float32) below the best one, which takes hard constraints or near-zero
transitions meeting confident emissions. Such rows are found after the pass and recomputed by
the textbook recursion (``seqlab.ops.chain_exact``), slower but exact at any range of scores.

Emissions over a finite alphabet may come as an ``EmissionTable``: ``P`` and ``m`` are then
computed once per symbol and gathered.

Everything here is time-major, (T, B, K), so that each step reads and writes contiguous rows;
``ended`` (T, B, 1) is true at padding. The public functions are in ``seqlab.ops.chain``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from seqlab.ops.chain_exact import (at_last, exact_log_partition, exact_posteriors, underflow_threshold,
                                    underflowed_rows)


class EmissionTable(NamedTuple):
    """Emission scores of observations from a finite alphabet: ``log_emit[b, t] = table[symbols[b, t]]``.

    Every chain function takes it in place of ``log_emit`` (B, T, K). The forward-backward
    (``chain_log_partition``, ``chain_posteriors``) then exponentiates the V rows of the table
    instead of all B T positions, and ``chain_log_partition`` is differentiable in the table.

    Attributes:
        table: (V, K) score of each symbol in each state.
        symbols: (B, T) int64 symbols in [0, V), padding included.
    """

    table: Tensor
    symbols: Tensor

    def scores(self) -> Tensor:
        """(B, T, K) ``table[symbols]``, stored time-major (the engine's layout, so it is not copied)."""
        flat = self.table.contiguous().index_select(0, self.symbols.T.flatten())   # (T B, K); index_select:
        return flat.view(*self.symbols.T.shape, -1).transpose(0, 1)               # faster than indexing


class Chain(NamedTuple):
    """A batch's scores, time-major."""

    log_init: Tensor            # (K,) or (B, K)
    log_trans: Tensor           # (K, K) or (B, K, K)
    emit: Tensor | EmissionTable  # (T, B, K), zero at padding; or a table, for shared transitions
    ended: Tensor               # (T, B, 1), true at padding
    log_final: Tensor           # (K,) or (B, K)

    @staticmethod
    def of(log_init: Tensor, log_trans: Tensor, log_emit: Tensor | EmissionTable, mask: Tensor,
           log_final: Tensor | None) -> Chain:
        if isinstance(log_emit, EmissionTable) and log_trans.dim() == 2:
            ended = ~mask.T[..., None]
            return Chain(log_init, log_trans, log_emit, ended, final_scores(log_final, log_emit.table))
        emit, ended = _time_major(gathered(log_emit), mask)
        return Chain(log_init, log_trans, emit, ended, final_scores(log_final, emit))

    @property
    def dtype(self) -> torch.dtype:
        return (self.emit.table if isinstance(self.emit, EmissionTable) else self.emit).dtype

    def emissions(self) -> Tensor:
        """(T, B, K) emission scores, zero at padding (gathered, when the chain holds a table)."""
        if not isinstance(self.emit, EmissionTable):
            return self.emit
        emit = self.emit.scores().transpose(0, 1)
        return emit.masked_fill_(self.ended, 0) if bool(self.ended.any()) else emit

    def rows(self, rows: Tensor) -> Chain:
        """The selected sequences (B',), with emission scores and ``log_final`` as (B', K)."""
        batch, n_states = self.ended.shape[1], self.log_trans.shape[-1]
        return Chain(_rows(self.log_init, rows, 1), _rows(self.log_trans, rows, 2), self.emissions()[:, rows],
                     self.ended[:, rows], self.log_final.expand(batch, n_states)[rows])


class Scaled(NamedTuple):
    """The chain's scores as exponentials, each shifted by its best (see the module docstring)."""

    exp_trans: Tensor           # (K, K) or (B, K, K)  E = exp(trans - c)
    column_shift: Tensor        # (K,) or (B, K)       c, the best score into each state (0 if none)
    factors: Tensor             # (T, B, K)            P_t, with init in P_0
    peaks: Tensor               # (T, B, 1)            m_t
    final_factors: Tensor       # (K,) or (B, K)       exp(final - f)
    final_peak: Tensor          # (1,) or (B, 1)       f


class ForwardPass(NamedTuple):
    """What the forward pass leaves for log Z and the posteriors."""

    messages: Tensor            # (T, B, K) a_t, rows summing to one
    norms: Tensor               # (T, B, 1) s_t
    offset: Tensor              # (T, B, 1) float64: log alpha_t = log a_t + offset_t
    underflowed: Tensor | None  # (B,) rows to recompute exactly, or None


class BackwardPass(NamedTuple):
    """What the backward pass leaves for the posteriors."""

    messages: Tensor            # (T, B, K) b_t; exp(final - f) from each sequence's last position on
    ahead: Tensor               # (T - 1, B, K) v_{t+1}, rows summing to one; zero at padding
    norms: Tensor               # (T - 1, B, 1) r_{t+1}
    underflowed: Tensor | None  # (B,) rows to recompute exactly, or None


def scale_chain(chain: Chain) -> Scaled:
    """``E``, ``P_t``, ``exp(final - f)`` and their shifts (see the module docstring)."""
    floor = torch.finfo(chain.dtype).min                                    # an all -inf row gives zeros, not NaN
    exp_trans, column_shift = column_scaled(chain.log_trans)
    column_shift = column_shift.squeeze(-2)
    if isinstance(chain.emit, EmissionTable):
        factors, peaks = _table_factors(chain, column_shift, floor)
    else:
        scores = chain.emit + column_shift                                  # (T, B, K)
        torch.add(chain.log_init, chain.emit[0], out=scores[0])
        peaks = scores.amax(-1, keepdim=True).clamp_min_(floor)
        factors = scores.sub_(peaks).exp_()
    final_peak = chain.log_final.amax(-1, keepdim=True).clamp_min(floor)
    return Scaled(exp_trans, column_shift, factors, peaks, torch.exp(chain.log_final - final_peak), final_peak)


def _table_factors(chain: Chain, column_shift: Tensor, floor: float) -> tuple[Tensor, Tensor]:
    """``P_t`` (T, B, K) and ``m_t`` (T, B, 1) of a chain that holds an emission table, computed
    for each of its V symbols and gathered; at t = 0 (init) and at padding (zero emissions)
    computed for the positions themselves."""
    table, symbols = chain.emit
    shifted = table + column_shift                                          # (V, K)
    symbol_peaks = shifted.amax(-1, keepdim=True).clamp_min_(floor)         # (V, 1)
    symbol_factors = shifted.sub_(symbol_peaks).exp_()
    flat = symbols.T.flatten()                                              # time-major positions
    factors = symbol_factors.index_select(0, flat).view(*symbols.T.shape, -1)      # (T, B, K)
    peaks = symbol_peaks.index_select(0, flat).view(*symbols.T.shape, 1)           # (T, B, 1)
    first = chain.log_init + table.index_select(0, symbols[:, 0])           # (B, K)
    torch.amax(first, -1, keepdim=True, out=peaks[0]).clamp_min_(floor)
    torch.exp(first - peaks[0], out=factors[0])
    if bool(chain.ended.any()):
        padding_peak = column_shift.amax(-1, keepdim=True).clamp_min(floor)
        torch.where(chain.ended, torch.exp(column_shift - padding_peak), factors, out=factors)
        torch.where(chain.ended, padding_peak, peaks, out=peaks)
    return factors, peaks


def forward_pass(chain: Chain, scaled: Scaled) -> ForwardPass:
    """The forward pass, ``a_t = (a_{t-1} E) P_t / s_t``, and the rows whose sums underflowed."""
    factors = scaled.factors
    matmul, row_sum = _row_matmul(scaled.exp_trans), _row_sum(factors)
    # Steps write into preallocated buffers, through views made once (unbind).
    messages, norms = torch.empty_like(factors), factors.new_empty(*factors.shape[:2], 1)
    message_rows, norm_rows, factor_rows = (x.unbind(0) for x in (messages, norms, factors))
    torch.div(factor_rows[0], row_sum(factor_rows[0], norm_rows[0]), out=message_rows[0])
    for t in range(1, len(factor_rows)):
        matmul(message_rows[t - 1], message_rows[t]).mul_(factor_rows[t])    # u_t P_t
        message_rows[t].div_(row_sum(message_rows[t], norm_rows[t]))
    offset = (scaled.peaks.double() + norms.double().log()).cumsum(0)
    threshold = underflow_threshold(factors.dtype)
    rows = _small_rows(norms, chain.ended)
    # u_t >= u_t P_t = a_t s_t, so the inflows need a look only when that bound is small.
    if len(messages) > 1 and not float(messages[1:].amin()) * float(norms[1:].amin()) >= threshold:
        possible = torch.isfinite(chain.emissions()[:-1])                   # states that may carry weight at t - 1
        possible[0] &= torch.isfinite(chain.log_init)
        small = inflow(messages, scaled.exp_trans) < threshold
        rows = either(rows, underflowed_rows(small, possible, torch.isfinite(chain.log_trans), chain.ended[1:]))
    return ForwardPass(messages, norms, offset, rows)


def backward_pass(chain: Chain, scaled: Scaled, overwrite: bool = False) -> BackwardPass:
    """The backward pass, ``v_{t+1} = P_{t+1} b_{t+1} / r_{t+1}``, ``b_t = E v_{t+1}``, and the rows
    whose sums underflowed. With ``overwrite``, ``ahead`` is written over ``scaled.factors[1:]``,
    for callers that read the factors no more."""
    factors = scaled.factors
    length, batch, n_states = factors.shape
    matmul, row_sum = _row_matmul(scaled.exp_trans.transpose(-1, -2).contiguous()), _row_sum(factors)   # b = v E^T
    final = scaled.final_factors.expand(batch, n_states)
    messages, ahead = torch.empty_like(factors), factors[1:] if overwrite else torch.empty_like(factors[1:])
    norms = factors.new_empty(length - 1, batch, 1)
    # Past its end a sequence restarts at final: in the steps where any sequence may have ended,
    # its ``ahead`` row is zeroed (keep) and the product adds final to it (restart).
    running = int((~chain.ended[:, :, 0]).sum(0).min())                    # no sequence ends before this
    keep = (~chain.ended[running:]).to(factors.dtype)                       # (T - running, B, 1)
    restart = final * chain.ended[running:]                                 # (T - running, B, K)
    message_rows, ahead_rows, norm_rows, factor_rows = (x.unbind(0) for x in (messages, ahead, norms, factors))
    keep_rows, restart_rows = keep.unbind(0), restart.unbind(0)
    message_rows[-1].copy_(final)
    for t in range(length - 2, -1, -1):
        step = torch.mul(factor_rows[t + 1], message_rows[t + 1], out=ahead_rows[t])
        row_sum(step, norm_rows[t])
        if t + 1 >= running:
            matmul(step.mul_(keep_rows[t + 1 - running] / norm_rows[t]), message_rows[t],
                   restart_rows[t + 1 - running])
        else:
            matmul(step.div_(norm_rows[t]), message_rows[t])
    threshold = underflow_threshold(factors.dtype)
    rows = _small_rows(norms, chain.ended[1:])
    if length > 1 and not float(messages[:-1].amin()) >= threshold:
        possible = torch.isfinite(chain.emissions()[1:])                    # states that may carry weight at t + 1
        allowed_back = torch.isfinite(chain.log_trans).transpose(-1, -2)   # [j, i]: i -> j allowed
        rows = either(rows, underflowed_rows(messages[:-1] < threshold, possible, allowed_back, chain.ended[1:]))
    return BackwardPass(messages, ahead, norms, rows)


def inflow(messages: Tensor, exp_trans: Tensor) -> Tensor:
    """(T - 1, B, K) ``u_t = a_{t-1} E`` of forward messages (T, B, K), all at once."""
    if exp_trans.dim() == 2:
        return messages[:-1] @ exp_trans
    return torch.einsum("tbi,bij->tbj", messages[:-1], exp_trans)


def log_partition(chain: Chain, scaled: Scaled, forward: ForwardPass) -> tuple[Tensor, Tensor | None]:
    """(B,) float64 log Z from the forward messages at each sequence's last position, and the
    rows recomputed exactly (None if none)."""
    total = (at_last(forward.messages, chain.ended) * scaled.final_factors).sum(-1)   # (B,)
    log_z = (at_last(forward.offset, chain.ended)[:, 0] + scaled.final_peak.double().squeeze(-1)
             + total.double().log())
    small = ~(total >= underflow_threshold(total.dtype))                   # NaN included
    rows = either(forward.underflowed, small if bool(small.any()) else None)
    if rows is not None:
        log_z[rows] = exact_log_partition(*chain.rows(rows))
    return log_z, rows


def posteriors(
    chain: Chain, scaled: Scaled, messages: Tensor, norms: Tensor, backward: BackwardPass, log_z: Tensor | None,
    repaired: Tensor | None, weight: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``gamma`` (T, B, K) and ``sum_t xi_t`` from forward messages and normalisers (T, B, K),
    (T, B, 1) and the backward pass, every term multiplied by ``weight`` (B,) of its sequence when
    given. Rows that underflowed (``repaired`` and any found here) are recomputed exactly, and
    their ``log_z`` with them when given. Overwrites the backward pass's buffers."""
    length, batch, n_states = messages.shape
    unary = backward.messages.mul_(messages)
    totals = _row_sum(unary)(unary.view(-1, n_states)).view(length, batch, 1)   # z_t
    unary.div_(totals)
    if bool(chain.ended.any()):
        unary.masked_fill_(chain.ended, 0)
    repaired = either(repaired, _small_rows(totals, chain.ended))
    # xi_t(i, j) = a_{t-1}(i) E_ij v_t(j) r_t / (s_t z_t): v is zero at padding.
    scale = backward.norms / norms[1:] / totals[1:]                         # (T - 1, B, 1)
    if weight is not None:
        unary.mul_(weight[:, None])
        scale.mul_(weight[:, None])
    ahead = backward.ahead.mul_(scale)
    if repaired is not None:                # their terms may be NaN (0 / 0): leave them out
        ahead[:, repaired] = 0
        messages = messages.clone()
        messages[:, repaired] = 0
    if chain.log_trans.dim() == 2:
        pairwise = messages[:-1].flatten(0, 1).T.matmul(ahead.flatten(0, 1)) * scaled.exp_trans
    else:
        pairwise = torch.einsum("tbi,tbj->bij", messages[:-1], ahead) * scaled.exp_trans
    if not bool(torch.isfinite(pairwise).all()):
        # Tiny normalisers at many positions overflowed the sum: redo every row term by term.
        repaired = torch.ones(batch, dtype=torch.bool, device=messages.device)
        pairwise = torch.zeros_like(pairwise)
    if repaired is not None:
        exact_log_z, unary[:, repaired], exact_pairwise = exact_posteriors(
            *chain.rows(repaired), None if weight is None else weight[repaired])
        if log_z is not None:
            log_z[repaired] = exact_log_z
        if chain.log_trans.dim() == 2:
            pairwise = pairwise + exact_pairwise
        else:
            pairwise[repaired] = exact_pairwise
    return unary, pairwise


def _row_matmul(matrix: Tensor) -> Callable[..., Tensor]:
    """``(rows (B, K), out (B, N)[, bias (B, N)]) -> out = bias + rows @ matrix``, for a shared
    (K, N) or per-sequence (B, K, N) matrix."""
    if matrix.dim() == 2:
        def product(rows: Tensor, out: Tensor, bias: Tensor | None = None) -> Tensor:
            return torch.mm(rows, matrix, out=out) if bias is None else torch.addmm(bias, rows, matrix, out=out)
    else:
        def product(rows: Tensor, out: Tensor, bias: Tensor | None = None) -> Tensor:
            rows, out = rows.unsqueeze(1), out.unsqueeze(1)
            if bias is None:
                return torch.bmm(rows, matrix, out=out).squeeze(1)
            return torch.baddbmm(bias.unsqueeze(1), rows, matrix, out=out).squeeze(1)
    return product


def _row_sum(like: Tensor) -> Callable[..., Tensor]:
    """``(rows (N, K)[, out (N, 1)]) -> the sum of each row``, as a product with a column of ones:
    much cheaper than a reduction over a short last dim. An all-zero row (no allowed path, or
    underflow) divided by its sum turns NaN; the checks after each pass send it to the exact path."""
    ones = like.new_ones(like.shape[-1], 1)
    return lambda rows, out=None: torch.mm(rows, ones, out=out)


def _small_rows(sums: Tensor, ended: Tensor) -> Tensor | None:
    """(B,) sequences whose normalisers ``sums`` (T', B, 1) fall below the underflow threshold,
    or are NaN, at a real position (``ended`` (T', B, 1) false); None if none."""
    threshold = underflow_threshold(sums.dtype)
    if sums.numel() == 0 or float(sums.amin()) >= threshold:               # one cheap pass first
        return None
    rows = (~(sums >= threshold) & ~ended).any(-1).any(0)
    return rows if bool(rows.any()) else None


def _rows(scores: Tensor, rows: Tensor, shared_dim: int) -> Tensor:
    """``scores`` for the selected sequences, when they are per sequence (more than ``shared_dim`` dims)."""
    return scores[rows] if scores.dim() > shared_dim else scores


def either(first: Tensor | None, second: Tensor | None) -> Tensor | None:
    """The union of two optional (B,) row masks."""
    if first is None or second is None:
        return second if first is None else first
    return first | second


def column_scaled(log_trans: Tensor) -> tuple[Tensor, Tensor]:
    """``exp(log_trans - c)`` and ``c`` (..., 1, K), the best score into each state (0 if none)."""
    shift = log_trans.amax(-2, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    return torch.exp(log_trans - shift), shift


def gathered(log_emit: Tensor | EmissionTable) -> Tensor:
    """(B, T, K) emission scores, gathered when given as a table."""
    return log_emit.scores() if isinstance(log_emit, EmissionTable) else log_emit


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


def final_scores(log_final: Tensor | None, log_emit: Tensor) -> Tensor:
    """``log_final``, or zero scores (K,) like ``log_emit`` (..., K) when it is None."""
    if log_final is None:
        return log_emit.new_zeros(log_emit.shape[-1])
    return log_final
