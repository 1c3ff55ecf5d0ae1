"""The linear chain by brute force: every one of the K^L paths scored from the definition.

The specification that ``seqlab.ops.chain`` is tested against; exponential in the length, so
for tiny inputs only. A path ``y = (y_0, ..., y_{L-1})`` of a sequence of length L scores

    score(y) = init[y_0] + sum_t emit_t[y_t] + sum_{t>0} trans[y_{t-1}, y_t] + final[y_{L-1}]

and ``log Z = logsumexp_y score(y)``, ``p(y) = exp(score(y) - log Z)``. Arguments are those of
the fast functions: ``log_init`` (K,) or (B, K); ``log_trans`` (K, K) or (B, K, K);
``log_emit`` (B, T, K); ``mask`` (B, T) or None; ``log_final`` (K,), (B, K) or None (zero).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from seqlab.ops.chain import ChainPosteriors, check_chain_mask


def _enumerate(log_init: Tensor, log_trans: Tensor, log_emit: Tensor, mask: Tensor, log_final: Tensor | None,
               sequence: int) -> tuple[Tensor, Tensor]:
    """All K^L paths (P, L) of one sequence and their scores (P,), straight from the definition."""
    length, n_states = int(mask[sequence].sum()), log_emit.shape[-1]
    paths = torch.tensor(list(itertools.product(range(n_states), repeat=length)), device=log_emit.device)
    init = log_init if log_init.dim() == 1 else log_init[sequence]
    trans = log_trans if log_trans.dim() == 2 else log_trans[sequence]
    final = log_emit.new_zeros(n_states) if log_final is None else log_final
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
