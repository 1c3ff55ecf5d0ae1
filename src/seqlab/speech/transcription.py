"""Transcribing recordings with a trained recogniser: whole or streamed, with a fused language
model, with word times (what ``seqlab transcribe`` does for the ``asr`` task).

- Whole recordings are read, resampled to the run's rate, made into log-mel frames and
  transcribed in batches (``Recogniser.transcribe``: greedy or beam search).
- ``lm``: a character n-gram language model run is fused into a CTC model's prefix beam search
  (``seqlab.speech.ctc_beam.NGramScorer``), each of the recogniser's characters mapped to the
  language model's id of it.
- ``timestamps``: each word's start and end from the CTC forced alignment of the transcript
  (``CTCRecogniser.word_timings``).
- ``chunk_seconds``: a streaming model reads each recording a chunk at a time, the frames made
  as each chunk completes them (``seqlab.data.audio.StreamingLogMel``); its transcript is the
  whole reading's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from seqlab.contracts import device_of
from seqlab.data.audio import FeatureConfig, StreamingLogMel, load_audio, log_mel
from seqlab.data.speech_manifest import check_duration
from seqlab.errors import ConfigError, DataError
from seqlab.speech.vocabulary import SymbolVocabulary


@dataclass(frozen=True, kw_only=True)
class TranscribeOptions:
    """How ``seqlab transcribe`` decodes.

    Attributes:
        beam_size: hypotheses kept (1: greedy).
        lm: a character-level n-gram language model run (`seqlab train ngram --task lm
            --tokenizer char` over transcripts, one per line) fused into a CTC model's beam.
        lm_weight: weight of the language model's log-probability in the beam's score.
        length_bonus: added to the beam's score per symbol written (CTC models).
        timestamps: follow each transcript with a tab and its words' times, ``word@start-end``
            in seconds, from a forced alignment (CTC models).
        chunk_seconds: read each recording in chunks of this many seconds, as a stream
            (streaming models: rnnt-conformer); the transcript is the whole recording's.
    """

    beam_size: int = 1
    lm: str | None = None
    lm_weight: float = 0.5
    length_bonus: float = 0.0
    timestamps: bool = False
    chunk_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ConfigError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.chunk_seconds is not None and not self.chunk_seconds > 0:
            raise ConfigError(f"chunk_seconds must be > 0, got {self.chunk_seconds}")


def pad_frames(features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """(B, T, F) frames padded with 0, and (B,) their lengths."""
    lengths = torch.tensor([len(f) for f in features], dtype=torch.long)
    return nn.utils.rnn.pad_sequence(list(features), batch_first=True), lengths


class Transcriber:
    """Transcribes WAV files with a recogniser of ``vocabulary`` that reads ``features``, at
    most ``batch_size`` recordings at once."""

    def __init__(self, vocabulary: SymbolVocabulary, features: FeatureConfig, batch_size: int):
        self.vocabulary, self.features, self.batch_size = vocabulary, features, batch_size

    def transcribe_files(self, model: nn.Module, inputs: Sequence[str], options: TranscribeOptions) -> list[str]:
        """The transcript of each WAV file named in ``inputs``.

        Raises:
            DataError: an empty line, or a file that is not a mono WAV this pipeline can read,
                naming it.
        """
        if options.chunk_seconds is not None:
            return [self._transcribe_stream(model, line, options.chunk_seconds) for line in inputs]
        if options.timestamps and not hasattr(model, "word_timings"):
            raise ConfigError(f"--timestamps come from a CTC forced alignment; a {type(model).__name__} has none: "
                              "use a ctc-* run")
        scorer = None if options.lm is None else language_model_scorer(options.lm, self.vocabulary)
        fusion = {"scorer": scorer, "lm_weight": options.lm_weight} if scorer is not None else {}
        if options.length_bonus:
            fusion["length_bonus"] = options.length_bonus
        features = []
        for number, line in enumerate(inputs, start=1):
            if not line.strip():
                raise DataError(f"input line {number} is empty; give one WAV file per line")
            samples = load_audio(line.strip(), self.features.sample_rate)
            check_duration(samples, self.features.sample_rate, line.strip())
            features.append(log_mel(samples, self.features, center=False))
        device, was_training = device_of(model), model.training
        model.eval()
        transcripts = []
        try:
            with torch.no_grad():
                for start in range(0, len(features), self.batch_size):
                    frames, lengths = pad_frames(features[start:start + self.batch_size])
                    frames, lengths = frames.to(device), lengths.to(device)
                    ids = model.transcribe(frames, lengths, beam_size=options.beam_size, **fusion)
                    texts = [self.vocabulary.decode(row) for row in ids]
                    if options.timestamps:
                        texts = [text + "\t" + " ".join(f"{self.vocabulary.decode(word)}@{start:.2f}-{end:.2f}"
                                                         for word, start, end in timing)
                                 for text, timing in zip(texts, self._word_timings(model, frames, lengths, ids))]
                    transcripts.extend(texts)
        finally:
            model.train(was_training)
        return transcripts

    @torch.no_grad()
    def _transcribe_stream(self, model: nn.Module, path: str, chunk_seconds: float) -> str:
        """The transcript of the recording at ``path`` read ``chunk_seconds`` at a time: its
        frames as each chunk completes them (``StreamingLogMel``), fed to ``model.stream``."""
        if not hasattr(model, "start_stream"):
            raise ConfigError(f"--chunk-seconds streams a recording; a {type(model).__name__} reads whole recordings: "
                              "use an rnnt-conformer run")
        samples = load_audio(path.strip(), self.features.sample_rate)
        check_duration(samples, self.features.sample_rate, path.strip())
        was_training = model.training
        model.eval()
        try:
            extractor, state, symbols = StreamingLogMel(self.features), model.start_stream(), []
            step = max(1, round(chunk_seconds * self.features.sample_rate))
            for start in range(0, len(samples), step):
                frames = extractor.push(samples[start:start + step]).to(device_of(model))
                new, state = model.stream(frames, state)
                symbols.extend(new)
        finally:
            model.train(was_training)
        return self.vocabulary.decode(symbols)

    def _word_timings(self, model: nn.Module, frames: Tensor, lengths: Tensor, ids: list[list[int]]) -> list:
        """Each transcript's words with their times (``model.word_timings``), or none for a
        vocabulary without a space."""
        separator = self.vocabulary.id_of(" ")
        if separator is None:
            return [[] for _ in ids]
        hop_seconds = self.features.hop_length / self.features.sample_rate
        return model.word_timings(frames, lengths, ids, separator, hop_seconds)


def language_model_scorer(run: str, vocabulary: SymbolVocabulary) -> Any:
    """A prefix scorer of the character n-gram language model saved in ``run``, over the
    recogniser's symbols (each character mapped to the model's id of it; the line break, when
    the model knows it, ends a transcript).

    Raises:
        ConfigError: the run is not a character-level n-gram language model.
        DataError: a character of the recogniser's vocabulary that the model never saw.
    """
    from seqlab.checkpoint import load_checkpoint
    from seqlab.classical.ngram import NGramLM
    from seqlab.speech.ctc_beam import NGramScorer

    loaded = load_checkpoint(run)
    tokenizer = getattr(loaded.task(with_data=False), "tokenizer", None)
    if not isinstance(loaded.model, NGramLM) or tokenizer is None or tokenizer.kind != "char":
        raise ConfigError(f"--lm {run!r} is not a character-level n-gram language model run; train one with "
                          "`seqlab train ngram --task lm --tokenizer char --data TRANSCRIPTS.txt`")
    mapping = {}
    for character in vocabulary.characters:
        ids = tokenizer.encode(character, unknown="replace")
        if len(ids) != 1 or ids[0] == tokenizer.unk_id:
            raise DataError(f"--lm {run!r} never saw the character {character!r} that the recogniser writes; "
                            "train it on text that has every character of the transcripts")
        mapping[vocabulary.id_of(character)] = ids[0]
    end = tokenizer.encode("\n", unknown="replace")
    end_id = end[0] if len(end) == 1 and end[0] != tokenizer.unk_id else None
    return NGramScorer(loaded.model, mapping, end_lm_id=end_id)
