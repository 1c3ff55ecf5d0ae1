"""Hugging Face ``tokenizer.json`` files in and out of seqlab tokenizers.

``tokenizer.json`` is what HF ``tokenizers`` (and ``transformers``' fast tokenizers, through
``save_pretrained``) write: one JSON object with the model (``BPE``, ``Unigram``, ``WordPiece``
or ``WordLevel``, with its vocabulary), the normalizer, pre-tokenizer, post-processor, decoder
and the added tokens. seqlab's ``bpe`` and ``unigram`` tokenizers are HF tokenizers already,
so both directions keep the file's pipeline as it is and the ids unchanged:

- :func:`read_tokenizer` loads a directory's ``tokenizer.json`` through HF ``tokenizers`` into
  a seqlab :class:`~seqlab.data.tokenizers.HFTokenizer` of the model's kind. Its ``encode``
  gives the ids of HF's ``encode(text, add_special_tokens=False)``: the post-processor's
  special tokens (BERT's ``[CLS]``/``[SEP]``, Llama's ``<s>``) are not added, since a
  language model scores running text; a caller that wants them prepends or appends their ids
  (for Llama, ``bos_token_id`` from the checkpoint's ``special_tokens``).
- :func:`tokenizer_json` writes a seqlab ``bpe`` or ``unigram`` tokenizer (or an imported one)
  as such a file, which ``tokenizers.Tokenizer.from_str`` and ``transformers``'
  ``PreTrainedTokenizerFast(tokenizer_file=...)`` read into a tokenizer that encodes to the
  same ids. ``char`` and ``word`` tokenizers are seqlab's own and have no HF form.
"""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers as hf

from seqlab.data.tokenizers import (
    SAVED_KINDS, HFTokenizer, Tokenizer, UnknownPolicy, tokenizer_from_json,
)
from seqlab.errors import CheckpointError, ConfigError, DataError
from seqlab.interop.hf.files import TOKENIZER_FILE


def read_tokenizer(directory: str | Path, *, unknown: UnknownPolicy = "replace") -> Tokenizer:
    """The tokenizer of an HF model directory, from its ``tokenizer.json``.

    A ``tokenizer.json`` that seqlab itself saved (``{"seqlab_tokenizer": 1, ...}``) is read
    as that, so the directory of a seqlab run works too.

    Args:
        directory: a directory holding ``tokenizer.json``.
        unknown: the policy for text the tokenizer maps to its unknown token, "replace" or "error".
    Returns:
        An ``HFTokenizer`` of kind "bpe", "unigram", "wordpiece" or "wordlevel" (the HF model's).
    Raises:
        CheckpointError: no such directory or file, or a file HF ``tokenizers`` cannot read.
    """
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise CheckpointError(f"{str(Path(directory))!r} has no {TOKENIZER_FILE}; save the tokenizer with "
                              f"transformers' tokenizer.save_pretrained, which writes {TOKENIZER_FILE}")
    try:
        text = path.read_text(encoding="utf-8")
        description = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{str(path)!r} is not valid JSON ({error}); save the tokenizer again") from None
    if isinstance(description, dict) and "seqlab_tokenizer" in description:
        try:
            return tokenizer_from_json(text)
        except DataError as error:
            raise CheckpointError(f"{str(path)!r}: {error}") from None
    try:
        backend = hf.Tokenizer.from_str(text)
    except Exception as error:  # HF raises a bare Exception for a description it cannot read
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{str(path)!r} is not a tokenizer that HF tokenizers reads ({detail})") from None
    kind = type(backend.model).__name__.lower()
    if kind not in SAVED_KINDS:  # every model HF tokenizers has today is one of them
        raise CheckpointError(f"{str(path)!r} holds an HF {type(backend.model).__name__} tokenizer; "
                              f"seqlab reads {', '.join(SAVED_KINDS)}")
    return HFTokenizer(kind, backend, unknown=unknown)


def tokenizer_json(tokenizer: Tokenizer) -> str:
    """``tokenizer`` as an HF ``tokenizer.json`` (its text), for ``save_model``'s ``extra_files``.

    Raises:
        ConfigError: a ``char`` or ``word`` tokenizer, which has no HF form.
    """
    if not isinstance(tokenizer, HFTokenizer):
        raise ConfigError(f"a {tokenizer.kind} tokenizer has no Hugging Face tokenizer.json form; train with "
                          "--tokenizer bpe or unigram to export the tokenizer with the model")
    return tokenizer.backend.to_str(pretty=True)
