"""Connected spoken digits from the Free Spoken Digit Dataset (FSDD, Jackson et al. 2018).

FSDD holds 3,000 recordings of single digits, ``{digit}_{speaker}_{index}.wav`` (6 speakers, 50
recordings of each digit each, 8 kHz mono). A connected-digit utterance joins 1 to
``max_digits`` of them, each scaled to a random level, with random silent gaps between them and
a little silence at both ends, then adds white noise at a random signal-to-noise ratio; its
transcript is the digits separated by spaces (``"3 9 1"``). Training utterances are drawn
afresh for every batch from the training recordings; validation and test utterances are fixed:
each pass shuffles the split's recordings with ``data_seed`` and cuts them into groups of
random sizes, so every recording is heard once per pass.

Splits:

- ``official``: FSDD's own (its README): recordings 0-4 of every digit and speaker are the
  test set and are never heard in training; recordings 5-7 are held out from the rest for
  validation, and 8-49 train.
- ``speaker``: one speaker (``theo`` by default) is the test set, all 500 of his recordings;
  the other five speakers' recordings 0-4 validate and 5-49 train. It measures what the
  official split cannot: recognising a voice never heard.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import Tensor

from seqlab.errors import DataError

FSDD = "fsdd"
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
Split = Literal["official", "speaker"]
_NAME = re.compile(r"(\d)_([a-z]+)_(\d+)\.wav")


@dataclass(frozen=True)
class Recording:
    """One FSDD recording: what is said, by whom, its number, where it is."""

    digit: int
    speaker: str
    index: int
    path: Path


@dataclass
class ConnectedDigits:
    """One connected-digit utterance.

    Attributes:
        samples: (N,) float32 waveform.
        transcript: the digits separated by spaces, e.g. ``"3 9 1"``.
        spans: each digit's (start, end) in seconds, where its recording was placed.
    """

    samples: Tensor
    transcript: str
    spans: list[tuple[float, float]]


def find_fsdd(data: str) -> Path:
    """The directory of FSDD's ``.wav`` files that ``data`` names: a directory holding them (or
    holding ``recordings/`` with them); the name ``fsdd``, when no ``./fsdd`` exists, means
    ``$SEQLAB_DATA/fsdd`` (``SEQLAB_DATA`` defaults to ``../shared/data``).

    Raises:
        DataError: nothing found there, saying where it looked.
    """
    if data == FSDD and not Path(data).exists():
        root = Path(os.environ.get("SEQLAB_DATA", "../shared/data"))
        candidates = [root / FSDD]
    else:
        candidates = [Path(data)]
    for candidate in candidates:
        for directory in (candidate / "recordings", candidate):
            if directory.is_dir() and any(directory.glob("*.wav")):
                return directory
    where = " or ".join(repr(str(c)) for c in candidates)
    raise DataError(f"--data {data!r}: no FSDD recordings (*.wav) in {where}; give the directory of the Free "
                    "Spoken Digit Dataset (its recordings/ folder), or set SEQLAB_DATA to the folder holding fsdd/")


def list_recordings(directory: str | Path) -> list[Recording]:
    """Every ``{digit}_{speaker}_{index}.wav`` in ``directory``, sorted by speaker, digit, index.

    Raises:
        DataError: a ``.wav`` file whose name is not FSDD's, or no recording at all.
    """
    recordings = []
    for path in sorted(Path(directory).glob("*.wav")):
        match = _NAME.fullmatch(path.name)
        if match is None:
            raise DataError(f"{path}: not an FSDD file name ({{digit}}_{{speaker}}_{{index}}.wav); move it out "
                            "of the recordings folder")
        recordings.append(Recording(int(match[1]), match[2], int(match[3]), path))
    if not recordings:
        raise DataError(f"{directory}: no FSDD recordings")
    return sorted(recordings, key=lambda r: (r.speaker, r.digit, r.index))


def split_recordings(recordings: Sequence[Recording], split: Split,
                     held_out_speaker: str = "theo") -> dict[str, list[Recording]]:
    """The train, valid and test recordings of ``split`` (module docstring).

    Raises:
        DataError: an unknown split or speaker, or a split left empty by the recordings given.
    """
    if split == "official":
        parts = {"train": [r for r in recordings if r.index >= 8],
                 "valid": [r for r in recordings if 5 <= r.index <= 7],
                 "test": [r for r in recordings if r.index <= 4]}
    elif split == "speaker":
        speakers = sorted({r.speaker for r in recordings})
        if held_out_speaker not in speakers:
            raise DataError(f"held-out speaker {held_out_speaker!r} has no recordings; the speakers are "
                            f"{', '.join(speakers)}")
        others = [r for r in recordings if r.speaker != held_out_speaker]
        parts = {"train": [r for r in others if r.index >= 5], "valid": [r for r in others if r.index <= 4],
                 "test": [r for r in recordings if r.speaker == held_out_speaker]}
    else:
        raise DataError(f"unknown split {split!r}; choose official or speaker")
    empty = [name for name, part in parts.items() if not part]
    if empty:
        raise DataError(f"the {split} split leaves {empty[0]} without recordings; give the whole dataset")
    return parts


def random_groups(n_items: int, max_size: int, passes: int, generator: torch.Generator) -> list[list[int]]:
    """Groups of 1 to ``max_size`` item indices covering every item once per pass, each pass in
    a random order cut at random sizes (a pass's last group may be smaller)."""
    groups = []
    for _ in range(passes):
        order = torch.randperm(n_items, generator=generator).tolist()
        while order:
            size = int(torch.randint(1, max_size + 1, (), generator=generator))
            groups.append(order[:size])
            order = order[size:]
    return groups


def connect(waveforms: Sequence[Tensor], digits: Sequence[int], sample_rate: int, generator: torch.Generator, *,
            gap_seconds: tuple[float, float] = (0.05, 0.3), edge_seconds: float = 0.1,
            level: tuple[float, float] = (0.3, 0.9), snr_db: tuple[float, float] = (20.0, 40.0)) -> ConnectedDigits:
    """One utterance of the recordings ``waveforms`` (their ``digits``) in order.

    Each recording is scaled to a peak drawn from ``level``; gaps of silence drawn from
    ``gap_seconds`` separate them and ``edge_seconds`` of silence pad both ends; white noise at a
    signal-to-noise ratio drawn from ``snr_db`` (over the whole utterance's power) is added.
    """

    def uniform(bounds: tuple[float, float]) -> float:
        return bounds[0] + (bounds[1] - bounds[0]) * float(torch.rand((), generator=generator))

    edge = torch.zeros(round(edge_seconds * sample_rate))
    pieces, spans, position = [edge], [], len(edge)
    for number, waveform in enumerate(waveforms):
        if number:
            gap = torch.zeros(round(uniform(gap_seconds) * sample_rate))
            pieces.append(gap)
            position += len(gap)
        peak = waveform.abs().max().clamp_min(1e-4)
        pieces.append(waveform * (uniform(level) / peak))
        spans.append((position / sample_rate, (position + len(waveform)) / sample_rate))
        position += len(waveform)
    pieces.append(edge)
    samples = torch.cat(pieces)
    power = samples.pow(2).mean()
    noise_power = power / 10 ** (uniform(snr_db) / 10)
    samples = samples + noise_power.sqrt() * torch.randn(len(samples), generator=generator)
    return ConnectedDigits(samples.float(), " ".join(str(d) for d in digits), spans)
