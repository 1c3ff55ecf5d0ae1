"""Language-model metrics from summed negative log-likelihoods.

With total NLL ``L`` nats over ``N`` predicted tokens that span ``C`` characters,

    loss = L / N,    perplexity = exp(L / N),    bits per character = L / (C ln 2).

Bits per character is per character even under a subword tokenizer, so models with different
tokenizers compare fairly (perplexities per token do not). ``evaluate_windows`` sums the NLL of
a causal language model over the windows of a token stream, leaving out the targets nothing
scores (``<s>``, padding).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seqlab.contracts import device_of

NONE_IGNORED = -100              # F.cross_entropy's default ignore_index: no real target has it


def perplexity(mean_nll: float) -> float:
    """exp of the mean NLL per token in nats (inf past float range)."""
    return math.exp(mean_nll) if mean_nll < 700 else math.inf


def bits_per_character(total_nll: float, n_characters: int) -> float:
    """Total NLL in nats over the characters its tokens cover, in bits per character."""
    return total_nll / (n_characters * math.log(2))


def language_metrics(total_nll: float, n_tokens: int, n_characters: int) -> dict[str, float]:
    """loss (nats/token), perplexity and bits per character of one evaluation."""
    loss = total_nll / n_tokens
    return {
        "loss": loss,
        "perplexity": perplexity(loss),
        "bpc": bits_per_character(total_nll, n_characters),
        "tokens": float(n_tokens),
        "characters": float(n_characters),
    }


@torch.no_grad()
def evaluate_windows(model: nn.Module, windows: Iterable[tuple[Tensor, Tensor, Tensor]], char_lengths: Tensor,
                     max_batches: int | None = None, ignored: int = NONE_IGNORED) -> dict[str, float]:
    """``language_metrics`` of ``model`` over the targets of ``windows``.

    Targets equal to ``ignored`` are left out of the NLL, the tokens and the characters. The
    model is put in eval mode and restored to its previous mode.

    Args:
        windows: batches of inputs (B, T), targets (B, T) and the position of each target in the
            stream (B, T), as ``seqlab.data.batching`` yields them.
        char_lengths: (N,) the characters each token of the stream owns.
        max_batches: read only the first batches (a fixed subset, for quick checks).
    """
    device = device_of(model)
    was_training = model.training
    model.eval()
    total_nll, n_tokens, n_chars = 0.0, 0, 0
    for index, (inputs, targets, target_index) in enumerate(windows):
        if max_batches is not None and index >= max_batches:
            break
        with torch.no_grad():
            logits = model(inputs.to(device)).float()                           # (B, T, V)
        nll = F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten(), ignore_index=ignored,
                              reduction="sum")
        scored = targets != ignored                                             # (B, T)
        total_nll += nll.item()
        n_tokens += int(scored.sum())
        n_chars += int(char_lengths[target_index][scored].sum())
    model.train(was_training)
    return language_metrics(total_nll, n_tokens, n_chars)
