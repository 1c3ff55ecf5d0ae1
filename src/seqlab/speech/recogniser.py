"""The recogniser contract: log-mel frames in, symbol ids out (../DESIGN.md, section 2).

A recogniser reads a batch of feature sequences, (B, T, F) float frames with their (B,) lengths,
and gives back symbol ids. Its vocabulary reserves three ids, whatever the output layer:

- ``BLANK`` = 0: CTC's and the transducer's blank; padding in target tensors;
- ``BOS`` = 1 and ``EOS`` = 2: the start and end of a decoder's output (a Whisper-style
  encoder-decoder; ``seqlab.contracts.EncoderDecoder`` uses the same ids, with PAD = 0);
- ids from ``FIRST_SYMBOL`` = 3: the transcript's characters (``seqlab.tasks.asr``).

A recogniser provides

- ``nll(features, lengths, targets, target_lengths) -> (B,)``: each utterance's negative
  log-likelihood of its transcript, summed over its symbols (the task averages it);
- ``transcribe(features, lengths, *, beam_size=1, scorer=None, lm_weight=0.0,
  length_bonus=0.0) -> list[list[int]]``: one id sequence per utterance (no reserved ids).
  ``scorer`` is a prefix scorer over the same ids (``seqlab.speech.ctc_beam.PrefixScorer``), for
  shallow fusion of a language model; a recogniser that cannot fuse one says so.

An encoder (``seqlab.speech.encoders``) maps (B, T, F) frames and (B,) lengths to (B, T', D)
vectors and (B,) lengths, ``T' = output_lengths(T)`` (a stem subsamples time); a streaming
encoder also reads a recording chunk by chunk (``init_stream``, ``forward_chunk``), and the
chunks' outputs joined equal the whole recording's.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor, nn

from seqlab.errors import ConfigError

BLANK = 0
PAD = 0
BOS = 1
EOS = 2
FIRST_SYMBOL = 3


class Recogniser(nn.Module, abc.ABC):
    """Base of every speech recogniser (``seqlab.tasks.asr``); see the module docstring."""

    vocab_size: int              # every output id, the reserved three included
    train_defaults: ClassVar[dict[str, Any]] = {}     # TrainConfig values that suit the model

    @abc.abstractmethod
    def nll(self, features: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
        """(B,) negative log-likelihoods of ``targets`` (B, L) ids >= FIRST_SYMBOL, padded with
        0 past ``target_lengths`` (B,), given ``features`` (B, T, F) and ``lengths`` (B,)."""

    @abc.abstractmethod
    def transcribe(self, features: Tensor, lengths: Tensor, *, beam_size: int = 1, scorer: Any = None,
                   lm_weight: float = 0.0, length_bonus: float = 0.0) -> list[list[int]]:
        """The best id sequence of each utterance (ids >= FIRST_SYMBOL only)."""


@runtime_checkable
class SpeechEncoder(Protocol):
    """(B, T, F) frames and (B,) lengths -> (B, T', output_dim) vectors and (B,) lengths."""

    output_dim: int

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]: ...
    def output_lengths(self, lengths: Tensor) -> Tensor: ...


@runtime_checkable
class StreamingEncoder(SpeechEncoder, Protocol):
    """An encoder that also reads a recording in chunks: ``init_stream(batch_size)``, then
    ``forward_chunk(frames, state) -> (vectors, state)`` for each (B, t, F) chunk; the vectors
    of all chunks, joined on time, equal ``forward`` over the whole recording."""

    def init_stream(self, batch_size: int) -> Any: ...
    def forward_chunk(self, features: Tensor, state: Any) -> tuple[Tensor, Any]: ...


def refuse_fusion(model: str, scorer: Any, lm_weight: float, length_bonus: float) -> None:
    """ConfigError when a recogniser that decodes without a language model (``model``) is
    asked for shallow fusion or a length bonus: those belong to CTC's prefix beam search."""
    if scorer is not None or lm_weight or length_bonus:
        raise ConfigError(f"shallow fusion (lm, lm_weight) and length_bonus are only for CTC models; decode {model} "
                          "with beam_size alone")
