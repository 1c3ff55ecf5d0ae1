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

A second step beyond TnT (``smoothing`` s): TnT never gives a training word a tag it did not
have, nor a word a (tag, case) symbol training never saw, so held-out sentences can have
probability zero under it (13% of EWT's dev sentences). A floor under every distribution,
``P(t | w) -> (1 - s) P(t | w) + s P^(t)`` (for training words ``f(w, t) -> (1 - s) f(w, t) +
s f(w) P^(t)``, which keeps each tag's total ``f(t)``) and ``P(z3 | z1, z2) -> (1 - s)
P(z3 | z1, z2) + s / (C K + 1)`` over the symbols that may follow, makes every tagging possible.
s = 0.001 (chosen on EWT's dev split) leaves the accuracy as it was (93.06% against 93.05%) and
gives a per-word loss of 0.25 nats.

Every count lives in a buffer whose shape the config fixes, so a fitted tagger is its
``state_dict``: emission counts by word id, dense symbol n-gram counts, and the endings and
case-folded words in a hash table (``SuffixTable``: 63-bit fingerprints, linear probing, so keys
never share counts). Decoding is exact Viterbi over tag pairs, and ``loss`` the conditional
negative log-likelihood ``-log p(tags | words)`` by the forward algorithm over tag pairs
(``seqlab.classical.trigram_chain``, each beside its specification by enumeration).

Shapes: B sentences, T words, K tags, C classes, S = C K + 2 symbols.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self, Sequence

import torch
from torch import Tensor, nn

from seqlab.classical.suffix_table import SuffixTable, ending_keys, folded_key, is_capitalised
from seqlab.classical.trigram_chain import trigram_log_likelihood, trigram_viterbi
from seqlab.errors import ConfigError, DataError
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
        smoothing: weight s of the floor under every tag and transition (module docstring), so
            that no tagging has probability zero; 0 is TnT exactly.
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
    smoothing: float = 1e-3

    def __post_init__(self) -> None:
        if self.order not in (2, 3):
            raise ConfigError(f"HMMTaggerConfig.order must be 2 or 3, got {self.order}")
        for name, least in (("n_words", 2), ("n_tags", 1), ("suffix_length", 1), ("rare_word_count", 1),
                            ("n_suffix_buckets", 1)):
            if getattr(self, name) < least:
                raise ConfigError(f"HMMTaggerConfig.{name} must be >= {least}, got {getattr(self, name)}")
        if self.suffix_theta is not None and not self.suffix_theta >= 0:
            raise ConfigError(f"HMMTaggerConfig.suffix_theta must be >= 0 or None, got {self.suffix_theta}")
        if not 0 <= self.smoothing < 1:
            raise ConfigError(f"HMMTaggerConfig.smoothing must be in [0, 1), got {self.smoothing}")

    @property
    def n_classes(self) -> int:
        return 2 if self.capitalisation else 1


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


# --- The tagger -----------------------------------------------------------------------------------


@register("hmm", task="tag", config=HMMTaggerConfig, trains="fit")
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
    def fit(self, task: Any, *, progress: bool = False, deadline: float | None = None) -> Self:
        """Count words, tag symbol n-grams and rare-word endings of ``task.splits["train"]``.

        ``progress`` and ``deadline`` (a ``time.monotonic()`` instant) are accepted, as by every
        model that fits itself, and ignored: counting has no iterations to report or cut short.

        Raises:
            ConfigError: the config's vocabulary or tag set sizes differ from the task's.
            DataError: the task has no training sentences.
        """
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
        """``P(z3 | z1, z2)`` (S, S, S), float64: ``interpolated_transitions`` with the floor
        ``s / (C K + 1)`` under every symbol that can follow (all but BOS)."""
        smoothing, s = self.config.smoothing, self.trigram_counts.shape[0]
        floor = torch.full((s,), 1.0 / (s - 1), dtype=torch.float64, device=self.trigram_counts.device)
        floor[s - 2] = 0.0                                                 # BOS never follows
        return (1 - smoothing) * interpolated_transitions(self.trigram_counts, self.config.order) + smoothing * floor

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
        # The floor: f(w) P(t | w) -> f(w) ((1 - s) P(t | w) + s P^(t)), unseen words with f(w) = 1.
        smoothing = self.config.smoothing
        counts = (1 - smoothing) * counts + smoothing * counts.sum(-1, keepdim=True) * self.tag_probabilities()
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

    @torch.no_grad()
    def loss(self, batch: Any) -> Tensor:
        """``sum_n -log p(y_n | w_n) / (number of real words)`` over a ``TaggingBatch`` with gold
        tags y (else DataError): ``p(y | w) = p(w, y) / sum_y' p(w, y')`` under the HMM ``tag``
        decodes with, end transition included (``trigram_log_likelihood``). A float64 scalar
        without gradient (counts are not trained); ``inf`` when some sentence's gold tags have
        probability zero: TnT gives a training word no tag it never had (``f(w, t) = 0``).
        """
        if batch.tags is None:
            raise DataError("the loss needs the gold tags; give a TaggingBatch with tags")
        log_emit, classes = self.emissions(batch)                         # (B, T, K) float64
        mask = batch.mask.to(log_emit.device)
        log_likelihood = trigram_log_likelihood(self.log_transitions, log_emit, batch.tags, mask, classes)
        return -log_likelihood.sum() / mask.sum()
