"""Train several models on one task under one time budget, and report what each achieved.

Every model sees the same data, splits, tokenizer and vocabulary, and gets a share of the
budget that bounds all it does: starting its process, reading the data, fitting or training,
evaluating on the test split and showing itself. Models that fit themselves (counts, EM,
L-BFGS) go first, each within an equal share of the whole; the models that train by gradient
steps then split what is left into equal shares, so that they compare on equal time. Each runs in a fresh process, so its peak memory is its own: on CPU the growth of the
process's peak resident set over its size before the model was built, on CUDA the peak of
allocated device memory. The report (``seqlab.report``) ranks the models by the task's first
column, gives each model's actual wall time, and plots the task's learning curve.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import multiprocessing
import platform
import resource
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from seqlab import registry
from seqlab.budget import Budget
from seqlab.contracts import CausalLM
from seqlab.errors import ConfigError
from seqlab.report import Column, ModelResult, Report
from seqlab.runs import inherited_config, initialise_from
from seqlab.scaling import scaling_section
from seqlab.report_render import check_report_directory, report_file_names
from seqlab.tasks.base import get_task
from seqlab.train_config import TrainConfig
from seqlab.training import Trainer, fit

EVALUATIONS_PER_CURVE = 15
REPORT_SECONDS = 2.0           # kept from the budget for writing the report at the end


def default_models(task: str = "lm") -> list[str]:
    """The models of ``task`` that a bare ``seqlab compare --task TASK`` includes."""
    return [entry.name for entry in registry.entries(task) if entry.in_default_compare]


def compare(
    task: str = "lm",
    models: list[str] | None = None,
    task_options: dict[str, Any] | None = None,
    budget_seconds: float | None = None,
    train_options: dict[str, Any] | None = None,
    model_options: dict[str, dict[str, Any]] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    threads: int | None = None,
    init_from: dict[str, str] | None = None,
    scaling: Sequence[int] | None = None,
) -> Report:
    """Fit or train each model on ``task`` within its share of ``budget_seconds``, and report.

    Args:
        task: a registered task name.
        models: registry names for ``task``; None takes ``default_models(task)``.
        task_options: the task's options (its ``Options`` fields); compare's defaults for the
            task (``compare_defaults``, e.g. a shorter context) apply where not given.
        budget_seconds: the wall time of the whole comparison (None: the task's default).
        train_options: ``TrainConfig`` values for every model that trains (e.g. ``steps``).
        model_options: config overrides per model name.
        out_dir: where to write the report (report.md, report.html, curves.png); None writes nothing.
        threads: torch threads in each model's process (None: torch's default).
        init_from: a run per model name whose matching weights the model starts from
            (``seqlab.runs.initialise_from``: a pre-trained encoder), said in its report section.
        scaling: sequence lengths at which to measure each trained language model's costs after
            training, outside the budget (``seqlab.scaling.scaling_section``): a "Length
            scaling" section per model and its ``time_slope``.
    Raises:
        ConfigError: unknown names, bad options or an unusable ``out_dir``, all checked before
            any model starts.
    """
    task_class = get_task(task)
    models = default_models(task) if models is None else models
    if not models:
        raise ConfigError("no models to compare; name at least one with --models")
    entries = [registry.get(name, task) for name in models]
    init_from = dict(init_from or {})
    for name, run in init_from.items():
        if name not in models:
            raise ConfigError(f"--init-from names {name!r}, which is not among the compared models ({', '.join(models)})")
        if not Path(run).is_dir():
            raise ConfigError(f"--init-from {name}={run}: {run!r} is not a run directory")
    if scaling is not None:
        scaling = check_scaling_lengths(scaling, task)
    budget_seconds = task_class.default_budget_seconds if budget_seconds is None else budget_seconds
    if not budget_seconds > 0:
        raise ConfigError(f"budget must be > 0 seconds, got {budget_seconds}")
    train_options = dict(train_options or {})
    registry.make_config(TrainConfig, {**train_options, "budget_seconds": budget_seconds})   # checked now
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    if out_dir is not None:
        _check_report_directory(Path(out_dir), report_file_names(models, task_class.report.figures,
                                                                  task_class.report.breakdown))
    options = task_class.options(task_options, for_compare=True)
    clock = Budget(budget_seconds)
    shared_task = task_class.from_options(options)     # fail here, once, on bad data
    model_options = model_options or {}
    ordered = [e for e in entries if e.trains == "fit"] + [e for e in entries if e.trains == "trainer"]
    results, trained_share = {}, None
    for index, entry in enumerate(ordered):
        share = budget_seconds / len(ordered)
        if entry.trains == "trainer":      # one equal share each, of what the fitted ones left
            trained_share = trained_share or max(clock.remaining() - REPORT_SECONDS, 1.0) / (len(ordered) - index)
            share = trained_share
        results[entry.name] = run_in_fresh_process(
            run_one, task, options, entry.name, share, time.monotonic(), train_options,
            model_options.get(entry.name, {}), progress, threads, init_from.get(entry.name), scaling)
    report = Report(
        title=f"seqlab compare --task {task}",
        description=f"{shared_task.describe()}; budget {budget_seconds:,.0f} s for {len(models)} models",
        columns=(*task_class.report.columns,
                 Column(task_class.report.speed, "train_tokens_per_second", "{:,.0f}", "higher"),
                 Column("params", "parameters", "{:,.0f}"),
                 Column("peak MB", "peak_memory_mb", "{:,.0f}", "lower"),
                 Column("steps", "steps", "{:,.0f}"),
                 Column("wall s", "wall_seconds", "{:,.1f}", "lower")),
        curve=task_class.report.curve,
        results=[results[name] for name in models],
        environment=_environment(threads, budget_seconds, train_options),
    )
    if out_dir is not None:
        report.write(out_dir)
    return report


def run_one(task_name: str, options: Any, name: str, budget_seconds: float, started: float,
            train_options: dict[str, Any], overrides: dict[str, Any], progress: bool, threads: int | None,
            init_from: str | None = None, scaling: Sequence[int] | None = None) -> ModelResult:
    """Build, fit or train, evaluate and showcase one model within ``budget_seconds`` of wall
    time counted from ``started`` (the parent's ``time.monotonic()``, a clock all processes
    share): starting the process and loading the data count. Runs in its own process."""
    if threads is not None:
        torch.set_num_threads(threads)
    clock = Budget(budget_seconds, spent=time.monotonic() - started)
    task = get_task(task_name).from_options(options)
    memory = PeakMemory(train_options)      # from before the model is built: its weights count
    torch.manual_seed(train_options.get("seed", 0))
    model = registry.build_for_task(name, task.model_defaults(), {**inherited_config(name, task_name, init_from),
                                                                  **overrides}, task=task_name)
    task.check_model(model)
    initialised = None if init_from is None else initialise_from(model, init_from, task).summary()
    if registry.trains_by(model) == "fit":
        result = fit(model, task, progress=progress, budget=clock)
        options: dict[str, Any] = {"progress": progress}
    else:
        options = {"steps": 1_000_000, "warmup_steps": 20, "eval_every": 1_000_000,
                   "eval_every_seconds": budget_seconds / EVALUATIONS_PER_CURVE, "eval_batches": 10,
                   "progress": progress, **getattr(model, "train_defaults", {}), **train_options,
                   "budget_seconds": budget_seconds}
        config = registry.make_config(TrainConfig, options)
        result = Trainer(model, task, config, budget=clock, reserve_evaluations=2).fit()   # the test evaluation and the showcase
    statistics = result.statistics                  # of the last training step (e.g. experts' load)
    test = task.evaluate(model, "test")
    shown = task.showcase(model)
    if initialised is not None:
        shown.sections["Initialised from"] = initialised
    if statistics:
        shown.sections["Last training step"] = "\n".join(f"{name}: {value:.4g}" for name, value in statistics.items())
    if scaling and isinstance(model, CausalLM) and registry.trains_by(model) == "trainer":
        shown.sections["Length scaling"], scaling_metrics = scaling_section(model, scaling)
        shown.metrics.update(scaling_metrics)
    metrics = {**test, **shown.metrics, **statistics, "parameters": registry.parameter_count(model), "steps": result.steps,
               "train_seconds": result.train_seconds, "train_tokens_per_second": result.tokens_per_second,
               "peak_memory_mb": memory.peak_mb(), "wall_seconds": clock.elapsed()}
    return ModelResult(name=name, trains=registry.trains_by(model), metrics=metrics, history=result.history,
                       sections=shown.sections, breakdown=shown.breakdown, figures=shown.figures,
                       config=registry.config_to_dict(model.config),
                       train_options={key: value for key, value in options.items() if key != "progress"})


def check_scaling_lengths(lengths: Sequence[int], task: str) -> list[int]:
    """The lengths of ``--scaling``, sorted: two or more, each >= 2, on the lm task."""
    if task != "lm":
        raise ConfigError(f"--scaling measures causal language models: use it with --task lm, not {task!r}")
    lengths = sorted(set(lengths))
    if len(lengths) < 2 or lengths[0] < 2:
        raise ConfigError(f"--scaling needs two or more lengths of at least 2 tokens, got {lengths}")
    return lengths


def run_in_fresh_process(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a new (spawned) process, so its peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def _check_report_directory(out_dir: Path, names: tuple[str, ...]) -> None:
    """The report directory must be one seqlab can write ``names`` in without replacing the
    user's files, and not a run directory."""
    if (out_dir / "run.json").exists():
        raise ConfigError(f"--out {str(out_dir)!r} holds a training run; give another directory for the report")
    check_report_directory(out_dir, names)


def _environment(threads: int | None, budget_seconds: float, train_options: dict[str, Any]) -> dict[str, Any]:
    from seqlab import __version__

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})"
    return {"seqlab": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": device, "threads": threads or torch.get_num_threads(),
            "seed": train_options.get("seed", 0), "budget seconds": budget_seconds,
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


class PeakMemory:
    """Peak memory of this process from now on: on CUDA the peak of allocated device memory,
    on CPU the growth of the peak resident set over the resident size now."""

    def __init__(self, train_options: dict[str, Any]):
        self.on_cuda = torch.cuda.is_available() and train_options.get("device", "auto") != "cpu"
        if self.on_cuda:
            torch.cuda.reset_peak_memory_stats()
        self.baseline_mb = _resident_mb()

    def peak_mb(self) -> float:
        if self.on_cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        return _peak_resident_mb() - self.baseline_mb


def _resident_mb() -> float:
    """Current resident set size of this process (its peak so far where /proc is absent)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except OSError:
        return _peak_resident_mb()
    return pages * resource.getpagesize() / 2**20


def _peak_resident_mb() -> float:
    """Peak resident set size of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
