"""Speech recognition: a recording in, its transcript out.

The data is one of:

- the Free Spoken Digit Dataset made into connected-digit utterances
  (``seqlab.data.spoken_digits``): ``--data fsdd`` (looked up in ``./fsdd``, then
  ``$SEQLAB_DATA/fsdd``, by default ``../shared/data/fsdd``) or the directory of its
  recordings. ``--split official`` keeps FSDD's test recordings (0-4 of every digit and
  speaker) out of training; ``--split speaker`` tests on a speaker never heard (``theo``);
- a TSV manifest of ``recording.wav<TAB>transcript`` lines (``seqlab.data.speech_manifest``),
  shuffled with ``data_seed`` and cut by ``split_fractions``; given to ``seqlab eval RUN
  --data``, all of it is the test split. Its transcripts' characters are the vocabulary, and a
  transcript the run's vocabulary cannot write is an error naming its line.

A batch is (log-mel frames (B, T, F), padded with 0; frame counts (B,); transcript ids (B, L),
padded with 0; transcript lengths (B,)). Frames come from ``seqlab.data.audio.log_mel`` with
25 ms windows every 10 ms and ``center=False`` (a frame is made only of the samples it covers,
so a streaming recogniser fed the audio in chunks sees the very same frames); the models
normalise them (``seqlab.speech.frontend``). Transcripts are characters, the space included
(``seqlab.speech.vocabulary``). A recogniser provides ``nll`` and ``transcribe``
(``seqlab.speech.recogniser``).

Metrics: loss (the negative log-likelihood per transcript symbol, in nats), wer and cer
(corpus-level, through jiwer: ``seqlab.metrics.speech``), and rtf, the real-time factor:
seconds spent recognising (features to text) per second of audio.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn

from seqlab.contracts import device_of
from seqlab.data.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, FeatureConfig, load_audio, log_mel
from seqlab.data.speech_manifest import Utterances, is_manifest, manifest_utterances, read_manifest
from seqlab.data.tsv import split_by_fractions
from seqlab.data.spoken_digits import (ConnectedDigits, connect, find_fsdd, list_recordings, random_groups,
                                       split_recordings)
from seqlab.errors import ConfigError, DataError
from seqlab.fields import config_to_dict, make_config
from seqlab.metrics.speech import error_rates
from seqlab.report import Column, Curve
from seqlab.speech.transcription import TranscribeOptions, Transcriber, pad_frames
from seqlab.speech.vocabulary import SymbolVocabulary
from seqlab.tasks.base import ReportSpec, Showcase, Task, register_task

DIGITS = "0 1 2 3 4 5 6 7 8 9"        # the transcripts' characters: the digits and the space
SHOWN_UTTERANCES = 6


@dataclass(frozen=True, kw_only=True)
class SpeechOptions:
    """The data of a speech recognition run.

    Attributes:
        data: fsdd (the Free Spoken Digit Dataset, found in ./fsdd or $SEQLAB_DATA/fsdd), the
            directory of its recordings, or a TSV manifest of recording.wav<TAB>transcript lines.
        split: official (FSDD's test recordings 0-4 never trained on) or speaker (test on
            held_out_speaker, train on the others).
        split_fractions: fractions of a manifest's recordings for train, valid and test.
        held_out_speaker: the speaker of the speaker split's test set.
        max_digits: the most digits in one utterance (each has 1 to max_digits).
        valid_passes: times each validation recording is heard in the fixed validation set.
        test_passes: times each test recording is heard in the fixed test set.
        data_seed: seeds the fixed validation and test utterances.
        sample_rate: the rate every recording is resampled to, in Hz.
        n_mels: mel channels per frame.
        beam_size: hypotheses the evaluation's decoder keeps (1: greedy).
        eval_batch_size: utterances recognised at once in evaluation.
    """

    data: str = "fsdd"
    split: Literal["official", "speaker"] = "official"
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    held_out_speaker: str = "theo"
    max_digits: int = 7
    valid_passes: int = 1
    test_passes: int = 2
    data_seed: int = 0
    sample_rate: int = 8000
    n_mels: int = 40
    beam_size: int = 1
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        for name in ("max_digits", "valid_passes", "test_passes", "n_mels", "beam_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE:
            raise ConfigError(f"sample_rate must be in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz, got {self.sample_rate}")
        if self.split not in ("official", "speaker"):
            raise ConfigError(f"split must be official or speaker, got {self.split!r}")
        fractions = self.split_fractions
        if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-9:
            raise ConfigError(f"split_fractions must be three positive fractions summing to 1, got {fractions}")

    @property
    def features(self) -> FeatureConfig:
        """25 ms windows every 10 ms at ``sample_rate``, ``n_mels`` channels."""
        return FeatureConfig(sample_rate=self.sample_rate, n_fft=self.sample_rate // 40,
                             hop_length=self.sample_rate // 100, n_mels=self.n_mels)


@register_task("asr")
class SpeechRecognition(Task):
    """Speech recognition over connected spoken digits or a manifest (module docstring).

    Args:
        options: the data's options.
        recordings: FSDD's recordings per split name, as (waveform, digit); none for a manifest
            or to transcribe.
        vocabulary: a saved run's; None builds it from the digits or the manifest's training
            transcripts.
        utterances: a manifest's fixed utterances per split name.
    """

    Options = SpeechOptions
    PredictOptions = TranscribeOptions
    predict_command = "transcribe"
    predict_help = "one WAV file per line (or the files after the run); printed as its transcript"
    inline_flag = "--audio"
    report = ReportSpec(
        columns=(Column("test CER %", "cer", "{:.2f}", "lower", 100.0),
                 Column("test WER %", "wer", "{:.2f}", "lower", 100.0),
                 Column("RTF", "rtf", "{:.4f}", "lower")),
        curve=Curve("valid_cer", "validation CER (%)", "lower", 100.0),
        speed="train frames/s",
    )
    default_budget_seconds = 1200.0
    matched_config_fields = ("vocab_size", "n_mels")
    artifact_loaders = {"vocabulary": SymbolVocabulary.load}

    def __init__(self, options: SpeechOptions, recordings: dict[str, list[tuple[Tensor, int]]] | None = None,
                 vocabulary: SymbolVocabulary | None = None, utterances: dict[str, Utterances] | None = None):
        self.options = options
        self.features = options.features
        self.recordings = recordings or {}
        if utterances is not None:                         # a manifest's recordings
            if vocabulary is None and "train" not in utterances:
                raise DataError("a speech task over a manifest needs its training split or a run's vocabulary")
            self.vocabulary = vocabulary or SymbolVocabulary.build(utterances["train"].transcripts)
            self._fixed = utterances
        else:                                              # connected digits, made from FSDD's recordings
            self.vocabulary = vocabulary or SymbolVocabulary.build([DIGITS])
            self._fixed = {split: self._fixed_utterances(split, seed)
                           for seed, split in enumerate(("valid", "test"), start=1) if self.recordings.get(split)}
        for split in self._fixed.values():                 # a transcript the vocabulary cannot write fails now
            for transcript, source in zip(split.transcripts, split.sources):
                self.vocabulary.encode(transcript, source)

    # ---- building ------------------------------------------------------------------------

    @classmethod
    def from_options(cls, options: SpeechOptions) -> SpeechRecognition:
        if is_manifest(options.data):
            return cls(options, utterances=read_manifest_splits(options))
        return cls(options, read_recordings(options))

    @classmethod
    def from_spec(cls, spec: dict[str, Any], artifacts: dict[str, Any], data: str | None = None,
                  with_data: bool = True) -> SpeechRecognition:
        """The task a run was trained on: over its own data, another FSDD ``data`` (same split),
        a manifest (all of it the test split), or no data (to transcribe)."""
        values = {key: value for key, value in spec.items() if key != "task"}
        if data is not None:
            values["data"] = str(data)
        options = make_config(SpeechOptions, values)
        vocabulary = artifacts["vocabulary"]
        if not with_data:
            return cls(options, vocabulary=vocabulary)
        if is_manifest(options.data) and data is not None:
            test = manifest_utterances(read_manifest(options.data), options.features)
            return cls(options, vocabulary=vocabulary, utterances={"test": test})
        if is_manifest(options.data):
            return cls(options, vocabulary=vocabulary, utterances=read_manifest_splits(options))
        return cls(options, read_recordings(options), vocabulary)

    def spec(self) -> dict[str, Any]:
        """The options, with a data directory made absolute (a run is read again from elsewhere)."""
        options = config_to_dict(self.options)
        if Path(options["data"]).exists():
            options["data"] = str(Path(options["data"]).resolve())
        return {"task": self.name, **options}

    def artifacts(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary}

    def model_defaults(self) -> dict[str, Any]:
        """The output ids and mel channels a recogniser for this task must take."""
        return {"vocab_size": self.vocabulary.size, "n_mels": self.options.n_mels}

    def check_model(self, model: nn.Module) -> None:
        """Also refuse, before training, a decoder too short for this task's longest transcript
        (a Whisper-style model's ``max_target_len`` counts BOS or EOS too)."""
        super().check_model(model)
        limit = getattr(getattr(model, "config", None), "max_target_len", None)
        longest = max((len(t) for u in self._fixed.values() for t in u.transcripts),
                      default=2 * self.options.max_digits - 1)
        if limit is not None and longest >= limit:
            raise ConfigError(f"the model's max_target_len is {limit} but this task's transcripts run to {longest} "
                              f"characters; set max_target_len={longest + 1} or more")

    @classmethod
    def example_model_defaults(cls) -> dict[str, Any]:
        return {"vocab_size": 3 + len(set(DIGITS)), "n_mels": SpeechOptions().n_mels}

    # ---- utterances ----------------------------------------------------------------------

    def _utterance(self, split: str, group: Sequence[int], generator: torch.Generator) -> ConnectedDigits:
        chosen = [self.recordings[split][index] for index in group]
        return connect([waveform for waveform, _ in chosen], [digit for _, digit in chosen],
                       self.options.sample_rate, generator)

    def _fixed_utterances(self, split: str, seed: int) -> Utterances:
        """The split's fixed utterances: each recording heard once per pass."""
        generator = torch.Generator().manual_seed(self.options.data_seed * 1000 + seed)
        passes = self.options.valid_passes if split == "valid" else self.options.test_passes
        groups = random_groups(len(self.recordings[split]), self.options.max_digits, passes, generator)
        utterances = [self._utterance(split, group, generator) for group in groups]
        return Utterances([log_mel(u.samples, self.features, center=False) for u in utterances],
                          [u.transcript for u in utterances], [len(u.samples) for u in utterances],
                          [f"{split} utterance {number}" for number in range(len(utterances))])

    def batch_of(self, features: Sequence[Tensor], transcripts: Sequence[str] | None = None,
                 sources: Sequence[str] | None = None) -> tuple[Tensor, ...]:
        """Frames (B, T, F) padded with 0 and lengths (B,); with ``transcripts``, their ids
        (B, L) padded with 0 and lengths (B,) (``sources`` name them in errors)."""
        frames, lengths = pad_frames(features)
        if transcripts is None:
            return frames, lengths
        sources = sources or [f"utterance {number}" for number in range(len(transcripts))]
        ids = [torch.tensor(self.vocabulary.encode(text, source), dtype=torch.long)
               for text, source in zip(transcripts, sources)]
        target_lengths = torch.tensor([len(row) for row in ids], dtype=torch.long)
        return frames, lengths, nn.utils.rnn.pad_sequence(ids, batch_first=True), target_lengths

    # ---- training and evaluation ---------------------------------------------------------

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Random training utterances of a manifest; or fresh connected digits of random
        training recordings, a number of digits from 1 to ``max_digits`` drawn for the batch,
        which keeps its padding small."""
        if "train" in self._fixed:
            train = self._fixed["train"]
            rows = torch.randint(0, len(train), (batch_size,), generator=generator).tolist()
            return self.batch_of([train.features[i] for i in rows], [train.transcripts[i] for i in rows],
                                 [train.sources[i] for i in rows])
        n_recordings = len(self.recordings["train"])
        size = int(torch.randint(1, self.options.max_digits + 1, (), generator=generator))
        utterances = []
        for _ in range(batch_size):
            group = torch.randint(0, n_recordings, (size,), generator=generator).tolist()
            utterances.append(self._utterance("train", group, generator))
        features = [log_mel(u.samples, self.features, center=False) for u in utterances]
        return self.batch_of(features, [u.transcript for u in utterances])

    def batch_tokens(self, batch: Sequence[Tensor]) -> int:
        """Real frames in a ``train_batch``."""
        return int(batch[1].sum())

    def loss_items(self, batch: Sequence[Tensor]) -> int:
        """Transcript symbols, which the loss averages over."""
        return int(batch[3].sum())

    def loss(self, model: nn.Module, batch: Sequence[Tensor]) -> Tensor:
        """The negative log-likelihood per transcript symbol."""
        features, lengths, targets, target_lengths = batch
        return model.nll(features, lengths, targets, target_lengths).sum() / target_lengths.sum()

    @property
    def train_tokens(self) -> int:
        return 0

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "valid", *, max_batches: int | None = None,
                 details: bool = False) -> dict[str, Any]:
        """loss, wer, cer, rtf and utterances over a split (its first ``max_batches`` batches
        when given); with ``details``, the first utterances' references and hypotheses."""
        utterances = self._split(split)
        size = self.options.eval_batch_size
        count = len(utterances) if max_batches is None else min(len(utterances), max_batches * size)
        device, was_training = device_of(model), model.training
        model.eval()
        total_nll, total_symbols, hypotheses, seconds = 0.0, 0, [], 0.0
        try:
            for start in range(0, count, size):
                rows = range(start, min(start + size, count))
                features, lengths, targets, target_lengths = (
                    t.to(device) for t in self.batch_of([utterances.features[i] for i in rows],
                                                        [utterances.transcripts[i] for i in rows],
                                                        [utterances.sources[i] for i in rows]))
                total_nll += float(model.nll(features, lengths, targets, target_lengths).sum())
                total_symbols += int(target_lengths.sum())
                started = time.perf_counter()
                ids = model.transcribe(features, lengths, beam_size=self.options.beam_size)
                seconds += time.perf_counter() - started
                hypotheses.extend(self.vocabulary.decode(row) for row in ids)
        finally:
            model.train(was_training)
        references = utterances.transcripts[:count]
        audio_seconds = sum(utterances.samples[:count]) / self.options.sample_rate
        metrics: dict[str, Any] = {"loss": total_nll / total_symbols, **error_rates(references, hypotheses),
                                   "rtf": seconds / audio_seconds, "utterances": float(count)}
        if details:
            metrics["examples"] = [{"reference": r, "hypothesis": h} for r, h in zip(references[:10], hypotheses)]
        return metrics

    def _split(self, split: str) -> Utterances:
        if split not in self._fixed:
            if not self._fixed:
                raise DataError("this speech task was opened without its data; give --data to evaluate")
            raise ConfigError(f"unknown split {split!r}; this task has {', '.join(self._fixed)}")
        return self._fixed[split]

    # ---- use and reports -----------------------------------------------------------------

    def predict(self, model: nn.Module, inputs: Sequence[str], options: Any = None) -> list[str]:
        """The transcript of each WAV file named in ``inputs`` (``seqlab.speech.transcription``).

        Raises:
            DataError: an empty line, or a file that is not a mono WAV this pipeline can read,
                naming it.
            ConfigError: options the model cannot honour (timestamps from a model without CTC,
                streaming a model that reads whole recordings).
        """
        transcriber = Transcriber(self.vocabulary, self.features, self.options.eval_batch_size)
        return transcriber.transcribe_files(model, inputs, options or TranscribeOptions())

    def describe(self) -> str:
        options = self.options
        if is_manifest(options.data):
            sizes = ", ".join(f"{name} {len(u):,} recordings ({sum(u.samples) / options.sample_rate / 60:.1f} min)"
                              for name, u in self._fixed.items())
            return (f"recordings of `{options.data}`: {sizes}; {len(self.vocabulary.characters)} characters; "
                    f"{options.n_mels} log-mel channels at {options.sample_rate} Hz")
        split = ("FSDD's official split (recordings 0-4 of every digit and speaker never trained on)"
                 if options.split == "official" else f"speaker held out: `{options.held_out_speaker}`")
        sizes = ", ".join(f"{name} {len(parts):,} recordings" for name, parts in self.recordings.items())
        fixed = ", ".join(f"{name} {len(u):,} utterances ({sum(u.samples) / self.options.sample_rate / 60:.1f} min)"
                          for name, u in self._fixed.items())
        return (f"connected spoken digits (1-{options.max_digits} per utterance) from `{options.data}`, {split}; "
                f"{sizes}; {fixed}; {options.n_mels} log-mel channels at {options.sample_rate} Hz")

    def showcase(self, model: nn.Module) -> Showcase:
        """The first test utterances' references and hypotheses."""
        examples = self.evaluate(model, "test", max_batches=1, details=True)["examples"][:SHOWN_UTTERANCES]
        lines = [f"{'ok ' if e['reference'] == e['hypothesis'] else 'ERR'} ref {e['reference']:<14} "
                 f"hyp {e['hypothesis']}" for e in examples]
        return Showcase({"Test utterances: reference and hypothesis": "\n".join(lines)})


def read_recordings(options: SpeechOptions) -> dict[str, list[tuple[Tensor, int]]]:
    """Each split's recordings (waveform at ``options.sample_rate``, digit)."""
    recordings = split_recordings(list_recordings(find_fsdd(options.data)), options.split, options.held_out_speaker)
    return {split: [(load_audio(r.path, options.sample_rate), r.digit) for r in part]
            for split, part in recordings.items()}


def read_manifest_splits(options: SpeechOptions) -> dict[str, Utterances]:
    """The frames and transcripts of a manifest's recordings, shuffled with ``data_seed`` and
    cut by ``split_fractions``."""
    parts = split_by_fractions(read_manifest(options.data), options.split_fractions, options.data_seed,
                               f"recordings in {options.data}")
    return {split: manifest_utterances(part, options.features) for split, part in parts.items()}
