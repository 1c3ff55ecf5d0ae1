"""Speech recognition metrics through ``jiwer``: word and character error rates.

    WER = (S + D + I) / N

over the words of all references together (S substitutions, D deletions, I insertions of the
minimum edit alignment, N reference words), and CER the same over characters, spaces included
(jiwer's definitions; Morris et al. 2004). Both are corpus-level: the edits of all utterances
summed, divided by all reference words, not a mean of per-utterance rates. They may exceed 1
when the hypotheses insert more than the references hold.
"""

from __future__ import annotations

from typing import Sequence

import jiwer

from seqlab.errors import DataError


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """``{"wer": ..., "cer": ...}`` of ``hypotheses`` against ``references`` (one per utterance).

    Raises:
        DataError: different counts, no utterance, or an empty reference (jiwer cannot score one).
    """
    if len(references) != len(hypotheses):
        raise DataError(f"{len(references)} references but {len(hypotheses)} hypotheses; give one of each per utterance")
    if not references:
        raise DataError("no utterances to score")
    empty = [index for index, text in enumerate(references) if not text.strip()]
    if empty:
        raise DataError(f"reference {empty[0]} is empty; error rates need a reference with at least one word")
    return {"wer": float(jiwer.wer(list(references), list(hypotheses))),
            "cer": float(jiwer.cer(list(references), list(hypotheses)))}
