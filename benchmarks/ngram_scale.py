"""Building an n-gram model at scale: a 5-gram modified Kneser-Ney model counted in bounded memory
(``seqlab.classical.external_counts``: sorted runs spilled to disk and merged, as KenLM's lmplz
does), at 1M and 10M tokens (100M with --huge), against the in-memory build.

    python benchmarks/ngram_scale.py [--quick] [--huge] [--memory 4G] [--count-memory 1G]

The text is sampled from a word trigram model fitted to tinyshakespeare's lines
(../shared/data/tinyshakespeare/input.txt), so that its n-gram sparsity resembles language's
(i.i.d. Zipf draws would make almost every 5-gram new): each next word is drawn from the trigram
counts of its two-word context with probability 0.7 (when that context was seen), else from the
bigram counts of the last word with probability 0.2, else from the unigram counts; sentences
end at ``</s>`` (or after 200 words). Sampling is vectorised over a batch of sentences at once:
every n-gram level is a sorted array of keys with cumulative counts, and a draw is one
``searchsorted`` in a context's slice of them.

A token is a word or ``</s>`` (``<s>`` marks each sentence's start). The ids go to a file first;
each build then runs in a fresh Python process, which reads the file in chunks of 2^20 ids, counts,
estimates (``seqlab.classical.ngram``'s estimator, on the counted tables) and installs the model's
tables. Build seconds are from the first read to the fitted model (sampling and imports excluded);
peak memory is the process' maximum resident set (``VmHWM``, imports included: the baseline
after imports is printed apart, and so is the peak at the end of counting, before estimation).
``--memory`` is the peak-memory limit checked; the counter's working budget is ``--count-memory``
(a quarter of the limit by default: the counted tables and the estimator's arrays, which the
model needs whatever the counting, take the rest).

At the smallest size the bounded build is checked against the in-memory ``NGramLM.fit_stream``:
equal keys, and equal ln p* and ln b to the last bit. The in-memory build is timed beside the
bounded one at every size but 100M, the two taking turns, best of ``--repeats`` (2) runs; one
bounded run at 100M. --quick: 100k and 1M tokens.

Last line: ``RESULT build_10m_seconds=<x> build_10m_peak_gb=<x> build_10m_per_token_vs_1m=<x>``
(with --quick, the 1M and 100k figures stand in for 10M and 1M), and with --huge
``build_100m_seconds``, ``build_100m_peak_gb`` and ``build_100m_per_token_vs_1m`` after them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
ORDER = 5
READ_CHUNK = 2**20
TRIGRAM_P, BIGRAM_P = 0.7, 0.2           # the rest (0.1) draws from the unigrams
MAX_SENTENCE = 200


# ---- the trigram sampler ----------------------------------------------------------------------


class TrigramSampler:
    """A word trigram model with simple back-off, sampled a batch of sentences at a time.

    Ids: 0 ``<unk>`` (unused), 1 ``</s>``, 2 .. V - 1 the words by frequency, V ``<s>``.
    """

    def __init__(self, lines: list[str]):
        words = [line.split() for line in lines]
        vocabulary, counts = np.unique(np.array([w for line in words for w in line]), return_counts=True)
        by_frequency = vocabulary[np.argsort(-counts, kind="stable")]
        self.words = ["<unk>", "</s>", *by_frequency.tolist()]
        index = {word: i for i, word in enumerate(self.words)}
        self.vocab_size = len(self.words)
        self.start_id = self.vocab_size
        n = self.n_ids = self.vocab_size + 1
        padded = np.array([i for line in words for i in (self.start_id, self.start_id, *map(index.__getitem__, line), 1)])
        ends = np.flatnonzero(padded != self.start_id)                      # every predicted position
        u, v, w = padded[ends - 2], padded[ends - 1], padded[ends]
        self.levels = [self._level((u * n + v) * n + w), self._level(v * n + w), self._level(w)]

    def _level(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sorted distinct keys (context * n_ids + word) and their inclusive cumulative counts."""
        distinct, counts = np.unique(keys, return_counts=True)
        return distinct, np.cumsum(counts)

    def _draw(self, level: int, contexts: np.ndarray, uniform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A word after each context from one level's counts, and whether the context was seen."""
        keys, cumulative = self.levels[level]
        start = np.searchsorted(keys, contexts * self.n_ids)
        stop = np.searchsorted(keys, (contexts + 1) * self.n_ids)
        seen = stop > start
        before = np.where(start > 0, cumulative[np.maximum(start - 1, 0)], 0)
        total = cumulative[np.maximum(stop - 1, 0)] - before
        chosen = np.searchsorted(cumulative, before + uniform * total, side="right")
        return keys[np.minimum(chosen, len(keys) - 1)] % self.n_ids, seen

    def sentences(self, n_sentences: int, rng: np.random.Generator) -> np.ndarray:
        """``n_sentences`` sentences as one stream ``<s> w .. </s> <s> ...``: (L,) int32."""
        n = self.n_ids
        u = np.full(n_sentences, self.start_id)
        v = np.full(n_sentences, self.start_id)
        body = np.full((n_sentences, MAX_SENTENCE + 1), -1, dtype=np.int32)      # (S, T), -1 after </s>
        alive = np.arange(n_sentences)                         # the sentences still going
        for step in range(MAX_SENTENCE + 1):
            choice, uniform = rng.random(len(alive)), rng.random(len(alive))
            word = self._draw(2, np.zeros(len(alive), dtype=np.int64), uniform)[0]
            bigram, _ = self._draw(1, v, uniform)
            trigram, seen = self._draw(0, u * n + v, uniform)
            word = np.where(choice < TRIGRAM_P + BIGRAM_P, bigram, word)
            word = np.where((choice < TRIGRAM_P) & seen, trigram, word)
            if step == MAX_SENTENCE:
                word[:] = 1
            body[alive, step] = word
            going = word != 1
            alive, u, v = alive[going], v[going], word[going]
            if not len(alive):
                break
        rows = np.concatenate([np.full((n_sentences, 1), self.start_id, dtype=np.int32), body], axis=1)
        return rows[rows >= 0]

    def stream(self, n_tokens: int, seed: int) -> np.ndarray:
        """At least ``n_tokens`` tokens (words and </s>) of whole sentences: (L,) int32."""
        rng, pieces, tokens = np.random.default_rng(seed), [], 0
        while tokens < n_tokens:
            piece = self.sentences(min(100_000, max(1_000, (n_tokens - tokens) // 8)), rng)
            pieces.append(piece)
            tokens += int((piece != self.start_id).sum())
        return np.concatenate(pieces)


# ---- one build, in a fresh process ------------------------------------------------------------


def build(path: Path, vocab_size: int, mode: str, count_memory: int, workdir: Path) -> dict:
    """Fit a 5-gram modified KN model to the ids in ``path``; seconds and peak memory."""
    import torch
    from seqlab.classical import ngram
    from seqlab.classical.external_counts import count_ngrams_bounded

    torch.set_num_threads(1)
    baseline = peak_resident_bytes()
    model = ngram.NGramLM(ngram.NGramConfig(vocab_size=vocab_size, order=ORDER))
    n_ids, start_id = model.n_ids, model.start_id
    length = path.stat().st_size // 4

    def chunks():
        for begin in range(0, length, READ_CHUNK):
            yield np.fromfile(path, dtype=np.int32, count=READ_CHUNK, offset=4 * begin)

    started = time.perf_counter()
    if mode == "memory":
        model.fit_stream(torch.from_numpy(np.fromfile(path, dtype=np.int32).astype(np.int64)))
    else:
        counted = count_ngrams_bounded(chunks(), ORDER, n_ids, start_id, memory_bytes=count_memory,
                                       workdir=workdir)
        counted_seconds, counted_peak = time.perf_counter() - started, peak_resident_bytes()
        model.fit_counted(counted)
    seconds = time.perf_counter() - started
    result = {"seconds": seconds, "peak": peak_resident_bytes(),
              "baseline": baseline, "ngrams": [len(t) for t in model.tables]}
    if mode != "memory":
        result["count_seconds"], result["count_peak"] = counted_seconds, counted_peak
    if mode == "check":
        reference = ngram.NGramLM(model.config).fit_stream(
            torch.from_numpy(np.fromfile(path, dtype=np.int32).astype(np.int64)))
        result["equal"] = all(torch.equal(getattr(a, name), getattr(b, name))
                              for a, b in zip(model.tables, reference.tables)
                              for name in ("keys", "log_prob", "log_backoff"))
    return result


def peak_resident_bytes() -> int:
    """This process' peak resident set: ``VmHWM`` (reset by exec, unlike ``ru_maxrss``, which a
    child started by fork and exec inherits from its parent's size at the fork)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_build(path: Path, vocab_size: int, mode: str, count_memory: int, workdir: Path) -> dict:
    command = [sys.executable, __file__, "--build", str(path), "--vocab-size", str(vocab_size),
               "--mode", mode, "--count-memory", str(count_memory), "--workdir", str(workdir)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"the {mode} build of {path.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", text.strip().upper())
    if not match:
        raise argparse.ArgumentTypeError(f"a size like 4G or 512M, got {text!r}")
    return int(float(match[1]) * 1024 ** " KMGT".index(match[2] or " "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k and 1M tokens")
    parser.add_argument("--huge", action="store_true", help="also 100M tokens (bounded build only)")
    parser.add_argument("--memory", type=parse_bytes, default=parse_bytes("4G"), help="the peak-memory limit")
    parser.add_argument("--count-memory", type=parse_bytes, default=None,
                        help="the counter's working budget (default: a quarter of --memory)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--vocab-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="bounded", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    count_memory = args.count_memory or args.memory // 4
    if args.build:
        print(json.dumps(build(args.build, args.vocab_size, args.mode, count_memory, args.workdir)))
        return
    if not SHAKESPEARE.is_file():
        print(f"skipped: {SHAKESPEARE} is absent")
        return
    print(f"load: {os.getloadavg()}")
    sampler = TrigramSampler([line for line in SHAKESPEARE.read_text(encoding="utf-8").splitlines() if line.strip()])
    sizes = [100_000, 1_000_000] if args.quick else [1_000_000, 10_000_000] + [100_000_000] * args.huge
    rows = {}
    with tempfile.TemporaryDirectory(prefix="ngram-scale-") as scratch:
        for size in sizes:
            started = time.perf_counter()
            stream = sampler.stream(size, seed=size)
            path = Path(scratch) / f"stream-{size}.bin"
            stream.tofile(path)
            tokens = int((stream != sampler.start_id).sum())
            del stream
            print(f"sampled {tokens:,} tokens in {time.perf_counter() - started:.1f} s")
            if size == sizes[0]:
                check = run_build(path, sampler.vocab_size, "check", count_memory, Path(scratch))
                print(f"bounded build equals NGramLM.fit_stream (keys, ln p*, ln b exact): {check['equal']}")
            modes = ["bounded"] if size >= 100_000_000 else ["bounded", "memory"]
            results = {mode: None for mode in modes}
            for _ in range(1 if size >= 100_000_000 else args.repeats):
                for mode in modes:            # taking turns, so load bursts hit both alike
                    result = run_build(path, sampler.vocab_size, mode, count_memory, Path(scratch))
                    if results[mode] is None or result["seconds"] < results[mode]["seconds"]:
                        results[mode] = result
            rows[size] = (tokens, results)
            path.unlink()
    print(f"\n5-gram modified Kneser-Ney, limit {args.memory / 2**30:.2f} GiB, counter budget "
          f"{count_memory / 2**30:.2f} GiB; load now {os.getloadavg()}")
    print(f"{'tokens':>12} {'build':>8} {'seconds':>8} {'count s':>8} {'us/token':>9} {'peak GiB':>9} "
          f"{'count GiB':>9} {'base GiB':>9} n-grams per order")
    for size, (tokens, results) in rows.items():
        for mode, r in results.items():
            print(f"{tokens:>12,} {mode:>8} {r['seconds']:>8.2f} {r.get('count_seconds', float('nan')):>8.2f} "
                  f"{1e6 * r['seconds'] / tokens:>9.3f} {r['peak'] / 2**30:>9.3f} "
                  f"{r.get('count_peak', float('nan')) / 2**30:>9.3f} {r['baseline'] / 2**30:>9.3f} "
                  f"{r['ngrams']}")
    small, large = sizes[0], sizes[1]                 # 1M and 10M (100k and 1M with --quick)
    (small_tokens, small_results), (large_tokens, large_results) = rows[small], rows[large]
    per_token = (large_results["bounded"]["seconds"] / large_tokens) / (small_results["bounded"]["seconds"] / small_tokens)
    peak = large_results["bounded"]["peak"] / 2**30
    huge = ""
    if args.huge:                                     # the stretch: 100M tokens under the same limit
        huge_tokens, huge_results = rows[sizes[2]]
        huge_peak = huge_results["bounded"]["peak"] / 2**30
        print(f"100M peak under the limit: {huge_peak <= args.memory / 2**30}")
        huge = (f" build_100m_seconds={huge_results['bounded']['seconds']:.2f} build_100m_peak_gb={huge_peak:.3f}"
                f" build_100m_per_token_vs_1m="
                f"{(huge_results['bounded']['seconds'] / huge_tokens) / (small_results['bounded']['seconds'] / small_tokens):.3f}")
    print(f"peak under the limit: {peak <= args.memory / 2**30}")
    print(f"RESULT build_10m_seconds={large_results['bounded']['seconds']:.2f} build_10m_peak_gb={peak:.3f} "
          f"build_10m_per_token_vs_1m={per_token:.3f}{huge}")


if __name__ == "__main__":
    main()
