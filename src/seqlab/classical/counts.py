"""N-gram counts: vectorised counting, storage and lookup as sorted int64 keys, and the counts of
counts from which discounting estimators take their discounts.

Token ids are ``0 .. n_ids - 1``. An n-gram ``(w_1, ..., w_k)`` of order k >= 2 is the pair (its
prefix ``(w_1, ..., w_{k-1})``, its last id ``w_k``), packed into one int64

    key = index_{k-1}(w_1 .. w_{k-1}) * n_ids + w_k

where ``index_{k-1}`` is the prefix's position in the sorted keys of order k - 1; order 1 is dense
(the index of ``w`` is ``w``). This is the "context encoding" of Pauls and Klein (2011, "Faster and
smaller n-gram language models", sec. 4.1), the same sorted-array trie KenLM's ``trie`` uses.
Sorting an order's keys puts the continuations of each context in one contiguous run, so

- a lookup is one ``searchsorted`` per order, for a whole batch of n-grams at once;
- the continuations of context ``c`` are the keys in ``[c * n_ids, (c + 1) * n_ids)``;
- a key needs ``log2(N_{k-1} * n_ids) < 63`` bits, whatever the order (a 5-gram over a 10^5-word
  vocabulary packed id by id would need 85).

Counting reads a stream once per order: the index of the window of length k ending at position t
is found from the index of the window of length k - 1 ending at t - 1 and the id at t, and
``torch.unique`` over those keys gives the n-grams, their counts and (from the same positions)
their suffixes. No Python object per n-gram. Lookups go the same way, one batched binary search
per order; on the CPU large batches are searched in sorted order by numpy (see ``_numpy_search``).

A stream may mark sentence starts with ``start_id`` (``<s>``): a window holding it anywhere but
first crosses a sentence boundary and is not an n-gram, as in KenLM and SRILM.

The counts of counts ``n_r`` (how many n-grams were seen r times) give the discounts of
absolute discounting and (modified) Kneser-Ney, and Simple Good-Turing's adjusted counts ``r*``.

Shapes: N_k n-grams of order k, R rows looked up at once, L stream length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seqlab.errors import CheckpointError, DataError

ABSENT = -1                               # the index of an absent n-gram (and of padding)
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)      # KenLM's lmplz --discount_fallback defaults
SORT_QUERIES_ABOVE = 2048                 # CPU batches this large are searched in sorted order


class NGramTable(nn.Module):
    """The n-grams of one order: sorted ``keys`` (N,) int64 and named per-n-gram values.

    All buffers have data-dependent sizes; loading a state dict resizes them to what it holds, so
    a model built from its config alone (empty tables) loads any fitted checkpoint.

    Args:
        values: the name and dtype of each per-n-gram buffer, e.g.
            ``{"log_prob": torch.float32, "log_backoff": torch.float32}``.
    """

    def __init__(self, values: dict[str, torch.dtype]):
        super().__init__()
        self.register_buffer("keys", torch.zeros(0, dtype=torch.long))
        for name, dtype in values.items():
            self.register_buffer(name, torch.zeros(0, dtype=dtype))
        self.value_names = tuple(values)
        self._unchecked_source: str | None = None     # the file whose keys are not yet checked sorted

    def __len__(self) -> int:
        return self.keys.numel()

    def fill(self, keys: Tensor, **values: Tensor) -> None:
        """Replace the table: ``keys`` (N,) sorted int64, and each named value (N,) or (0,)."""
        device = self.keys.device
        self.keys = keys.to(device=device, dtype=torch.long).contiguous()
        for name in self.value_names:
            dtype = getattr(self, name).dtype
            setattr(self, name, values[name].to(device=device, dtype=dtype).contiguous())
        self._unchecked_source = None

    def fill_from_file(self, source: str, keys: Tensor, **values: Tensor) -> None:
        """``fill`` with keys read from ``source`` (a file, named in the error) that are checked to
        be sorted at the first search rather than now: a reader that never searches them (a
        cached model's hash-table scorer) does not pay for reading them all."""
        self.fill(keys, **values)
        self._unchecked_source = source

    def sorted_keys(self) -> Tensor:
        """``keys``, which every search takes to be strictly increasing (checked once, if they
        were read from a file).

        Raises:
            CheckpointError: keys read from a file are not strictly increasing.
        """
        if self._unchecked_source is not None:
            keys = self.keys
            if len(keys) > 1 and not bool((keys[1:] > keys[:-1]).all()):
                raise CheckpointError(f"{self._unchecked_source} holds n-gram keys that are not strictly "
                                      "increasing: it is corrupt; rebuild it")
            self._unchecked_source = None
        return self.keys

    def find(self, queries: Tensor) -> Tensor:
        """The index of each key in ``queries`` (any shape), ``ABSENT`` where it is not stored
        (negative queries, which stand for absent prefixes, are never found)."""
        return _find_sorted(self.sorted_keys(), queries)

    def continuations(self, contexts: Tensor, n_ids: int) -> tuple[Tensor, Tensor]:
        """Where the continuations of each context lie: ``keys[start[r]:stop[r]]`` are the
        n-grams whose prefix is ``contexts[r]`` (an index into the order below; ``ABSENT`` gives
        an empty run).

        Args:
            contexts: (R,) int64.
        Returns:
            start, stop: (R,) int64.
        """
        low = contexts.clamp(min=0) * n_ids
        start = search_sorted(self.sorted_keys(), low)
        stop = search_sorted(self.keys, low + n_ids)
        return start, torch.where(contexts >= 0, stop, start)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        if prefix + "keys" in state_dict:                # keys of a checkpoint replace a file's
            self._unchecked_source = None
        # Buffers take the incoming sizes first; the default then copies the values in.
        for name, buffer in self._buffers.items():
            incoming = state_dict.get(prefix + name)
            if incoming is not None and buffer is not None and incoming.shape != buffer.shape:
                self._buffers[name] = buffer.new_empty(incoming.shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


@dataclass(frozen=True)
class CountedOrder:
    """The n-grams of one order as counted in a stream.

    Attributes:
        keys: (N,) int64, sorted.
        counts: (N,) int64 occurrences.
        suffix: (N,) int64 index of each n-gram's suffix ``(w_2 .. w_k)`` in the order below;
            None for order 1, whose suffix is the empty context. Counted tables are
            suffix-closed: the suffix of a counted n-gram occurs wherever it does.
    """

    keys: Tensor
    counts: Tensor
    suffix: Tensor | None


def count_ngrams(stream: Tensor, order: int, n_ids: int, start_id: int | None = None) -> list[CountedOrder]:
    """Every n-gram of orders 1 .. ``order`` in ``stream``, with its count and suffix.

    Args:
        stream: (L,) int64 ids in ``[0, n_ids)``.
        order: the highest order counted.
        n_ids: the number of distinct ids (the key radix).
        start_id: the sentence-start id; windows holding it after their first position are
            skipped. None: the stream is one unbroken sequence.
    Returns:
        per order k = 1 .. ``order``. Order 1 is dense: ``keys = arange(n_ids)``, zero counts
        included.
    """
    stream = stream.long()
    tables = [CountedOrder(torch.arange(n_ids), torch.bincount(stream, minlength=n_ids), None)]
    window = stream.clone()                      # (L,) index of the window of length k ending at t
    starts_sentence = stream == start_id if start_id is not None else torch.zeros_like(stream, dtype=torch.bool)
    for k in range(2, order + 1):
        _check_key_range(len(tables[-1].keys), n_ids, k)
        valid = ((window[:-1] >= 0) & ~starts_sentence[1:]).nonzero().squeeze(1) + 1   # window ends
        keys, inverse, counts = torch.unique(window[valid - 1] * n_ids + stream[valid], sorted=True,
                                             return_inverse=True, return_counts=True)
        suffix = torch.empty_like(keys)
        suffix[inverse] = window[valid]          # the window of length k - 1 ending at the same t
        window = torch.full_like(stream, ABSENT)
        window[valid] = inverse
        tables.append(CountedOrder(keys, counts, suffix))
    return tables


def prefixes_and_last(keys: Tensor, n_ids: int) -> tuple[Tensor, Tensor]:
    """Split keys of one order into the prefix index (into the order below) and the last id."""
    return torch.div(keys, n_ids, rounding_mode="floor"), keys % n_ids


def ngram_ids(keys_by_order: Sequence[Tensor], n_ids: int) -> list[Tensor]:
    """Every n-gram written out: per order k, (N_k, k) int64 ids."""
    ids = [keys_by_order[0][:, None] % n_ids]
    for keys in keys_by_order[1:]:
        prefix, last = prefixes_and_last(keys, n_ids)
        ids.append(torch.cat([ids[-1][prefix], last[:, None]], dim=1))
    return ids


def prefix_indices(keys_by_order: Sequence[Tensor], ids: Tensor, n_ids: int) -> Tensor:
    """The index of each row's prefix ``ids[:, :-1]`` among the stored n-grams of its order.

    Args:
        keys_by_order: the sorted keys of orders 1 .. k - 1.
        ids: (N, k) int64 n-grams of order k >= 2.
    Returns:
        (N,) int64 prefix indices, ``ABSENT`` where some prefix of the row is not stored.
    """
    index = ids[:, 0].clone()
    for j in range(1, ids.shape[1] - 1):
        queries = torch.where(index >= 0, index * n_ids + ids[:, j], ABSENT)
        index = _find_sorted(keys_by_order[j], queries)
    return index


def window_indices(tables: Sequence[NGramTable], tokens: Tensor, n_ids: int) -> list[Tensor]:
    """The stored index of every window of every order in a batch of token rows.

    ``out[k - 1][b, t]`` is the index in ``tables[k - 1]`` of ``tokens[b, t - k + 1 .. t]``, or
    ``ABSENT`` when that window runs off the row, holds padding (``ABSENT`` ids) or is not stored.

    Args:
        tables: orders 1 .. K; order 1 is dense over ``n_ids``.
        tokens: (B, L) int64 ids, ``ABSENT`` for padding.
    Returns:
        K tensors of shape (B, L), int64.
    """
    if not tables:
        return []
    current = torch.where((tokens >= 0) & (tokens < n_ids), tokens, ABSENT)
    windows = [current]
    for table in tables[1:]:
        previous = current[:, :-1]
        extends = (previous >= 0).nonzero(as_tuple=True)    # only windows whose prefix is stored
        found = torch.full_like(current, ABSENT)
        found[:, 1:][extends] = table.find(previous[extends] * n_ids + tokens[:, 1:][extends])
        current = found
        windows.append(current)
    return windows


def take(values: Tensor, index: Tensor, absent: float) -> Tensor:
    """``values[index]`` where ``index >= 0``, ``absent`` where it is ``ABSENT`` (``values`` may be
    empty, when no index is valid)."""
    if values.numel() == 0:
        return torch.full(index.shape, absent, dtype=values.dtype, device=index.device)
    return torch.where(index >= 0, values[index.clamp(min=0)], absent)


def scatter_continuations(rows: Tensor, contexts: Tensor, table: NGramTable, values: Tensor,
                          n_ids: int) -> None:
    """``rows[r, w] = values[e]`` for every stored n-gram ``e = (contexts[r], w)``, in place.

    Args:
        rows: (R, V) float; ids ``w >= V`` never end a stored n-gram.
        contexts: (R,) int64 indices into the order below ``table``, ``ABSENT`` for none.
        table: the order whose n-grams continue the contexts.
        values: (N,) one value per n-gram of ``table``.
    """
    start, stop = table.continuations(contexts, n_ids)
    lengths = stop - start                                                  # (R,)
    total = int(lengths.sum())
    if total == 0:
        return
    row = torch.repeat_interleave(torch.arange(len(contexts), device=rows.device), lengths,
                                  output_size=total)
    first_of_row = torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths, output_size=total)
    entry = torch.repeat_interleave(start, lengths, output_size=total) + (
        torch.arange(total, device=rows.device) - first_of_row)            # (total,)
    rows[row, table.keys[entry] % n_ids] = values[entry].to(rows.dtype)


def search_sorted(keys: Tensor, queries: Tensor) -> Tensor:
    """``torch.searchsorted(keys, queries)`` (left side), any shape of ``queries``; a large batch on
    the CPU goes through ``_numpy_search``."""
    if keys.device.type != "cpu" or queries.numel() < SORT_QUERIES_ABOVE:
        return torch.searchsorted(keys, queries)
    order, ordered, position = _numpy_search(keys, queries)
    unsorted = np.empty_like(position)
    unsorted[order] = position
    return torch.from_numpy(unsorted).view(queries.shape)


def _find_sorted(keys: Tensor, queries: Tensor) -> Tensor:
    """``NGramTable.find`` over a bare sorted key tensor."""
    if keys.numel() == 0:
        return torch.full_like(queries, ABSENT)
    if keys.device.type != "cpu" or queries.numel() < SORT_QUERIES_ABOVE:
        position = torch.searchsorted(keys, queries).clamp_(max=keys.numel() - 1)
        return torch.where((keys[position] == queries) & (queries >= 0), position, ABSENT)
    order, ordered, position = _numpy_search(keys, queries)
    np.minimum(position, keys.numel() - 1, out=position)
    hit = (keys.numpy()[position] == ordered) & (ordered >= 0)            # in sorted order too
    found = np.empty_like(position)
    found[order] = np.where(hit, position, ABSENT)
    return torch.from_numpy(found).view(queries.shape)


def _numpy_search(keys: Tensor, queries: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary search of a large CPU batch in sorted order: numpy starts each search from the
    previous answer when the queries are sorted, and neighbouring queries share cache lines,
    which makes it several times faster than ``torch.searchsorted`` on tables of 10^5 keys and
    more. Returns the sorting order, the sorted queries and their positions, all flat."""
    flat = queries.reshape(-1).numpy()
    order = np.argsort(flat)
    ordered = flat[order]
    return order, ordered, np.searchsorted(keys.numpy(), ordered)


def training_ids(task: Any, vocab_size: int, model_name: str) -> Tensor:
    """The training block of a language-modelling task, for a model fitted in closed form.

    Returns (N,) int64 ids.

    Raises:
        DataError: the task's vocabulary is not the model's.
    """
    if task.vocab_size != vocab_size:
        raise DataError(f"the task has {task.vocab_size} token ids but the {model_name} model was built "
                        f"for {vocab_size}")
    return torch.as_tensor(task.splits["train"].ids, dtype=torch.long)


def check_ids(ids: Tensor, limit: int, what: str) -> None:
    """``DataError`` unless ``ids`` are integers in ``[0, limit)``; ``what`` names them."""
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise DataError(f"{what} ids must be integers, got dtype {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= limit):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise DataError(f"{what} id {bad} is outside the vocabulary [0, {limit})")


def _check_key_range(n_prefixes: int, n_ids: int, order: int) -> None:
    if n_prefixes * n_ids >= 2**63:
        raise DataError(
            f"{n_prefixes} n-grams of order {order - 1} times {n_ids} ids overflow an int64 key; "
            "use a smaller vocabulary or order"
        )


# ---- counts of counts: the statistics discounting estimators need ---------------------------


def absolute_discount(n1: float, n2: float) -> float:
    """Ney, Essen and Kneser's (1994) estimate ``D = n1 / (n1 + 2 n2)``; 0.5 where it is not in (0, 1]."""
    discount = n1 / (n1 + 2 * n2) if n1 + 2 * n2 > 0 else math.nan
    return discount if 0 < discount <= 1 else FALLBACK_DISCOUNTS[0]


def modified_kneser_ney_discounts(n1: float, n2: float, n3: float, n4: float) -> Tensor:
    """Chen and Goodman's (1998, eq. 26) discounts for counts 1, 2 and 3+, from the counts of
    counts n1 .. n4 of one order:

        Y = n1 / (n1 + 2 n2),  D1 = 1 - 2Y n2/n1,  D2 = 2 - 3Y n3/n2,  D3+ = 3 - 4Y n4/n3.

    A D_r that is undefined or outside [0, r] takes KenLM's fallback (0.5, 1, 1.5)[r - 1].

    Returns:
        (3,) float64.
    """
    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else math.nan

    y = ratio(n1, n1 + 2 * n2)
    formulas = (1 - 2 * y * ratio(n2, n1), 2 - 3 * y * ratio(n3, n2), 3 - 4 * y * ratio(n4, n3))
    return torch.tensor([d if math.isfinite(d) and 0 <= d <= r else fallback
                         for r, (d, fallback) in enumerate(zip(formulas, FALLBACK_DISCOUNTS), start=1)],
                        dtype=torch.float64)


def simple_good_turing(counts: Tensor, counts_of_counts: Tensor, confidence: float = 1.96) -> Tensor:
    """Gale and Sampson's (1995) Simple Good-Turing adjusted counts r*.

    With the counts of counts ``N_r`` at the observed counts r (ascending):
    ``Z_r = N_r / (0.5 (t - q))`` with q and t the neighbouring observed counts (q = 0 before the
    first, t = 2r - q after the last); least squares ``log Z_r = a + b log r`` gives the smoothed
    ``S(r) = exp(a + b log r)``. The Turing estimate ``x = (r + 1) N_{r+1} / N_r`` is used from
    r = 1 up while it differs from the smoothed ``y = (r + 1) S(r + 1) / S(r)`` by more than
    ``confidence`` standard deviations, ``sqrt((r+1)^2 N_{r+1} / N_r^2 (1 + N_{r+1} / N_r))``,
    and ``N_{r+1} > 0``; from the first r where it does not, y is used for every larger r.

    Args:
        counts: (M,) the distinct observed counts r, ascending.
        counts_of_counts: (M,) N_r, each > 0.
    Returns:
        (M,) float64 r*. The probability of one item seen r times is
        ``(1 - N_1 / N) r* / sum_r N_r r*``, N = sum_r r N_r.
    """
    r, n_r = counts.double(), counts_of_counts.double()
    previous = torch.cat([r.new_zeros(1), r[:-1]])
    following = torch.cat([r[1:], 2 * r[-1:] - previous[-1:]])
    z = n_r / (0.5 * (following - previous))
    log_r, log_z = r.log(), z.log()
    spread = ((log_r - log_r.mean()) ** 2).sum()
    slope = ((log_r - log_r.mean()) * (log_z - log_z.mean())).sum() / spread if len(r) > 1 else math.nan
    smoothed = (r + 1) * ((r + 1) / r) ** slope                              # y
    next_n = torch.where(torch.cat([r[1:] == r[:-1] + 1, r.new_zeros(1, dtype=torch.bool)]),
                         torch.cat([n_r[1:], n_r.new_zeros(1)]), 0.0)        # N_{r+1}
    turing = (r + 1) * next_n / n_r                                          # x
    deviation = confidence * torch.sqrt((r + 1) ** 2 * next_n / n_r**2 * (1 + next_n / n_r))
    use_turing = torch.cumprod(((turing - smoothed).abs() > deviation) & (next_n > 0), dim=0).bool()
    return torch.where(use_turing, turing, smoothed)


def good_turing_discounts(counts: Tensor) -> Tensor:
    """Per n-gram Good-Turing discount ``d_r = r* / r`` (Simple Good-Turing over these counts);
    1 where r* / r is not in (0, 1). Returns (N,) float64."""
    observed = counts[counts > 0].long()
    if observed.numel() == 0:
        return torch.ones_like(counts)
    distinct, n_r = torch.unique(observed, return_counts=True)
    ratio = simple_good_turing(distinct, n_r) / distinct
    ratio = torch.where(torch.isfinite(ratio) & (ratio > 0) & (ratio < 1), ratio, 1.0)
    position = torch.searchsorted(distinct, counts.long().clamp(min=1)).clamp(max=len(distinct) - 1)
    return torch.where(counts > 0, ratio[position], 1.0)
