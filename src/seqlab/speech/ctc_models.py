"""CTC recognisers: an encoder, a linear layer to the output ids, and CTC (Graves et al. 2006).

    p(y | x) = sum over frame labellings a that collapse to y of prod_t softmax(W h_t + b)[a_t]

with ``h = encoder(frontend(x))`` and the blank at id 0. CTC never writes BOS and EOS (ids 1
and 2): the output layer has units for the blank and the characters only, and the decoders see
log-probability -inf for the two. Training minimises ``-log p(y | x)``
(``seqlab.speech.ctc.ctc_nll``); decoding is the best path (greedy) or the prefix beam search,
which can fuse a language model (``seqlab.speech.ctc_beam``). Two encoders:

- ``ctc-bilstm``: frames stacked by ``subsample`` (4), then a bidirectional LSTM (Graves et al.
  2013);
- ``ctc-conformer``: a convolutional stem that subsamples time by 4, then Conformer blocks
  (Gulati et al. 2020).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from seqlab.errors import DataError
from seqlab.registry import register
from seqlab.speech.ctc import ctc_align, ctc_greedy, ctc_nll, word_timestamps
from seqlab.speech.ctc_beam import ctc_prefix_beam_search_batch
from seqlab.speech.encoders import BiLSTMEncoder, ConformerConfig
from seqlab.speech.frontend import FrontEnd, SpeechConfig
from seqlab.speech.recogniser import BOS, FIRST_SYMBOL, Recogniser


class CTCRecogniser(Recogniser):
    """An encoder with a CTC output layer; subclasses say which encoder (``make_encoder``)."""

    def __init__(self, config: Any):
        super().__init__()
        self.config, self.vocab_size = config, config.vocab_size
        self.frontend = FrontEnd(config)
        self.encoder = self.make_encoder(config)
        self.output = nn.Linear(self.encoder.output_dim, config.vocab_size - (FIRST_SYMBOL - BOS))

    @abc.abstractmethod
    def make_encoder(self, config: Any) -> nn.Module:
        """The encoder of ``config`` (a ``SpeechEncoder``)."""

    def log_probs(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T', V) per-frame log-probabilities of the output ids and (B,) their lengths."""
        compact, encoded_lengths = self._compact_log_probs(features, lengths)
        reserved = compact.new_full((*compact.shape[:-1], FIRST_SYMBOL - BOS), float("-inf"))
        return torch.cat([compact[..., :1], reserved, compact[..., 1:]], dim=-1), encoded_lengths

    def _compact_log_probs(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T', 1 + C) log-probabilities of the blank and the C characters: the output layer
        has no unit for BOS and EOS, which CTC never writes."""
        encoded, encoded_lengths = self.encoder(self.frontend(features, lengths), lengths)
        return self.output(encoded).float().log_softmax(dim=-1), encoded_lengths

    def nll(self, features: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
        real = torch.arange(targets.shape[1], device=targets.device) < target_lengths[:, None]
        bad = (real & ((targets < FIRST_SYMBOL) | (targets >= self.vocab_size))).nonzero()
        if len(bad):
            row, position = bad[0].tolist()
            raise DataError(f"utterance {row} of the batch: target id {int(targets[row, position])} at position "
                            f"{position} is not a transcript symbol; they are {FIRST_SYMBOL}..{self.vocab_size - 1}")
        compact, encoded_lengths = self._compact_log_probs(features, lengths)
        shifted = torch.where(real, targets - (FIRST_SYMBOL - 1), 0)                      # compact ids
        return ctc_nll(compact, encoded_lengths, shifted, target_lengths)

    @torch.no_grad()
    def transcribe(self, features: Tensor, lengths: Tensor, *, beam_size: int = 1, scorer: Any = None,
                   lm_weight: float = 0.0, length_bonus: float = 0.0) -> list[list[int]]:
        """Greedy when ``beam_size`` is 1 with neither a scorer nor a length bonus; otherwise the
        prefix beam search with the scorer fused at ``lm_weight``."""
        log_probs, encoded_lengths = self.log_probs(features, lengths)
        if beam_size == 1 and scorer is None and length_bonus == 0:
            return ctc_greedy(log_probs, encoded_lengths)
        searched = ctc_prefix_beam_search_batch(log_probs.cpu(), encoded_lengths.cpu(), beam_size=beam_size,
                                                scorer=scorer, lm_weight=lm_weight, length_bonus=length_bonus)
        return [n_best[0][0] if n_best else [] for n_best in searched]   # none: no labelling is possible


    @torch.no_grad()
    def word_timings(self, features: Tensor, lengths: Tensor, transcripts: list[list[int]], separator_id: int,
                     frame_seconds: float) -> list[list[tuple[list[int], float, float]]]:
        """When each word of each transcript is spoken: the forced alignment (Viterbi over the
        CTC chain, ``seqlab.speech.ctc.ctc_align``) of the transcript to the utterance, read as
        ``(word ids, start s, end s)``. An encoder frame lasts ``frame_seconds`` (the input's hop)
        times the utterance's input frames per encoder frame."""
        log_probs, encoded_lengths = self.log_probs(features, lengths)
        timings = []
        for row, transcript in enumerate(transcripts):
            if not transcript:
                timings.append([])
                continue
            length = int(encoded_lengths[row])
            alignment = ctc_align(log_probs[row, :length], None, torch.tensor(transcript))
            stride = frame_seconds * int(lengths[row]) / length
            timings.append(word_timestamps(alignment, transcript, separator_id, stride))
        return timings


@dataclass(frozen=True, kw_only=True)
class CTCBiLSTMConfig(SpeechConfig):
    """A bidirectional LSTM with a CTC output layer.

    Attributes:
        hidden_size: the LSTM units of both directions together (even; half run each way).
        n_layers: stacked bidirectional layers.
        subsample: frames stacked into one before the LSTM (1, 2 or 4).
        dropout: between the layers.
    """

    hidden_size: int = 128
    n_layers: int = 3
    subsample: int = 4
    dropout: float = 0.1


@register("ctc-bilstm", task="asr", config=CTCBiLSTMConfig)
class CTCBiLSTM(CTCRecogniser):
    """Bidirectional LSTM with CTC (Graves et al. 2013)."""

    def make_encoder(self, config: CTCBiLSTMConfig) -> nn.Module:
        return BiLSTMEncoder(config.n_mels, config.hidden_size, config.n_layers, config.dropout, config.subsample)


@dataclass(frozen=True, kw_only=True)
class CTCConformerConfig(ConformerConfig):
    """A Conformer with a CTC output layer (the fields are ``ConformerConfig``'s)."""


@register("ctc-conformer", task="asr", config=CTCConformerConfig)
class CTCConformer(CTCRecogniser):
    """Conformer with CTC (Gulati et al. 2020)."""

    def make_encoder(self, config: CTCConformerConfig) -> nn.Module:
        return config.conformer_encoder(causal=False)
