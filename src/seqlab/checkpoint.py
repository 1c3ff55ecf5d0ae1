"""Checkpoints: one directory that rebuilds a model, its tokenizer and its training state.

    DIR/config.json         {"seqlab_version", "model", "config", "task", ...}: plain JSON
    DIR/model.safetensors   the weights (tied weights stored once)
    DIR/tokenizer.json      the tokenizer
    DIR/trainer.pt          optional: optimizer, step, RNG states; read with weights_only=True

A checkpoint is written into a temporary sibling directory, flushed to disk, and renamed over
the old one, so a crash at any moment leaves either the old checkpoint or the new one, never a
mixture. Loading checks every file and names what is missing or broken.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from seqlab import registry
from seqlab.data.tokenizers import Tokenizer, load_tokenizer
from seqlab.errors import CheckpointError, ConfigError, SeqlabError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TRAINER_FILE = "trainer.pt"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns."""

    model: nn.Module
    tokenizer: Tokenizer
    info: dict[str, Any]                     # the parsed config.json
    trainer_state: dict[str, Any] | None     # trainer.pt, when present and asked for


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    tokenizer: Tokenizer,
    info: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (temporary directory, fsync, rename).

    Args:
        model: a registered model (it has ``registry_name`` and ``config``).
        info: extra JSON entries for config.json, e.g. the task spec and metrics.
        trainer_state: tensors and plain values only (it is loaded with weights_only=True).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        header = {
            "seqlab_version": _version(),
            "model": model.registry_name,
            "config": registry.config_to_dict(model.config),
            **info,
        }
        (staging / CONFIG_FILE).write_text(json.dumps(header, indent=2) + "\n")
        safetensors.torch.save_model(model, str(staging / WEIGHTS_FILE))
        tokenizer.save(staging / TOKENIZER_FILE)
        if trainer_state is not None:
            torch.save(trainer_state, staging / TRAINER_FILE)
        for file in staging.iterdir():
            _fsync(file)
        _replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_checkpoint(
    directory: str | Path, *, device: str | torch.device = "cpu", with_trainer_state: bool = False
) -> Checkpoint:
    """Rebuild the model and tokenizer saved in ``directory``.

    Raises:
        CheckpointError: the directory or one of its files is missing, config.json is not
            valid or names an unknown model, the weights are corrupt or do not fit the config.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {str(directory)!r} does not exist")
    for name in REQUIRED_FILES:
        if not (directory / name).is_file():
            raise CheckpointError(
                f"checkpoint {str(directory)!r} is missing {name}; it is incomplete or not a "
                "seqlab checkpoint"
            )
    info = read_info(directory)
    try:
        entry = registry.get(info["model"], task_name(info))
        model = entry.model_class(registry.make_config(entry.config_class, info["config"]))
    except ConfigError as error:
        raise CheckpointError(f"{CONFIG_FILE} in {str(directory)!r} is not usable: {error}") from None
    try:
        missing, unexpected = safetensors.torch.load_model(
            model, str(directory / WEIGHTS_FILE), strict=False, device=str(device)
        )
    except Exception as error:  # safetensors raises several types for a damaged file
        raise CheckpointError(
            f"{WEIGHTS_FILE} in {str(directory)!r} is corrupt or unreadable "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no detail'})"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{WEIGHTS_FILE} in {str(directory)!r} does not match its config "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    try:
        if task_name(info) == "tag":
            from seqlab.tasks.tagging import TaggingVocabulary

            tokenizer = TaggingVocabulary.load(directory / TOKENIZER_FILE)
        else:
            tokenizer = load_tokenizer(directory / TOKENIZER_FILE)
    except SeqlabError as error:
        raise CheckpointError(f"{TOKENIZER_FILE} in {str(directory)!r}: {error}") from None
    trainer_state = None
    if with_trainer_state and (directory / TRAINER_FILE).is_file():
        try:
            trainer_state = torch.load(directory / TRAINER_FILE, weights_only=True, map_location=device)
        except Exception as error:
            raise CheckpointError(
                f"{TRAINER_FILE} in {str(directory)!r} is corrupt ({type(error).__name__})"
            ) from None
    return Checkpoint(model.to(device), tokenizer, info, trainer_state)


def read_info(directory: str | Path) -> dict[str, Any]:
    """The parsed config.json of a checkpoint, checked for the keys seqlab needs."""
    path = Path(directory) / CONFIG_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{CONFIG_FILE} in {str(directory)!r} is not valid JSON ({error})") from None
    if not isinstance(info, dict) or not {"seqlab_version", "model", "config"} <= info.keys():
        raise CheckpointError(
            f"{CONFIG_FILE} in {str(directory)!r} lacks seqlab_version, model or config; "
            "it was not written by seqlab"
        )
    return info


def task_name(info: dict[str, Any]) -> str:
    """The task a checkpoint's model solves ("lm" for runs saved before tasks were recorded)."""
    task = info.get("task")
    return task.get("task", "lm") if isinstance(task, dict) else "lm"


def is_run_directory(directory: str | Path) -> bool:
    """Whether ``directory`` holds a seqlab checkpoint (its config.json says so)."""
    try:
        read_info(directory)
        return True
    except CheckpointError:
        return False


def check_output_directory(directory: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to train into a directory that would lose something.

    A missing or empty directory is fine. An existing seqlab run needs ``resume`` (continue it)
    or ``overwrite`` (replace it). Anything else is refused: seqlab never deletes files it did
    not write.
    """
    directory = Path(directory)
    if resume:
        if not is_run_directory(directory):
            raise CheckpointError(f"cannot resume: {str(directory)!r} is not a seqlab run")
        if not (directory / TRAINER_FILE).is_file():
            raise CheckpointError(f"cannot resume: {str(directory)!r} has no {TRAINER_FILE}")
        return
    if not directory.exists() or (directory.is_dir() and not any(directory.iterdir())):
        return
    if not is_run_directory(directory):
        raise ConfigError(
            f"output directory {str(directory)!r} exists and is not a seqlab run; "
            "refusing to overwrite it: choose another --out"
        )
    if not overwrite:
        raise ConfigError(
            f"output directory {str(directory)!r} already holds a seqlab run; "
            "pass --resume to continue it or --overwrite to replace it"
        )


def _replace_directory(staging: Path, directory: Path) -> None:
    """Rename ``staging`` to ``directory``, moving any old one aside first and removing it after."""
    if directory.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
        old.rmdir()
        directory.rename(old)
        staging.rename(directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(directory)
    _fsync(directory.parent)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _version() -> str:
    from seqlab import __version__

    return __version__
