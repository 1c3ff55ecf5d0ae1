"""Language-model metrics from summed negative log-likelihoods.

With total NLL ``L`` nats over ``N`` predicted tokens that span ``C`` characters,

    loss = L / N,    perplexity = exp(L / N),    bits per character = L / (C ln 2).

Bits per character is per character even under a subword tokenizer, so models with different
tokenizers compare fairly (perplexities per token do not).
"""

from __future__ import annotations

import math


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
