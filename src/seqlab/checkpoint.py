"""One checkpoint: a directory that rebuilds a model, its task's artifacts and its training state.

    config.json         {"seqlab_version", "torch_version", "model", "config", "task" (the task's
                        spec), "train" (training options), "step", "history", "weights_sha256",
                        "dtype" (float16 or bfloat16 weights only; float32 is the default)}
    model.safetensors   the weights (tied weights stored once)
    NAME.json           each artifact of the task (tokenizer.json, vocabulary.json, labels.json)
    trainer.pt          optional: optimizer, step, RNG states; read with weights_only=True

``write_checkpoint`` fills a new directory and flushes every file to disk; the run directory
(``seqlab.rundir``) makes it visible atomically. ``load_checkpoint`` accepts a run directory
(it follows the run's pointer to its best or last checkpoint) or one checkpoint directory, and
checks that the parts belong together before returning anything: config.json has what seqlab
needs with the right types, the weights file has the recorded sha256 and fits the config, the
task's artifacts fit the model (vocabulary sizes), and trainer.pt has every key, the recorded
step and the model's parameter shapes. Any mismatch is a ``CheckpointError`` naming it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from seqlab import registry
from seqlab.errors import CheckpointError, SeqlabError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAINER_FILE = "trainer.pt"
LOW_PRECISION = {"float16": torch.float16, "bfloat16": torch.bfloat16}     # weights stored in these stay so
TRAINER_KEYS = ("optimizer", "step", "train_seconds", "tokens_seen", "clipped_steps", "best_valid_loss",
                "evals_without_improvement", "sampler_rng", "torch_rng")


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns."""

    model: nn.Module
    artifacts: dict[str, Any]                # the task's artifacts, by name
    info: dict[str, Any]                     # the parsed config.json
    trainer_state: dict[str, Any] | None     # trainer.pt, when present and asked for
    directory: Path                          # the checkpoint directory itself

    @property
    def task_name(self) -> str:
        return self.info["task"]["task"]

    def task(self, data: str | None = None, *, with_data: bool = True) -> Any:
        """The task the model was trained on (over other ``data`` when given; without data for
        prediction), rebuilt from the spec and the saved artifacts."""
        from seqlab.tasks.base import get_task

        return get_task(self.task_name).from_spec(self.info["task"], self.artifacts, data, with_data)


def write_checkpoint(directory: str | Path, model: nn.Module, artifacts: dict[str, Any], info: dict[str, Any],
                     trainer_state: dict[str, Any] | None = None) -> None:
    """Write a checkpoint into the new directory ``directory`` and flush it to disk.

    Args:
        model: a registered model (it has ``registry_name`` and ``config``).
        artifacts: the task's artifacts by name, each with ``save(path)``.
        info: config.json entries: at least ``task`` (the task's spec), ``train``, ``step``.
        trainer_state: tensors and plain values only (it is loaded with weights_only=True).
    Raises:
        CheckpointError: the weights are not finite (a checkpoint is only ever a good one).
    """
    bad = not_finite(model)
    if bad:
        raise CheckpointError(f"refusing to save weights that are not finite ({bad[0]})")
    directory = Path(directory)
    directory.mkdir(parents=True)
    safetensors.torch.save_model(model, str(directory / WEIGHTS_FILE))
    header = {
        "seqlab_version": _version(), "torch_version": torch.__version__,
        "model": model.registry_name, "config": registry.config_to_dict(model.config),
        **info, "weights_sha256": file_sha256(directory / WEIGHTS_FILE),
    }
    dtype = weights_dtype(model)
    if dtype != torch.float32:
        header["dtype"] = str(dtype).removeprefix("torch.")
    (directory / CONFIG_FILE).write_text(json.dumps(json_ready(header), indent=2, allow_nan=False) + "\n")
    for name, artifact in artifacts.items():
        artifact.save(directory / f"{name}.json")
    if trainer_state is not None:
        torch.save(trainer_state, directory / TRAINER_FILE)
    for path in directory.iterdir():
        fsync(path)
    fsync(directory)


def save_checkpoint(directory: str | Path, model: nn.Module, task: Any, *, step: int = 0,
                    train: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Save ``model`` with ``task``'s spec and artifacts as a run directory of one checkpoint
    (for a model trained or fitted outside ``seqlab.fit``); returns the checkpoint directory.

    Raises:
        ConfigError: ``directory`` already holds a run and ``overwrite`` is not set.
    """
    from seqlab.rundir import RunDirectory

    run = RunDirectory(directory)
    run.prepare(resume=False, overwrite=overwrite)
    return run.save(model, task.artifacts(), {"task": task.spec(), "train": dict(train or {}), "step": step,
                                              "history": []})


def weights_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's floating parameters (float32 when it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def not_finite(model: nn.Module) -> list[str]:
    """The tensors that make ``model`` unfit to save: a parameter with NaN or inf, a buffer with
    NaN (a buffer may hold -inf: the log-probability of what a count-based model never saw)."""
    bad = [f"{name} has NaN or inf" for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    return bad + [f"{name} has NaN" for name, b in model.named_buffers()
                  if b.is_floating_point() and bool(torch.isnan(b).any())]


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu", with_trainer_state: bool = False,
                    which: str = "best") -> Checkpoint:
    """Rebuild the model and the task's artifacts saved at ``path``.

    Args:
        path: a run directory (its ``which`` checkpoint, "best" or "last", is read) or a
            checkpoint directory.
    Raises:
        CheckpointError: anything missing, corrupt, or not belonging together (module docstring).
    """
    from seqlab.rundir import resolve_checkpoint
    from seqlab.tasks.base import get_task

    directory = resolve_checkpoint(path, which)
    where = f"in {str(directory)!r}"
    info = read_info(directory)
    try:
        task_class = get_task(info["task"]["task"])
        entry = registry.get(info["model"], info["task"]["task"])
        model = entry.model_class(registry.make_config(entry.config_class, info["config"]))
        dtype = info.get("dtype", "float32")
        if dtype not in LOW_PRECISION and dtype != "float32":
            raise CheckpointError(f"unknown weights dtype {dtype!r}")
        model.to(LOW_PRECISION.get(dtype, torch.float32))
    except SeqlabError as error:
        raise CheckpointError(f"{CONFIG_FILE} {where} is not usable: {error}") from None
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {str(directory)!r} is missing {WEIGHTS_FILE}; it is incomplete")
    if "weights_sha256" in info and file_sha256(weights) != info["weights_sha256"]:
        raise CheckpointError(f"{WEIGHTS_FILE} {where} does not have the sha256 recorded in {CONFIG_FILE}: "
                              "the file is corrupt or was replaced")
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(weights), strict=False, device=str(device))
    except Exception as error:  # safetensors raises several types for a damaged or mismatched file
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{WEIGHTS_FILE} {where} is corrupt or does not fit its config ({detail})") from None
    if missing or unexpected:
        raise CheckpointError(f"{WEIGHTS_FILE} {where} does not match its config "
                              f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    try:
        artifacts = task_class.load_artifacts(directory)
        task_class.from_spec(info["task"], artifacts, with_data=False).check_model(model)
    except SeqlabError as error:
        raise CheckpointError(f"checkpoint {str(directory)!r}: {error}") from None
    trainer_state = None
    if with_trainer_state:
        trainer_state = _read_trainer_state(directory, model, info, device)
    return Checkpoint(model.to(device), artifacts, info, trainer_state, directory)


def read_info(directory: str | Path) -> dict[str, Any]:
    """The parsed config.json of a checkpoint, checked for the keys seqlab needs and their types."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(directory)!r} is missing {CONFIG_FILE}; it is incomplete "
                              "or not a seqlab checkpoint")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{CONFIG_FILE} in {str(directory)!r} is not valid JSON ({error})") from None
    expected = {"seqlab_version": str, "model": str, "config": dict, "task": dict, "train": dict, "step": int}
    for key, kind in expected.items():
        if not isinstance(info, dict) or key not in info:
            raise CheckpointError(f"{CONFIG_FILE} in {str(directory)!r} has no {key!r}; it was not written by "
                                  "seqlab or was edited")
        if not isinstance(info[key], kind) or isinstance(info[key], bool):
            raise CheckpointError(f"{CONFIG_FILE} in {str(directory)!r}: {key!r} must be a {kind.__name__}, "
                                  f"got {info[key]!r}")
    if not isinstance(info["task"].get("task"), str):
        raise CheckpointError(f"{CONFIG_FILE} in {str(directory)!r}: the task spec names no task")
    return info


def _read_trainer_state(directory: Path, model: nn.Module, info: dict[str, Any], device: Any) -> dict[str, Any]:
    """trainer.pt, checked against the model's parameters and the recorded step."""
    path = directory / TRAINER_FILE
    where = f"{TRAINER_FILE} in {str(directory)!r}"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(directory)!r} has no {TRAINER_FILE}: it cannot be resumed")
    try:
        state = torch.load(path, weights_only=True, map_location=device)
    except Exception as error:
        raise CheckpointError(f"{where} is corrupt or not a seqlab training state ({type(error).__name__})") from None
    missing = [key for key in TRAINER_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{where} lacks {missing[0]!r}; it was not written by this seqlab")
    if int(state["step"]) != info["step"]:
        raise CheckpointError(f"{where} is at step {int(state['step'])} but its {CONFIG_FILE} at step "
                              f"{info['step']}: they come from different checkpoints")
    parameters = [p for p in model.parameters() if p.requires_grad]
    saved_groups = state["optimizer"].get("param_groups", [])
    n_saved = sum(len(group["params"]) for group in saved_groups)
    if n_saved != len(parameters):
        raise CheckpointError(f"{where} optimizes {n_saved} parameters but the model has {len(parameters)}: "
                              "it belongs to another model")
    order = [index for group in saved_groups for index in group["params"]]
    for index, parameter in zip(order, _in_group_order(model, saved_groups)):
        moments = state["optimizer"]["state"].get(index, {})
        for name, value in moments.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != parameter.shape:
                raise CheckpointError(f"{where} holds {name} of shape {tuple(value.shape)} for a parameter of "
                                      f"shape {tuple(parameter.shape)}: it belongs to another model")
    return state


def _in_group_order(model: nn.Module, saved_groups: list[dict[str, Any]]) -> list[nn.Parameter]:
    """The model's trainable parameters in the order the Trainer's optimizer groups list them:
    matrices (decayed) first, then the rest (see ``seqlab.training``)."""
    from seqlab.training import parameter_groups

    return [p for group in parameter_groups(model) for p in group]


def json_ready(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by None, so that the JSON seqlab
    writes is JSON (no NaN or Infinity) and a reader sees "undefined", not a number."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync(path: str | Path) -> None:
    """Flush a file or directory to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _version() -> str:
    from seqlab import __version__

    return __version__
