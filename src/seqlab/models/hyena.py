"""Hyena (Poli et al. 2023): a stack of Hyena operators (``seqlab.layers.hyena``), each in a
pre-RMSNorm residual block, with no attention and no separate MLP.

Training reads the whole sequence through FFT long convolutions in O(T log T) time per layer.
Generation keeps, per layer, the short convolution's window and every input that entered the
N long convolutions so far: a step at position t costs O(t D N) time and the state
O(t D N) memory, growing with the context (a long convolution has no constant-size state
unless it is distilled into an SSM, which is not done here). The defaults are the paper's
operator (order 2, filter FFN of width 64, 33 positional features, short filter 3) at a width
that trains on a CPU.

Shapes: B batch, T time, D ``d_model``, V ``vocab_size``, N ``order``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from seqlab.errors import ConfigError
from seqlab.layers.hyena import HyenaMixer
from seqlab.models.mixer_stack import MixerClassifier, MixerClassifierConfig, MixerLanguageModel, MixerLMConfig
from seqlab.registry import register


@dataclass(frozen=True, kw_only=True)
class HyenaFields:
    """The Hyena operator's fields.

    Attributes:
        order: N, the number of long convolutions, each followed by a gate (N + 1 projections).
        filter_order: the width of the FFN that computes the implicit filters from positions.
        emb_dim: the number of positional features fed to that FFN: the normalised time and
            a cosine and a sine per band, so odd and at least 3 (1 + 2 bands).
        short_filter: the width of the short causal convolution over the projections.
        l_max: the time scale of the filters: position t enters them as t / l_max (positions
            beyond l_max are still defined).
        fast_decay_span: the fastest-decaying channel's filter window falls to 1e-2 at
            t = fast_decay_span * l_max.
        slow_decay_span: the slowest-decaying channel's filter window falls to 1e-2 at
            t = slow_decay_span * l_max; the channels' rates are spread evenly in between.
        bias: biases in the input and output projections.
    """

    order: int = 2
    filter_order: int = 64
    emb_dim: int = 33
    short_filter: int = 3
    l_max: int = 1024
    fast_decay_span: float = 0.3
    slow_decay_span: float = 1.5
    bias: bool = True

    def check_hyena_fields(self) -> None:
        name = type(self).__name__
        for field in ("order", "filter_order", "short_filter", "l_max"):
            if getattr(self, field) < 1:
                raise ConfigError(f"{name}.{field} must be >= 1, got {getattr(self, field)}")
        if self.emb_dim < 3 or self.emb_dim % 2 == 0:
            raise ConfigError(f"{name}.emb_dim must be odd and >= 3 (1 + 2 bands), got {self.emb_dim}")
        if not self.fast_decay_span > 0:
            raise ConfigError(f"{name}.fast_decay_span must be positive, got {self.fast_decay_span}")
        if not self.slow_decay_span >= self.fast_decay_span:
            raise ConfigError(f"{name}.slow_decay_span must be >= fast_decay_span ({self.fast_decay_span}), "
                              f"got {self.slow_decay_span}")

    def hyena_mixers(self) -> list[nn.Module]:
        return [HyenaMixer(self.d_model, self.order, self.filter_order, self.emb_dim, self.short_filter, self.l_max,
                           self.fast_decay_span, self.slow_decay_span, bias=self.bias)
                for _ in range(self.n_layers)]


@dataclass(frozen=True, kw_only=True)
class HyenaConfig(MixerLMConfig, HyenaFields):
    """A Hyena language model."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_hyena_fields()


@dataclass(frozen=True, kw_only=True)
class HyenaClassifierConfig(MixerClassifierConfig, HyenaFields):
    """A Hyena sequence classifier."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_hyena_fields()


@register("hyena", task="lm", config=HyenaConfig, in_default_compare=False)
class Hyena(MixerLanguageModel):
    """Hyena: gated long convolutions with implicit filters (Poli et al. 2023), FFT in training."""

    def __init__(self, config: HyenaConfig):
        super().__init__(config, config.hyena_mixers())


@register("hyena", task="classify", config=HyenaClassifierConfig, in_default_compare=False)
class HyenaClassifier(MixerClassifier):
    """Hyena layers, mean- or last-pooled, with a linear classifier."""

    def __init__(self, config: HyenaClassifierConfig):
        super().__init__(config, config.hyena_mixers())
