"""The shape every state space and long-convolution model here shares: token embeddings, a stack
of pre-norm residual blocks around sequence mixers, a final RMSNorm, and a head.

    x_0 = Embed(tokens),   x_l = x_{l-1} + Mixer_l(RMSNorm(x_{l-1}))  [+ FeedForward_l(RMSNorm(.))]
    logits = W_out RMSNorm(x_L)          (language model; W_out tied to Embed by default)
    logits = W_cls Pool(RMSNorm(x_L))    (classifier; mean or last over the real positions)

A model file (``mamba``, ``mamba2``, ``s4d``, ``hyena``, ``hybrid``) contributes its config and
its mixers; this module turns them into a ``CausalLM`` (parallel view: every mixer over the
whole sequence; recurrent view: each mixer's constant-size state, or an attention layer's
cache) and into a classifier for the ``classify`` task. Mixers are causal, so a classifier's
real positions never read the padding after them.

Parameter names follow the Mamba reference and Hugging Face's ``MambaForCausalLM``:
``backbone.embeddings``, ``backbone.layers.{i}.norm``, ``backbone.layers.{i}.mixer``,
``backbone.norm_f``, ``lm_head``.

Shapes: B batch, T time, D ``d_model``, V ``vocab_size``, C ``n_classes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seqlab.contracts import CausalLM
from seqlab.errors import ConfigError
from seqlab.layers.block import ResidualBlock
from seqlab.layers.norms import RMSNorm
from seqlab.layers.pooling import Pooling, PoolingKind

# Gu and Dao's language-model runs: AdamW at 1e-3 (their small models used up to 3e-3) with a
# short warm-up; their weight decay 0.1 spares A, D and the step bias (``no_weight_decay``).
SSM_TRAIN_DEFAULTS: dict[str, Any] = {"lr": 1e-3, "warmup_steps": 100, "weight_decay": 0.1}


@dataclass(frozen=True, kw_only=True)
class MixerStackConfig:
    """Fields every mixer stack has; model configs extend it.

    Attributes:
        d_model: the residual stream's width.
        n_layers: residual blocks.
        norm_eps: RMSNorm's epsilon.
        dropout: on each block's sublayer outputs (0: none, as in Mamba).
        residual_in_fp32: keep the residual stream in float32 when the weights are in a lower
            precision (bf16, fp16), as the Mamba reference does by default: each block reads it
            cast to the weights' dtype and adds its output in float32. No effect in float32.
    """

    d_model: int = 128
    n_layers: int = 4
    norm_eps: float = 1e-5
    dropout: float = 0.0
    residual_in_fp32: bool = False

    size_fields: ClassVar[tuple[str, ...]] = ("d_model", "n_layers")

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field in self.size_fields:
            if getattr(self, field) < 1:
                raise ConfigError(f"{name}.{field} must be >= 1, got {getattr(self, field)}")
        if not self.norm_eps > 0:
            raise ConfigError(f"{name}.norm_eps must be positive, got {self.norm_eps}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{name}.dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True, kw_only=True)
class MixerLMConfig(MixerStackConfig):
    """A mixer stack as a language model.

    Attributes:
        vocab_size: number of token ids.
        tie_embeddings: the output layer shares the token embedding's weights.
    """

    vocab_size: int
    tie_embeddings: bool = True

    size_fields: ClassVar[tuple[str, ...]] = ("d_model", "n_layers", "vocab_size")


@dataclass(frozen=True, kw_only=True)
class MixerClassifierConfig(MixerStackConfig):
    """A mixer stack as a sequence classifier.

    Attributes:
        vocab_size: number of token ids (from the task's tokenizer).
        n_classes: number of labels (from the task's training data).
        pooling: mean (over the real positions) or last (the last real position's state,
            which has read the whole sequence).
    """

    vocab_size: int
    n_classes: int
    pooling: PoolingKind = "mean"

    size_fields: ClassVar[tuple[str, ...]] = ("d_model", "n_layers", "vocab_size", "n_classes")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling not in ("mean", "last"):
            raise ConfigError(f"{type(self).__name__}.pooling must be mean or last, got {self.pooling!r}")


class MixerStack(nn.Module):
    """Embeddings, residual blocks and the final norm: (B, T) ids -> (B, T, D) states.

    Args:
        config: a ``MixerStackConfig`` with ``vocab_size``.
        mixers: one mixer per layer (``mixer(x, state) -> (y, state)``, ``init_state``).
        feedforwards: one feed-forward or None per layer; None: no feed-forward sublayers.
    """

    def __init__(self, config: MixerStackConfig, mixers: Sequence[nn.Module],
                 feedforwards: Sequence[nn.Module | None] | None = None):
        super().__init__()
        feedforwards = feedforwards or [None] * len(mixers)
        self.residual_in_fp32 = config.residual_in_fp32
        norm = partial(RMSNorm, config.d_model, config.norm_eps)
        self.embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(ResidualBlock(mixer, norm, feedforward, config.dropout)
                                    for mixer, feedforward in zip(mixers, feedforwards, strict=True))
        self.norm_f = norm()
        nn.init.normal_(self.embeddings.weight, std=0.02)
        # The reference's prenorm-residual rescaling: each layer's output projection divided by
        # sqrt(n_layers), so that the residual stream's variance does not grow with depth.
        with torch.no_grad():
            for name, parameter in self.layers.named_parameters():
                if name.endswith("out_proj.weight"):
                    parameter /= math.sqrt(len(mixers))

    def init_state(self, batch_size: int) -> tuple[Any, ...]:
        return tuple(layer.mixer.init_state(batch_size) for layer in self.layers)

    def forward(self, tokens: Tensor, states: Sequence[Any] | None = None, mask: Tensor | None = None
                ) -> tuple[Tensor, tuple[Any, ...]]:
        """(B, T) ids, the states before them (None: fresh) -> (B, T, D) normalised states and
        the layers' states after the last token."""
        x = self.embeddings(tokens)
        if self.residual_in_fp32:
            x = x.float()
        states = states if states is not None else [None] * len(self.layers)
        after = []
        for layer, state in zip(self.layers, states, strict=True):
            x, state = layer(x, state, mask)
            after.append(state)
        return self.norm_f(x), tuple(after)


class MixerLanguageModel(CausalLM):
    """A mixer stack with a (tied) output layer; the recurrent state is one per layer."""

    train_defaults: ClassVar[dict[str, Any]] = SSM_TRAIN_DEFAULTS

    def __init__(self, config: MixerLMConfig, mixers: Sequence[nn.Module],
                 feedforwards: Sequence[nn.Module | None] | None = None):
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.backbone = MixerStack(config, mixers, feedforwards)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight

    def init_state(self, batch_size: int) -> tuple[Any, ...]:
        """Each layer's fresh state (an SSM's zeros, an attention layer's empty cache)."""
        return self.backbone.init_state(batch_size)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, V) logits, from fresh states."""
        return self.forward_from(tokens, None)[0]

    def forward_from(self, tokens: Tensor, state: tuple[Any, ...] | None) -> tuple[Tensor, tuple[Any, ...]]:
        hidden, state = self.backbone(tokens, state)
        return self.lm_head(hidden.to(self.lm_head.weight.dtype)), state     # a float32 residual: to the head's


class MixerClassifier(nn.Module):
    """A mixer stack pooled over the real positions, with a linear classifier."""

    train_defaults: ClassVar[dict[str, Any]] = SSM_TRAIN_DEFAULTS

    def __init__(self, config: MixerClassifierConfig, mixers: Sequence[nn.Module],
                 feedforwards: Sequence[nn.Module | None] | None = None):
        super().__init__()
        self.config = config
        self.backbone = MixerStack(config, mixers, feedforwards)
        self.pooling = Pooling(config.pooling, config.d_model)
        self.head = nn.Linear(config.d_model, config.n_classes)

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """(B, T) ids and mask (right padding) -> (B, C) logits."""
        hidden, _ = self.backbone(tokens, mask=mask)
        return self.head(self.pooling(hidden, mask))

    def loss(self, tokens: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        return F.cross_entropy(self(tokens, mask).float(), labels)

    def predict(self, tokens: Tensor, mask: Tensor) -> Tensor:
        return self(tokens, mask).argmax(dim=-1)
