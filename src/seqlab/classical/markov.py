"""Markov chains of order k over tokens: maximum likelihood with optional add-k smoothing.

A chain of order k predicts each token from exactly the k tokens before it, with

    p(w | c) = (n(c w) + a) / (n(c .) + a V)

where ``n(c w)`` counts ``c`` followed by ``w`` in training, ``n(c .)`` counts ``c`` followed by
anything, V is ``vocab_size`` and ``a = add_k`` (0: maximum likelihood, 1: Laplace).

A context never followed by anything in training has no transitions of its own; it is shortened
until it has: the chain predicts with the transitions of the longest suffix of its last k tokens
seen in training, down to the order-0 distribution ``(n(w) + a) / (N + a V)`` (a variable-order
chain at unseen contexts only; Buhlmann and Wyner 1999). The same rule covers the start of a
stream, where fewer than k tokens have been read, and the first token of a sample is drawn from
the order-0 distribution. Orders are never mixed: that is the difference from
``seqlab.classical.ngram``, whose estimators back off or interpolate with weights. The state is
the last k tokens read.

Sentences: with ``sentence_start_id`` (set by a sentence-per-line ``lm`` task) that id is
``<s>``, context only: no transition is counted across it (each sentence is counted apart, as in
``seqlab.classical.ngram``), it is never predicted (probability 0, and V above counts the other
ids), and a context holding it but first was never seen, so the chain restarts at it.

For order 1, the transition matrix ``P[i, j] = p(j | i)`` gives the stationary distribution
(``pi P = pi``, ``sum pi = 1``) and the entropy rate
``H = -sum_i pi_i sum_j P_ij ln P_ij`` in nats (Cover and Thomas 2006, Theorem 4.2.4).

Shapes: B batch, T time, V ``vocab_size``, k ``order``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import torch
from torch import Tensor, nn

from seqlab.classical import counts as ngrams
from seqlab.classical.counts import ABSENT, NGramTable, check_ids
from seqlab.contracts import CausalLM
from seqlab.errors import ConfigError, DataError
from seqlab.registry import register


@dataclass(frozen=True, kw_only=True)
class MarkovConfig:
    """A Markov chain language model.

    Attributes:
        vocab_size: number of token ids V.
        order: k, the number of previous tokens each prediction depends on (3, with add_k 0.03,
            suits the built-in corpus at character level).
        add_k: pseudo-count added to every transition; 0 is maximum likelihood (unseen
            transitions get probability 0), 1 is Laplace.
        sentence_start_id: the id of <s> when the task's tokens hold sentence markers (a
            sentence-per-line lm task sets it): never predicted, and no transition crosses it.
    """

    vocab_size: int
    order: int = 3
    add_k: float = 0.03
    sentence_start_id: int | None = None

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ConfigError(f"MarkovConfig.vocab_size must be >= 1, got {self.vocab_size}")
        if self.order < 1:
            raise ConfigError(f"MarkovConfig.order must be >= 1, got {self.order}")
        if not self.add_k >= 0:
            raise ConfigError(f"MarkovConfig.add_k must be >= 0, got {self.add_k}")
        if self.sentence_start_id is not None and not (0 <= self.sentence_start_id < self.vocab_size
                                                       and self.vocab_size >= 2):
            raise ConfigError(f"MarkovConfig.sentence_start_id must be an id in [0, vocab_size) leaving another "
                              f"to predict, or None; got {self.sentence_start_id} with vocab_size {self.vocab_size}")


@register("markov", task="lm", config=MarkovConfig, trains="fit")
class MarkovChain(CausalLM):
    """Markov chain of order k (maximum likelihood or add-k transitions).

    ``tables[j - 1]`` holds the j-grams seen in training (``seqlab.classical.counts``): ``count``
    n(j-gram), ``log_prob`` = ln p(last | first j - 1) and ``log_unseen`` = ln p(w | j-gram) for
    any w never seen after it (empty for the top order). Before fitting: uniform.
    """

    def __init__(self, config: MarkovConfig):
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.order = config.order
        self.start_id = config.sentence_start_id
        self.n_predicted = config.vocab_size - (self.start_id is not None)       # V
        values = {"count": torch.long, "log_prob": torch.float32, "log_unseen": torch.float32}
        self.tables = nn.ModuleList(NGramTable(values) for _ in range(config.order + 1))
        empty = [torch.zeros(0, dtype=torch.long)] * config.order
        self._set_tables([torch.arange(config.vocab_size)] + empty,
                         [torch.zeros(config.vocab_size, dtype=torch.long)] + empty)

    def fit(self, task: Any, *, progress: bool = False, deadline: float | None = None) -> Self:
        """Count the transitions of ``task.splits["train"].ids``, in closed form:
        ``progress`` and ``deadline``, taken as by every model that fits itself, are ignored."""
        return self.fit_stream(ngrams.training_ids(task, self.vocab_size, "markov"))

    def fit_stream(self, stream: Tensor) -> MarkovChain:
        """Count every transition of orders 1 .. k in one token stream (L,); returns self."""
        stream = torch.as_tensor(stream, dtype=torch.long).reshape(-1).cpu()
        if stream.numel() == 0:
            raise DataError("the training data is empty: a Markov chain needs at least one token")
        check_ids(stream, self.vocab_size, "training stream")
        counted = ngrams.count_ngrams(stream, self.order + 1, self.vocab_size, start_id=self.start_id)
        counts = [order.counts for order in counted]
        if self.start_id is not None:                    # <s> is read, never predicted
            counts[0] = counts[0].clone()
            counts[0][self.start_id] = 0
        self._set_tables([order.keys for order in counted], counts)
        return self

    def _set_tables(self, keys: list[Tensor], counts: list[Tensor]) -> None:
        """Fill the k + 1 tables from their keys and counts (float64 arithmetic)."""
        vocab, add_k, n_predicted = self.vocab_size, self.config.add_k, self.n_predicted
        followed = [counts[0].sum().double()] + [                               # n(c .) per context c
            torch.bincount(ngrams.prefixes_and_last(key, vocab)[0], weights=count.double(),
                           minlength=len(below))
            for below, key, count in zip(keys, keys[1:], counts[1:])]
        for j, table in enumerate(self.tables):
            context = ngrams.prefixes_and_last(keys[j], vocab)[0]
            total = followed[0] if j == 0 else followed[j][context]
            log_unseen = (_transition(torch.zeros_like(followed[j + 1]), followed[j + 1], add_k, n_predicted).log()
                          if j < self.order else torch.zeros(0))
            log_prob = _transition(counts[j].double(), total, add_k, n_predicted).log()
            if j == 0 and self.start_id is not None:
                log_prob[self.start_id] = -torch.inf
            table.fill(keys[j], count=counts[j], log_prob=log_prob, log_unseen=log_unseen)

    # ---- the causal-LM contract ---------------------------------------------------------------

    def init_state(self, batch_size: int) -> Tensor:
        """(B, k) ids of the last k tokens, ``ABSENT`` where fewer have been read."""
        return torch.full((batch_size, self.order), ABSENT, dtype=torch.long, device=self.tables[0].keys.device)

    def forward_from(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """All positions at once, continuing from ``state``: (B, T, V) and the new (B, k) state."""
        check_ids(tokens, self.vocab_size, "token")
        batch, length = tokens.shape
        history = torch.cat([state, tokens.long()], dim=1)                      # (B, k + T)
        windows = ngrams.window_indices(self.tables[:-1], history, self.vocab_size)
        n_read = torch.cumsum(history >= 0, dim=1)[:, self.order:]               # (B, T)
        contexts = [w[:, self.order:].reshape(-1) for w in windows]
        log_probs = self._next_log_probs(contexts, n_read.reshape(-1))
        return log_probs.view(batch, length, self.vocab_size), history[:, length:]

    def _next_log_probs(self, contexts: list[Tensor], n_read: Tensor) -> Tensor:
        """(R, V) transitions out of the longest suffix of each row's last ``min(n_read, k)``
        tokens that was seen followed by a token in training (order 0 if none was).

        Args:
            contexts: ``contexts[j - 1]`` (R,) the index of the row's last j tokens in
                ``tables[j - 1]``, ``ABSENT`` if never seen.
            n_read: (R,) tokens read so far.
        """
        rows = self.tables[0].log_prob.expand(len(n_read), -1).clone()           # (R, V) order 0
        longest_seen = torch.zeros_like(n_read)
        for j, context in enumerate(contexts, start=1):
            readable = torch.where(n_read >= j, context, ABSENT)
            start, stop = self.tables[j].continuations(readable, self.vocab_size)
            longest_seen = torch.where(stop > start, j, longest_seen)
        for j, context in enumerate(contexts, start=1):
            context = torch.where(longest_seen == j, context, ABSENT)
            unseen = ngrams.take(self.tables[j - 1].log_unseen, context, 0.0)
            rows = torch.where((context >= 0)[:, None], unseen[:, None], rows)
            following = self.tables[j]
            ngrams.scatter_continuations(rows, context, following, following.log_prob, self.vocab_size)
        if self.start_id is not None:
            rows[:, self.start_id] = -torch.inf
        return rows

    # ---- the chain itself ---------------------------------------------------------------------

    def transition_matrix(self) -> Tensor:
        """(V, V) float64 ``P[i, j] = p(j | i)`` of an order-1 chain, from the counts (a state never
        seen followed by a token moves by the order-0 distribution)."""
        if self.order != 1:
            raise ConfigError(f"the transition matrix is defined here for order 1, not {self.order}")
        vocab, add_k, n_predicted = self.vocab_size, self.config.add_k, self.n_predicted
        pairs = self.tables[1]
        counts = torch.zeros(vocab * vocab, dtype=torch.float64, device=pairs.keys.device)
        counts[pairs.keys] = pairs.count.double()           # key = i * V + j for order 1
        counts = counts.view(vocab, vocab)
        total = counts.sum(dim=1, keepdim=True)
        first = self.tables[0].count.double()
        order_zero = _transition(first, first.sum(), add_k, n_predicted)       # for states never followed
        transition = torch.where(total > 0, _transition(counts, total, add_k, n_predicted), order_zero)
        if self.start_id is not None:
            transition[:, self.start_id] = 0.0
        return transition

    def stationary_distribution(self) -> Tensor:
        """(V,) float64 pi with ``pi P = pi`` and ``sum pi = 1``, by solving the linear system
        ``(P^T - I) pi = 0`` with its last equation replaced by ``sum pi = 1``.

        A fitted chain has one closed class (every state it saw leads to its last one, and
        states never followed move by the order-0 distribution), so pi is unique.

        Raises:
            DataError: the system is singular (a chain with several closed classes).
        """
        transition = self.transition_matrix()
        vocab = self.vocab_size
        system = transition.T - torch.eye(vocab, dtype=torch.float64, device=transition.device)
        system[-1] = 1.0
        target = torch.zeros(vocab, dtype=torch.float64, device=transition.device)
        target[-1] = 1.0
        solution, info = torch.linalg.solve_ex(system, target)
        if int(info) != 0 or not torch.isfinite(solution).all():
            raise DataError("the chain has several closed classes: its stationary distribution is not unique")
        return solution

    def entropy_rate(self) -> float:
        """``H = -sum_i pi_i sum_j P_ij ln P_ij`` in nats per token (0 ln 0 = 0)."""
        transition = self.transition_matrix()
        row_entropy = -torch.special.xlogy(transition, transition).sum(dim=1)
        return float(self.stationary_distribution() @ row_entropy)

    def sample(self, length: int, seed: int | None = None) -> Tensor:
        """A sequence of ``length`` tokens: the first drawn from ``(n(w) + a) / (N + a V)``, the
        rest from the chain. Returns (length,) int64."""
        if length < 1:
            raise ConfigError(f"length must be >= 1, got {length}")
        device = self.tables[0].keys.device
        generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        first = torch.multinomial(self.tables[0].log_prob.exp(), 1, generator=generator)
        return self.generate(first[None], length - 1, seed=seed)[0]


def _transition(count: Tensor, total: Tensor, add_k: float, vocab: int) -> Tensor:
    """(count + a) / (total + a V), and the uniform 1 / V where total is 0 (float64 in and out)."""
    return torch.where(total > 0, (count + add_k) / (total + add_k * vocab), 1.0 / vocab)
