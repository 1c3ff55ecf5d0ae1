"""Tokenizers: text to integer ids and back, each saved as one self-contained ``tokenizer.json``.

Four kinds behind one interface (``encode``, ``encode_with_lengths``, ``decode``, ``to_json``),
each with the condition under which ``decode(encode(text)) == text``:

- ``char``: a token is one Unicode character. Lossless when every character of ``text`` was
  seen in training.
- ``word``: a token is a maximal run of non-whitespace (``\\S+``) and ``decode`` joins words with
  single spaces, so it is lossy on whitespace: lossless when every word was seen in training and
  ``text`` is words separated by single spaces.
- ``bpe``: a byte-level BPE piece (Sennrich et al. 2016, as in GPT-2), trained by HF
  ``tokenizers``. Always lossless: all 256 bytes are in the vocabulary, so nothing is unknown.
- ``unigram``: a Unigram LM piece (Kudo 2018), trained by HF ``tokenizers`` over Metaspace words.
  Lossless when every character was seen in training and ``text`` has no ``"▁"`` (U+2581),
  since Metaspace writes spaces as ``▁`` and decodes every ``▁`` back to a space, and no literal
  ``"<unk>"``, which HF matches as the unknown token.

Unigram uses Metaspace with ``prepend_scheme="never"``: HF's default (``"always"``) prepends a
``▁`` to the text and its decoder strips the first one, so a text that starts with a space loses
it. With ``"never"`` the first word is split like a word after a newline, as under byte-level BPE
with ``add_prefix_space=False``, and runs of spaces and newlines round-trip exactly.

Ids: ``char`` and ``word`` put ``<unk>`` at 0, then the sorted characters or the words from most
to least frequent; ``unigram`` also puts ``<unk>`` at 0; ``bpe`` has no ``<unk>``. ``decode``
writes the unknown id as the literal ``<unk>``; ``word`` and ``unigram`` read the literal text
``<unk>`` as the unknown id too. Unseen symbols follow the tokenizer's ``unknown``
policy: ``"replace"`` maps them to ``unk_id`` (under ``unigram`` a run of unseen characters
becomes one ``<unk>``), ``"error"`` raises a ``DataError`` naming the first one.

Two more kinds are never trained here but read from Hugging Face ``tokenizer.json`` files
(``seqlab.interop.hf.tokenizer.read_tokenizer``), and saved and loaded like the others:
``wordpiece`` (BERT's WordPiece, Wu et al. 2016) and ``wordlevel`` (a word list). An imported
tokenizer of any HF kind keeps its own normalizer, pre-tokenizer, decoder and unknown token
(``[UNK]`` in BERT, the Unigram model's ``unk_id`` in T5); ``unk_id`` and the unknown text are
read from the HF model, not assumed to be ``<unk>``. ``encode`` never adds special tokens (the
HF post-processor's ``[CLS]``/``[SEP]`` or Llama's ``<s>``): a caller that needs them adds them.

A ``word`` tokenizer trained with ``markers=True`` (for text read one sentence per line,
``seqlab.data.sentences``) also holds the sentence markers, in the ids KenLM's ARPA vocabulary
gives them in ``seqlab.classical.arpa``: ``<unk>`` 0, ``</s>`` 1, the words from 2, and ``<s>``
last; ``marker_ids`` says where they are.
"""

from __future__ import annotations

import abc
import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import tokenizers as hf
from tokenizers import decoders, models, pre_tokenizers, trainers

from seqlab.errors import ConfigError, DataError

TokenizerKind = Literal["char", "word", "bpe", "unigram"]
UnknownPolicy = Literal["replace", "error"]
HFModelKind = Literal["bpe", "unigram", "wordpiece", "wordlevel"]  # HF ``models.*`` class, lower case
KINDS: tuple[str, ...] = get_args(TokenizerKind)                   # the kinds train_tokenizer builds
IMPORTED_KINDS: tuple[str, ...] = ("wordpiece", "wordlevel")        # read from HF files, never trained
SAVED_KINDS: tuple[str, ...] = KINDS + IMPORTED_KINDS               # the kinds tokenizer_from_json reads
UNKNOWN_POLICIES: tuple[str, ...] = get_args(UnknownPolicy)

FORMAT_VERSION = 1
UNK = "<unk>"
SENTENCE_START, SENTENCE_END = "<s>", "</s>"
DEFAULT_SUBWORD_VOCAB_SIZE = 1024
MIN_VOCAB_SIZE = {"word": 2, "bpe": 256, "unigram": 2}  # bpe: the 256 byte symbols come first
MIN_MARKED_VOCAB_SIZE = 4                                # <unk>, </s>, <s> and one word
WORD = re.compile(r"\S+")


class Tokenizer(abc.ABC):
    """Text to token ids and back; the shared part of every kind.

    A subclass provides ``_tokenize`` (ids with their character spans), ``_decode`` (valid ids
    to text) and ``_payload`` (what ``to_json`` stores besides kind and policy).

    Attributes:
        kind: "char", "word", "bpe" or "unigram"; or, imported, "wordpiece" or "wordlevel".
        vocab_size: the number of ids; every id is in ``[0, vocab_size)``.
        unk_id: the id of the unknown token, or None when the tokenizer cannot meet an unknown
            (byte-level bpe).
        unk_token: the text of the unknown token (``<unk>``; an imported one's own, e.g. ``[UNK]``).
        unknown: the default policy for unseen symbols, "replace" or "error".
    """

    unit = "character"  # what an unseen symbol is called in error messages
    unk_token = UNK

    def __init__(self, kind: str, *, vocab_size: int, unk_id: int | None, unknown: UnknownPolicy):
        self.kind = kind
        self.vocab_size = vocab_size
        self.unk_id = unk_id
        self.unknown = _check_policy(unknown)

    def encode(self, text: str, *, unknown: UnknownPolicy | None = None) -> list[int]:
        """Token ids of ``text``; ``unknown`` overrides the tokenizer's policy for this call."""
        return self.encode_with_lengths(text, unknown=unknown)[0].tolist()

    def encode_with_lengths(
        self, text: str, *, unknown: UnknownPolicy | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of ``text`` and how many of its characters each token accounts for.

        Token i owns ``text[end[i-1]:end[i]]``, where ``end`` is where the token's span ends
        (so whitespace before a token belongs to it) and the last token also owns any text after
        it. Hence ``char_lengths.sum() == len(text)`` whenever there is a token, and bits per
        character is ``sum(-log2 p(token)) / char_lengths.sum()`` under any tokenizer. A token
        may own 0 characters: byte-level BPE can split one character over several tokens, and
        the character goes to the first of them.

        Returns:
            ids: (N,) int64 token ids.
            char_lengths: (N,) int64 characters of ``text`` owned by each token.
        Raises:
            DataError: under the "error" policy, naming the first unseen symbol and its position.
        """
        ids, _, ends = self.encode_with_spans(text, unknown=unknown)
        char_lengths = np.diff(ends, prepend=0)
        if len(char_lengths):
            char_lengths[-1] += len(text) - ends[-1]
        return ids, char_lengths

    def encode_with_spans(
        self, text: str, *, unknown: UnknownPolicy | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids of ``text`` and the span ``text[start:end]`` each was read from.

        Returns:
            ids, starts, ends: (N,) int64 each.
        Raises:
            DataError: under the "error" policy, naming the first unseen symbol and its position.
        """
        ids, starts, ends = self._tokenize(text)
        policy = self.unknown if unknown is None else _check_policy(unknown)
        if policy == "error" and self.unk_id is not None:
            unseen = np.flatnonzero(ids == self.unk_id)
            if len(unseen):
                first = unseen[0]
                raise DataError(self._unseen_message(text, int(starts[first]), int(ends[first])))
        return ids, starts, ends

    @property
    def marker_ids(self) -> tuple[int, int] | None:
        """The ids of ``<s>`` and ``</s>`` when the vocabulary holds both, else None."""
        return None

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, ``unk_id`` written as ``unk_token``; DataError for an id outside."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        outside = np.flatnonzero((ids < 0) | (ids >= self.vocab_size))
        if len(outside):
            raise DataError(
                f"token id {ids[outside[0]]} is outside the {self.kind} tokenizer's vocabulary of "
                f"{self.vocab_size} ids; decode ids produced by this tokenizer"
            )
        return self._decode(ids.tolist())

    def to_json(self) -> str:
        """All that rebuilds this tokenizer: ``{"seqlab_tokenizer": 1, "kind": ..., ...}``.

        ``bpe`` and ``unigram`` embed the HF tokenizer's own JSON under ``"hf_tokenizer"``.
        """
        header = {"seqlab_tokenizer": FORMAT_VERSION, "kind": self.kind, "unknown": self.unknown}
        return json.dumps({**header, **self._payload()})

    def save(self, path: str | Path) -> None:
        """Write ``to_json()`` to ``path`` (conventionally ``tokenizer.json``)."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    def _unseen_message(self, text: str, start: int, end: int) -> str:
        whole_span = self.unit == "word" or text[start:end] == self.unk_token  # else: first unseen character
        symbol = text[start:end] if whole_span else text[start]
        codepoint = f" (U+{ord(symbol):04X})" if len(symbol) == 1 else ""
        return (
            f"text contains {symbol!r}{codepoint} at character {start}, which is not in the "
            f"{self.kind} tokenizer's vocabulary; use {self.unit}s seen in training"
        )

    @abc.abstractmethod
    def _tokenize(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N,) int64 ids, (N,) int64 start and (N,) int64 end character offsets of each token."""

    @abc.abstractmethod
    def _decode(self, ids: list[int]) -> str:
        """Text of ids already checked to be in range."""

    @abc.abstractmethod
    def _payload(self) -> dict[str, Any]:
        """What ``to_json`` stores besides the kind and the policy."""


class VocabTokenizer(Tokenizer):
    """``char`` and ``word``: split the text, then look every piece up in a list vocabulary.

    Args:
        kind: "char" (pieces are characters) or "word" (pieces are ``\\S+`` runs).
        vocab: the piece of each id, ``vocab[0] == "<unk>"``.
        unknown: the default policy for unseen pieces.
    """

    def __init__(self, kind: Literal["char", "word"], vocab: list[str], *, unknown: UnknownPolicy):
        super().__init__(kind, vocab_size=len(vocab), unk_id=0, unknown=unknown)
        self.vocab = list(vocab)
        self.unit = "character" if kind == "char" else "word"
        self._separator = "" if kind == "char" else " "
        self._id_of = {piece: token_id for token_id, piece in enumerate(self.vocab)}

    def _tokenize(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.kind == "char":
            pieces, starts = list(text), np.arange(len(text), dtype=np.int64)
            ends = starts + 1
        else:
            matches = list(WORD.finditer(text))
            pieces = [match.group() for match in matches]
            bounds = (bound for match in matches for bound in match.span())
            spans = np.fromiter(bounds, dtype=np.int64, count=2 * len(matches)).reshape(-1, 2)
            starts, ends = spans[:, 0], spans[:, 1]
        id_of = self._id_of.get
        ids = np.fromiter((id_of(piece, 0) for piece in pieces), dtype=np.int64, count=len(pieces))
        return ids, starts, ends

    @property
    def marker_ids(self) -> tuple[int, int] | None:
        start, end = self._id_of.get(SENTENCE_START), self._id_of.get(SENTENCE_END)
        return None if self.kind != "word" or start is None or end is None else (start, end)

    def _decode(self, ids: list[int]) -> str:
        return self._separator.join(map(self.vocab.__getitem__, ids))

    def _payload(self) -> dict[str, Any]:
        return {"vocab": self.vocab}


class HFTokenizer(Tokenizer):
    """``bpe``, ``unigram``, ``wordpiece``, ``wordlevel``: an HF ``tokenizers.Tokenizer``
    (trained here or imported) and its fast Rust paths.

    The kind is the HF model's class. The unknown token is the model's own (``unk_token``, or
    a Unigram's ``unk_id``); a model without one (byte-level BPE, which covers all 256 bytes)
    has ``unk_id`` None, even if it learned ``"<unk>"`` as a piece. HF reports offsets in
    characters (Python string indices), not UTF-8 bytes, also under the ByteLevel pre-tokenizer:
    the byte tokens of one multi-byte character all carry that character's span.
    """

    def __init__(self, kind: HFModelKind, backend: hf.Tokenizer, *, unknown: UnknownPolicy):
        unk_token = _unknown_token(backend)
        unk_id = None if unk_token is None else backend.token_to_id(unk_token)
        super().__init__(kind, vocab_size=backend.get_vocab_size(), unk_id=unk_id, unknown=unknown)
        self.backend = backend
        self.unk_token = UNK if unk_token is None else unk_token
        self.unit = "word" if kind in IMPORTED_KINDS else "character"  # an unseen word is one unknown

    def _tokenize(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        try:
            encoding = self.backend.encode(text, add_special_tokens=False)
        except Exception as error:  # HF's bare Exception, e.g. a unigram model without unk_id
            raise DataError(f"the {self.kind} tokenizer cannot encode this text "
                            f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
        spans = np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        return np.array(encoding.ids, dtype=np.int64), spans[:, 0], spans[:, 1]

    def _decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=False)

    def _payload(self) -> dict[str, Any]:
        return {"hf_tokenizer": json.loads(self.backend.to_str())}


def _unknown_token(backend: hf.Tokenizer) -> str | None:
    """The HF model's unknown token: ``unk_token`` (BPE, WordPiece, WordLevel), or the piece at
    a Unigram's ``unk_id`` (which the Python binding reads only from the model's JSON)."""
    model = backend.model
    if isinstance(model, models.Unigram):
        unk_id = json.loads(model.__getstate__()).get("unk_id")
        return None if unk_id is None else backend.id_to_token(unk_id)
    return getattr(model, "unk_token", None)


def train_tokenizer(
    kind: str, text: str, *, vocab_size: int | None = None, unknown: UnknownPolicy = "replace",
    markers: bool = False,
) -> Tokenizer:
    """Build a tokenizer of ``kind`` from ``text``.

    Args:
        kind: "char", "word", "bpe" or "unigram".
        text: the training text.
        vocab_size: the most ids to use, ``<unk>`` included. ``char`` takes none (its vocabulary
            is every character of ``text``); ``word`` keeps all words when None, else the
            ``vocab_size - 1`` most frequent (ties: first occurrence first; with ``markers``,
            the ``vocab_size - 3`` most frequent); ``bpe`` and ``unigram`` default to 1024 and
            may stop short on a small text.
        unknown: the default policy for unseen symbols, "replace" or "error".
        markers: (``word`` only) add the sentence markers: ``<unk>``, ``</s>``, the words of
            ``text`` (literal ``<s>`` and ``</s>`` left out), then ``<s>``.
    Raises:
        ConfigError: an unknown kind or policy, a vocab_size that does not apply or is too small,
            or markers for a kind other than word.
        DataError: empty text, or (``word``) text without a word.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")
    _check_policy(unknown)
    if markers and kind != "word":
        raise ConfigError(f"sentence markers are words: only the word tokenizer holds them, not {kind}")
    if not text:
        raise DataError(f"cannot train a {kind} tokenizer on empty text; pass a non-empty text")
    if kind == "char":
        if vocab_size is not None:
            raise ConfigError(
                "vocab_size does not apply to the char tokenizer (it keeps every character); "
                "leave it unset"
            )
        return VocabTokenizer("char", [UNK, *sorted(set(text))], unknown=unknown)
    if vocab_size is None and kind != "word":
        vocab_size = DEFAULT_SUBWORD_VOCAB_SIZE
    minimum = MIN_MARKED_VOCAB_SIZE if markers else MIN_VOCAB_SIZE[kind]
    if vocab_size is not None and (not isinstance(vocab_size, int) or vocab_size < minimum):
        raise ConfigError(
            f"vocab_size of the {kind} tokenizer{' with sentence markers' if markers else ''} must be "
            f"an integer >= {minimum}, got {vocab_size!r}"
        )
    if kind == "word":
        return VocabTokenizer("word", _word_vocab(text, vocab_size, markers), unknown=unknown)
    backend = (_train_bpe if kind == "bpe" else _train_unigram)(text, vocab_size)
    # HF's JSON reader can move a unigram score by one ulp; going through it once here makes the
    # trained tokenizer the very one that a save and load give back.
    return HFTokenizer(kind, hf.Tokenizer.from_str(backend.to_str()), unknown=unknown)


def _word_vocab(text: str, vocab_size: int | None, markers: bool = False) -> list[str]:
    """``<unk>``, then the words of ``text`` by falling count, ties in order of first occurrence;
    with ``markers``, ``</s>`` before the words and ``<s>`` after them."""
    counts = Counter(WORD.findall(text))
    for special in (UNK, SENTENCE_START, SENTENCE_END) if markers else (UNK,):
        counts.pop(special, None)
    if not counts:
        raise DataError("the word tokenizer's training text is all whitespace; pass some words")
    reserved = 3 if markers else 1
    most_common = counts.most_common(None if vocab_size is None else vocab_size - reserved)
    words = [word for word, _ in most_common]
    return [UNK, SENTENCE_END, *words, SENTENCE_START] if markers else [UNK, *words]


def _train_bpe(text: str, vocab_size: int) -> hf.Tokenizer:
    backend = hf.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([text], trainer)
    return backend


def _train_unigram(text: str, vocab_size: int) -> hf.Tokenizer:
    backend = hf.Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    backend.decoder = decoders.Metaspace(prepend_scheme="never")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, unk_token=UNK, special_tokens=[UNK], show_progress=False
    )
    n_symbols = len(set(text.replace(" ", "▁")))
    too_small = ConfigError(
        f"unigram vocab_size {vocab_size} cannot hold the {n_symbols} distinct characters of the "
        f"training text plus <unk>; use a vocab_size of at least {n_symbols + 2}"
    )
    try:
        backend.train_from_iterator([text], trainer)
    except Exception as error:  # HF's bare Exception: "not large enough to contain all chars"
        raise too_small from error
    if backend.get_vocab_size() > vocab_size:  # HF overshoots just above the character count
        raise too_small
    return backend


def tokenizer_from_json(data: str) -> Tokenizer:
    """Rebuild a tokenizer from ``Tokenizer.to_json()`` output; DataError if it is not one."""
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as error:
        raise DataError(f"tokenizer JSON is malformed ({error}); save it again") from error
    if not isinstance(payload, dict) or payload.get("seqlab_tokenizer") != FORMAT_VERSION:
        raise DataError(
            f'not a seqlab tokenizer: expected a JSON object with "seqlab_tokenizer": '
            f"{FORMAT_VERSION}"
        )
    kind, unknown = payload.get("kind"), payload.get("unknown")
    if kind not in SAVED_KINDS or unknown not in UNKNOWN_POLICIES:
        raise DataError(
            f"tokenizer JSON has kind {kind!r} and unknown {unknown!r}; "
            f"expected a kind in {SAVED_KINDS} and an unknown policy in {UNKNOWN_POLICIES}"
        )
    if kind in ("char", "word"):
        vocab = payload.get("vocab")
        if not (isinstance(vocab, list) and vocab[:1] == [UNK]
                and all(isinstance(piece, str) for piece in vocab)):
            raise DataError(f'{kind} tokenizer JSON needs "vocab", strings starting with "{UNK}"')
        return VocabTokenizer(kind, vocab, unknown=unknown)
    try:
        backend = hf.Tokenizer.from_str(json.dumps(payload["hf_tokenizer"]))
    except Exception as error:  # KeyError, or HF's bare Exception for a bad tokenizer description
        raise DataError(f'{kind} tokenizer JSON has no valid "hf_tokenizer" ({error!r})') from error
    model_name = type(backend.model).__name__
    if model_name.lower() != kind:
        raise DataError(f"{kind} tokenizer JSON holds an HF {model_name} model")
    return HFTokenizer(kind, backend, unknown=unknown)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer ``Tokenizer.save`` wrote; DataError if the file is missing or malformed."""
    path = Path(path)
    try:
        data = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read tokenizer file {str(path)!r}: {error}") from error
    try:
        return tokenizer_from_json(data)
    except DataError as error:
        raise DataError(f"tokenizer file {str(path)!r}: {error}") from error


def _check_policy(unknown: str) -> UnknownPolicy:
    if unknown not in UNKNOWN_POLICIES:
        raise ConfigError(f"unknown must be 'replace' or 'error', got {unknown!r}")
    return unknown
