"""Counting in bounded memory (``seqlab.classical.external_counts``) against the in-memory
``count_ngrams``: the same keys, counts and suffix indices, whatever the chunking, the budget (tiny
budgets force many runs and a merge tree) and the sentence starts; the temporary directory removed
after success and failure; pruning equal to the model's; bad budgets and ids refused."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqlab.classical import external_counts
from seqlab.classical.counts import CountedOrder, count_ngrams
from seqlab.classical.external_counts import count_ngrams_bounded, prune_counted_singletons
from seqlab.classical.ngram import NGramConfig, NGramLM
from seqlab.errors import ConfigError, DataError


def assert_same_tables(expected: list[CountedOrder], actual: list[CountedOrder]) -> None:
    assert len(expected) == len(actual)
    for k, (a, b) in enumerate(zip(expected, actual), start=1):
        for name in ("keys", "counts", "suffix"):
            want, got = getattr(a, name), getattr(b, name)
            if want is None:
                assert got is None, f"order {k} {name}"
                continue
            assert got.dtype == want.dtype == torch.long, f"order {k} {name}"
            assert torch.equal(got, want), f"order {k} {name}"


def sentence_stream(length: int, n_ids: int, seed: int, start_every: float = 0.15) -> np.ndarray:
    """Skewed ids with ``<s>`` (the last id) first and at random places, so that n-grams repeat
    and windows are cut by sentence starts."""
    rng = np.random.default_rng(seed)
    stream = np.minimum(rng.zipf(1.5, size=length) - 1, n_ids - 2)
    stream[rng.random(length) < start_every] = n_ids - 1
    stream[0] = n_ids - 1
    return stream


def random_pieces(stream: np.ndarray, seed: int) -> list[np.ndarray]:
    cuts = np.sort(np.random.default_rng(seed).integers(0, len(stream) + 1, size=5))
    return np.split(stream, cuts)                        # empty pieces included


@pytest.mark.parametrize("length, order, n_ids, memory_bytes", [
    (1, 3, 4, 4096),              # one token: no n-gram above order 1
    (2_000, 3, 12, 4096),         # 25-position chunks, fan-in 2: a deep merge tree
    (5_000, 5, 40, 16_384),
    (20_000, 4, 300, 200_000),    # one merge of many runs
    (3_000, 6, 7, 1 << 30),       # one chunk: no merge at all
])
def test_bounded_counts_equal_in_memory_counts(length, order, n_ids, memory_bytes):
    stream = sentence_stream(length, n_ids, seed=length)
    expected = count_ngrams(torch.from_numpy(stream), order, n_ids, start_id=n_ids - 1)
    actual = count_ngrams_bounded(random_pieces(stream, seed=order), order, n_ids, start_id=n_ids - 1,
                                  memory_bytes=memory_bytes)
    assert_same_tables(expected, actual)


def test_many_runs_are_merged_in_a_tree(monkeypatch):
    """A budget this small leaves blocks for two runs at a time: check the tree really forms."""
    merges = []
    original = external_counts._merge

    def counting_merge(runs, memory_bytes, stem):
        merges.append(len(runs))
        return original(runs, memory_bytes, stem)

    monkeypatch.setattr(external_counts, "_merge", counting_merge)
    stream = sentence_stream(1_500, 9, seed=3)
    actual = count_ngrams_bounded([stream], 3, 9, start_id=8, memory_bytes=4096)
    assert_same_tables(count_ngrams(torch.from_numpy(stream), 3, 9, start_id=8), actual)
    assert max(merges) == 2 and len(merges) >= 2 * (1_500 // 25 - 1)   # two orders, 60 runs each


def test_without_sentence_starts_and_with_tensor_chunks():
    stream = torch.from_numpy(np.random.default_rng(1).integers(0, 6, size=3_000))
    expected = count_ngrams(stream, 4, 6)
    actual = count_ngrams_bounded(torch.split(stream, 777), 4, 6, memory_bytes=8192)
    assert_same_tables(expected, actual)


@settings(max_examples=25, deadline=None)
@given(ids=st.lists(st.integers(0, 5), min_size=1, max_size=400), order=st.integers(1, 5),
       n_pieces=st.integers(1, 6), memory_bytes=st.sampled_from([4096, 6000, 20_000]))
def test_bounded_counts_property(ids, order, n_pieces, memory_bytes):
    stream = np.array(ids, dtype=np.int64)
    expected = count_ngrams(torch.from_numpy(stream), order, 6, start_id=5)
    actual = count_ngrams_bounded(np.array_split(stream, n_pieces), order, 6, start_id=5,
                                  memory_bytes=memory_bytes)
    assert_same_tables(expected, actual)


def test_bounded_counts_give_the_in_memory_model():
    """Kneser-Ney's continuation counts come from the suffixes: the fitted tables match exactly."""
    stream = sentence_stream(4_000, 30, seed=7)
    config = NGramConfig(vocab_size=29, order=4)                 # <s> is the extra id 29
    reference = NGramLM(config).fit_stream(torch.from_numpy(stream))
    counted = count_ngrams_bounded(random_pieces(stream, seed=1), 4, 30, start_id=29, memory_bytes=8192)
    assert_same_tables(count_ngrams(torch.from_numpy(stream), 4, 30, start_id=29), counted)
    bounded = NGramLM(config).fit_counted(counted)
    for table, mine in zip(reference.tables, bounded.tables):
        for name in ("keys", "log_prob", "log_backoff"):
            assert torch.equal(getattr(table, name), getattr(mine, name))
    assert torch.equal(reference.discounts, bounded.discounts)


def test_pruning_keeps_what_the_pruned_model_keeps():
    stream = sentence_stream(6_000, 25, seed=11)
    counted = count_ngrams_bounded([stream], 5, 25, start_id=24, memory_bytes=16_384)
    pruned = prune_counted_singletons(counted, 25)
    model = NGramLM(NGramConfig(vocab_size=24, order=5, prune_singletons=True)).fit_stream(torch.from_numpy(stream))
    for k, (table, mine, full) in enumerate(zip(model.tables, pruned, counted), start=1):
        assert torch.equal(table.keys, mine.keys), f"order {k}"
        if k >= 3:
            assert len(mine.keys) < len(full.keys) and bool((mine.counts >= 2).all())
            assert int(mine.counts.sum()) == int(full.counts[full.counts >= 2].sum())
    # The kept suffixes point at the re-keyed order below: rebuild them from the ids.
    for below, table in zip(pruned[1:], pruned[2:]):
        prefix, last = table.keys // 25, table.keys % 25
        suffix_keys = below.suffix[prefix] * 25 + last
        assert torch.equal(below.keys[table.suffix], suffix_keys)


def test_temporary_directory_is_removed_after_success_and_failure(tmp_path):
    stream = sentence_stream(2_000, 10, seed=5)
    count_ngrams_bounded([stream], 4, 10, start_id=9, memory_bytes=4096, workdir=tmp_path)
    assert os.listdir(tmp_path) == []

    def interrupted():
        yield stream[:1_000]
        assert os.listdir(tmp_path) != []                # the stream is being spilled there
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        count_ngrams_bounded(interrupted(), 4, 10, start_id=9, memory_bytes=4096, workdir=tmp_path)
    assert os.listdir(tmp_path) == []
    with pytest.raises(DataError, match="chunk 1 .* id 10, outside"):
        count_ngrams_bounded([stream, np.array([3, 10])], 3, 10, memory_bytes=4096, workdir=tmp_path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("memory_bytes", [0, -5, 4095, 2.5e9, True, "4G"])
def test_bad_budget_is_refused(memory_bytes):
    with pytest.raises(ConfigError, match="memory_bytes must be an integer number of bytes >= 4096"):
        count_ngrams_bounded([np.array([0, 1, 2])], 3, 3, memory_bytes=memory_bytes)


def test_bad_ids_and_arguments_are_refused():
    with pytest.raises(DataError, match="float64 values; ids must be integers"):
        count_ngrams_bounded([np.array([0.0, 1.0])], 2, 3, memory_bytes=4096)
    with pytest.raises(DataError, match="id -1, outside"):
        count_ngrams_bounded([np.array([0, -1])], 2, 3, memory_bytes=4096)
    with pytest.raises(ConfigError, match="order must be >= 1"):
        count_ngrams_bounded([np.array([0])], 0, 3, memory_bytes=4096)

def test_wired_config_memory_fits_the_same_model():
    stream = torch.from_numpy(sentence_stream(5_000, 30, seed=2))
    reference = NGramLM(NGramConfig(vocab_size=29, order=4)).fit_stream(stream)
    bounded = NGramLM(NGramConfig(vocab_size=29, order=4, memory=8192)).fit_stream(stream)
    for a, b in zip(reference.tables, bounded.tables):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.log_prob, b.log_prob)
        assert torch.equal(a.log_backoff, b.log_backoff)
    with pytest.raises(ConfigError, match="NGramConfig.memory"):
        NGramConfig(vocab_size=3, memory=100)
