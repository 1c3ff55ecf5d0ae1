"""CTC prefix beam search with shallow fusion of a language model (Hannun, Maas, Jurafsky and
Ng 2014, "First-pass large vocabulary continuous speech recognition using bi-directional
recurrent DNNs", algorithm 1; the prefix search of Graves et al. 2006, section 3.2).

Many CTC paths collapse to one labelling (``seqlab.speech.ctc``), so the search runs over
labellings, *prefixes* l, and keeps for each the probability of the first t frames' paths that
collapse to l, split by the id of frame t:

    p_b(l; t)   paths ending in a blank,     p_nb(l; t)   paths ending in l's last symbol,
    p(l; t) = p_b(l; t) + p_nb(l; t).

Starting from ``p_b(empty; 0) = 1``, ``p_nb(empty; 0) = 0``, frame t (ids' probabilities y_t)
updates every prefix l of the beam and each one-symbol extension l + c:

    p_b(l; t)      += p(l; t - 1) y_t(blank)                   # a blank keeps the prefix
    p_nb(l; t)     += p_nb(l; t - 1) y_t(l_last)                # repeating the last symbol too
    p_nb(l + c; t) += p_b(l; t - 1) y_t(c)   if c == l_last     # a repeat needs a blank between
                      p(l; t - 1) y_t(c)     otherwise

so after the last frame ``p(l; T) = p_ctc(l | x)`` for every prefix that was never pruned. With
a prefix scorer (a language model) the beam is ranked by the fused score

    score(l) = log p_ctc(l | x) + lm_weight * log p_lm(l) + length_bonus * |l|,

``log p_lm(l) = sum_i log p(l_i | l_<i)``, each term added once when the prefix is extended
(the scorer's state is cached per prefix, so every prefix costs one step of the LM), and the
LM's end-of-sentence score ``log p(end | l)`` is added to the finished hypotheses. With a beam
that holds every prefix (no pruning) the search is exact: the best hypothesis is the argmax of
``score`` over all labellings, and its score is that maximum.

Shapes: B utterances, T frames, V ids (blank 0 included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from seqlab.classical.ngram import NGramLM
from seqlab.contracts import CausalLM, device_of
from seqlab.errors import ConfigError, DataError
from seqlab.speech.recogniser import BLANK

Hypothesis = tuple[list[int], float]        # (symbol ids, fused score)


@runtime_checkable
class PrefixScorer(Protocol):
    """A left-to-right scorer of symbol sequences (a language model), for shallow fusion.

    - ``initial()``: the state before any symbol;
    - ``advance(state, symbol) -> (log p(symbol | prefix), new state)``; ``state`` stays usable
      (the search extends one prefix by several symbols);
    - ``finish(state) -> log p(end | prefix)``, 0.0 for a scorer without an end.
    """

    def initial(self) -> Any: ...
    def advance(self, state: Any, symbol: int) -> tuple[float, Any]: ...
    def finish(self, state: Any) -> float: ...


@dataclass(eq=False)
class _LMNode:
    """A prefix as the LM sees it: its parent's node and the LM id read after it; the LM state
    and next-id log-probabilities are computed the first time the prefix is extended."""

    parent: _LMNode | None
    token: int
    lm_state: Any = None
    next_log_probs: list[float] | None = None     # (V_lm,)


class NGramScorer:
    """A seqlab causal LM (e.g. ``NGramLM``) as a ``PrefixScorer`` over the recogniser's ids.

    The LM reads ``<s>``, then the prefix's symbols mapped to its ids; ``finish`` scores
    ``end_lm_id`` (the id that ended the LM's training sentences), or 0.0 without one. An
    ``NGramLM`` starts from its own ``<s>`` (``start_id``; its first distribution is
    ``p(. | <s>)`` from ``score_stream``); any other causal LM reads ``start_lm_id`` first.
    Each prefix costs at most one ``step``, taken when the prefix is first extended; an LM whose
    state is a tensor of ids (an n-gram's last n - 1 ids) steps once per distinct state and id,
    as prefixes that end alike share the step. The LM's ``step`` must leave the state it reads
    usable (several extensions of a prefix read its state; an ``NGramLM`` builds a new one).

    Args:
        lm: a causal LM with the recurrent view (``init_state``, ``step``).
        symbol_to_lm_id: the LM id of each recogniser symbol; None: the same ids.
        start_lm_id: the id the LM reads first; required unless ``lm`` is an ``NGramLM``.
        end_lm_id: the LM's end-of-sentence id, or None for no end score.
    Raises:
        ConfigError: an LM id outside the LM's vocabulary, or no way to start the LM.
    """

    def __init__(self, lm: CausalLM, symbol_to_lm_id: dict[int, int] | None = None, *,
                 start_lm_id: int | None = None, end_lm_id: int | None = None):
        self.lm, self.symbol_to_lm_id = lm, symbol_to_lm_id
        self.start_lm_id, self.end_lm_id = start_lm_id, end_lm_id
        named = dict(symbol_to_lm_id or {}) | {"start_lm_id": start_lm_id, "end_lm_id": end_lm_id}
        for name, lm_id in named.items():
            if lm_id is not None and not 0 <= lm_id < lm.vocab_size:
                what = name if isinstance(name, str) else f"symbol_to_lm_id[{name}]"
                raise ConfigError(f"{what} = {lm_id} is outside the LM's {lm.vocab_size} ids")
        if start_lm_id is None and not isinstance(lm, NGramLM):
            raise ConfigError(f"a {type(lm).__name__} has no <s> of its own: give start_lm_id, the id it reads first")
        self.device = device_of(lm)
        # (state's ids, id read) -> (next state, next-id log-probs), for states made of ids.
        self._by_context: dict[tuple[tuple[int, ...], int], tuple[Any, list[float]]] = {}
        self._own_start: tuple[Any, list[float]] | None = None     # an NGramLM's state and p(. | <s>)

    def initial(self) -> _LMNode:
        """The node of the empty prefix: the LM after ``<s>``."""
        return _LMNode(parent=None, token=-1 if self.start_lm_id is None else self.start_lm_id)

    def advance(self, state: _LMNode, symbol: int) -> tuple[float, _LMNode]:
        """``log p(symbol | prefix)`` and the (lazy) node of the extended prefix."""
        lm_id = self.lm_id(symbol)
        return self._next_log_probs(state)[lm_id], _LMNode(parent=state, token=lm_id)

    def finish(self, state: _LMNode) -> float:
        """``log p(end_lm_id | prefix)``, 0.0 without an end id."""
        return 0.0 if self.end_lm_id is None else self._next_log_probs(state)[self.end_lm_id]

    def lm_id(self, symbol: int) -> int:
        """The LM id of a recogniser symbol."""
        if self.symbol_to_lm_id is None:
            if not 0 <= symbol < self.lm.vocab_size:
                raise DataError(f"symbol {symbol} is outside the LM's {self.lm.vocab_size} ids; "
                                f"give NGramScorer a symbol_to_lm_id mapping")
            return symbol
        if symbol not in self.symbol_to_lm_id:
            raise DataError(f"symbol {symbol} has no LM id; add it to NGramScorer's symbol_to_lm_id")
        return self.symbol_to_lm_id[symbol]

    def _next_log_probs(self, node: _LMNode) -> list[float]:
        """``log p(. | node's prefix)`` over the LM's ids, computed once per node by one LM step."""
        if node.next_log_probs is None:
            if node.parent is None and self.start_lm_id is None:
                node.lm_state, node.next_log_probs = self._after_own_start()
            else:
                previous = self.lm.init_state(1) if node.parent is None else node.parent.lm_state
                node.lm_state, node.next_log_probs = self._step(previous, node.token)
            node.parent = None                                     # its state is no longer needed
        return node.next_log_probs

    @torch.no_grad()
    def _step(self, state: Any, token: int) -> tuple[Any, list[float]]:
        """The LM's state after reading ``token`` and its next-id log-probabilities there."""
        context = None
        if isinstance(state, Tensor) and not state.is_floating_point():
            context = (tuple(state.flatten().tolist()), token)
            if context in self._by_context:
                return self._by_context[context]
        logits, state = self.lm.step(torch.tensor([token], device=self.device), state)
        result = state, torch.log_softmax(logits[0].double(), dim=-1).tolist()
        if context is not None:
            self._by_context[context] = result
        return result

    @torch.no_grad()
    def _after_own_start(self) -> tuple[Any, list[float]]:
        """An NGramLM's initial state and ``log p(. | <s>)``, by ``score_stream`` over ``<s> w``."""
        if self._own_start is not None:
            return self._own_start
        lm: Any = self.lm
        words = torch.arange(lm.vocab_size, device=self.device)
        history = torch.stack([torch.full_like(words, lm.start_id), words], dim=1)   # (V_lm, 2)
        logits = lm.score_stream(history)[:, 1].clone()
        if lm.start_id < lm.vocab_size:                         # <s> among the ids is never predicted
            logits[lm.start_id] = -math.inf
        self._own_start = lm.init_state(1), torch.log_softmax(logits.double(), dim=-1).tolist()
        return self._own_start


@dataclass
class _Beam:
    """A prefix's CTC probabilities (log p_b, log p_nb) at the current frame."""

    log_blank: float = -math.inf
    log_label: float = -math.inf

    @property
    def log_total(self) -> float:
        return log_add(self.log_blank, self.log_label)


def ctc_prefix_beam_search(log_probs: Tensor, *, beam_size: int, scorer: PrefixScorer | None = None,
                           lm_weight: float = 0.0, length_bonus: float = 0.0,
                           prune_log_prob: float | None = None) -> list[Hypothesis]:
    """The n best labellings of one utterance by CTC prefix beam search (module docstring).

    Args:
        log_probs: (T, V) log-probabilities of the ids of each frame, blank 0.
        beam_size: prefixes kept after each frame, and the most hypotheses returned.
        scorer: a ``PrefixScorer`` (a language model) for shallow fusion; None: none.
        lm_weight: the scorer's weight; the scorer is not consulted when it is 0.
        length_bonus: added per symbol of a hypothesis (counters the LM's bias to short ones).
        prune_log_prob: extend prefixes only by symbols whose frame log-probability is at
            least this (Hannun et al.'s threshold); None: every symbol.
    Returns:
        Up to ``beam_size`` ``(symbol ids, fused score)``, best first; the score counts the
        scorer's end score. Hypotheses of probability zero are left out.
    Raises:
        ConfigError: a beam size below 1. DataError: ``log_probs`` not (T, V) floats, T >= 1.
    """
    if beam_size < 1:
        raise ConfigError(f"beam_size must be >= 1, got {beam_size}")
    if log_probs.dim() != 2 or not log_probs.is_floating_point() or log_probs.shape[0] < 1:
        raise DataError(f"log_probs must be a (T, V) float tensor with T >= 1, got "
                        f"{tuple(log_probs.shape)} {log_probs.dtype}")
    fused = scorer is not None and lm_weight != 0.0
    # LM score (sum of log p(l_i | l_<i)) and scorer state of every prefix met so far.
    lm_memo: dict[tuple[int, ...], tuple[float, Any]] = {(): (0.0, scorer.initial() if fused else None)}

    def prior(prefix: tuple[int, ...]) -> float:
        """lm_weight * log p_lm(prefix) + length_bonus * |prefix|, the LM part by one advance."""
        if not fused:
            return length_bonus * len(prefix)
        if prefix not in lm_memo:
            parent_score, parent_state = lm_memo[prefix[:-1]]
            log_p, state = scorer.advance(parent_state, prefix[-1])
            lm_memo[prefix] = (parent_score + log_p, state)
        return lm_weight * lm_memo[prefix][0] + length_bonus * len(prefix)

    beam: dict[tuple[int, ...], _Beam] = {(): _Beam(log_blank=0.0)}
    for frame in log_probs.detach().double().cpu().tolist():
        symbols = [c for c in range(len(frame)) if c != BLANK and frame[c] > -math.inf
                   and (prune_log_prob is None or frame[c] >= prune_log_prob)]
        extended: dict[tuple[int, ...], _Beam] = {}
        for prefix, probs in beam.items():
            kept = extended.setdefault(prefix, _Beam())
            kept.log_blank = log_add(kept.log_blank, probs.log_total + frame[BLANK])
            if prefix:
                kept.log_label = log_add(kept.log_label, probs.log_label + frame[prefix[-1]])
            for symbol in symbols:
                source = probs.log_blank if prefix and symbol == prefix[-1] else probs.log_total
                if source + frame[symbol] > -math.inf:
                    child = extended.setdefault(prefix + (symbol,), _Beam())
                    child.log_label = log_add(child.log_label, source + frame[symbol])
        alive = [(probs.log_total + prior(prefix), prefix) for prefix, probs in extended.items()
                 if probs.log_total > -math.inf]
        alive.sort(key=lambda scored: scored[0], reverse=True)
        beam = {prefix: extended[prefix] for _, prefix in alive[:beam_size]}

    def final_score(prefix: tuple[int, ...]) -> float:
        end = lm_weight * scorer.finish(lm_memo[prefix][1]) if fused else 0.0
        return beam[prefix].log_total + prior(prefix) + end

    finished = sorted(((list(prefix), final_score(prefix)) for prefix in beam), key=lambda h: h[1], reverse=True)
    return [hypothesis for hypothesis in finished if hypothesis[1] > -math.inf]


def ctc_prefix_beam_search_batch(log_probs: Tensor, lengths: Tensor | None = None, **options: Any
                                 ) -> list[list[Hypothesis]]:
    """``ctc_prefix_beam_search`` over each utterance of a batch.

    Args:
        log_probs: (B, T, V) log-probabilities.
        lengths: (B,) frames of each utterance, 1 <= lengths <= T; None: all T.
        **options: those of ``ctc_prefix_beam_search`` (``beam_size`` required).
    Returns:
        The n-best list of each utterance.
    Raises:
        DataError: a bad shape or length.
    """
    if log_probs.dim() != 3:
        raise DataError(f"log_probs must be (B, T, V), got {tuple(log_probs.shape)}")
    batch, frames, _ = log_probs.shape
    frame_counts = [frames] * batch if lengths is None else [int(n) for n in lengths.reshape(-1).tolist()]
    if len(frame_counts) != batch:
        raise DataError(f"lengths holds {len(frame_counts)} values for a batch of {batch} utterances")
    for index, count in enumerate(frame_counts):
        if not 1 <= count <= frames:
            raise DataError(f"utterance {index} of the batch has length {count}, outside [1, T = {frames}]")
    return [ctc_prefix_beam_search(log_probs[b, :count], **options) for b, count in enumerate(frame_counts)]


def log_add(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) of two floats, -inf allowed."""
    if a < b:
        a, b = b, a
    return a if b == -math.inf else a + math.log1p(math.exp(b - a))
