"""The keys and the hash table of the HMM tagger's unseen-word lexicon (Brants 2000, sec. 2.3).

The tagger stores tag counts of word endings (marked with the word's case, as TnT keeps
capitalised and other words apart) and of case-folded words. Their keys live in a fixed-size
array of 63-bit fingerprints with open addressing (``SuffixTable``), so the lexicon is a pair
of buffers in the tagger's ``state_dict``: no Python dictionary is saved.
"""

from __future__ import annotations

import hashlib

from torch import Tensor

from seqlab.errors import ConfigError


def is_capitalised(word: str) -> bool:
    """TnT's capitalisation flag: the word's first character is an upper-case letter."""
    return word[:1].isupper()


def ending_keys(word: str, suffix_length: int) -> list[str]:
    """The keys of the endings of ``word`` of 0, 1, ..., min(suffix_length, len(word)) characters,
    each marked with the word's case (TnT keeps capitalised and other words apart)."""
    case = "C:" if is_capitalised(word) else "l:"
    return [case + word[len(word) - i:] for i in range(min(suffix_length, len(word)) + 1)]


def folded_key(word: str) -> str:
    """The key of ``word`` in lower case, shared by all its case variants."""
    return "F:" + word.lower()


def fingerprint(key: str) -> int:
    """A stable 63-bit non-zero hash of ``key`` (blake2b; 0 marks an empty slot)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") & (2 ** 63 - 1)) or 1


class SuffixTable:
    """Open addressing with linear probing over a fingerprint array ``keys`` (n_buckets,).

    Each distinct key (an ending with its case, or a case-folded word) owns one slot; a key whose
    slot is taken probes on to the next free one, so two keys never share counts (unless their
    63-bit fingerprints coincide, odds about n^2 / 2^64).
    """

    def __init__(self, keys: Tensor):
        self.keys = keys.cpu().numpy()
        self.n_buckets = len(self.keys)

    def slot(self, key: str, claim: bool = False) -> int:
        """The slot holding ``key``; if it has none, -1, or with ``claim`` a free slot now its.

        Raises:
            ConfigError: ``claim`` on a full table.
        """
        hashed = fingerprint(key)
        slot = hashed % self.n_buckets
        for _ in range(self.n_buckets):
            held = int(self.keys[slot])
            if held == hashed:
                return slot
            if held == 0:
                if not claim:
                    return -1
                self.keys[slot] = hashed
                return slot
            slot = (slot + 1) % self.n_buckets
        if not claim:
            return -1
        raise ConfigError(f"HMMTaggerConfig.n_suffix_buckets = {self.n_buckets} is too small for the endings "
                          "and case-folded forms of the training words; raise it")
