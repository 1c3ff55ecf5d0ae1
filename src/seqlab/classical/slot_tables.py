"""Hash tables of int64 keys for n-gram scoring, and words to ids through one.

``SlotTable``: distinct int64 keys and one int64 value each in a linear-probing hash table
(Knuth, TAOCP vol. 3, 6.4) of 16-byte slots at load 1/2: a lookup reads one cache line where a
key table and value arrays take three. KenLM's ``probing`` structure is the same idea (Heafield
2011, sec. 3.1). ``WordTable``: the vocabulary in one, keyed by the bytes of its words.

``encode_sentences``: the ids of the words of many sentences at once. The sentences are joined by
NUL bytes into one UTF-8 buffer; word boundaries are found bytewise (``_split_words``: ASCII
whitespace, which is all ``str.split`` splits on unless the text holds Unicode spaces). A word of
at most 8 bytes *is* its key: the little-endian 64-bit word of its bytes; a word of 9 to 16 bytes
is keyed by a hash of its two 64-bit words and confirmed on both, so the lookup is exact. Longer
words go through a dictionary of the vocabulary's long words (``WordTable.long_words``), and text
that holds Unicode spaces or NUL bytes through the vocabulary's dictionary (``str.split`` per
sentence).

The lookups are compiled by numba, in rounds that read one slot of every pending query before
settling any (``_find_slots``): independent reads, which the memory system serves at once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from seqlab.classical.compiled import compiled
from seqlab.errors import CheckpointError, ConfigError

if TYPE_CHECKING:                      # arpa imports nothing from here; only the annotations need it
    from seqlab.classical.arpa import WordVocabulary


EMPTY = -1                                   # an empty slot's key (no key is -1)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)       # 2^64 / golden ratio: Fibonacci hashing's multiplier
MIX_HIGH = np.uint64(0xC2B2AE3D27D4EB4F)
HASH_MASK = np.uint64(2**64 - 256)                # a hashed key's lowest byte is zero
SLOTS_PER_KEY = 2                  # a table's size per key: load 1/2
WORD_BYTES = 16                              # words up to this long are their own key
LOW_BYTES_MASK = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [2**64 - 1], dtype=np.uint64)
# Bytes at which str.split() splits an ASCII text, and NUL, which joins the sentences.
BOUNDARY = np.zeros(256, dtype=bool)
BOUNDARY[[0, 9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True
UNICODE_SPACE = re.compile(r"[^\S\x00-\x7f]")     # whitespace outside ASCII: \x85, \xa0, \u2000 ...


def encode_sentences(words: WordTable, vocabulary: WordVocabulary, sentences: Sequence[str]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The id of every word of every sentence, in order (N,) int64 (``<unk>`` 0 for unknown
    words), and the number of words of each sentence (S,) int64: what ``[s.split() for s in
    sentences]`` and ``vocabulary.index`` give, bytewise where the text allows it."""
    text = "\0".join(sentences)
    if not words.usable or not text.isascii() and UNICODE_SPACE.search(text):
        return _encode_by_dictionary(vocabulary, sentences)
    if not sentences:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    raw = text.encode("utf-8", "surrogatepass")
    data = np.frombuffer(raw, dtype=np.uint8)
    keys, lengths = np.empty(len(raw) // 2 + 1, dtype=np.int64), np.zeros(len(sentences), dtype=np.int64)
    medium_words = np.empty((len(raw) // 10 + 1, 3), dtype=np.uint64)        # (index, low, high)
    long_words = np.empty((len(raw) // (WORD_BYTES + 2) + 1, 3), dtype=np.int64)    # (index, start, stop)
    n_words, n_medium, n_long = _split_words(data, BOUNDARY, words.mix_high, keys, lengths, medium_words, long_words)
    if n_words < 0:                                       # a sentence holds NUL
        return _encode_by_dictionary(vocabulary, sentences)
    word_ids = words.table.slots[:, 1].take(words.table.find(keys[:n_words]))      # a miss reads 0
    if n_words and not 0 <= word_ids.min() <= word_ids.max() < len(vocabulary):
        bad = int(word_ids[(word_ids < 0) | (word_ids >= len(vocabulary))][0])
        raise CheckpointError(f"the word table gives a word the id {bad}, outside the vocabulary's {len(vocabulary)} "
                              "words: the n-gram cache it was loaded from is corrupt (or was rewritten after "
                              "loading); rebuild it")
    if n_medium:                                          # a hashed key's hit, confirmed on both halves
        index, low, high = medium_words[:n_medium].T
        index = index.astype(np.int64)
        found = word_ids.take(index)
        word_ids[index] = np.where((words.low.take(found) == low) & (words.high.take(found) == high), found, 0)
    if n_long:
        index = words.long_words
        word_ids[long_words[:n_long, 0]] = [index.get(raw[start:stop].decode("utf-8", "surrogatepass"), 0)
                                            for start, stop in long_words[:n_long, 1:].tolist()]
    return word_ids, lengths


@compiled
def _split_words(data, boundary, mix_high, keys, lengths, medium_words, long_words):
    """Split ``data`` (the sentences' UTF-8 joined by NUL) at the bytes ``boundary`` marks: ``keys``
    receives each word's ``WordTable`` key (-1, no word's, for a word longer than 16 bytes),
    ``lengths`` the words of each sentence, ``medium_words`` the (index, low, high) of each word of
    9 to 16 bytes (its hit is to be confirmed), ``long_words`` the (index, start, stop) of each
    longer one (the dictionary's to look up). Returns the numbers of words, medium and long words;
    (-1, -1, -1) if ``data`` holds more NULs than ``lengths`` has sentences less one (a sentence
    holds a NUL)."""
    n_words, n_medium, n_long, sentence, i, n = 0, 0, 0, 0, 0, len(data)
    while i < n:
        byte = data[i]
        if byte == 0:
            sentence += 1
            if sentence >= len(lengths):
                return -1, -1, -1
            i += 1
            continue
        if boundary[byte]:
            i += 1
            continue
        start = i
        while i < n and not boundary[data[i]]:
            i += 1
        length, low, high, key = i - start, np.uint64(0), np.uint64(0), EMPTY
        for b in range(min(length, 8)):
            low |= np.uint64(data[start + b]) << np.uint64(8 * b)
        for b in range(8, min(length, WORD_BYTES)):
            high |= np.uint64(data[start + b]) << np.uint64(8 * (b - 8))
        if length <= 8:
            key = np.int64(low)
        elif length <= WORD_BYTES:
            key = np.int64((low * GOLDEN ^ high * mix_high) & HASH_MASK)
            medium_words[n_medium, 0], medium_words[n_medium, 1], medium_words[n_medium, 2] = n_words, low, high
            n_medium += 1
        else:
            long_words[n_long, 0], long_words[n_long, 1], long_words[n_long, 2] = n_words, start, i
            n_long += 1
        keys[n_words] = key
        n_words += 1
        lengths[sentence] += 1
    if sentence != len(lengths) - 1:
        return -1, -1, -1
    return n_words, n_medium, n_long


def _encode_by_dictionary(vocabulary: WordVocabulary, sentences: Sequence[str]
                          ) -> tuple[np.ndarray, np.ndarray]:
    split = [sentence.split() for sentence in sentences]
    index = vocabulary.index                                # unknown words (and a literal <s>) are 0
    ids = np.fromiter((index[word] for words in split for word in words), dtype=np.int64)
    return ids, np.fromiter(map(len, split), dtype=np.int64, count=len(split))


class WordTable:
    """The vocabulary in one hash table keyed by the bytes of its words (a ``SlotTable`` whose rows
    hold the word ids), for words of at most 16 UTF-8 bytes and no NUL byte.

    A word is (``low``, ``high``): its first and second 8 bytes as little-endian uint64, zero past
    its end; as words hold no NUL byte, equal pairs are equal words. A word of at most 8 bytes is
    keyed by ``low`` itself, exactly; its lowest byte (the word's first) is not zero. A longer one
    is keyed by a hash of the pair with its lowest byte cleared, so it never meets a short word's
    key, and every hit is confirmed on the pair. Other words get keys no query reaches unconfirmed:
    those longer than 16 bytes are looked up by their text in ``long_words`` (word -> id). Should
    two keys coincide, ``usable`` is false and words go through the vocabulary's dictionary.
    """

    def __init__(self, words: Sequence[str]):
        encoded = [word.encode("utf-8", "surrogatepass") for word in words]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        data = np.frombuffer(b"".join(encoded) + bytes(WORD_BYTES + 8), dtype=np.uint8)
        starts = np.cumsum(lengths) - lengths
        has_nul = np.fromiter((b"\0" in word for word in encoded), dtype=bool, count=len(encoded))
        low, high = _word_halves(data, starts, lengths)
        short = (lengths <= 8) & ~has_nul
        medium = (lengths > 8) & (lengths <= WORD_BYTES) & ~has_nul
        keys = np.where(short, low, np.arange(len(encoded), dtype=np.uint64) << np.uint64(8))
        self.mix_high = MIX_HIGH                    # the hash's second multiplier (tests vary it)
        keys[medium] = _word_hash(low[medium], high[medium], self.mix_high)
        keys = keys.view(np.int64)                  # (no word's key is -1: 0xff is in no UTF-8 text)
        self.usable = len(np.unique(keys)) == len(keys)
        ids = np.arange(len(encoded), dtype=np.int64)
        kept = len(keys) if self.usable else 0       # ids are (usually) in order of frequency
        self.table = SlotTable(keys[:kept], ids[:kept], priority=-ids[:kept])
        # the pair each medium word's hit is confirmed on; zero (no query's) for every other word
        self.low, self.high = np.where(medium, low, 0), np.where(medium, high, 0)
        long_ids = np.flatnonzero(lengths > WORD_BYTES).tolist()
        self.long_words = {words[i]: i for i in long_ids}    # word -> id of those looked up by their text

    def short_word_id(self, word: str) -> int | None:
        """The id the table gives ``word``, a word of at most 8 UTF-8 bytes (0 if it holds none);
        None when the table is not ``usable``."""
        key = int.from_bytes(word.encode("utf-8"), "little")
        return int(self.table.slots[self.table.find(np.array([key], dtype=np.int64))[0], 1]) if self.usable else None

    @classmethod
    def from_arrays(cls, table: SlotTable, low: np.ndarray, high: np.ndarray, long_words: dict[str, int],
                    usable: bool) -> WordTable:
        """A table built before (``NGramScorer.arrays``)."""
        words = object.__new__(cls)
        words.table, words.low, words.high, words.long_words, words.usable = table, low, high, long_words, usable
        words.mix_high = MIX_HIGH
        return words


def _word_halves(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first and second 8 bytes of each word as uint64, masked to the word's length."""
    unaligned = np.ndarray((len(data) - 7,), dtype=np.uint64, buffer=data, strides=(1,))   # any offset
    low = unaligned[starts] & LOW_BYTES_MASK[np.minimum(lengths, 8)]
    high = unaligned[starts + 8] & LOW_BYTES_MASK[np.clip(lengths - 8, 0, 8)]
    return low, high


def _word_hash(low: np.ndarray, high: np.ndarray, mix_high: np.uint64) -> np.ndarray:
    """A 56-bit mix of a word's two halves, times 256 (collisions are resolved by comparing both);
    ``_find_words`` computes the same."""
    return (low * GOLDEN ^ high * mix_high) & HASH_MASK


class SlotTable:
    """Distinct int64 keys and one int64 value each (an order's n-grams and their ln p* and ln b
    as two float32; or the vocabulary's word keys and ids) in a linear-probing hash table of
    ``size = 2 N`` slots (load 1/2), each one 16-byte row (key, value): a lookup reads one cache
    line where a key table and value arrays take three.

    A key's home slot is ``floor(h * size / 2^32)`` with h the top 32 bits of ``key * GOLDEN mod
    2^64`` (Fibonacci hashing, Knuth, TAOCP vol. 3, 6.4; scaled by a multiplication, not a modulo,
    so the table may have any size); the key lives there or after it (wrapping around), past
    occupied slots only, at most ``max_displacement`` slots on. A lookup compares the slot's key
    with the query and stops at the key, at an empty slot (key -1), or after that many slots, so
    every answer is exact.

    Args:
        keys: (N,) distinct int64, in any order, none -1.
        values: (N,) int64.
        priority: (N,) how often each key is expected to be queried (e.g. minus a word's
            frequency rank): of the keys with one home slot, the one of highest priority takes it,
            and is found at the first read. (For n-grams, whose queries are mostly misses,
            sorting costs more than it saves.)
    Attributes:
        slots: (size + 1, 2) int64 rows, the last one (key -1, value 0) never used: ``slots[-1]``.
        slot_of_entry: (N,) int64 the slot of each key.
    """

    def __init__(self, keys: np.ndarray, values: np.ndarray, priority: np.ndarray | None = None):
        self.size = max(int(SLOTS_PER_KEY * len(keys)), 16)
        if self.size >= 2**32:
            raise ConfigError(f"{len(keys):,} keys are more than one hash table holds (2^31)")
        self.slots = np.zeros((self.size + 1, 2), dtype=np.int64)     # and a last row, which a miss
        self.slots[:, 0] = EMPTY                                      # (-1) reads: key -1, value 0
        home = _home(keys.astype(np.int64, copy=False), self.size)
        self.slot_of_entry = np.empty(len(keys), dtype=np.int64)
        owner = np.full(self.size, EMPTY, dtype=np.int64)
        # in order of priority, so that of the keys aiming at a free slot the last, the most queried, wins
        pending = np.argsort(priority, kind="stable") if priority is not None else np.arange(len(keys))
        displacement = np.zeros(len(keys), dtype=np.int64)
        self.max_displacement = 0
        while len(pending):                          # every pending key tries its next slot at once
            slot = (home[pending] + displacement) % self.size
            free = np.flatnonzero(owner[slot] == EMPTY)
            owner[slot[free]] = pending[free]                     # one of the keys aiming at a slot wins
            won = np.zeros(len(pending), dtype=bool)
            won[free] = owner[slot[free]] == pending[free]
            self.slot_of_entry[pending[won]] = slot[won]
            self.max_displacement = max(self.max_displacement, int(displacement[won].max(initial=0)))
            pending, displacement = pending[~won], displacement[~won] + 1
        self.slots[self.slot_of_entry, 0] = keys
        self.slots[self.slot_of_entry, 1] = values

    @classmethod
    def from_slots(cls, slots: np.ndarray, max_displacement: int) -> SlotTable:
        """A table built before: its ``slots`` ((size + 1, 2) int64) and ``max_displacement``."""
        table = object.__new__(cls)
        table.slots, table.size, table.max_displacement = slots, len(slots) - 1, max_displacement
        return table

    def find(self, queries: np.ndarray) -> np.ndarray:
        """(M,) int64 the slot of each query, ``-1`` where it is not stored."""
        return _find_slots(self.slots, self.size, self.max_displacement, queries.astype(np.int64, copy=False))


def _home(keys: np.ndarray, size: int) -> np.ndarray:
    """Each key's home slot in a table of ``size`` slots (``_find_slot`` computes the same)."""
    high = (keys.view(np.uint64) * GOLDEN) >> np.uint64(32)
    return ((high * np.uint64(size)) >> np.uint64(32)).view(np.int64)


@compiled
def _find_slots(slots, size, max_displacement, queries):
    """``SlotTable.find``: the slot of each query, -1 where it is not stored (or the query is -1,
    no key), in rounds that read one slot of every pending query at once (see
    ``_score_sentences``)."""
    found = np.full(len(queries), -1, dtype=np.int64)
    pending = np.empty(len(queries), dtype=np.int64)
    slot, read = np.empty(len(queries), dtype=np.int64), np.empty(len(queries), dtype=np.int64)
    n_pending, displacement = 0, 0
    for i in range(len(queries)):
        pending[n_pending], slot[n_pending] = i, _home_slot(queries[i], size)
        n_pending += queries[i] != EMPTY
    while n_pending > 0:
        for i in range(n_pending):
            read[i] = slots[slot[i], 0]
        going_on = 0
        for i in range(n_pending):
            query = pending[i]
            if read[i] == queries[query]:
                found[query] = slot[i]
            elif read[i] != EMPTY and displacement < max_displacement:
                pending[going_on] = query
                slot[going_on] = slot[i] + 1 if slot[i] + 1 < size else 0
                going_on += 1
        n_pending, displacement = going_on, displacement + 1
    return found


@compiled(inline="always")
def _home_slot(key, size):
    """``floor(h * size / 2^32)``, h the top 32 bits of ``key * GOLDEN mod 2^64`` (``_home``)."""
    return np.int64((((np.uint64(key) * GOLDEN) >> np.uint64(32)) * np.uint64(size)) >> np.uint64(32))
