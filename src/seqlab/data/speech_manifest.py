"""Recordings with their transcripts, listed in a TSV manifest: one ``recording.wav<TAB>transcript``
line each (a relative path is read from the manifest's folder), as Kaldi's ``wav.scp`` and
``text`` files, or a Common Voice TSV, say in two. Empty lines are skipped; every malformed
line is a ``DataError`` naming ``file:line``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

from torch import Tensor

from seqlab.data.audio import FeatureConfig, load_audio, log_mel
from seqlab.data.tsv import read_tsv
from seqlab.errors import DataError

MIN_SECONDS = 0.1                     # the shortest recording every recogniser's stem can read


@dataclass
class Utterances:
    """Fixed utterances of one split: their frames and transcripts."""

    features: list[Tensor]          # (T_i, F) log-mel frames
    transcripts: list[str]
    samples: list[int]              # each utterance's audio samples
    sources: list[str]              # where each came from, for error messages

    def __len__(self) -> int:
        return len(self.transcripts)


class ManifestEntry(NamedTuple):
    """One recording, its transcript, and where the manifest names it (``file:line``)."""

    path: Path
    transcript: str
    where: str


def is_manifest(data: str) -> bool:
    """Whether ``data`` names a manifest file (rather than a folder of recordings)."""
    return Path(data).is_file()


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """The entries of the manifest ``path``.

    Raises:
        DataError: an unreadable or empty manifest, or a line without a tab, path or transcript,
            naming it as ``file:line``.
    """
    path = Path(path)
    if path.suffix.lower() == ".wav":
        raise DataError(f"--data {str(path)!r} is a recording; give a manifest of recording<TAB>transcript lines "
                        "or a folder of FSDD recordings")
    entries = []
    for line in read_tsv(path):
        audio = Path(line.label)
        entries.append(ManifestEntry(audio if audio.is_absolute() else path.parent / audio, line.text, line.where))
    if not entries:
        raise DataError(f"{path} lists no recordings; write one recording<TAB>transcript line each")
    return entries


def manifest_utterances(entries: Sequence[ManifestEntry], config: FeatureConfig) -> Utterances:
    """The log-mel frames (``center=False``) of each entry's recording, with its transcript.

    Raises:
        DataError: a recording that cannot be read or is too short, naming its manifest line.
    """
    features, samples = [], []
    for entry in entries:
        try:
            audio = load_audio(entry.path, config.sample_rate)
        except DataError as error:
            raise DataError(f"{entry.where}: {error}") from None
        check_duration(audio, config.sample_rate, f"{entry.where}: {entry.path}")
        features.append(log_mel(audio, config, center=False))
        samples.append(len(audio))
    return Utterances(features, [entry.transcript for entry in entries], samples, [entry.where for entry in entries])


def check_duration(samples: Tensor, sample_rate: int, name: str) -> None:
    """DataError naming the recording when it is shorter than every model's stem can read."""
    if len(samples) < MIN_SECONDS * sample_rate:
        raise DataError(f"{name}: the recording lasts {len(samples) / sample_rate:.3f} s; give at least "
                        f"{MIN_SECONDS} s of speech")
