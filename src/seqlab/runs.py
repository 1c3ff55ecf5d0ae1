"""Runs on disk: train into a directory, evaluate it, predict with it, for any task.

These are the library functions behind ``seqlab train``, ``eval`` and ``predict`` (and its
aliases ``generate``, ``tag``, ...); the CLI only parses arguments and prints what they return.
A run's task is recorded in its checkpoints' config.json and rebuilt from there with the
task's saved artifacts, so nothing here knows which task it runs.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from seqlab import registry
from seqlab.budget import Budget
from seqlab.checkpoint import load_checkpoint, read_info
from seqlab.errors import CheckpointError, ConfigError, DataError
from seqlab.rundir import RunDirectory, resolve_checkpoint
from seqlab.tasks.base import get_task
from seqlab.train_config import time_progress
from seqlab.training import TrainConfig, Trainer, TrainResult, fit, learning_rate


@dataclass
class Initialisation:
    """What ``--init-from`` took from another run: parameter names loaded, left new (absent
    there), and skipped (present with another shape: name, shape there, shape here)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    skipped: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"initialised from {self.source}: {len(self.loaded)} tensors loaded, {len(self.new)} new, "
                 f"{len(self.skipped)} skipped for their shape"]
        lines += [f"  loaded  {name}" for name in self.loaded]
        lines += [f"  new     {name}" for name in self.new]
        lines += [f"  skipped {name}: {list(there)} there, {list(here)} here" for name, there, here in self.skipped]
        return "\n".join(lines)


@dataclass
class TrainedRun:
    """What ``train_run`` did: the training result, the last validation row, the task's name,
    and notes for the user (what ``--init-from`` loaded, how ``--extend`` changed the schedule)."""

    result: TrainResult
    metrics: dict[str, Any]
    task: str
    notes: list[str] = field(default_factory=list)


def train_run(
    model_name: str | None,
    out_dir: str | Path,
    *,
    task: str = "lm",
    task_options: dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
    train_options: dict[str, Any] | None = None,
    resume: bool = False,
    extend: bool = False,
    overwrite: bool = False,
    init_from: str | Path | None = None,
) -> TrainedRun:
    """Train ``model_name`` on ``task`` into ``out_dir``.

    With ``resume`` the model, task and training options come from the run's last checkpoint
    and training continues its schedule exactly; ``train_options`` may change what does not
    alter the schedule (``budget_seconds``, ``eval_every``, ``progress``, ...), and ``extend``
    with a larger ``steps`` lengthens the schedule, said in the notes. ``init_from`` loads every
    weight of another run whose name and shape match before training (pre-training, then
    fine-tuning), which is not resuming: the run starts at step 0.

    Raises:
        ConfigError: bad options, checked before any data is read where possible.
        CheckpointError: a run to resume or initialise from is unusable.
    """
    given = dict(train_options or {})
    budget = Budget(given.get("budget_seconds")) if not resume else None
    RunDirectory(out_dir).check(resume=resume, overwrite=overwrite)
    notes: list[str] = []
    if resume:
        if model_overrides or init_from or task_options:
            raise ConfigError("a resumed run keeps its model, task and data; drop --set, --init-from and the task flags")
        loaded = load_checkpoint(out_dir, which="last")
        if model_name is not None and model_name != loaded.info["model"]:
            raise ConfigError(f"{out_dir} holds a {loaded.info['model']!r} run, not {model_name!r}")
        run_task, model = loaded.task(), loaded.model
        options, schedule_note = _resumed_options(loaded.info, given, extend)
        notes += [schedule_note] if schedule_note else []
    else:
        if model_name is None:
            raise ConfigError("name the model to train, e.g. `seqlab train lstm --out DIR`")
        if extend:
            raise ConfigError("--extend lengthens the schedule of a resumed run; use it with --resume")
        task_class = get_task(task)
        registry.get(model_name, task)                 # an unknown model fails before the data is read
        task_options, base_config = _fine_tuning(model_name, task, task_class, dict(task_options or {}), init_from)
        run_task = task_class.from_options(task_class.options(task_options))
        torch.manual_seed(given.get("seed", 0))        # the same initial weights on every rank and rerun
        model = registry.build_for_task(model_name, run_task.model_defaults(),
                                        {**base_config, **(model_overrides or {})}, task=task)
        run_task.check_model(model)
        if init_from is not None:
            notes.append(initialise_from(model, init_from, run_task).summary())
        options = {**getattr(model, "train_defaults", {}), **given}
    if registry.trains_by(model) == "fit":
        result = fit(model, run_task, out_dir, overwrite=overwrite, budget=budget, **given)
    else:
        config = registry.make_config(TrainConfig, options)
        result = Trainer(model, run_task, config, out_dir, budget=budget).fit(resume=resume, overwrite=overwrite)
    return TrainedRun(result, result.history[-1] if result.history else {}, run_task.name, notes)


def _fine_tuning(model_name: str, task: str, task_class: Any, task_options: dict[str, Any],
                 init_from: str | Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Task options and a base model config for a run that starts from ``init_from``.

    Fine-tuning the same model on the same task (an imported Hugging Face checkpoint, or a run
    trained here) starts from that run's config (:func:`inherited_config`) and, unless a
    tokenizer is named, reads the text with that run's tokenizer (``tokenizer_from``).
    """
    base = inherited_config(model_name, task, init_from)
    fields = {field.name for field in dataclasses.fields(task_class.Options)}
    if base and "tokenizer_from" in fields and not {"tokenizer", "tokenizer_from"} & set(task_options):
        task_options["tokenizer_from"] = str(init_from)
    return task_options, base


def inherited_config(model_name: str, task: str, init_from: str | Path | None) -> dict[str, Any]:
    """The config of the run ``init_from`` when it holds the same model for the same task, so
    that every weight fits, less the sizes that come from the data (vocabulary, ...); else {}
    (only the weights whose names and shapes match are then loaded)."""
    if init_from is None:
        return {}
    info = read_info(resolve_checkpoint(init_from))
    if info["model"] != model_name or info["task"]["task"] != task:
        return {}
    matched = set(getattr(get_task(task), "matched_config_fields", ()))
    return {key: value for key, value in info["config"].items() if key not in matched}


# What a resumed run may change: how it is watched and where it runs. Everything else is the
# run's recipe (schedule, optimizer, batch, precision); --extend may lengthen it in steps or time.
CHANGEABLE_ON_RESUME = {"eval_every", "eval_batches", "eval_every_seconds", "patience", "target_loss", "log_every",
                        "device", "progress"}
EXTENDABLE = {"steps", "budget_seconds"}


def _resumed_options(info: dict[str, Any], given: dict[str, Any], extend: bool) -> tuple[dict[str, Any], str | None]:
    """The saved training options with ``given`` on top, keeping the run's recipe unless extended."""
    saved = dict(info["train"])
    done, planned = info["step"], saved.get("steps")
    allowed = CHANGEABLE_ON_RESUME | (EXTENDABLE if extend else set())
    changed = sorted(key for key in set(given) - allowed if given[key] != saved.get(key))
    if changed:
        flag = "--" + changed[0].replace("_", "-").replace("-seconds", "")
        hint = (f"; to train past step {planned}, add --extend with a larger --steps (or --budget)"
                if changed[0] in EXTENDABLE else "; start a new run (or --init-from this one) to change it")
        raise ConfigError(f"--resume continues the run as it was trained ({planned} steps); it cannot change "
                          f"{flag}{hint}")
    if not extend:
        if done >= planned:
            raise ConfigError(f"the run has finished its {planned} steps; to train further, resume with "
                              f"--extend --steps N (N > {planned})")
        return {**saved, **given}, None
    if "steps" not in given and "budget_seconds" not in given:
        raise ConfigError("--extend needs a larger --steps or --budget")
    steps = int(given.get("steps", planned))
    if steps <= done and "steps" in given:
        raise ConfigError(f"--extend needs --steps above the {done} steps the run has done, got {steps}")
    options = {**saved, **given}
    before = registry.make_config(TrainConfig, saved)
    after = registry.make_config(TrainConfig, options)
    spent = info["history"][-1]["train_seconds"] if info.get("history") else 0.0
    rate_before, rate_after = (learning_rate(config, done, time_progress(config, done, spent))
                               for config in (before, after))
    budget = "" if after.budget_seconds is None else f" and {after.budget_seconds:g} s"
    note = (f"schedule extended from {planned} to {after.steps} steps{budget}: the learning rate at step {done} "
            f"becomes {rate_after:.3g} (it was {rate_before:.3g}) and decays to {after.lr * after.min_lr_ratio:.3g}")
    return options, note


def initialise_from(model: nn.Module, source: str | Path, task: Any = None) -> Initialisation:
    """Copy into ``model`` every tensor of ``source``'s best checkpoint whose name and shape match.

    With ``task``, an artifact both runs have (a tokenizer) must be the same in both: an
    embedding row means a token only under the tokenizer it was trained with.

    Raises:
        CheckpointError: ``source`` is not a usable run, or nothing in it matches.
        ConfigError: the runs' shared artifacts differ.
    """
    loaded = load_checkpoint(source)
    if task is not None:
        for name in sorted(set(loaded.artifacts) & set(task.artifacts())):
            if _serialised(loaded.artifacts[name]) != _serialised(task.artifacts()[name]):
                raise ConfigError(f"--init-from {source}: the two runs' {name}s differ, so the ids of its weights "
                                  f"would mean other things here; train this run with that run's {name}")
    theirs, ours = _named_tensors(loaded.model), _named_tensors(model)
    report = Initialisation(str(source))
    update = {}
    for name, tensor in ours.items():
        if name not in theirs:
            report.new.append(name)
        elif theirs[name].shape != tensor.shape:
            report.skipped.append((name, tuple(theirs[name].shape), tuple(tensor.shape)))
        else:
            update[name] = theirs[name]
            report.loaded.append(name)
    if not update:
        raise CheckpointError(f"no parameter of {str(source)!r} matches the model by name and shape; "
                              "--init-from loads only what matches")
    model.load_state_dict(update, strict=False)
    return report


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name, tied ones under each name: what ``--init-from``
    matches. (Not the state dict: a model may save a compact form of a tensor, as the feature
    CRF saves only its non-zero weight rows, whose shape says nothing about the model's.)"""
    return {**dict(model.named_parameters(remove_duplicate=False)),
            **dict(model.named_buffers(remove_duplicate=False))}


def _serialised(artifact: Any) -> bytes:
    """The bytes an artifact saves as (to compare two of them)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "artifact.json"
        artifact.save(path)
        return path.read_bytes()


def evaluate_run(directory: str | Path, data: str | None = None, split: str = "test") -> dict[str, Any]:
    """Metrics of a saved run's best checkpoint on its data's ``split``, or on other ``data``
    (a whole file is then the test split).

    Raises:
        DataError: the evaluation gives a value that is not finite (never printed as a number).
    """
    loaded = load_checkpoint(directory, device=_device())
    task = loaded.task(data)
    if data is not None and split != "test":
        raise ConfigError("with --data the whole file is evaluated; drop --split")
    metrics = task.evaluate(loaded.model, split, details=True)
    for name, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise DataError(f"evaluation gave {name} = {value}: the model assigns no probability to some of "
                            "the data, or the checkpoint is broken")
    return metrics


def predict_with_run(directory: str | Path, inputs: Sequence[str], options: dict[str, Any] | None = None,
                     *, task: str | None = None) -> list[str]:
    """The run's best checkpoint applied to each input line (the task parses and formats).

    ``task`` names the task the caller expects (the ``tag`` alias expects a tagger).

    Raises:
        ConfigError: the run solves another task, or an option its task does not take.
        DataError: no input, or an input the task cannot read.
    """
    loaded = load_checkpoint(directory, device=_device())
    if task is not None and loaded.task_name != task:
        command = get_task(task).predict_command
        raise ConfigError(f"{directory} holds a {loaded.task_name!r} run; `seqlab {command}` needs a {task!r} run "
                          f"(train one with `seqlab train MODEL --task {task}`)")
    if not inputs:
        raise DataError("no input: give one item per line")
    run_task = loaded.task(with_data=False)
    predict_options = registry.make_config(run_task.PredictOptions, options or {})
    return run_task.predict(loaded.model, list(inputs), predict_options)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
