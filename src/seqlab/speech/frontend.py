"""What every recogniser does to its log-mel frames first: normalise them, and mask them while
training (SpecAugment).

Normalisation belongs to the model, not the task: a streaming model can only normalise
causally (each frame by the statistics of the frames so far, ``running``), while a model that
sees the whole recording normalises by the whole utterance (``utterance``). SpecAugment (Park
et al. 2019) is a training-time regulariser like dropout: in training mode it zeroes random
bands of mel channels and random spans of frames of the normalised features (zero is the
mean), drawing from torch's default generator, which the Trainer seeds; in eval mode it does
nothing.

Normalisation. ``normalise_utterance`` standardises each channel of each utterance with the
mean and variance of its real frames, ``(x_t - mean) / sqrt(max(var, floor))``. For streaming,
``running_normalise`` (and its stateful twin ``RunningNormaliser``) uses the cumulative
statistics of frames 0..t only: ``mean_t = S_t / (t+1)``, ``var_t = Q_t / (t+1) - mean_t**2``
with ``S_t``, ``Q_t`` the running sums of x and x**2 (in float64).

SpecAugment (Park et al. 2019, "SpecAugment: A Simple Data Augmentation Method for Automatic
Speech Recognition"): a few frequency masks (bands of channels) and time masks (runs of frames)
are set to 0, the mean of normalised features. Time warping is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.layers.conformer import lengths_to_mask

Normalisation = Literal["utterance", "running"]
DEFAULT_VARIANCE_FLOOR = 1e-5


@dataclass(frozen=True, kw_only=True)
class SpeechConfig:
    """What every recogniser's config holds; each model's config extends it.

    Attributes:
        vocab_size: output ids, the reserved blank/PAD, BOS and EOS included (from the task).
        n_mels: mel channels of each input frame (from the task).
        normalisation: utterance (mean and variance of the whole utterance) or running (of the
            frames so far: what a streaming model can do).
        spec_freq_masks: SpecAugment's frequency masks per utterance (0: none).
        spec_freq_width: the widest frequency mask, in mel channels (at most n_mels).
        spec_time_masks: SpecAugment's time masks per utterance (0: none).
        spec_time_ratio: the longest time mask, as a fraction of the utterance's frames.
    """

    vocab_size: int
    n_mels: int
    normalisation: Normalisation = "utterance"
    spec_freq_masks: int = 2
    spec_freq_width: int = 6
    spec_time_masks: int = 2
    spec_time_ratio: float = 0.05

    def __post_init__(self) -> None:
        if self.normalisation not in ("utterance", "running"):
            raise ConfigError(f"normalisation must be utterance or running, got {self.normalisation!r}")
        for name in ("spec_freq_masks", "spec_freq_width", "spec_time_masks"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.spec_time_ratio < 1:
            raise ConfigError(f"spec_time_ratio must be in [0, 1), got {self.spec_time_ratio}")


class FrontEnd(nn.Module):
    """Normalisation, then SpecAugment in training mode (module docstring)."""

    def __init__(self, config: SpeechConfig):
        super().__init__()
        self.config = config

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        """(B, T, F) log-mel frames -> (B, T, F) normalised (and, training, masked) frames."""
        config = self.config
        if config.normalisation == "utterance":
            features = normalise_utterance(features, lengths)
        else:
            features = running_normalise(features, lengths)
        if self.training and (config.spec_freq_masks or config.spec_time_masks):
            features = spec_augment(features, lengths, torch.default_generator,
                                    freq_masks=config.spec_freq_masks,
                                    max_freq_width=min(config.spec_freq_width, features.shape[-1]),
                                    time_masks=config.spec_time_masks, max_time_ratio=config.spec_time_ratio)
        return features


# ---------------------------------------------------------------------------- normalisation


def _real_frames(lengths: Tensor, n_frames: int) -> Tensor:
    """(B, T, 1) true at real frames."""
    return lengths_to_mask(lengths, n_frames)[:, :, None]


def normalise_utterance(features: Tensor, lengths: Tensor, *,
                        variance_floor: float = DEFAULT_VARIANCE_FLOOR) -> Tensor:
    """Per-utterance, per-channel mean and variance normalisation over the real frames.

    Args:
        features: (B, T, F) frames, padded past ``lengths``.
        lengths: (B,) real frames per utterance.
        variance_floor: variances are clamped to at least this (a constant channel gives 0).
    Returns:
        (B, T, F) ``(x - mean) / sqrt(max(var, floor))`` at real frames, 0 in the padding
        (whatever it held).
    """
    real = _real_frames(lengths, features.shape[1])                                    # (B, T, 1)
    count = lengths.clamp(min=1).to(features.dtype)[:, None, None]                     # (B, 1, 1)
    zero = features.new_zeros(())
    mean = torch.where(real, features, zero).sum(1, keepdim=True) / count              # (B, 1, F)
    centred = torch.where(real, features - mean, zero)
    variance = centred.square().sum(1, keepdim=True) / count
    return centred / variance.clamp(min=variance_floor).sqrt()


def _normalise_cumulative(features: Tensor, sums: Tensor, squares: Tensor, counts: Tensor,
                          variance_floor: float) -> Tensor:
    """``(x_t - S_t / n_t) / sqrt(max(Q_t / n_t - mean_t**2, floor))`` from float64 running sums."""
    mean = sums / counts
    variance = (squares / counts - mean.square()).clamp(min=variance_floor)
    return ((features.double() - mean) / variance.sqrt()).to(features.dtype)


def running_normalise(features: Tensor, lengths: Tensor, *,
                      variance_floor: float = DEFAULT_VARIANCE_FLOOR) -> Tensor:
    """Causal normalisation: frame t uses the mean and variance of its utterance's frames 0..t.

    The first frame of every utterance becomes 0 (its variance is 0, floored, and it equals its
    mean); the second becomes +-1 in each channel where the two frames differ by more than
    ``2 sqrt(variance_floor)``.

    Args:
        features: (B, T, F) frames, padded past ``lengths``.
        lengths: (B,) real frames per utterance.
        variance_floor: cumulative variances are clamped to at least this.
    Returns:
        (B, T, F) normalised frames, 0 in the padding. Equal to ``RunningNormaliser().push``
        over any chunking of the frames.
    """
    values = features.double()
    sums, squares = values.cumsum(1), values.square().cumsum(1)                        # (B, T, F)
    counts = torch.arange(1, features.shape[1] + 1, dtype=torch.float64, device=features.device)
    normalised = _normalise_cumulative(features, sums, squares, counts[:, None], variance_floor)
    return torch.where(_real_frames(lengths, features.shape[1]), normalised, normalised.new_zeros(()))


class RunningNormaliser:
    """Stateful ``running_normalise`` for streaming: keeps the frame count and running sums.

    ``push`` takes (t, F) frames of one utterance (or (B, t, F) of B streams advancing together)
    and returns them normalised; chunk after chunk it equals ``running_normalise`` on the whole.
    """

    def __init__(self, *, variance_floor: float = DEFAULT_VARIANCE_FLOOR) -> None:
        self.variance_floor = variance_floor
        self.reset()

    def reset(self) -> None:
        """Forget the statistics, to start a new utterance."""
        self.n_seen = 0
        self.sums: Tensor | None = None        # (..., F) float64 running sum of x
        self.squares: Tensor | None = None     # (..., F) float64 running sum of x**2

    def push(self, frames: Tensor) -> Tensor:
        """Normalise (..., t, F) new frames (t may be 0) with the statistics up to each."""
        values = frames.double()
        if self.sums is None:
            self.sums = values.new_zeros(*values.shape[:-2], values.shape[-1])
            self.squares = self.sums.clone()
        # Prepending the previous sums continues the same sequential additions as one cumsum.
        sums = torch.cat([self.sums[..., None, :], values], dim=-2).cumsum(-2)[..., 1:, :]
        squares = torch.cat([self.squares[..., None, :], values.square()], dim=-2).cumsum(-2)[..., 1:, :]
        n_new = frames.shape[-2]
        counts = torch.arange(self.n_seen + 1, self.n_seen + n_new + 1, dtype=torch.float64,
                              device=frames.device)[:, None]
        if n_new:
            self.sums, self.squares, self.n_seen = sums[..., -1, :], squares[..., -1, :], self.n_seen + n_new
        return _normalise_cumulative(frames, sums, squares, counts, self.variance_floor)


# ------------------------------------------------------------------------------ SpecAugment


def _random_bands(limits: Tensor, max_widths: Tensor, n_masks: int, size: int,
                  generator: torch.Generator | None) -> Tensor:
    """(B, size) true inside ``n_masks`` bands per row, each ``w ~ U{0..max_width}`` wide and
    starting at ``s ~ U{0..limit - w}``; ``limits`` and ``max_widths`` are (B,) integers."""
    draws = torch.rand(2, limits.shape[0], n_masks, generator=generator, dtype=torch.float64)
    widths = (draws[0] * (max_widths[:, None] + 1)).floor().long()                   # (B, n)
    starts = (draws[1] * (limits[:, None] - widths + 1)).floor().long()
    position = torch.arange(size)[None, None, :]                                      # (1, 1, size)
    inside = (position >= starts[:, :, None]) & (position < (starts + widths)[:, :, None])
    return inside.any(dim=1)


def spec_augment(features: Tensor, lengths: Tensor, generator: torch.Generator | None = None, *,
                 freq_masks: int = 2, max_freq_width: int | None = None, time_masks: int = 2,
                 max_time_ratio: float = 0.05) -> Tensor:
    """SpecAugment frequency and time masking (Park et al. 2019), set to 0 at real frames only.

    Each utterance gets ``freq_masks`` bands of ``w ~ U{0..max_freq_width}`` channels (default
    ``F // 5``) and ``time_masks`` runs of ``w ~ U{0..W_t}`` frames inside its real frames, where
    ``W_t = min(length, max(1, floor(max_time_ratio * length)))``: at least one frame, so short
    utterances are masked too, never more than the utterance. Masks may overlap.

    Args:
        features: (B, T, F) normalised frames, padded past ``lengths``.
        lengths: (B,) real frames per utterance.
        generator: a CPU generator for the random draws (the same seed gives the same masks).
    Returns:
        (B, T, F) features with the masked entries 0; padding is returned as it came.
    """
    batch_size, n_frames, n_channels = features.shape
    max_freq_width = n_channels // 5 if max_freq_width is None else max_freq_width
    if not 0 <= max_freq_width <= n_channels:
        raise ConfigError(f"spec_augment max_freq_width must be in [0, {n_channels}], got {max_freq_width}")
    lengths_cpu = lengths.cpu().long()
    max_time_widths = torch.minimum(lengths_cpu, (lengths_cpu * max_time_ratio).floor().long().clamp(min=1))
    channel_mask = _random_bands(torch.full((batch_size,), n_channels), torch.full((batch_size,), max_freq_width),
                                 freq_masks, n_channels, generator)                   # (B, F)
    frame_mask = _random_bands(lengths_cpu, max_time_widths, time_masks, n_frames, generator)  # (B, T)
    masked = (frame_mask[:, :, None] | channel_mask[:, None, :]).to(features.device)
    masked &= _real_frames(lengths, n_frames)
    return features.masked_fill(masked, 0.0)
