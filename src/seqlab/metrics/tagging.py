"""Tagging metrics: token accuracy, accuracy on words unseen in training, and the confusions.

Accuracy is over every word token (punctuation included, as UD part-of-speech results are
reported); unseen-word accuracy is over the tokens whose exact form never occurs in the
training split, the words a tagger must guess from their shape and context.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch
from torch import Tensor


def tagging_metrics(gold: Tensor, predicted: Tensor, unseen: Tensor) -> dict[str, float | None]:
    """accuracy and unseen_accuracy (None, undefined, when no word is unseen), and the token counts.

    Args:
        gold, predicted: (N,) tag ids of every word token.
        unseen: (N,) bool, the tokens whose word is not in the training vocabulary.
    """
    correct = gold == predicted
    n_unseen = int(unseen.sum())
    return {
        "accuracy": correct.float().mean().item(),
        "unseen_accuracy": correct[unseen].float().mean().item() if n_unseen else None,
        "tokens": float(len(gold)),
        "unseen_tokens": float(n_unseen),
    }


def confusion_matrix(gold: Tensor, predicted: Tensor, n_tags: int) -> Tensor:
    """(n_tags, n_tags) counts, ``[gold, predicted]``."""
    flat = gold * n_tags + predicted
    return torch.bincount(flat, minlength=n_tags * n_tags).reshape(n_tags, n_tags)


def confusion_summary(matrix: Tensor, tag_names: Sequence[str], top: int = 5) -> list[tuple[str, str, int]]:
    """The ``top`` most frequent errors as (gold tag, predicted tag, count), most frequent first."""
    errors = Counter()
    for gold, predicted in torch.nonzero(matrix).tolist():
        if gold != predicted:
            errors[(tag_names[gold], tag_names[predicted])] = int(matrix[gold, predicted])
    return [(gold, predicted, count) for (gold, predicted), count in errors.most_common(top)]
