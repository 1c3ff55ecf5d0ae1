"""Decoding: greedy, temperature, top-k and nucleus sampling, and beam search.

Written once against the recurrent views of the contracts, so the prefix is never re-encoded
(a Transformer keeps its key/value cache, an RNN its hidden state):

- causal LMs (:class:`~seqlab.contracts.CausalLM`): :func:`generate`; ``prefill`` reads the
  prompt, then ``step`` reads one token at a time;
- encoder-decoders (:class:`~seqlab.contracts.EncoderDecoder`): :func:`decode_greedy`,
  :func:`decode_sample` and :func:`beam_search`; ``encode`` reads the source once,
  ``init_state`` puts the memory in the state, ``step`` reads one target token at a time and
  ``select`` keeps, drops, repeats and reorders batch rows of a state. The source is (B, S)
  token ids, or (B, S, F) float frames for a model with ``source_is_features = True`` (a
  speech encoder-decoder, ``seqlab.speech.whisper``).

Shapes: B batch, T prompt length, S source length, K beam size, V vocabulary size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from seqlab.contracts import CausalLM, EncoderDecoder, device_of
from seqlab.errors import ConfigError, DataError


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not temperature >= 0:  # also rejects NaN
        raise ConfigError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1] or None, got {top_p}")


def filter_logits(
    logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """Temperature, then top-k, then top-p filtering, in log space.

    With scores ``s = logits / temperature`` (Ackley, Hinton and Sejnowski 1985):

    - top-k (Fan, Lewis and Dauphin 2018) keeps the ``k`` highest scores; on ties exactly ``k``
      are kept, as ``torch.topk`` picks them.
    - top-p, nucleus sampling (Holtzman et al. 2020, sec. 3.1), takes ``p = softmax(s)`` over
      the tokens top-k kept, sorts it so ``p_(1) >= p_(2) >= ...`` and keeps the smallest prefix
      whose mass reaches ``top_p``: ``(j)`` is kept iff ``sum_{i<j} p_(i) < top_p``. The most
      probable token is always kept.

    Args:
        logits: (B, V) next-token scores.
        temperature: > 0; below 1 sharpens, above 1 flattens (0, greedy, is for :func:`sample_next`).
        top_k: keep this many tokens (>= 1), or None for all.
        top_p: nucleus mass in (0, 1], or None for all.
    Returns:
        (B, V) float32 scores ``s``, with every filtered entry set to ``-inf``; not renormalised,
        so ``softmax`` of it is the sampling distribution.
    """
    _check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        raise ConfigError("filter_logits needs temperature > 0; temperature 0 (greedy) is sample_next's")
    scores = logits.float() / temperature                                       # (B, V)
    if top_k is not None and top_k < scores.shape[-1]:
        kept_scores, kept_ids = scores.topk(top_k, dim=-1)                      # (B, k)
        scores = torch.full_like(scores, float("-inf")).scatter(-1, kept_ids, kept_scores)
    if top_p is not None and top_p < 1:
        sorted_scores, sorted_ids = scores.sort(dim=-1, descending=True)        # (B, V)
        sorted_probs = sorted_scores.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1).roll(1, dims=-1)              # sum_{i<j} p_(i)
        drop_sorted = mass_before >= top_p
        # The top token is always kept (the roll put the total mass there; a subnormal top_p
        # would round to 0 in float32 and 0 >= 0 drop it).
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, sorted_ids, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token per row from ``softmax(filter_logits(logits, ...))``.

    ``temperature == 0`` is greedy decoding, ``argmax logits`` (the limit T -> 0; the first
    maximum on ties); top-k and top-p never remove the argmax, so they are ignored there.

    Args:
        logits: (B, V) next-token scores.
        temperature, top_k, top_p: as in :func:`filter_logits`.
        generator: source of randomness, on ``logits``' device; None uses torch's global one.
    Returns:
        (B,) int64 token ids.
    """
    _check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def check_token_ids(ids: Tensor, name: str, shape: str, vocab_size: int, vocabulary: str) -> None:
    """DataError unless ``ids`` is a non-empty 2-D ``shape`` tensor of integer ids in
    ``[0, vocab_size)``; ``name`` and ``vocabulary`` say what it is in the message."""
    if ids.dim() != 2:
        raise DataError(f"{name} must be 2-D {shape}, got shape {tuple(ids.shape)}")
    if ids.numel() == 0:
        raise DataError(f"{name} is empty (shape {tuple(ids.shape)}); give at least one token per row")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise DataError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise DataError(f"{name} holds token id {bad}, outside {vocabulary} [0, {vocab_size})")


@torch.no_grad()
def generate(
    model: CausalLM,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    eos_id: int | Sequence[int] | None = None,
    pad_id: int | None = None,
) -> Tensor:
    """Continue ``prompt`` by sampling from ``model`` token by token.

    Reads the prompt with ``model.prefill`` and every new token with ``model.step``, so the
    cost per token is one step, not a re-encode of the prefix. The model is in eval mode
    during generation and back in its previous mode afterwards.

    Finite context (``model.max_context = C``): a prompt longer than ``C`` is read from its
    last ``C`` tokens only (the returned sequence still holds all of it). When the state holds
    ``C`` tokens and one more must be read, the state is rebuilt by ``prefill`` from the last
    ``max(1, C // 2)`` tokens. Rebuilding is needed because a model with absolute positions
    (learned position embeddings) cannot step past position ``C``; keeping half rather than
    ``C - 1`` tokens amortises the re-encode: ``C // 2`` tokens are re-read every ``~C / 2``
    steps, about one prefill token per generated token instead of ``C``, at the price of a
    shorter context just after each slide.

    Args:
        model: any causal LM.
        prompt: (B, T) token ids in ``[0, vocab_size)``, T >= 1.
        max_new_tokens: the most tokens to append (>= 0).
        temperature, top_k, top_p: as in :func:`sample_next`; ``temperature=0`` is greedy.
        seed: seeds a ``torch.Generator`` on the model's device, so one seed gives one output;
            None draws from torch's global generator.
        eos_id: an id, or several (Llama 3 ends on either of two): generation stops once every
            row has produced one; a row that has is padded until the others finish.
        pad_id: what a finished row is padded with (a checkpoint's pad token); None: the first
            ``eos_id``.
    Returns:
        (B, T + n) int64 ids on the model's device, the prompt then ``n <= max_new_tokens``
        new tokens.
    """
    _check_sampling(temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    vocab_size = model.vocab_size
    eos_ids = [] if eos_id is None else [eos_id] if isinstance(eos_id, int) else list(eos_id)
    checked = [("eos_id", value) for value in eos_ids] + ([("pad_id", pad_id)] if pad_id is not None else [])
    for name, value in checked:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
            raise ConfigError(f"{name} must be in [0, {vocab_size}), got {value!r}")
    filler = pad_id if pad_id is not None else eos_ids[0] if eos_ids else None
    check_token_ids(prompt, "prompt", "(batch, time)", vocab_size, "the vocabulary")

    device = device_of(model)
    tokens = prompt.to(device=device, dtype=torch.long)                         # (B, T)
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    context = model.max_context
    keep = None if context is None else max(1, context // 2)
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=device)  # (B,)
    stops = torch.tensor(eos_ids, dtype=torch.long, device=device)            # (E,)

    was_training = model.training
    model.eval()
    try:
        window = tokens if context is None else tokens[:, -context:]
        logits, state = model.prefill(window)                                   # (B, V)
        n_in_state = window.shape[1]
        for index in range(max_new_tokens):
            next_ids = sample_next(
                logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
            )                                                                   # (B,)
            if eos_ids:
                next_ids = next_ids.masked_fill(finished, filler)
                finished |= torch.isin(next_ids, stops)
            tokens = torch.cat([tokens, next_ids[:, None]], dim=1)              # (B, T + index + 1)
            if index == max_new_tokens - 1 or (eos_ids and bool(finished.all())):
                break  # no logits needed past the last token
            if context is not None and n_in_state + 1 > context:
                logits, state = model.prefill(tokens[:, -keep:])
                n_in_state = keep
            else:
                logits, state = model.step(next_ids, state)
                n_in_state += 1
    finally:
        model.train(was_training)
    return tokens


# --------------------------------------------------------------------------- encoder-decoders

LengthPenalty = Literal["none", "average", "gnmt"]
LENGTH_PENALTIES: tuple[str, ...] = get_args(LengthPenalty)


@dataclass(frozen=True)
class Hypothesis:
    """One decoded target sequence.

    Attributes:
        tokens: the generated ids, without BOS; they end with EOS if the hypothesis ended so,
            and otherwise hold ``max_length`` ids.
        log_prob: ``log p(tokens | source)`` under the model, the sum of the untempered,
            unfiltered ``log_softmax`` of every step's logits at the chosen id (EOS included).
        score: what the search ranked by: ``log_prob`` normalised by the length penalty
            (:func:`normalised_score`); equal to ``log_prob`` for greedy decoding and sampling.
    """

    tokens: list[int]
    log_prob: float
    score: float


@dataclass(frozen=True)
class Decoded:
    """The result of decoding a batch of sources.

    Attributes:
        hypotheses: per source row, its hypotheses, best score first: ``n_best`` of them for
            :func:`beam_search` (fewer only if fewer distinct sequences exist), one for
            greedy decoding and sampling.

    ``sequences``, ``scores`` and ``log_probs`` are those of each row's best hypothesis.
    """

    hypotheses: list[list[Hypothesis]]

    @property
    def sequences(self) -> list[list[int]]:
        """Per row, the best hypothesis' ids: without BOS, with EOS if it ended so."""
        return [row[0].tokens for row in self.hypotheses]

    @property
    def scores(self) -> list[float]:
        """Per row, the best hypothesis' length-normalised score."""
        return [row[0].score for row in self.hypotheses]

    @property
    def log_probs(self) -> list[float]:
        """Per row, the best hypothesis' log-probability."""
        return [row[0].log_prob for row in self.hypotheses]


def strip_eos(ids: Sequence[int], eos_id: int = 2) -> list[int]:
    """The ids before the first ``eos_id`` (all of them if there is none)."""
    ids = list(ids)
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


def _length_divisor(length: int, length_penalty: str, alpha: float) -> float:
    if length_penalty == "average":
        return length**alpha
    if length_penalty == "gnmt":
        return ((5 + length) / 6) ** alpha
    return 1.0


def normalised_score(log_prob: float, length: int, *, length_penalty: LengthPenalty = "none", alpha: float = 1.0) -> float:
    """The score beam search ranks a finished hypothesis by: ``log_prob / lp(length)``.

    ``length`` counts the generated tokens ``|Y|``, EOS included. The penalties:

    - ``"none"``: ``lp = 1``, the plain log-probability (favours short outputs);
    - ``"average"``: ``lp = |Y| ** alpha``; ``alpha = 1`` is the mean log-probability per token;
    - ``"gnmt"``: ``lp = ((5 + |Y|) / 6) ** alpha``, Wu et al. 2016 (GNMT), eq. 14 without the
      coverage penalty; they tune ``alpha`` in [0.6, 0.7].

    Every ``lp`` is non-decreasing in ``|Y|`` for ``alpha >= 0``.
    """
    _check_length_penalty(length_penalty, alpha)
    return log_prob / _length_divisor(length, length_penalty, alpha)


def _check_length_penalty(length_penalty: str, alpha: float) -> None:
    if length_penalty not in LENGTH_PENALTIES:
        raise ConfigError(f"length_penalty must be one of {', '.join(LENGTH_PENALTIES)}, got {length_penalty!r}")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ConfigError(f"alpha must be finite and >= 0, got {alpha}")


def _check_seq2seq_call(
    model: EncoderDecoder, src: Tensor, src_mask: Tensor, max_length: int, bos_id: int, eos_id: int
) -> None:
    if max_length < 1:
        raise ConfigError(f"max_length must be >= 1, got {max_length}")
    for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
        if not 0 <= value < model.tgt_vocab_size:
            raise ConfigError(f"{name} must be in [0, {model.tgt_vocab_size}), got {value}")
    if getattr(model, "source_is_features", False):
        _check_feature_source(src, src_mask)
    else:
        check_token_ids(src, "src", "(batch, source length)", model.src_vocab_size, "the source vocabulary")
        if src_mask.shape != src.shape:
            raise DataError(f"src_mask has shape {tuple(src_mask.shape)}, src has {tuple(src.shape)}; they must match")
    if src_mask.dtype != torch.bool:
        raise DataError(f"src_mask must be bool (true at real tokens), got dtype {src_mask.dtype}")
    empty_rows = (~src_mask.any(dim=1)).nonzero().flatten().tolist()
    if empty_rows:
        raise DataError(f"src_mask has no real token in row {empty_rows[0]}; every source needs >= 1")
    gaps = (src_mask[:, 1:] & ~src_mask[:, :-1]).any(dim=1).nonzero().flatten().tolist()
    if gaps:
        raise DataError(f"src_mask row {gaps[0]} is not left-aligned (a real token follows padding)")


def _check_feature_source(src: Tensor, src_mask: Tensor) -> None:
    """DataError unless ``src`` is a non-empty (B, S, F) float tensor of feature frames and
    ``src_mask`` is (B, S): the source of a model with ``source_is_features = True`` (speech)."""
    if src.dim() != 3:
        raise DataError(f"src must be 3-D (batch, frames, features) feature frames, got shape {tuple(src.shape)}")
    if src.numel() == 0:
        raise DataError(f"src is empty (shape {tuple(src.shape)}); give at least one frame per row")
    if not src.is_floating_point():
        raise DataError(f"src must hold float feature frames, got dtype {src.dtype}")
    if src_mask.shape != src.shape[:2]:
        raise DataError(f"src_mask has shape {tuple(src_mask.shape)}, src has {tuple(src.shape)}; "
                        f"src_mask must be (batch, frames) = {tuple(src.shape[:2])}")


def _source_on(model: EncoderDecoder, src: Tensor, src_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``src`` and ``src_mask`` on the model's device; token ids as int64, feature frames kept float."""
    device = device_of(model)
    if getattr(model, "source_is_features", False):
        return src.to(device), src_mask.to(device)
    return src.to(device=device, dtype=torch.long), src_mask.to(device)


def _log_softmax(logits: Tensor) -> Tensor:
    """log_softmax in at least float32 (half-precision logits lose too much when summed)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(dim=-1)


@torch.no_grad()
def decode_sample(
    model: EncoderDecoder,
    src: Tensor,
    src_mask: Tensor,
    *,
    max_length: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    bos_id: int = 1,
    eos_id: int = 2,
) -> Decoded:
    """Decode each source by drawing target tokens one at a time (ancestral sampling).

    Encodes ``src`` once, starts every row from BOS and reads each drawn token with
    ``model.step``. A row ends at its first EOS (kept in its sequence); decoding stops when
    every row has ended or ``max_length`` tokens were generated. The draws are those of
    :func:`sample_next`; ``temperature=0`` is greedy decoding (:func:`decode_greedy`), where a
    row's result does not depend on the other rows. Sampled rows share one generator, so a
    row's draws depend on the batch it is in. The model is in eval mode during decoding and
    back in its previous mode afterwards.

    Args:
        model: any encoder-decoder.
        src: (B, S) source ids.
        src_mask: (B, S) bool, true at real tokens, left-aligned, >= 1 per row.
        max_length: the most target tokens to generate per row (>= 1), EOS included.
        temperature, top_k, top_p: as in :func:`sample_next`.
        seed: seeds a ``torch.Generator`` on the model's device; None uses torch's global one.
        bos_id, eos_id: the target ids that start and end a sequence.
    Returns:
        :class:`Decoded` with one hypothesis per row; its ``log_prob`` is under the model
        itself (untempered, unfiltered) and its ``score`` equals it.
    """
    _check_sampling(temperature, top_k, top_p)
    _check_seq2seq_call(model, src, src_mask, max_length, bos_id, eos_id)
    device = device_of(model)
    src, src_mask = _source_on(model, src, src_mask)
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    batch_size = src.shape[0]

    was_training = model.training
    model.eval()
    try:
        state = model.init_state(batch_size, model.encode(src, src_mask))
        next_ids = torch.full((batch_size,), bos_id, dtype=torch.long, device=device)
        finished = torch.zeros(batch_size, dtype=torch.bool, device=device)   # (B,)
        log_probs = torch.zeros(batch_size, dtype=torch.float64, device=device)
        generated = []
        for _ in range(max_length):
            logits, state = model.step(next_ids, state)                       # (B, V)
            next_ids = sample_next(
                logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
            ).masked_fill(finished, eos_id)                                   # (B,)
            step_log_probs = _log_softmax(logits).gather(-1, next_ids[:, None]).squeeze(-1)
            log_probs += step_log_probs.double().masked_fill(finished, 0.0)
            generated.append(next_ids)
            finished |= next_ids == eos_id
            if bool(finished.all()):
                break
    finally:
        model.train(was_training)
    rows = torch.stack(generated, dim=1).tolist()                             # (B, n)
    hypotheses = []
    for tokens, log_prob in zip(rows, log_probs.tolist()):
        tokens = tokens[: tokens.index(eos_id) + 1] if eos_id in tokens else tokens
        hypotheses.append([Hypothesis(tokens, log_prob, log_prob)])
    return Decoded(hypotheses)


def decode_greedy(
    model: EncoderDecoder, src: Tensor, src_mask: Tensor, *, max_length: int, bos_id: int = 1, eos_id: int = 2
) -> Decoded:
    """Greedy decoding: the argmax target token at every step; :func:`decode_sample` with
    ``temperature=0`` (see it for the arguments and the result)."""
    return decode_sample(model, src, src_mask, max_length=max_length, temperature=0.0, bos_id=bos_id, eos_id=eos_id)


@torch.no_grad()
def beam_search(
    model: EncoderDecoder,
    src: Tensor,
    src_mask: Tensor,
    *,
    beam_size: int,
    max_length: int,
    length_penalty: LengthPenalty = "none",
    alpha: float = 1.0,
    bos_id: int = 1,
    eos_id: int = 2,
    n_best: int = 1,
) -> Decoded:
    """Beam search over target sequences, batched over source rows and beams at once.

    Every row keeps ``K = beam_size`` live hypotheses, scored by their log-probability
    ``log p(y_1..y_t | x)``. The source is encoded once and the state repeated to (B * K)
    rows with ``model.select``; each time step reads the last token of every live hypothesis
    in one ``model.step`` call, ranks the K * V extensions of each row with ``topk`` and
    reorders the state with ``select``. Of the 2K best extensions, those among the K best
    that end with EOS are finished (EOS included) and leave the beam; the live beam is the K
    best extensions that do not end with EOS. The 2K always hold K of these, since each live
    hypothesis has only one EOS extension, so finished hypotheses never starve the beam. At
    step 1 only one hypothesis is live (BOS), so no hypothesis is found twice. A live
    hypothesis with ``max_length`` tokens is finished as it is, without EOS.

    A finished hypothesis with log-probability ``log P`` and ``|Y|`` generated tokens is
    ranked by ``log P / lp(|Y|)`` (:func:`normalised_score`: ``"none"``, ``"average"`` with
    exponent ``alpha``, or ``"gnmt"``, Wu et al. 2016 eq. 14, with ``alpha``). EOS counts in
    ``|Y|``: deciding to stop is a prediction with its own probability, as every other token.

    A row is done, and is no longer extended (its rows leave the state), when

    - it has K finished hypotheses: the usual criterion (as in fairseq), and a heuristic: a
      live hypothesis could still end better, always with a length penalty (a longer output
      can score higher), and without one when it outranks some of the finished ones; or
    - its ``n_best``-th best finished score is >= ``max(live log P) / lp(max_length)``. This
      bound is exact: log-probabilities only fall as tokens are added and ``lp`` is
      non-decreasing, so no live hypothesis can end above it. With ``"none"`` it reads: the
      best finished score is >= the best live score.

    Rows are searched independently; the batch changes only how many rows a ``step`` reads.
    With a beam as wide as the search space (K >= the number of extensions at every step,
    e.g. ``K >= V ** max_length``) every sequence is scored and none is pruned, so the result
    is the exact argmax over all sequences of <= ``max_length`` tokens ending at their first
    EOS and all sequences of ``max_length`` tokens without EOS: the K-finished rule cannot
    fire (there are fewer than K sequences) and the bound is exact.

    The model's ``select(state, rows)`` must accept any (B',) int64 ``rows``: repeated
    (B -> B * K), reordered, and a subset (dropping done rows). The model is in eval mode
    during the search and back in its previous mode afterwards.

    Args:
        model: any encoder-decoder.
        src: (B, S) source ids.
        src_mask: (B, S) bool, true at real tokens, left-aligned, >= 1 per row.
        beam_size: K >= 1; ``beam_size=1`` gives the greedy sequence.
        max_length: the most target tokens per hypothesis (>= 1), EOS included.
        length_penalty: ``"none"``, ``"average"`` or ``"gnmt"``.
        alpha: the penalty's exponent, finite and >= 0 (unused by ``"none"``).
        bos_id, eos_id: the target ids that start and end a sequence.
        n_best: how many hypotheses to return per row, 1 <= n_best <= beam_size.
    Returns:
        :class:`Decoded`: per row the ``n_best`` best finished hypotheses, best score first.
    """
    if beam_size < 1:
        raise ConfigError(f"beam_size must be >= 1, got {beam_size}")
    if not 1 <= n_best <= beam_size:
        raise ConfigError(f"n_best must be in [1, beam_size={beam_size}], got {n_best}")
    _check_length_penalty(length_penalty, alpha)
    _check_seq2seq_call(model, src, src_mask, max_length, bos_id, eos_id)
    device = device_of(model)
    src, src_mask = _source_on(model, src, src_mask)
    batch_size, beam = src.shape[0], beam_size
    bound_divisor = _length_divisor(max_length, length_penalty, alpha)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch_size)]

    def finish(row: int, tokens: list[int], log_prob: float) -> None:
        score = log_prob / _length_divisor(len(tokens), length_penalty, alpha)
        finished[row].append(Hypothesis(tokens, log_prob, score))

    was_training = model.training
    model.eval()
    try:
        state = model.init_state(batch_size, model.encode(src, src_mask))
        state = model.select(state, torch.arange(batch_size, device=device).repeat_interleave(beam))
        source_rows = torch.arange(batch_size, device=device)                  # (b,) rows still searched
        live_log_probs = torch.full((batch_size, beam), float("-inf"), device=device)
        live_log_probs[:, 0] = 0.0                                             # only BOS is live at first
        live_tokens = torch.empty(batch_size, beam, 0, dtype=torch.long, device=device)
        next_ids = torch.full((batch_size * beam,), bos_id, dtype=torch.long, device=device)
        for length in range(1, max_length + 1):
            logits, state = model.step(next_ids, state)                       # (b * K, V)
            n_rows, vocab_size = source_rows.shape[0], logits.shape[-1]
            row_of = source_rows.tolist()                                      # position -> source row
            log_probs = _log_softmax(logits).view(n_rows, beam, vocab_size)
            live_log_probs = live_log_probs.to(log_probs.dtype)
            extensions = (live_log_probs[:, :, None] + log_probs).view(n_rows, beam * vocab_size)
            top_log_probs, top_ids = extensions.topk(min(2 * beam, beam * vocab_size), dim=-1)  # (b, 2K)
            top_parents, top_tokens = top_ids // vocab_size, top_ids % vocab_size
            ends = top_tokens == eos_id                                       # (b, 2K)

            # EOS among the K best finishes, with its parent's tokens before they are reordered.
            ending = ends[:, :beam] & top_log_probs[:, :beam].isfinite()      # (b, K)
            ending_rows, ending_ranks = ending.nonzero(as_tuple=True)
            ending_prefixes = live_tokens[ending_rows, top_parents[ending_rows, ending_ranks]].tolist()
            ending_log_probs = top_log_probs[ending_rows, ending_ranks].tolist()
            for index, prefix, log_prob in zip(ending_rows.tolist(), ending_prefixes, ending_log_probs):
                finish(row_of[index], prefix + [eos_id], log_prob)

            # The live beam: the K best extensions that do not end (-inf fills a short beam).
            live_log_probs, picked = top_log_probs.masked_fill(ends, float("-inf")).topk(beam, dim=-1)
            parents = top_parents.gather(1, picked)                            # (b, K)
            live_tokens = torch.cat(
                [
                    live_tokens.gather(1, parents[:, :, None].expand(-1, -1, length - 1)),
                    top_tokens.gather(1, picked)[:, :, None],
                ],
                dim=2,
            )                                                                  # (b, K, length)
            live_rows, live_ranks = live_log_probs.isfinite().nonzero(as_tuple=True)
            if length == max_length:
                for index, tokens, log_prob in zip(
                    live_rows.tolist(),
                    live_tokens[live_rows, live_ranks].tolist(),
                    live_log_probs[live_rows, live_ranks].tolist(),
                ):
                    finish(row_of[index], tokens, log_prob)
                break

            best_live = live_log_probs.max(dim=1).values.tolist()              # (b,)
            searching = []
            for index, row in enumerate(row_of):
                scores = sorted((hypothesis.score for hypothesis in finished[row]), reverse=True)
                done = (
                    len(scores) >= beam
                    or best_live[index] == float("-inf")
                    or (len(scores) >= n_best and scores[n_best - 1] >= best_live[index] / bound_divisor)
                )
                if not done:
                    searching.append(index)
            if not searching:
                break
            keep = torch.tensor(searching, dtype=torch.long, device=device)    # (b',)
            source_rows, live_log_probs, live_tokens = source_rows[keep], live_log_probs[keep], live_tokens[keep]
            # One select both drops the done rows and reorders the beams to their parents.
            state_rows = (keep[:, None] * beam + parents[keep]).flatten()      # (b' * K,)
            state = model.select(state, state_rows)
            next_ids = live_tokens[:, :, -1].flatten()                         # (b' * K,)
    finally:
        model.train(was_training)
    hypotheses = [sorted(row, key=lambda hypothesis: hypothesis.score, reverse=True)[:n_best] for row in finished]
    return Decoded(hypotheses)
