"""Mamba-2 (Dao and Gu 2024): a stack of SSD mixers (``seqlab.layers.mamba2``), each in a
pre-RMSNorm residual block, with no attention and no separate MLP.

Training runs the chunked SSD (``seqlab.ops.ssd``): matrix products within chunks of
``chunk_size`` steps, a linear recurrence across them. Generation steps with a constant-size
state per layer. The defaults (head width 32, state 64, one group) are the paper's block at a
width that trains on a CPU; its own models use head width 64 and state 128.

Shapes: B batch, T time, D ``d_model``, V ``vocab_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from seqlab.errors import ConfigError
from seqlab.layers.mamba2 import Mamba2Mixer
from seqlab.models.mixer_stack import MixerClassifier, MixerClassifierConfig, MixerLanguageModel, MixerLMConfig
from seqlab.registry import register


@dataclass(frozen=True, kw_only=True)
class Mamba2Fields:
    """The Mamba-2 mixer's fields.

    Attributes:
        d_state: N, the SSM state size per head channel.
        head_dim: P, the width of a head; expand x d_model must be a multiple of it.
        n_groups: G, groups of heads that share B and C (as key/value groups share keys); must
            divide the number of heads.
        expand: the inner width as a multiple of d_model.
        d_conv: the causal convolution's width.
        dt_min: the smallest initial step size.
        dt_max: the largest initial step size.
        conv_bias: a bias in the convolution.
        bias: biases in the input and output projections.
        chunk_size: steps per chunk of the SSD (speed and memory, not results).
    """

    d_state: int = 64
    head_dim: int = 32
    n_groups: int = 1
    expand: int = 2
    d_conv: int = 4
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    conv_bias: bool = True
    bias: bool = False
    chunk_size: int = 64

    def check_mamba2_fields(self) -> None:
        name = type(self).__name__
        for field in ("d_state", "head_dim", "n_groups", "expand", "d_conv", "chunk_size"):
            if getattr(self, field) < 1:
                raise ConfigError(f"{name}.{field} must be >= 1, got {getattr(self, field)}")
        inner = self.expand * self.d_model
        if inner % self.head_dim:
            raise ConfigError(f"{name}.head_dim ({self.head_dim}) must divide expand x d_model ({inner})")
        if (inner // self.head_dim) % self.n_groups:
            raise ConfigError(f"{name}.n_groups ({self.n_groups}) must divide the number of heads "
                              f"({inner // self.head_dim})")
        if not 0 < self.dt_min <= self.dt_max:
            raise ConfigError(f"{name}: need 0 < dt_min <= dt_max, got {self.dt_min} and {self.dt_max}")

    def mamba2_mixers(self) -> list[nn.Module]:
        return [Mamba2Mixer(self.d_model, self.d_state, self.head_dim, self.n_groups, self.expand, self.d_conv,
                            self.dt_min, self.dt_max, conv_bias=self.conv_bias, bias=self.bias,
                            norm_eps=self.norm_eps, chunk_size=self.chunk_size)
                for _ in range(self.n_layers)]


@dataclass(frozen=True, kw_only=True)
class Mamba2Config(MixerLMConfig, Mamba2Fields):
    """A Mamba-2 language model."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_mamba2_fields()


@dataclass(frozen=True, kw_only=True)
class Mamba2ClassifierConfig(MixerClassifierConfig, Mamba2Fields):
    """A Mamba-2 sequence classifier."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_mamba2_fields()


@register("mamba2", task="lm", config=Mamba2Config, in_default_compare=False)
class Mamba2(MixerLanguageModel):
    """Mamba-2: state space duality layers (Dao and Gu 2024), chunked SSD, constant-size state."""

    def __init__(self, config: Mamba2Config):
        super().__init__(config, config.mamba2_mixers())


@register("mamba2", task="classify", config=Mamba2ClassifierConfig, in_default_compare=False)
class Mamba2Classifier(MixerClassifier):
    """Mamba-2 layers, mean- or last-pooled, with a linear classifier."""

    def __init__(self, config: Mamba2ClassifierConfig):
        super().__init__(config, config.mamba2_mixers())
