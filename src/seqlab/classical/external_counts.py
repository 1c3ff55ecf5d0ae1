"""N-gram counting in bounded memory: sorted runs spilled to disk and merged, as KenLM's ``lmplz``
builds at scale (Heafield, Pouzyrevsky, Clark and Koehn 2013, "Scalable modified Kneser-Ney
language model estimation", sec. 3: count in memory-sized blocks, sort, merge on disk).

``count_ngrams_bounded`` returns exactly what ``seqlab.classical.counts.count_ngrams`` returns for
the whole stream (the same sorted keys, counts and suffix indices), while the raw stream and its
windows never sit in memory at once: only one chunk of them does, plus the counted tables of the
orders below the one being counted (which the model holds anyway).

Why order by order. ``count_ngrams`` packs an n-gram of order k as
``key = index_{k-1}(w_1 .. w_{k-1}) * n_ids + w_k``, where ``index_{k-1}`` is the prefix's rank
among *all* n-grams of order k - 1 in the stream. A chunk's own ranks would differ from chunk to
chunk, so its keys could not be merged. Counting one order per pass fixes that: when order k is
counted, order k - 1 is complete, and the windows of a chunk are ranked against it, giving keys
that mean the same in every chunk. One pass per order over the stream (spilled to disk once),
each pass:

1. per chunk of ``C`` positions (``C`` from the memory budget): the global index of the window of
   length k - 1 ending at each position (from the previous pass's spilled run-local indices and
   one sorted ``searchsorted`` of the run's keys in the completed order k - 1); the window of
   length k ending at ``t`` is that index at ``t - 1`` times ``n_ids`` plus the id at ``t``, so a
   window crossing into the chunk takes its prefix from the last position of the chunk before
   (carried over; equivalent to overlapping chunks by ``order - 1`` tokens and counting the
   windows that end in the chunk). Windows holding ``<s>`` after their first id are skipped, as
   in ``count_ngrams``;
2. ``torch.unique`` of the chunk's keys gives one sorted run of (key, count, suffix), written to disk,
   and each position's index in that run, kept on disk for the next order's pass;
3. the runs are merged k ways in blocks: from each run a block of keys; every key up to the
   smallest last key of a block that does not end its run is final, so those pieces are
   concatenated, their equal keys' counts summed, and written out. With more runs than the
   budget allows blocks for, groups of runs are merged into longer runs first (a merge tree).

The suffix of each counted n-gram ``(w_2 .. w_k)`` is, as in ``count_ngrams``, the window of
length k - 1 ending where the n-gram ends: a global index already, so each run carries it beside
its counts (equal for equal keys, so the merge keeps any). Kneser-Ney's continuation counts are
``bincount(suffix)`` over the merged table, so the estimators in ``seqlab.classical.ngram`` take
these tables as they take ``count_ngrams``'.

Pruning. ``prune_counted_singletons`` drops the n-grams of order >= 3 seen once (lmplz's
``--prune 0 0 1``) and re-keys what remains; what it keeps is exactly the n-gram set that
``NGramConfig(prune_singletons=True)`` keeps. It does not give that model's estimates when applied
before estimation: seqlab's estimators (like lmplz) take discounts, context totals ``c(h .)``,
``N1(h .) N2(h .) N3+(h .)`` and continuation counts from the unpruned counts and prune afterwards.

Temporary files go to a fresh directory under ``workdir`` (the system's temp dir by default),
removed when counting ends, whether it returns or raises (``KeyboardInterrupt`` included).

Shapes: L stream length, C positions per chunk, N_k n-grams of order k, R runs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from seqlab.classical.counts import ABSENT, CountedOrder, _check_key_range
from seqlab.errors import ConfigError, DataError

# Working bytes per chunk position in a counting pass: the ids, the windows below, the keys, and
# torch.unique's sort, inverse and counts (measured: a 64 MiB budget peaked 78 MiB at 128).
BYTES_PER_CHUNK_POSITION = 160
# Working bytes per merged entry in flight: the blocks read (key and count), their concatenation,
# unique's sort and inverse, and the summed output.
BYTES_PER_MERGE_ENTRY = 96
# Chunks beyond this many positions count slower per position (torch.unique's sort leaves the
# caches: 8M positions take 6x the time of 2M, measured), and their runs merge cheaply.
MAX_CHUNK_POSITIONS = 2**21
MIN_MERGE_BLOCK = 1024           # a merge reads at least this many entries per run, or merges fewer runs
MIN_MEMORY_BYTES = 4096


def count_ngrams_bounded(chunks: Iterable[Tensor | np.ndarray], order: int, n_ids: int,
                         start_id: int | None = None, memory_bytes: int = 2**30,
                         workdir: str | Path | None = None) -> list[CountedOrder]:
    """``count_ngrams`` over the concatenation of ``chunks``, in bounded working memory.

    Args:
        chunks: pieces of one (L,) stream of integer ids in ``[0, n_ids)``, in order, of any
            sizes (a generator is read once).
        order: the highest order counted.
        n_ids: the number of distinct ids (the key radix).
        start_id: the sentence-start id (see ``count_ngrams``); None: one unbroken sequence.
        memory_bytes: the working memory of counting, beyond the counted tables returned: it
            sets the chunk length (``memory_bytes / 160`` positions, at most 2^21) and the
            merge's blocks.
        workdir: where the temporary directory of runs is made; None: the system's temp dir.
    Returns:
        per order k = 1 .. ``order``, as ``count_ngrams`` returns them (order 1 dense).

    Raises:
        ConfigError: ``memory_bytes`` is not an integer of at least 4096, or ``order`` or
            ``n_ids`` is below 1.
        DataError: a chunk holds non-integer ids or ids outside ``[0, n_ids)``.
    """
    _check_arguments(order, n_ids, memory_bytes)
    chunk_positions = min(memory_bytes // BYTES_PER_CHUNK_POSITION, MAX_CHUNK_POSITIONS)
    with tempfile.TemporaryDirectory(prefix="seqlab-counts-", dir=workdir) as scratch:
        stream = _SpilledStream.write(Path(scratch) / "stream.bin", chunks, n_ids)
        tables = [CountedOrder(torch.arange(n_ids), torch.from_numpy(stream.unigram_counts), None)]
        local_indices: list[Path] = []      # per chunk: each position's index in the chunk's run
        runs: list[_Run] = []
        for k in range(2, order + 1):
            _check_key_range(len(tables[-1].keys), n_ids, k)
            below = tables[-1].keys.numpy()
            previous_runs, previous_indices = runs, local_indices
            runs, local_indices = [], []
            carried = ABSENT                 # the window of length k - 1 ending before the chunk
            for chunk, begin in enumerate(range(0, stream.length, chunk_positions)):
                ids = stream.read(begin, chunk_positions)                                   # (C,)
                if k == 2:
                    windows_below = ids
                else:
                    windows_below = _global_windows(previous_runs[chunk], previous_indices[chunk], below)
                    previous_runs[chunk].unlink()
                    previous_indices[chunk].unlink()
                run, positions = _count_chunk(ids, windows_below, carried, n_ids, start_id,
                                              Path(scratch) / f"order{k}-chunk{chunk}", k < order)
                runs.append(run)
                local_indices.append(positions)
                carried = int(windows_below[-1])
            merged = _merge_all(runs, memory_bytes, Path(scratch) / f"order{k}")
            keys, counts, suffix = (torch.from_numpy(column) for column in merged.read(0, merged.length))
            if merged not in runs:
                merged.unlink()
            tables.append(CountedOrder(keys, counts, suffix))
        return tables


def prune_counted_singletons(tables: list[CountedOrder], n_ids: int) -> list[CountedOrder]:
    """Drop the n-grams of order >= 3 seen once (lmplz's ``--prune 0 0 1``) and re-key the rest.

    Raw counts never grow with the order, so a kept n-gram's prefix and suffix are kept too and
    the tables stay prefix- and suffix-closed; keys and suffix indices are renumbered over what
    is kept. Counts are unchanged.
    """
    pruned = [tables[0]]
    kept_below = torch.ones(len(tables[0].keys), dtype=torch.bool)
    for k, table in enumerate(tables[1:], start=2):
        keep = table.counts >= 2 if k >= 3 else torch.ones(len(table.keys), dtype=torch.bool)
        new_index = torch.cumsum(kept_below, 0) - 1                 # old index below -> kept index
        prefix, last = torch.div(table.keys, n_ids, rounding_mode="floor"), table.keys % n_ids
        keys = (new_index[prefix] * n_ids + last)[keep]
        pruned.append(CountedOrder(keys, table.counts[keep], new_index[table.suffix][keep]))
        kept_below = keep
    return pruned


def _check_arguments(order: int, n_ids: int, memory_bytes: int) -> None:
    if isinstance(memory_bytes, bool) or not isinstance(memory_bytes, (int, np.integer)) \
            or memory_bytes < MIN_MEMORY_BYTES:
        raise ConfigError(f"memory_bytes must be an integer number of bytes >= {MIN_MEMORY_BYTES}, "
                          f"got {memory_bytes!r}")
    if order < 1:
        raise ConfigError(f"order must be >= 1, got {order}")
    if n_ids < 1:
        raise ConfigError(f"n_ids must be >= 1, got {n_ids}")


# ---- the stream, spilled once -----------------------------------------------------------------


@dataclass
class _SpilledStream:
    """The whole stream in one raw file (int32 ids when they fit), read back a chunk at a time."""

    path: Path
    dtype: type
    length: int
    unigram_counts: np.ndarray        # (n_ids,) int64

    @classmethod
    def write(cls, path: Path, chunks: Iterable[Tensor | np.ndarray], n_ids: int) -> _SpilledStream:
        dtype = np.int32 if n_ids <= np.iinfo(np.int32).max else np.int64
        counts, length = np.zeros(n_ids, dtype=np.int64), 0
        with open(path, "wb") as out:
            for piece in _as_id_arrays(chunks, n_ids):
                counts += np.bincount(piece, minlength=n_ids)
                piece.astype(dtype, copy=False).tofile(out)
                length += len(piece)
        return cls(path, dtype, length, counts)

    def read(self, begin: int, count: int) -> np.ndarray:
        """(C,) int64 ids at positions ``begin .. begin + count - 1`` (fewer at the end)."""
        itemsize = np.dtype(self.dtype).itemsize
        return np.fromfile(self.path, dtype=self.dtype, count=min(count, self.length - begin),
                           offset=begin * itemsize).astype(np.int64)


def _as_id_arrays(chunks: Iterable[Tensor | np.ndarray], n_ids: int) -> Iterator[np.ndarray]:
    for number, piece in enumerate(chunks):
        array = piece.detach().cpu().numpy() if isinstance(piece, Tensor) else np.asarray(piece)
        array = array.reshape(-1)
        if array.size == 0:
            continue
        if not np.issubdtype(array.dtype, np.integer):
            raise DataError(f"chunk {number} of the stream holds {array.dtype} values; ids must be integers")
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= n_ids:
            raise DataError(f"chunk {number} of the stream holds id {low if low < 0 else high}, "
                            f"outside [0, {n_ids})")
        yield array.astype(np.int64, copy=False)


# ---- one chunk of one order -------------------------------------------------------------------


COLUMNS = ("keys", "counts", "suffix")


@dataclass
class _Run:
    """A sorted run of distinct keys, their counts and suffix indices: three raw int64 files
    ``stem.keys``, ``stem.counts``, ``stem.suffix``."""

    stem: Path
    length: int

    def path(self, column: str) -> Path:
        return self.stem.with_suffix("." + column)

    def read(self, begin: int, count: int, columns: tuple[str, ...] = COLUMNS) -> list[np.ndarray]:
        """Rows ``begin .. begin + count - 1`` (fewer at the end) of each column."""
        count = min(count, self.length - begin)
        if count <= 0:                     # an empty run may have no files
            return [np.zeros(0, dtype=np.int64) for _ in columns]
        return [np.fromfile(self.path(column), dtype=np.int64, count=count, offset=8 * begin)
                for column in columns]

    def unlink(self) -> None:
        for column in COLUMNS:
            self.path(column).unlink(missing_ok=True)


def _count_chunk(ids: np.ndarray, windows_below: np.ndarray, carried: int, n_ids: int,
                 start_id: int | None, stem: Path, keep_positions: bool) -> tuple[_Run, Path]:
    """Count the windows of length k ending in one chunk, spill them as a run.

    As in ``count_ngrams``, the suffix of the window ending at t is the window of length k - 1
    ending at t, ``windows_below[t]``, already a global index.

    Args:
        ids: (C,) the chunk's ids.
        windows_below: (C,) global index of the window of length k - 1 ending at each position,
            ``ABSENT`` where there is none.
        carried: that index at the position before the chunk (``ABSENT`` at the stream's start).
        keep_positions: write each position's index in the run (the next order reads them).
    Returns:
        the run, and the file of each position's index in it (``ABSENT`` where no window ends;
        not written unless ``keep_positions``).
    """
    prefix = np.concatenate([[carried], windows_below[:-1]])                         # (C,)
    ends = prefix >= 0
    if start_id is not None:
        ends &= ids != start_id
    keys = torch.from_numpy(prefix[ends] * n_ids + ids[ends])
    run_keys, inverse, run_counts = torch.unique(keys, sorted=True, return_inverse=True, return_counts=True)
    suffix = torch.empty_like(run_keys)
    suffix[inverse] = torch.from_numpy(windows_below[ends])
    run = _Run(stem, len(run_keys))
    for column, values in zip(COLUMNS, (run_keys, run_counts, suffix)):
        values.numpy().tofile(run.path(column))
    positions_path = stem.with_suffix(".positions")
    if keep_positions:
        positions = np.full(len(ids), ABSENT, dtype=np.int32)     # a run is shorter than its chunk
        positions[ends] = inverse.numpy()
        positions.tofile(positions_path)
    return run, positions_path


def _global_windows(run: _Run, positions_path: Path, below: np.ndarray) -> np.ndarray:
    """(C,) each position's window index in the completed order ``below`` (sorted keys), from
    its index in its chunk's run: one search of the run's sorted keys."""
    positions = np.fromfile(positions_path, dtype=np.int32)
    run_keys, = run.read(0, run.length, ("keys",))
    global_index = np.append(np.searchsorted(below, run_keys), ABSENT)   # ABSENT positions read the last
    return global_index[positions]


# ---- the k-way merge --------------------------------------------------------------------------


def _merge_all(runs: list[_Run], memory_bytes: int, stem: Path) -> _Run:
    """Merge sorted runs into one, summing the counts of equal keys; a merge tree when there are
    more runs than the budget gives blocks of ``MIN_MERGE_BLOCK`` entries each. The given runs
    are kept (the next order's pass reads their keys); the tree's inner runs are removed. A single
    run is returned as it is."""
    fan_in = max(2, memory_bytes // (BYTES_PER_MERGE_ENTRY * MIN_MERGE_BLOCK))
    runs, level, inner = [run for run in runs if run.length > 0], 0, False
    while len(runs) > 1:
        groups = [runs[i:i + fan_in] for i in range(0, len(runs), fan_in)]
        merged = [_merge(group, memory_bytes, stem.with_name(f"{stem.name}-level{level}-{i}"))
                  for i, group in enumerate(groups)]
        if inner:
            for run in runs:
                run.unlink()
        runs, level, inner = merged, level + 1, True
    return runs[0] if runs else _Run(stem, 0)


def _merge(runs: list[_Run], memory_bytes: int, stem: Path) -> _Run:
    """One k-way merge of ``runs`` into a new run, in blocks.

    Each step reads a block from every unfinished run; every key up to the smallest last key of
    a block that does not end its run has all its occurrences in the blocks (runs are sorted), so
    those pieces are merged (a stable sort, counts summed, the suffix of any occurrence, all
    equal) and written, and each run advances past what it gave.
    """
    block = max(1, memory_bytes // (BYTES_PER_MERGE_ENTRY * len(runs)))
    merged = _Run(stem, 0)
    read_to = [0] * len(runs)
    with open(merged.path("keys"), "wb") as keys_out, open(merged.path("counts"), "wb") as counts_out, \
            open(merged.path("suffix"), "wb") as suffix_out:
        while True:
            active = [i for i, run in enumerate(runs) if read_to[i] < run.length]
            if not active:
                break
            blocks = {i: runs[i].read(read_to[i], block) for i in active}
            open_ends = [blocks[i][0][-1] for i in active if read_to[i] + len(blocks[i][0]) < runs[i].length]
            bound = min(open_ends) if open_ends else None
            pieces = []
            for i in active:
                keys = blocks[i][0]
                taken = len(keys) if bound is None else int(np.searchsorted(keys, bound, side="right"))
                pieces.append([column[:taken] for column in blocks[i]])
                read_to[i] += taken
            keys, counts, suffix = (np.concatenate(column) for column in zip(*pieces))
            # A stable sort finds the pieces' sorted runs and merges them (timsort), several
            # times faster than sorting from scratch.
            order = np.argsort(keys, kind="stable")
            keys = keys[order]
            first = np.empty(len(keys), dtype=bool)                  # the first of equal keys
            first[:1] = True
            np.not_equal(keys[1:], keys[:-1], out=first[1:])
            starts = np.flatnonzero(first)
            keys[first].tofile(keys_out)
            np.add.reduceat(counts[order], starts).tofile(counts_out)
            suffix[order[starts]].tofile(suffix_out)
            merged.length += len(starts)
    return merged
