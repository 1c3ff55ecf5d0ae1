"""The linear chain's best path: max-product over masked batches, then back-tracking.

Viterbi (1967; Rabiner 1989, eqs. 30-35) on the chain of ``seqlab.ops.chain``:

    delta_0 = init + emit_0,   delta_t(j) = emit_t(j) + max_i (delta_{t-1}(i) + trans(i, j))
    best score = max_j (delta_{L-1}(j) + final(j)),   y_{L-1} = its argmax
    y_{t-1} = argmax_i (delta_{t-1}(i) + trans(i, y_t))

The forward recursion keeps only the maxima (a max over a (K, K, B) tensor's outer dim, which
is cheap); the argmax is taken only along the best path, one (B, K) row per step, while tracing
it back. Every ``_SHIFT_EVERY`` steps the scores' best is taken out and summed in float64, so
float32 resolves them at any T.
"""

from __future__ import annotations

import torch
from torch import Tensor

_SHIFT_EVERY = 16


def max_product_path(log_init: Tensor, log_trans: Tensor, log_emit: Tensor, mask: Tensor,
                     log_final: Tensor) -> tuple[Tensor, Tensor]:
    """The best path (B, T) int64 (0 at padding) and its score (B,); plain tensors, no gradients.

    Args:
        log_init: (K,) or (B, K) start scores.
        log_trans: (K, K) or (B, K, K) transition scores, ``[i, j]`` for i -> j.
        log_emit: (B, T, K) per-position scores; padding may hold anything.
        mask: (B, T) bool, checked: left-aligned, non-empty sequences.
        log_final: (K,) or (B, K) end scores.
    """
    batch, length, n_states = log_emit.shape
    log_init, log_trans, log_emit, log_final = (x.detach() for x in (log_init, log_trans, log_emit, log_final))
    lengths = mask.sum(1)                                                   # (B,)
    # Scores are kept (K, B), so that the max over predecessors of (previous, next, B) runs over
    # the outer dim. Padding needs no zeroing: it only ever feeds later padding.
    emit_rows = log_emit.permute(1, 2, 0).contiguous().unbind(0)            # T x (K, B)
    by_previous = log_trans[..., None] if log_trans.dim() == 2 else log_trans.permute(1, 2, 0)
    peaks = log_emit.new_zeros(length, 1, batch)                            # shifts taken out, (T, 1, B)
    floor = torch.finfo(log_emit.dtype).min
    score = (log_init + log_emit[:, 0]).T                                   # (K, B)
    scores = [score]
    for t in range(1, length):
        score = (score.unsqueeze(1) + by_previous).amax(dim=0).add_(emit_rows[t])
        if t % _SHIFT_EVERY == 0:
            score.sub_(torch.amax(score, 0, keepdim=True, out=peaks[t]).clamp_min_(floor))
        scores.append(score)
    # Right-aligned, every sequence ends at T - 1, so the trace back needs no case for sequences
    # that end early: aligned[t, b] = scores[t - (T - L_b), b] (the first row before that).
    positions = torch.arange(length, device=log_emit.device)[:, None]     # (T, 1)
    shift = length - lengths                                                # (B,)
    source = (positions - shift).clamp_min_(0)[..., None].expand(-1, -1, n_states)
    aligned = torch.stack(scores).transpose(1, 2).gather(0, source)         # (T, B, K)
    best_score, state = (aligned[-1] + log_final).max(dim=-1)
    offsets = peaks[:, 0].double().cumsum(0).gather(0, (lengths - 1)[None])[0]   # (B,)
    best_score = (best_score.double() + offsets).to(log_emit.dtype)
    into = log_trans.transpose(-1, -2).contiguous()                         # [..., j, i] = T_ij
    aligned_rows = aligned.unbind(0)
    path = [state]
    for t in range(length - 1, 0, -1):
        # into_state[b, i] = T[i, state_b]: the score of each predecessor of the chosen state.
        if into.dim() == 2:
            into_state = into.index_select(0, state)
        else:
            into_state = into.gather(1, state[:, None, None].expand(-1, 1, n_states))[:, 0]
        state = into_state.add_(aligned_rows[t - 1]).argmax(dim=-1)
        path.append(state)
    path = torch.stack(path[::-1]).gather(0, (positions + shift).clamp_max_(length - 1))   # (T, B)
    return path.T.masked_fill(~mask, 0), best_score
