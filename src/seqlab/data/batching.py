"""Context windows over a stream of token ids, for language modelling.

A window of length T pairs inputs ``ids[i : i+T]`` with targets ``ids[i+1 : i+T+1]``: every
input position is trained to predict the token after it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def random_windows(
    ids: Tensor, batch_size: int, context: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``batch_size`` windows at uniformly random offsets.

    Args:
        ids: (N,) token ids, N > context.
    Returns:
        inputs and targets, (B, T) each.
    """
    starts = torch.randint(0, len(ids) - context, (batch_size,), generator=generator)
    offsets = starts[:, None] + torch.arange(context + 1)                   # (B, T + 1)
    windows = ids[offsets]
    return windows[:, :-1], windows[:, 1:]


def sequential_windows(
    ids: Tensor, batch_size: int, context: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Non-overlapping windows covering the stream once, in order, in batches.

    Every token but the first is a target exactly once. The last window may be shorter; it
    comes alone in the last batch.

    Yields:
        inputs (B, T), targets (B, T), and target_index (B, T): the position in ``ids`` of each
        target, for per-token bookkeeping such as character lengths.
    """
    n_full = (len(ids) - 1) // context
    starts = torch.arange(n_full) * context
    for first in range(0, n_full, batch_size):
        batch_starts = starts[first:first + batch_size]
        offsets = batch_starts[:, None] + torch.arange(context + 1)         # (B, T + 1)
        yield ids[offsets[:, :-1]], ids[offsets[:, 1:]], offsets[:, 1:]
    tail_start = n_full * context
    if tail_start < len(ids) - 1:
        offsets = torch.arange(tail_start, len(ids))[None]                  # (1, rest + 1)
        yield ids[offsets[:, :-1]], ids[offsets[:, 1:]], offsets[:, 1:]
