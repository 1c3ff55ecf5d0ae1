"""Tagged sentences from CoNLL-U files (Universal Dependencies), read with the ``conllu`` package.

A CoNLL-U sentence is a block of token lines ended by a blank line; ``#`` lines are comments.
A token line has ten tab-separated fields: ID, FORM, LEMMA, UPOS, XPOS, FEATS, HEAD, DEPREL,
DEPS, MISC. Multiword-token lines (ID ``3-4``) and empty nodes (ID ``5.1``) are not tagged
words and are skipped, as every UD tagger does; every ID the CoNLL-U specification allows is
accepted (an empty node's decimal ID may start at 0, as in ``0.1``). The ``conllu`` package parses the fields but
accepts lines with too few of them; the line checks here make every malformed line a
``DataError`` that names the file and line number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import conllu
from conllu.exceptions import ParseException

from seqlab.errors import DataError

Column = Literal["upos", "xpos"]
N_FIELDS = 10
_WORD_ID = re.compile(r"[1-9][0-9]*")
# A multiword token spans words (3-4); an empty node has a decimal ID above 0 (8.1, and 0.1
# before the first word, as in UD English GUM).
_OTHER_ID = re.compile(r"[1-9][0-9]*-[1-9][0-9]*|(0|[1-9][0-9]*)\.[1-9][0-9]*")


@dataclass(frozen=True)
class TaggedSentence:
    """The words of one sentence and their tags."""

    words: tuple[str, ...]
    tags: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.words)


def read_conllu(path: str | Path, column: Column = "upos") -> list[TaggedSentence]:
    """Every sentence of a CoNLL-U file, with the tags of ``column``.

    Raises:
        DataError: the file is missing, unreadable, empty, or has a malformed line (wrong field
            count, a bad ID, an empty form, a missing tag); the message names the line.
    """
    path = Path(path)
    if column not in ("upos", "xpos"):
        raise DataError(f"tag column must be 'upos' or 'xpos', got {column!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"CoNLL-U file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read CoNLL-U file {str(path)!r}: {error}") from None
    sentences = [_parse_block(path, first_line, lines, column) for first_line, lines in _blocks(text)]
    sentences = [sentence for sentence in sentences if sentence is not None]
    if not sentences:
        raise DataError(f"CoNLL-U file {str(path)!r} holds no sentences")
    return sentences


def _blocks(text: str) -> Iterator[tuple[int, list[str]]]:
    """Sentence blocks as (number of their first line, their lines)."""
    block: list[str] = []
    first = 1
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not block:
                first = number
            block.append(line)
        elif block:
            yield first, block
            block = []
    if block:
        yield first, block


def _parse_block(path: Path, first_line: int, lines: list[str], column: Column) -> TaggedSentence | None:
    """One sentence; None for a block of comments only."""
    for offset, line in enumerate(lines):
        if line.startswith("#"):
            continue
        fields = line.split("\t")
        where = f"{path}:{first_line + offset}"
        if len(fields) != N_FIELDS:
            raise DataError(f"{where}: a token line needs {N_FIELDS} tab-separated fields, found {len(fields)}")
        if not (_WORD_ID.fullmatch(fields[0]) or _OTHER_ID.fullmatch(fields[0])):
            raise DataError(f"{where}: {fields[0]!r} is not a CoNLL-U token ID")
        if _WORD_ID.fullmatch(fields[0]):
            if not fields[1]:
                raise DataError(f"{where}: the word form is empty")
            tag = fields[3 if column == "upos" else 4]
            if tag in ("", "_"):
                raise DataError(f"{where}: word {fields[1]!r} has no {column.upper()} tag")
    try:
        (tokens,) = conllu.parse("\n".join(lines) + "\n\n")
    except (ParseException, ValueError) as error:
        raise DataError(f"{path}:{first_line}: malformed CoNLL-U sentence ({error})") from None
    words = [token for token in tokens if isinstance(token["id"], int)]
    if not words:
        return None
    return TaggedSentence(tuple(token["form"] for token in words), tuple(token[column] for token in words))


def find_conllu_files(data: str | Path) -> dict[str, Path]:
    """The train, dev and test files of a UD treebank directory (``*-ud-train.conllu``, ...).

    Raises:
        DataError: the directory is missing or lacks one of the three files.
    """
    directory = Path(data)
    if not directory.is_dir():
        raise DataError(f"tagging data {str(directory)!r} is not a directory of .conllu files")
    found = {}
    for split, suffix in (("train", "train"), ("valid", "dev"), ("test", "test")):
        matches = sorted(directory.glob(f"*{suffix}.conllu"))
        if len(matches) != 1:
            raise DataError(
                f"{str(directory)!r} needs exactly one *{suffix}.conllu file, found {len(matches)}"
            )
        found[split] = matches[0]
    return found
