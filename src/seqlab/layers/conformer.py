"""The Conformer block (Gulati et al. 2020, "Conformer: Convolution-augmented Transformer for
Speech Recognition", sec. 2 and Fig. 1): a Transformer block between two half-step
feed-forward networks (macaron style, Lu et al. 2019), with a convolution module after the
self-attention:

    x1 = x  + 1/2 FFN(x)                    FFN = LayerNorm, Linear(D, mD), Swish, Dropout, Linear(mD, D), Dropout
    x2 = x1 + MHSA(x1)                      MHSA = LayerNorm, relative-position attention, Dropout
    x3 = x2 + Conv(x2)                      (eq. 1-3)
    y  = LayerNorm(x3 + 1/2 FFN(x3))

with Swish(z) = z sigmoid(z) (SiLU). The attention is Transformer-XL's relative positional
self-attention (:mod:`seqlab.layers.relative_attention`). The convolution module (Fig. 2):

    Conv(x) = Dropout(W_2 SiLU(Norm(DepthwiseConv_K(GLU(W_1 LayerNorm(x))))))

W_1 a pointwise convolution D -> 2D, GLU(a, b) = a sigmoid(b) back to D, a depthwise
convolution of width K (one filter per channel), W_2 pointwise D -> D.

Choices made here, each for padding invariance and exact streaming:

- **Norm after the depthwise convolution is a LayerNorm**, not the paper's BatchNorm: batch
  statistics in training would mix padded frames and the other utterances into each frame's
  output, and a stream's chunks would be normalised by different statistics. (In eval mode a
  BatchNorm is a fixed affine map and would be exact too, but then training and inference
  would see different normalisations of short and long batches.)
- **Padding**: a (B, T) mask, true at real frames. Padded keys are masked in the attention,
  and padded frames are zeroed before the depthwise convolution, so a real frame's output is
  the same whatever follows it in the padded batch.
- **Causal** (``causal=True``): a causal attention mask and a left-padded depthwise convolution
  (``seqlab.layers.causal_conv.CausalConv1d``), so frame t depends only on frames <= t. A
  :class:`ConformerCache` then holds the attention's past keys/values (absolute positions, so
  the relative distances stay right) and the last K-1 inputs of the depthwise convolution, and
  ``forward_chunk`` over consecutive chunks equals ``forward`` over their concatenation.

The feed-forward network is :class:`~seqlab.layers.feedforward.FeedForward`-shaped (``up``,
``down``) but plain Swish, which that module does not offer (it has the gated SwiGLU only).

Shapes: B batch, T frames, D model width, K convolution kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError, DataError
from seqlab.layers.causal_conv import CausalConv1d
from seqlab.layers.feedforward import FeedForward
from seqlab.layers.kv_cache import KeyValueCache
from seqlab.layers.relative_attention import RelativePositionAttention


class ConvolutionModule(nn.Module):
    """The Conformer's convolution module (module docstring), without its residual.

    Args:
        d_model: D.
        kernel_size: K of the depthwise convolution; odd unless causal (centred needs odd).
        dropout: on the output.
        causal: left-padded (causal) depthwise convolution with a streaming window.
    """

    def __init__(self, d_model: int, kernel_size: int, dropout: float, causal: bool):
        super().__init__()
        if kernel_size < 1 or (not causal and kernel_size % 2 == 0):
            raise ConfigError(f"conv_kernel={kernel_size} must be positive, and odd for a non-causal "
                              "Conformer (a centred convolution)")
        self.causal = causal
        self.input_norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)                               # W_1 (a 1x1 conv)
        if causal:
            self.depthwise = CausalConv1d(d_model, kernel_size)
        else:
            self.depthwise = nn.Conv1d(d_model, d_model, kernel_size, padding=kernel_size // 2, groups=d_model)
        self.depthwise_norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Linear(d_model, d_model)                                  # W_2
        self.dropout = nn.Dropout(dropout)

    def init_state(self, batch: int) -> Tensor:
        """The causal convolution's window before the first frame: (B, D, K-1) zeros."""
        if not self.causal:
            raise ConfigError("only a causal convolution module streams; build it with causal=True")
        return self.depthwise.init_state(batch)

    def forward(self, x: Tensor, mask: Tensor | None = None,
                window: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Args:
            x: (B, T, D).
            mask: (B, T) bool, true at real frames; padded frames are zeroed before the
                depthwise convolution.
            window: causal only: (B, D, K-1) the depthwise inputs before ``x``; None is zeros.
        Returns:
            (B, T, D) and, when causal, the window after ``x`` (None otherwise).
        """
        gated = F.glu(self.pointwise_in(self.input_norm(x)), dim=-1)                      # (B, T, D)
        if mask is not None:
            gated = gated.masked_fill(~mask[..., None], 0.0)
        if self.causal:
            convolved, window = self.depthwise(gated, window)                           # (B, T, D)
        else:
            convolved = self.depthwise(gated.transpose(1, 2)).transpose(1, 2)           # (B, T, D)
        hidden = F.silu(self.depthwise_norm(convolved))
        return self.dropout(self.pointwise_out(hidden)), window


@dataclass
class ConformerCache:
    """A causal block's streaming state: its attention's keys/values of every past frame and
    its depthwise convolution's last K-1 inputs (B, D, K-1). Written in place by a chunk."""

    attention: KeyValueCache
    conv_window: Tensor


class ConformerBlock(nn.Module):
    """One Conformer block (module docstring): macaron FFN, relative MHSA, convolution, FFN, LayerNorm.

    Args:
        d_model: D.
        n_heads: attention heads; must divide D.
        conv_kernel: K of the depthwise convolution.
        ff_mult: the feed-forward hidden width is ff_mult * D (the paper: 4).
        dropout: on every module's output, inside the feed-forwards and on attention weights.
        causal: causal attention and convolution; enables ``init_cache`` / ``forward_chunk``.
    """

    def __init__(self, d_model: int, n_heads: int, conv_kernel: int, ff_mult: int, dropout: float,
                 causal: bool = False):
        super().__init__()
        if ff_mult < 1:
            raise ConfigError(f"ff_mult must be a positive integer, got {ff_mult}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.causal = causal
        self.ff1_norm, self.ff1 = nn.LayerNorm(d_model), FeedForward(d_model, ff_mult * d_model, "silu", dropout)
        self.attention_norm = nn.LayerNorm(d_model)
        self.attention = RelativePositionAttention(d_model, n_heads, causal=causal, dropout=dropout)
        self.attention_dropout = nn.Dropout(dropout)
        self.conv = ConvolutionModule(d_model, conv_kernel, dropout, causal)
        self.ff2_norm, self.ff2 = nn.LayerNorm(d_model), FeedForward(d_model, ff_mult * d_model, "silu", dropout)
        self.final_norm = nn.LayerNorm(d_model)
        self.ff_dropout = nn.Dropout(dropout)           # after each feed-forward module (Fig. 4)

    def _block(self, x: Tensor, mask: Tensor | None, cache: ConformerCache | None) -> tuple[Tensor, Tensor | None]:
        x = x + 0.5 * self.ff_dropout(self.ff1(self.ff1_norm(x)))
        attention_cache = cache.attention if cache is not None else None
        x = x + self.attention_dropout(self.attention(self.attention_norm(x), key_padding_mask=mask,
                                                      cache=attention_cache))
        convolved, window = self.conv(x, mask, cache.conv_window if cache is not None else None)
        x = x + convolved
        x = x + 0.5 * self.ff_dropout(self.ff2(self.ff2_norm(x)))
        return self.final_norm(x), window

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Args:
            x: (B, T, D) frames.
            mask: (B, T) bool, true at real frames; None: all real.
        Returns:
            (B, T, D); outputs at padded frames are not meaningful.
        """
        return self._block(x, mask, None)[0]

    def init_cache(self, batch: int) -> ConformerCache:
        """The state before a stream's first frame (causal blocks only)."""
        if not self.causal:
            raise ConfigError("only a causal Conformer block streams; build it with causal=True")
        return ConformerCache(self.attention.make_cache(batch), self.conv.init_state(batch))

    def forward_chunk(self, x_chunk: Tensor, cache: ConformerCache) -> tuple[Tensor, ConformerCache]:
        """The next chunk of a stream (every frame real): joined over chunks, the outputs equal
        :meth:`forward` over the whole stream.

        Args:
            x_chunk: (B, t, D) the frames after those already in ``cache``; t may be 0.
            cache: from :meth:`init_cache` or the previous chunk; updated in place.
        Returns:
            (B, t, D) and the cache after the chunk.
        """
        if not self.causal:
            raise ConfigError("only a causal Conformer block streams; build it with causal=True")
        if x_chunk.shape[0] != cache.conv_window.shape[0]:
            raise DataError(f"a chunk of batch size {x_chunk.shape[0]} for a cache of batch size "
                            f"{cache.conv_window.shape[0]}; call init_cache with the chunk's batch size")
        if x_chunk.shape[1] == 0:
            return x_chunk, cache
        y, cache.conv_window = self._block(x_chunk, None, cache)
        return y, cache


def lengths_to_mask(lengths: Tensor, max_length: int) -> Tensor:
    """(B,) lengths -> (B, max_length) bool, true at positions < length."""
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]
