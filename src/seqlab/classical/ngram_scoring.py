"""Batch scoring of whitespace-tokenised sentences under a word n-gram model, at C speed.

``log10 p(<s> w_1 .. w_m </s>)`` of every sentence, as ``kenlm.Model.score(s, bos=True, eos=True)``
computes it, for many sentences at once and with no Python work per sentence or per word:

1. **Words to ids** (``encode_sentences``). The sentences are joined by NUL bytes into one UTF-8
   buffer; word boundaries are found bytewise (``_split_words``: ASCII whitespace, which is all
   ``str.split`` splits on unless the text holds Unicode spaces). A word of at most 8 bytes *is*
   its key: the little-endian 64-bit word of its bytes; a word of 9 to 16 bytes is keyed by a hash
   of its two 64-bit words and confirmed on both, so the lookup is exact. The keys are looked up
   in a ``SlotTable`` of the vocabulary whose slots hold the ids (the more frequent of two words
   with one home slot takes it). Longer words, and text that holds Unicode spaces or NUL bytes, go through the vocabulary's
   dictionary instead (``str.split`` per sentence).
2. **n-gram lookups** (``NGramScorer``). Each order's n-grams are held in a linear-probing hash
   table (``SlotTable``: load at most 1/2, multiplicative hashing; Knuth, TAOCP vol. 3, 6.4) whose
   16-byte slots hold the key and both values (ln p* and ln b, float32 as the model holds them),
   so that most lookups cost one memory access (one cache line) where a binary search takes ~17.
   An n-gram is known by its slot: order k's keys are re-encoded as ``slot of the prefix * n_ids +
   last word``. KenLM's ``probing``
   structure is the same idea (Heafield 2011, sec. 3.1).
3. **Back-off** (Katz 1987; the ARPA convention). With L the longest order whose n-gram ending at
   t is stored and ``h_j`` the last j words before t,

       log10 p(w_t | h) = log10 p*(h_{L-1} w_t) + sum_{j = L}^{n - 1} log10 b(h_j)   (b = 1 if h_j is not stored),

   summed in float64 per sentence.

Steps 1 to 3 run compiled by numba (to machine code on first use, cached on disk), over blocks of
whole sentences, order by order: all the lookups of one order are made together, in rounds that
read one slot of every pending lookup before settling any (``_score_sentences``). Those reads are
independent, so the memory system serves them at once. A walk word by word, as KenLM's
``FullScore`` makes it, waits for each read in turn (the next word's key is the slot just found):
about 150 ns a read on these machines once the tables outgrow the cache, where a round of
independent reads costs a few ns each. On a 2.6M n-gram model this halves the time of the walk.
The hash tables are built with numpy.

``score_sentences_ref`` is the specification: the same recursion over Python tuples, one word at
a time. ``NGramScorer`` holds the hash tables (16 bytes a slot, 2 slots an n-gram: 32 bytes, where
KenLM's probing format takes about 22); ``scorer_for`` keeps one per model while the model's tables
are unchanged.

Shapes: S sentences, N words, M queries.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numba
import numpy as np
import torch

from seqlab.classical import counts as ngrams
from seqlab.classical.ngram import NGramLM
from seqlab.errors import ConfigError

if TYPE_CHECKING:                      # arpa imports nothing from here; only the annotations need it
    from seqlab.classical.arpa import WordVocabulary

LN10 = math.log(10)
EMPTY = -1                                   # an empty slot's key (no key is -1)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)       # 2^64 / golden ratio: Fibonacci hashing's multiplier
MIX_HIGH = np.uint64(0xC2B2AE3D27D4EB4F)
HASH_MASK = np.uint64(2**64 - 256)                # a hashed key's lowest byte is zero
BLOCK = 1 << 13                    # stream positions scored together (``_score_sentences``)
SLOTS_PER_KEY = 2                  # a table's size per key: load 1/2
WORD_BYTES = 16                              # words up to this long are their own key
LOW_BYTES_MASK = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [2**64 - 1], dtype=np.uint64)
# Bytes at which str.split() splits an ASCII text, and NUL, which joins the sentences.
BOUNDARY = np.zeros(256, dtype=bool)
BOUNDARY[[0, 9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True
UNICODE_SPACE = re.compile(r"[^\S\x00-\x7f]")     # whitespace outside ASCII: \x85, \xa0, \u2000 ...


@dataclass(frozen=True)
class SentenceScores:
    """Scores of a batch of sentences.

    Attributes:
        log10_probs: (S,) float64 ``log10 p(<s> w_1 .. w_m </s>)`` per sentence.
        n_tokens: predicted tokens, the words and one ``</s>`` per sentence.
        n_unknown: words scored as ``<unk>`` (outside the vocabulary, or a literal ``<unk>``).
    """

    log10_probs: np.ndarray
    n_tokens: int
    n_unknown: int

    @property
    def total_log10(self) -> float:
        return float(self.log10_probs.sum())

    @property
    def perplexity(self) -> float:
        """``10 ** (-total / n_tokens)``, per token (words and ``</s>``), as KenLM's ``query`` counts."""
        return 10 ** (-self.total_log10 / max(self.n_tokens, 1))


def score_sentences(model: NGramLM, vocabulary: WordVocabulary, sentences: Sequence[str]) -> SentenceScores:
    """Score whitespace-tokenised sentences, each as ``<s> w_1 .. w_m </s>`` (see the module docstring).

    Args:
        model: a word-level model whose ids are ``vocabulary``'s (``<s>`` is ``model.start_id``).
        vocabulary: a ``seqlab.classical.arpa.WordVocabulary``.
        sentences: S strings; an empty one scores ``log10 p(</s> | <s>)``.
    Returns:
        the (S,) log10 probabilities and the totals.
    """
    return scorer_for(model, vocabulary).score(sentences)


class NGramScorer:
    """A model and its vocabulary prepared for batch scoring: hash tables of the vocabulary and of
    every order's n-grams with their values (copies, on the CPU).

    Raises:
        ConfigError: the model does not predict the vocabulary's words.
    """

    def __init__(self, model: NGramLM, vocabulary: WordVocabulary, arrays: dict[str, np.ndarray] | None = None):
        if model.vocab_size != len(vocabulary.words) or model.start_id != len(vocabulary.words):
            raise ConfigError(f"the model predicts {model.vocab_size} ids but the vocabulary has "
                              f"{len(vocabulary.words)} words (and <s> as id {len(vocabulary.words)})")
        if "</s>" not in vocabulary.words:
            raise ConfigError("the vocabulary has no '</s>' to end sentences with")
        self.vocabulary, self.order, self.n_ids = vocabulary, model.order, model.n_ids
        self.start_id, self.end_id = model.start_id, vocabulary.words.index("</s>")
        if arrays is not None:
            self._adopt(arrays)
            return
        self.words = WordTable(vocabulary.words)
        self.log10_unigrams = np.zeros((len(model.tables[0]), 2))         # (n_ids, 2) log10 p*, log10 b
        self.log10_unigrams[:, 0] = _log10(model.tables[0].log_prob)
        if model.tables[0].log_backoff.numel():
            self.log10_unigrams[:, 1] = _log10(model.tables[0].log_backoff)
        # per order k >= 2: a hash table whose slots hold the k-grams and their ln p*, ln b (float32,
        # as the model holds them); a k-gram's slot is its id in the keys of order k + 1 (its
        # prefix's slot * n_ids + its last word). The tables are rows offsets[k]: offsets[k + 1]
        # of one (T, 2) array, for the kernel.
        self.offsets = np.zeros(self.order + 2, dtype=np.int64)
        self.sizes = np.zeros(self.order + 1, dtype=np.int64)
        self.max_displacements = np.zeros(self.order + 1, dtype=np.int64)
        tables, prefix_slots = [], None
        for k, table in enumerate(model.tables[1:], start=2):
            keys = table.keys.detach().cpu().numpy()
            if prefix_slots is not None:
                keys = prefix_slots.take(keys // self.n_ids) * self.n_ids + keys % self.n_ids
            tables.append(SlotTable(keys, _float32_pairs(table.log_prob, table.log_backoff)))
            prefix_slots = tables[-1].slot_of_entry
            self.offsets[k + 1] = self.offsets[k] + len(tables[-1].slots)
            self.sizes[k], self.max_displacements[k] = tables[-1].size, tables[-1].max_displacement
        self.slots = np.concatenate([table.slots for table in tables]) if tables else np.zeros((0, 2), np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        """The tables this scorer built, by name: what ``NGramScorer(model, vocabulary, arrays)``
        takes back instead of building them (``ngram_cache`` stores them beside the model)."""
        return {"slots": self.slots, "offsets": self.offsets, "sizes": self.sizes,
                "max_displacements": self.max_displacements, "log10_unigrams": self.log10_unigrams,
                "word_slots": self.words.table.slots, "word_low": self.words.low, "word_high": self.words.high,
                "word_settings": np.array([self.words.table.max_displacement, self.words.usable], dtype=np.int64)}

    def _adopt(self, arrays: dict[str, np.ndarray]) -> None:
        """Take ``arrays()``'s tables after checking every size the compiled lookups index by
        (a table that does not fit would read outside its memory); ValueError says what is off.
        The slots themselves are not read: a table is touched where a query lands, as KenLM's
        memory-mapped tables are."""
        arrays = dict(arrays)
        self.slots, self.offsets = arrays.pop("slots"), arrays.pop("offsets")
        self.sizes, self.max_displacements = arrays.pop("sizes"), arrays.pop("max_displacements")
        self.log10_unigrams = arrays.pop("log10_unigrams")
        word_slots, low, high = arrays.pop("word_slots"), arrays.pop("word_low"), arrays.pop("word_high")
        (word_displacement, usable), n_words = arrays.pop("word_settings").tolist(), len(self.vocabulary.words)
        if arrays:
            raise ValueError(f"holds unexpected scorer tables {sorted(arrays)}")
        int64 = [self.slots, self.offsets, self.sizes, self.max_displacements, word_slots]
        if (any(a.dtype != np.int64 for a in int64) or self.log10_unigrams.dtype != np.float64
                or low.dtype != np.uint64 or high.dtype != np.uint64):
            raise ValueError("holds scorer tables of the wrong types")
        if (self.offsets.shape != (self.order + 2,) or self.sizes.shape != (self.order + 1,)
                or self.max_displacements.shape != (self.order + 1,)
                or self.log10_unigrams.shape != (self.n_ids, 2) or low.shape != (n_words,) or high.shape != (n_words,)):
            raise ValueError("holds scorer tables of sizes that do not fit the model")
        for k in range(2, self.order + 1):
            size = int(self.sizes[k])
            if (not 1 <= size < 2**32 or self.offsets[k + 1] - self.offsets[k] != size + 1
                    or not 0 <= self.max_displacements[k] < size):
                raise ValueError(f"holds an order {k} hash table of the wrong size")
        if self.slots.shape != (int(self.offsets[-1]), 2) or self.offsets[:3].any():
            raise ValueError("holds n-gram hash tables of the wrong size")
        word_size = len(word_slots) - 1
        word_ids = word_slots[word_slots[:, 0] != EMPTY, 1] if word_slots.ndim == 2 else None
        if (word_slots.ndim != 2 or word_slots.shape[1] != 2 or not 1 <= word_size < 2**32
                or not 0 <= word_displacement < word_size
                or len(word_ids) != (n_words if usable else 0) or not ((word_ids >= 0) & (word_ids < n_words)).all()):
            raise ValueError("holds a word hash table that does not fit the vocabulary")
        self.words = WordTable.from_arrays(SlotTable.from_slots(word_slots, word_displacement), low, high, bool(usable))

    def score(self, sentences: Sequence[str]) -> SentenceScores:
        """``log10 p`` of each sentence and the totals."""
        word_ids, lengths = encode_sentences(self.words, self.vocabulary, sentences)
        log10_probs = np.empty(len(lengths), dtype=np.float64)
        _score_sentences(word_ids, lengths, self.log10_unigrams, self.slots, self.slots.view(np.float32),
                         self.offsets, self.sizes, self.max_displacements, self.n_ids, self.start_id,
                         self.end_id, self.order, log10_probs)
        return SentenceScores(log10_probs, int(lengths.sum()) + len(sentences),
                              int(np.count_nonzero(word_ids == 0)))


@numba.njit(cache=True, nogil=True)
def _score_sentences(word_ids, lengths, log10_unigrams, slots, values, offsets, sizes,
                     max_displacements, n_ids, start_id, end_id, order, out):
    """The back-off recursion of the module docstring over the stream ``<s> w_1 .. w_m </s> <s>
    ...``, a block of whole sentences at a time (``BLOCK`` positions; a longer sentence is a block
    of its own), order by order: ``found[k, t]`` is the slot of the k-gram ending at t (a word id
    for k = 1), -1 if it is not stored.

    The k-grams looked up are the stored (k - 1)-grams extended by the next word of their sentence
    (every stored n-gram's prefix is stored: an ARPA file's contexts are). All the lookups of one
    order are made together, in rounds: each round reads one slot of every lookup still pending,
    then settles the ones that met their key or an empty slot. The reads of a round are
    independent of one another, so the memory system serves them at once; a walk word by word, as
    KenLM's ``FullScore``, waits for each (the next lookup's key is the slot just found), which
    costs a memory latency a word once the tables outgrow the cache. The arrays are
    ``NGramScorer``'s (``values``: the slots as (T, 4) float32, ln p* and ln b in columns 2 and 3);
    ``out`` receives the (S,) sentence scores.
    """
    size = max(BLOCK, np.max(lengths) + 2) if len(lengths) else BLOCK
    stream = np.empty(size + 1, dtype=np.int64)                    # and one <s> past the block's end
    found = np.empty((order + 1, size), dtype=np.int64)
    log10_backoff = np.zeros((order + 1, size))                    # of the k-gram ending at t
    log10 = np.empty(size)                                          # log10 p* of the longest match
    longest = np.empty(size, dtype=np.int64)
    queries, next_queries = np.empty(size, dtype=np.int64), np.empty(size, dtype=np.int64)   # positions
    keys, slot, read = np.empty(size, dtype=np.int64), np.empty(size, dtype=np.int64), np.empty(size, dtype=np.int64)
    first_sentence, position = 0, 0
    while first_sentence < len(lengths):
        n, sentence = 0, first_sentence
        while sentence < len(lengths) and (n == 0 or n + lengths[sentence] + 2 <= size):
            stream[n] = start_id
            stream[n + 1: n + 1 + lengths[sentence]] = word_ids[position: position + lengths[sentence]]
            stream[n + lengths[sentence] + 1] = end_id
            position, n, sentence = position + lengths[sentence], n + lengths[sentence] + 2, sentence + 1
        stream[n] = start_id
        found[2:, :n] = -1
        m = 0                                       # unigrams; the bigrams to look up end at queries[:m]
        for t in range(n):
            word = stream[t]
            found[1, t], longest[t] = word, 1
            log10[t], log10_backoff[1, t] = log10_unigrams[word, 0], log10_unigrams[word, 1]
            queries[m] = t + 1
            m += stream[t + 1] != start_id
        for k in range(2, order + 1):
            offset, table_size = offsets[k], sizes[k]
            for i in range(m):
                keys[i] = found[k - 1, queries[i] - 1] * n_ids + stream[queries[i]]
                slot[i] = _home_slot(keys[i], table_size)
            hits, pending, displacement = 0, m, 0
            while pending > 0:
                for i in range(pending):                        # one read of every pending lookup
                    read[i] = slots[offset + slot[i], 0]
                going_on = 0
                for i in range(pending):
                    t = queries[i]
                    if read[i] == keys[i]:                      # stored: the match, and a context
                        found[k, t], longest[t] = slot[i], k
                        log10[t] = np.float64(values[offset + slot[i], 2]) / LN10
                        log10_backoff[k, t] = np.float64(values[offset + slot[i], 3]) / LN10
                        next_queries[hits] = t + 1
                        hits += stream[t + 1] != start_id
                    elif read[i] != EMPTY and displacement < max_displacements[k]:     # another key: on
                        queries[going_on], keys[going_on] = t, keys[i]
                        slot[going_on] = slot[i] + 1 if slot[i] + 1 < table_size else 0
                        going_on += 1
                pending, displacement = going_on, displacement + 1
            queries, next_queries, m = next_queries, queries, hits
        total = 0.0                                 # log10 p* and the back-offs, summed per sentence
        for t in range(1, n + 1):
            if stream[t] == start_id:
                out[first_sentence] = total
                first_sentence, total = first_sentence + 1, 0.0
                continue
            total += log10[t]
            for j in range(longest[t], order):          # each stored context longer than the match
                if j == 1 or found[j, t - 1] >= 0:
                    total += log10_backoff[j, t - 1]


@numba.njit(cache=True, nogil=True, inline="always")
def _home_slot(key, size):
    """``floor(h * size / 2^32)``, h the top 32 bits of ``key * GOLDEN mod 2^64`` (``_home``)."""
    return np.int64((((np.uint64(key) * GOLDEN) >> np.uint64(32)) * np.uint64(size)) >> np.uint64(32))


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
    if n_medium:                                          # a hashed key's hit, confirmed on both halves
        index, low, high = medium_words[:n_medium].T
        index = index.astype(np.int64)
        found = word_ids.take(index)
        word_ids[index] = np.where((words.low.take(found) == low) & (words.high.take(found) == high), found, 0)
    if n_long:
        index = vocabulary.index
        word_ids[long_words[:n_long, 0]] = [index[raw[start:stop].decode("utf-8", "surrogatepass")]
                                            for start, stop in long_words[:n_long, 1:].tolist()]
    return word_ids, lengths


@numba.njit(cache=True, nogil=True)
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
    key, and every hit is confirmed on the pair. Other words get keys no query reaches unconfirmed.
    Should two keys coincide, ``usable`` is false and words go through the dictionary.
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

    @classmethod
    def from_arrays(cls, table: SlotTable, low: np.ndarray, high: np.ndarray, usable: bool) -> WordTable:
        """A table built before (``NGramScorer.arrays``)."""
        words = object.__new__(cls)
        words.table, words.low, words.high, words.usable = table, low, high, usable
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


def _log10(log_values: torch.Tensor) -> np.ndarray:
    """Natural-log values as float64 log10 (an empty back-off tensor, the last order's, as zeros)."""
    return log_values.detach().double().cpu().numpy() / LN10 if log_values.numel() else np.zeros(0)


def _float32_pairs(log_prob: torch.Tensor, log_backoff: torch.Tensor) -> np.ndarray:
    """(N,) int64 whose bytes are ``(ln p*, ln b)`` as float32, the back-off 0 where there is none:
    the values the model holds, to the bit (the kernel divides by ln 10 in float64, as ``_log10``)."""
    pairs = np.zeros((len(log_prob), 2), dtype=np.float32)
    pairs[:, 0] = log_prob.detach().float().cpu().numpy()
    if log_backoff.numel():
        pairs[:, 1] = log_backoff.detach().float().cpu().numpy()
    return pairs.view(np.int64)[:, 0]


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


@numba.njit(cache=True, nogil=True)
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


# ---- one scorer per model, while its tables are unchanged --------------------------------

_SCORERS: dict[int, tuple[weakref.ref, object, list, NGramScorer]] = {}


def scorer_for(model: NGramLM, vocabulary: WordVocabulary) -> NGramScorer:
    """The ``NGramScorer`` of ``model`` and ``vocabulary``, built on first use and kept while the
    model lives and its tables are the same tensors, unmodified (``Tensor._version``)."""
    tensors = [getattr(table, name) for table in model.tables for name in ("keys", "log_prob", "log_backoff")]
    versions = [tensor._version for tensor in tensors]
    cached = _SCORERS.get(id(model))
    if cached is not None:
        model_ref, cached_vocabulary, state, scorer = cached
        if (model_ref() is model and cached_vocabulary is vocabulary
                and all(a is b and v == w for (a, v), b, w in zip(state, tensors, versions))):
            return scorer
    return remember_scorer(model, vocabulary, NGramScorer(model, vocabulary))


def remember_scorer(model: NGramLM, vocabulary: WordVocabulary, scorer: NGramScorer) -> NGramScorer:
    """Keep ``scorer`` as ``scorer_for(model, vocabulary)`` while the model's tables are unchanged
    (``ngram_cache.load_binary`` hands over the scorer it loaded)."""
    tensors = [getattr(table, name) for table in model.tables for name in ("keys", "log_prob", "log_backoff")]
    _SCORERS[id(model)] = (weakref.ref(model, lambda _, key=id(model): _SCORERS.pop(key, None)),
                           vocabulary, [(tensor, tensor._version) for tensor in tensors], scorer)
    return scorer


# ---- the specification -----------------------------------------------------------------------


def score_sentences_ref(model: NGramLM, vocabulary: WordVocabulary, sentences: Sequence[str]) -> np.ndarray:
    """``log10 p`` of each sentence by the back-off recursion over n-grams as tuples of ids, one
    word at a time (slow; the specification of ``score_sentences``). Returns (S,) float64."""
    stored = []           # per order: ids tuple -> (log10 p*, log10 b)
    for table, ids in zip(model.tables, ngrams.ngram_ids([t.keys.cpu() for t in model.tables], model.n_ids)):
        backoff = table.log_backoff.double().cpu() if table.log_backoff.numel() else torch.zeros(len(table))
        stored.append({tuple(row): (p / LN10, b / LN10) for row, p, b in
                       zip(ids.tolist(), table.log_prob.double().cpu().tolist(), backoff.tolist())})
    index, n = vocabulary.index, model.order
    scores = []
    for sentence in sentences:
        history, total = [model.start_id], 0.0
        for word in [index[w] for w in sentence.split()] + [index["</s>"]]:
            context = tuple(history[-(n - 1):]) if n > 1 else ()
            longest = next(k for k in range(len(context) + 1, 0, -1)
                           if context[len(context) - k + 1:] + (word,) in stored[k - 1])
            total += stored[longest - 1][context[len(context) - longest + 1:] + (word,)][0]
            for j in range(longest, len(context) + 1):                   # back off from j + 1 to j
                total += stored[j - 1].get(context[len(context) - j:], (0.0, 0.0))[1]
            history.append(word)
        scores.append(total)
    return np.array(scores, dtype=np.float64)
