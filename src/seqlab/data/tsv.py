"""Labelled examples from TSV files: one ``label<TAB>text`` line per example.

Every malformed line is a ``DataError`` naming ``file:line``; a directory holds one file per
split (``train.tsv``, ``dev.tsv`` or ``valid.tsv`` or ``val.tsv``, ``test.tsv``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import NamedTuple, Sequence, TypeVar

from seqlab.errors import DataError

Item = TypeVar("Item")
SPLIT_NAMES = {"train": ("train",), "valid": ("dev", "valid", "val"), "test": ("test",)}


class LabeledText(NamedTuple):
    """One example and where it came from (``file:line``), for error messages."""

    label: str
    text: str
    where: str


def find_tsv_files(directory: Path) -> dict[str, Path]:
    """The train, valid and test files of ``directory``: ``NAME.tsv``, or a name ending in
    ``_NAME.tsv``, ``-NAME.tsv`` or ``.NAME.tsv``, where NAME is train; dev, valid or val; test."""
    files = sorted(directory.glob("*.tsv"))
    found = {}
    for split, names in SPLIT_NAMES.items():
        matches = [file for file in files for name in names
                   if file.stem == name or file.stem.endswith((f"_{name}", f"-{name}", f".{name}"))]
        if len(matches) != 1:
            wanted = " or ".join(f"{name}.tsv" for name in names)
            problem = "has no" if not matches else f"has {len(matches)} candidates for the"
            raise DataError(f"directory {str(directory)!r} {problem} {split} file ({wanted}); "
                            f"{'found ' + ', '.join(f.name for f in matches) if matches else 'give one'}")
        found[split] = matches[0]
    return found


def read_tsv(path: Path) -> list[LabeledText]:
    """The ``label<TAB>text`` lines of ``path`` (UTF-8); empty lines are skipped, and label and
    text are stripped of surrounding whitespace. The text is all after the first tab.

    Raises:
        DataError: an unreadable or empty file, or a line without a tab, label or text, naming
            it as ``file:line``.
    """
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {str(path)!r}: {error}") from None
    examples = []
    for number, line in enumerate(content.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line:
            continue
        label, tab, text = line.partition("\t")
        where = f"{path}:{number}"
        if not tab:
            raise DataError(f"{where} has no tab; write each example as label<TAB>text")
        if not label.strip():
            raise DataError(f"{where} has an empty label; write each example as label<TAB>text")
        if not text.strip():
            raise DataError(f"{where} has an empty text; write each example as label<TAB>text")
        examples.append(LabeledText(label.strip(), text.strip(), where))
    if not examples:
        raise DataError(f"{path} has no examples; write one label<TAB>text line per example")
    return examples


def split_by_fractions(items: Sequence[Item], fractions: Sequence[float], seed: int, what: str) -> dict[str, list[Item]]:
    """``items`` shuffled with ``seed`` and cut into train, valid and test by ``fractions``
    (rounded counts; test takes the rest).

    Raises:
        DataError: a split left empty, saying how many ``what`` (e.g. "examples in reviews.tsv")
            there are.
    """
    items = list(items)
    random.Random(seed).shuffle(items)
    n_train, n_valid = round(len(items) * fractions[0]), round(len(items) * fractions[1])
    splits = {"train": items[:n_train], "valid": items[n_train:n_train + n_valid], "test": items[n_train + n_valid:]}
    if not all(splits.values()):
        raise DataError(f"{len(items)} {what} are too few to split into train, valid and test by "
                        f"{', '.join(map(str, fractions))}; give more")
    return splits
