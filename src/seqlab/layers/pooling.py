"""Pooling a sequence of states into one vector, for many-to-one models.

- ``last``: the state at each sequence's last real position;
- ``mean``: the average over real positions;
- ``attention``: a learned softmax-weighted average (Bahdanau et al. 2015 style scoring,
  as used for sentence classification by Yang et al. 2016): a_t = softmax_t(v^T tanh(W h_t)),
  pooled = sum_t a_t h_t, with padding given zero weight.

Shapes: B batch, T time, H features; ``mask`` (B, T) is true at real positions.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

PoolingKind = Literal["last", "mean", "attention"]


class Pooling(nn.Module):
    """Reduce (B, T, H) states with a (B, T) mask to (B, H)."""

    def __init__(self, kind: PoolingKind, hidden_size: int):
        super().__init__()
        self.kind = kind
        if kind == "attention":
            self.project = nn.Linear(hidden_size, hidden_size)
            self.score = nn.Linear(hidden_size, 1, bias=False)

    def forward(self, states: Tensor, mask: Tensor) -> Tensor:
        if self.kind == "last":
            last = mask.sum(dim=1) - 1                                             # (B,)
            return states[torch.arange(states.shape[0], device=states.device), last]
        weights = mask.to(states.dtype)                                            # (B, T)
        if self.kind == "attention":
            scores = self.score(torch.tanh(self.project(states))).squeeze(-1)      # (B, T)
            weights = torch.softmax(scores.masked_fill(~mask, -torch.inf), dim=1)
        else:
            weights = weights / weights.sum(dim=1, keepdim=True)
        return (weights[:, :, None] * states).sum(dim=1)
