"""Context windows over a stream of token ids, for language modelling.

A window of length T pairs inputs ``ids[i : i+T]`` with targets ``ids[i+1 : i+T+1]``: every
input position is trained to predict the token after it.
"""

from __future__ import annotations

import bisect
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


def sentence_windows(
    ids: Tensor, start_id: int, batch_size: int, context: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Windows that start at sentence starts, over a stream ``<s> .. </s> <s> .. </s>``, in batches.

    Each window holds as many whole sentences as its T + 1 tokens can, and the next starts at
    the following ``<s>``: the only token not a target of any window is a ``<s>``, which is
    context only, so every other token is a target exactly once and is predicted from its whole
    sentence. A sentence longer than T + 1 tokens is read in windows of T + 1 tokens, each after
    the first starting ``T // 2`` tokens before its first new target: those targets, read
    already, are masked (set to ``start_id``), and every target keeps at least ``T // 2`` tokens
    of its sentence before it. Rows are padded on the right, with ``start_id`` (a causal model's
    earlier outputs do not see them).

    Args:
        ids: (N,) token ids; ``ids[0]`` is ``<s>`` (id ``start_id``).
    Yields:
        inputs (B, T'), targets (B, T') with ``start_id`` where nothing is to be scored, and
        target_index (B, T'): the position in ``ids`` of each target (0, a ``<s>``, for padding).
    """
    spans = _sentence_spans(ids, start_id, context)
    for first in range(0, len(spans), batch_size):
        rows = spans[first:first + batch_size]
        width = max(stop - start for start, stop, _ in rows) - 1
        inputs = torch.full((len(rows), width), start_id, dtype=ids.dtype)
        targets = torch.full_like(inputs, start_id)
        target_index = torch.zeros_like(inputs)
        for row, (start, stop, scored) in enumerate(rows):
            length = stop - start - 1
            inputs[row, :length] = ids[start:stop - 1]
            targets[row, scored - start - 1:length] = ids[scored:stop]
            target_index[row, :length] = torch.arange(start + 1, stop)
        yield inputs, targets, target_index


def _sentence_spans(ids: Tensor, start_id: int, context: int) -> list[tuple[int, int, int]]:
    """(start, stop, first scored target) of each window of ``sentence_windows``."""
    starts = (ids == start_id).nonzero().squeeze(1).tolist()
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    starts.append(len(ids))
    spans, sentence = [], 0
    while sentence < len(starts) - 1:
        start = starts[sentence]
        last = bisect.bisect_right(starts, start + context + 1) - 1     # the furthest start that fits
        if last > sentence:
            spans.append((start, starts[last], start + 1))
            sentence = last
            continue
        end = starts[sentence + 1]                                       # a sentence longer than a window
        stop = start + context + 1
        spans.append((start, stop, start + 1))
        while stop < end:
            scored = stop
            start = scored - 1 - context // 2
            stop = min(start + context + 1, end)
            spans.append((start, stop, scored))
        sentence += 1
    return [span for span in spans if span[1] - span[0] >= 2]
