"""Speech encoders: log-mel frames (B, T, F) and lengths (B,) -> vectors (B, T', D) and lengths.

Each follows ``seqlab.speech.recogniser.SpeechEncoder``: ``output_dim``, ``forward(features,
lengths) -> (out, out_lengths)`` and ``output_lengths(lengths)``; the streaming ones
(``streaming = True``) also follow ``StreamingEncoder``: ``init_stream(batch)`` and
``forward_chunk(features, state) -> (out, state)``, whose outputs over consecutive chunks,
joined, equal ``forward`` over the whole recording (in eval mode). A row's outputs at its real
frames never depend on the padding after it or on the other rows of the batch.

- :class:`ConvSubsampling`, the Conformer's stem (Gulati et al. 2020, sec. 3.1): two 3x3
  convolutions of stride 2 (+ ReLU) over (time, mel), then a linear map to D. Without padding,
  a length L gives ``L1 = (L - 3) // 2 + 1`` frames, then ``L' = (L1 - 3) // 2 + 1`` (about L/4).
  The causal stem pads time with two zero frames on the left only, so output t reads inputs
  <= 4t only, and ``L1 = (L + 1) // 2``, ``L' = (L1 + 1) // 2`` (ceil(L/4)); in a stream it
  keeps the input frames a later output still needs.
- :class:`BiLSTMEncoder`: frame stacking by 1, 2 or 4 (``ceil(L / s)`` frames of s F
  features), then a packed bidirectional LSTM (Graves et al. 2013).
- :class:`LSTMEncoder`: the causal stem and a unidirectional LSTM, a cheap streaming encoder.
- :class:`ConformerEncoder`: the stem and Conformer blocks (``seqlab.layers.conformer``);
  streaming when causal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqlab.errors import ConfigError, DataError
from seqlab.layers.conformer import ConformerBlock, ConformerCache, lengths_to_mask
from seqlab.speech.frontend import SpeechConfig

KERNEL, STRIDE = 3, 2           # each convolution of the stem, in time and in mel


def _check_inputs(features: Tensor, lengths: Tensor, n_mels: int) -> None:
    if features.dim() != 3 or features.shape[-1] != n_mels:
        raise DataError(f"features have shape {tuple(features.shape)}, expected (B, T, {n_mels}) log-mel frames")
    if lengths.shape != features.shape[:1] or bool((lengths < 1).any()) or bool((lengths > features.shape[1]).any()):
        raise DataError(f"lengths {lengths.tolist()} must be (B,) = ({features.shape[0]},) values in "
                        f"1..{features.shape[1]}, the real frames of each row")


def _check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")


class ConvSubsampling(nn.Module):
    """Two Conv2d(3x3, stride 2) + ReLU over (time, mel), then Linear(channels F'', D): time / 4.

    Args:
        n_mels: F, mel bands (>= 7, so that two valid convolutions leave one band).
        d_model: D, the output width.
        channels: the convolutions' channels; None means D.
        causal: pad time on the left only (module docstring); enables streaming.
    """

    def __init__(self, n_mels: int, d_model: int, channels: int | None = None, causal: bool = False):
        super().__init__()
        if channels is not None and channels < 1:
            raise ConfigError(f"stem channels={channels} must be positive")
        if n_mels < 7:
            raise ConfigError(f"n_mels={n_mels} is too few for the convolutional stem; use at least 7")
        channels = d_model if channels is None else channels
        self.n_mels, self.causal = n_mels, causal
        self.conv1 = nn.Conv2d(1, channels, KERNEL, stride=STRIDE)
        self.conv2 = nn.Conv2d(channels, channels, KERNEL, stride=STRIDE)
        mel_bands = self._valid_length(self._valid_length(n_mels))
        self.projection = nn.Linear(channels * mel_bands, d_model)
        self.output_dim = d_model

    @staticmethod
    def _valid_length(length: Any) -> Any:
        """Frames out of one unpadded 3-wide stride-2 convolution (ints or tensors)."""
        return (length - KERNEL) // STRIDE + 1

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """(B,) input lengths -> (B,) output lengths (module docstring)."""
        pad = KERNEL - 1 if self.causal else 0
        for _ in range(2):
            lengths = self._valid_length(lengths + pad)
        return lengths

    def _project(self, hidden: Tensor) -> Tensor:
        """(B, C, T', F'') -> (B, T', D)."""
        return self.projection(hidden.permute(0, 2, 1, 3).flatten(2))

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Args: features (B, T, F); lengths (B,). Returns (B, T', D) and (B,) output lengths.
        Raises DataError when a row is too short to give one output frame (fewer than 7 frames,
        non-causal)."""
        _check_inputs(features, lengths, self.n_mels)
        out_lengths = self.output_lengths(lengths)
        if bool((out_lengths < 1).any()):
            row = int((out_lengths < 1).nonzero()[0])
            raise DataError(f"utterance {row} has {int(lengths[row])} frames, too few for the convolutional "
                            "stem (it needs at least 7); drop or pad it")
        hidden = features[:, None]                                                       # (B, 1, T, F)
        for conv in (self.conv1, self.conv2):
            if self.causal:
                hidden = F.pad(hidden, (0, 0, KERNEL - 1, 0))                            # time, left only
            hidden = torch.relu(conv(hidden))                                           # (B, C, T_i, F_i)
        return self._project(hidden), out_lengths

    def init_stream(self, batch: int) -> list[Tensor]:
        """The stream's state: per convolution, the inputs it has not yet consumed, starting as
        the two zero frames of the causal left padding: [(B, 1, 2, F), (B, C, 2, F')]."""
        if not self.causal:
            raise ConfigError("only the causal stem streams; build it with causal=True")
        weight = self.conv1.weight
        return [weight.new_zeros(batch, conv.in_channels, KERNEL - 1, bands)
                for conv, bands in ((self.conv1, self.n_mels), (self.conv2, self._valid_length(self.n_mels)))]

    def forward_chunk(self, features: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Args: features (B, t, F), the frames after those already read; state from
        :meth:`init_stream` or the previous chunk. Returns the (B, t', D) outputs that the
        frames read so far complete (t' may be 0) and the new state."""
        if features.dim() != 3 or features.shape[-1] != self.n_mels or features.shape[0] != state[0].shape[0]:
            raise DataError(f"a chunk of shape {tuple(features.shape)}, expected (B, t, {self.n_mels}) log-mel "
                            f"frames with B = {state[0].shape[0]}, the batch size of init_stream")
        hidden, new_state = features[:, None], []                                        # (B, 1, t, F)
        for conv, pending in zip((self.conv1, self.conv2), state):
            pending = torch.cat([pending, hidden], dim=2)                               # (B, C_in, n, F_i)
            n_out = max(0, self._valid_length(pending.shape[2]))
            if n_out:
                hidden = torch.relu(conv(pending[:, :, : STRIDE * (n_out - 1) + KERNEL]))
            else:
                hidden = pending.new_zeros(pending.shape[0], conv.out_channels, 0,
                                           self._valid_length(pending.shape[3]))
            new_state.append(pending[:, :, STRIDE * n_out:])                            # not yet consumed
        return self._project(hidden), new_state


class BiLSTMEncoder(nn.Module):
    """Frame stacking, then a packed bidirectional LSTM; ``output_dim = d_model`` (d_model / 2
    units per direction).

    Args:
        n_mels: F.
        d_model: D, even.
        n_layers: LSTM layers.
        dropout: on the stacked input and between LSTM layers.
        subsample: s in {1, 2, 4}: s consecutive frames are concatenated into one (the last
            group of a row completed with zero frames), ``L' = ceil(L / s)``.
    """

    streaming = False

    def __init__(self, n_mels: int, d_model: int, n_layers: int, dropout: float, subsample: int = 1):
        super().__init__()
        if subsample not in (1, 2, 4):
            raise ConfigError(f"subsample={subsample} must be 1, 2 or 4")
        if d_model < 2 or d_model % 2:
            raise ConfigError(f"d_model={d_model} must be even: half of it per LSTM direction")
        if n_layers < 1:
            raise ConfigError(f"n_layers={n_layers} must be positive")
        _check_dropout(dropout)
        self.n_mels, self.subsample, self.output_dim = n_mels, subsample, d_model
        self.input_dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(subsample * n_mels, d_model // 2, n_layers, batch_first=True,
                            bidirectional=True, dropout=dropout if n_layers > 1 else 0.0)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """(B,) -> (B,) ``ceil(L / s)``."""
        return (lengths + self.subsample - 1) // self.subsample

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Args: features (B, T, F); lengths (B,). Returns (B, ceil(T/s), D), zero at padding,
        and (B,) output lengths."""
        _check_inputs(features, lengths, self.n_mels)
        batch, length, _ = features.shape
        real = lengths_to_mask(lengths, length)[..., None]
        stacked_length = -(-length // self.subsample)
        frames = F.pad(features.masked_fill(~real, 0.0), (0, 0, 0, stacked_length * self.subsample - length))
        stacked = frames.reshape(batch, stacked_length, self.subsample * self.n_mels)    # (B, T', sF)
        out_lengths = self.output_lengths(lengths)
        packed = pack_padded_sequence(self.input_dropout(stacked), out_lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=stacked_length)  # (B, T', D)
        return out, out_lengths


@dataclass
class EncoderStream:
    """A streaming encoder's state: the stem's pending frames and the layers' states."""

    stem: list[Tensor]
    layers: Any


class LSTMEncoder(nn.Module):
    """The causal stem, then a unidirectional LSTM: a cheap streaming encoder.

    Args:
        n_mels: F.
        d_model: D, the stem's width and the LSTM's units; ``output_dim = d_model``.
        n_layers: LSTM layers.
        dropout: on the stem's output and between LSTM layers.
        stem_channels: the stem's convolution channels; None means d_model.
    """

    streaming = True

    def __init__(self, n_mels: int, d_model: int, n_layers: int, dropout: float, stem_channels: int | None = None):
        super().__init__()
        if n_layers < 1:
            raise ConfigError(f"n_layers={n_layers} must be positive")
        _check_dropout(dropout)
        self.stem = ConvSubsampling(n_mels, d_model, stem_channels, causal=True)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(d_model, d_model, n_layers, batch_first=True, dropout=dropout if n_layers > 1 else 0.0)
        self.output_dim = d_model

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """(B,) -> (B,) ``ceil(L / 4)``."""
        return self.stem.output_lengths(lengths)

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Args: features (B, T, F); lengths (B,). Returns (B, T', D), zero at padding, and (B,)
        output lengths. Causal, so padding after a row's frames never reaches them."""
        hidden, out_lengths = self.stem(features, lengths)
        out, _ = self.lstm(self.dropout(hidden))
        return out.masked_fill(~lengths_to_mask(out_lengths, out.shape[1])[..., None], 0.0), out_lengths

    def init_stream(self, batch: int) -> EncoderStream:
        """The state before a recording's first frame (the LSTM's starts as zeros)."""
        return EncoderStream(self.stem.init_stream(batch), None)

    def forward_chunk(self, features: Tensor, state: EncoderStream) -> tuple[Tensor, EncoderStream]:
        """Args: features (B, t, F) the next frames; state. Returns (B, t', D) and the state."""
        hidden, stem_state = self.stem.forward_chunk(features, state.stem)
        if hidden.shape[1] == 0:
            return hidden, EncoderStream(stem_state, state.layers)
        out, lstm_state = self.lstm(self.dropout(hidden), state.layers)
        return out, EncoderStream(stem_state, lstm_state)


class ConformerEncoder(nn.Module):
    """The convolutional stem (time / 4), then Conformer blocks (Gulati et al. 2020).

    Streaming (``init_stream``, ``forward_chunk``) when ``causal``: causal stem, causal
    attention and convolutions, each block caching its keys/values and convolution window.

    Args:
        n_mels: F.
        d_model: D.
        n_heads: attention heads per block; must divide D.
        n_layers: blocks.
        conv_kernel: K of each block's depthwise convolution (odd unless causal; paper: 31 or 32).
        ff_mult: feed-forward width multiple (paper: 4).
        dropout: on the stem's output and inside the blocks.
        causal: a streaming encoder (``self.streaming``).
        stem_channels: the stem's convolution channels; None means d_model, as in the paper.
            The stem's second convolution costs about channels^2 per output frame and band: at
            d_model = 144 on a CPU it takes half of a 4-block encoder's time, 64 channels a tenth
            of that (measured fwd + bwd, B = 8, T = 400, F = 80).
    """

    def __init__(self, n_mels: int, d_model: int, n_heads: int, n_layers: int, conv_kernel: int,
                 ff_mult: int, dropout: float, causal: bool = False, stem_channels: int | None = None):
        super().__init__()
        if n_layers < 1:
            raise ConfigError(f"n_layers={n_layers} must be positive")
        _check_dropout(dropout)
        self.causal = self.streaming = causal
        self.stem = ConvSubsampling(n_mels, d_model, stem_channels, causal=causal)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(ConformerBlock(d_model, n_heads, conv_kernel, ff_mult, dropout, causal)
                                    for _ in range(n_layers))
        self.output_dim = d_model

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """(B,) -> (B,) the stem's output lengths (about L / 4)."""
        return self.stem.output_lengths(lengths)

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Args: features (B, T, F); lengths (B,). Returns (B, T', D), zero at padding, and (B,)
        output lengths."""
        hidden, out_lengths = self.stem(features, lengths)
        mask = lengths_to_mask(out_lengths, hidden.shape[1])                              # (B, T')
        hidden = self.dropout(hidden)
        for block in self.blocks:
            hidden = block(hidden, mask)
        return hidden.masked_fill(~mask[..., None], 0.0), out_lengths

    def init_stream(self, batch: int) -> EncoderStream:
        """The state before a recording's first frame (causal encoders only)."""
        if not self.causal:
            raise ConfigError("a non-causal Conformer encoder cannot stream; build it with causal=True")
        return EncoderStream(self.stem.init_stream(batch), [block.init_cache(batch) for block in self.blocks])

    def forward_chunk(self, features: Tensor, state: EncoderStream) -> tuple[Tensor, EncoderStream]:
        """Args: features (B, t, F) the next frames (all real); state, updated in place.
        Returns (B, t', D) the outputs these frames complete, and the state."""
        if not self.causal:
            raise ConfigError("a non-causal Conformer encoder cannot stream; build it with causal=True")
        hidden, state.stem = self.stem.forward_chunk(features, state.stem)
        hidden = self.dropout(hidden)
        caches: list[ConformerCache] = state.layers
        for block, cache in zip(self.blocks, caches):
            hidden, _ = block.forward_chunk(hidden, cache)
        return hidden, state


@dataclass(frozen=True, kw_only=True)
class ConformerConfig(SpeechConfig):
    """The config of a recogniser with a Conformer encoder; each such model's config extends it.

    Attributes:
        d_model: the blocks' width.
        n_heads: attention heads.
        n_layers: Conformer blocks.
        conv_kernel: the depthwise convolution's width, in (subsampled) frames.
        ff_mult: the feed-forward modules' hidden width, as a multiple of d_model.
        stem_channels: channels of the subsampling stem's convolutions.
        dropout: on the residual branches and the attention weights.
    """

    d_model: int = 96
    n_heads: int = 4
    n_layers: int = 3
    conv_kernel: int = 15
    ff_mult: int = 4
    stem_channels: int = 64
    dropout: float = 0.1

    def conformer_encoder(self, *, causal: bool) -> ConformerEncoder:
        """The encoder this config describes (causal: a streaming one)."""
        return ConformerEncoder(self.n_mels, self.d_model, self.n_heads, self.n_layers, self.conv_kernel,
                                self.ff_mult, self.dropout, causal=causal, stem_channels=self.stem_channels)
