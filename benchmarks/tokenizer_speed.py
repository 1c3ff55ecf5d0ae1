"""Tokenizer speed: encoding 500 KB of text with each kind, against a plain Python loop.

Moved here from the test suite, where a wall-clock assertion made a test fail on a busy
machine; here the speed is measured as a ratio against a peer timed in the same run.

    python benchmarks/tokenizer_speed.py [--quick]

The peer for char and word is the plainest correct encoder (a dict lookup per character or per
whitespace-separated word); bpe and unigram are reported in MB/s.
"""

from __future__ import annotations

import argparse
import re
import time

from pydoc_data.topics import topics

from seqlab.data.tokenizers import KINDS, train_tokenizer

TEXT = "".join(topics[key] for key in sorted(topics))


def best_of(repeats: int, function) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def plain_encoder(kind: str, tokenizer) -> callable:
    """A dict lookup per symbol: the plain loop seqlab's encoder is measured against."""
    vocabulary = {tokenizer.decode([i]): i for i in range(tokenizer.vocab_size)}
    if kind == "char":
        return lambda text: [vocabulary.get(character, 0) for character in text]
    word = re.compile(r"\S+")
    return lambda text: [vocabulary.get(match.group(), 0) for match in word.finditer(text)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 KB and 3 repeats")
    args = parser.parse_args()
    size, repeats = (100_000, 3) if args.quick else (500_000, 7)
    text = (TEXT * (1 + size // len(TEXT)))[:size]
    rows, ratios = [], {}
    for kind in KINDS:
        tokenizer = train_tokenizer(kind, TEXT[:200_000])
        seconds = best_of(repeats, lambda: tokenizer.encode(text))
        if kind in ("char", "word"):
            plain = plain_encoder(kind, tokenizer)
            plain_seconds = best_of(repeats, lambda: plain(text))
            ratios[kind] = plain_seconds / seconds
        rows.append((kind, size / seconds / 1e6, ratios.get(kind)))
    print(f"encoding {size:,} characters, best of {repeats}")
    print("| kind | MB/s | speed vs a plain dict loop |\n|---|---|---|")
    for kind, rate, ratio in rows:
        print(f"| {kind} | {rate:.1f} | {'-' if ratio is None else f'{ratio:.2f}x'} |")
    print("RESULT " + " ".join(f"{kind}_vs_plain={ratio:.2f}" for kind, ratio in ratios.items())
          + " " + " ".join(f"{kind}_mb_per_s={rate:.1f}" for kind, rate, _ in rows))


if __name__ == "__main__":
    main()
