"""Reading and writing Hugging Face model directories.

The layout (``save_pretrained``'s):

    config.json                         the architecture and its sizes ("model_type", ...)
    model.safetensors                   the weights, or, sharded:
    model.safetensors.index.json        {"metadata": {"total_size": N}, "weight_map": {name: shard}}
    model-00001-of-0000K.safetensors    the shards
    generation_config.json              optional: bos/eos/pad token ids for generation
    tokenizer.json                      optional: an HF ``tokenizers`` tokenizer

Only safetensors are read: a pickled ``pytorch_model.bin`` can run code when loaded, and
seqlab does not open one. A directory is written aside and renamed into place, so a crash
never leaves a half-written export under the requested name, and an existing non-empty
directory is never written into.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from seqlab.errors import CheckpointError, ConfigError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
GENERATION_FILE = "generation_config.json"
TOKENIZER_FILE = "tokenizer.json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{str(path)!r} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{str(path)!r} holds a JSON {type(value).__name__}, expected an object")
    return value


def read_config(directory: str | Path) -> dict[str, Any]:
    """config.json of an HF model directory.

    Raises:
        CheckpointError: the directory does not exist or has no config.json.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{str(directory)!r} is not a directory; give a Hugging Face model directory "
                              "(config.json and model.safetensors)")
    if not (directory / CONFIG_FILE).is_file():
        raise CheckpointError(f"{str(directory)!r} has no {CONFIG_FILE}: not a Hugging Face model directory")
    return _read_json(directory / CONFIG_FILE)


def read_generation_config(directory: str | Path) -> dict[str, Any]:
    """generation_config.json, or an empty dict when there is none."""
    path = Path(directory) / GENERATION_FILE
    return _read_json(path) if path.is_file() else {}


def _load_file(path: Path) -> dict[str, Tensor]:
    try:
        return safetensors.torch.load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for a damaged file
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({detail})") from None


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files holding a directory's weights: one file, or the shards its index
    names (each checked to exist).

    Raises:
        CheckpointError: no safetensors weights, a malformed index, or a missing shard.
    """
    directory = Path(directory)
    if (directory / WEIGHTS_FILE).is_file():
        return [directory / WEIGHTS_FILE]
    if (directory / INDEX_FILE).is_file():
        index = _read_json(directory / INDEX_FILE)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{INDEX_FILE} in {str(directory)!r} has no weight_map of tensor names to shard files")
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if Path(shard).name != shard or not (directory / shard).is_file():
                raise CheckpointError(f"{INDEX_FILE} in {str(directory)!r} names shard {shard!r}, which is not in "
                                      "the directory; the download is incomplete")
        return [directory / shard for shard in shards]
    if any((directory / name).is_file() for name in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise CheckpointError(f"{str(directory)!r} holds pickled PyTorch weights (pytorch_model.bin), which seqlab "
                              "does not open; convert them to model.safetensors (transformers' save_pretrained does)")
    raise CheckpointError(f"{str(directory)!r} has no weights: expected {WEIGHTS_FILE} or {INDEX_FILE} with its shards")


def read_weights(directory: str | Path) -> dict[str, Tensor]:
    """Every tensor of the directory's safetensors weights, by name, in their stored dtypes.

    Raises:
        CheckpointError: as :func:`weight_files`; an unreadable file; a sharded checkpoint
            whose shards hold other tensors than the index says.
    """
    files = weight_files(directory)
    if len(files) == 1 and files[0].name == WEIGHTS_FILE:
        return _load_file(files[0])
    weight_map = _read_json(Path(directory) / INDEX_FILE)["weight_map"]
    tensors: dict[str, Tensor] = {}
    for path in files:
        shard = _load_file(path)
        listed = {name for name, file in weight_map.items() if file == path.name}
        absent, unlisted = sorted(listed - set(shard)), sorted(set(shard) - listed)
        if absent:
            raise CheckpointError(f"{INDEX_FILE} in {str(directory)!r} lists {absent[0]!r} in "
                                  f"{path.name!r}, but that shard does not hold it")
        if unlisted:
            raise CheckpointError(f"shard {path.name!r} in {str(directory)!r} holds {unlisted[0]!r}, which "
                                  f"{INDEX_FILE} lists in {weight_map.get(unlisted[0])!r}; the index and its "
                                  "shards do not belong together")
        tensors.update(shard)
    return tensors


def stored_dtype(tensors: dict[str, Tensor]) -> torch.dtype:
    """The floating dtype most of the weights (by element) are stored in (float32 when none is)."""
    counts: Counter = Counter()
    for tensor in tensors.values():
        if tensor.is_floating_point():
            counts[tensor.dtype] += tensor.numel()
    return counts.most_common(1)[0][0] if counts else torch.float32


def write_directory(directory: str | Path, config: dict[str, Any], tensors: dict[str, Tensor], *,
                    generation: dict[str, Any] | None = None, extra_files: dict[str, str] | None = None,
                    max_shard_bytes: int | None = None) -> Path:
    """Write an HF model directory at ``directory``, which must not exist or be empty.

    Args:
        config: config.json's contents.
        tensors: the weights by HF name.
        generation: generation_config.json's contents, if any.
        extra_files: more files by name (tokenizer.json, ...), as text.
        max_shard_bytes: split the weights into shards of at most this many bytes (a tensor
            larger than that gets a shard of its own), with an index; None: one file.
    Raises:
        ConfigError: ``directory`` exists and is not empty (seqlab never writes into it).
    """
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ConfigError(f"{str(directory)!r} exists and is not empty; export into a new directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    staging.chmod(0o777 & ~_umask())                # mkdtemp's 0700 would hide the export from others
    try:
        _write_weights(staging, tensors, max_shard_bytes)
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if generation:
            (staging / GENERATION_FILE).write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
        os.replace(staging, directory)             # onto nothing, or onto the empty directory
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_weights(directory: Path, tensors: dict[str, Tensor], max_shard_bytes: int | None) -> None:
    metadata = {"format": "pt"}
    if max_shard_bytes is None:
        safetensors.torch.save_file(tensors, str(directory / WEIGHTS_FILE), metadata=metadata)
        return
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        filename = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        safetensors.torch.save_file(shard, str(directory / filename), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, filename))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
