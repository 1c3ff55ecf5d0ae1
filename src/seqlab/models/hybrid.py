"""A Jamba-style hybrid (Lieber et al. 2024, "Jamba: A Hybrid Transformer-Mamba Language Model"):
Mamba layers interleaved with attention layers, each followed by a feed-forward sublayer that is
a mixture of experts every ``moe_every`` layers.

    layer i mixes with pattern[i % len(pattern)]: "m" a Mamba mixer, "a" causal self-attention
    x = x + Mixer_i(RMSNorm(x));   x = x + FeedForward_i(RMSNorm(x))   (MoE when i % moe_every == moe_every - 1)

The pattern is a period repeated over ``n_layers`` (Jamba's is 8 layers with one attention
layer, "mmmmammm", a:m = 1:7, with MoE every other layer). The attention layers take no position
scheme by default, as Jamba's: the Mamba layers before them already encode order. Their
recurrent state is a key/value cache, which grows with the context; the Mamba layers' states do
not, so the hybrid's generation memory is the attention layers' share of a Transformer's.

The parts are the library's own: ``seqlab.layers.mamba``, ``seqlab.layers.attention`` (with
grouped-query heads), ``seqlab.layers.feedforward`` and ``seqlab.layers.moe`` (whose balancing
and z losses reach the training loss through ``contracts.auxiliary_loss``).

Shapes: B batch, T time, D ``d_model``, V ``vocab_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.layers.attention import MultiHeadAttention
from seqlab.layers.feedforward import ACTIVATIONS, Activation, FeedForward
from seqlab.layers.kv_cache import KeyValueCache
from seqlab.layers.moe import MixtureOfExperts
from seqlab.layers.positions import RotaryPositions
from seqlab.models.mamba import MambaFields
from seqlab.models.mixer_stack import MixerClassifier, MixerClassifierConfig, MixerLanguageModel, MixerLMConfig
from seqlab.models.transformer import hidden_width
from seqlab.registry import register

CACHE_CAPACITY = 256           # an attention layer's initial cache size; it grows by doubling


class AttentionMixer(nn.Module):
    """Causal self-attention as a mixer: ``(x, cache) -> (y, cache)``, the cache written in place."""

    def __init__(self, attention: MultiHeadAttention):
        super().__init__()
        self.attention = attention

    def init_state(self, batch_size: int) -> KeyValueCache:
        return self.attention.make_cache(batch_size, CACHE_CAPACITY)

    def forward(self, x: Tensor, state: KeyValueCache | None = None) -> tuple[Tensor, KeyValueCache | None]:
        return self.attention(x, cache=state), state


@dataclass(frozen=True, kw_only=True)
class HybridFields(MambaFields):
    """The hybrid's fields (and the Mamba layers', from ``MambaFields``).

    Attributes:
        pattern: one period of layer kinds, m (Mamba) or a (attention), repeated over n_layers.
        n_heads: attention heads; must divide d_model.
        n_kv_heads: key/value heads of the attention layers (grouped-query); none means n_heads.
        positions: none (Jamba's choice) or rope for the attention layers.
        rope_base: RoPE's theta base.
        feedforward: a feed-forward sublayer in every layer (Jamba); false: mixers alone.
        activation: the feed-forward's activation (swiglu as Jamba's, or gelu, relu, ...).
        d_ff: feed-forward hidden width; none means 4 d_model, or 8/3 d_model for gated ones.
        moe_every: every moe_every-th layer's feed-forward is a mixture of experts (0: none).
        n_experts: experts in each mixture.
        experts_top_k: experts per token.
        capacity_factor: the experts' capacity in training (none: unlimited).
        balance_weight: the load-balancing loss's weight.
        z_loss_weight: the router z-loss's weight.
    """

    pattern: str = "mmam"
    n_heads: int = 4
    n_kv_heads: int | None = None
    positions: Literal["none", "rope"] = "none"
    rope_base: float = 10000.0
    feedforward: bool = True
    activation: Activation = "swiglu"
    d_ff: int | None = None
    moe_every: int = 2
    n_experts: int = 4
    experts_top_k: int = 2
    capacity_factor: float | None = None
    balance_weight: float = 0.01
    z_loss_weight: float = 1e-3

    def check_hybrid_fields(self) -> None:
        self.check_mamba_fields()
        name = type(self).__name__
        if not self.pattern or set(self.pattern) - {"m", "a"}:
            raise ConfigError(f"{name}.pattern must be a non-empty string of m (Mamba) and a (attention), "
                              f"got {self.pattern!r}")
        if self.n_heads < 1 or self.d_model % self.n_heads:
            raise ConfigError(f"{name}.n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise ConfigError(f"{name}.n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})")
        if self.positions not in ("none", "rope"):
            raise ConfigError(f"{name}.positions must be none or rope, got {self.positions!r}")
        if self.positions == "rope" and (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"{name}: rotary positions need an even head width, got {self.d_model // self.n_heads}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"{name}.activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.d_ff is not None and self.d_ff < 1:
            raise ConfigError(f"{name}.d_ff must be >= 1, got {self.d_ff}")
        if self.moe_every < 0:
            raise ConfigError(f"{name}.moe_every must be >= 0 (0: no experts), got {self.moe_every}")
        if self.moe_every and not 1 <= self.experts_top_k <= self.n_experts:
            raise ConfigError(f"{name}.experts_top_k ({self.experts_top_k}) must be between 1 and "
                              f"n_experts ({self.n_experts})")

    @property
    def layer_kinds(self) -> str:
        """Each layer's kind, the pattern repeated over n_layers."""
        return "".join(self.pattern[i % len(self.pattern)] for i in range(self.n_layers))

    def mixers(self) -> list[nn.Module]:
        mamba = iter(self.mamba_mixers())
        rotary = (RotaryPositions(self.d_model // self.n_heads, self.rope_base, "half")
                  if self.positions == "rope" else None)
        return [next(mamba) if kind == "m" else
                AttentionMixer(MultiHeadAttention(self.d_model, self.n_heads, self.n_kv_heads, causal=True,
                                                  positions=rotary, bias=False))
                for kind in self.layer_kinds]

    def feedforwards(self) -> list[nn.Module] | None:
        if not self.feedforward:
            return None
        width = hidden_width(self)

        def build(index: int) -> nn.Module:
            if self.moe_every and index % self.moe_every == self.moe_every - 1:
                return MixtureOfExperts(self.d_model, width, self.n_experts, self.experts_top_k, self.activation,
                                        bias=False, capacity_factor=self.capacity_factor,
                                        balance_weight=self.balance_weight, z_loss_weight=self.z_loss_weight)
            return FeedForward(self.d_model, width, self.activation, bias=False)

        return [build(index) for index in range(self.n_layers)]


@dataclass(frozen=True, kw_only=True)
class HybridConfig(MixerLMConfig, HybridFields):
    """A Jamba-style hybrid language model."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_hybrid_fields()


@dataclass(frozen=True, kw_only=True)
class HybridClassifierConfig(MixerClassifierConfig, HybridFields):
    """A Jamba-style hybrid sequence classifier."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_hybrid_fields()


@register("hybrid", task="lm", config=HybridConfig, in_default_compare=False)
class Hybrid(MixerLanguageModel):
    """Jamba-style hybrid: Mamba and attention layers by a pattern, with MoE feed-forwards."""

    def __init__(self, config: HybridConfig):
        super().__init__(config, config.mixers(), config.feedforwards())


@register("hybrid", task="classify", config=HybridClassifierConfig, in_default_compare=False)
class HybridClassifier(MixerClassifier):
    """Hybrid Mamba/attention layers, mean- or last-pooled, with a linear classifier."""

    def __init__(self, config: HybridClassifierConfig):
        super().__init__(config, config.mixers(), config.feedforwards())
