"""What every recogniser does to its log-mel frames first: normalise them, and mask them while
training (SpecAugment).

Normalisation belongs to the model, not the task: a streaming model can only normalise
causally (each frame by the statistics of the frames so far, ``running``), while a model that
sees the whole recording normalises by the whole utterance (``utterance``). SpecAugment (Park
et al. 2019) is a training-time regulariser like dropout: in training mode it zeroes random
bands of mel channels and random spans of frames of the normalised features (zero is the
mean), drawing from torch's default generator, which the Trainer seeds; in eval mode it does
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from seqlab.data.audio import normalise_utterance, running_normalise, spec_augment
from seqlab.errors import ConfigError

Normalisation = Literal["utterance", "running"]


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
