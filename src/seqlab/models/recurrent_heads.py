"""Recurrent encoders with task heads: many-to-one (classify or regress a whole sequence) and
many-to-many synchronised (one output per position, as a tagger).

Both read token ids (through an embedding) or real-valued features (B, T, F) directly, run a
``seqlab.layers.recurrent.Recurrent`` stack (bidirectional when asked) and apply a linear head:
after pooling for many-to-one, at every position for many-to-many. Padding is described by a
(B, T) mask, true at real positions, with sequences left-aligned. Padding never changes a
real position's state: a one-direction stack is causal (and runs unpacked, which is faster),
a bidirectional one runs on packed sequences.

The encoder's parts sit at the top of the module under the names the recurrent language models
use (``embedding``, ``recurrent``; ``seqlab.models.rnn``), so the weights of a language model
load by name into a head model of the same width and depth (pre-training, then fine-tuning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seqlab.errors import ConfigError
from seqlab.layers.pooling import Pooling, PoolingKind
from seqlab.layers.recurrent import CellKind, Recurrent


@dataclass(frozen=True, kw_only=True)
class RecurrentStackConfig:
    """The recurrent stack of a head model (the part every head config shares).

    Attributes:
        d_model: embedding and hidden size (of each direction).
        n_layers: stacked recurrent layers.
        dropout: on the embeddings, between recurrent layers and before the head.
        bidirectional: also read each sequence backwards and concatenate both directions.
        pooling: many-to-one only: how the states become one vector: last (the final state of
            each direction), mean (their average) or attention (a learned weighted average).
    """

    d_model: int = 128
    n_layers: int = 1
    dropout: float = 0.0
    bidirectional: bool = False
    pooling: PoolingKind = "last"

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field in ("d_model", "n_layers"):
            if getattr(self, field) < 1:
                raise ConfigError(f"{name}.{field} must be >= 1, got {getattr(self, field)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{name}.dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True, kw_only=True)
class RecurrentHeadConfig(RecurrentStackConfig):
    """A recurrent encoder with a head.

    Attributes:
        n_outputs: classes (or regression targets) per sequence or per position.
        vocab_size: token ids are embedded when set; otherwise inputs are (B, T, n_features).
        n_features: size of real-valued inputs (when ``vocab_size`` is None).
        cell: "elman", "jordan", "lstm" or "gru".
    """

    n_outputs: int
    vocab_size: int | None = None
    n_features: int | None = None
    cell: CellKind = "lstm"

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.vocab_size is None) == (self.n_features is None):
            raise ConfigError("set exactly one of vocab_size (token inputs) and n_features (real inputs)")
        if self.n_outputs < 1:
            raise ConfigError(f"n_outputs must be >= 1, got {self.n_outputs}")


class RecurrentHead(nn.Module):
    """The shared encoder: ``embedding`` (token inputs only), ``recurrent`` and ``dropout``.

    ``cell_options`` go to the recurrent layer (``nonlinearity`` for Elman, ``peepholes`` for
    the LSTM). Subclasses add a head.
    """

    def __init__(self, config: RecurrentHeadConfig, **cell_options: Any):
        super().__init__()
        self.config = config
        width = config.d_model
        self.embedding = nn.Embedding(config.vocab_size, width) if config.vocab_size else None
        self.dropout = nn.Dropout(config.dropout)
        self.recurrent = Recurrent(config.cell, width if self.embedding is not None else config.n_features, width,
                                   config.n_layers, dropout=config.dropout,
                                   bidirectional=config.bidirectional, **cell_options)
        self.output_size = width * self.recurrent.directions

    @property
    def encoder(self) -> RecurrentHead:
        """This module, whose ``embedding`` and ``recurrent`` are the encoder (the encoder once
        was a submodule: ``model.encoder.recurrent`` still reads ``model.recurrent``)."""
        return self

    def encode(self, inputs: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, T) ids or (B, T, F) features and a (B, T) mask -> (B, T, H x directions) states,
        zero at padding."""
        x = self.dropout(self.embedding(inputs)) if self.embedding is not None else inputs
        if mask is None:
            states, _ = self.recurrent(x)
        elif self.recurrent.directions == 1:
            # One direction is causal: padding after a sequence never reaches its real positions,
            # so the stack runs unpacked (packed sequences are several times slower on the CPU).
            states = self.recurrent(x)[0] * mask[..., None]
        else:
            states, _ = self.recurrent(x, lengths=mask.sum(dim=1))      # the backward pass starts at each end
        return self.dropout(states)


class ManyToOne(RecurrentHead):
    """One output vector per sequence: classification (``loss``/``predict``) or regression.

    With ``"last"`` pooling a bidirectional encoder's summary is the forward direction's state
    at the last real position and the backward direction's at the first, where each has read
    the whole sequence.
    """

    def __init__(self, config: RecurrentHeadConfig, **cell_options: Any):
        super().__init__(config, **cell_options)
        self.pooling = Pooling(config.pooling, self.output_size)
        self.head = nn.Linear(self.output_size, config.n_outputs)

    def forward(self, inputs: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, n_outputs) scores."""
        mask = _full_mask(inputs) if mask is None else mask
        return self.head(self.pool(self.encode(inputs, mask), mask))

    def pool(self, states: Tensor, mask: Tensor) -> Tensor:
        """(B, T, H x directions) states -> (B, H x directions) summaries."""
        if self.pooling.kind == "last" and self.recurrent.directions == 2:
            hidden = states.shape[-1] // 2
            forward = self.pooling(states[..., :hidden], mask)                  # (B, H)
            return torch.cat([forward, states[:, 0, hidden:]], dim=-1)          # (B, 2H)
        return self.pooling(states, mask)

    def loss(self, tokens: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean cross-entropy of the (B,) class labels."""
        return F.cross_entropy(self(tokens, mask).float(), labels)

    def predict(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B,) the highest-scoring class of each sequence."""
        return self(tokens, mask).argmax(dim=-1)


class ManyToMany(RecurrentHead):
    """One output vector per position (synchronised), e.g. a BiLSTM tagger's scores."""

    def __init__(self, config: RecurrentHeadConfig, **cell_options: Any):
        super().__init__(config, **cell_options)
        self.head = nn.Linear(self.output_size, config.n_outputs)

    def forward(self, inputs: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, T, n_outputs) scores; zero-state padding positions are scored but masked in loss."""
        return self.head(self.encode(inputs, mask))

    def loss(self, tokens: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean cross-entropy over real positions."""
        mask = _full_mask(tokens) if mask is None else mask
        return F.cross_entropy(self(tokens, mask)[mask].float(), tags[mask])

    def decode(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, T) best tag per position (independently; a CRF decodes jointly)."""
        return self(tokens, mask).argmax(dim=-1)


def _full_mask(inputs: Tensor) -> Tensor:
    return torch.ones(inputs.shape[:2], dtype=torch.bool, device=inputs.device)
