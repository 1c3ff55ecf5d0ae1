"""Batch scoring of whitespace-tokenised sentences under a word n-gram model, at C speed from numpy.

``log10 p(<s> w_1 .. w_m </s>)`` of every sentence, as ``kenlm.Model.score(s, bos=True, eos=True)``
computes it, for many sentences at once and with no Python work per sentence or per word:

1. **Words to ids** (``encode_sentences``). The sentences are joined by NUL bytes into one UTF-8
   buffer; word boundaries are found bytewise (ASCII whitespace, which is all ``str.split`` splits
   on unless the text holds Unicode spaces). A word of at most 8 bytes *is* its key: the
   little-endian 64-bit word of its bytes (read unaligned, masked to its length); a word of 9 to
   16 bytes is keyed by a hash of its two 64-bit words and confirmed on both, so the lookup is
   exact. The keys are looked up in a ``SlotTable`` of the vocabulary whose slots hold the ids
   (the more frequent of two words with one home slot takes it).
   Longer words, and text that holds Unicode spaces or NUL bytes, go through the vocabulary's
   dictionary instead (``str.split`` per sentence).
2. **n-gram lookups** (``NGramScorer``). As in ``NGramLM.score_stream``, the stream
   ``<s> w_1 .. w_m </s> <s> ...`` is followed up the orders in compact form: the k-grams looked
   up are the stored (k - 1)-grams extended by the next id of their sentence. Each order's
   n-grams are held in a linear-probing hash table (``SlotTable``: load at most 1/2,
   multiplicative hashing; Knuth, TAOCP vol. 3, 6.4) whose 24-byte slots hold the key and both
   log10 values, so that most queries cost one memory access (one cache line) where a binary
   search takes ~17. An n-gram is known by its slot: order k's keys are re-encoded as
   ``slot of the prefix * n_ids + last word``. KenLM's ``probing`` structure is the same idea
   (Heafield 2011, sec. 3.1).
3. **Back-off** (Katz 1987; the ARPA convention). With L the longest order whose n-gram ending at
   t is stored and ``h_j`` the last j words before t,

       log10 p(w_t | h) = log10 p*(h_{L-1} w_t) + sum_{j = L}^{n - 1} log10 b(h_j)   (b = 1 if h_j is not stored),

   gathered order by order over whole arrays, in float64, and summed per sentence.

``score_sentences_ref`` is the specification: the same recursion over Python tuples, one word at
a time. ``NGramScorer`` holds the hash tables (24 bytes a slot, 2 to 4 slots an n-gram, the
log10 values as float64 copies); ``scorer_for`` keeps one per model while the model's tables are
unchanged.

Shapes: S sentences, N words, L = N + 2 S stream positions, M queries of one order.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
    every order's n-grams with their log10 values as float64 (copies, on the CPU).

    Raises:
        ConfigError: the model does not predict the vocabulary's words.
    """

    def __init__(self, model: NGramLM, vocabulary: WordVocabulary):
        if model.vocab_size != len(vocabulary.words) or model.start_id != len(vocabulary.words):
            raise ConfigError(f"the model predicts {model.vocab_size} ids but the vocabulary has "
                              f"{len(vocabulary.words)} words (and <s> as id {len(vocabulary.words)})")
        if "</s>" not in vocabulary.index:
            raise ConfigError("the vocabulary has no '</s>' to end sentences with")
        self.vocabulary, self.order, self.n_ids = vocabulary, model.order, model.n_ids
        self.start_id, self.end_id = model.start_id, vocabulary.index["</s>"]
        self.words = WordTable(vocabulary.words)
        self.log10_unigrams = np.zeros((len(model.tables[0]), 2))         # (n_ids, 2) log10 p*, log10 b
        self.log10_unigrams[:, 0] = _log10(model.tables[0].log_prob)
        if model.tables[0].log_backoff.numel():
            self.log10_unigrams[:, 1] = _log10(model.tables[0].log_backoff)
        # per order >= 2: a hash table whose slots hold the n-grams and their values; an n-gram's
        # slot is its id in the keys of the order above (its prefix's slot * n_ids + its last word)
        self.tables, prefix_slots = [None], None
        for table in model.tables[1:]:
            keys = table.keys.detach().cpu().numpy()
            if prefix_slots is not None:
                keys = prefix_slots.take(keys // self.n_ids) * self.n_ids + keys % self.n_ids
            self.tables.append(SlotTable(keys, _log10(table.log_prob), _log10(table.log_backoff)))
            prefix_slots = self.tables[-1].slot_of_entry
        for table in self.tables[1:]:
            del table.slot_of_entry                  # only the build needs it

    def score(self, sentences: Sequence[str]) -> SentenceScores:
        """``log10 p`` of each sentence and the totals."""
        word_ids, lengths = encode_sentences(self.words, self.vocabulary, sentences)
        stream, sentence_starts = self.stream(word_ids, lengths)
        per_position = self.score_stream(stream)
        per_position[sentence_starts] = 0.0                                    # <s> is never predicted
        # Each sentence summed on its own, from its <s> to its </s>: the same value alone or in a batch.
        log10_probs = np.add.reduceat(per_position, sentence_starts) if len(sentence_starts) else per_position[:0]
        return SentenceScores(log10_probs, int(lengths.sum()) + len(sentences),
                              int(np.count_nonzero(word_ids == 0)))

    def stream(self, word_ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``<s> w_1 .. w_m </s>`` per sentence, one after the other: (L,) int64, and the (S,)
        positions of the ``<s>``."""
        ends = np.cumsum(lengths + 2) - 1                                      # where each </s> goes
        starts = ends - lengths - 1
        stream = np.full(int(ends[-1]) + 1 if len(ends) else 0, self.end_id, dtype=np.int64)
        stream[starts] = self.start_id
        sentence = np.repeat(np.arange(len(lengths)), lengths)
        stream[np.arange(len(word_ids)) + 2 * sentence + 1] = word_ids
        return stream, starts

    def score_stream(self, stream: np.ndarray) -> np.ndarray:
        """``log10 p(stream[t] | the stream before t, back to the last <s>)`` for every t: (L,)
        float64 (meaningless at the ``<s>`` themselves). ``stream`` must start with ``<s>``."""
        continues = np.empty(len(stream), dtype=bool)      # t + 1 is a word of the same sentence
        continues[:-1] = stream[1:] != self.start_id
        continues[-1:] = False
        values = self.log10_unigrams.take(stream, axis=0)                        # (L, 2) unigrams
        log10 = values[:, 0]
        longest = np.ones(len(stream), dtype=np.int8)
        # per order j < n: where a stored j-gram ends with a word of its sentence after it, its id
        # (a word id, then a slot), and its log10 back-off weight
        end = np.flatnonzero(continues)
        contexts = [(end, stream.take(end), values[:, 1].take(end))] if self.order > 1 else []
        for k in range(2, self.order + 1):
            end, found, _ = contexts[-1]
            end = end + 1
            table = self.tables[k - 1]
            found = table.find(found * self.n_ids + stream.take(end))
            stored = np.flatnonzero(found >= 0)
            end, found = end.take(stored), found.take(stored)
            values = table.slots.take(found, axis=0)                              # (M, 3) key, p*, b
            log10[end] = values[:, 1].view(np.float64)
            longest[end] = k
            if k < self.order:
                kept = np.flatnonzero(continues.take(end))
                contexts.append((end.take(kept), found.take(kept), values[:, 2].view(np.float64).take(kept)))
            if len(end) == 0:
                break
        for j, (end, _, backoff) in enumerate(contexts, start=1):
            end = end + 1
            backs_off = np.flatnonzero(longest.take(end) <= j)
            log10[end.take(backs_off)] += backoff.take(backs_off)
        return log10


def encode_sentences(words: WordTable, vocabulary: WordVocabulary, sentences: Sequence[str]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The id of every word of every sentence, in order (N,) int64 (``<unk>`` 0 for unknown
    words), and the number of words of each sentence (S,) int64: what ``[s.split() for s in
    sentences]`` and ``vocabulary.index`` give, bytewise where the text allows it."""
    text = "\0".join(sentences)
    if not words.usable or not text.isascii() and UNICODE_SPACE.search(text):
        return _encode_by_dictionary(vocabulary, sentences)
    raw = text.encode("utf-8", "surrogatepass")
    data = np.frombuffer(b"".join((b" ", raw, bytes(WORD_BYTES + 8))), dtype=np.uint8)
    controls = np.flatnonzero(data[: len(raw) + 1] < 32)          # the NULs that join the sentences, tabs ...
    control_bytes = data.take(controls)
    separators = controls[control_bytes == 0]                      # (S - 1,) unless a sentence holds NUL
    if len(separators) != max(len(sentences) - 1, 0):
        return _encode_by_dictionary(vocabulary, sentences)
    boundary = data <= 32                               # whitespace, NUL, or another control byte
    if not BOUNDARY.take(control_bytes).all():
        boundary = BOUNDARY.take(data)                  # a control byte that str.split keeps
    edges = np.flatnonzero(boundary[:-1] != boundary[1:]) + 1       # word starts and stops, in turn
    starts, stops = edges[0::2], edges[1::2]                        # (N,) byte offsets
    words_before = np.empty(len(sentences) + 1, dtype=np.int64)     # words before each sentence, and N
    words_before[0], words_before[-1] = 0, len(starts)
    words_before[1:-1] = np.searchsorted(starts, separators)
    lengths = np.diff(words_before) if len(sentences) else np.zeros(0, np.int64)
    word_lengths = stops - starts
    word_ids = words.find_bytes(data, starts, word_lengths)
    long_words = np.flatnonzero(word_lengths > WORD_BYTES)
    if len(long_words):
        index = vocabulary.index
        word_ids[long_words] = [index[raw[s - 1: e - 1].decode("utf-8", "surrogatepass")]
                                for s, e in zip(starts[long_words].tolist(), stops[long_words].tolist())]
    return word_ids, lengths


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
        keys[medium] = _word_hash(low[medium], high[medium])
        keys = keys.view(np.int64)                  # (no word's key is -1: 0xff is in no UTF-8 text)
        self.usable = len(np.unique(keys)) == len(keys)
        ids = np.arange(len(encoded), dtype=np.int64)
        kept = len(keys) if self.usable else 0       # ids are (usually) in order of frequency
        self.table = SlotTable(keys[:kept], ids[:kept], np.zeros(0), priority=-ids[:kept])
        # the pair each medium word's hit is confirmed on; zero (no query's) for every other word
        self.low, self.high = np.where(medium, low, 0), np.where(medium, high, 0)

    def find_bytes(self, data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The vocabulary id of each word ``data[starts : starts + lengths]``, 0 if none (or if
        longer than 16 bytes). ``data`` must hold 24 bytes past the last word."""
        unaligned = np.ndarray((len(data) - 7,), dtype=np.uint64, buffer=data, strides=(1,))   # any offset
        keys = unaligned.take(starts) & LOW_BYTES_MASK.take(np.minimum(lengths, 8))
        longer = np.flatnonzero(lengths > 8)
        if len(longer):
            low = keys.take(longer)
            high = unaligned.take(starts.take(longer) + 8) & LOW_BYTES_MASK.take(
                np.minimum(lengths.take(longer) - 8, 8))
            keys[longer] = _word_hash(low, high)
        ids = self.table.flat.take(self.table.find(keys.view(np.int64)) * 3 + 1)        # a miss reads 0
        if len(longer):
            entry = ids.take(longer)
            same = ((self.low.take(entry) == low) & (self.high.take(entry) == high)
                    & (lengths.take(longer) <= WORD_BYTES))
            ids[longer] = np.where(same, entry, 0)
        return ids


def _word_halves(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first and second 8 bytes of each word as uint64, masked to the word's length."""
    unaligned = np.ndarray((len(data) - 7,), dtype=np.uint64, buffer=data, strides=(1,))   # any offset
    low = unaligned[starts] & LOW_BYTES_MASK[np.minimum(lengths, 8)]
    high = unaligned[starts + 8] & LOW_BYTES_MASK[np.clip(lengths - 8, 0, 8)]
    return low, high


def _word_hash(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """A 56-bit mix of a word's two halves, times 256 (collisions are resolved by comparing both)."""
    return (low * GOLDEN ^ high * MIX_HIGH) & HASH_MASK


def _log10(log_values: torch.Tensor) -> np.ndarray:
    """Natural-log values as float64 log10 (an empty back-off tensor, the last order's, as zeros)."""
    return log_values.detach().double().cpu().numpy() / LN10 if log_values.numel() else np.zeros(0)


class SlotTable:
    """Distinct int64 keys and two values each (an order's n-grams and their log10 p* and log10 b
    as float64 bits; or the vocabulary's word keys and ids) in a linear-probing hash table of
    ``2^b >= 2 N`` slots, each one int64 row (key, value, value): a lookup reads one cache line
    where a key table and value arrays take three.

    A key's home slot is the top b bits of ``key * GOLDEN mod 2^64`` (Fibonacci hashing); the key
    lives there or after it (wrapping around), past occupied slots only, at most
    ``max_displacement`` slots on. A lookup compares the slot's key with the query and stops at
    the key, at an empty slot (key -1), or after that many slots, so every answer is exact.

    Args:
        keys: (N,) distinct int64, in any order, none -1.
        log10_prob, log10_backoff: (N,) float64 each (the back-off may be empty: zeros), or any
            values as int64 (their bits are stored).
        priority: (N,) how often each key is expected to be queried (e.g. minus a word's
            frequency rank): of the keys with one home slot, the one of highest priority takes it,
            and is found at the first read. (For n-grams, whose queries are mostly misses,
            sorting costs more than it saves.)
    Attributes:
        slots: (2^b + 1, 3) int64 rows, the last one (key -1, values 0) never used: ``slots[-1]``.
        slot_of_entry: (N,) int64 the slot of each key.
    """

    def __init__(self, keys: np.ndarray, log10_prob: np.ndarray, log10_backoff: np.ndarray,
                 priority: np.ndarray | None = None):
        self.bits = max(int(2 * max(len(keys), 1) - 1).bit_length(), 4)
        self.slots = np.zeros(((1 << self.bits) + 1, 3), dtype=np.int64)   # and a last row of zeros,
        self.slots[:, 0] = EMPTY                                         # which a miss (-1) reads
        self.flat = self.slots.reshape(-1)                               # (3 * 2^b,) a key every 3
        home = self.home(keys)
        self.slot_of_entry = np.empty(len(keys), dtype=np.int64)
        owner = np.full(1 << self.bits, EMPTY, dtype=np.int64)
        # in order of priority, so that of the keys aiming at a free slot the last, the most queried, wins
        pending = np.argsort(priority, kind="stable") if priority is not None else np.arange(len(keys))
        displacement = np.zeros(len(keys), dtype=np.int64)
        self.max_displacement = 0
        while len(pending):                          # every pending key tries its next slot at once
            slot = (home[pending] + displacement) & ((1 << self.bits) - 1)
            free = np.flatnonzero(owner[slot] == EMPTY)
            owner[slot[free]] = pending[free]                     # one of the keys aiming at a slot wins
            won = np.zeros(len(pending), dtype=bool)
            won[free] = owner[slot[free]] == pending[free]
            self.slot_of_entry[pending[won]] = slot[won]
            self.max_displacement = max(self.max_displacement, int(displacement[won].max(initial=0)))
            pending, displacement = pending[~won], displacement[~won] + 1
        self.slots[self.slot_of_entry, 0] = keys
        self.slots[self.slot_of_entry, 1] = log10_prob.view(np.int64)   # float64 bits (or int64)
        if len(log10_backoff):
            self.slots[self.slot_of_entry, 2] = log10_backoff.view(np.int64)

    def home(self, keys: np.ndarray) -> np.ndarray:
        hashed = keys.astype(np.int64, copy=False).view(np.uint64) * GOLDEN
        return (hashed >> np.uint64(64 - self.bits)).view(np.int64)

    def find(self, queries: np.ndarray) -> np.ndarray:
        """(M,) int64 the slot of each query, ``-1`` where it is not stored.

        Every query reads its home slot; those that meet another key read on, one slot at a time
        while many remain, then the rest of their ``max_displacement`` slots all at once."""
        slot = self.home(queries)
        key = self.flat.take(slot * 3)
        found = np.where(key == queries, slot, EMPTY)
        active = np.flatnonzero((key != queries) & (key != EMPTY))         # met another key: read on
        mask, done = (1 << self.bits) - 1, 0
        slot, queries = slot.take(active), queries.take(active)
        while len(active) > max(len(found) >> 6, 32) and done < self.max_displacement:
            slot = (slot + 1) & mask
            done += 1
            key = self.flat.take(slot * 3)
            hit = key == queries
            found[active[hit]] = slot[hit]
            going_on = np.flatnonzero(~hit & (key != EMPTY))
            active, slot, queries = active.take(going_on), slot.take(going_on), queries.take(going_on)
        if len(active) and done < self.max_displacement:       # (A, D) the remaining slots at once
            window = (slot[:, None] + np.arange(1, self.max_displacement - done + 1)) & mask
            row, column = np.nonzero(self.flat.take(window * 3) == queries[:, None])
            found[active[row]] = window[row, column]
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
    scorer = NGramScorer(model, vocabulary)
    _SCORERS[id(model)] = (weakref.ref(model, lambda _, key=id(model): _SCORERS.pop(key, None)),
                           vocabulary, list(zip(tensors, versions)), scorer)
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
