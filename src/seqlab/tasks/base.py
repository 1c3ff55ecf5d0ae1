"""The task protocol: what every task provides, so that training, evaluation, prediction,
comparison, reports, checkpoints and the command line never ask which task they run.

A task owns its data, splits, batching, loss and metrics; a model never knows where its data
came from. Each task is one file in this package, registered by name::

    @register_task("tag")
    class Tagging(Task):
        Options = TaggingOptions            # the CLI's --task tag flags, from its fields
        report = ReportSpec(columns=(...), curve=Curve("valid_accuracy", ...))
        ...

and every module here is imported on first use of the registry, so the file is the whole
registration. What a task provides:

- ``Options``: a frozen dataclass of plain values documented in an ``Attributes:`` section;
  ``seqlab train/compare --task NAME`` generate their task flags from it (``seqlab.fields``).
  ``from_options(options)`` builds the task: reads and splits the data, trains tokenizers.
- ``model_defaults()``: config values a model for this task takes (vocabulary and label set
  sizes); ``example_model_defaults()`` gives small data-free ones, for ``seqlab models``. The
  fields named in ``matched_config_fields`` must equal the model's: ``check_model`` says so.
- ``spec()`` / ``from_spec(spec, artifacts, data=None, with_data=True)``: a JSON description
  from which the task is rebuilt for a saved run, over its own data, other ``data`` given at
  evaluation (a whole file then becomes the test split), or no data (to predict).
- ``artifacts()``: what the task learnt from its data and a run needs again (tokenizers,
  vocabularies, scalers), each saved by name as ``NAME.json`` in every checkpoint; a task lists
  their loaders in ``artifact_loaders``.
- ``train_batch(batch_size, generator)``: a tuple of tensors whose first dimension is the
  batch (the Trainer slices rows for processes and micro-batches); ``batch_tokens(batch)``
  counts the tokens it holds, for throughput; ``loss_items(batch)`` counts what the loss
  averages over.
- ``loss(model, batch)``: the one training loss; the Trainer adds a model's auxiliary losses
  (mixture-of-experts balancing) to it, for every task alike (``with_auxiliary_loss``), so no
  task special-cases them. ``training_schedule(step)`` sets what the loss varies with the step (scheduled sampling's probability) and returns it for the log.
- ``evaluate(model, split, max_batches=None, details=False) -> metrics``, always with
  ``loss``; ``details`` adds what is not a number (a confusion summary) for ``seqlab eval``.
- ``predict(model, inputs, options)``: parses the user's lines and formats one output each,
  so ``seqlab predict RUN < input`` works for every task; ``PredictOptions`` are its flags and
  ``predict_command`` a thin alias (``generate``, ``tag``, ``classify``).
- ``report``: the comparison table's task columns and the learning curve (``seqlab.report``);
  ``describe()``: one line on the data; ``showcase(model)``: what a report shows of a model.
"""

from __future__ import annotations

import abc
import dataclasses
import difflib
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from seqlab.contracts import auxiliary_loss
from seqlab.errors import CheckpointError, ConfigError
from seqlab.fields import make_config
from seqlab.report import Breakdown, Column, Curve


@dataclass(frozen=True)
class ReportSpec:
    """How a task's comparison is reported.

    Attributes:
        columns: the task's table columns over each model's test metrics (and any metric its
            showcase measures); the first ranks the models.
        curve: the validation metric the learning-curve plot shows against training time.
        speed: the label of the training-throughput column, in the task's unit.
        figures: the names of the figures a model's showcase may draw (each written as
            ``MODEL-NAME.png``, so a report directory is checked for them before training).
        breakdown: whether a showcase may give a ``Breakdown`` (plotted as ``breakdown.png``).
    """

    columns: tuple[Column, ...]
    curve: Curve
    speed: str = "train tok/s"
    figures: tuple[str, ...] = ()
    breakdown: bool = False


@dataclass
class Showcase:
    """What a report shows of one model: preformatted sections (heading -> text), any metric
    measured while making them (e.g. generation tokens per second), a test metric by groups of
    the inputs, and figures (name from ``ReportSpec.figures`` -> PNG bytes)."""

    sections: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    breakdown: Breakdown | None = None
    figures: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class NoOptions:
    """A task or prediction without options."""


class Task(abc.ABC):
    """Base of every task; see the module docstring for the protocol."""

    name: ClassVar[str]                                   # set by @register_task
    Options: ClassVar[type] = NoOptions
    PredictOptions: ClassVar[type] = NoOptions
    predict_command: ClassVar[str | None] = None          # a CLI alias of `seqlab predict`
    predict_help: ClassVar[str] = "one input per line"    # what an input line is
    inline_flag: ClassVar[str] = "--text"                 # the flag giving one input inline
    report: ClassVar[ReportSpec]
    default_budget_seconds: ClassVar[float] = 90.0        # `seqlab compare --task NAME` default
    compare_defaults: ClassVar[dict[str, Any]] = {}       # Options values compare uses by default
    matched_config_fields: ClassVar[tuple[str, ...]] = ()
    artifact_loaders: ClassVar[dict[str, Callable[[Path], Any]]] = {}
    optional_artifacts: ClassVar[tuple[str, ...]] = ()     # artifacts a run may lack (a borrowed tokenizer)

    # ---- building ------------------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def from_options(cls, options: Any) -> Task:
        """The task over the data ``options`` name (an instance of ``cls.Options``)."""

    @classmethod
    def options(cls, values: dict[str, Any] | None = None, *, for_compare: bool = False) -> Any:
        """``cls.Options`` from ``values`` (strings are converted), with a clear error for a
        missing required value."""
        values = {**(cls.compare_defaults if for_compare else {}), **(values or {})}
        for option in dataclasses.fields(cls.Options):
            required = option.default is dataclasses.MISSING and option.default_factory is dataclasses.MISSING
            if required and values.get(option.name) is None:
                flag = "--" + option.name.replace("_", "-")
                raise ConfigError(f"--task {cls.name} needs {flag}; see `seqlab train --task {cls.name} --help`")
        return make_config(cls.Options, {key: value for key, value in values.items() if value is not None})

    @classmethod
    @abc.abstractmethod
    def from_spec(cls, spec: dict[str, Any], artifacts: dict[str, Any], data: str | None = None,
                  with_data: bool = True) -> Task:
        """The task a run was trained on, with its saved ``artifacts``; over other ``data`` when
        given (for evaluation), or without data when ``with_data`` is False (for prediction)."""

    @abc.abstractmethod
    def spec(self) -> dict[str, Any]:
        """A JSON description from which ``from_spec`` rebuilds this task (it has ``"task"``)."""

    @abc.abstractmethod
    def artifacts(self) -> dict[str, Any]:
        """What a run must keep beside the weights, by name; each has ``save(path)``."""

    @classmethod
    def load_artifacts(cls, directory: str | Path) -> dict[str, Any]:
        """The artifacts saved in a checkpoint ``directory`` (``NAME.json`` for each name)."""
        loaded = {}
        for name, loader in cls.artifact_loaders.items():
            path = Path(directory) / f"{name}.json"
            if not path.is_file() and name in cls.optional_artifacts:
                continue
            if not path.is_file():
                raise CheckpointError(f"checkpoint {str(directory)!r} is missing {path.name}; it is incomplete")
            loaded[name] = loader(path)
        return loaded

    # ---- models --------------------------------------------------------------------------

    @abc.abstractmethod
    def model_defaults(self) -> dict[str, Any]:
        """Config values a model for this task takes (vocabulary, label set, context)."""

    @classmethod
    @abc.abstractmethod
    def example_model_defaults(cls) -> dict[str, Any]:
        """Small data-free ``model_defaults``, to build every model for ``seqlab models``."""

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model whose sizes do not fit this task's data (``matched_config_fields``).

        Raises:
            ConfigError: naming the field, the model's value and the task's.
        """
        config = getattr(model, "config", None)
        defaults = self.model_defaults()
        for name in self.matched_config_fields:
            if config is not None and hasattr(config, name) and getattr(config, name) != defaults[name]:
                raise ConfigError(f"the model's {name} is {getattr(config, name)} but the {self.name} task's data "
                                  f"has {defaults[name]}; do not set {name}: it comes from the data")

    # ---- training and evaluation ---------------------------------------------------------

    @abc.abstractmethod
    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """A training batch: tensors whose first dimension is ``batch_size``."""

    def batch_tokens(self, batch: Sequence[Tensor]) -> int:
        """The tokens (or words, or sequences) a ``train_batch`` holds, for throughput."""
        return batch[0].numel()

    def loss_items(self, batch: Sequence[Tensor]) -> int:
        """How many items ``loss`` averages over in ``batch`` (its denominator): rows by
        default; a task whose loss is a mean over a varying number of words per row counts
        the words. The Trainer weights micro-batches and processes by it, so a step over a
        split batch equals the step over the whole batch."""
        return len(batch[0])

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Sequence[Tensor]) -> Tensor:
        """The scalar training loss of ``model`` on a ``train_batch``."""

    def training_schedule(self, step: int) -> dict[str, float]:
        """Called before each training step with the steps done so far: set what ``loss``
        varies with the step, and return it by name for the training log (none by default).
        A function of ``step`` alone, so every process and a resumed run agree."""
        return {}

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, split: str = "valid", *, max_batches: int | None = None,
                 details: bool = False) -> dict[str, Any]:
        """Metrics of ``model`` on ``split``, always with ``loss``; numbers only unless
        ``details``. ``max_batches`` limits it to a fixed first part (quick checks in training)."""

    @property
    def train_tokens(self) -> int:
        """Tokens in the training data (a fitted model's throughput is counted over them)."""
        return 0

    # ---- use and reports -----------------------------------------------------------------

    @abc.abstractmethod
    def predict(self, model: nn.Module, inputs: Sequence[str], options: Any = None) -> list[str]:
        """One formatted output per input line (``options``: a ``PredictOptions``).

        Raises:
            DataError: an input this task cannot read, naming it.
        """

    def describe(self) -> str:
        """One line on the task and its data, for reports; `backticks` mark code."""
        return f"task `{self.name}`"

    def showcase(self, model: nn.Module) -> Showcase:
        """What a report shows of ``model`` (a sample, a tagged sentence, a prediction)."""
        return Showcase()


def tokenizer_from(source: str | Path) -> Any:
    """The tokenizer of a run (or checkpoint) directory, or of a ``tokenizer.json`` file, for a
    task that reads its text with another run's tokenizer (to fine-tune that run's model)."""
    from seqlab.data.tokenizers import load_tokenizer
    from seqlab.rundir import resolve_checkpoint

    source = Path(source)
    if source.is_dir():
        source = resolve_checkpoint(source) / "tokenizer.json"
    return load_tokenizer(source)


def with_auxiliary_loss(loss: Tensor, model: nn.Module) -> Tensor:
    """What the Trainer minimises: the task's ``loss`` plus the auxiliary losses the model's
    modules left in this forward (``seqlab.contracts.auxiliary_loss``: mixture-of-experts
    balancing), the one mechanism by which any model's auxiliary loss reaches the optimiser."""
    extra = auxiliary_loss(model)
    return loss if extra is None else loss + extra.to(loss.dtype)


# ---- the registry ------------------------------------------------------------------------

_TASKS: dict[str, type[Task]] = {}
_loaded = False


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator adding a task class to the registry under ``name``."""

    def add(task_class: type[Task]) -> type[Task]:
        if name in _TASKS:
            raise ValueError(f"task name {name!r} is registered twice")
        task_class.name = name
        _TASKS[name] = task_class
        return task_class

    return add


def _ensure_loaded() -> None:
    """Import every module of this package, which registers every task."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import seqlab.tasks

    for module in pkgutil.iter_modules(seqlab.tasks.__path__, "seqlab.tasks."):
        importlib.import_module(module.name)


def task_names() -> list[str]:
    """Registered task names, in registration order."""
    _ensure_loaded()
    return list(_TASKS)


def get_task(name: str) -> type[Task]:
    """The task class registered as ``name``.

    Raises:
        ConfigError: an unknown name, with the closest known one and the list.
    """
    _ensure_loaded()
    if name not in _TASKS:
        close = difflib.get_close_matches(str(name), list(_TASKS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown task {name!r}{hint}; known tasks: {', '.join(_TASKS)}")
    return _TASKS[name]
