"""Loading an n-gram model: seqlab's ARPA reader and binary cache against ``kenlm.Model``.

    python benchmarks/arpa_load.py [--quick] [--build-binary PATH]

A 5-gram interpolated modified Kneser-Ney model is fitted to tinyshakespeare's lines (one
sentence per line, as benchmarks/ngram.py fits them) but the last 1,000, which are held out
(--quick fits the first 10,000 lines), and written as an ARPA file. One thread; the page cache is
warm (every file was just written or read).

ARPA, timed taking turns, best of three (two with --quick):

- kenlm: ``kenlm.Model(arpa)`` (its default probing structure);
- seqlab: ``read_arpa(arpa)``, the vectorised reader (the line-by-line reference is timed once).

One more read under cProfile splits the vectorised reader's time into its stages (cumulative
seconds of its functions, profiler overhead included).

Binary, timed taking turns, best of seven (five with --quick): seqlab's cache (``save_binary`` of
the model read back from the ARPA file) against KenLM's own binary files, which its
``build_binary`` program writes from the same ARPA file: ``probing`` (hash tables) and ``trie``
(sorted arrays; built with ``-S 256M -T DIR/``, so that sorting takes 256 MB, not 80% of the memory).
Their sizes are printed beside the ARPA file's and the cache's. The cache is opened two ways:

- seqlab scorer: ``load_scorer(cache)``, for scoring only, as ``kenlm.Model`` opens its binary
  (the file mapped, the scorer's tables and the vocabulary taken; no model built);
- seqlab model: ``load_binary(cache)``, the ``NGramLM`` as well (what the torch path needs).

Two measures:

- load: the above against ``kenlm.Model(path, config)`` with the default load method
  (``POPULATE_OR_READ``: mmap with MAP_POPULATE, the pages mapped, not copied) and with
  ``kenlm.LoadMethod.READ`` (malloc and read: the fair peer of a load that reads the data);
- ready to query: load, then score the 1,000 held-out sentences: ``scorer.score(lines)``, or
  ``score_sentences(model, vocabulary, lines)`` (seqlab.classical.ngram_scoring), against the
  kenlm load then ``[m.score(s, bos=True, eos=True) for s in lines]``. The checks a load defers
  (ngram_cache's docstring) are made here or never, in both.

Every kenlm model's scores of the held-out sentences must agree with seqlab's to 1e-4 (log10 per
sentence; the largest difference is printed, and the script stops if one is larger).

KenLM's Python wheel (``pip install kenlm``) does not ship ``build_binary``. It is found as
``--build-binary PATH``, else the environment variable KENLM_BUILD_BINARY, else ``build_binary``
on the PATH. To build it from kenlm 0.3.0's sources without boost (the way of kenlm's
compile_query_only.sh; ``--no-build-isolation`` keeps pip from building cmake from source just
to read the sdist's metadata, a quarter of an hour on these machines):

    pip download kenlm==0.3.0 --no-deps --no-binary :all: --no-build-isolation
    tar xzf kenlm-0.3.0.tar.gz && cd kenlm-0.3.0
    FLAGS="-I. -O3 -DNDEBUG -DKENLM_MAX_ORDER=6 -DHAVE_CLOCKGETTIME -std=c++11"
    SRCS=$(ls util/double-conversion/*.cc util/*.cc lm/*.cc | grep -v -e 'main\\.cc$' -e 'test\\.cc$')
    g++ $FLAGS lm/build_binary_main.cc $SRCS -o build_binary -lrt -lpthread

Without it KenLM's binary formats are skipped (one line says so) and the cache is compared with
kenlm loading the ARPA file only. The last line is ``RESULT key=value ...``; every value is seqlab's
seconds / kenlm's seconds, so lower is faster and above 1 means seqlab is slower (the issue's
targets: arpa_load_vs_kenlm <= 2, binary_load_vs_kenlm <= 1):

- arpa_load_vs_kenlm: ``read_arpa`` / ``kenlm.Model(arpa)``;
- binary_load_vs_kenlm: ready to query, seqlab scorer / kenlm probing (default load); the same
  figure as binary_ready_vs_kenlm_probing, and nan without build_binary;
- binary_open_vs_kenlm_probing: load only, seqlab scorer / kenlm probing (default load);
- binary_ready_vs_kenlm_probing_read, binary_ready_vs_kenlm_trie: ready to query, seqlab scorer
  against kenlm probing loaded by READ and kenlm trie (default load);
- model_ready_vs_kenlm_probing: ready to query, seqlab model / kenlm probing;
- binary_load_vs_kenlm_probing_read: load only, seqlab model / kenlm probing loaded by READ;
- binary_load_vs_kenlm_arpa: load only, seqlab model / ``kenlm.Model(arpa)`` (what
  binary_load_vs_kenlm meant before KenLM's binary formats were compared).

The values that need build_binary are nan without it.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import os
import pstats
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import kenlm
import torch

from seqlab.classical import arpa_reader, decimals
from seqlab.classical.arpa import fit_sentences, read_arpa, write_arpa
from seqlab.classical.arpa_reader import read_arpa_reference
from seqlab.classical.ngram_cache import load_binary, load_scorer, save_binary
from seqlab.classical.ngram_scoring import score_sentences

from ngram import SHAKESPEARE, best_seconds_taking_turns, shakespeare_sentences   # benchmarks/ngram.py
ORDER = 5
HELD_OUT = 1_000
TOLERANCE = 1e-4                      # log10 per sentence, seqlab against every kenlm model
STAGES = {"_parse_fast": "parse (all below)", "parse_decimals": "  numbers",
          "_find_words": "  words", "_assemble": "assemble tables"}
KENLM_FORMATS = ("probing", "trie")
LOAD_METHODS = {"": None, " READ": "READ"}      # row-name suffix -> kenlm.LoadMethod (None: the default)


def stage_seconds(arpa: Path) -> dict[str, float]:
    """Cumulative seconds of the reader's stages in one profiled ``read_arpa``."""
    profiler = cProfile.Profile()
    profiler.runcall(read_arpa, arpa)
    seconds = {name: 0.0 for name in STAGES}
    for (file_name, _, function), row in pstats.Stats(profiler).stats.items():
        if function in seconds and file_name in (arpa_reader.__file__, decimals.__file__):
            seconds[function] += row[3]
    seconds["tokens and lines"] = seconds["_parse_fast"] - seconds["parse_decimals"] - seconds["_find_words"]
    return seconds


def find_build_binary(given: str | None) -> str | None:
    """KenLM's ``build_binary``: ``--build-binary``, else $KENLM_BUILD_BINARY, else the PATH's."""
    for source, path in (("--build-binary", given), ("KENLM_BUILD_BINARY", os.environ.get("KENLM_BUILD_BINARY"))):
        if path:
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                raise SystemExit(f"{source}={path} is not an executable file: give kenlm's build_binary "
                                 "(how to build it: this script's docstring)")
            return path
    return shutil.which("build_binary")


def build_kenlm_binaries(build_binary: str, arpa: Path, directory: Path) -> dict[str, tuple[Path, float]]:
    """KenLM's probing and trie files of ``arpa``, with the seconds ``build_binary`` took for each."""
    built = {}
    for kind in KENLM_FORMATS:
        output = directory / f"model.{kind}"
        sort_options = ["-S", "256M", "-T", f"{directory}/"] if kind == "trie" else []
        started = time.perf_counter()
        done = subprocess.run([build_binary, *sort_options, kind, str(arpa), str(output)],
                              capture_output=True, text=True)
        if done.returncode:
            reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise SystemExit(f"{build_binary} {kind} failed: {reason}")
        built[kind] = output, time.perf_counter() - started
    return built


def kenlm_config(load_method: str | None) -> kenlm.Config:
    config = kenlm.Config()
    config.show_progress = False
    if load_method is not None:
        config.load_method = getattr(kenlm.LoadMethod, load_method)
    return config


def kenlm_scores(model: kenlm.Model, sentences: list[str]) -> list[float]:
    return [model.score(sentence, bos=True, eos=True) for sentence in sentences]


def scorer_ready(cache: Path, sentences: list[str]) -> list[float]:
    """Open the cache for scoring and score the sentences: seqlab's load + first score."""
    return load_scorer(cache).score(sentences).log10_probs.tolist()


def model_ready(cache: Path, sentences: list[str]) -> list[float]:
    """Load the cache's model and score the sentences."""
    model, vocabulary = load_binary(cache)
    return score_sentences(model, vocabulary, sentences).log10_probs.tolist()


def kenlm_ready(path: Path, load_method: str | None, sentences: list[str]) -> list[float]:
    return kenlm_scores(kenlm.Model(str(path), kenlm_config(load_method)), sentences)


def ratio(seconds: dict[str, float], seqlab_name: str, kenlm_name: str) -> float:
    """A seqlab row's seconds / a kenlm row's (nan when that row was not timed)."""
    return seconds[seqlab_name] / seconds[kenlm_name] if kenlm_name in seconds else math.nan


def largest_difference(scores: list[float], expected: list[float]) -> float:
    return max(abs(score - want) for score, want in zip(scores, expected, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 lines, best of two (binary: of five)")
    parser.add_argument("--build-binary", metavar="PATH",
                        help="kenlm's build_binary (default: $KENLM_BUILD_BINARY, else build_binary on the PATH)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    build_binary = find_build_binary(args.build_binary)
    sentences = shakespeare_sentences()
    if sentences is None:
        raise SystemExit(f"{SHAKESPEARE} is missing: see ../shared/data/README.md")
    lines, held_out = sentences[:-HELD_OUT], sentences[-HELD_OUT:]
    if args.quick:
        lines = lines[:10_000]
    repeats, binary_repeats = (2, 5) if args.quick else (3, 7)
    with tempfile.TemporaryDirectory() as directory:
        arpa, cache = Path(directory) / "model.arpa", Path(directory) / "model.safetensors"
        model, vocabulary = fit_sentences(lines, order=ORDER)
        write_arpa(model, vocabulary, arpa)
        save_binary(*read_arpa(arpa), cache)
        kenlm_binaries = build_kenlm_binaries(build_binary, arpa, Path(directory)) if build_binary else {}

        actions = {"kenlm arpa": lambda: kenlm.Model(str(arpa), kenlm_config(None)),
                   "seqlab arpa": lambda: read_arpa(arpa)}
        started = time.perf_counter()
        read_arpa_reference(arpa)
        reference_seconds = time.perf_counter() - started
        best = {name: seconds for name, (seconds, _) in
                zip(actions, best_seconds_taking_turns(list(actions.values()), repeats))}
        kenlm_arpa_model = kenlm.Model(str(arpa), kenlm_config(None))

        expected = model_ready(cache, held_out)       # also compiles (or loads) the numba scorer, untimed
        if scorer_ready(cache, held_out) != expected:
            raise SystemExit("load_scorer and load_binary score the held-out lines differently")
        loads = {"seqlab scorer": lambda: load_scorer(cache), "seqlab model": lambda: load_binary(cache)}
        ready = {"seqlab scorer": lambda: scorer_ready(cache, held_out),
                 "seqlab model": lambda: model_ready(cache, held_out)}
        for kind, (path, _) in kenlm_binaries.items():
            for suffix, method in LOAD_METHODS.items():
                loads[f"kenlm {kind}{suffix}"] = lambda path=path, method=method: kenlm.Model(str(path),
                                                                                              kenlm_config(method))
                ready[f"kenlm {kind}{suffix}"] = lambda path=path, method=method: kenlm_ready(path, method, held_out)
        load_timed = best_seconds_taking_turns(list(loads.values()), binary_repeats)
        best.update({name: seconds for name, (seconds, _) in zip(loads, load_timed)})
        ready_timed = best_seconds_taking_turns(list(ready.values()), binary_repeats)
        best_ready = {name: seconds for name, (seconds, _) in zip(ready, ready_timed)}

        differences = {"kenlm arpa": largest_difference(kenlm_scores(kenlm_arpa_model, held_out), expected)}
        differences.update({name: largest_difference(scores, expected)
                            for name, (_, scores) in zip(ready, ready_timed) if name.startswith("kenlm")})
        sizes = {"ARPA": arpa, "cache": cache, **{f"kenlm {kind}": path for kind, (path, _) in kenlm_binaries.items()}}
        print(f"{len(lines)} lines, {ORDER}-gram: {[len(t) for t in model.tables]} n-grams; "
              + ", ".join(f"{name} {os.path.getsize(path) / 1e6:.1f} MB" for name, path in sizes.items())
              + (f" (build_binary {', '.join(f'{kind} {s:.2f} s' for kind, (_, s) in kenlm_binaries.items())})"
                 if kenlm_binaries else "") + f"; load average {os.getloadavg()[0]:.2f}")
        print(f"{'milliseconds':<28}{'load':>10}{'ready':>10}   (ready: load, then score {len(held_out)} held-out lines)")
        for name, seconds in best.items():
            ready_column = f"{1e3 * best_ready[name]:>10.2f}" if name in best_ready else ""
            print(f"{name:<28}{1e3 * seconds:>10.2f}{ready_column}")
        print(f"{'seqlab reference (once)':<28}{1e3 * reference_seconds:>10.0f}")
        stages = stage_seconds(arpa)
        print("seqlab arpa by stage (one profiled run):")
        for name in ["_parse_fast", "tokens and lines", "parse_decimals", "_find_words", "_assemble"]:
            print(f"  {STAGES.get(name, '  ' + name):<26}{stages[name]:>10.3f}")
        print(f"largest |kenlm - seqlab| log10 p(sentence) over {len(held_out)} held-out lines: "
              + ", ".join(f"{name} {difference:.1e}" for name, difference in differences.items()))
        if max(differences.values()) > TOLERANCE:
            raise SystemExit(f"kenlm and seqlab disagree by more than {TOLERANCE} on a held-out sentence: "
                             "the timings compare different models")
        if not build_binary:
            print("kenlm's build_binary was not found (--build-binary PATH, $KENLM_BUILD_BINARY, PATH; kenlm's wheel "
                  "does not ship it): build it as this script's docstring says to compare its binary formats")

        results = {"arpa_load_vs_kenlm": best["seqlab arpa"] / best["kenlm arpa"],
                   "binary_load_vs_kenlm": ratio(best_ready, "seqlab scorer", "kenlm probing"),
                   "binary_open_vs_kenlm_probing": ratio(best, "seqlab scorer", "kenlm probing"),
                   "binary_ready_vs_kenlm_probing": ratio(best_ready, "seqlab scorer", "kenlm probing"),
                   "binary_ready_vs_kenlm_probing_read": ratio(best_ready, "seqlab scorer", "kenlm probing READ"),
                   "binary_ready_vs_kenlm_trie": ratio(best_ready, "seqlab scorer", "kenlm trie"),
                   "model_ready_vs_kenlm_probing": ratio(best_ready, "seqlab model", "kenlm probing"),
                   "binary_load_vs_kenlm_probing_read": ratio(best, "seqlab model", "kenlm probing READ"),
                   "binary_load_vs_kenlm_arpa": ratio(best, "seqlab model", "kenlm arpa")}
        print("RESULT " + " ".join(f"{key}={value:.2f}" for key, value in results.items()))


if __name__ == "__main__":
    main()
