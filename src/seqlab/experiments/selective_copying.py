"""Selective copying: what selection buys (Gu and Dao 2023, "Mamba", section 4.1.1 and Table 1).

Four 2-layer language models of width ``WIDTH`` are trained on selective copying
(``seqlab.tasks.diagnostics.SelectiveCopying``): ``N_MEMORIZE`` data tokens from ``N_SYMBOLS``
symbols at random positions among ``LENGTH`` blanks, then as many markers, at which the data
tokens are to be written in order. The models are Mamba (the selective SSM), S4D (the same block
with the SSM made time-invariant: the comparison isolates selection), Hyena (time-invariant long
convolutions with data-controlled gates) and a Transformer with RoPE (attention, for reference).
Each trains for ``STEPS`` steps of ``BATCH`` fresh sequences (or until its validation loss
reaches ``TARGET_LOSS``), AdamW at ``LR`` without weight decay (with 0.1, Mamba reached 58% in
1,500 steps and learnt far more slowly: decay pulls towards zero the sharp input-dependent step
sizes with which a selective SSM holds a token and skips a blank), and is scored on a fixed test
set: the fraction of data tokens written right, against the chance baseline 1 / ``N_SYMBOLS``.

The paper trains at length 4,096 with 16 tokens from a vocabulary of 16 for 400K steps on a GPU;
here the sequence is shorter and the models narrower, so that every model trains in a few minutes
on two CPU cores. What is kept is what makes the task selective: where the data tokens stand
changes from one sequence to the next, so a model must decide by content what enters its state.

The claims the report decides (``CLAIMS``), Gu and Dao 2023, Table 1 (S6 layers 97-99.8%; the
same architectures with the time-invariant S4 layer 18.3-57.0%; Hyena 30.1%):

- Mamba writes at least ``SOLVED`` = 95% of the data tokens right;
- S4D, the same block without selection, stays far below: under ``LTI_CEILING`` = 60% (the best
  time-invariant result in Table 1 is 57.0%).

tests/test_experiments.py checks the verdicts on fabricated numbers and trains a tiny model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seqlab.experiments import Claim, Evidence, Setup, StepBudget, finish_report, train_setup
from seqlab.report_render import check_report_directory, mark_written
from seqlab.tasks.diagnostics import SelectiveCopying

CLAIM = ("A selective SSM (Mamba) solves selective copying, where the same block with a time-invariant "
         "SSM (S4D) does not (Gu and Dao 2023, Table 1).")
LENGTH = 64                        # blanks and data tokens, before the markers
N_MEMORIZE = 8
N_SYMBOLS = 8
WIDTH = 32
LR = 3e-3
STEPS = 4000                       # per model; the budget the claims are stated for
MODELS = {
    "mamba": Setup("mamba", {"d_model": WIDTH, "d_state": 8, "chunk_size": 32}, lr=LR, steps=STEPS),
    "s4d": Setup("s4d", {"d_model": WIDTH, "d_state": 8}, lr=LR, steps=STEPS),
    "hyena": Setup("hyena", {"d_model": WIDTH, "l_max": LENGTH + N_MEMORIZE}, lr=LR, steps=STEPS),
    "transformer": Setup("transformer", {"d_model": WIDTH, "positions": "rope", "n_heads": 2,
                                         "max_len": LENGTH + N_MEMORIZE}, lr=LR, steps=STEPS),
}
BATCH = 32
SEED = 0
DEVICE = "cpu"
QUICK_STEPS = 30                   # --quick: a first look, too short to decide the claims
TARGET_LOSS = 0.01                 # validation cross-entropy at which a run stops early
SOLVED = 0.95
LTI_CEILING = 0.60
WRITTEN = ("report.md",)


@dataclass(frozen=True)
class ModelResult:
    """One model trained on selective copying: its steps, time and test scores."""

    model: str
    steps: int
    seconds: float
    accuracy: float                # the fraction of data tokens written right
    loss: float                    # cross-entropy per data token (nats)

    def __str__(self) -> str:
        return f"{self.model}: {100 * self.accuracy:.1f}% after {self.steps:,} steps"


Measurements = dict[str, ModelResult]


def make_task() -> SelectiveCopying:
    return SelectiveCopying(LENGTH, N_MEMORIZE, N_SYMBOLS, eval_size=500, seed=SEED)


def train(model: str, max_steps: int, progress: bool = False) -> ModelResult:
    """Train one model for at most ``max_steps``; its steps, time and test scores."""
    task = make_task()
    network, result = train_setup(MODELS[model], task, max_steps, batch_size=BATCH, eval_every=100, seed=SEED,
                                  device=DEVICE, progress=progress, target_loss=TARGET_LOSS)
    metrics = task.evaluate(network, "test")
    return ModelResult(model, result.steps, result.train_seconds, metrics["accuracy"], metrics["loss"])


def measure(max_steps: int, progress: bool = False) -> Measurements:
    """Every model trained for at most ``max_steps``."""
    return {model: train(model, max_steps, progress) for model in MODELS}


def mamba_copies(measured: Measurements) -> Evidence:
    """Held when Mamba writes at least ``SOLVED`` of the data tokens right."""
    run = measured["mamba"]
    return Evidence(run.accuracy >= SOLVED, str(run))


def s4d_stays_far_below(measured: Measurements) -> Evidence:
    """Held when S4D writes under ``LTI_CEILING`` of the data tokens right."""
    run = measured["s4d"]
    return Evidence(run.accuracy < LTI_CEILING, f"{run}; chance {100 / N_SYMBOLS:.1f}%")


CLAIMS = (
    Claim(statement=f"Mamba writes at least {SOLVED:.0%} of the data tokens right within {STEPS:,} steps",
          source="Gu and Dao 2023, section 4.1.1 and Table 1 (S6: 97.0-99.8%)",
          steps_needed=STEPS, check=mamba_copies),
    Claim(statement=f"S4D, Mamba's block with a time-invariant SSM, stays under {LTI_CEILING:.0%} after "
                    f"{STEPS:,} steps",
          source="Gu and Dao 2023, Table 1 (S4: 18.3-57.0%)",
          steps_needed=STEPS, check=s4d_stays_far_below),
)


def run(out_dir: str | Path = "runs/selective-copying", quick: bool = False, progress: bool = True) -> str:
    """Train every model and return the report: the table of test accuracies, then one verdict
    line per claim (``not tested`` for a ``quick`` run)."""
    out_dir = Path(out_dir)
    check_report_directory(out_dir, WRITTEN)
    budget = StepBudget(steps=QUICK_STEPS if quick else STEPS, quick=quick)
    measured = measure(budget.steps, progress)
    lines = [CLAIM, "",
             f"Selective copying: {N_MEMORIZE} data tokens from {N_SYMBOLS} symbols at random positions among "
             f"{LENGTH} positions, then {N_MEMORIZE} markers; 2-layer models of width {WIDTH}, batch {BATCH}, "
             f"AdamW at {LR:g} without weight decay, at most {budget.steps:,} steps (stopping at validation loss {TARGET_LOSS}). "
             f"Chance: {100 / N_SYMBOLS:.1f}%.", "",
             "| model | steps | seconds | test accuracy | test loss |", "|---|---|---|---|---|"]
    for result in measured.values():
        lines.append(f"| {result.model} | {result.steps:,} | {result.seconds:.0f} | {100 * result.accuracy:.1f}% | "
                     f"{result.loss:.3f} |")
    ordered = " > ".join(result.model for result in sorted(measured.values(), key=lambda r: -r.accuracy))
    lines += ["", f"ordering by test accuracy: {ordered}"]
    report = finish_report(lines, CLAIMS, measured, budget, seed=SEED, device=DEVICE)
    (out_dir / "report.md").write_text(report + "\n")
    mark_written(out_dir, WRITTEN)
    return report
