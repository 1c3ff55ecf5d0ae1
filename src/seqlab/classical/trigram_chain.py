"""The second-order HMM chain of the TnT tagger: Viterbi, the forward algorithm and path scores.

A sentence of L words with per-word scores ``e_t(k)`` (emissions ``log P(w_t | t_t)``) and
observed classes ``c_t`` (capitalisation) has, for tags ``y``, the joint log-probability

    log p(w, y) = sum_t e_t(y_t) + sum_{t=0}^{L} log P(z_t | z_{t-2}, z_{t-1})

over the symbols ``z_t = y_t + K c_t`` of the words, padded as ``BOS BOS z_0 .. z_{L-1} EOS``
(Brants 2000, eq. 1; ``z_L = EOS``). Symbols are numbered ``0 .. C K - 1``, then BOS = C K and
EOS = C K + 1: S = C K + 2 in all. A first-order model is a second-order one whose table does
not depend on ``z1``.

Both chain algorithms run over tag pairs: ``a_t(b, c)`` is the best (Viterbi, max) or the total
(forward, log-sum-exp) score of the tag paths whose words t - 1 and t carry tags b and c,

    a_t(b, c) = (max | logsumexp)_a  a_{t-1}(a, b) + log P(c | a, b) + e_t(c),

K^3 per word, where a first-order chain over the K^2 pairs would cost K^4. The forward
algorithm's total over every tag sequence, end transition included, is
``log Z = log sum_y p(w, y)``, and ``log p(y | w) = log p(w, y) - log Z``: any term that does
not depend on the tags (such as the ``P(w)`` Bayes' rule leaves out of the HMM tagger's
unseen-word emissions) cancels.

Every fast function has its specification beside it, by enumeration of the K^L tag sequences
of one sentence: ``hmm_viterbi_ref``, ``trigram_log_partition_ref`` and ``path_score_ref``.

Shapes: B sentences, T words, K tags, C classes, S = C K + 2 symbols.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from seqlab.errors import DataError
from seqlab.ops.chain import check_chain_mask


class ClassTables(NamedTuple):
    """A (S, S, S) transition table cut by the classes of the words each transition joins."""

    by_classes: Tensor    # (C^3, K, K, K): [c_a C^2 + c_b C + c_c, a, b, c] log P(c | a, b) inside a sentence
    after_bos: Tensor     # (C, C, K, K): [c_a, c_b, a, b] log P(b | BOS, a)
    before_eos: Tensor    # (C, C, K, K): [c_a, c_b, a, b] log P(EOS | a, b)
    start: Tensor         # (C, K): log P(a | BOS, BOS)
    start_end: Tensor     # (C, K): log P(EOS | BOS, a), a sentence of one word


def class_tables(log_transitions: Tensor, k: int, dtype: torch.dtype) -> tuple[int, ClassTables]:
    """The number of classes C and the tables of ``log_transitions`` (S, S, S) for K = ``k`` tags.

    Raises:
        DataError: the table is not (C K + 2,) * 3 for a whole number C.
    """
    n_classes = (log_transitions.shape[0] - 2) // k
    if n_classes < 1 or log_transitions.shape != (n_classes * k + 2,) * 3:
        raise DataError(f"transitions of shape {tuple(log_transitions.shape)} do not fit {k} tags")
    bos, eos, ck = n_classes * k, n_classes * k + 1, n_classes * k
    trans = log_transitions.to(dtype)
    inner = trans[:ck, :ck, :ck].reshape(n_classes, k, n_classes, k, n_classes, k).permute(0, 2, 4, 1, 3, 5)
    return n_classes, ClassTables(
        by_classes=inner.reshape(n_classes ** 3, k, k, k),
        after_bos=trans[bos, :ck, :ck].reshape(n_classes, k, n_classes, k).transpose(1, 2),
        before_eos=trans[:ck, :ck, eos].reshape(n_classes, k, n_classes, k).transpose(1, 2),
        start=trans[bos, bos, :ck].reshape(n_classes, k),
        start_end=trans[bos, :ck, eos].reshape(n_classes, k),
    )


def _prepare(log_transitions: Tensor, log_emit: Tensor, mask: Tensor | None,
             classes: Tensor | None) -> tuple[Tensor, Tensor, int, ClassTables, Tensor]:
    """The checked mask (B, T), the classes (B, T) (0 if None), C, the class tables, and the
    class triple of every word from the third on (B, T - 2), an index into ``by_classes``."""
    mask = check_chain_mask(log_emit, mask)
    batch, length, k = log_emit.shape
    n_classes, tables = class_tables(log_transitions, k, log_emit.dtype)
    if classes is None:
        classes = torch.zeros(batch, length, dtype=torch.long, device=log_emit.device)
    combos = (classes[:, :-2] * n_classes + classes[:, 1:-1]) * n_classes + classes[:, 2:]
    return mask, classes, n_classes, tables, combos


def trigram_viterbi(log_transitions: Tensor, log_emit: Tensor, mask: Tensor | None = None,
                    classes: Tensor | None = None) -> Tensor:
    """The best tags of a second-order HMM, by Viterbi over tag pairs (module docstring).

    Each word's class (its capitalisation) is observed, so its symbol is ``tag + K class`` and
    only K tags are searched per word.

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
    mask, classes, n_classes, tables, combos = _prepare(log_transitions, log_emit, mask, classes)
    batch, length, k = log_emit.shape
    by_classes, after_bos, before_eos = tables.by_classes, tables.after_bos, tables.before_eos

    first = tables.start[classes[:, 0]] + log_emit[:, 0]                   # (B, K): the pair (BOS, t_0)
    # deltas[t] (B, K, K) [a, b] scores the pair (t_{t-1}, t_t) = (a, b). Steps write into buffers
    # allocated once, and keep no argmax: the best t_{t-2} is recomputed along the best path
    # only, while tracing it back (a max with indices over the middle dim is ~20x slower on CPU).
    deltas = log_emit.new_empty(length, batch, k, k)
    if length > 1:
        torch.add(first[:, :, None] + after_bos[classes[:, 0], classes[:, 1]], log_emit[:, 1, None, :],
                  out=deltas[1])
    scores = log_emit.new_empty(batch, k, k, k)                            # [a, b, c]
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
    ends[alone, k] = first[alone] + tables.start_end[classes[alone, 0]]
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


def trigram_log_partition(log_transitions: Tensor, log_emit: Tensor, mask: Tensor | None = None,
                          classes: Tensor | None = None) -> Tensor:
    """``log Z = log sum_y p(w, y)`` of each sentence, by the forward algorithm over tag pairs.

    The log-sum-exp counterpart of ``trigram_viterbi`` (same arguments): ``log_alpha`` (B, K, K)
    ``[b, c]`` is the log total of the tag paths whose last two words carry (b, c), from the
    pair (BOS, t_0) on; each sentence closes with its end transition at its last word. A step
    stays in log space by shifting: with ``m_b = max_a log_alpha(a, b)`` and
    ``s_bc = max_a log P(c | a, b)``, ``logsumexp_a (log_alpha(a, b) + log P(c | a, b))`` is
    ``log sum_a exp(log_alpha(a, b) - m_b) exp(log P(c | a, b) - s_bc) + m_b + s_bc``, every
    exponential at most 1: a batched matrix product, taken for all C^3 class triples at once
    (C^3 is 8 at most) and picked per sentence, which is many times faster than a logsumexp
    over a (B, K, K, K) gather. Terms more than ~700 nats (float64; ~87 in float32) below
    their column's best flush to zero.

    Returns:
        (B,) log Z, in the dtype of ``log_emit``.
    """
    mask, classes, _, tables, combos = _prepare(log_transitions, log_emit, mask, classes)
    length = log_emit.shape[1]
    log_emit = log_emit.masked_fill(~mask[..., None], 0.0)     # padding is never read; keep it finite
    rows, last = torch.arange(len(mask), device=mask.device), mask.sum(1) - 1
    column_shift = tables.by_classes.amax(1)                                    # (C^3, K, K) [b, c]
    column_shift = column_shift.masked_fill(column_shift == float("-inf"), 0.0)
    exp_by_classes = (tables.by_classes - column_shift[:, None]).exp()         # (C^3, K, K, K), <= 1
    first = tables.start[classes[:, 0]] + log_emit[:, 0]                   # (B, K): the pair (BOS, t_0)
    log_z = torch.logsumexp(first + tables.start_end[classes[:, 0]], dim=-1)            # one-word sentences
    log_alpha = first
    for t in range(1, length):
        if t == 1:
            log_alpha = first[:, :, None] + tables.after_bos[classes[:, 0], classes[:, 1]] + log_emit[:, 1, None, :]
        else:
            peak = log_alpha.amax(1, keepdim=True).clamp_min(torch.finfo(log_alpha.dtype).min)    # (B, 1, K)
            every_triple = torch.einsum("nab,zabc->nzbc", (log_alpha - peak).exp(), exp_by_classes)
            combo = combos[:, t - 2]
            log_alpha = (every_triple[rows, combo].log() + peak.transpose(1, 2) + column_shift[combo]
                         + log_emit[:, t, None, :])                                       # (B, K, K) [b, c]
        ending = log_alpha + tables.before_eos[classes[:, t - 1], classes[:, t]]
        log_z = torch.where(last == t, torch.logsumexp(ending.flatten(1), dim=-1), log_z)
    return log_z


def trigram_path_score(log_transitions: Tensor, log_emit: Tensor, tags: Tensor, mask: Tensor | None = None,
                       classes: Tensor | None = None) -> Tensor:
    """``log p(w, y)`` of given tags (B, T) (any value at padding); other arguments as in
    ``trigram_viterbi``. Returns (B,); ``-inf`` where a transition or emission of the path is."""
    mask, classes, n_classes, _, _ = _prepare(log_transitions, log_emit, mask, classes)
    batch, length, k = log_emit.shape
    if tuple(tags.shape) != (batch, length):
        raise DataError(f"tags must have shape {(batch, length)}, got {tuple(tags.shape)}")
    tags = tags.to(log_emit.device).long().masked_fill(~mask, 0)
    if len(outside := ((tags < 0) | (tags >= k)).nonzero()):
        sentence, word = outside[0].tolist()
        raise DataError(f"tag {int(tags[sentence, word])} of word {word} of sentence {sentence} is outside [0, {k})")
    lengths = mask.sum(1)
    bos, eos = n_classes * k, n_classes * k + 1
    symbols = torch.full((batch, length + 3), bos, dtype=torch.long, device=log_emit.device)
    symbols[:, 2:length + 2] = tags + k * classes                          # BOS BOS z_0 .. z_{L-1} EOS
    symbols[torch.arange(batch, device=log_emit.device), lengths + 2] = eos
    windows = symbols.unfold(1, 3, 1)                                      # (B, T + 1, 3)
    transition = log_transitions.to(log_emit.dtype)[windows[..., 0], windows[..., 1], windows[..., 2]]
    counted = torch.arange(length + 1, device=log_emit.device) <= lengths[:, None]     # L words, then EOS
    emitted = log_emit.gather(2, tags[..., None])[..., 0]                  # (B, T)
    return torch.where(counted, transition, 0.0).sum(1) + torch.where(mask, emitted, 0.0).sum(1)


def trigram_log_likelihood(log_transitions: Tensor, log_emit: Tensor, tags: Tensor, mask: Tensor | None = None,
                           classes: Tensor | None = None) -> Tensor:
    """``log p(y | w) = log p(w, y) - log Z`` (B,) of given tags (arguments as in
    ``trigram_path_score``); ``-inf`` for a tag path of probability zero."""
    score = trigram_path_score(log_transitions, log_emit, tags, mask, classes)
    log_z = trigram_log_partition(log_transitions, log_emit, mask, classes)
    return torch.where(score == float("-inf"), score, score - log_z)


# --- References: enumeration of every tag sequence of one sentence ------------------------------


def path_score_ref(log_transitions: Tensor, log_emit: Tensor, tags: Sequence[int], order: int,
                   classes: Sequence[int] | None = None) -> float:
    """``log p(w, y)`` of one sentence's tags, term by term (module docstring).

    Args:
        log_transitions: ``log P(z3 | z1, z2)`` (S, S, S) for order 3, ``log P(z3 | z2)`` (S, S)
            for order 2; symbols as in ``trigram_viterbi``.
        log_emit: (L, K) scores of one sentence.
        tags: its L tags.
        classes: the class of each of the L words; None: all 0.
    """
    k = log_emit.shape[1]
    classes = [0] * len(tags) if classes is None else list(classes)
    ck = log_transitions.shape[0] - 2
    symbols = (ck,) * (order - 1) + tuple(t + k * c for t, c in zip(tags, classes)) + (ck + 1,)
    score = sum(float(log_emit[i, tag]) for i, tag in enumerate(tags))
    return score + sum(float(log_transitions[symbols[i:i + order]]) for i in range(len(symbols) - order + 1))


def hmm_viterbi_ref(log_transitions: Tensor, log_emit: Tensor, order: int,
                    classes: Sequence[int] | None = None) -> tuple[Tensor, float]:
    """The best tags of one sentence by enumerating all K^L of them: the specification of
    ``trigram_viterbi`` (arguments as in ``path_score_ref``). Returns (L,) tags and their score."""
    length, k = log_emit.shape
    best_score, best_tags = float("-inf"), None
    for tags in itertools.product(range(k), repeat=length):
        score = path_score_ref(log_transitions, log_emit, tags, order, classes)
        if best_tags is None or score > best_score:
            best_score, best_tags = score, tags
    return torch.tensor(best_tags), best_score


def trigram_log_partition_ref(log_transitions: Tensor, log_emit: Tensor, order: int,
                              classes: Sequence[int] | None = None) -> float:
    """``log Z`` of one sentence as the log-sum-exp of all K^L path scores: the specification of
    ``trigram_log_partition`` (arguments as in ``path_score_ref``)."""
    length, k = log_emit.shape
    scores = [path_score_ref(log_transitions, log_emit, tags, order, classes)
              for tags in itertools.product(range(k), repeat=length)]
    top = max(scores)
    if top == float("-inf"):
        return top
    return top + math.log(sum(math.exp(score - top) for score in scores))
