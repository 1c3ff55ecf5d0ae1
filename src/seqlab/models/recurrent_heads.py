"""Recurrent encoders with task heads: many-to-one (classify or regress a whole sequence) and
many-to-many synchronised (one output per position, as a tagger).

Both read token ids (through an embedding) or real-valued features (B, T, F) directly, run a
``seqlab.layers.recurrent.Recurrent`` stack (bidirectional when asked) and apply a linear head:
after pooling for many-to-one, at every position for many-to-many. Padding is described by a
(B, T) mask, true at real positions, with sequences left-aligned.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seqlab.errors import ConfigError
from seqlab.layers.pooling import Pooling, PoolingKind
from seqlab.layers.recurrent import CellKind, Recurrent


@dataclass(frozen=True, kw_only=True)
class RecurrentHeadConfig:
    """A recurrent encoder with a head.

    Attributes:
        n_outputs: classes (or regression targets) per sequence or per position.
        vocab_size: token ids are embedded when set; otherwise inputs are (B, T, n_features).
        n_features: size of real-valued inputs (when ``vocab_size`` is None).
        cell: "elman", "jordan", "lstm" or "gru".
        d_model: embedding and hidden size.
        n_layers, dropout, bidirectional: of the recurrent stack.
        pooling: many-to-one only: "last", "mean" or "attention".
    """

    n_outputs: int
    vocab_size: int | None = None
    n_features: int | None = None
    cell: CellKind = "lstm"
    d_model: int = 128
    n_layers: int = 1
    dropout: float = 0.0
    bidirectional: bool = False
    pooling: PoolingKind = "last"

    def __post_init__(self) -> None:
        if (self.vocab_size is None) == (self.n_features is None):
            raise ConfigError("set exactly one of vocab_size (token inputs) and n_features (real inputs)")
        if self.n_outputs < 1 or self.d_model < 1 or self.n_layers < 1:
            raise ConfigError("n_outputs, d_model and n_layers must be >= 1")


class RecurrentEncoder(nn.Module):
    """Inputs (B, T) ids or (B, T, F) features and a mask -> states (B, T, H x directions)."""

    def __init__(self, config: RecurrentHeadConfig):
        super().__init__()
        self.config = config
        width = config.d_model
        self.embedding = nn.Embedding(config.vocab_size, width) if config.vocab_size else None
        self.recurrent = Recurrent(config.cell, width if self.embedding else config.n_features, width,
                                   config.n_layers, dropout=config.dropout,
                                   bidirectional=config.bidirectional)
        self.output_size = width * (2 if config.bidirectional else 1)

    def forward(self, inputs: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self.embedding(inputs) if self.embedding is not None else inputs
        lengths = None if mask is None else mask.sum(dim=1)
        states, _ = self.recurrent(x, lengths=lengths)
        return states


class ManyToOne(nn.Module):
    """One output vector per sequence: classification (``loss``/``predict``) or regression."""

    def __init__(self, config: RecurrentHeadConfig):
        super().__init__()
        self.config = config
        self.encoder = RecurrentEncoder(config)
        self.pooling = Pooling(config.pooling, self.encoder.output_size)
        self.head = nn.Linear(self.encoder.output_size, config.n_outputs)

    def forward(self, inputs: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, n_outputs) scores."""
        mask = _full_mask(inputs) if mask is None else mask
        return self.head(self.pooling(self.encoder(inputs, mask), mask))

    def loss(self, tokens: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean cross-entropy of the (B,) class labels."""
        return F.cross_entropy(self(tokens, mask), labels)

    def predict(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        return self(tokens, mask).argmax(dim=-1)


class ManyToMany(nn.Module):
    """One output vector per position (synchronised), e.g. a BiLSTM tagger's scores."""

    def __init__(self, config: RecurrentHeadConfig):
        super().__init__()
        self.config = config
        self.encoder = RecurrentEncoder(config)
        self.head = nn.Linear(self.encoder.output_size, config.n_outputs)

    def forward(self, inputs: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, T, n_outputs) scores; zero-state padding positions are scored but masked in loss."""
        return self.head(self.encoder(inputs, mask))

    def loss(self, tokens: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean cross-entropy over real positions."""
        mask = _full_mask(tokens) if mask is None else mask
        return F.cross_entropy(self(tokens, mask)[mask], tags[mask])

    def decode(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, T) best tag per position (independently; a CRF decodes jointly)."""
        return self(tokens, mask).argmax(dim=-1)


def _full_mask(inputs: Tensor) -> Tensor:
    return torch.ones(inputs.shape[:2], dtype=torch.bool, device=inputs.device)

