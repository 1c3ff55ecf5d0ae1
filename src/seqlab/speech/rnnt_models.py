"""A streaming RNN transducer: a causal Conformer encoder, an LSTM prediction network and a
joint network (Graves 2012; the Conformer transducer of Gulati et al. 2020, made causal).

    f_t = W_f enc(x)_t,    g_u = W_g LSTM(embed(y_0 = BLANK), embed(y_1), ..., embed(y_u))_u
    p(k | t, u) = softmax(W_o tanh(f_t + g_u) + b_o)[k]

Training minimises ``-log p(y | x)`` summed over the (t, u) lattice
(``seqlab.speech.transducer_loss.rnnt_nll_from_joint``, which evaluates the joint a slice of
``time_chunk`` frames at a time, so the (B, T, U+1, V) logits never exist at once). Decoding is
greedy or the time-synchronous beam search (``seqlab.speech.transducer_decode``).

Everything the model does is causal: the features are normalised by the running statistics of
the frames so far, the stem pads time on the left, attention looks back only and the depthwise
convolutions are causal. So it can transcribe while the recording arrives:
``start_stream()``, then ``stream(frames, state)`` for each chunk of frames, returns the new
symbols as soon as the frames that decide them are in, and the symbols of all chunks equal
``transcribe`` of the whole recording (greedy decoding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.registry import register
from seqlab.speech.encoders import ConformerConfig, EncoderStream
from seqlab.speech.frontend import FrontEnd, Normalisation, RunningNormaliser
from seqlab.speech.recogniser import BLANK, Recogniser, refuse_fusion
from seqlab.speech.transducer_decode import (GreedyDecoding, greedy_frames, greedy_start, transducer_beam_search,
                                             transducer_greedy)
from seqlab.speech.transducer_loss import rnnt_nll_from_joint


@dataclass(frozen=True, kw_only=True)
class RNNTConformerConfig(ConformerConfig):
    """A causal Conformer transducer (the encoder's fields are ``ConformerConfig``'s).

    Attributes:
        normalisation: running by default: what a streaming model can compute.
        predictor_size: the prediction network's embedding and LSTM width.
        joint_size: the joint network's hidden width.
        time_chunk: frames per slice of the joint in training (memory; none: all at once).
        max_symbols_per_frame: the most symbols decoding emits at one frame.
    """

    normalisation: Normalisation = "running"
    predictor_size: int = 96
    joint_size: int = 96
    time_chunk: int | None = 16
    max_symbols_per_frame: int = 3


@dataclass
class TranscriberStream:
    """A recording being transcribed: the normaliser's, the encoder's and the decoder's states."""

    normaliser: RunningNormaliser
    encoder: EncoderStream
    decoding: GreedyDecoding


@register("rnnt-conformer", task="asr", config=RNNTConformerConfig)
class RNNTConformer(Recogniser):
    """Causal Conformer RNN transducer; streams (Graves 2012; Gulati et al. 2020)."""

    train_defaults = {"lr": 2e-3}

    def __init__(self, config: RNNTConformerConfig):
        super().__init__()
        self.config, self.vocab_size = config, config.vocab_size
        self.frontend = FrontEnd(config)
        self.encoder = config.conformer_encoder(causal=True)
        self.encoder_projection = nn.Linear(config.d_model, config.joint_size)
        self.embedding = nn.Embedding(config.vocab_size, config.predictor_size)
        self.predictor = nn.LSTM(config.predictor_size, config.predictor_size, batch_first=True)
        self.predictor_dropout = nn.Dropout(config.dropout)
        self.predictor_projection = nn.Linear(config.predictor_size, config.joint_size)
        self.output = nn.Linear(config.joint_size, config.vocab_size)

    # ---- the three networks ----------------------------------------------------------------

    def encode(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T', J) projected encoder vectors ``f`` and (B,) their lengths."""
        encoded, encoded_lengths = self.encoder(self.frontend(features, lengths), lengths)
        return self.encoder_projection(encoded), encoded_lengths

    def predictor_init(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """The LSTM's zero (h, c), each (1, B, P)."""
        zeros = self.output.weight.new_zeros(1, batch_size, self.config.predictor_size)
        return zeros, zeros.clone()

    def predictor_step(self, tokens: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Read one symbol per row (BLANK first): (B,) ids -> (B, J) projected ``g``, new state."""
        out, state = self.predictor(self.embedding(tokens)[:, None], state)
        return self.predictor_projection(self.predictor_dropout(out[:, 0])), state

    def joint(self, encoder_out: Tensor, predictor_out: Tensor) -> Tensor:
        """Logits ``W_o tanh(f + g) + b_o`` of projected vectors (any broadcastable shapes)."""
        return self.output(torch.tanh(encoder_out + predictor_out))

    # ---- the recogniser --------------------------------------------------------------------

    def nll(self, features: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
        encoded, encoded_lengths = self.encode(features, lengths)
        start = targets.new_full((targets.shape[0], 1), BLANK)
        read, _ = self.predictor(self.embedding(torch.cat([start, targets], dim=1)))      # (B, U+1, P)
        predicted = self.predictor_projection(self.predictor_dropout(read))
        return rnnt_nll_from_joint(encoded, predicted, self.joint, encoded_lengths, targets, target_lengths,
                                   time_chunk=self.config.time_chunk)

    @torch.no_grad()
    def transcribe(self, features: Tensor, lengths: Tensor, *, beam_size: int = 1, scorer: Any = None,
                   lm_weight: float = 0.0, length_bonus: float = 0.0) -> list[list[int]]:
        """Greedy (``beam_size`` 1) or time-synchronous beam search."""
        refuse_fusion(self.registry_name, scorer, lm_weight, length_bonus)   # the prediction network is its LM
        encoded, encoded_lengths = self.encode(features, lengths)
        symbols = self.config.max_symbols_per_frame
        if beam_size == 1:
            return transducer_greedy(self, encoded, encoded_lengths, max_symbols_per_frame=symbols)
        return [transducer_beam_search(self, row[:length], beam_size=beam_size, max_symbols_per_frame=symbols)[0][0]
                for row, length in zip(encoded, encoded_lengths.tolist())]

    # ---- streaming -------------------------------------------------------------------------

    def start_stream(self) -> TranscriberStream:
        """The state before the first frame of one recording (eval mode)."""
        device = self.output.weight.device
        return TranscriberStream(RunningNormaliser(), self.encoder.init_stream(1), greedy_start(self, 1, device))

    @torch.no_grad()
    def stream(self, frames: Tensor, state: TranscriberStream) -> tuple[list[int], TranscriberStream]:
        """The symbols decided by the next (t, F) log-mel frames of the recording, and the new
        state; the symbols of all chunks, joined, are ``transcribe`` of the whole (greedy)."""
        if self.config.normalisation != "running":
            raise ConfigError("streaming needs normalisation=running: a whole-utterance mean is not known "
                              "until the recording ends")
        if self.training:
            raise ConfigError("stream in eval mode (model.eval()): SpecAugment and dropout would change the output")
        normalised = state.normaliser.push(frames)[None].to(self.output.weight.dtype)         # (1, t, F)
        encoded, state.encoder = self.encoder.forward_chunk(normalised, state.encoder)
        encoded = self.encoder_projection(encoded)
        before = len(state.decoding.hypotheses[0])
        state.decoding = greedy_frames(self, encoded, torch.tensor([encoded.shape[1]], device=encoded.device),
                                       state.decoding, max_symbols_per_frame=self.config.max_symbols_per_frame)
        return state.decoding.hypotheses[0][before:], state
