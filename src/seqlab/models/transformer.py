"""Decoder-only Transformer language model (GPT; Radford et al. 2018, 2019).

Pre-norm blocks (Xiong et al. 2020), each

    x = x + Attention(LayerNorm(x))
    x = x + MLP(LayerNorm(x)),       MLP(x) = W2 GELU(W1 x),  W1: D -> 4D,

over token embeddings plus learned absolute position embeddings, a final LayerNorm and an
output layer tied to the token embeddings. The recurrent view carries a key/value cache per
layer; position t reads position embedding t, so the model cannot step past ``max_len``.

Shapes: B batch, T time, D ``d_model``, V ``vocab_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqlab.contracts import CausalLM
from seqlab.errors import ConfigError, DataError
from seqlab.layers.attention import CausalSelfAttention, KVCache
from seqlab.registry import register


@dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """Decoder-only Transformer language model.

    Attributes:
        vocab_size: number of token ids.
        max_len: longest sequence (number of learned positions).
        d_model: residual stream width.
        n_layers: Transformer blocks.
        n_heads: attention heads; must divide d_model.
        dropout: dropout on embeddings, attention weights and residual branches (0 by default,
            as for the LSTM: raise it for long runs on small corpora).
    """

    vocab_size: int
    max_len: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "d_model", "n_layers", "n_heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TransformerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"TransformerConfig.n_heads ({self.n_heads}) must divide d_model ({self.d_model})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"TransformerConfig.dropout must be in [0, 1), got {self.dropout}")


class Block(nn.Module):
    """One pre-norm Transformer block: attention then MLP, each on a residual branch."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.d_model)
        self.attention = CausalSelfAttention(config.d_model, config.n_heads, config.dropout)
        self.mlp_norm = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, 4 * config.d_model),
            nn.GELU(),
            nn.Linear(4 * config.d_model, config.d_model),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        attended, cache = self.attention(self.attention_norm(x), cache)
        x = x + attended
        return x + self.mlp(self.mlp_norm(x)), cache


@register("transformer", task="lm", config=TransformerConfig)
class TransformerLanguageModel(CausalLM):
    """Decoder-only pre-norm Transformer with learned positions and a key/value cache."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.max_context = config.max_len
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.max_len, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2: N(0, 0.02) everywhere, residual output projections scaled by 1/sqrt(2 n_layers)
        # so the residual stream's variance does not grow with depth.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for projection in (block.attention.out, block.mlp[2]):
                nn.init.normal_(projection.weight, std=0.02 / math.sqrt(2 * self.config.n_layers))

    def init_state(self, batch_size: int) -> tuple[KVCache, ...]:
        config = self.config
        empty = self.token_embedding.weight.new_zeros(
            batch_size, config.n_heads, 0, config.d_model // config.n_heads
        )                                                                     # (B, H, 0, E)
        return tuple((empty, empty) for _ in self.blocks)

    def forward_from(
        self, tokens: Tensor, cache: tuple[KVCache, ...] | None
    ) -> tuple[Tensor, tuple[KVCache, ...]]:
        """Tokens (B, T) after the cached positions -> logits (B, T, V) and the extended cache.

        An empty cache (from ``init_state``) and None both mean no earlier positions."""
        start = 0 if cache is None else cache[0][0].shape[2]
        end = start + tokens.shape[1]
        if end > self.config.max_len:
            raise DataError(
                f"sequence of {end} tokens exceeds the transformer's max_len {self.config.max_len}; "
                "use a shorter context or build it with a larger max_len"
            )
        positions = torch.arange(start, end, device=tokens.device)
        x = self.dropout(self.token_embedding(tokens) + self.position_embedding(positions))  # (B, T, D)
        new_cache = []
        for index, block in enumerate(self.blocks):
            x, layer_cache = block(x, None if cache is None else cache[index])
            new_cache.append(layer_cache)
        return self.head(self.final_norm(x)), tuple(new_cache)
