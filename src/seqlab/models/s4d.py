"""The time-invariant baseline: Mamba's architecture with the SSM made linear time-invariant
(S4D-real, ``seqlab.layers.s4d``), so that a comparison with ``mamba`` isolates selection.

Training convolves with the SSM's kernel through the FFT; generation steps with the same
constant-size state as Mamba's.

Shapes: B batch, T time, D ``d_model``, V ``vocab_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from seqlab.errors import ConfigError
from seqlab.layers.s4d import S4DMixer
from seqlab.models.mixer_stack import MixerClassifier, MixerClassifierConfig, MixerLanguageModel, MixerLMConfig
from seqlab.registry import register


@dataclass(frozen=True, kw_only=True)
class S4DFields:
    """The S4D mixer's fields.

    Attributes:
        d_state: N, the SSM state size per channel.
        expand: the inner width as a multiple of d_model.
        d_conv: the causal convolution's width.
        dt_min: the smallest initial step size.
        dt_max: the largest initial step size.
        conv_bias: a bias in the convolution.
        bias: biases in the input and output projections.
    """

    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    conv_bias: bool = True
    bias: bool = False

    def check_s4d_fields(self) -> None:
        name = type(self).__name__
        for field in ("d_state", "expand", "d_conv"):
            if getattr(self, field) < 1:
                raise ConfigError(f"{name}.{field} must be >= 1, got {getattr(self, field)}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ConfigError(f"{name}: need 0 < dt_min <= dt_max, got {self.dt_min} and {self.dt_max}")

    def s4d_mixers(self) -> list[nn.Module]:
        return [S4DMixer(self.d_model, self.d_state, self.expand, self.d_conv, self.dt_min, self.dt_max,
                         conv_bias=self.conv_bias, bias=self.bias)
                for _ in range(self.n_layers)]


@dataclass(frozen=True, kw_only=True)
class S4DConfig(MixerLMConfig, S4DFields):
    """An S4D language model."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_s4d_fields()


@dataclass(frozen=True, kw_only=True)
class S4DClassifierConfig(MixerClassifierConfig, S4DFields):
    """An S4D sequence classifier."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_s4d_fields()


@register("s4d", task="lm", config=S4DConfig, in_default_compare=False)
class S4D(MixerLanguageModel):
    """Mamba's block with a time-invariant diagonal SSM (S4D-real): the baseline for selection."""

    def __init__(self, config: S4DConfig):
        super().__init__(config, config.s4d_mixers())


@register("s4d", task="classify", config=S4DClassifierConfig, in_default_compare=False)
class S4DClassifier(MixerClassifier):
    """S4D layers, mean- or last-pooled, with a linear classifier."""

    def __init__(self, config: S4DClassifierConfig):
        super().__init__(config, config.s4d_mixers())
