"""Causal multi-head self-attention with a key/value cache (Vaswani et al. 2017).

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_head) + M) V,

with M = -inf above the diagonal so that position t sees positions <= t. The product runs in
torch's ``scaled_dot_product_attention`` (fused flash / memory-efficient kernels where the
hardware has them). The cache holds the keys and values of every position read so far: it is
the Transformer's recurrent state, growing by one entry per step.

Shapes: B batch, T new positions, S cached positions, D model width, H heads, E = D / H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KVCache = tuple[Tensor, Tensor]  # keys, values: (B, H, S, E) each


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; ``forward(x, cache)`` returns the output and new cache."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """Attend from the T new positions of ``x`` to the cached ones and to themselves.

        Args:
            x: (B, T, D) inputs at the new positions.
            cache: keys and values of the S earlier positions, or None when S = 0.
        Returns:
            (B, T, D) outputs, and the cache extended to S + T positions.
        """
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=-1)                           # (B, T, D) each
        q, k, v = (z.view(batch, length, self.n_heads, -1).transpose(1, 2) for z in (q, k, v))  # (B, H, T, E)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)                                # (B, H, S + T, E)
            v = torch.cat([cache[1], v], dim=2)
        cached = k.shape[2] - length
        dropout = self.dropout if self.training else 0.0
        if cached == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            # Query i sits at absolute position cached + i and may see keys 0 .. cached + i.
            key_position = torch.arange(k.shape[2], device=x.device)
            query_position = torch.arange(length, device=x.device)[:, None] + cached
            visible = key_position[None, :] <= query_position                  # (T, S + T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(batch, length, width)                    # (B, T, D)
        return self.out_dropout(self.out(y)), (k, v)
