"""The characters a recogniser writes: transcripts to symbol ids and back.

Ids 0, 1 and 2 are reserved (``seqlab.speech.recogniser``: blank or padding, BOS, EOS); the
characters of the training transcripts follow from id 3, in code-point order, the space among
them, so that CTC and the transducer learn word boundaries as a symbol like any other. A
transcript is normalised (surrounding blanks stripped, runs of whitespace made one space)
before it is encoded; a character the vocabulary does not hold is an error naming the
transcript's source, never a silent ``<unk>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from seqlab.data.json_files import read_json_file, write_json_file
from seqlab.errors import DataError
from seqlab.speech.recogniser import FIRST_SYMBOL

VOCABULARY_KIND = "seqlab-speech-vocabulary"


def normalise_transcript(text: str) -> str:
    """``text`` with surrounding whitespace stripped and inner runs of whitespace one space."""
    return " ".join(text.split())


class SymbolVocabulary:
    """The characters of a recogniser's output, id ``FIRST_SYMBOL + i`` for ``characters[i]``."""

    def __init__(self, characters: Sequence[str]):
        if not characters or len(set(characters)) != len(characters) or any(len(c) != 1 for c in characters):
            raise DataError("a speech vocabulary needs distinct single characters")
        self.characters = list(characters)
        self._ids = {character: FIRST_SYMBOL + index for index, character in enumerate(self.characters)}

    @classmethod
    def build(cls, transcripts: Iterable[str]) -> SymbolVocabulary:
        """The characters of ``transcripts`` (normalised), in code-point order."""
        characters = sorted({character for text in transcripts for character in normalise_transcript(text)})
        if not characters:
            raise DataError("the training transcripts are all empty; a recogniser needs something to write")
        return cls(characters)

    @property
    def size(self) -> int:
        """Every output id: the three reserved ones and the characters."""
        return FIRST_SYMBOL + len(self.characters)

    def encode(self, transcript: str, source: str) -> list[int]:
        """The ids of ``transcript`` (normalised).

        Raises:
            DataError: an empty transcript, or a character outside the vocabulary, naming
                ``source`` (the file or the utterance it came from).
        """
        text = normalise_transcript(transcript)
        if not text:
            raise DataError(f"{source}: the transcript is empty; every recording needs a transcript")
        unknown = sorted({character for character in text if character not in self._ids})
        if unknown:
            raise DataError(f"{source}: transcript {text!r} has {', '.join(map(repr, unknown))}, outside the "
                            f"vocabulary {''.join(self.characters)!r}; write it with those characters only")
        return [self._ids[character] for character in text]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; reserved ids are skipped."""
        return "".join(self.characters[i - FIRST_SYMBOL] for i in ids if FIRST_SYMBOL <= i < self.size)

    def id_of(self, character: str) -> int | None:
        """The id of ``character``, None if it is not in the vocabulary."""
        return self._ids.get(character)

    def save(self, path: str | Path) -> None:
        write_json_file(path, VOCABULARY_KIND, {"characters": self.characters})

    @classmethod
    def load(cls, path: str | Path) -> SymbolVocabulary:
        """The vocabulary ``save`` wrote; DataError if the file is missing or is not one."""
        return cls(read_json_file(path, VOCABULARY_KIND, "speech vocabulary", ("characters",))["characters"])
