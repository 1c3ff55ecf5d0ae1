"""N-gram language models: seqlab's vectorised 5-gram modified Kneser-Ney against NLTK and KenLM,
and the held-out perplexity of every estimator.

    python benchmarks/ngram.py [--quick]

Two corpora, one sentence per line, split 90/10 into training and held-out sentences:
tinyshakespeare's words (../shared/data/tinyshakespeare/input.txt; skipped when absent) and a
synthetic corpus of 1M tokens: a random walk over 100 word classes, each with 100
Zipf-distributed words, cut into sentences of 5 to 29 words. --quick times NLTK on fewer tokens
and takes the best of two runs instead of three.

On each, for a 5-gram interpolated modified Kneser-Ney model:

- build: seconds from sentences (strings) to a fitted model. NLTK's KneserNeyInterpolated(5)
  (with its usual padded_everygram_pipeline) is about a thousand times slower, so it is fitted to
  the first sentences only and compared per training token;
- score: held-out tokens (words and </s>) per second of log10 p(sentence), from strings, all the
  sentences in one ``score_sentences`` call (``seqlab.classical.ngram_scoring``; its hash tables
  are built on first use, and its loop compiled by numba, timed apart, as ``kenlm.Model`` builds
  its own tables when it loads). KenLM
  (the ``kenlm`` module) scores the same sentences one ``score`` call each with the ARPA file
  seqlab wrote (the two agree to about 1e-5 per sentence, KenLM summing in float32; the largest
  difference is printed). NLTK's logscore is timed on a few hundred held-out tokens of the model
  fitted to the subset;
- memory: bytes per stored n-gram (keys, probabilities and back-off weights).

Seqlab and KenLM times are the best of three runs for building (two with --quick) and of seven
for scoring (five with --quick), seqlab and KenLM taking turns, one thread each. The perplexity table is
tinyshakespeare's (the synthetic corpus' when it is absent), in a closed vocabulary (training
words seen once are <unk>). The RESULT line's build and NLTK figures are the synthetic corpus';
its score_vs_kenlm is the worse of the two corpora, and each corpus' follows it by name. Last,
``benchmarks/arpa_load.py`` (ARPA loading against kenlm.Model) and ``benchmarks/ngram_scale.py``
(the bounded-memory build at 1M and 10M tokens) run in their own processes, and their headline
figures join the RESULT line, which starts
``RESULT score_vs_kenlm=<x> arpa_load_vs_kenlm=<x> binary_load_vs_kenlm=<x> build_10m_seconds=<x>
build_10m_peak_gb=<x>`` (binary_load_vs_kenlm: seqlab's cache opened for scoring, ``load_scorer``,
and ready to score against KenLM's probing binary, seconds over seconds; nan unless KenLM's
build_binary is found, see arpa_load.py). Targets (issue 3): build_vs_nltk >= 50, score_vs_nltk >= 50; (issue 17)
score_vs_kenlm >= 1 on both, arpa_load_vs_kenlm <= 2, binary_load_vs_kenlm <= 1, build_10m_peak_gb
under the limit (4).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kenlm
import nltk.lm
import numpy as np
import torch
from nltk.lm.preprocessing import padded_everygram_pipeline

from seqlab.classical.arpa import fit_sentences, sentence_log10_probs, write_arpa
from seqlab.classical.ngram import ESTIMATORS
from seqlab.classical.ngram_scoring import score_sentences

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
ORDER = 5


def synthetic_sentences(n_tokens: int, seed: int = 0) -> list[str]:
    """A class-level random walk with Zipfian words: n-gram structure at every order."""
    rng = np.random.default_rng(seed)
    word_class = np.cumsum(rng.choice([0, 1, 2, 3, 7], size=n_tokens, p=[0.2, 0.3, 0.2, 0.2, 0.1])) % 100
    words = word_class * 100 + np.minimum(rng.zipf(1.3, size=n_tokens) - 1, 99)
    cuts = np.cumsum(rng.integers(5, 30, size=n_tokens // 5))
    names = [f"w{i}" for i in range(10_000)]
    pieces = np.split(words, cuts[cuts < n_tokens])
    return [" ".join(map(names.__getitem__, piece.tolist())) for piece in pieces if len(piece)]


def shakespeare_sentences() -> list[str] | None:
    if not SHAKESPEARE.is_file():
        return None
    return [line for line in SHAKESPEARE.read_text(encoding="utf-8").splitlines() if line.strip()]


def best_seconds(action, repeats: int) -> tuple[float, object]:
    return best_seconds_taking_turns([action], repeats)[0]


def best_seconds_taking_turns(actions: list, repeats: int) -> list[tuple[float, object]]:
    """The best wall-clock seconds of ``repeats`` runs of each action, and its result. The actions
    take turns, so a burst of other load on the machine slows every side alike."""
    best, results = [math.inf] * len(actions), [None] * len(actions)
    for _ in range(repeats):
        for i, action in enumerate(actions):
            started = time.perf_counter()
            results[i] = action()
            best[i] = min(best[i], time.perf_counter() - started)
    return list(zip(best, results))


def n_tokens(sentences: list[str]) -> int:
    """Words plus one </s> per sentence: what a sentence score predicts."""
    return sum(len(sentence.split()) + 1 for sentence in sentences)


def nltk_rates(train: list[str], held_out: list[str], train_tokens: int, score_tokens: int
               ) -> tuple[float, float, int]:
    """NLTK KneserNeyInterpolated(5) on the first ``train_tokens`` tokens: build seconds per token,
    score seconds per token (over ``score_tokens`` held-out tokens), and the tokens fitted."""
    subset, count = [], 0
    for sentence in train:
        if count >= train_tokens:
            break
        subset.append(sentence.split())
        count += len(subset[-1]) + 1
    model = nltk.lm.KneserNeyInterpolated(ORDER)
    started = time.perf_counter()
    ngrams, vocabulary = padded_everygram_pipeline(ORDER, subset)
    model.fit(ngrams, vocabulary)
    build = (time.perf_counter() - started) / count
    queries = []
    for sentence in held_out:
        words = ["<s>"] * (ORDER - 1) + sentence.split() + ["</s>"]
        queries += [(words[i], words[i - ORDER + 1: i]) for i in range(ORDER - 1, len(words))]
        if len(queries) >= score_tokens:
            break
    started = time.perf_counter()
    for word, context in queries:
        model.logscore(word, context)
    return build, (time.perf_counter() - started) / len(queries), count


def speed_row(name: str, sentences: list[str], quick: bool, out_dir: Path) -> dict[str, float]:
    """Build and score a 5-gram modified KN model on ``sentences`` against NLTK and KenLM."""
    split = int(0.9 * len(sentences))
    train, held_out = sentences[:split], sentences[split:]
    repeats, score_repeats = (2, 5) if quick else (3, 7)
    build_seconds, (model, vocabulary) = best_seconds(lambda: fit_sentences(train, order=ORDER), repeats)
    path = out_dir / f"{name}.arpa"
    write_arpa(model, vocabulary, path)
    reference = kenlm.Model(str(path))
    # The scorer's hash tables are built on first use (as kenlm.Model builds its own when it loads).
    index_seconds, _ = best_seconds(lambda: score_sentences(model, vocabulary, held_out[:1]), 1)
    (score_seconds, ours), (kenlm_seconds, theirs) = best_seconds_taking_turns(
        [lambda: score_sentences(model, vocabulary, held_out).log10_probs,
         lambda: [reference.score(sentence, bos=True, eos=True) for sentence in held_out]], score_repeats)
    nltk_build, nltk_score, nltk_tokens = nltk_rates(
        train, held_out, train_tokens=5_000 if quick else 50_000, score_tokens=60 if quick else 200)
    train_tokens, held_out_tokens = n_tokens(train), n_tokens(held_out)
    return {
        "name": name, "train_tokens": train_tokens, "ngrams": sum(len(t) for t in model.tables),
        "bytes_per_ngram": model.bytes_per_ngram(), "build_seconds": build_seconds,
        "build_vs_nltk": nltk_build * train_tokens / build_seconds, "nltk_tokens": nltk_tokens,
        "score_rate": held_out_tokens / score_seconds, "kenlm_rate": held_out_tokens / kenlm_seconds,
        "nltk_rate": 1 / nltk_score,
        "parity": float(np.abs(ours - np.array(theirs)).max()), "index_seconds": index_seconds,
    }


def perplexities(sentences: list[str]) -> list[tuple[str, float, float]]:
    """Held-out perplexity per token (words and </s>) of every estimator, 5-gram, in a closed
    vocabulary: words seen once in training are <unk> there, so <unk> is a trained word (as in
    Chen and Goodman's experiments) rather than the share of unseen-word mass each estimator
    happens to leave it."""
    split = int(0.9 * len(sentences))
    train, held_out = sentences[:split], sentences[split:]
    rows = []
    for estimator in ESTIMATORS:
        started = time.perf_counter()
        model, vocabulary = fit_sentences(train, min_count=2, order=ORDER, estimator=estimator, add_k=1.0)
        seconds = time.perf_counter() - started
        log10 = float(sentence_log10_probs(model, vocabulary, held_out).sum())
        label = "add_k (add-one)" if estimator == "add_k" else estimator
        rows.append((label, 10 ** (-log10 / n_tokens(held_out)), seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    args = parser.parse_args()
    torch.set_num_threads(1)

    shakespeare = shakespeare_sentences()
    synthetic = synthetic_sentences(1_000_000)
    corpora = [("synthetic", synthetic)]
    if shakespeare is None:
        print(f"tinyshakespeare skipped: {SHAKESPEARE} is absent")
    else:
        corpora.insert(0, ("tinyshakespeare", shakespeare))
    with tempfile.TemporaryDirectory() as out_dir:
        rows = [speed_row(name, sentences, args.quick, Path(out_dir)) for name, sentences in corpora]

    print("\n5-gram modified Kneser-Ney (one thread; NLTK fitted to the first sentences, per token)")
    header = (f"{'corpus':<16}{'train tok':>10}{'n-grams':>10}{'B/n-gram':>9}{'build s':>9}{'x NLTK':>9}"
              f"{'NLTK tok':>9}{'score tok/s':>12}{'x NLTK':>9}{'x kenlm':>9}{'|d log10|':>11}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['name']:<16}{row['train_tokens']:>10,}{row['ngrams']:>10,}{row['bytes_per_ngram']:>9.1f}"
              f"{row['build_seconds']:>9.2f}{row['build_vs_nltk']:>9.0f}{row['nltk_tokens']:>9,}"
              f"{row['score_rate']:>12,.0f}{row['score_rate'] / row['nltk_rate']:>9.0f}"
              f"{row['score_rate'] / row['kenlm_rate']:>9.2f}{row['parity']:>11.1e}")
        print(f"{'':<16}kenlm scores {row['kenlm_rate']:,.0f} tok/s, NLTK {row['nltk_rate']:,.0f} tok/s; "
              f"seqlab's scoring index built in {row['index_seconds']:.2f} s (once per model)")

    table_name, table_sentences = corpora[0]
    print(f"\nheld-out perplexity per token, {ORDER}-gram, {table_name}, closed vocabulary (words seen once "
          "are <unk>); Chen and Goodman 1998 expect modified KN best, add-one worst")
    table = perplexities(table_sentences)
    print(f"{'estimator':<22}{'perplexity':>12}{'build s':>9}")
    for label, perplexity, seconds in sorted(table, key=lambda row: row[1]):
        print(f"{label:<22}{perplexity:>12.2f}{seconds:>9.2f}")
    finite = [row for row in table if math.isfinite(row[1])]
    best, worst = min(finite, key=lambda row: row[1])[0], max(finite, key=lambda row: row[1])[0]
    print(f"best: {best}; worst of the smoothed: {worst} (mle gives unseen n-grams probability 0)")

    peers = {}
    for script in ("arpa_load.py", "ngram_scale.py"):       # ARPA loading vs kenlm; the bounded build at scale
        peers.update(script_results(Path(__file__).with_name(script), args.quick))
    headline = rows[-1]
    vs_kenlm = {row["name"]: row["score_rate"] / row["kenlm_rate"] for row in rows}
    print(f"RESULT score_vs_kenlm={min(vs_kenlm.values()):.2f} "
          f"arpa_load_vs_kenlm={peers.get('arpa_load_vs_kenlm', 'nan')} "
          f"binary_load_vs_kenlm={peers.get('binary_load_vs_kenlm', 'nan')} "
          f"build_10m_seconds={peers.get('build_10m_seconds', 'nan')} "
          f"build_10m_peak_gb={peers.get('build_10m_peak_gb', 'nan')} "
          f"build_vs_nltk={headline['build_vs_nltk']:.0f} "
          f"score_vs_nltk={headline['score_rate'] / headline['nltk_rate']:.0f} "
          f"build_seconds_5gram={headline['build_seconds']:.2f} "
          + " ".join(f"score_vs_kenlm_{name}={ratio:.2f}" for name, ratio in vs_kenlm.items()))


def script_results(script: Path, quick: bool) -> dict[str, str]:
    """Run another benchmark in its own process (its tables printed here) and return the
    key=value pairs of its RESULT line."""
    print(f"\n$ python benchmarks/{script.name}{' --quick' if quick else ''}", flush=True)
    done = subprocess.run([sys.executable, str(script), *(["--quick"] if quick else [])], capture_output=True,
                          text=True)
    print(done.stdout, end="")
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        print(f"{script.name} failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
        return {}
    return dict(item.split("=", 1) for item in lines[-1].split()[1:])


if __name__ == "__main__":
    main()
