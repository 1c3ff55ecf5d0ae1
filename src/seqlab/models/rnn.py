"""Recurrent language models: Elman, Jordan, LSTM and GRU.

    e_t = Embed(x_t),   h_t = Recurrent(e_t, h_{t-1}),   logits_t = W_out h_t + b

over the layers of ``seqlab.layers.recurrent``: torch's fused kernels for Elman, LSTM and GRU,
our unrolled cells for Jordan and peephole LSTMs. The recurrent view is the recurrence itself:
the state is the layer's (h) or (h, c), and a step is the same layer over a length-one window,
so both views share every weight and kernel. The output layer can share the embedding matrix
(Press and Wolf 2017).

Shapes: B batch, T time, D ``d_model``, L ``n_layers``, V ``vocab_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from seqlab.contracts import CausalLM
from seqlab.errors import ConfigError
from seqlab.layers.recurrent import Recurrent, State
from seqlab.registry import register


@dataclass(frozen=True, kw_only=True)
class RecurrentLMConfig:
    """A recurrent language model.

    Attributes:
        vocab_size: number of token ids.
        d_model: embedding and hidden size.
        n_layers: stacked recurrent layers.
        dropout: dropout on the embeddings, between layers and before the output layer (0 by
            default: short CPU runs underfit; raise it for long runs on small corpora).
        tie_weights: share the embedding matrix with the output layer.
    """

    vocab_size: int
    d_model: int = 256
    n_layers: int = 2
    dropout: float = 0.0
    tie_weights: bool = True

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field in ("vocab_size", "d_model", "n_layers"):
            if getattr(self, field) < 1:
                raise ConfigError(f"{name}.{field} must be >= 1, got {getattr(self, field)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{name}.dropout must be in [0, 1), got {self.dropout}")

    def cell_options(self) -> dict[str, Any]:
        """Options of the recurrent cell beyond its size."""
        return {}


@dataclass(frozen=True, kw_only=True)
class ElmanConfig(RecurrentLMConfig):
    """Elman RNN language model.

    Attributes:
        nonlinearity: the hidden state's activation, tanh or relu.
    """

    nonlinearity: Literal["tanh", "relu"] = "tanh"

    def cell_options(self) -> dict[str, Any]:
        return {"nonlinearity": self.nonlinearity}


@dataclass(frozen=True, kw_only=True)
class JordanConfig(RecurrentLMConfig):
    """Jordan network language model (its output, not its hidden state, is fed back)."""


@dataclass(frozen=True, kw_only=True)
class LSTMConfig(RecurrentLMConfig):
    """LSTM language model.

    Attributes:
        peepholes: add Gers and Schmidhuber's peephole connections (run on seqlab's cell, since
            torch's fused LSTM has none).
    """

    peepholes: bool = False

    def cell_options(self) -> dict[str, Any]:
        return {"peepholes": self.peepholes}


@dataclass(frozen=True, kw_only=True)
class GRUConfig(RecurrentLMConfig):
    """GRU language model."""


class RecurrentLanguageModel(CausalLM):
    """Embedding, a recurrent stack and an output layer; subclasses name the cell."""

    cell: ClassVar[str]

    def __init__(self, config: RecurrentLMConfig):
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.recurrent = Recurrent(self.cell, config.d_model, config.d_model, config.n_layers,
                                   dropout=config.dropout, **config.cell_options())
        self.head = nn.Linear(config.d_model, config.vocab_size)
        if config.tie_weights:
            self.head.weight = self.embedding.weight

    def init_state(self, batch_size: int) -> State:
        return self.recurrent.init_state(batch_size)                 # (L, B, D), or (h, c)

    def forward_from(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        embedded = self.dropout(self.embedding(tokens))               # (B, T, D)
        device = embedded.device.type
        if torch.is_autocast_enabled(device):
            # Hand the fused kernels inputs and state already in the autocast dtype: on CPU,
            # oneDNN finds no bf16 LSTM kernel for the fp32 inputs autocast would cast itself.
            dtype = torch.get_autocast_dtype(device)
            embedded = embedded.to(dtype)
            state = tuple(s.to(dtype) for s in state) if isinstance(state, tuple) else state.to(dtype)
        hidden, state = self.recurrent(embedded, state)               # (B, T, D)
        return self.head(self.dropout(hidden)), state


# A bare `seqlab compare` runs one model per family in its two minutes (the LSTM for the
# recurrent one); Elman, Jordan and GRU run when named: `seqlab compare --models elman,lstm,gru`.
@register("elman", task="lm", config=ElmanConfig, in_default_compare=False)
class ElmanLanguageModel(RecurrentLanguageModel):
    """Elman RNN language model (Elman 1990) on torch's fused nn.RNN."""

    cell = "elman"


# Unrolled in Python: torch has no fused Jordan kernel.
@register("jordan", task="lm", config=JordanConfig, in_default_compare=False)
class JordanLanguageModel(RecurrentLanguageModel):
    """Jordan network language model (Jordan 1986): the previous output is fed back."""

    cell = "jordan"


@register("lstm", task="lm", config=LSTMConfig)
class LSTMLanguageModel(RecurrentLanguageModel):
    """LSTM language model on torch's fused nn.LSTM (forget-gate bias 1)."""

    cell = "lstm"


@register("gru", task="lm", config=GRUConfig, in_default_compare=False)
class GRULanguageModel(RecurrentLanguageModel):
    """GRU language model (Cho et al. 2014) on torch's fused nn.GRU."""

    cell = "gru"
