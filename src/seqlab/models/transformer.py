"""Decoder-only Transformer language models: GPT (Radford et al. 2018, 2019), Llama (Touvron
et al. 2023) and everything between, by config.

A stack of :class:`~seqlab.layers.block.TransformerBlock` over token embeddings:

    x_0 = Embed(tokens) [+ P(positions)],   x_l = Block_l(x_{l-1}),   logits = W_out Norm(x_L),

each block built from parts chosen by the config: causal self-attention with ``n_kv_heads``
key/value heads (grouped-query attention, Ainslie et al. 2023), a position scheme, LayerNorm or
RMSNorm before (or after) each sublayer, and a plain or gated feed-forward. The output layer
may share the token embedding's weights (Press and Wolf 2017).

Positions, and how far the model reads:

* ``learned``: a table of ``max_len`` rows; the model reads at most ``max_len`` positions
  (``max_context``), so generation past it re-reads the last tokens (``seqlab.decoding``) and
  truncated BPTT is refused.
* ``sinusoidal``, ``rope``, ``rope_interleaved``, ``alibi``: no table; every layer attends to
  the ``max_len`` most recent positions (sliding-window attention, Beltagy et al. 2020), its
  cache a ring buffer of ``max_len`` slots. Within ``max_len`` this is plain causal attention;
  beyond, the parallel view and stepping agree at every length, generation runs on without
  re-reading anything, and truncated BPTT carries at most ``max_len`` keys per layer.

Presets are registered names: ``gpt`` (learned positions, LayerNorm, GELU, biases, tied
embeddings: the defaults of ``transformer``) and ``llama`` (RoPE in the half-rotation layout,
RMSNorm, SwiGLU, no biases, grouped-query attention, untied output layer).

Shapes: B batch, T time, D ``d_model``, V ``vocab_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Literal

from torch import Tensor, nn

from seqlab.contracts import CausalLM
from seqlab.errors import ConfigError
from seqlab.layers.attention import MultiHeadAttention
from seqlab.layers.block import NormPosition, TransformerBlock
from seqlab.layers.feedforward import ACTIVATIONS, GATED_ACTIVATIONS, Activation, FeedForward
from seqlab.layers.kv_cache import KeyValueCache
from seqlab.layers.moe import MixtureOfExperts
from seqlab.layers.norms import NORM_KINDS, NormKind, make_norm
from seqlab.layers.positions import (ALiBi, LearnedPositions, RelativePositionBias, RotaryPositions,
                                     SinusoidalPositions)
from seqlab.registry import register

PositionScheme = Literal["learned", "sinusoidal", "rope", "rope_interleaved", "alibi"]
POSITION_SCHEMES = ("learned", "sinusoidal", "rope", "rope_interleaved", "alibi")


@dataclass(frozen=True, kw_only=True)
class BlockConfig:
    """The shape of a stack of Transformer blocks; every Transformer config extends it (and may
    change its defaults).

    Attributes:
        d_model: residual stream width.
        n_layers: Transformer blocks.
        n_heads: attention (query) heads; must divide d_model.
        n_kv_heads: key/value heads, dividing n_heads (grouped-query attention; 1 is
            multi-query); none means n_heads.
        positions: learned, sinusoidal, rope (half-rotation layout, as HF Llama),
            rope_interleaved (GPT-J layout) or alibi.
        rope_base: RoPE's theta base.
        max_len: the learned position table's size (the longest sequence).
        norm: layernorm or rmsnorm.
        norm_eps: the norms' epsilon; none is the kind's usual one (LayerNorm 1e-5, RMSNorm 1e-6).
        norm_position: pre (normalise each sublayer's input) or post (each sublayer's sum).
        activation: feed-forward activation: gelu, gelu_tanh, relu, or gated swiglu, geglu,
            geglu_tanh.
        d_ff: feed-forward hidden width; none means 4 d_model, or for a gated activation
            8/3 d_model rounded up to a multiple of 32 (about the same parameters).
        bias: biases in the attention and feed-forward projections (and LayerNorm).
        scale_attention: scale the attention logits Q K^T by 1 / sqrt(head width); false leaves
            them unscaled, as T5 (whose initialisation folds the factor into the queries).
        dropout: on embeddings, attention weights and residual branches.
        gradient_checkpointing: recompute each block's activations in the backward pass (less
            memory, about a third more time).
    """

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    positions: PositionScheme = "learned"
    rope_base: float = 10000.0
    max_len: int = 256
    norm: NormKind = "layernorm"
    norm_eps: float | None = None
    norm_position: NormPosition = "pre"
    activation: Activation = "gelu"
    d_ff: int | None = None
    bias: bool = True
    scale_attention: bool = True
    dropout: float = 0.0
    gradient_checkpointing: bool = False

    size_fields: ClassVar[tuple[str, ...]] = ()                  # required sizes, checked >= 1
    position_schemes: ClassVar[tuple[str, ...]] = POSITION_SCHEMES

    def __post_init__(self) -> None:
        check_block_fields(self, self.size_fields, self.position_schemes)

    @property
    def hidden_width(self) -> int:
        """The feed-forward hidden width (``d_ff``, or its default)."""
        return hidden_width(self)


@dataclass(frozen=True, kw_only=True)
class TransformerConfig(BlockConfig):
    """Decoder-only Transformer language model.

    Attributes:
        vocab_size: number of token ids.
        max_len: learned positions: the table's size, the longest sequence; other schemes: the
            attention window (each position sees the max_len most recent ones).
        dropout: on embeddings, attention weights and residual branches (0 by default: raise
            it for long runs on small corpora).
        tie_embeddings: the output layer shares the token embedding's weights.
        n_experts: 0 for a dense feed-forward; N >= 1 for a mixture of N experts of width
            d_ff each (``seqlab.layers.moe``).
        experts_top_k: experts per token (1: Switch, the raw router probability as the gate;
            2: Mixtral, the gates renormalised over the chosen two).
        capacity_factor: in training, each expert takes at most capacity_factor x k x tokens / N
            tokens and drops the rest (they pass through the residual); none: no limit.
        balance_weight: alpha of the load-balancing loss alpha N sum_i f_i P_i.
        z_loss_weight: weight of the router z-loss.
    """

    vocab_size: int
    tie_embeddings: bool = True
    n_experts: int = 0
    experts_top_k: int = 2
    capacity_factor: float | None = None
    balance_weight: float = 0.01
    z_loss_weight: float = 1e-3

    size_fields: ClassVar[tuple[str, ...]] = ("vocab_size",)


def hidden_width(config) -> int:
    """``config.d_ff``, or 4 d_model, or for a gated activation 8/3 d_model rounded up to a
    multiple of 32 (about the parameters of the plain 4 d_model)."""
    if config.d_ff is not None:
        return config.d_ff
    if config.activation in GATED_ACTIVATIONS:
        return 32 * math.ceil(8 * config.d_model / 3 / 32)
    return 4 * config.d_model


def check_block_fields(config, sizes: tuple[str, ...], schemes: tuple[str, ...]) -> None:
    """Validate the fields every Transformer config shares (and the positive ``sizes``), with
    a ``ConfigError`` naming the field."""
    name = type(config).__name__
    for field in (*sizes, "max_len", "d_model", "n_layers", "n_heads"):
        if getattr(config, field) < 1:
            raise ConfigError(f"{name}.{field} must be >= 1, got {getattr(config, field)}")
    if config.d_model % config.n_heads:
        raise ConfigError(f"{name}.n_heads ({config.n_heads}) must divide d_model ({config.d_model})")
    if config.n_kv_heads is not None and (config.n_kv_heads < 1 or config.n_heads % config.n_kv_heads):
        raise ConfigError(f"{name}.n_kv_heads ({config.n_kv_heads}) must divide n_heads ({config.n_heads})")
    choices = {"positions": schemes, "norm": NORM_KINDS, "activation": ACTIVATIONS, "norm_position": ("pre", "post")}
    for field, allowed in choices.items():
        if getattr(config, field) not in allowed:
            raise ConfigError(f"{name}.{field} must be one of {', '.join(allowed)}, got {getattr(config, field)!r}")
    if config.positions.startswith("rope") and (config.d_model // config.n_heads) % 2:
        raise ConfigError(f"{name}: rotary positions need an even head width, "
                          f"d_model / n_heads = {config.d_model // config.n_heads}")
    if config.norm_eps is not None and not config.norm_eps > 0:
        raise ConfigError(f"{name}.norm_eps must be positive (or none), got {config.norm_eps}")
    if config.d_ff is not None and config.d_ff < 1:
        raise ConfigError(f"{name}.d_ff must be >= 1, got {config.d_ff}")
    if not 0.0 <= config.dropout < 1.0:
        raise ConfigError(f"{name}.dropout must be in [0, 1), got {config.dropout}")
    n_experts = getattr(config, "n_experts", 0)
    if n_experts < 0:
        raise ConfigError(f"{name}.n_experts must be >= 0 (0: dense), got {n_experts}")
    if n_experts and not 1 <= config.experts_top_k <= n_experts:
        raise ConfigError(f"{name}.experts_top_k ({config.experts_top_k}) must be between 1 and "
                          f"n_experts ({n_experts})")
    if n_experts and config.capacity_factor is not None and not config.capacity_factor > 0:
        raise ConfigError(f"{name}.capacity_factor must be positive, got {config.capacity_factor}")


@dataclass(frozen=True, kw_only=True)
class GPTConfig(TransformerConfig):
    """The GPT preset: learned positions, pre-LayerNorm, GELU, biases, tied embeddings."""


@dataclass(frozen=True, kw_only=True)
class LlamaConfig(TransformerConfig):
    """The Llama preset: RoPE (half layout), RMSNorm, SwiGLU, no biases, grouped-query
    attention (2 key/value heads), an untied output layer."""

    n_kv_heads: int | None = 2
    positions: PositionScheme = "rope"
    norm: NormKind = "rmsnorm"
    activation: Activation = "swiglu"
    bias: bool = False
    tie_embeddings: bool = False


def attention_positions(config: TransformerConfig, causal: bool = True) -> nn.Module | None:
    """The position module the attention layers of one stack share (RoPE, ALiBi, T5's relative
    buckets: bidirectional unless ``causal``), or None."""
    head_dim = config.d_model // config.n_heads
    if config.positions == "t5":
        return RelativePositionBias(config.n_heads, bidirectional=not causal,
                                    n_buckets=getattr(config, "relative_buckets", 32),
                                    max_distance=getattr(config, "relative_max_distance", 128))
    if config.positions == "rope":
        return RotaryPositions(head_dim, config.rope_base, "half")
    if config.positions == "rope_interleaved":
        return RotaryPositions(head_dim, config.rope_base, "interleaved")
    if config.positions == "alibi":
        return ALiBi(config.n_heads)
    return None


def input_positions(config: TransformerConfig) -> nn.Module | None:
    """The position module added to the embeddings (learned, sinusoidal), or None."""
    if config.positions == "learned":
        return LearnedPositions(config.d_model, config.max_len)
    if config.positions == "sinusoidal":      # embeddings at N(0, 1/D), times sqrt(D): see token_embedding_std
        return SinusoidalPositions(config.d_model, embedding_scale=math.sqrt(config.d_model))
    return None


def block_norm(config: BlockConfig) -> partial:
    """A factory of the config's normalisation layer (kind, width, epsilon, bias)."""
    return partial(make_norm, config.norm, config.d_model, eps=config.norm_eps, bias=config.bias)


def block_attention(config: BlockConfig, **options) -> MultiHeadAttention:
    """An attention layer of the config's width, heads, dropout, biases and logit scale;
    ``options`` (causal, positions, cross, window) as :class:`MultiHeadAttention` takes them."""
    return MultiHeadAttention(config.d_model, config.n_heads, config.n_kv_heads, dropout=config.dropout,
                              bias=config.bias, scale=None if config.scale_attention else 1.0, **options)


def build_block(config: TransformerConfig, positions: nn.Module | None, feedforward: nn.Module) -> TransformerBlock:
    """One causal block of the config; ``positions`` is shared by every block."""
    window = None if config.positions == "learned" else config.max_len
    attention = block_attention(config, causal=True, positions=positions, window=window)
    return TransformerBlock(attention, feedforward, block_norm(config), norm_position=config.norm_position,
                            dropout=config.dropout, checkpoint=config.gradient_checkpointing)


def build_feedforward(config: TransformerConfig) -> nn.Module:
    """A dense feed-forward, or a mixture of ``n_experts`` of them."""
    if getattr(config, "n_experts", 0):
        return MixtureOfExperts(config.d_model, config.hidden_width, config.n_experts, config.experts_top_k,
                                config.activation, config.dropout, config.bias,
                                capacity_factor=config.capacity_factor, balance_weight=config.balance_weight,
                                z_loss_weight=config.z_loss_weight)
    return FeedForward(config.d_model, config.hidden_width, config.activation, config.dropout, config.bias)


def token_embedding_std(config: BlockConfig) -> float:
    """0.02 (GPT-2), or 1/sqrt(D) with sinusoidal positions, whose layer multiplies the
    embeddings by sqrt(D) (Vaswani et al. 2017, sec. 3.4): unit-scale tokens beside positions
    in [-1, 1]. At 0.02 the fixed table would swamp the tokens 35 to 1."""
    return config.d_model ** -0.5 if config.positions == "sinusoidal" else 0.02


def gpt2_init(model: nn.Module, n_layers: int, embedding_std: float = 0.02) -> None:
    """GPT-2's initialisation: N(0, 0.02) for every matrix (``embedding_std`` for embeddings),
    zero biases, and the residual output projections (attention ``out_proj``, feed-forward
    ``down``) scaled by 1/sqrt(2 n_layers) so that the residual stream's variance does not grow
    with depth."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=embedding_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    for name, parameter in model.named_parameters():
        if name.endswith(("out_proj.weight", "down.weight")):
            nn.init.normal_(parameter, std=0.02 / math.sqrt(2 * n_layers))


@register("transformer", task="lm", config=TransformerConfig)
class TransformerLanguageModel(CausalLM):
    """Decoder-only Transformer; positions, norms, feed-forward and heads set by config."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.max_context = config.max_len if config.positions == "learned" else None
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.input_positions = input_positions(config)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        shared_positions = attention_positions(config)
        self.blocks = nn.ModuleList(build_block(config, shared_positions, build_feedforward(config))
                                    for _ in range(config.n_layers))
        self.final_norm = block_norm(config)() if config.norm_position == "pre" else nn.Identity()
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        gpt2_init(self, config.n_layers, token_embedding_std(config))
        if config.tie_embeddings:
            self.head.weight = self.token_embedding.weight

    def init_state(self, batch_size: int) -> tuple[KeyValueCache, ...]:
        """One empty key/value cache per block (a ring of ``max_len`` slots unless positions are
        learned). The caches are written in place: a state is consumed by the step that reads it."""
        return tuple(block.attention.make_cache(batch_size, self.config.max_len) for block in self.blocks)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, T) token ids -> (B, T, V) logits, without a cache (training, scoring)."""
        return self._logits(tokens, None)

    def forward_from(self, tokens: Tensor, state: tuple[KeyValueCache, ...] | None
                     ) -> tuple[Tensor, tuple[KeyValueCache, ...]]:
        """Tokens (B, T) after the cached positions -> logits (B, T, V) and the caches, extended
        in place. None means a fresh state."""
        state = self.init_state(tokens.shape[0]) if state is None else state
        return self._logits(tokens, state), state

    def _logits(self, tokens: Tensor, caches: tuple[KeyValueCache, ...] | None) -> Tensor:
        offset = 0 if caches is None else caches[0].length
        x = self.token_embedding(tokens)                                            # (B, T, D)
        if self.input_positions is not None:
            x = self.input_positions(x, offset)
        x = self.dropout(x)
        for index, block in enumerate(self.blocks):
            x = block(x, cache=None if caches is None else caches[index])
        return self.head(self.final_norm(x))                                        # (B, T, V)


@register("gpt", task="lm", config=GPTConfig, in_default_compare=False)
class GPT(TransformerLanguageModel):
    """Decoder-only Transformer, GPT preset: learned positions, LayerNorm, GELU, tied embeddings."""


@register("llama", task="lm", config=LlamaConfig, in_default_compare=False)
class Llama(TransformerLanguageModel):
    """Decoder-only Transformer, Llama preset: RoPE, RMSNorm, SwiGLU, no biases, grouped-query heads."""
