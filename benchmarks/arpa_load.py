"""Loading an ARPA file: seqlab's vectorised reader and binary cache against ``kenlm.Model``.

    python benchmarks/arpa_load.py [--quick]

A 5-gram interpolated modified Kneser-Ney model is fitted to tinyshakespeare's lines (one
sentence per line, as benchmarks/ngram.py fits them; --quick takes the first 10,000 lines) and
written as an ARPA file. Timed, taking turns, best of three (two with --quick), one thread:

- kenlm: ``kenlm.Model(arpa)`` (its default probing structure);
- seqlab: ``read_arpa(arpa)``, the vectorised reader (the line-by-line reference is timed once);
- seqlab binary: ``load_binary`` of the cache ``save_binary`` wrote.

One more read under cProfile splits the vectorised reader's time into its stages (cumulative
seconds of its functions, profiler overhead included). KenLM's own binary format needs its
``build_binary`` program; when it is not on the PATH the
binary comparison is against kenlm loading the ARPA file, and the table says so. The last line
is ``RESULT arpa_load_vs_kenlm=<seqlab s / kenlm s> binary_load_vs_kenlm=<x>`` (lower is faster;
the issue's targets are <= 2 and <= 1).
"""

from __future__ import annotations

import argparse
import cProfile
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
from seqlab.classical.ngram_cache import load_binary, save_binary

from ngram import SHAKESPEARE, best_seconds_taking_turns, shakespeare_sentences   # benchmarks/ngram.py
ORDER = 5
STAGES = {"_parse_fast": "parse (all below)", "parse_decimals": "  numbers",
          "_find_words": "  words", "_assemble": "assemble tables"}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 lines, best of two")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = shakespeare_sentences()
    if lines is None:
        raise SystemExit(f"{SHAKESPEARE} is missing: see ../shared/data/README.md")
    if args.quick:
        lines = lines[:10_000]
    repeats = 2 if args.quick else 3
    with tempfile.TemporaryDirectory() as directory:
        arpa, cache = Path(directory) / "model.arpa", Path(directory) / "model.ngram"
        model, vocabulary = fit_sentences(lines, order=ORDER)
        write_arpa(model, vocabulary, arpa)
        save_binary(*read_arpa(arpa), cache)
        build_binary = shutil.which("build_binary")
        actions = {"kenlm arpa": lambda: kenlm.Model(str(arpa)), "seqlab arpa": lambda: read_arpa(arpa),
                   "seqlab binary": lambda: load_binary(cache)}
        if build_binary:
            kenlm_binary = Path(directory) / "model.klm"
            subprocess.run([build_binary, str(arpa), str(kenlm_binary)], check=True, capture_output=True)
            actions["kenlm binary"] = lambda: kenlm.Model(str(kenlm_binary))
        started = time.perf_counter()
        read_arpa_reference(arpa)
        reference_seconds = time.perf_counter() - started
        best = dict(zip(actions, (seconds for seconds, _ in best_seconds_taking_turns(list(actions.values()),
                                                                                     repeats))))
        print(f"{len(lines)} lines, {ORDER}-gram: {[len(t) for t in model.tables]} n-grams; ARPA "
              f"{os.path.getsize(arpa) / 1e6:.1f} MB, cache {os.path.getsize(cache) / 1e6:.1f} MB; "
              f"load average {os.getloadavg()[0]:.2f}")
        print(f"{'load':<28}{'seconds':>10}")
        for name, seconds in best.items():
            print(f"{name:<28}{seconds:>10.3f}")
        print(f"{'seqlab reference (once)':<28}{reference_seconds:>10.3f}")
        stages = stage_seconds(arpa)
        print("seqlab arpa by stage (one profiled run):")
        for name in ["_parse_fast", "tokens and lines", "parse_decimals", "_find_words", "_assemble"]:
            print(f"  {STAGES.get(name, '  ' + name):<26}{stages[name]:>10.3f}")
        binary_peer = "kenlm binary" if build_binary else "kenlm arpa"
        if not build_binary:
            print("kenlm's build_binary is not on the PATH: the binary cache is compared with kenlm loading the ARPA file")
        print(f"RESULT arpa_load_vs_kenlm={best['seqlab arpa'] / best['kenlm arpa']:.2f} "
              f"binary_load_vs_kenlm={best['seqlab binary'] / best[binary_peer]:.2f}")


if __name__ == "__main__":
    main()
