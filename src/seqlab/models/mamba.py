"""Mamba (Gu and Dao 2023): a stack of selective-SSM mixers (``seqlab.layers.mamba``), each in a
pre-RMSNorm residual block, with no attention and no separate MLP.

Training reads the whole sequence through the chunked selective scan (``seqlab.ops.scan``) in
O(T) time; generation steps with a state of constant size per layer, the convolution's last
K-1 inputs and the (Di, N) SSM state, however long the context. The defaults are the paper's
block (expand 2, d_state 16, d_conv 4, dt_rank ceil(D/16)) at a width that trains on a CPU.

Shapes: B batch, T time, D ``d_model``, V ``vocab_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from seqlab.errors import ConfigError
from seqlab.layers.mamba import MambaMixer
from seqlab.models.mixer_stack import MixerClassifier, MixerClassifierConfig, MixerLanguageModel, MixerLMConfig
from seqlab.registry import register


@dataclass(frozen=True, kw_only=True)
class MambaFields:
    """The Mamba mixer's fields.

    Attributes:
        d_state: N, the SSM state size per channel.
        expand: the inner width as a multiple of d_model.
        d_conv: the causal convolution's width.
        dt_rank: the rank of the step-size projection; none is ceil(d_model / 16).
        dt_min: the smallest initial step size.
        dt_max: the largest initial step size.
        conv_bias: a bias in the convolution.
        bias: biases in the input and output projections.
        chunk_size: steps per chunk of the scan (speed and memory, not results); none picks
            a chunk whose states fill about 2 MiB.
    """

    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int | None = None
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    conv_bias: bool = True
    bias: bool = False
    chunk_size: int | None = None

    def check_mamba_fields(self) -> None:
        name = type(self).__name__
        for field in ("d_state", "expand", "d_conv"):
            if getattr(self, field) < 1:
                raise ConfigError(f"{name}.{field} must be >= 1, got {getattr(self, field)}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ConfigError(f"{name}.chunk_size must be >= 1 (or none), got {self.chunk_size}")
        if self.dt_rank is not None and self.dt_rank < 1:
            raise ConfigError(f"{name}.dt_rank must be >= 1 (or none), got {self.dt_rank}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ConfigError(f"{name}: need 0 < dt_min <= dt_max, got {self.dt_min} and {self.dt_max}")

    def mamba_mixers(self) -> list[nn.Module]:
        return [MambaMixer(self.d_model, self.d_state, self.expand, self.d_conv, self.dt_rank, self.dt_min,
                           self.dt_max, conv_bias=self.conv_bias, bias=self.bias, chunk_size=self.chunk_size)
                for _ in range(self.n_layers)]


@dataclass(frozen=True, kw_only=True)
class MambaConfig(MixerLMConfig, MambaFields):
    """A Mamba language model."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_mamba_fields()


@dataclass(frozen=True, kw_only=True)
class MambaClassifierConfig(MixerClassifierConfig, MambaFields):
    """A Mamba sequence classifier."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_mamba_fields()


@register("mamba", task="lm", config=MambaConfig, in_default_compare=False)
class Mamba(MixerLanguageModel):
    """Mamba: selective state space layers (Gu and Dao 2023), chunked scan, constant-size state."""

    def __init__(self, config: MambaConfig):
        super().__init__(config, config.mamba_mixers())


@register("mamba", task="classify", config=MambaClassifierConfig, in_default_compare=False)
class MambaClassifier(MixerClassifier):
    """Mamba layers, mean- or last-pooled, with a linear classifier."""

    def __init__(self, config: MambaClassifierConfig):
        super().__init__(config, config.mamba_mixers())
