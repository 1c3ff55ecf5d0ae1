"""``seqlab reproduce NAME``: re-run a result from the literature and say whether it held.

An experiment is a module registered in ``EXPERIMENTS`` that defines

- ``CLAIM``: one line for ``reproduce --list``, what the literature says and where;
- ``CLAIMS``: the ``Claim`` objects a run decides, each a one-line statement, its source, the
  step budget a run needs before it can test the statement, and the check that decides it from
  the measured numbers;
- ``STEPS`` and ``QUICK_STEPS``: the step budget of a full run, enough for every claim, and of
  a ``--quick`` run, a first look in minutes that is too short for any of them;
- ``run(out_dir, quick=False, progress=True) -> str``: trains what it needs, writes its plots
  and ``report.md`` into ``out_dir``, and returns the report, which ``finish_report`` ends with
  one verdict line per claim, in the order of ``CLAIMS``:

      held: <claim> [<source>] (<the numbers that decide it>)
      did not hold: <claim> [<source>] (<numbers>)
      not tested: <claim> [<source>] (<why>; measured: <numbers>)

A claim is tested only by a run whose step budget reaches the claim's ``steps_needed``; below
it (``--quick``, or any other shorter budget) the verdict is "not tested", with the numbers
measured so far, so a short run can neither pass nor fail a claim it could not decide.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Generic, Literal, Mapping, Sequence, TypeVar

from seqlab import __version__
from seqlab.errors import ConfigError

EXPERIMENTS = {
    "adding-problem": "seqlab.experiments.adding_problem",
    "associative-recall": "seqlab.experiments.associative_recall",
    "attention-length": "seqlab.experiments.attention_length",
    "induction-heads": "seqlab.experiments.induction_heads",
    "length-extrapolation": "seqlab.experiments.length_extrapolation",
    "m4-hourly": "seqlab.experiments.m4_hourly",
    "selective-copying": "seqlab.experiments.selective_copying",
}

Measured = TypeVar("Measured")            # whatever an experiment measures, e.g. MSE per (cell, length)
Outcome = Literal["held", "did not hold", "not tested"]


@dataclass(frozen=True)
class Evidence:
    """What a claim's check found in the measured numbers.

    Attributes:
        held: whether the numbers satisfy the claim.
        numbers: the numbers that decide it, as printed in the verdict line.
    """

    held: bool
    numbers: str


@dataclass(frozen=True, kw_only=True)
class Claim(Generic[Measured]):
    """One statement from the literature that an experiment's numbers confirm or refute.

    Attributes:
        statement: the claim in one line, with its thresholds ("... test MSE below 0.01 ...").
        source: where the literature makes it ("Hochreiter and Schmidhuber 1997, experiment 4").
        steps_needed: the optimizer steps per training run that the statement allows ("reaches
            ... within 2,000 steps"); a run with a smaller budget does not test it.
        check: decides the statement from the experiment's measurements.
    """

    statement: str
    source: str
    steps_needed: int
    check: Callable[[Measured], Evidence]

    def __post_init__(self) -> None:
        for name in ("statement", "source"):
            text = getattr(self, name)
            if not text or "\n" in text:
                raise ConfigError(f"a claim's {name} must be one non-empty line, got {text!r}")
        if self.steps_needed < 1:
            raise ConfigError(f"steps_needed must be >= 1, got {self.steps_needed}")

    def __str__(self) -> str:
        return f"{self.statement} [{self.source}]"


@dataclass(frozen=True, kw_only=True)
class StepBudget:
    """The optimizer steps each training run of an experiment may take (it may stop sooner),
    or whatever else bounds the work a claim needs (``unit``: the series a forecasting
    benchmark scores).

    Attributes:
        steps: the most steps per training run (or units of work).
        quick: whether this is the shortened ``--quick`` budget (it only changes the wording).
        unit: what ``steps`` counts.
    """

    steps: int
    quick: bool = False
    unit: str = "steps"

    def __str__(self) -> str:
        return f"{'quick run' if self.quick else 'run'} of {self.steps:,} {self.unit}"


@dataclass(frozen=True)
class Verdict:
    """A claim, what became of it in one run, and the numbers behind that."""

    claim: Claim
    outcome: Outcome
    numbers: str
    untested_because: str = ""

    def line(self) -> str:
        """The report's line for this claim: ``held: <claim> (<numbers>)`` and so on."""
        if self.outcome == "not tested":
            return f"not tested: {self.claim} ({self.untested_because}; measured: {self.numbers})"
        return f"{self.outcome}: {self.claim} ({self.numbers})"


def judge(claim: Claim[Measured], measured: Measured, budget: StepBudget) -> Verdict:
    """Decide ``claim`` from ``measured``, or say why a run of ``budget`` cannot.

    The check runs either way, so an untested claim still shows what was measured.
    """
    evidence = claim.check(measured)
    if budget.steps < claim.steps_needed:
        return Verdict(claim, "not tested", evidence.numbers,
                       f"{budget}; the claim needs up to {claim.steps_needed:,}")
    return Verdict(claim, "held" if evidence.held else "did not hold", evidence.numbers)


def provenance(seed: int, device: str) -> str:
    """What a reader needs to rerun the report: the seqlab and torch versions, seed and device."""
    import torch           # here, so that `reproduce --list` stays light

    return f"seqlab {__version__}, torch {torch.__version__}, seed {seed}, device {device}"


def finish_report(body: Sequence[str], claims: Sequence[Claim[Measured]], measured: Measured,
                  budget: StepBudget, *, seed: int, device: str) -> str:
    """The report: ``body``, the provenance and budget, then one verdict line per claim, last."""
    verdicts = [judge(claim, measured, budget).line() for claim in claims]
    return "\n".join([*body, "", f"{provenance(seed, device)}; {budget}", "", *verdicts])


@dataclass(frozen=True)
class Setup:
    """How an experiment builds and trains one of its models.

    Attributes:
        name: the registered model.
        overrides: its config fields.
        lr: the peak learning rate.
        steps: its training steps, the learning rate annealed over them.
    """

    name: str
    overrides: dict
    lr: float
    steps: int


def train_setup(setup: Setup, task: Any, max_steps: int, *, batch_size: int, eval_every: int, seed: int,
                device: str, progress: bool, target_loss: float | None = None) -> tuple[Any, Any]:
    """(the model, the Trainer's result): ``setup``'s 2-layer language model built for ``task``
    from ``seed`` and trained for its steps (at most ``max_steps``) by AdamW without weight
    decay at its learning rate, warmed up over a tenth of the steps (at most 100), then
    annealed; stopping early at validation loss ``target_loss`` when given."""
    import torch           # here, so that `reproduce --list` stays light

    from seqlab import registry
    from seqlab.training import TrainConfig, Trainer

    torch.manual_seed(seed)
    model = registry.build(setup.name, "lm", vocab_size=task.vocab_size, n_layers=2, **setup.overrides)
    steps = min(setup.steps, max_steps)
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=setup.lr, warmup_steps=min(100, steps // 10),
                         weight_decay=0.0, eval_every=eval_every, eval_batches=1, target_loss=target_loss, seed=seed,
                         progress=progress, device=device)
    return model, Trainer(model, task, config).fit()


@dataclass(frozen=True)
class AccuracySweep:
    """One trained model, tested at each value of a swept setting (a test length, a number of
    key-value pairs): its training steps and time, and its test accuracy at each value."""

    model: str
    steps: int
    seconds: float
    accuracy: dict[int, float]

    def __str__(self) -> str:
        accuracies = ", ".join(f"{setting}: {100 * value:.1f}%" for setting, value in self.accuracy.items())
        return f"{self.model} after {self.steps:,} steps ({accuracies})"

    def cells(self) -> str:
        """The accuracies as the cells of a Markdown table row."""
        return " | ".join(f"{100 * value:.1f}%" for value in self.accuracy.values())


def sweep_table(measured: Mapping[str, AccuracySweep], setups: Mapping[str, Setup], headers: Sequence[str]
                ) -> list[str]:
    """The Markdown table of sweeps: each model's learning rate, steps, seconds and accuracies,
    under ``headers`` (one per setting)."""
    lines = ["| model | lr | steps | seconds | " + " | ".join(headers) + " |", "|---|---|---|---|" + "---|" * len(headers)]
    for result in measured.values():
        lines.append(f"| {result.model} | {setups[result.model].lr:g} | {result.steps:,} | {result.seconds:.0f} | "
                     f"{result.cells()} |")
    return lines


def at_least(label: str, threshold: float, settings: Sequence[int] | None = None
             ) -> Callable[[Mapping[str, AccuracySweep]], Evidence]:
    """The check that model ``label``'s accuracy is at least ``threshold`` at every setting (or
    at each of ``settings``); its numbers are the model's whole sweep."""

    def check(measured: Mapping[str, AccuracySweep]) -> Evidence:
        run = measured[label]
        chosen = run.accuracy if settings is None else {setting: run.accuracy[setting] for setting in settings}
        return Evidence(all(value >= threshold for value in chosen.values()), str(run))

    return check


def plot_curves(curves: Mapping[str, Mapping[int, float | None]], path: Path, *, title: str, xlabel: str,
                ylabel: str, lines: Sequence[tuple[Literal["h", "v"], float, str]] = (),
                ylim: tuple[float, float] | None = None) -> Path:
    """One line per curve, y against x on a log2 x axis ticked at every x; points whose y is
    None are left out. ``lines`` adds grey reference lines, ("h" or "v", where, label). Saved as PNG."""
    import matplotlib          # here, so that `reproduce --list` stays light

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label, curve in curves.items():
        points = [(x, y) for x, y in curve.items() if y is not None]
        axis.plot(*zip(*points), marker="o", label=label)
    for orientation, where, label in lines:
        draw = axis.axhline if orientation == "h" else axis.axvline
        draw(where, color="grey", linestyle="--" if orientation == "h" else ":", label=label)
    ticks = sorted({x for curve in curves.values() for x in curve})
    axis.set_xscale("log", base=2)
    axis.set_xticks(ticks, [str(x) for x in ticks])
    if ylim is not None:
        axis.set_ylim(*ylim)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def get(name: str) -> ModuleType:
    """The experiment module registered as ``name``; ``ConfigError`` for an unknown name."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])
