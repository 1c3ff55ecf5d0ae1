"""A Whisper-style encoder-decoder recogniser (Radford et al. 2022, "Robust Speech Recognition
via Large-Scale Weak Supervision", sec. 2.3 and fig. 1), small enough to train on a CPU.

Log-mel frames ``x`` (B, T, F) go through a convolutional stem that halves the frame rate, a
pre-LN Transformer encoder and a decoder that reads the transcript so far and attends to the
encoder's output:

    h      = GELU(Conv1d_{k=3, stride 2}(GELU(Conv1d_{k=3}(x))))         (B, T', D)
    memory = LN(EncoderBlocks(h + PE_sin))                                T' = floor((T - 1) / 2) + 1
    logits = LN(DecoderBlocks(E[y] + P_learned, memory)) E^T              (tied output embedding)

Both convolutions pad by one frame; the second has stride 2, so ``T' = ceil(T / 2)``. The
decoder's self-attention is causal, with a key/value cache for stepping; every decoder block
cross-attends to the encoder output, whose padded frames are masked. Padding never changes a
real row: padded frames are zeroed before each convolution (so a row sees the zeros of its own
end, as it would alone), and the encoder's attention masks them as keys.

The model is both a :class:`~seqlab.contracts.EncoderDecoder` whose source is feature frames
(``source_is_features``; the shared :func:`~seqlab.decoding.beam_search` and
:func:`~seqlab.decoding.decode_greedy` drive it unchanged) and a
:class:`~seqlab.speech.recogniser.Recogniser`:

- ``nll``: teacher forcing, ``tgt_in = BOS y_1 .. y_L`` and ``tgt_out = y_1 .. y_L EOS``;
  ``-sum_{t=1}^{L+1} log p(tgt_out_t | tgt_in_{<=t}, x)`` per utterance;
- ``transcribe``: greedy (``beam_size=1``) or beam search, then the ids before the first EOS
  with reserved ids dropped.

Whisper's multitask tokens (language, task, timestamps) are left out: the one task here is
transcription, so the decoder starts from BOS.

Hybrid CTC/attention training (Watanabe et al. 2017, "Hybrid CTC/Attention Architecture for
End-to-End Speech Recognition"): with ``ctc_weight`` = lambda > 0 a linear CTC layer reads the
encoder's output and, in training, adds ``lambda * CTC NLL`` (per transcript symbol, as the
task's loss) as the model's auxiliary loss (``seqlab.contracts.auxiliary_loss``). CTC's
monotonic alignment teaches the encoder where each symbol is long before cross-attention finds
it alone; ``nll`` itself stays the attention decoder's, and decoding uses the decoder only.

Shapes: B batch, T frames, F mel bins, T' encoder positions, L transcript length, D
``d_model``, V ``vocab_size`` (reserved ids included).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.contracts import EncoderDecoder
from seqlab.decoding import beam_search, decode_greedy, strip_eos
from seqlab.errors import ConfigError, DataError
from seqlab.layers.attention import MultiHeadAttention
from seqlab.layers.block import TransformerBlock
from seqlab.layers.conformer import lengths_to_mask
from seqlab.layers.feedforward import FeedForward
from seqlab.layers.norms import make_norm
from seqlab.layers.positions import LearnedPositions, SinusoidalPositions
from seqlab.models.transformer import gpt2_init
from seqlab.registry import register
from seqlab.speech.ctc import ctc_nll, repeated_labels
from seqlab.speech.frontend import FrontEnd, SpeechConfig
from seqlab.speech.recogniser import BOS, EOS, FIRST_SYMBOL, Recogniser, refuse_fusion


@dataclass(frozen=True, kw_only=True)
class WhisperConfig(SpeechConfig):
    """Whisper-style encoder-decoder recogniser for the asr task (the normalisation and
    SpecAugment fields are ``SpeechConfig``'s).

    Attributes:
        d_model: width of the stem's output and of both Transformer stacks.
        n_heads: attention heads; must divide d_model.
        n_encoder_layers: Transformer blocks in the encoder.
        n_decoder_layers: Transformer blocks in the decoder.
        d_ff: hidden width of every block's GELU feed-forward.
        dropout: on attention weights, residual branches, feed-forward hiddens and the decoder's
            embeddings.
        max_target_len: the decoder's learned position table: BOS plus at most
            max_target_len - 1 transcript symbols in training, and at most max_target_len
            generated ids (EOS included) in decoding.
        ctc_weight: lambda of the auxiliary CTC loss on the encoder (hybrid CTC/attention;
            0: none).
    """

    d_model: int = 128
    n_heads: int = 4
    n_encoder_layers: int = 3
    n_decoder_layers: int = 2
    d_ff: int = 512
    dropout: float = 0.1
    max_target_len: int = 32
    ctc_weight: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        minimums = {"vocab_size": FIRST_SYMBOL + 1, "n_mels": 1, "d_model": 1, "n_heads": 1, "n_encoder_layers": 1,
                    "n_decoder_layers": 1, "d_ff": 1, "max_target_len": 2}
        for field, minimum in minimums.items():
            if getattr(self, field) < minimum:
                raise ConfigError(f"WhisperConfig.{field} must be >= {minimum}, got {getattr(self, field)}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"WhisperConfig.n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"WhisperConfig.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.ctc_weight < 1e3:
            raise ConfigError(f"WhisperConfig.ctc_weight must be >= 0, got {self.ctc_weight}")


class ConvStem(nn.Module):
    """Whisper's stem: two 3-wide convolutions with GELU, the second of stride 2 (halves T).

    Args:
        n_mels: F, input channels.
        d_model: D, output channels.
    """

    def __init__(self, n_mels: int, d_model: int):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d_model, d_model, kernel_size=3, stride=2, padding=1)

    @staticmethod
    def output_lengths(lengths: Tensor) -> Tensor:
        """(B,) frames -> (B,) stem outputs: ``floor((T + 2 - 3) / 2) + 1 = ceil(T / 2)``."""
        return torch.div(lengths - 1, 2, rounding_mode="floor") + 1

    def forward(self, features: Tensor, frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Args:
            features: (B, T, F) frames. frame_mask: (B, T) true at real frames (left-aligned).
        Returns:
            (B, T', D) outputs (zero at padding) and their (B, T') mask.
        """
        x = features.masked_fill(~frame_mask[:, :, None], 0.0).transpose(1, 2)     # (B, F, T)
        x = F.gelu(self.conv1(x)).masked_fill(~frame_mask[:, None, :], 0.0)         # (B, D, T)
        x = F.gelu(self.conv2(x)).transpose(1, 2)                                   # (B, T', D)
        lengths = self.output_lengths(frame_mask.sum(dim=1))
        output_mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]  # (B, T')
        return x.masked_fill(~output_mask[:, :, None], 0.0), output_mask


def _blocks(config: WhisperConfig, n_layers: int, *, decoder: bool) -> nn.ModuleList:
    """``n_layers`` pre-LN blocks: bidirectional self-attention (encoder), or causal
    self-attention and cross-attention (decoder); GELU feed-forwards."""

    def attention(**options: Any) -> MultiHeadAttention:
        return MultiHeadAttention(config.d_model, config.n_heads, dropout=config.dropout, **options)

    norm = partial(make_norm, "layernorm", config.d_model)
    return nn.ModuleList(
        TransformerBlock(attention(causal=decoder), FeedForward(config.d_model, config.d_ff, "gelu", config.dropout),
                         norm, cross_attention=attention(causal=False, cross=True) if decoder else None,
                         norm_position="pre", dropout=config.dropout)
        for _ in range(n_layers))


def frame_mask(features: Tensor, lengths: Tensor) -> Tensor:
    """(B, T) bool, true at the first ``lengths[b]`` frames of each row.

    Raises:
        DataError: ``features`` is not (B, T, F) float, or a length is outside [1, T].
    """
    if features.dim() != 3 or not features.is_floating_point():
        raise DataError(f"features must be float (batch, frames, mel bins), got {features.dtype} "
                        f"of shape {tuple(features.shape)}")
    if lengths.shape != features.shape[:1]:
        raise DataError(f"lengths has shape {tuple(lengths.shape)}, expected ({features.shape[0]},): one per utterance")
    bad = ((lengths < 1) | (lengths > features.shape[1])).nonzero().flatten().tolist()
    if bad:
        raise DataError(f"utterance {bad[0]} has length {int(lengths[bad[0]])}, outside [1, {features.shape[1]}] "
                        "frames; give each utterance's real frame count")
    return lengths_to_mask(lengths.to(features.device), features.shape[1])


@register("whisper-tiny", task="asr", config=WhisperConfig)
class WhisperRecogniser(EncoderDecoder, Recogniser):
    """Whisper-style encoder-decoder: conv stem, Transformer encoder, cross-attending decoder."""

    source_is_features: ClassVar[bool] = True   # seqlab.decoding: src is (B, T, F) frames
    train_defaults: ClassVar[dict[str, Any]] = {"lr": 1e-3, "warmup_steps": 200}

    def __init__(self, config: WhisperConfig):
        super().__init__()
        self.config = config
        self.vocab_size = self.tgt_vocab_size = config.vocab_size
        self.src_vocab_size = 0    # no source vocabulary: the source is feature frames
        self.frontend = FrontEnd(config)
        self.stem = ConvStem(config.n_mels, config.d_model)
        self.encoder_positions = SinusoidalPositions(config.d_model)
        self.encoder_blocks = _blocks(config, config.n_encoder_layers, decoder=False)
        self.encoder_norm = nn.LayerNorm(config.d_model)
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.decoder_positions = LearnedPositions(config.d_model, config.max_target_len)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.decoder_blocks = _blocks(config, config.n_decoder_layers, decoder=True)
        self.decoder_norm = nn.LayerNorm(config.d_model)
        # The auxiliary CTC layer: the blank and the characters (CTC never writes BOS or EOS).
        self.ctc_output = nn.Linear(config.d_model, config.vocab_size - (FIRST_SYMBOL - BOS)) if config.ctc_weight else None
        gpt2_init(self, config.n_encoder_layers + config.n_decoder_layers)

    @staticmethod
    def output_lengths(lengths: Tensor) -> Tensor:
        """(B,) frames -> (B,) encoder positions, ``ceil(T / 2)``."""
        return ConvStem.output_lengths(lengths)

    # ------------------------------------------------------------------ EncoderDecoder view

    def encode(self, src: Tensor, src_mask: Tensor) -> dict[str, Tensor]:
        """The encoder's output.

        Args:
            src: (B, T, F) feature frames. src_mask: (B, T) bool, true at real frames.
        Returns:
            ``{"memory": (B, T', D), "memory_mask": (B, T')}``.
        """
        x, memory_mask = self.stem(src, src_mask)                                   # (B, T', D)
        x = self.encoder_positions(x)
        for block in self.encoder_blocks:
            x = block(x, key_padding_mask=memory_mask)
        return {"memory": self.encoder_norm(x), "memory_mask": memory_mask}

    def init_state(self, batch_size: int, memory: dict[str, Tensor]) -> dict[str, Any]:
        """The memory and one empty key/value cache per decoder block."""
        caches = tuple(block.attention.make_cache(batch_size, self.config.max_target_len)
                       for block in self.decoder_blocks)
        return {**memory, "caches": caches}

    def _decode(self, tgt: Tensor, memory: Tensor, memory_mask: Tensor, caches: tuple | None) -> Tensor:
        """(B, t) target ids after the cached ones -> (B, t, V) logits; caches extended in place."""
        offset = 0 if caches is None else caches[0].length
        x = self.embedding_dropout(self.decoder_positions(self.embedding(tgt), offset))   # (B, t, D)
        for index, block in enumerate(self.decoder_blocks):
            x = block(x, memory=memory, memory_padding_mask=memory_mask,
                      cache=None if caches is None else caches[index])
        return self.decoder_norm(x) @ self.embedding.weight.T                      # (B, t, V)

    def step(self, token: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """(B,) target ids -> (B, V) logits; the state's caches are extended in place."""
        logits = self._decode(token[:, None], state["memory"], state["memory_mask"], state["caches"])
        return logits[:, 0], state

    def select(self, state: dict[str, Any], rows: Tensor) -> dict[str, Any]:
        """A new state of batch rows ``rows``: the memory's rows and copies of the caches' rows."""
        return {"memory": state["memory"].index_select(0, rows),
                "memory_mask": state["memory_mask"].index_select(0, rows),
                "caches": tuple(cache.selected(rows) for cache in state["caches"])}

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (B, L, V) in one pass of the decoder; equal to unrolling ``step``."""
        memory = self.encode(src, src_mask)
        return self._decode(tgt_in, memory["memory"], memory["memory_mask"], None)

    # ------------------------------------------------------------------ Recogniser view

    def teacher_forcing(self, targets: Tensor, target_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The decoder's input and output of each transcript, and where the output is real.

        Args:
            targets: (B, L) ids >= FIRST_SYMBOL, 0 past ``target_lengths`` (B,).
        Returns:
            ``tgt_in`` (B, L + 1) = BOS y; ``tgt_out`` (B, L + 1) = y EOS (0 after EOS);
            ``tgt_mask`` (B, L + 1) true up to and including EOS.
        Raises:
            DataError: a length outside [0, L], a symbol outside [FIRST_SYMBOL, vocab_size), or
                a transcript longer than ``max_target_len - 1``.
        """
        batch, width = targets.shape
        if target_lengths.shape != (batch,) or bool(((target_lengths < 0) | (target_lengths > width)).any()):
            raise DataError(f"target_lengths must be ({batch},) values in [0, {width}], got {target_lengths.tolist()}")
        positions = torch.arange(width + 1, device=targets.device)[None, :]         # (1, L + 1)
        tgt_mask = positions <= target_lengths[:, None]                             # (B, L + 1)
        symbol_mask = positions[:, :width] < target_lengths[:, None]                # (B, L)
        symbols = targets[symbol_mask]
        if symbols.numel() and (int(symbols.min()) < FIRST_SYMBOL or int(symbols.max()) >= self.vocab_size):
            raise DataError(f"targets hold ids outside the transcript symbols [{FIRST_SYMBOL}, {self.vocab_size}) "
                            "within target_lengths; map characters to ids >= 3 and pad with 0")
        longest = int(target_lengths.max()) if batch else 0
        if longest + 1 > self.config.max_target_len:
            raise DataError(f"a transcript of {longest} symbols needs {longest + 1} decoder positions, more than "
                            f"max_target_len={self.config.max_target_len}; raise max_target_len")
        padded = targets.masked_fill(~symbol_mask, 0)
        tgt_in = torch.cat([torch.full_like(targets[:, :1], BOS), padded], dim=1)
        tgt_out = torch.cat([padded, torch.zeros_like(targets[:, :1])], dim=1)
        tgt_out = tgt_out.scatter(1, target_lengths[:, None].long(), EOS)
        return tgt_in, tgt_out, tgt_mask

    def nll(self, features: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
        """(B,) ``-log p(y EOS | x)``: the teacher-forced cross-entropy summed over each
        transcript's symbols and its EOS (see :meth:`teacher_forcing`)."""
        mask = frame_mask(features, lengths)
        features = self.frontend(features, lengths)
        targets, target_lengths = targets.to(mask.device), target_lengths.to(mask.device)
        tgt_in, tgt_out, tgt_mask = self.teacher_forcing(targets, target_lengths)
        memory = self.encode(features, mask)
        if self.training and self.ctc_output is not None:
            self.auxiliary_loss = self._ctc_loss(memory, targets, target_lengths)
        logits = self._decode(tgt_in, memory["memory"], memory["memory_mask"], None)
        log_probs = logits.float().log_softmax(dim=-1)                              # (B, L + 1, V)
        token_log_probs = log_probs.gather(-1, tgt_out[:, :, None]).squeeze(-1)    # (B, L + 1)
        return -(token_log_probs * tgt_mask).sum(dim=1)

    def _ctc_loss(self, memory: dict[str, Tensor], targets: Tensor, target_lengths: Tensor) -> Tensor:
        """``ctc_weight`` times the CTC NLL of the transcripts given the encoder's output, per
        transcript symbol (targets mapped to the CTC layer's ids: blank 0, characters from 1).
        An utterance with fewer encoder frames than CTC needs for its transcript (its symbols
        and its repeats) adds nothing: the attention decoder still learns it."""
        log_probs = self.ctc_output(memory["memory"]).float().log_softmax(dim=-1)   # (B, T', 1 + C)
        frames = memory["memory_mask"].sum(dim=1)
        real = torch.arange(targets.shape[1], device=targets.device) < target_lengths[:, None]
        compact = torch.where(real, targets - (FIRST_SYMBOL - 1), 0)
        fits = frames >= target_lengths + repeated_labels(compact, target_lengths)
        if not fits.any():
            return log_probs.new_zeros(())
        nll = ctc_nll(log_probs[fits], frames[fits], compact[fits], target_lengths[fits])
        return self.config.ctc_weight * nll.sum() / target_lengths.sum().clamp(min=1)

    @torch.no_grad()
    def transcribe(self, features: Tensor, lengths: Tensor, *, beam_size: int = 1, scorer: Any = None,
                   lm_weight: float = 0.0, length_bonus: float = 0.0) -> list[list[int]]:
        """The best transcript of each utterance: greedy for ``beam_size=1``, else the shared
        beam search (plain log-probability, at most ``max_target_len`` ids with EOS); the ids
        before the first EOS, reserved ids dropped.

        Raises:
            ConfigError: a ``scorer``, ``lm_weight`` or ``length_bonus`` (shallow fusion and the
                length bonus belong to CTC prefix beam search), or ``beam_size < 1``.
        """
        refuse_fusion(self.registry_name, scorer, lm_weight, length_bonus)
        if beam_size < 1:
            raise ConfigError(f"beam_size must be >= 1, got {beam_size}")
        mask = frame_mask(features, lengths)
        features = self.frontend(features, lengths)
        max_length = self.config.max_target_len
        if beam_size == 1:
            decoded = decode_greedy(self, features, mask, max_length=max_length, bos_id=BOS, eos_id=EOS)
        else:
            decoded = beam_search(self, features, mask, beam_size=beam_size, max_length=max_length,
                                  bos_id=BOS, eos_id=EOS)
        return [[token for token in strip_eos(sequence, EOS) if token >= FIRST_SYMBOL]
                for sequence in decoded.sequences]
