"""A second- or first-order HMM part-of-speech tagger in the style of TnT (Brants 2000).

Tags ``t_1..t_n`` of words ``w_1..w_n`` are chosen by

    argmax_t  prod_i P(t_i | t_{i-2}, t_{i-1}) P(w_i | t_i) * P(EOS | t_{n-1}, t_n)

with ``t_{-1} = t_0 = BOS`` (Brants 2000, eq. 1); order 2 conditions on ``t_{i-1}`` alone. With
``capitalisation`` (Brants 2000, sec. 2.4) every tag symbol is a pair ``(t, c)``, ``c = 1`` when
the word starts with an upper-case letter: ``c`` is observed, so decoding still searches K tags
per word, but the n-gram counts tell a capitalised noun after a capitalised word apart.
A symbol is ``z = t + K c``; BOS is ``C K`` and EOS ``C K + 1``, with C = 2 classes (1 without).

Transitions (sec. 2.2): relative frequencies ``P^`` of symbol unigrams, bigrams and trigrams
(BOS and EOS included) mixed by deleted interpolation,

    P(z3 | z1, z2) = l1 P^(z3) + l2 P^(z3 | z2) + l3 P^(z3 | z1, z2),

with ``l1 + l2 + l3 = 1`` set once from the counts by Brants' Figure 1: every trigram with
``f(z1, z2, z3) > 0`` adds its count to the lambda whose estimate, with that trigram taken out,
is the largest of ``(f(z1,z2,z3) - 1)/(f(z1,z2) - 1)``, ``(f(z2,z3) - 1)/(f(z2) - 1)`` and
``(f(z3) - 1)/(N - 1)`` (0/0 = 0; ties go to the lower order). A context never seen in training
has no ``P^(. | context)``; its weight goes to the next lower order, so every distribution sums
to one. Order 2 is the same with bigrams and unigrams.

Emissions: ``P(w | t, c) = f(w, t) / f(t, c)`` for a word of the training vocabulary. An unseen
word is scored by its suffix (sec. 2.3; Samuelsson 1993): from the training words seen at most
``rare_word_count`` times, with separate counts for capitalised and other words, the tag
distribution of each ending ``l_{n-i+1..n}`` (i <= ``suffix_length``) is smoothed by successive
abstraction,

    P(t | l_{n-i+1..n}) = (P^(t | l_{n-i+1..n}) + theta P(t | l_{n-i+2..n})) / (1 + theta),

from the empty ending up to the longest ending seen in training. The empty ending's ``P^(t)`` is
the tag distribution of the rare words of the same case (the root of Brants' suffix trie), or of
all words if there is none; a word none of whose endings was seen keeps it. TnT sets ``theta`` to
the standard deviation of the tag probabilities ``P^(t)`` (``suffix_theta=None``: about 0.05 for
the 17 UPOS tags, so the longest ending seen, even once, decides); the default ``theta = 1``
trusts each longer ending half as much and was chosen on EWT's dev split (93.0% against 92.6%).
One step beyond TnT (``case_folding``): an unseen word that is a training word in other case
("PERFORMANCE", "Telephone") adds its case variants' tag counts as the most specific level,
``P(t | w) = (P^(t | lower(w)) + theta P(t | longest ending)) / (1 + theta)``.
Bayes' rule gives the emission, ``P(w | t, c) = P(t | w) P(w) / P(t, c)``; ``P(w)`` is the same
for every tag at that position, so it changes no path's rank and is left out.

Every count lives in a buffer whose shape the config fixes, so a fitted tagger is its
``state_dict``: emission counts by word id, dense symbol n-gram counts, and the endings and
case-folded words in a hash table (``SuffixTable``: 63-bit fingerprints, linear probing, so keys
never share counts). Decoding is exact Viterbi over tag pairs (``trigram_viterbi``), with
``hmm_viterbi_ref`` (enumeration) as its specification.

Shapes: B sentences, T words, K tags, C classes, S = C K + 2 symbols.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError, DataError
from seqlab.ops.chain import check_chain_mask
from seqlab.registry import register

UNK = 1    # the tagging vocabulary's id of a word unseen in training (seqlab.tasks.tagging)


@dataclass(frozen=True, kw_only=True)
class HMMTaggerConfig:
    """A TnT-style HMM tagger, fitted in closed form from the training split.

    Attributes:
        n_words: words in the task's vocabulary (<pad> and <unk> included).
        n_tags: tags K.
        order: 3 conditions each tag on the two before it (TnT), 2 on the one before it.
        capitalisation: make each word's capitalisation part of its tag symbol (TnT sec. 2.4).
        suffix_length: the longest word ending (in characters) the unseen-word model reads.
        rare_word_count: the suffix model learns from training words seen at most this often.
        suffix_theta: the weight theta of the shorter ending in successive abstraction; None
            takes TnT's, the standard deviation of the tag probabilities (about 0.05 for UPOS).
        case_folding: an unseen word that is a training word in other case ("PERFORMANCE",
            "Telephone") takes that word's tags, smoothed toward its ending's by theta.
        n_suffix_buckets: slots of the hash table of endings and case-folded words; it must
            exceed their number (about 55,000 + 17,000 on UD English EWT).
    """

    n_words: int
    n_tags: int
    order: int = 3
    capitalisation: bool = True
    suffix_length: int = 10
    rare_word_count: int = 10
    suffix_theta: float | None = 1.0
    case_folding: bool = True
    n_suffix_buckets: int = 131_072

    def __post_init__(self) -> None:
        if self.order not in (2, 3):
            raise ConfigError(f"HMMTaggerConfig.order must be 2 or 3, got {self.order}")
        for name, least in (("n_words", 2), ("n_tags", 1), ("suffix_length", 1), ("rare_word_count", 1),
                            ("n_suffix_buckets", 1)):
            if getattr(self, name) < least:
                raise ConfigError(f"HMMTaggerConfig.{name} must be >= {least}, got {getattr(self, name)}")
        if self.suffix_theta is not None and not self.suffix_theta >= 0:
            raise ConfigError(f"HMMTaggerConfig.suffix_theta must be >= 0 or None, got {self.suffix_theta}")

    @property
    def n_classes(self) -> int:
        return 2 if self.capitalisation else 1


def is_capitalised(word: str) -> bool:
    """TnT's capitalisation flag: the word's first character is an upper-case letter."""
    return word[:1].isupper()


# --- Transitions ----------------------------------------------------------------------------------


def deleted_interpolation_weights(trigram_counts: Tensor, order: int) -> Tensor:
    """The lambdas ``(l1, l2, l3)`` of Brants (2000), Figure 1 (``l3 = 0`` for order 2).

    Args:
        trigram_counts: (S, S, S) counts ``f(z1, z2, z3)`` over symbols padded with BOS and EOS.
        order: 3 weighs trigrams against bigrams and unigrams; 2 bigrams against unigrams.
    Returns:
        (3,) float64 weights summing to one (equal over the orders used if there are no counts).
    """
    counts = trigram_counts.double()
    bigram, unigram = counts.sum(0), counts.sum((0, 1))                    # f(z2, z3), f(z3)
    estimates = [_ratio(unigram - 1, unigram.sum() - 1), _ratio(bigram - 1, bigram.sum(1, keepdim=True) - 1)]
    ngram = bigram
    if order == 3:
        ngram = counts
        estimates.append(_ratio(counts - 1, counts.sum(2, keepdim=True) - 1))
    estimates = torch.stack(torch.broadcast_tensors(*estimates), -1)      # (S, S[, S], order)
    winner = estimates.argmax(-1)                                          # first maximum: lower order on ties
    seen = ngram > 0
    weights = torch.zeros(3, dtype=torch.float64).index_add_(0, winner[seen], ngram[seen])
    if weights.sum() == 0:
        weights = torch.tensor([1.0, 1.0, order - 2.0], dtype=torch.float64)
    return weights / weights.sum()


def interpolated_transitions(trigram_counts: Tensor, order: int) -> Tensor:
    """``P(z3 | z1, z2)`` (S, S, S), float64; for order 2 it does not depend on ``z1``.

    Each row sums to one over ``z3``: an unseen context passes its weight down (module docstring).
    """
    l1, l2, l3 = deleted_interpolation_weights(trigram_counts, order).tolist()
    counts = trigram_counts.double()
    bigram, unigram = counts.sum(0), counts.sum((0, 1))
    unigram_p = unigram / unigram.sum().clamp_min(1)                                  # (S,)
    bigram_history = bigram.sum(1, keepdim=True)
    bigram_p = torch.where(bigram_history > 0, _ratio(bigram, bigram_history), unigram_p)          # (S, S)
    trigram_history = counts.sum(2, keepdim=True)
    trigram_p = torch.where(trigram_history > 0, _ratio(counts, trigram_history), bigram_p)        # (S, S, S)
    return l1 * unigram_p + l2 * bigram_p + l3 * trigram_p


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` with x / 0 taken as 0 (Brants 2000, Figure 1)."""
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), torch.zeros_like(numerator))


# --- Decoding -------------------------------------------------------------------------------------


def trigram_viterbi(log_transitions: Tensor, log_emit: Tensor, mask: Tensor | None = None,
                    classes: Tensor | None = None) -> Tensor:
    """The best tags of a second-order HMM, by Viterbi over tag pairs.

    ``delta_t(a, b)`` is the best score of tags ending ``(t_{t-1}, t_t) = (a, b)``; then
    ``delta_t(b, c) = max_a delta_{t-1}(a, b) + log P(c | a, b) + emit_t(c)``: K^3 per word,
    where a first-order chain over the K^2 pairs would cost K^4. Each word's class (its
    capitalisation) is observed, so its symbol is ``tag + K class`` and only K tags are searched.

    Args:
        log_transitions: (S, S, S) ``log P(z3 | z1, z2)`` over S = C K + 2 symbols; C K is BOS
            (as z1, z2) and C K + 1 is EOS (as z3). A first-order model repeats its (S, S)
            table along z1.
        log_emit: (B, T, K) ``log P(w_t | t)`` (or any per-position scores).
        mask: (B, T) bool, true at real words, left-aligned; None: all real.
        classes: (B, T) int64 class of each word in [0, C); None: all 0.
    Returns:
        (B, T) int64 tags, 0 at padding.
    """
    mask = check_chain_mask(log_emit, mask)
    batch, length, k = log_emit.shape
    n_classes = (log_transitions.shape[0] - 2) // k
    if log_transitions.shape != (n_classes * k + 2,) * 3:
        raise DataError(f"transitions of shape {tuple(log_transitions.shape)} do not fit {k} tags")
    if classes is None:
        classes = torch.zeros(batch, length, dtype=torch.long, device=log_emit.device)
    bos, eos, ck = n_classes * k, n_classes * k + 1, n_classes * k
    trans = log_transitions.to(log_emit.dtype)
    # Tables by the classes of the words they join: [class_a, class_b, (class_c,) a, b, (c)].
    inner = trans[:ck, :ck, :ck].reshape(n_classes, k, n_classes, k, n_classes, k).permute(0, 2, 4, 1, 3, 5)
    after_bos = trans[bos, :ck, :ck].reshape(n_classes, k, n_classes, k).transpose(1, 2)
    before_eos = trans[:ck, :ck, eos].reshape(n_classes, k, n_classes, k).transpose(1, 2)
    start, start_end = trans[bos, bos, :ck].reshape(n_classes, k), trans[bos, :ck, eos].reshape(n_classes, k)

    first = start[classes[:, 0]] + log_emit[:, 0]                          # (B, K): the pair (BOS, t_0)
    # deltas[t] (B, K, K) [a, b] scores the pair (t_{t-1}, t_t) = (a, b). Steps write into buffers
    # allocated once, and keep no argmax: the best t_{t-2} is recomputed along the best path
    # only, while tracing it back (a max with indices over the middle dim is ~20x slower on CPU).
    deltas = log_emit.new_empty(length, batch, k, k)
    if length > 1:
        torch.add(first[:, :, None] + after_bos[classes[:, 0], classes[:, 1]], log_emit[:, 1, None, :],
                  out=deltas[1])
    scores = log_emit.new_empty(batch, k, k, k)                            # [a, b, c]
    by_classes = inner.reshape(n_classes ** 3, k, k, k)                    # (C^3, K, K, K)
    combos = (classes[:, :-2] * n_classes + classes[:, 1:-1]) * n_classes + classes[:, 2:]    # (B, T - 2)
    for t in range(2, length):
        if n_classes == 1:
            torch.add(deltas[t - 1][..., None], by_classes[0], out=scores)
        else:
            torch.index_select(by_classes, 0, combos[:, t - 2], out=scores)
            scores.add_(deltas[t - 1][..., None])
        torch.amax(scores, 1, out=deltas[t]).add_(log_emit[:, t, None, :])   # (B, K, K) [b, c]

    lengths = mask.sum(1)
    rows = torch.arange(batch, device=log_emit.device)
    last = lengths - 1
    # Each sentence's last pair scored with its end transition, as (B, K + 1, K): row K is BOS.
    ends = torch.full((batch, k + 1, k), float("-inf"), dtype=log_emit.dtype, device=log_emit.device)
    alone = lengths == 1
    ends[alone, k] = first[alone] + start_end[classes[alone, 0]]
    longer = (~alone).nonzero()[:, 0]
    if len(longer):
        at_last = last[longer]
        ends[longer, :k] = deltas[at_last, longer] + before_eos[classes[longer, at_last - 1], classes[longer, at_last]]
    pair = ends.flatten(1).argmax(1)                                       # (B,) into (K + 1) * K
    previous_tag, tag = pair // k, pair % k
    path = torch.zeros(batch, length, dtype=torch.long, device=log_emit.device)
    path[rows, last] = tag
    for t in range(length - 1, 0, -1):
        # (previous_tag, tag) is the pair at (t - 1, t) of every sentence that reaches t.
        active = lengths > t
        path[active, t - 1] = previous_tag[active]
        if t == 1:
            break
        into = by_classes[combos[:, t - 2], :, previous_tag.clamp_max(k - 1), tag]           # (B, K) over a
        before = (deltas[t - 1, rows, :, previous_tag.clamp_max(k - 1)] + into).argmax(1)
        tag, previous_tag = torch.where(active, previous_tag, tag), torch.where(active, before, previous_tag)
    return path.masked_fill(~mask, 0)


def hmm_viterbi_ref(log_transitions: Tensor, log_emit: Tensor, order: int,
                    classes: Sequence[int] | None = None) -> tuple[Tensor, float]:
    """The best tags of one sentence by enumerating all K^L of them: the specification.

    Args:
        log_transitions: ``log P(z3 | z1, z2)`` (S, S, S) for order 3, ``log P(z3 | z2)`` (S, S)
            for order 2; symbols as in ``trigram_viterbi``.
        log_emit: (L, K) scores of one sentence.
        classes: the class of each of the L words; None: all 0.
    Returns:
        (L,) best tags and their score.
    """
    length, k = log_emit.shape
    classes = [0] * length if classes is None else list(classes)
    ck = (log_transitions.shape[0] - 2)
    best_score, best_tags = float("-inf"), None
    for tags in itertools.product(range(k), repeat=length):
        symbols = (ck,) * (order - 1) + tuple(t + k * c for t, c in zip(tags, classes)) + (ck + 1,)
        score = sum(float(log_emit[i, tag]) for i, tag in enumerate(tags))
        score += sum(float(log_transitions[symbols[i:i + order]]) for i in range(len(symbols) - order + 1))
        if best_tags is None or score > best_score:
            best_score, best_tags = score, tags
    return torch.tensor(best_tags), best_score


# --- The unseen-word lexicon ----------------------------------------------------------------------


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


# --- The tagger -----------------------------------------------------------------------------------


@register("hmm", task="tag", config=HMMTaggerConfig)
class HMMTagger(nn.Module):
    """TnT-style HMM tagger: interpolated tag n-grams, suffix model for unseen words, Viterbi."""

    def __init__(self, config: HMMTaggerConfig):
        super().__init__()
        self.config = config
        k, s = config.n_tags, config.n_classes * config.n_tags + 2
        self.register_buffer("emission_counts", torch.zeros(config.n_words, k))          # f(w, t)
        self.register_buffer("word_classes", torch.zeros(config.n_words, dtype=torch.long))
        self.register_buffer("unigram_counts", torch.zeros(s))                           # f(z3)
        self.register_buffer("bigram_counts", torch.zeros(s, s))                         # f(z2, z3)
        self.register_buffer("trigram_counts", torch.zeros(s, s, s))                     # f(z1, z2, z3)
        self.register_buffer("suffix_keys", torch.zeros(config.n_suffix_buckets, dtype=torch.long))
        self.register_buffer("suffix_tag_counts", torch.zeros(config.n_suffix_buckets, k))
        # log P(z3 | z1, z2), derived from the counts: recomputed after fitting and loading, not saved.
        self.register_buffer("log_transitions", torch.zeros(s, s, s), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _: module._derive_transitions())

    def word_class(self, word: str) -> int:
        """0, or 1 for a capitalised word when the config has ``capitalisation``."""
        return int(self.config.capitalisation and is_capitalised(word))

    @torch.no_grad()
    def fit(self, task: Any, **options: Any) -> HMMTagger:
        """Count words, tag symbol n-grams and rare-word endings of ``task.splits["train"]``.

        ``options`` are training options; counting takes none but ``progress`` (ignored).

        Raises:
            ConfigError: an option other than ``progress``, or the config's vocabulary or tag set
                sizes differ from the task's.
            DataError: the task has no training sentences.
        """
        unknown = sorted(set(options) - {"progress"})
        if unknown:
            raise ConfigError(f"hmm is fitted by counting and takes no option {unknown[0]!r}; set order, "
                              "suffix_length, rare_word_count, suffix_theta in its config instead")
        defaults = task.model_defaults()
        for name in ("n_words", "n_tags"):
            if defaults[name] != getattr(self.config, name):
                raise ConfigError(f"HMMTaggerConfig.{name} = {getattr(self.config, name)} but the task has "
                                  f"{defaults[name]}; build the tagger with task.model_defaults()")
        sentences = task.splits.get("train") or []
        if not sentences:
            raise DataError("the HMM tagger needs training sentences to fit")
        k, vocabulary = self.config.n_tags, task.vocabulary
        bos, eos, s = self.config.n_classes * k, self.config.n_classes * k + 1, self.config.n_classes * k + 2
        words = [word for sentence in sentences for word in sentence.words]
        word_ids = torch.tensor(vocabulary.word_ids(words))
        tag_ids = torch.tensor(vocabulary.tag_ids([tag for sentence in sentences for tag in sentence.tags]))
        self.emission_counts.copy_(torch.bincount(word_ids * k + tag_ids, minlength=self.config.n_words * k)
                                   .view(-1, k))
        self.word_classes.copy_(torch.tensor([self.word_class(word) for word in vocabulary.words]))
        symbols = tag_ids + k * self.word_classes.cpu()[word_ids]
        # Every sentence as BOS BOS z_1 .. z_n EOS, end to end; a window of three lies inside one
        # sentence exactly when its last symbol is not BOS.
        lengths = torch.tensor([len(sentence) for sentence in sentences])
        padded = torch.full((len(words) + 3 * len(sentences),), bos)
        ends = torch.cumsum(lengths + 3, 0) - 1                            # where each EOS goes
        padded[ends] = eos
        is_word = torch.ones_like(padded, dtype=torch.bool)
        is_word[ends] = False
        is_word[ends - lengths - 1] = is_word[ends - lengths - 2] = False  # the two BOS
        padded[is_word] = symbols
        windows = padded.unfold(0, 3, 1)                                   # (N, 3)
        windows = windows[windows[:, 2] != bos]
        trigrams = torch.bincount((windows[:, 0] * s + windows[:, 1]) * s + windows[:, 2], minlength=s ** 3)
        self.trigram_counts.copy_(trigrams.view(s, s, s))
        self.bigram_counts.copy_(self.trigram_counts.sum(0))
        self.unigram_counts.copy_(self.bigram_counts.sum(0))
        self._fit_suffixes(vocabulary.words)
        self._derive_transitions()
        return self

    def _fit_suffixes(self, words: Sequence[str]) -> None:
        """Tag counts of every ending key of the words seen 1..rare_word_count times, and of
        every training word's case-folded key."""
        table = SuffixTable(torch.zeros(self.config.n_suffix_buckets, dtype=torch.long))
        emission_counts = self.emission_counts.cpu()
        frequency = emission_counts.sum(1)
        slots, sources = [], []
        for word_id in (frequency >= 1).nonzero()[:, 0].tolist():
            keys = [folded_key(words[word_id])] if self.config.case_folding else []
            if frequency[word_id] <= self.config.rare_word_count:
                keys += ending_keys(words[word_id], self.config.suffix_length)
            slots += [table.slot(key, claim=True) for key in keys]
            sources += [word_id] * len(keys)
        counts = torch.zeros(self.suffix_tag_counts.shape)
        if slots:
            counts.index_add_(0, torch.tensor(slots), emission_counts[torch.tensor(sources)])
        self.suffix_keys.copy_(torch.from_numpy(table.keys))
        self.suffix_tag_counts.copy_(counts)

    def tag_probabilities(self) -> Tensor:
        """(K,) ``P^(t)``: each tag's relative frequency in training (float64)."""
        k = self.config.n_tags
        counts = self.unigram_counts[:self.config.n_classes * k].double().view(-1, k).sum(0)
        return counts / counts.sum().clamp_min(1)

    def transition_probabilities(self) -> Tensor:
        """``P(z3 | z1, z2)`` (S, S, S), float64 (see ``interpolated_transitions``)."""
        return interpolated_transitions(self.trigram_counts, self.config.order)

    @torch.no_grad()
    def _derive_transitions(self) -> None:
        self.log_transitions.copy_(self.transition_probabilities().log())

    def unseen_tag_distribution(self, words: Sequence[str]) -> Tensor:
        """(U, K) ``P(t | w)`` of unseen words by successive abstraction over their endings, then
        (with ``case_folding``) over their case variants in training (module docstring)."""
        k, m = self.config.n_tags, self.config.suffix_length
        prior = self.tag_probabilities()
        theta = self.config.suffix_theta
        if theta is None:
            theta = float(prior.std()) if k > 1 else 0.0
        table = SuffixTable(self.suffix_keys)
        rows = []                                                          # per word: m + 2 slots or -1
        for word in words:
            row = [-1] * (m + 2)                                           # endings of 0..m letters, folded
            for length, key in enumerate(ending_keys(word, m)):
                row[length] = table.slot(key)
                if row[length] < 0:
                    break        # every longer ending holds this one, so none of them was seen
            if self.config.case_folding:
                row[m + 1] = table.slot(folded_key(word))
            rows.append(row)
        slots = torch.tensor(rows, dtype=torch.long, device=self.suffix_keys.device)    # (U, m + 2)
        counts = self.suffix_tag_counts[slots.clamp_min(0)].double() * (slots >= 0)[..., None]   # (U, m + 2, K)
        totals = counts.sum(-1, keepdim=True)
        estimates = counts / totals.clamp_min(1)
        probabilities = torch.where(totals[:, 0] > 0, estimates[:, 0], prior.to(counts.device))   # empty ending
        for level in range(1, m + 2):
            smoothed = (estimates[:, level] + theta * probabilities) / (1 + theta)
            probabilities = torch.where(totals[:, level] > 0, smoothed, probabilities)
        return probabilities

    def emissions(self, batch: Any) -> tuple[Tensor, Tensor]:
        """(B, T, K) ``log P(w_t | t, c_t)`` and (B, T) classes ``c_t`` of a ``TaggingBatch``.

        Unseen words are scored by their endings. A batch without ``words`` (as ``task.loss``
        builds) gives them class 0 and the empty ending's distribution, having no string to read.
        """
        k = self.config.n_tags
        counts = self.emission_counts[batch.word_ids].double()             # (B, T, K)
        classes = self.word_classes[batch.word_ids]                        # (B, T)
        unseen = ((batch.word_ids == UNK) | (counts.sum(-1) == 0)) & batch.mask
        if unseen.any():
            positions = unseen.nonzero().tolist()
            words = [batch.words[b][t] if batch.words is not None else "" for b, t in positions]
            classes[unseen] = torch.tensor([self.word_class(word) for word in words], device=classes.device)
            distinct = sorted(set(words))
            index = {word: row for row, word in enumerate(distinct)}
            per_word = self.unseen_tag_distribution(distinct)[torch.tensor([index[word] for word in words])]
            counts[unseen] = per_word.to(counts.dtype)                      # P(t | ending) for f(w, t)
        symbol_counts = self.unigram_counts[:self.config.n_classes * k].double().view(-1, k)    # f(t, c)
        # A class training never saw (no capitalised word at all) has no transitions into it.
        classes = torch.where(symbol_counts.sum(1)[classes] > 0, classes, 0)
        log_norm = symbol_counts.clamp_min(1).log()[classes]               # (B, T, K) log f(t, c)
        log_norm[unseen] -= symbol_counts.sum().clamp_min(1).log()         # log P(t, c)
        return counts.log() - log_norm, classes

    @torch.no_grad()
    def tag(self, batch: Any) -> Tensor:
        """(B, T) int64 Viterbi tags of a ``TaggingBatch`` (0 at padding)."""
        log_emit, classes = self.emissions(batch)
        return trigram_viterbi(self.log_transitions, log_emit.float(), batch.mask, classes)
