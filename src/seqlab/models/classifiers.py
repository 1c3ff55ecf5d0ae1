"""Recurrent sequence classifiers: Elman, LSTM and GRU encoders with a pooled linear head.

    e_t = Embed(x_t),   h_t = Recurrent(e_t, h_{t-1}) (and backwards, when bidirectional),
    s = Pool(h_1 .. h_T),   logits = W s + b

``seqlab.models.recurrent_heads.ManyToOne`` under a config of the ``classify`` task's sizes
(``vocab_size``, ``n_classes``). A sequence's logits do not depend on the padding of its batch
(see that module). ``embedding`` and ``recurrent`` are built and
named exactly as in the recurrent language models (``seqlab.models.rnn``): a language model's
weights load into a classifier of the same cell, ``d_model`` and ``n_layers`` (the forward
direction, when the classifier is bidirectional), and only the pooling and the head start
fresh: ``seqlab train lstm --task classify --init-from LM_RUN``.

Shapes: B batch, T time, D ``d_model``, C ``n_classes``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from seqlab.errors import ConfigError
from seqlab.layers.recurrent import CellKind
from seqlab.models.recurrent_heads import ManyToOne, RecurrentHeadConfig, RecurrentStackConfig
from seqlab.registry import register


@dataclass(frozen=True, kw_only=True)
class RecurrentClassifierConfig(RecurrentStackConfig):
    """A recurrent sequence classifier (the stack's fields: ``RecurrentStackConfig``).

    Attributes:
        vocab_size: number of token ids (from the task's tokenizer).
        n_classes: number of labels (from the task's training data).
    """

    vocab_size: int
    n_classes: int

    def __post_init__(self) -> None:
        super().__post_init__()
        for field in ("vocab_size", "n_classes"):
            if getattr(self, field) < 1:
                raise ConfigError(f"{type(self).__name__}.{field} must be >= 1, got {getattr(self, field)}")

    def cell_options(self) -> dict[str, Any]:
        """Options of the recurrent cell beyond its size."""
        return {}


@dataclass(frozen=True, kw_only=True)
class ElmanClassifierConfig(RecurrentClassifierConfig):
    """An Elman RNN classifier.

    Attributes:
        nonlinearity: tanh or relu.
    """

    nonlinearity: Literal["tanh", "relu"] = "tanh"

    def cell_options(self) -> dict[str, Any]:
        return {"nonlinearity": self.nonlinearity}


@dataclass(frozen=True, kw_only=True)
class LSTMClassifierConfig(RecurrentClassifierConfig):
    """An LSTM classifier.

    Attributes:
        peepholes: add Gers and Schmidhuber's peephole connections (run on seqlab's own cell,
            since torch's fused LSTM has none).
    """

    peepholes: bool = False

    def cell_options(self) -> dict[str, Any]:
        return {"peepholes": self.peepholes}


@dataclass(frozen=True, kw_only=True)
class GRUClassifierConfig(RecurrentClassifierConfig):
    """A GRU classifier."""


class RecurrentClassifier(ManyToOne):
    """A ``ManyToOne`` built from a classifier config; subclasses name the cell.

    ``forward(tokens, mask) -> (B, C)`` logits, ``loss(tokens, labels, mask)`` (mean
    cross-entropy) and ``predict(tokens, mask) -> (B,)`` labels: the ``Classifier`` contract.
    """

    cell: ClassVar[CellKind]

    def __init__(self, config: RecurrentClassifierConfig):
        stack = {field.name: getattr(config, field.name) for field in dataclasses.fields(RecurrentStackConfig)}
        super().__init__(RecurrentHeadConfig(n_outputs=config.n_classes, vocab_size=config.vocab_size, cell=self.cell,
                                             **stack), **config.cell_options())
        self.config = config            # the registered config, which checkpoints record


@register("elman", task="classify", config=ElmanClassifierConfig, in_default_compare=False)
class ElmanClassifier(RecurrentClassifier):
    """Elman RNN sequence classifier (Elman 1990) on torch's fused nn.RNN."""

    cell = "elman"


@register("lstm", task="classify", config=LSTMClassifierConfig)
class LSTMClassifier(RecurrentClassifier):
    """LSTM sequence classifier on torch's fused nn.LSTM (forget-gate bias 1)."""

    cell = "lstm"


@register("gru", task="classify", config=GRUClassifierConfig)
class GRUClassifier(RecurrentClassifier):
    """GRU sequence classifier (Cho et al. 2014) on torch's fused nn.GRU."""

    cell = "gru"
