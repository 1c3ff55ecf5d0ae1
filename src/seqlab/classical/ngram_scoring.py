"""Batch scoring of whitespace-tokenised sentences under a word n-gram model, at C speed.

``log10 p(<s> w_1 .. w_m </s>)`` of every sentence, as ``kenlm.Model.score(s, bos=True, eos=True)``
computes it, for many sentences at once and with no Python work per sentence or per word. (Words
are what ``str.split`` and the vocabulary make of the text: KenLM's module splits at ASCII space,
tab and line breaks only, so the separator bytes 0x1c-0x1f and Unicode spaces split words here
and not there, and it reads a literal ``<s>`` as a sentence start where it is ``<unk>`` here.)

1. **Words to ids** (``slot_tables.encode_sentences``): the sentences' bytes split and looked up
   in a hash table of the vocabulary's words, a word of at most 8 bytes being its own key.
2. **n-gram lookups** (``NGramScorer``). Each order's n-grams are held in a linear-probing hash
   table (``slot_tables.SlotTable``) whose 16-byte slots hold the key and both values (ln p* and
   ln b, float32 as the model holds them), so that most lookups cost one memory access (one
   cache line) where a binary search takes ~17. An n-gram is known by its slot: order k's keys
   are re-encoded as ``slot of the prefix * n_ids + last word``. KenLM's ``probing`` structure is
   the same idea (Heafield 2011, sec. 3.1).
3. **Back-off** (Katz 1987; the ARPA convention). With L the longest order whose n-gram ending at
   t is stored and ``h_j`` the last j words before t,

       log10 p(w_t | h) = log10 p*(h_{L-1} w_t) + sum_{j = L}^{n - 1} log10 b(h_j)   (b = 1 if h_j is not stored),

   summed in float64 per sentence.

Steps 2 and 3 run compiled by numba (to machine code on first use, cached on disk), over blocks
of whole sentences, order by order: all the lookups of one order are made together, in rounds that
read one slot of every pending lookup before settling any (``_score_sentences``). Those reads are
independent, so the memory system serves them at once. A walk word by word, as KenLM's
``FullScore`` makes it, waits for each read in turn (the next word's key is the slot just found):
about 150 ns a read on these machines once the tables outgrow the cache, where a round of
independent reads costs a few ns each. On a 2.6M n-gram model this halves the time of the walk.
The hash tables are built with numpy.

``score_sentences_ref`` is the specification: the same recursion over Python tuples, one word at
a time. ``NGramScorer`` holds the hash tables (16 bytes a slot, 2 slots an n-gram: 32 bytes, where
KenLM's probing format takes about 22); ``scorer_for`` keeps one per model while the model's tables
are unchanged, and ``ngram_cache.load_scorer`` opens one from a binary cache without the model.

Shapes: S sentences, N words, M queries.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from seqlab.classical import counts as ngrams
from seqlab.classical.compiled import compiled
from seqlab.classical.ngram import NGramConfig, NGramLM
from seqlab.classical.slot_tables import EMPTY, SlotTable, WordTable, _home_slot, encode_sentences
from seqlab.errors import ConfigError

if TYPE_CHECKING:                      # arpa imports nothing from here; only the annotations need it
    from seqlab.classical.arpa import WordVocabulary

LN10 = math.log(10)
SCORER_TABLES = {"slots", "offsets", "sizes", "max_displacements", "log10_unigrams", "word_slots", "word_low",
                 "word_high", "word_long_ids", "word_settings"}          # (and word_long_text, from version 3)
BLOCK = 1 << 13                    # stream positions scored together (``_score_sentences``)


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

    def __init__(self, model: NGramLM, vocabulary: WordVocabulary):
        self._take(model.config, vocabulary)
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
            keys = table.sorted_keys().detach().cpu().numpy()          # (a cache's: checked now)
            if prefix_slots is not None:
                keys = prefix_slots.take(keys // self.n_ids) * self.n_ids + keys % self.n_ids
            tables.append(SlotTable(keys, _float32_pairs(table.log_prob, table.log_backoff)))
            prefix_slots = tables[-1].slot_of_entry
            self.offsets[k + 1] = self.offsets[k] + len(tables[-1].slots)
            self.sizes[k], self.max_displacements[k] = tables[-1].size, tables[-1].max_displacement
        self.slots = np.concatenate([table.slots for table in tables]) if tables else np.zeros((0, 2), np.int64)

    @classmethod
    def from_arrays(cls, config: NGramConfig, vocabulary: WordVocabulary, arrays: dict[str, np.ndarray]
                    ) -> NGramScorer:
        """The scorer whose tables ``arrays()`` gave, without its model (``ngram_cache`` stores them
        beside the model), after checking their layout (``_adopt``); ValueError says what is off.

        Raises:
            ConfigError: the config does not predict the vocabulary's words.
        """
        scorer = object.__new__(cls)
        scorer._take(config, vocabulary)
        scorer._adopt(arrays)
        return scorer

    def _take(self, config: NGramConfig, vocabulary: WordVocabulary) -> None:
        if config.vocab_size != len(vocabulary) or config.start_id != len(vocabulary):
            raise ConfigError(f"the model predicts {config.vocab_size} ids but the vocabulary has "
                              f"{len(vocabulary)} words (and <s> as id {len(vocabulary)})")
        if vocabulary.end_id is None:
            raise ConfigError("the vocabulary has no '</s>' to end sentences with")
        self.vocabulary, self.order, self.n_ids = vocabulary, config.order, config.n_ids
        self.start_id, self.end_id = config.start_id, vocabulary.end_id

    def arrays(self) -> dict[str, np.ndarray]:
        """The tables this scorer built, by name, for ``from_arrays``."""
        return {"slots": self.slots, "offsets": self.offsets, "sizes": self.sizes,
                "max_displacements": self.max_displacements, "log10_unigrams": self.log10_unigrams,
                "word_slots": self.words.table.slots, "word_low": self.words.low, "word_high": self.words.high,
                "word_long_ids": np.array(list(self.words.long_words.values()), dtype=np.int64),
                "word_long_text": np.frombuffer("\n".join(self.words.long_words).encode("utf-8", "surrogatepass"),
                                                dtype=np.uint8),
                "word_settings": np.array([self.words.table.max_displacement, self.words.usable], dtype=np.int64)}

    def _adopt(self, arrays: dict[str, np.ndarray]) -> None:
        """Take ``arrays()``'s tables after checking their layout: the types and shapes, and every
        size and offset the compiled lookups index by (a table that did not fit would be read
        outside its memory); ValueError says what is off. The word ids the word table holds are
        checked where they are used, for each batch of words looked up (``encode_sentences``).

        The sizes and offsets are copied first: memory-mapped pages that were only read follow the
        file, so a file rewritten in place must not change what was checked. The tables stay
        where they are and are touched where a query lands, as KenLM's memory-mapped tables are
        (and, as there, truncating the file under a loaded model ends the process)."""
        arrays = dict(arrays)
        missing = sorted(SCORER_TABLES - arrays.keys())
        if missing:
            raise ValueError(f"lacks the scorer tables {missing}")
        self.slots, self.log10_unigrams = arrays.pop("slots"), arrays.pop("log10_unigrams")
        self.offsets, self.sizes = arrays.pop("offsets").copy(), arrays.pop("sizes").copy()
        self.max_displacements = arrays.pop("max_displacements").copy()
        word_slots, low, high = arrays.pop("word_slots"), arrays.pop("word_low"), arrays.pop("word_high")
        long_ids, settings = arrays.pop("word_long_ids").copy(), arrays.pop("word_settings")
        long_text = arrays.pop("word_long_text", None)                   # (a version 2 cache has none)
        if settings.shape != (2,) or settings.dtype != np.int64:
            raise ValueError("holds word table settings of the wrong shape")
        (word_displacement, usable), n_words = settings.tolist(), len(self.vocabulary)
        if arrays:
            raise ValueError(f"holds unexpected scorer tables {sorted(arrays)}")
        int64 = [self.slots, self.offsets, self.sizes, self.max_displacements, word_slots, long_ids]
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
        if (word_slots.ndim != 2 or word_slots.shape[1] != 2 or not 1 <= word_size < 2**32
                or word_slots[-1].tolist() != [EMPTY, 0]                        # what every miss reads
                or not 0 <= word_displacement < word_size):
            raise ValueError("holds a word hash table that does not fit the vocabulary")
        if long_ids.ndim != 1 or not ((long_ids >= 0) & (long_ids < n_words)).all():
            raise ValueError("holds long-word ids that are not a list of the vocabulary's ids")
        if long_text is None:
            long_words = [self.vocabulary.words[i] for i in long_ids.tolist()]
        else:
            text = long_text.tobytes().decode("utf-8", "surrogatepass")
            long_words = text.split("\n") if text else []
            if len(long_words) != len(long_ids):
                raise ValueError("holds long words that do not match their ids")
        self.words = WordTable.from_arrays(SlotTable.from_slots(word_slots, word_displacement), low, high,
                                           dict(zip(long_words, long_ids.tolist())), bool(usable))
        found = self.words.short_word_id("</s>")
        if found is not None and found != self.end_id:
            raise ValueError(f"gives </s> the id {self.end_id} where its word table has {found}")

    def score(self, sentences: Sequence[str]) -> SentenceScores:
        """``log10 p`` of each sentence and the totals."""
        word_ids, lengths = encode_sentences(self.words, self.vocabulary, sentences)
        log10_probs = np.empty(len(lengths), dtype=np.float64)
        _score_sentences(word_ids, lengths, self.log10_unigrams, self.slots, self.slots.view(np.float32),
                         self.offsets, self.sizes, self.max_displacements, self.n_ids, self.start_id,
                         self.end_id, self.order, log10_probs)
        return SentenceScores(log10_probs, int(lengths.sum()) + len(sentences),
                              int(np.count_nonzero(word_ids == 0)))


@compiled
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
    for table, ids in zip(model.tables, ngrams.ngram_ids([t.sorted_keys().cpu() for t in model.tables], model.n_ids)):
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
