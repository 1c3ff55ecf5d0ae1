"""Recurrent encoder-decoders: Sutskever, Cho, and the attention decoders of Bahdanau and Luong.

Each reads a source x_1 .. x_S into encoder states h_1 .. h_S and writes a target y_1 .. y_T
one token at a time, p(y_t | y_<t, x), from a decoder state s_t:

- ``seq2seq`` (Sutskever, Vinyals and Le 2014): a deep LSTM reads the source (reversed, as in
  the paper, by default); a deep LSTM decoder starts from its final state (h, c) and reads
  y_<t; p(y_t) = softmax(W s_t). All the source reaches the decoder through one state.
- ``seq2seq-cho`` (Cho et al. 2014, sec. 2.2): a GRU encoder's final state gives a summary
  c = tanh(V h_S), the decoder starts from s_0 = tanh(V' c), and c is fed to every decoder step,
  s_t = GRU([e(y_{t-1}); c], s_{t-1}), and to the output, p(y_t) = softmax(G tanh(O [s_t;
  e(y_{t-1}); c])) (the paper's maxout output layer is a tanh layer here).
- ``seq2seq-bahdanau`` (Bahdanau, Cho and Bengio 2014): a bidirectional GRU encoder; at each
  step additive attention from the previous decoder state gives the context c_t = sum_s a_ts h_s,
  s_t = GRU([e(y_{t-1}); c_t], s_{t-1}), p(y_t) = softmax(G tanh(O [s_t; e(y_{t-1}); c_t]));
  s_0 = tanh(W h_S) from each layer's two final encoder states.
- ``seq2seq-luong`` (Luong, Pham and Manning 2015): a deep LSTM encoder and decoder; global
  attention (dot, general or concat score) from the *current* top decoder state h_t gives c_t,
  the attentional state h~_t = tanh(W_c [c_t; h_t]) gives p(y_t) = softmax(W_s h~_t), and with
  input feeding h~_{t-1} is fed to the next step beside e(y_{t-1}).

The decoder contract (``seqlab.contracts.EncoderDecoder``): ``encode``, ``init_state(batch,
memory)`` with the memory inside the state, ``step``, ``select``. The state is a dict whose
recurrent ``hidden`` is layer-major (L, B, H) (a pair for the LSTM) and everything else batch
first; a step of an attention model leaves its weights over the source in ``state["attention"]``.
``forward`` (teacher forcing) runs the fused decoder over the whole target where the decoder's
input does not depend on its own output (Sutskever, Cho) and unrolls ``step`` otherwise.

Target ids 0, 1, 2 are PAD, BOS, EOS; source id 0 is padding. Dropout applies to the embeddings
and before the output layer.

Shapes: B batch, S source length, T target length, D ``d_model``, L ``n_layers``, V target vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from seqlab.contracts import EncoderDecoder
from seqlab.errors import ConfigError
from seqlab.layers.recurrent import CellKind, Recurrent, reverse_padded
from seqlab.layers.rnn_attention import RecurrentAttention
from seqlab.registry import register


@dataclass(frozen=True, kw_only=True)
class Seq2SeqConfig:
    """A recurrent encoder-decoder.

    Attributes:
        src_vocab_size: source token ids, padding 0 included (from the task).
        tgt_vocab_size: target token ids, PAD, BOS and EOS included (from the task).
        d_model: embedding and hidden width (each direction's, for a bidirectional encoder).
        n_layers: stacked recurrent layers of the encoder and of the decoder.
        dropout: on the embeddings, between recurrent layers and before the output layer.
    """

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 128
    n_layers: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field in ("src_vocab_size", "tgt_vocab_size", "d_model", "n_layers"):
            if getattr(self, field) < 1:
                raise ConfigError(f"{name}.{field} must be >= 1, got {getattr(self, field)}")
        if self.tgt_vocab_size < 4:
            raise ConfigError(f"{name}.tgt_vocab_size must hold PAD, BOS, EOS and a token (>= 4), "
                              f"got {self.tgt_vocab_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{name}.dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True, kw_only=True)
class SutskeverConfig(Seq2SeqConfig):
    """Sutskever et al.'s deep LSTM encoder-decoder.

    Attributes:
        reverse_source: read each source backwards, so its first words are the encoder's last
            (the paper's trick: short dependencies between the starts of source and target).
    """

    n_layers: int = 2
    reverse_source: bool = True


@dataclass(frozen=True, kw_only=True)
class ChoConfig(Seq2SeqConfig):
    """Cho et al.'s GRU encoder-decoder with the summary fed to every step."""


@dataclass(frozen=True, kw_only=True)
class BahdanauConfig(Seq2SeqConfig):
    """Bahdanau et al.'s bidirectional GRU encoder and additive-attention decoder."""


@dataclass(frozen=True, kw_only=True)
class LuongConfig(Seq2SeqConfig):
    """Luong et al.'s deep LSTM with global attention.

    Attributes:
        score: dot, general or concat (Luong et al. eq. 8).
        input_feeding: feed the previous attentional state h~_{t-1} to each decoder step.
    """

    n_layers: int = 2
    score: Literal["dot", "general", "concat"] = "general"
    input_feeding: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.score not in ("dot", "general", "concat"):
            raise ConfigError(f"LuongConfig.score must be dot, general or concat, got {self.score!r}")


class RecurrentEncoderDecoder(EncoderDecoder):
    """The parts every model here shares: embeddings, the encoder, and the decoder's stack.

    Subclasses set ``cell``, build their output layers and implement ``init_state`` and
    ``step``; ``encode`` returns {"states" (B, S, D x directions), "final", "mask"}.
    """

    cell: ClassVar[CellKind]
    bidirectional: ClassVar[bool] = False
    layer_major = ("hidden",)

    def __init__(self, config: Seq2SeqConfig, decoder_extra_input: int = 0):
        """``decoder_extra_input``: what each decoder step reads beside e(y_{t-1}), in multiples
        of ``d_model`` (a context vector, an attentional state)."""
        super().__init__()
        self.config = config
        self.src_vocab_size, self.tgt_vocab_size = config.src_vocab_size, config.tgt_vocab_size
        width, layers = config.d_model, config.n_layers
        self.source_embedding = nn.Embedding(config.src_vocab_size, width, padding_idx=0)
        self.target_embedding = nn.Embedding(config.tgt_vocab_size, width, padding_idx=0)
        self.encoder = Recurrent(self.cell, width, width, layers, config.dropout, bidirectional=self.bidirectional)
        self.decoder = Recurrent(self.cell, width * (1 + decoder_extra_input), width, layers, config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def encode(self, src: Tensor, src_mask: Tensor, reverse: bool = False) -> dict[str, Tensor]:
        lengths = src_mask.sum(dim=1)
        embedded = self.dropout(self.source_embedding(src))                    # (B, S, D)
        if reverse:
            embedded = reverse_padded(embedded, lengths)
        states, final = self.encoder(embedded, lengths=lengths)               # (B, S, D x dirs)
        return {"states": states, "final": final, "mask": src_mask}

    def embed_target(self, token: Tensor) -> Tensor:
        return self.dropout(self.target_embedding(token))

    def attention_weights(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor | None:
        """(B, T, S) weights of every decoder step, from unrolling ``step``; None for a model
        whose state holds no ``attention``."""
        state = self.init_state(src.shape[0], self.encode(src, src_mask))
        if "attention" not in state:
            return None
        weights = []
        for t in range(tgt_in.shape[1]):
            _, state = self.step(tgt_in[:, t], state)
            weights.append(state["attention"])
        return torch.stack(weights, dim=1)


@register("seq2seq", task="seq2seq", config=SutskeverConfig)
class Sutskever(RecurrentEncoderDecoder):
    """Deep LSTM encoder-decoder, source reversed (Sutskever, Vinyals and Le 2014)."""

    cell = "lstm"

    def __init__(self, config: SutskeverConfig):
        super().__init__(config)
        self.output = nn.Linear(config.d_model, config.tgt_vocab_size)

    def encode(self, src: Tensor, src_mask: Tensor, reverse: bool = False) -> dict[str, Tensor]:
        return super().encode(src, src_mask, reverse=self.config.reverse_source)

    def init_state(self, batch_size: int, memory: dict[str, Tensor]) -> dict[str, Any]:
        return {"hidden": memory["final"]}

    def step(self, token: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        output, hidden = self.decoder(self.embed_target(token)[:, None], state["hidden"])   # (B, 1, D)
        return self.output(self.dropout(output[:, 0])), {"hidden": hidden}

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        outputs, _ = self.decoder(self.embed_target(tgt_in), self.encode(src, src_mask)["final"])  # (B, T, D)
        return self.output(self.dropout(outputs))


@register("seq2seq-cho", task="seq2seq", config=ChoConfig)
class Cho(RecurrentEncoderDecoder):
    """GRU encoder-decoder with the source summary at every step (Cho et al. 2014)."""

    cell = "gru"

    def __init__(self, config: ChoConfig):
        super().__init__(config, decoder_extra_input=1)            # the summary c
        width = config.d_model
        self.summary = nn.Linear(width, width)                      # c = tanh(V h_S)
        self.bridge = nn.Linear(width, width * config.n_layers)     # s_0 = tanh(V' c), every layer
        self.deep_output = nn.Linear(3 * width, width)              # O [s_t; e(y_{t-1}); c]
        self.output = nn.Linear(width, config.tgt_vocab_size)

    def init_state(self, batch_size: int, memory: dict[str, Tensor]) -> dict[str, Any]:
        context = torch.tanh(self.summary(memory["final"][-1]))                        # (B, D)
        hidden = torch.tanh(self.bridge(context)).view(batch_size, self.config.n_layers, -1)
        return {"hidden": hidden.transpose(0, 1).contiguous(), "context": context}

    def _logits(self, decoder_output: Tensor, embedded: Tensor, context: Tensor) -> Tensor:
        features = torch.tanh(self.deep_output(torch.cat([decoder_output, embedded, context], dim=-1)))
        return self.output(self.dropout(features))

    def step(self, token: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        embedded, context = self.embed_target(token), state["context"]
        output, hidden = self.decoder(torch.cat([embedded, context], dim=-1)[:, None], state["hidden"])
        return self._logits(output[:, 0], embedded, context), {"hidden": hidden, "context": context}

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        state = self.init_state(src.shape[0], self.encode(src, src_mask))
        embedded = self.embed_target(tgt_in)                                             # (B, T, D)
        context = state["context"][:, None].expand_as(embedded)                          # (B, T, D)
        outputs, _ = self.decoder(torch.cat([embedded, context], dim=-1), state["hidden"])
        return self._logits(outputs, embedded, context)


@register("seq2seq-bahdanau", task="seq2seq", config=BahdanauConfig)
class Bahdanau(RecurrentEncoderDecoder):
    """Bidirectional GRU encoder, additive attention from the previous decoder state
    (Bahdanau, Cho and Bengio 2014)."""

    cell = "gru"
    bidirectional = True

    def __init__(self, config: BahdanauConfig):
        super().__init__(config, decoder_extra_input=2)            # the context c_t is 2D wide
        width = config.d_model
        self.attention = RecurrentAttention("additive", width, 2 * width, width)
        self.bridge = nn.Linear(2 * width, width)                   # s_0 = tanh(W [h_fwd; h_bwd])
        self.deep_output = nn.Linear(4 * width, width)              # O [s_t; e(y_{t-1}); c_t]
        self.output = nn.Linear(width, config.tgt_vocab_size)

    def init_state(self, batch_size: int, memory: dict[str, Tensor]) -> dict[str, Any]:
        final = memory["final"].view(self.config.n_layers, 2, batch_size, -1)           # (L, 2, B, D)
        hidden = torch.tanh(self.bridge(torch.cat([final[:, 0], final[:, 1]], dim=-1)))  # (L, B, D)
        states = memory["states"]
        return {"hidden": hidden, "states": states, "keys": self.attention.keys(states), "mask": memory["mask"],
                "attention": states.new_zeros(states.shape[:2])}

    def step(self, token: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        embedded = self.embed_target(token)                                              # (B, D)
        context, weights = self.attention(state["hidden"][-1], state["keys"], state["states"], state["mask"])
        output, hidden = self.decoder(torch.cat([embedded, context], dim=-1)[:, None], state["hidden"])
        features = torch.tanh(self.deep_output(torch.cat([output[:, 0], embedded, context], dim=-1)))
        return self.output(self.dropout(features)), {**state, "hidden": hidden, "attention": weights}


@register("seq2seq-luong", task="seq2seq", config=LuongConfig)
class Luong(RecurrentEncoderDecoder):
    """Deep LSTM with global attention from the current decoder state and input feeding
    (Luong, Pham and Manning 2015)."""

    cell = "lstm"

    def __init__(self, config: LuongConfig):
        super().__init__(config, decoder_extra_input=1 if config.input_feeding else 0)   # h~_{t-1}
        width = config.d_model
        self.attention = RecurrentAttention(config.score, width, width, width)
        self.combine = nn.Linear(2 * width, width, bias=False)      # h~_t = tanh(W_c [c_t; h_t])
        self.output = nn.Linear(width, config.tgt_vocab_size)

    def init_state(self, batch_size: int, memory: dict[str, Tensor]) -> dict[str, Any]:
        states = memory["states"]
        return {"hidden": memory["final"], "states": states, "keys": self.attention.keys(states),
                "mask": memory["mask"], "feed": states.new_zeros(batch_size, self.config.d_model),
                "attention": states.new_zeros(states.shape[:2])}

    def step(self, token: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        embedded = self.embed_target(token)                                              # (B, D)
        inputs = torch.cat([embedded, state["feed"]], dim=-1) if self.config.input_feeding else embedded
        output, hidden = self.decoder(inputs[:, None], state["hidden"])
        top = output[:, 0]                                                               # h_t (B, D)
        context, weights = self.attention(top, state["keys"], state["states"], state["mask"])
        attentional = torch.tanh(self.combine(torch.cat([context, top], dim=-1)))        # h~_t (B, D)
        return self.output(self.dropout(attentional)), {**state, "hidden": hidden, "feed": attentional,
                                                         "attention": weights}
