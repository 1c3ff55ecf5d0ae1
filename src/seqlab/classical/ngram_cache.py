"""A binary cache of an n-gram model: loading it parses nothing and builds nothing.

``save_binary`` writes one safetensors file of each order's sorted keys, ln p* and ln b as the
model holds them, the discounts, the vocabulary as UTF-8 bytes, the config as metadata, and the
scorer's hash tables (``ngram_scoring.NGramScorer.arrays``: what KenLM's binary format holds, its
query structure). ``load_binary`` maps the file into memory (private, copy-on-write pages: the
operating system reads a page when it is first touched), checks that the parts fit together and
hands the model its tables and ``score_sentences`` its scorer as they lie in the file. ``load_arpa``
reads an ARPA file through such a cache beside it (``seqlab score --cache``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import mmap
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy
import torch

from seqlab.classical.arpa import WordVocabulary
from seqlab.classical.arpa_reader import read_arpa_file
from seqlab.classical.ngram import NGramConfig, NGramLM
from seqlab.classical.ngram_scoring import NGramScorer, remember_scorer, scorer_for
from seqlab.errors import CheckpointError, ConfigError, DataError

BINARY_FORMAT = "seqlab-ngram-tables"
BINARY_VERSION = "2"                   # 2 holds the scorer's tables too; 1 (without them) still loads
READABLE_VERSIONS = ("1", "2")
SPACE_BUT_NEWLINE = re.compile(r"[^\S\n]")           # what str.split() splits at, newline aside
ASCII_SPACE_BUT_NEWLINE = np.array([chr(byte).isspace() and byte != 10 for byte in range(128)])
NUMPY_DTYPES = {"I64": np.int64, "U64": np.uint64, "F64": np.float64, "F32": np.float32, "U8": np.uint8}


def save_binary(model: NGramLM, vocabulary: WordVocabulary, path: str | Path, source: str = "") -> None:
    """Write ``model``'s tables and ``vocabulary`` as one safetensors file for ``load_binary``.

    Tensors: ``order{k}.keys`` (N_k,) int64, ``order{k}.log_prob`` and ``order{k}.log_backoff``
    as the model holds them, ``discounts`` (n, 3), ``vocabulary`` (bytes,) uint8, the words
    joined by newlines, and ``scorer.{name}``, the scorer's tables. Metadata: the format name and
    version, the ``NGramConfig`` as JSON and ``source``, what the cache was made from (an ARPA
    file's size and modification time).
    """
    if model.vocab_size != len(vocabulary.words):
        raise ConfigError(f"the model predicts {model.vocab_size} ids but the vocabulary has "
                          f"{len(vocabulary.words)} words")
    arrays = {"discounts": model.discounts.detach().cpu().numpy(),
              "vocabulary": np.frombuffer("\n".join(vocabulary.words).encode("utf-8"), dtype=np.uint8)}
    for k, table in enumerate(model.tables, start=1):
        for name in ("keys", "log_prob", "log_backoff"):
            arrays[f"order{k}.{name}"] = getattr(table, name).detach().cpu().numpy()
    for name, array in scorer_for(model, vocabulary).arrays().items():
        arrays[f"scorer.{name}"] = array
    metadata = {"format": BINARY_FORMAT, "version": BINARY_VERSION,
                "config": json.dumps(dataclasses.asdict(model.config)), "source": source}
    safetensors.numpy.save_file({name: np.ascontiguousarray(array) for name, array in arrays.items()},
                                str(path), metadata=metadata)


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
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_binary(path)
    if not cache:
        return read_arpa_file(path)
    cached = path.with_name(path.name + CACHE_SUFFIX)
    source = ""
    if path.is_file():
        stat = path.stat()
        source = f"{stat.st_size}:{stat.st_mtime_ns}"
    if os.path.lexists(cached):
        made_from, version = _cache_source(cached)
        if made_from == source and source and version == BINARY_VERSION:     # (an older version is remade)
            return load_binary(cached)
    model, vocabulary = read_arpa_file(path)
    staging = None
    try:
        handle, staging = tempfile.mkstemp(dir=cached.parent, prefix=f".{cached.name}.", suffix=".partial")
        os.close(handle)
        save_binary(model, vocabulary, staging, source=source)
        os.chmod(staging, 0o666 & ~_umask())                 # safetensors writes 0600
        os.replace(staging, cached)
    except (OSError, safetensors.SafetensorError) as error:
        raise DataError(f"cannot write the n-gram cache {str(cached)!r}: {error}".replace("\n", " ")) from None
    finally:
        if staging is not None:
            Path(staging).unlink(missing_ok=True)
    return model, vocabulary


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
        with safetensors.safe_open(str(cached), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except PermissionError as error:
        raise DataError(f"cannot read the n-gram cache {str(cached)!r}: {error}") from None
    except (OSError, safetensors.SafetensorError):
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
            version, or its tables do not fit together (sizes, unsorted keys, vocabulary).
    """
    path = Path(path)
    where = f"n-gram cache {str(path)!r}"
    try:
        metadata, tensors = _map_tensors(path)
        if metadata.get("format") != BINARY_FORMAT or metadata.get("version") not in READABLE_VERSIONS:
            raise CheckpointError(f"{where} is not a {BINARY_FORMAT} file of version {BINARY_VERSION} "
                                  f"(found {metadata.get('format')!r} {metadata.get('version')!r}); "
                                  "rebuild it with save_binary (or delete it: seqlab score --cache rebuilds it)")
        config = NGramConfig(**json.loads(metadata["config"]))
        vocabulary = _vocabulary(tensors.pop("vocabulary").tobytes().decode("utf-8"))
        names = [f"order{k}.{name}" for k in range(1, config.order + 1) for name in ("keys", "log_prob", "log_backoff")]
        tables = [torch.from_numpy(tensors.pop(name)) for name in names]
        discounts = torch.from_numpy(tensors.pop("discounts"))
        scorer_arrays = {name.removeprefix("scorer."): tensors.pop(name) for name in list(tensors)
                         if name.startswith("scorer.")}
    except CheckpointError:
        raise
    except (OSError, KeyError, TypeError, ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{where} cannot be read as an n-gram cache: {error}".replace("\n", " ")) from None
    model = NGramLM(config)
    keys, log_probs, log_backoffs = tables[0::3], tables[1::3], tables[2::3]
    _check_tables(where, model, vocabulary, keys, log_probs, log_backoffs, discounts, sorted(tensors))
    model.set_tables(keys, log_probs, log_backoffs)
    model.discounts.copy_(discounts)
    if scorer_arrays:
        try:
            remember_scorer(model, vocabulary, NGramScorer(model, vocabulary, scorer_arrays))
        except (KeyError, TypeError, ValueError, ConfigError) as error:
            raise CheckpointError(f"{where} {error}: it is corrupt; rebuild it with save_binary") from None
    return model, vocabulary


def _map_tensors(path: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """A safetensors file's metadata and its tensors as numpy arrays over one private
    (copy-on-write) memory map of the file: the layout is an 8-byte little-endian header size, a
    JSON header of name -> dtype, shape and byte range, then the bytes.

    Raises:
        OSError, ValueError, KeyError, TypeError: the file cannot be mapped or is not laid out so.
    """
    with open(path, "rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)    # ValueError when empty
    header_size = int.from_bytes(mapped[:8], "little")
    if not 2 <= header_size <= len(mapped) - 8:
        raise ValueError("its header size is out of range")
    header = json.loads(mapped[8: 8 + header_size])
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__", {}), dict):
        raise ValueError("its header is not a JSON object of tensors and metadata")
    metadata = header.pop("__metadata__", None) or {}
    tensors, start = {}, 8 + header_size
    for name, entry in header.items():
        dtype, shape, (begin, end) = NUMPY_DTYPES[entry["dtype"]], entry["shape"], entry["data_offsets"]
        if not 0 <= begin <= end <= len(mapped) - start or \
                end - begin != math.prod(shape) * np.dtype(dtype).itemsize:
            raise ValueError(f"its tensor {name!r} does not fit the file")
        tensors[name] = np.frombuffer(mapped, dtype=dtype, count=math.prod(shape), offset=start + begin).reshape(shape)
    return metadata, tensors


def _vocabulary(text: str) -> WordVocabulary:
    """The vocabulary of words joined by newlines: ``WordVocabulary``'s checks, with the one for
    whitespace in words made in one pass over the text."""
    spaced = (np.count_nonzero(ASCII_SPACE_BUT_NEWLINE.take(np.frombuffer(text.encode("ascii"), dtype=np.uint8)))
              if text.isascii() else SPACE_BUT_NEWLINE.search(text))
    if spaced or "\n\n" in text or text.startswith("\n") or text.endswith("\n"):
        raise ValueError("its vocabulary holds an empty word or one with whitespace")
    return WordVocabulary._from_split_words(tuple(text.split("\n")))


def _check_tables(where: str, model: NGramLM, vocabulary: WordVocabulary, keys: list[torch.Tensor],
                  log_probs: list[torch.Tensor], log_backoffs: list[torch.Tensor], discounts: torch.Tensor,
                  unexpected: list[str]) -> None:
    """CheckpointError unless the cached tables fit ``model``'s config and one another."""
    problem = None
    if unexpected:
        problem = f"holds unexpected tensors {unexpected}"
    elif len(vocabulary.words) != model.vocab_size:
        problem = f"holds {len(vocabulary.words)} words for a model of {model.vocab_size} ids"
    elif discounts.shape != model.discounts.shape:
        problem = f"holds discounts of shape {tuple(discounts.shape)}, expected {tuple(model.discounts.shape)}"
    for k, (key, log_prob, log_backoff) in enumerate(zip(keys, log_probs, log_backoffs), start=1):
        if problem:
            break
        backoffs = 0 if k == model.order else len(key)
        if key.dtype != torch.int64 or key.dim() != 1 or log_prob.shape != key.shape or len(log_backoff) != backoffs:
            problem = f"holds order {k} tables of mismatched sizes or types"
        elif k == 1 and not torch.equal(key, torch.arange(model.n_ids)):
            problem = f"holds 1-gram keys that are not 0 .. {model.n_ids - 1}"
        elif len(key) > 1 and not bool((key[1:] > key[:-1]).all()):
            problem = f"holds order {k} keys that are not strictly increasing"
    if problem:
        raise CheckpointError(f"{where} {problem}: it is corrupt; rebuild it with save_binary")
