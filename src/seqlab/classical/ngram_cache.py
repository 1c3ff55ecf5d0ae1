"""A binary cache of an n-gram model: loading it parses nothing and builds nothing.

``save_binary`` writes one safetensors file of each order's sorted keys, ln p* and ln b as the
model holds them, the discounts, the vocabulary as UTF-8 bytes, the config as metadata, and the
scorer's hash tables (``ngram_scoring.NGramScorer.arrays``: what KenLM's binary format holds, its
query structure). ``load_binary`` maps the file into memory (private, copy-on-write pages: the
operating system reads a page when it is first touched) and hands the model its tables and
``score_sentences`` its scorer as they lie in the file. ``load_arpa`` reads an ARPA file through
such a cache beside it (``seqlab score --cache``).

What is checked, and when. A corrupt file fails with a one-line ``CheckpointError`` before
anything reads what is wrong in it, but a check is made where what it protects is first used, so
that scoring does not pay for checks only other readers need (KenLM checks its binary's header
and sizes only):

- at load, the layout every reader relies on: the header, the format and version, every
  tensor's type and shape, the sizes and offsets the compiled lookups index by (a table that did
  not fit would be read outside its memory), the id of ``</s>`` against the model's;
- at the model's first search (``NGramTable.sorted_keys``), that each order's keys are strictly
  increasing, which the torch path's binary searches assume;
- when the words are first read as strings (``CachedVocabulary.words``), that they are UTF-8,
  distinct, free of whitespace and ``<s>``, start with ``<unk>``, and are as many, with ``</s>``
  where, as the header says;
- for each batch of words looked up (``slot_tables.encode_sentences``), that the word table's
  ids lie in the vocabulary.

Opening the tinyshakespeare 5-gram cache (620k n-grams, 29.5 MB) for scoring (``load_scorer``)
takes about 0.1 ms this way, loading its model too (``load_binary``) about 0.5 ms; checking
everything at load took 3.8 ms (benchmarks/arpa_load.py measures both against KenLM).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import mmap
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from seqlab.classical.arpa import WordVocabulary
from seqlab.classical.arpa_reader import read_arpa_file
from seqlab.classical.ngram import NGramConfig, NGramLM
from seqlab.classical.ngram_scoring import NGramScorer, remember_scorer, scorer_for
from seqlab.errors import CheckpointError, ConfigError, DataError

BINARY_FORMAT = "seqlab-ngram-tables"
BINARY_VERSION = "3"       # 3 holds the long words' text; 2 the scorer's tables too; 1 neither (all still load)
READABLE_VERSIONS = ("1", "2", "3")
SPACE_BUT_NEWLINE = re.compile(r"[^\S\n]")           # what str.split() splits at, newline aside
NEWLINE = ord("\n")
ASCII_SPACE_BUT_NEWLINE = np.array([chr(byte).isspace() and byte != 10 for byte in range(128)])
NUMPY_DTYPES = {name: np.dtype(dtype) for name, dtype in
                {"I64": np.int64, "U64": np.uint64, "F64": np.float64, "F32": np.float32, "U8": np.uint8}.items()}
SAFETENSORS_DTYPES = {dtype: name for name, dtype in NUMPY_DTYPES.items()}
IOV_MAX = max(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 0, 16)   # buffers one os.writev takes


def save_binary(model: NGramLM, vocabulary: WordVocabulary, path: str | Path, source: str = "") -> None:
    """Write ``model``'s tables and ``vocabulary`` as one safetensors file for ``load_binary``.

    Tensors: ``order{k}.keys`` (N_k,) int64, ``order{k}.log_prob`` and ``order{k}.log_backoff``
    as the model holds them, ``discounts`` (n, 3), ``vocabulary`` (bytes,) uint8, the words
    joined by newlines, and ``scorer.{name}``, the scorer's tables. Metadata: the format name and
    version, the ``NGramConfig`` and the id of ``</s>`` (``end_id``) as JSON, and ``source``, what
    the cache was made from (an ARPA file's size and modification time). The file is written in
    one stream (``_write_safetensors``) to a temporary file beside ``path`` (beside the file a
    symbolic link at ``path`` names), then renamed into place with the replaced file's permissions:
    a crash leaves what was at ``path`` whole, and a model mapped from the file replaced (a loaded
    cache saved over itself) keeps its pages.

    Raises:
        ConfigError: the model does not predict the vocabulary's words.
        OSError: the file cannot be written.
    """
    if model.vocab_size != len(vocabulary):
        raise ConfigError(f"the model predicts {model.vocab_size} ids but the vocabulary has "
                          f"{len(vocabulary)} words")
    arrays = {"discounts": model.discounts.detach().cpu().numpy(),
              "vocabulary": np.frombuffer("\n".join(vocabulary.words).encode("utf-8"), dtype=np.uint8)}
    for k, table in enumerate(model.tables, start=1):
        arrays[f"order{k}.keys"] = table.sorted_keys().detach().cpu().numpy()
        for name in ("log_prob", "log_backoff"):
            arrays[f"order{k}.{name}"] = getattr(table, name).detach().cpu().numpy()
    for name, array in scorer_for(model, vocabulary).arrays().items():
        arrays[f"scorer.{name}"] = array
    metadata = {"format": BINARY_FORMAT, "version": BINARY_VERSION, "end_id": json.dumps(vocabulary.end_id),
                "config": json.dumps(dataclasses.asdict(model.config)), "source": source}
    path, staging = Path(path).resolve(), None          # (through a symbolic link: the link stays)
    mode = path.stat().st_mode & 0o777 if path.is_file() else 0o666 & ~_umask()
    try:
        handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        os.close(handle)
        _write_safetensors(Path(staging), arrays, metadata)
        os.chmod(staging, mode)                              # mkstemp makes it 0600
        os.replace(staging, path)
        staging = None
    finally:
        if staging is not None:                              # (only ever seqlab's own partial file)
            Path(staging).unlink(missing_ok=True)


def _write_safetensors(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write ``arrays`` as a safetensors file (the layout ``MappedTensors`` reads) in one stream of
    writes from the file's start (``os.writev`` of the header and every array, no copies): the
    operating system then keeps the file's pages in large blocks, which a mapping of the file takes
    in a few faults where 4 KiB pages take thousands. Measured here, touching every page of a
    mapped 30 MB cache took 1.5 ms when safetensors' own writer had written it, 0.08 ms written so.
    The arrays go widest type first, so that each starts aligned to its type after the header,
    which is padded to 8 bytes."""
    arrays = {name: np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
              for name, array in sorted(arrays.items(), key=lambda item: -item[1].dtype.itemsize)}
    header, offset = {"__metadata__": metadata}, 0
    for name, array in arrays.items():
        header[name] = {"dtype": SAFETENSORS_DTYPES[array.dtype.newbyteorder("=")], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    pieces = [memoryview(len(text).to_bytes(8, "little") + text)]
    pieces += [memoryview(array).cast("B") for array in arrays.values() if array.nbytes]
    with open(path, "wb", buffering=0) as file:
        if not hasattr(os, "writev"):                            # (Windows)
            for piece in pieces:
                while piece:
                    piece = piece[file.write(piece):]
            return
        while pieces:                                            # a call writes at most ~2 GiB
            written = os.writev(file.fileno(), pieces[:IOV_MAX])
            while pieces and written >= len(pieces[0]):
                written -= len(pieces.pop(0))
            if written:
                pieces[0] = pieces[0][written:]


CACHE_SUFFIX = ".seqlab.safetensors"


def load_arpa(path: str | Path, *, cache: bool = False) -> tuple[NGramLM, WordVocabulary]:
    """The model of an ARPA file or of a binary cache (a ``.safetensors`` file ``save_binary``
    wrote). With ``cache``, an ARPA file is read through ``PATH.seqlab.safetensors`` beside it:
    loaded from there when it was made from the ARPA file as it is now (the same size and
    modification time, recorded in the cache: a file replaced by an older one is noticed) and of
    this version, else the ARPA file is parsed and the cache written aside, then renamed into place. A file at that
    name that seqlab did not write is never replaced.

    Raises:
        DataError: the ARPA file is missing or malformed; the cache cannot be read or written.
        CheckpointError: the cache is corrupt.
        ConfigError: something that is not seqlab's cache holds the cache's name.
    """
    return _through_cache(Path(path), cache, load_binary, lambda model, vocabulary: (model, vocabulary))


def load_scorer(path: str | Path, *, cache: bool = False) -> NGramScorer:
    """The scorer of an ARPA file or of a binary cache, as ``load_arpa`` finds it, for scoring only
    (``NGramScorer.score``): from a cache no model is built, the file is mapped and its scorer's
    tables and vocabulary taken as they lie, as ``kenlm.Model`` opens its binary file
    (``load_binary`` builds the model as well: 0.2 to 0.4 ms more for a 5-gram).

    Raises:
        as ``load_arpa``.
    """
    return _through_cache(Path(path), cache, _open_scorer, scorer_for)


def _through_cache(path: Path, cache: bool, open_cache: Callable, from_model: Callable):
    """``open_cache(the cache)`` for a cache, or for an ARPA file whose cache is fresh (``load_arpa``);
    else ``from_model(model, vocabulary)`` of the ARPA file, the cache written first if asked."""
    if path.suffix == ".safetensors":
        return open_cache(path)
    if not cache:
        return from_model(*read_arpa_file(path))
    cached = path.with_name(path.name + CACHE_SUFFIX)
    source = ""
    if path.is_file():
        stat = path.stat()
        source = f"{stat.st_size}:{stat.st_mtime_ns}"
    if os.path.lexists(cached):
        made_from, version = _cache_source(cached)
        if made_from == source and source and version == BINARY_VERSION:     # (an older version is remade)
            return open_cache(cached)
    model, vocabulary = read_arpa_file(path)
    try:
        save_binary(model, vocabulary, cached, source=source)
    except OSError as error:
        raise DataError(f"cannot write the n-gram cache {str(cached)!r}: {error}".replace("\n", " ")) from None
    return from_model(model, vocabulary)


def _cache_source(cached: Path) -> tuple[str, str]:
    """What the cache at ``cached`` was made from (its ``source`` metadata), and its version.

    Raises:
        ConfigError: the path holds something other than a seqlab n-gram cache.
        DataError: the cache cannot be read.
    """
    foreign = ConfigError(f"{str(cached)!r} is not a seqlab n-gram cache; move it, or score without --cache")
    if not cached.is_file():
        raise foreign
    try:
        metadata = MappedTensors(cached).metadata
    except PermissionError as error:
        raise DataError(f"cannot read the n-gram cache {str(cached)!r}: {error}") from None
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        raise foreign from None
    if metadata.get("format") != BINARY_FORMAT:
        raise foreign
    return metadata.get("source", ""), metadata.get("version", "")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_binary(path: str | Path) -> tuple[NGramLM, WordVocabulary]:
    """The model and vocabulary ``save_binary`` wrote, exactly, with the scorer's tables handed to
    ``score_sentences`` (a version 1 cache has none: the scorer is built on first use).

    Raises:
        CheckpointError: the file is missing, not a safetensors file, of another format or
            version, or its tables do not fit together (types, sizes, the number of words); later,
            at their first use, keys that are not sorted and words that are not a vocabulary's
            (see the module docstring).
    """
    where, config, vocabulary, tensors = _open(Path(path))
    scorer_arrays = _scorer_arrays(tensors)
    orders = sum(name.startswith("order") and name.endswith(".keys") for name in tensors.names())
    if orders != config.order:
        raise CheckpointError(f"{where} holds the keys of {orders} orders for a model of order {config.order}: "
                              "it is corrupt; rebuild it with save_binary")
    names = [f"order{k}.{name}" for k in range(1, config.order + 1) for name in ("keys", "log_prob", "log_backoff")]
    missing = [name for name in [*names, "discounts"] if name not in tensors.names()]
    if missing:
        raise CheckpointError(f"{where} lacks the tensors {missing}: it is corrupt; rebuild it with save_binary")
    tables = [torch.from_numpy(tensors.take(name)) for name in names]
    discounts = torch.from_numpy(tensors.take("discounts"))
    model = NGramLM(config)
    keys, log_probs, log_backoffs = tables[0::3], tables[1::3], tables[2::3]
    _check_tables(where, model, vocabulary, keys, log_probs, log_backoffs, discounts, sorted(tensors.names()))
    model.set_tables(keys, log_probs, log_backoffs, source=where)         # their order: at the first search
    model.discounts.copy_(discounts)
    if scorer_arrays:
        remember_scorer(model, vocabulary, _scorer_of(where, config, vocabulary, scorer_arrays))
    return model, vocabulary


def _open_scorer(path: Path) -> NGramScorer:
    """``load_scorer`` of a cache: its scorer, without the model (a version 1 cache, which holds no
    scorer, is loaded whole and its scorer built)."""
    where, config, vocabulary, tensors = _open(path)
    scorer_arrays = _scorer_arrays(tensors)
    if not scorer_arrays:
        return scorer_for(*load_binary(path))
    return _scorer_of(where, config, vocabulary, scorer_arrays)


def _open(path: Path) -> tuple[str, NGramConfig, CachedVocabulary, MappedTensors]:
    """A cache's name for messages, config, vocabulary and the rest of its tensors, mapped.

    Raises:
        CheckpointError: the file cannot be mapped, is not a cache of a readable version, or its
            config or vocabulary cannot be read.
    """
    where = f"n-gram cache {str(path)!r}"
    try:
        tensors = MappedTensors(path)
        metadata = tensors.metadata
        if metadata.get("format") != BINARY_FORMAT or metadata.get("version") not in READABLE_VERSIONS:
            raise CheckpointError(f"{where} is not a {BINARY_FORMAT} file of version {BINARY_VERSION} "
                                  f"(found {metadata.get('format')!r} {metadata.get('version')!r}); "
                                  "rebuild it with save_binary (or delete it: seqlab score --cache rebuilds it)")
        fields = json.loads(metadata["config"])
        if not isinstance(fields, dict) or not all(type(fields.get(name)) is int for name in ("vocab_size", "order")):
            raise ValueError("its config's vocab_size and order are not integers")
        config = NGramConfig(**fields)
        joined = tensors.take("vocabulary")
        if config.vocab_size > (len(joined) + 1) // 2:          # a word is a byte and a newline at least
            raise ValueError(f"its config's vocab_size {config.vocab_size} is more words than its vocabulary holds")
        if "end_id" in metadata:                     # version 3: the header says, the words confirm when split
            end_id = json.loads(metadata["end_id"])
            if end_id is not None and (type(end_id) is not int or not 0 <= end_id < config.vocab_size):
                raise ValueError(f"its header gives </s> the id {end_id!r}, which is not a word's")
            vocabulary = CachedVocabulary(joined, where, config.vocab_size, end_id)
        else:
            vocabulary = CachedVocabulary.counting(joined.tobytes(), where)
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError(f"{where} cannot be read as an n-gram cache: its header nests too deep") from None
    except KeyError as error:
        raise CheckpointError(f"{where} cannot be read as an n-gram cache: it lacks {error}") from None
    except (OSError, TypeError, ValueError, ConfigError) as error:
        raise CheckpointError(f"{where} cannot be read as an n-gram cache: {error}".replace("\n", " ")) from None
    return where, config, vocabulary, tensors


def _scorer_arrays(tensors: MappedTensors) -> dict[str, np.ndarray]:
    """The scorer's tensors, taken without their prefix (none in a version 1 cache)."""
    return {name.removeprefix("scorer."): tensors.take(name) for name in tensors.names() if name.startswith("scorer.")}


def _scorer_of(where: str, config: NGramConfig, vocabulary: WordVocabulary,
               arrays: dict[str, np.ndarray]) -> NGramScorer:
    try:
        return NGramScorer.from_arrays(config, vocabulary, arrays)
    except (KeyError, TypeError, ValueError, ConfigError) as error:
        raise CheckpointError(f"{where} {error}: it is corrupt; rebuild it with save_binary") from None


class MappedTensors:
    """A safetensors file mapped into memory (private, copy-on-write pages) and checked to be laid
    out as one: an 8-byte little-endian header size, a JSON header of name -> dtype, shape and
    byte range, then the bytes. ``take(name)`` makes a tensor's numpy view over the mapping when it
    is asked for (a scorer takes 12 of a 5-gram cache's 32).

    Raises:
        OSError, ValueError, KeyError, TypeError: the file cannot be mapped or is not laid out so.
    """

    def __init__(self, path: Path):
        with open(path, "rb") as file:
            self._mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)    # ValueError when empty
        header_size = int.from_bytes(self._mapped[:8], "little")
        if not 2 <= header_size <= len(self._mapped) - 8:
            raise ValueError("its header size is out of range")
        header = json.loads(self._mapped[8: 8 + header_size])
        if not isinstance(header, dict) or not isinstance(header.get("__metadata__", {}), dict):
            raise ValueError("its header is not a JSON object of tensors and metadata")
        self.metadata = header.pop("__metadata__", None) or {}
        self._entries, start = {}, 8 + header_size      # name -> dtype, shape, offset in the file
        numbers, size = [], len(self._mapped) - start          # every shape and offset, type-checked at once
        for name, entry in header.items():
            if not isinstance(entry, dict) or entry.get("dtype") not in NUMPY_DTYPES:
                raise ValueError(f"its tensor {name!r} is not of a type a cache holds ({', '.join(NUMPY_DTYPES)})")
            dtype, shape, offsets = NUMPY_DTYPES[entry["dtype"]], entry.get("shape"), entry.get("data_offsets")
            if type(shape) is not list or type(offsets) is not list or len(offsets) != 2:
                raise ValueError(f"its tensor {name!r} has no shape and offsets")
            numbers += shape
            numbers += offsets
            self._entries[name] = dtype, shape, offsets
        if {*map(type, numbers)} - {int} or min(numbers, default=0) < 0:       # (JSON's true is no int here)
            raise ValueError("its tensors' shapes and offsets are not all integers >= 0")
        for name, (dtype, shape, (begin, end)) in self._entries.items():
            if not begin <= end <= size or end - begin != math.prod(shape) * dtype.itemsize:
                raise ValueError(f"its tensor {name!r} does not fit the file")
            self._entries[name] = dtype, shape, start + begin

    def names(self) -> list[str]:
        """The tensors not taken yet."""
        return list(self._entries)

    def take(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a view over the mapping (KeyError if the file has none, or it was taken)."""
        dtype, shape, offset = self._entries.pop(name)
        return np.frombuffer(self._mapped, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)


class CachedVocabulary(WordVocabulary):
    """The vocabulary of a cache: its words as the file holds them, UTF-8 joined by newlines,
    split (and checked as ``WordVocabulary`` checks its words, and against the length and the id
    of ``</s>`` it was given) the first time ``words`` is read. A scorer whose word table came with
    the cache needs nothing more than the length and that id.

    Args:
        joined: the words' bytes (any buffer: a view of the mapped file).
        where: the cache, for messages.
        n_words, end_id: the number of words and the id of ``</s>`` (None: there is none), as the
            cache's header gives them (``counting`` reads them from the bytes).
    Raises (on reading ``words``):
        CheckpointError: the words are not UTF-8, repeat, hold whitespace, are empty, include
            ``<s>``, do not start with ``<unk>``, or are not ``n_words`` with ``</s>`` at ``end_id``.
    """

    def __init__(self, joined: np.ndarray | bytes, where: str, n_words: int, end_id: int | None):
        object.__setattr__(self, "_joined", joined)
        object.__setattr__(self, "_where", where)
        object.__setattr__(self, "_n_words", n_words)
        object.__setattr__(self, "end_id", end_id)

    @classmethod
    def counting(cls, joined: bytes, where: str) -> CachedVocabulary:
        """The vocabulary of ``joined`` with its length and ``</s>``'s id read from the bytes (a
        version 1 or 2 cache, whose header does not give them)."""
        data, end = np.frombuffer(joined, dtype=np.uint8), _start_of(joined, b"</s>")
        return cls(joined, where, int(np.count_nonzero(data == NEWLINE)) + 1,
                   int(np.count_nonzero(data[:end] == NEWLINE)) if end >= 0 else None)

    def __len__(self) -> int:
        return self._n_words

    @functools.cached_property
    def words(self) -> tuple[str, ...]:
        try:
            joined = bytes(self._joined)
            text = joined.decode("utf-8")
            spaced = (np.count_nonzero(ASCII_SPACE_BUT_NEWLINE.take(np.frombuffer(joined, dtype=np.uint8)))
                      if text.isascii() else SPACE_BUT_NEWLINE.search(text))
            if spaced or "\n\n" in text or text.startswith("\n") or text.endswith("\n"):
                raise ValueError("holds an empty word or one with whitespace")
            words = WordVocabulary._from_split_words(tuple(text.split("\n"))).words
            end_id = words.index("</s>") if "</s>" in words else None
            if len(words) != self._n_words or end_id != self.end_id:
                raise ValueError(f"holds {len(words)} words with </s> at {end_id}, where its header says "
                                 f"{self._n_words} with </s> at {self.end_id}")
            return words
        except (ValueError, ConfigError) as error:      # (UnicodeDecodeError is a ValueError)
            raise CheckpointError(f"the vocabulary of {self._where} {error}: it is corrupt; rebuild it with "
                                  "save_binary") from None


def _start_of(joined: bytes, word: bytes) -> int:
    """Where ``word`` starts in the newline-joined words ``joined``; -1 if it is none of them."""
    if joined == word or joined.startswith(word + b"\n"):
        return 0
    inside = joined.find(b"\n" + word + b"\n")
    if inside >= 0:
        return inside + 1
    return len(joined) - len(word) if joined.endswith(b"\n" + word) else -1


def _check_tables(where: str, model: NGramLM, vocabulary: WordVocabulary, keys: list[torch.Tensor],
                  log_probs: list[torch.Tensor], log_backoffs: list[torch.Tensor], discounts: torch.Tensor,
                  unexpected: list[str]) -> None:
    """CheckpointError unless the cached tables fit ``model``'s config and one another."""
    problem = None
    if unexpected:
        problem = f"holds unexpected tensors {unexpected}"
    elif len(vocabulary) != model.vocab_size:
        problem = f"holds {len(vocabulary)} words for a model of {model.vocab_size} ids"
    elif discounts.shape != model.discounts.shape:
        problem = f"holds discounts of shape {tuple(discounts.shape)}, expected {tuple(model.discounts.shape)}"
    for k, (key, log_prob, log_backoff) in enumerate(zip(keys, log_probs, log_backoffs), start=1):
        if problem:
            break
        backoffs = 0 if k == model.order else len(key)
        if (key.dtype != torch.int64 or log_prob.dtype != torch.float32 or log_backoff.dtype != torch.float32
                or key.dim() != 1 or log_backoff.dim() != 1 or log_prob.shape != key.shape
                or len(log_backoff) != backoffs):
            problem = f"holds order {k} tables of mismatched sizes or types"
        elif k == 1 and not torch.equal(key, torch.arange(model.n_ids)):
            problem = f"holds 1-gram keys that are not 0 .. {model.n_ids - 1}"
        elif k > 1 and len(key) and not (0 <= int(key[0]) and int(key[-1]) < len(keys[k - 2]) * model.n_ids):
            problem = f"holds order {k} keys whose prefixes are not order {k - 1}'s"      # (in between: once sorted)
    if problem:
        raise CheckpointError(f"{where} {problem}: it is corrupt; rebuild it with save_binary")
