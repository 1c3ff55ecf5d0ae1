"""Decoding from any causal language model: greedy, temperature, top-k and nucleus sampling.

Written once against the recurrent view of :class:`~seqlab.contracts.CausalLM`: ``prefill``
reads the prompt, then ``step`` reads one token at a time, so the prefix is never re-encoded
(a Transformer keeps its key/value cache, an RNN its hidden state).

Shapes: B batch, T prompt length, V ``vocab_size``.
"""

from __future__ import annotations


import torch
from torch import Tensor

from seqlab.contracts import CausalLM, device_of
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
    eos_id: int | None = None,
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
        eos_id: generation stops once every row has produced it; a row that has is padded
            with ``eos_id`` until the others finish.
    Returns:
        (B, T + n) int64 ids on the model's device, the prompt then ``n <= max_new_tokens``
        new tokens.
    """
    _check_sampling(temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    vocab_size = model.vocab_size
    if eos_id is not None and not 0 <= eos_id < vocab_size:
        raise ConfigError(f"eos_id must be in [0, {vocab_size}), got {eos_id}")
    if prompt.dim() != 2:
        raise DataError(f"prompt must be 2-D (batch, time), got shape {tuple(prompt.shape)}")
    if prompt.numel() == 0:
        raise DataError(f"prompt is empty (shape {tuple(prompt.shape)}); give at least one token per row")
    if prompt.is_floating_point() or prompt.is_complex() or prompt.dtype == torch.bool:
        raise DataError(f"prompt must hold integer token ids, got dtype {prompt.dtype}")
    low, high = int(prompt.min()), int(prompt.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise DataError(f"prompt holds token id {bad}, outside the vocabulary [0, {vocab_size})")

    device = device_of(model)
    tokens = prompt.to(device=device, dtype=torch.long)                         # (B, T)
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    context = model.max_context
    keep = None if context is None else max(1, context // 2)
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=device)  # (B,)

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
            if eos_id is not None:
                next_ids = next_ids.masked_fill(finished, eos_id)
                finished |= next_ids == eos_id
            tokens = torch.cat([tokens, next_ids[:, None]], dim=1)              # (B, T + index + 1)
            if index == max_new_tokens - 1 or (eos_id is not None and bool(finished.all())):
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
