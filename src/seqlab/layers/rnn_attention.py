"""Attention of a recurrent decoder over the encoder's states: Bahdanau's additive attention and
Luong's global attention (dot, general, concat).

At a decoder step with query q (the decoder's state) and the encoder's states h_1 .. h_S, a
score e_s = score(q, h_s) per source position, masked to the real ones, gives the weights
a = softmax(e) and the context c = sum_s a_s h_s:

- additive (Bahdanau, Cho and Bengio 2014, eq. 6 and A.1.2): e_s = v^T tanh(W q + U h_s);
- dot (Luong, Pham and Manning 2015, eq. 8): e_s = q^T h_s (q and h of one width);
- general (Luong eq. 8): e_s = q^T W h_s;
- concat (Luong eq. 8): e_s = v^T tanh(W [q; h_s]), which is additive attention with one
  matrix over the concatenation; written as W_q q + W_h h_s, the same function.

``U h_s`` (additive, concat) and ``W h_s`` (general) do not depend on the query: ``keys`` computes
them once per source, and each step only adds the query's part.

Shapes: B batch, S source positions, Q query width, K key (encoder state) width, A attention width.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError

ScoreKind = Literal["additive", "dot", "general", "concat"]
SCORE_KINDS = ("additive", "dot", "general", "concat")


class RecurrentAttention(nn.Module):
    """Scores of one query against the encoder's states, and the context they weight.

    Args:
        kind: additive, dot, general or concat (module docstring).
        query_size, key_size: Q and K (equal for dot).
        attention_size: A, the width of the tanh layer of additive and concat attention.
    """

    def __init__(self, kind: ScoreKind, query_size: int, key_size: int, attention_size: int | None = None):
        super().__init__()
        if kind not in SCORE_KINDS:
            raise ConfigError(f"unknown attention score {kind!r}; choose one of {', '.join(SCORE_KINDS)}")
        if kind == "dot" and query_size != key_size:
            raise ConfigError(f"dot attention needs the decoder width ({query_size}) to equal the encoder "
                              f"states' ({key_size}); use general or concat attention")
        self.kind = kind
        attention_size = attention_size or query_size
        if kind in ("additive", "concat"):
            self.query_projection = nn.Linear(query_size, attention_size, bias=False)
            self.key_projection = nn.Linear(key_size, attention_size, bias=kind == "concat")
            self.v = nn.Linear(attention_size, 1, bias=False)
        elif kind == "general":
            self.key_projection = nn.Linear(key_size, query_size, bias=False)

    def keys(self, encoder_states: Tensor) -> Tensor:
        """The query-independent part of the scores: (B, S, K) -> (B, S, A), or (B, S, Q) for
        general, or the states themselves for dot."""
        return encoder_states if self.kind == "dot" else self.key_projection(encoder_states)

    def forward(self, query: Tensor, keys: Tensor, encoder_states: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Attend from one query per row.

        Args:
            query: (B, Q) the decoder's state.
            keys: (B, S, .) from ``keys(encoder_states)``.
            encoder_states: (B, S, K) the values averaged.
            mask: (B, S) true at real source positions (>= 1 per row).
        Returns:
            The context (B, K) and the weights (B, S), zero at padding and summing to 1.
        """
        if self.kind in ("additive", "concat"):
            scores = self.v(torch.tanh(keys + self.query_projection(query)[:, None, :])).squeeze(-1)  # (B, S)
        else:
            scores = torch.einsum("bq,bsq->bs", query, keys)                                        # (B, S)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)                    # (B, S)
        context = torch.einsum("bs,bsk->bk", weights, encoder_states)                               # (B, K)
        return context, weights


def attention_ref(kind: ScoreKind, query: Tensor, encoder_states: Tensor, mask: Tensor,
                  module: RecurrentAttention) -> tuple[Tensor, Tensor]:
    """The specification: each score written from the equations, one source position at a time,
    with ``module``'s weights; for tests."""
    batch, length, _ = encoder_states.shape
    scores = torch.full((batch, length), float("-inf"), dtype=query.dtype)
    for b in range(batch):
        for s in range(length):
            if not mask[b, s]:
                continue
            q, h = query[b], encoder_states[b, s]
            if kind == "dot":
                scores[b, s] = q @ h
            elif kind == "general":
                scores[b, s] = q @ (module.key_projection.weight @ h)
            else:
                inner = module.query_projection.weight @ q + module.key_projection.weight @ h
                if module.key_projection.bias is not None:
                    inner = inner + module.key_projection.bias
                scores[b, s] = module.v.weight[0] @ torch.tanh(inner)
    weights = torch.exp(scores - scores.logsumexp(dim=-1, keepdim=True))
    context = torch.stack([weights[b] @ encoder_states[b] for b in range(batch)])
    return context, weights
