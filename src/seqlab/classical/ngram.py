"""N-gram language models of any order, stored in back-off (ARPA) form.

Every estimator is fitted into the form KenLM and SRILM store: for each stored n-gram ``h w`` a
probability ``p*(w | h)``, for each stored context ``h`` a back-off weight ``b(h)``, and

    p(w | h) = p*(w | h)                      if h w is stored,
             = b(h) p(w | h')                 otherwise (h' drops the first word of h; b = 1
                                              for an unstored h),

down to a unigram distribution that covers the whole vocabulary. With counts ``c``, ``V`` the
number of predictable ids (``vocab_size``, less one when ``<s>`` is among them, see Streams) and
``N1+(h .)`` the number of distinct words after h:

- ``mle``: ``p* = c(h w) / c(h .)``; nothing is left for unseen words (they get probability 0).
- ``add_k``: ``p* = (c(h w) + k) / (c(h .) + k V)`` (Laplace for k = 1, Lidstone otherwise); the
  mass ``k (V - N1+(h .)) / (c(h .) + k V)`` of unseen words goes to the lower order, Katz style.
- ``good_turing``: ``p* = d_c c / c(h .)`` with the Good-Turing discount ``d_r = r* / r`` of each
  order, ``r*`` from Gale and Sampson's (1995) Simple Good-Turing over that order's counts of
  counts (smooth in r, so every count is discounted: Katz's cut-off, which kept raw Turing
  estimates away from large r, is not needed); Katz (1987) back-off gives the freed mass to the
  lower order, renormalised over the words unseen after h:
  ``b(h) = (1 - sum_seen p*) / (1 - sum_seen p(w | h'))``.
- ``absolute``: interpolated absolute discounting (Ney, Essen and Kneser 1994):
  ``p(w | h) = max(c(h w) - D, 0) / c(h .) + gamma(h) p(w | h')``, ``gamma(h) = D N1+(h .) / c(h .)``,
  ``D = n1 / (n1 + 2 n2)`` per order from its counts of counts ``n_r``.
- ``kneser_ney``: the same with Kneser and Ney's (1995) continuation counts below the highest
  order: ``c(h w)`` becomes ``N1+(. h w)``, the number of distinct words seen before ``h w``.
  As in KenLM, n-grams that start with ``<s>`` keep their counts (nothing can precede ``<s>``).
- ``modified_kneser_ney``: three discounts per order (Chen and Goodman 1998, eq. 26), for counts
  1, 2 and 3+: ``Y = n1 / (n1 + 2 n2)``, ``D1 = 1 - 2Y n2/n1``, ``D2 = 2 - 3Y n3/n2``,
  ``D3+ = 3 - 4Y n4/n3``; ``gamma(h) = (D1 N1(h .) + D2 N2(h .) + D3+ N3+(h .)) / c(h .)``.

Interpolated models are exactly back-off models with ``p*(w | h) = p(w | h)`` and ``b(h) = gamma(h)``.
The unigram level of the three discounting estimators interpolates with the uniform ``1 / V``, so
``<unk>`` (id 0 of seqlab's tokenizers, never seen in training) gets ``gamma() / V``, as KenLM
gives it. A discount that the counts of counts cannot give (a division by zero, or outside
``[0, r]``) falls back to KenLM's ``--discount_fallback`` values 0.5, 1, 1.5.

Pruning (``prune_singletons``) drops n-grams of order 3 and above seen once, keeps every other
probability, and recomputes the back-off weights so that each distribution still sums to one
(as SRILM does after pruning). Raw counts never grow with the order, so what remains keeps every
prefix and suffix of its n-grams.

Streams: ``<s>`` is a context-only id that is never predicted (probability 0) and that no n-gram
holds but as its first id, so the context starts afresh after it: it is the model's extra id
``vocab_size``, or, when the task's tokens hold sentence markers (a sentence-per-line ``lm``
task), the task's own ``<s>``, ``sentence_start_id``, among the ``vocab_size`` ids (then
``vocab_size - 1`` ids are predictable). ``fit(task)`` reads the training block as
``<s> x_1 ... x_N``, ``<s>`` put first unless the block starts with it: one sentence without
``</s>`` for a plain text, every sentence apart (as ``seqlab.classical.arpa.fit_sentences``
counts) for a stream ``<s> w .. </s> <s> ...``. Every stream the model scores starts with the
same implicit ``<s>``: the state is the last ``order - 1`` ids of ``<s> x_1 ... x_t``.
``fit_stream`` takes several sentences, each starting with ``<s>`` (and ending with whatever id
the caller uses as ``</s>``); see ``seqlab.classical.arpa``.

Shapes: B batch, T time, V ``vocab_size``, n ``order``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Self, get_args

import torch
from torch import Tensor, nn

from seqlab.classical import counts as ngrams
from seqlab.classical.counts import (
    ABSENT, NGramTable, absolute_discount, check_ids, good_turing_discounts, modified_kneser_ney_discounts,
)
from seqlab.classical.external_counts import MIN_MEMORY_BYTES, count_ngrams_bounded
from seqlab.contracts import CausalLM
from seqlab.errors import ConfigError, DataError
from seqlab.registry import register

Estimator = Literal["mle", "add_k", "good_turing", "absolute", "kneser_ney", "modified_kneser_ney"]
ESTIMATORS: tuple[str, ...] = get_args(Estimator)
INTERPOLATED = ("absolute", "kneser_ney", "modified_kneser_ney")
NO_LOWER_MASS = 1e-10        # below this, 1 - sum_seen p(w | h') is rounding error: nothing unseen


@dataclass(frozen=True, kw_only=True)
class NGramConfig:
    """An n-gram language model.

    Attributes:
        vocab_size: number of token ids V the model reads and scores (``<s>`` is the extra id V,
            unless sentence_start_id names one of them).
        order: n, the longest n-gram; the model conditions on the last n - 1 ids. 8 suits the
            built-in corpus at character level; 5 is the usual choice for words.
        estimator: how probabilities are estimated from counts (see the module docstring).
        add_k: k of ``add_k``: 1 is Laplace (add-one), other values Lidstone.
        discount: a fixed D for ``absolute`` and ``kneser_ney``, in (0, 1]; None estimates
            ``D = n1 / (n1 + 2 n2)`` for each order.
        prune_singletons: drop n-grams of order >= 3 seen once, then renormalise.
        sentence_start_id: the id of <s> among the vocab_size ids, when the task's tokens hold
            sentence markers (a sentence-per-line lm task sets it): never predicted, and the
            context restarts at it; none: <s> is the extra id vocab_size.
        memory: bytes of working memory for counting (at least 4096): the stream is counted a
            chunk at a time, sorted runs spilled to a temporary directory and merged, as lmplz
            does (seqlab.classical.external_counts); the counts are the same. None counts the
            whole stream in memory.
    """

    vocab_size: int
    order: int = 8
    estimator: Estimator = "modified_kneser_ney"
    add_k: float = 1.0
    discount: float | None = None
    prune_singletons: bool = False
    sentence_start_id: int | None = None
    memory: int | None = None

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ConfigError(f"NGramConfig.vocab_size must be >= 1, got {self.vocab_size}")
        if self.order < 1:
            raise ConfigError(f"NGramConfig.order must be >= 1, got {self.order}")
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"NGramConfig.estimator must be one of {', '.join(ESTIMATORS)}, "
                              f"got {self.estimator!r}")
        if not self.add_k > 0:
            raise ConfigError(f"NGramConfig.add_k must be > 0 (use estimator 'mle' for none), got {self.add_k}")
        if self.discount is not None and not 0 < self.discount <= 1:
            raise ConfigError(f"NGramConfig.discount must be in (0, 1] or None, got {self.discount}")
        if self.sentence_start_id is not None and not (0 <= self.sentence_start_id < self.vocab_size
                                                       and self.vocab_size >= 2):
            raise ConfigError(f"NGramConfig.sentence_start_id must be an id in [0, vocab_size) leaving another "
                              f"to predict, or None; got {self.sentence_start_id} with vocab_size {self.vocab_size}")
        if self.memory is not None and (isinstance(self.memory, bool) or not isinstance(self.memory, int)
                                        or self.memory < MIN_MEMORY_BYTES):
            raise ConfigError(f"NGramConfig.memory must be a number of bytes >= {MIN_MEMORY_BYTES} or None, "
                              f"got {self.memory!r}")

    @property
    def start_id(self) -> int:
        """The id of ``<s>``: ``sentence_start_id``, else the extra id ``vocab_size``."""
        return self.vocab_size if self.sentence_start_id is None else self.sentence_start_id

    @property
    def n_ids(self) -> int:
        """The ids a model's tables hold: the predictable ids, and ``<s>`` when it is an extra id."""
        return self.vocab_size + (self.sentence_start_id is None)


@register("ngram", task="lm", config=NGramConfig, trains="fit")
class NGramLM(CausalLM):
    """N-gram language model (mle, add-k, Good-Turing/Katz, absolute discounting, Kneser-Ney).

    ``tables[k - 1]`` holds the n-grams of order k (``seqlab.classical.counts``): ``keys``,
    ``log_prob`` = ln p*(w | h) and ``log_backoff`` = ln b(h) of each n-gram as a context (empty
    at the highest order). Before fitting, the model is the uniform distribution over V ids.
    """

    def __init__(self, config: NGramConfig):
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.order = config.order
        self.start_id, self.n_ids = config.start_id, config.n_ids
        values = {"log_prob": torch.float32, "log_backoff": torch.float32}
        self.tables = nn.ModuleList(NGramTable(values) for _ in range(config.order))
        uniform = torch.full((self.n_ids,), -math.log(self.n_ids - 1))
        uniform[self.start_id] = -math.inf
        self.tables[0].fill(torch.arange(self.n_ids), log_prob=uniform, log_backoff=torch.zeros(self.n_ids))
        # D1, D2, D3+ of each order, as fitted (0 for estimators that subtract none, and unfitted).
        self.register_buffer("discounts", torch.zeros(config.order, 3, dtype=torch.float64))

    # ---- fitting ------------------------------------------------------------------------------

    def fit(self, task: Any, *, progress: bool = False, deadline: float | None = None) -> Self:
        """Fit to ``task.splits["train"].ids`` read as ``<s> x_1 ... x_N`` (``<s>`` put first
        unless the block starts with it), in closed form: ``progress`` and ``deadline``, taken
        as by every model that fits itself, are ignored."""
        ids = ngrams.training_ids(task, self.vocab_size, "ngram")
        if ids.numel() and int(ids[0]) == self.start_id:
            return self.fit_stream(ids)
        return self.fit_stream(torch.cat([torch.tensor([self.start_id]), ids]))

    def fit_stream(self, stream: Tensor) -> NGramLM:
        """Fit to one stream of sentences, each starting with ``<s>`` (``start_id``).

        Args:
            stream: (L,) ids in ``[0, n_ids)``; ``stream[0]`` must be ``<s>`` (``start_id``).
        Returns:
            self, fitted.
        """
        stream = torch.as_tensor(stream, dtype=torch.long).reshape(-1).cpu()
        if stream.numel() < 2:
            raise DataError("the training data is empty: an n-gram model needs at least one token")
        check_ids(stream, self.n_ids, "training stream")
        if int(stream[0]) != self.start_id:
            raise DataError(f"a training stream must start with <s> (id {self.start_id}), "
                            f"got id {int(stream[0])}")
        if self.config.memory is None:
            counted = ngrams.count_ngrams(stream, self.order, self.n_ids, start_id=self.start_id)
        else:
            counted = count_ngrams_bounded(torch.split(stream, 2**20), self.order, self.n_ids,
                                           start_id=self.start_id, memory_bytes=self.config.memory)
        return self.fit_counted(counted)

    def fit_counted(self, counted: list[ngrams.CountedOrder]) -> NGramLM:
        """Fit to counted tables, as ``count_ngrams`` or ``count_ngrams_bounded`` return them for
        a stream of sentences each starting with ``<s>`` (a stream too large to hold at once can
        be counted chunk by chunk from disk with ``count_ngrams_bounded``).

        Returns:
            self, fitted.
        """
        fitted = _Fit(counted, self.n_ids, self.start_id, self.config)
        if self.config.prune_singletons:         # pruning renormalises with every order's float64 p*
            probs, backoffs, discounts = fitted.estimate()
            keys, probs, backoffs = fitted.prune(probs, backoffs)
            log_probs, log_backoffs = [p.log() for p in probs], [b.log() for b in backoffs]
        else:                                    # each order's float64 p* kept while the next one needs it
            keys = fitted.keys
            log_probs, log_backoffs, discounts = fitted.estimate(logs=True)
        self.discounts.copy_(discounts)
        self.set_tables(keys, log_probs, log_backoffs)
        return self

    def set_tables(self, keys: list[Tensor], log_probs: list[Tensor], log_backoffs: list[Tensor], *,
                   source: str | None = None) -> None:
        """Install fitted (or read) tables: per order, sorted keys (N_k,), ln p* (N_k,) and ln b
        (N_k,) (empty at the highest order). Order 1 is dense over the ``n_ids`` ids. Keys read
        from ``source``, a file, are checked to be sorted at their first search
        (``NGramTable.fill_from_file``)."""
        for table, key, log_prob, log_backoff in zip(self.tables, keys, log_probs, log_backoffs):
            if source is None:
                table.fill(key, log_prob=log_prob, log_backoff=log_backoff)
            else:
                table.fill_from_file(source, key, log_prob=log_prob, log_backoff=log_backoff)

    # ---- the causal-LM contract ---------------------------------------------------------------

    def init_state(self, batch_size: int) -> Tensor:
        """(B, n - 1) ids: ``<s>`` last, padded on the left with ``ABSENT`` (no id)."""
        state = torch.full((batch_size, self.order - 1), ABSENT, dtype=torch.long, device=self.discounts.device)
        if self.order > 1:
            state[:, -1] = self.start_id
        return state

    def forward_from(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """All positions at once, continuing from ``state``: (B, T, V) and the new (B, n - 1) state."""
        check_ids(tokens, self.vocab_size, "token")
        batch, length = tokens.shape
        history = torch.cat([state, tokens.long()], dim=1)                      # (B, n - 1 + T)
        windows = ngrams.window_indices(self.tables[:-1], history, self.n_ids)
        contexts = [w[:, self.order - 1:].reshape(-1) for w in windows]           # (B T,) each
        log_probs = self._next_log_probs(contexts, batch * length)
        return log_probs.view(batch, length, self.vocab_size), history[:, length:]

    def log_prob(self, tokens: Tensor) -> Tensor:
        """ln p(tokens[:, 1:] | <s>, tokens[:, 0]) from targeted lookups (no (B, T, V) tensor)."""
        check_ids(tokens, self.vocab_size, "token")
        history = torch.cat([self.init_state(tokens.shape[0]), tokens.long()], dim=1)
        return self.score_stream(history)[:, self.order:].sum(dim=-1)

    def score_stream(self, history: Tensor) -> Tensor:
        """ln p(history[:, t] | history[:, :t]) for every t, by one back-off lookup per token.

        With L the longest order whose n-gram ending at t is stored,
        ``ln p = ln p*_L + sum_{j >= L} ln b(context of length j)``, added in the same order as
        ``forward`` adds them, so the two agree to the last bit. ``<s>`` inside a row starts a
        new sentence. Positions holding ``<s>`` or padding get 0.

        The windows are followed up the orders in compact form, over the flattened rows: the
        k-grams searched are the stored (k - 1)-grams extended by the next id of their row, so
        each order searches only the windows that can still be stored.

        Args:
            history: (B, L) ids in ``[0, n_ids)`` or ``ABSENT``.
        Returns:
            (B, L) float32 natural-log probabilities.
        """
        present = (history >= 0) & (history < self.n_ids)                        # (B, L)
        continues = torch.zeros_like(present)           # t + 1 is an id of the same row
        continues[:, :-1] = present[:, 1:]
        ids, continues = history.reshape(-1), continues.reshape(-1)               # (B L,)
        last = max(ids.numel() - 1, 0)
        end = present.reshape(-1).nonzero().squeeze(1)  # (M_k,) where a stored k-gram ends
        found = ids.index_select(0, end)                # (M_k,) its index in tables[k - 1]
        scores = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
        longest = torch.zeros_like(ids)                                            # 0: no id here
        contexts = []            # per order k < n: the stored k-grams as contexts of the next position
        for k, table in enumerate(self.tables, start=1):
            if k > 1:
                following, extends, _ = contexts[-1]
                query = found * self.n_ids + ids.index_select(0, following)
                found = table.find(torch.where(extends, query, ABSENT))
                kept = (found >= 0).nonzero().squeeze(1)
                end, found = following.index_select(0, kept), found.index_select(0, kept)
            scores.index_copy_(0, end, table.log_prob.index_select(0, found))     # higher orders overwrite
            longest.index_fill_(0, end, k)
            if k < self.order:   # the next position, whether it is an id of the same row, the context
                contexts.append(((end + 1).clamp(max=last), continues.index_select(0, end), found))
        for j, (table, (following, extends, found)) in enumerate(zip(self.tables, contexts), start=1):
            backs_off = extends & (longest.index_select(0, following) <= j)
            log_backoff = table.log_backoff.index_select(0, found)
            scores.index_add_(0, following, torch.where(backs_off, log_backoff, 0.0))
        return torch.where((history >= 0) & (history != self.start_id), scores.view(history.shape), 0.0)

    def _next_log_probs(self, contexts: list[Tensor], n_rows: int) -> Tensor:
        """Full next-token distributions, ``ln p(. | h)``: (R, V).

        ``contexts[j - 1]`` (R,) is the index of each row's last j ids in ``tables[j - 1]``
        (``ABSENT`` if not stored). Start from the unigrams, and for j = 1 .. n - 1 multiply in
        b(h_j) and overwrite the words stored after h_j with their p*.
        """
        rows = self.tables[0].log_prob[: self.vocab_size].expand(n_rows, -1).clone()   # (R, V)
        for j, context in enumerate(contexts, start=1):
            table = self.tables[j - 1]
            rows += ngrams.take(table.log_backoff, context, 0.0)[:, None]
            following = self.tables[j]
            ngrams.scatter_continuations(rows, context, following, following.log_prob, self.n_ids)
        return rows

    def bytes_per_ngram(self) -> float:
        """Memory of the stored tables divided by the number of stored n-grams."""
        stored = sum(len(t) for t in self.tables)
        size = sum(b.numel() * b.element_size() for t in self.tables for b in t.buffers())
        return size / max(stored, 1)


class _Fit:
    """The estimators, over counted tables (float64 arithmetic; see the module docstring).

    What is held for every order is what the counting made (keys; counts and suffix indices as
    int32 where they fit, which is exact) and one bool an n-gram (whether it starts with ``<s>``);
    an order's prefix indices and float64 counts are made when it is estimated, so that the
    working memory of a large model is about one order's (``benchmarks/ngram_scale.py``).

    Args:
        counted: per order, from ``count_ngrams``; the list is emptied, so that the int64
            originals of what is narrowed can be freed.
    """

    def __init__(self, counted: list[ngrams.CountedOrder], n_ids: int, start_id: int, config: NGramConfig):
        self.n_ids, self.start_id, self.config, self.vocab_size = n_ids, start_id, config, n_ids - 1
        self.keys, self.raw_counts, self.suffix = [], [], []
        while counted:
            order = counted.pop(0)
            self.keys.append(order.keys)
            self.raw_counts.append(_narrowed(order.counts))
            self.suffix.append(None if order.suffix is None else _narrowed(order.suffix))
            del order
        self.starts = [torch.arange(n_ids) == start_id]              # whether each n-gram starts with <s>
        for k in range(2, len(self.keys) + 1):
            self.starts.append(self.starts[-1][self.prefix(k)])

    def prefix(self, k: int) -> Tensor:
        """(N_k,) the index of each k-gram's (k - 1)-gram prefix (zeros for the unigrams)."""
        if k == 1:
            return torch.zeros(self.n_ids, dtype=torch.long)
        return ngrams.prefixes_and_last(self.keys[k - 1], self.n_ids)[0]

    def counts(self, k: int) -> Tensor:
        """(N_k,) float64 the k-grams' raw counts (a new tensor)."""
        return self.raw_counts[k - 1].to(torch.float64, copy=True)

    def estimate(self, logs: bool = False) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Per order p* (N_k,) and b (N_k, or 0 at the top), and the (n, 3) discounts. With
        ``logs``, ln p* and ln b as float32 (what the model stores, to the bit), each order's
        float64 p* given up as soon as the order above has used it."""
        if self.config.estimator in INTERPOLATED:
            return self._interpolate(logs)
        probs, backoffs = self._back_off(logs)
        return probs, backoffs, torch.zeros(len(self.keys), 3, dtype=torch.float64)

    @staticmethod
    def _add_order(probs: list[Tensor], backoffs: list[Tensor], prob: Tensor, backoff: Tensor | None,
                   logs: bool) -> None:
        """Append an order's p* (and its contexts' b); with ``logs``, the order below becomes ln p*
        in float32 now that this one has used it."""
        if logs and probs:
            probs[-1] = probs[-1].log().float()
        probs.append(prob)
        if backoff is not None:
            backoffs.append(backoff.log().float() if logs else backoff)

    @staticmethod
    def _finish(probs: list[Tensor], backoffs: list[Tensor], logs: bool) -> None:
        """The top order's p* to ln p* (with ``logs``) and its empty b."""
        if logs:
            probs[-1] = probs[-1].log().float()
        backoffs.append(torch.zeros(0, dtype=torch.float32 if logs else torch.float64))

    def _interpolate(self, logs: bool) -> tuple[list[Tensor], list[Tensor], Tensor]:
        order, estimator = len(self.keys), self.config.estimator
        probs, backoffs, discounts = [], [], []
        for k in range(1, order + 1):
            counts = self.counts(k)
            if estimator != "absolute" and k < order:          # Kneser-Ney continuation counts
                continuation = torch.bincount(self.suffix[k], minlength=len(counts)).double()
                counts = torch.where(self.starts[k - 1], counts, continuation)
                del continuation
            if k == 1:
                counts[self.start_id] = 0.0                    # <s> is never predicted
            discount = self._discounts(counts)
            discounts.append(discount)
            taken = torch.where(counts >= 3, discount[2], torch.where(counts == 2, discount[1], discount[0]))
            taken = torch.where(counts > 0, taken, 0.0)
            context = self.prefix(k)
            n_contexts = 1 if k == 1 else len(self.keys[k - 2])
            total = torch.bincount(context, weights=counts, minlength=n_contexts)
            gamma = torch.where(total > 0, torch.bincount(context, weights=taken, minlength=n_contexts)
                                / total.clamp(min=1e-300), 1.0)
            # p* = (c - D(c)) / total(h) + gamma(h) p(w | h'), made in place: one order's arrays are
            # the largest the estimator holds
            prob = counts.sub_(taken)
            del counts, taken
            prob.div_(total.clamp(min=1e-300)[context])
            lower = torch.full_like(prob, 1 / self.vocab_size) if k == 1 else probs[-1][self.suffix[k - 1]]
            prob.add_(lower.mul_(gamma[context]))
            del lower, context
            if k == 1:
                prob[self.start_id] = 0.0
            self._add_order(probs, backoffs, prob, None if k == 1 else gamma, logs)
        self._finish(probs, backoffs, logs)
        return probs, backoffs, torch.stack(discounts)

    def _discounts(self, counts: Tensor) -> Tensor:
        """(D1, D2, D3+) from the counts of counts of ``counts`` (a fixed D repeated)."""
        if self.config.discount is not None:
            return torch.full((3,), self.config.discount, dtype=torch.float64)
        n = torch.bincount(counts.long().clamp(max=5), minlength=6)[1:5].tolist()
        if self.config.estimator == "modified_kneser_ney":
            return modified_kneser_ney_discounts(*n)
        return torch.full((3,), absolute_discount(n[0], n[1]), dtype=torch.float64)

    def _back_off(self, logs: bool) -> tuple[list[Tensor], list[Tensor]]:
        """mle, add_k and good_turing: discounted p*, then Katz back-off weights."""
        estimator, order, vocab = self.config.estimator, len(self.keys), self.vocab_size
        probs, backoffs = [], []
        for k in range(1, order + 1):
            counts = self.counts(k)
            if k == 1:
                counts[self.start_id] = 0.0
            context = self.prefix(k)
            n_contexts = 1 if k == 1 else len(self.keys[k - 2])
            total = torch.bincount(context, weights=counts, minlength=n_contexts)[context]
            if estimator == "add_k":
                prob = (counts + self.config.add_k) / (total + self.config.add_k * vocab)
            elif estimator == "good_turing":
                prob = good_turing_discounts(counts) * counts / total
            else:
                prob = counts / total
            if k == 1:                                  # dense: unseen words share what is left
                prob[self.start_id] = 0.0
                unseen = (counts == 0)
                unseen[self.start_id] = False
                left = max(0.0, 1.0 - float(prob.sum())) if estimator != "mle" else 0.0
                prob = (prob + left * unseen / unseen.sum()) if unseen.any() else prob / prob.sum()
            backoff = None
            if k > 1:
                prob, backoff = _renormalised_backoff(prob, probs[-1][self.suffix[k - 1]], context,
                                                      n_contexts, vocab, exact_mle=estimator == "mle")
            self._add_order(probs, backoffs, prob, backoff, logs)
        self._finish(probs, backoffs, logs)
        return probs, backoffs

    def prune(self, probs: list[Tensor], backoffs: list[Tensor]
              ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Drop n-grams of order >= 3 seen once; recompute the back-off weight of every context
        that lost a continuation, ``b(h) = (1 - sum_kept p*) / (1 - sum_kept p(w | h'))``, so each
        distribution still sums to one; re-key the orders above (their prefix indices moved)."""
        order = len(self.keys)
        keeps = [self.raw_counts[k - 1] >= 2 if k >= 3 else torch.ones(len(self.keys[k - 1]), dtype=torch.bool)
                 for k in range(1, order + 1)]
        backoffs = list(backoffs)
        for k in range(3, order + 1):
            keep, context, n_contexts = keeps[k - 1], self.prefix(k), len(self.keys[k - 2])
            kept_mass = torch.bincount(context[keep], weights=probs[k - 1][keep], minlength=n_contexts)
            lower = probs[k - 2][self.suffix[k - 1][keep]]
            lower_mass = torch.bincount(context[keep], weights=lower, minlength=n_contexts)
            renormalised = (1 - kept_mass).clamp(min=0) / (1 - lower_mass).clamp(min=1e-300)
            lost = torch.bincount(context[~keep], minlength=n_contexts) > 0
            backoffs[k - 2] = torch.where(lost, renormalised, backoffs[k - 2])
        keys, kept_probs, kept_backoffs = [], [], []
        for k in range(1, order + 1):
            keep, key = keeps[k - 1], self.keys[k - 1]
            if k >= 2:                                 # prefixes of kept n-grams are kept
                new_index = torch.cumsum(keeps[k - 2], 0) - 1
                prefix, last = ngrams.prefixes_and_last(key, self.n_ids)
                key = new_index[prefix] * self.n_ids + last
            keys.append(key[keep])
            kept_probs.append(probs[k - 1][keep])
            kept_backoffs.append(backoffs[k - 1][keep] if k < order else backoffs[k - 1])
        return keys, kept_probs, kept_backoffs


def _narrowed(values: Tensor) -> Tensor:
    """``values`` as int32 when every one fits (the same numbers in half the memory)."""
    if len(values) and (int(values.min()) < -2**31 or int(values.max()) >= 2**31):
        return values
    return values.to(torch.int32)


def _renormalised_backoff(prob: Tensor, lower: Tensor, context: Tensor, n_contexts: int, vocab: int,
                          exact_mle: bool) -> tuple[Tensor, Tensor]:
    """Katz's back-off weight ``b(h) = (1 - sum_seen p*) / (1 - sum_seen p(w | h'))``.

    A context whose unseen words have no lower-order probability (every word seen, or the rest at
    probability 0) has nowhere to send what is left: its p* are renormalised and b = 1, as SRILM
    does when the denominator vanishes. Under mle nothing is left (b = 0: unseen words get 0).

    Args:
        prob: (N,) p* of the n-grams of one order; ``lower`` (N,) p(w | h') of their suffixes.
        context: (N,) the prefix index of each n-gram.
    Returns:
        p* (N,) and b (n_contexts,).
    """
    seen_mass = torch.bincount(context, weights=prob, minlength=n_contexts)
    lower_mass = torch.bincount(context, weights=lower, minlength=n_contexts)
    n_seen = torch.bincount(context, minlength=n_contexts)
    left = torch.zeros_like(seen_mass) if exact_mle else (1 - seen_mass).clamp(min=0)
    complete = (n_seen >= vocab) | (1 - lower_mass <= NO_LOWER_MASS)
    backoff = torch.where(complete, 1.0, left / (1 - lower_mass).clamp(min=1e-300))
    backoff = torch.where(n_seen == 0, 1.0, backoff)
    prob = torch.where(complete[context], prob / seen_mass.clamp(min=1e-300)[context], prob)
    return prob, backoff
