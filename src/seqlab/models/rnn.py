"""Recurrent language models.

The LSTM (Hochreiter and Schmidhuber 1997, with the forget gate of Gers et al. 2000) runs on
torch's fused ``nn.LSTM``. Its recurrent view is the LSTM itself: the state is ``(h, c)`` and
one step is the same cell applied to a length-one sequence, so both views share every weight
and every kernel.

Shapes: B batch, T time, D ``d_model``, L ``n_layers``, V ``vocab_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqlab.contracts import CausalLM
from seqlab.errors import ConfigError
from seqlab.registry import register


@dataclass(frozen=True, kw_only=True)
class LSTMConfig:
    """LSTM language model.

    Attributes:
        vocab_size: number of token ids.
        d_model: embedding and hidden size.
        n_layers: stacked LSTM layers.
        dropout: dropout on the embeddings, between layers and before the output layer (0 by
            default: short CPU runs underfit; raise it for long runs on small corpora).
        tie_weights: share the embedding matrix with the output layer (Press and Wolf 2017).
    """

    vocab_size: int
    d_model: int = 256
    n_layers: int = 2
    dropout: float = 0.0
    tie_weights: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"LSTMConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LSTMConfig.dropout must be in [0, 1), got {self.dropout}")


@register("lstm", task="lm", config=LSTMConfig)
class LSTMLanguageModel(CausalLM):
    """LSTM language model on torch's fused nn.LSTM."""

    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            config.d_model, config.d_model, config.n_layers, batch_first=True,
            dropout=config.dropout if config.n_layers > 1 else 0.0,
        )
        self.head = nn.Linear(config.d_model, config.vocab_size)
        if config.tie_weights:
            self.head.weight = self.embedding.weight
        self._init_forget_bias()

    def _init_forget_bias(self) -> None:
        # Forget-gate bias 1 (Jozefowicz et al. 2015): the cell remembers by default at the start.
        # torch orders the gates (input, forget, cell, output); the bias is b_ih + b_hh.
        hidden = self.config.d_model
        with torch.no_grad():
            for name, bias in self.lstm.named_parameters():
                if name.startswith("bias_ih"):
                    bias[hidden:2 * hidden].fill_(1.0)
                elif name.startswith("bias_hh"):
                    bias[hidden:2 * hidden].zero_()

    def forward(self, tokens: Tensor) -> Tensor:
        logits, _ = self._run(tokens, self.init_state(tokens.shape[0]))
        return logits

    def init_state(self, batch_size: int) -> tuple[Tensor, Tensor]:
        weight = self.embedding.weight
        shape = (self.config.n_layers, batch_size, self.config.d_model)
        return weight.new_zeros(shape), weight.new_zeros(shape)       # (h, c): (L, B, D) each

    def step(self, token: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        logits, state = self._run(token[:, None], state)             # (B, 1, V)
        return logits[:, 0], state

    def prefill(self, tokens: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        logits, state = self._run(tokens, self.init_state(tokens.shape[0]))
        return logits[:, -1], state

    def _run(self, tokens: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Tokens (B, T) from ``state`` -> logits (B, T, V) and the state after the last token."""
        embedded = self.dropout(self.embedding(tokens))               # (B, T, D)
        device = embedded.device.type
        if torch.is_autocast_enabled(device):
            # Hand the fused LSTM inputs and state already in the autocast dtype: on CPU, oneDNN
            # finds no bf16 LSTM kernel for the fp32 inputs that autocast would cast itself.
            dtype = torch.get_autocast_dtype(device)
            embedded, state = embedded.to(dtype), tuple(s.to(dtype) for s in state)
        hidden, state = self.lstm(embedded, state)                    # (B, T, D)
        return self.head(self.dropout(hidden)), state
