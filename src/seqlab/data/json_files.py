"""Small JSON files that a run keeps beside its weights (a tagging vocabulary, a label set): each
records its kind, so that reading the wrong file is an error that says so, not garbage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from seqlab.errors import DataError


def write_json_file(path: str | Path, kind: str, payload: dict[str, Any]) -> None:
    """``payload`` as a JSON object tagged with ``kind``."""
    Path(path).write_text(json.dumps({"kind": kind, **payload}, ensure_ascii=False), encoding="utf-8")


def read_json_file(path: str | Path, kind: str, what: str, keys: Sequence[str]) -> dict[str, Any]:
    """The object ``write_json_file`` wrote with ``kind``.

    Raises:
        DataError: the file is missing or unreadable, is not JSON, is of another kind, or lacks
            one of ``keys``; ``what`` names it in the message ("tagging vocabulary").
    """
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read {what} {str(path)!r}: {error}") from None
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        raise DataError(f"{str(path)!r} is not a seqlab {what}")
    missing = [key for key in keys if key not in payload]
    if missing:
        raise DataError(f"{what} {str(path)!r} lacks {missing[0]!r}")
    return payload
