"""Text corpora: the built-in one, and any UTF-8 text file.

The built-in corpus is the English text of CPython's ``pydoc_data.topics`` (the help topics of
the language reference, about 465 KB): present wherever CPython is, so seqlab works with no
download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seqlab.errors import DataError

BUILTIN = "pydoc-topics"


@dataclass(frozen=True)
class Corpus:
    """A named text. ``source`` is the file it was read from, or ``None`` for the built-in one."""

    name: str
    text: str
    source: str | None


def builtin_corpus() -> Corpus:
    """CPython's help topics, in sorted topic order, separated by blank lines."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key].strip("\n") for key in sorted(topics)) + "\n"
    return Corpus(BUILTIN, text, None)


def load_corpus(source: str | Path | None = None) -> Corpus:
    """The built-in corpus when ``source`` is None or ``"pydoc-topics"``, else a text file."""
    if source is None or str(source) == BUILTIN:
        return builtin_corpus()
    path = Path(source)
    return Corpus(path.stem, read_text(path), str(path.resolve()))


def read_text(path: str | Path) -> str:
    """The whole file as text, or a ``DataError`` saying why it is not usable text.

    Refuses a missing path, a directory, an empty file, a binary file (one with NUL bytes) and
    bytes that are not UTF-8, naming the byte offset of the first bad byte.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {str(path)!r} does not exist")
    if path.is_dir():
        raise DataError(f"data path {str(path)!r} is a directory; pass a UTF-8 text file")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"data file {str(path)!r} is empty; pass a file with text in it")
    nul = raw.find(b"\0")
    if nul >= 0:
        raise DataError(
            f"data file {str(path)!r} looks binary (NUL byte at offset {nul}); "
            "pass a UTF-8 text file"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"data file {str(path)!r} is not UTF-8 (byte 0x{raw[error.start]:02x} at offset "
            f"{error.start}); convert it, e.g. with iconv -t UTF-8"
        ) from None
