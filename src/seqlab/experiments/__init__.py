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
from types import ModuleType
from typing import Callable, Generic, Literal, Sequence, TypeVar

from seqlab import __version__
from seqlab.errors import ConfigError

EXPERIMENTS = {
    "adding-problem": "seqlab.experiments.adding_problem",
    "attention-length": "seqlab.experiments.attention_length",
    "length-extrapolation": "seqlab.experiments.length_extrapolation",
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
    """The optimizer steps each training run of an experiment may take (it may stop sooner).

    Attributes:
        steps: the most steps per training run.
        quick: whether this is the shortened ``--quick`` budget (it only changes the wording).
    """

    steps: int
    quick: bool = False

    def __str__(self) -> str:
        return f"{'quick run' if self.quick else 'run'} of {self.steps:,} steps"


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


def get(name: str) -> ModuleType:
    """The experiment module registered as ``name``; ``ConfigError`` for an unknown name."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])
