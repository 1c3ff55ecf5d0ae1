"""The Transformer block: attention and feed-forward sublayers on a residual stream.

Pre-norm (Xiong et al. 2020; GPT-2, Llama, T5), each sublayer reads a normalised copy:

    x = x + Dropout(SelfAttention(Norm(x)))
    x = x + Dropout(CrossAttention(Norm(x), memory))          (decoder of an encoder-decoder)
    x = x + Dropout(FeedForward(Norm(x)))

Post-norm (Vaswani et al. 2017; BERT), each sublayer's sum is normalised:

    x = Norm(x + Dropout(SelfAttention(x)))
    x = Norm(x + Dropout(CrossAttention(x, memory)))
    x = Norm(x + Dropout(FeedForward(x)))

The block is assembled from parts that are passed in: its attention (a
:class:`~seqlab.layers.attention.MultiHeadAttention` holding its own position scheme), an
optional cross-attention, a feed-forward (a :class:`~seqlab.layers.feedforward.FeedForward`
or a mixture of experts) and a factory for its norms. It branches on none of their kinds.

With ``checkpoint=True`` the block's activations are not kept for the backward pass but
recomputed there (Chen et al. 2016, "Training deep nets with sublinear memory cost"): memory
per block falls to its input, for about one more forward pass of compute. Only in training
with gradients and without a cache; dropout draws the same masks on recomputation.

Shapes: B batch, T positions, S memory positions, D model width.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from seqlab.errors import ConfigError
from seqlab.layers.kv_cache import KeyValueCache

NormPosition = Literal["pre", "post"]


class TransformerBlock(nn.Module):
    """One Transformer block; see the module docstring for the two arrangements.

    Args:
        attention: the self-attention sublayer, ``attention(x, key_padding_mask=, cache=)``.
        feedforward: the position-wise sublayer, ``feedforward(x, mask=)`` (B, T, D) -> (B, T, D),
            with the (B, T) real-token mask (a mixture of experts routes only real tokens).
        norm: builds one normalisation layer (called once per sublayer).
        cross_attention: optional attention over an encoder memory, ``(x, memory, key_padding_mask)``.
        norm_position: ``"pre"`` or ``"post"``.
        dropout: on each sublayer's output before it joins the residual stream.
        checkpoint: recompute the block's activations in the backward pass.
    """

    def __init__(self, attention: nn.Module, feedforward: nn.Module, norm: Callable[[], nn.Module], *,
                 cross_attention: nn.Module | None = None, norm_position: NormPosition = "pre",
                 dropout: float = 0.0, checkpoint: bool = False):
        super().__init__()
        if norm_position not in ("pre", "post"):
            raise ConfigError(f"norm_position must be 'pre' or 'post', got {norm_position!r}")
        self.attention = attention
        self.attention_norm = norm()
        self.cross_attention = cross_attention
        self.cross_attention_norm = norm() if cross_attention is not None else None
        self.feedforward = feedforward
        self.feedforward_norm = norm()
        self.norm_position = norm_position
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()    # no call when off
        self.checkpoint = checkpoint

    def _sublayer(self, x: Tensor, norm: nn.Module, layer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.norm_position == "pre":
            return x + self.dropout(layer(norm(x)))
        return norm(x + self.dropout(layer(x)))

    def _forward(self, x: Tensor, memory: Tensor | None, key_padding_mask: Tensor | None,
                 memory_padding_mask: Tensor | None, cache: KeyValueCache | None) -> Tensor:
        x = self._sublayer(x, self.attention_norm,
                           lambda h: self.attention(h, key_padding_mask=key_padding_mask, cache=cache))
        if self.cross_attention is not None:
            x = self._sublayer(x, self.cross_attention_norm,
                               lambda h: self.cross_attention(h, memory, key_padding_mask=memory_padding_mask))
        token_mask = None if key_padding_mask is None else key_padding_mask[:, -x.shape[1]:]
        return self._sublayer(x, self.feedforward_norm, lambda h: self.feedforward(h, mask=token_mask))

    def forward(self, x: Tensor, *, memory: Tensor | None = None, key_padding_mask: Tensor | None = None,
                memory_padding_mask: Tensor | None = None, cache: KeyValueCache | None = None) -> Tensor:
        """Args:
            x: (B, T, D) the residual stream at T positions.
            memory: (B, S, D) encoder outputs, for a block with cross-attention.
            key_padding_mask: (B, T or cache.length + T) bool, true at real positions.
            memory_padding_mask: (B, S) bool, true at real memory positions.
            cache: the self-attention's key/value cache (stepping); written in place.
        Returns:
            (B, T, D).
        """
        if self.checkpoint and self.training and cache is None and torch.is_grad_enabled():
            return checkpoint(self._forward, x, memory, key_padding_mask, memory_padding_mask, None,
                              use_reentrant=False)
        return self._forward(x, memory, key_padding_mask, memory_padding_mask, cache)


class ResidualBlock(nn.Module):
    """A pre-norm residual block around a sequence mixer with a recurrent state (Mamba, Mamba-2,
    Hyena, an SSM, or attention with its cache), and an optional feed-forward sublayer:

        x = x + Dropout(Mixer(Norm(x), state))
        x = x + Dropout(FeedForward(Norm(x)))                    (when a feed-forward is given)

    Mamba's block is the first line alone (its mixer holds the gated MLP); Jamba's layers have
    both (Lieber et al. 2024). Each sublayer reads ``x`` in its norm's dtype, so a float32
    residual stream (Mamba's ``residual_in_fp32``) feeds half-precision weights.

    Args:
        mixer: ``mixer(x, state) -> (y, state)`` with ``init_state(batch_size)``; a None state
            is the fresh one.
        norm: builds one normalisation layer (called once per sublayer).
        feedforward: ``feedforward(x, mask=)``, or None.
        dropout: on each sublayer's output.
    """

    def __init__(self, mixer: nn.Module, norm: Callable[[], nn.Module], feedforward: nn.Module | None = None,
                 dropout: float = 0.0):
        super().__init__()
        self.norm = norm()
        self.mixer = mixer
        self.feedforward = feedforward
        self.feedforward_norm = norm() if feedforward is not None else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, state=None, mask: Tensor | None = None):
        """Args:
            x: (B, T, D).
            state: the mixer's state before ``x``; None is fresh.
            mask: (B, T) true at real tokens, for a feed-forward that routes tokens.
        Returns:
            (B, T, D) and the mixer's state after ``x``.
        """
        y, state = self.mixer(self.norm(x.to(self.norm.weight.dtype)), state)
        x = x + self.dropout(y)                  # in x's dtype, or float32 when y is lower (promotion)
        if self.feedforward is not None:
            x = x + self.dropout(self.feedforward(self.feedforward_norm(x.to(self.norm.weight.dtype)), mask=mask))
        return x, state
