"""The adding problem: why gates were invented (Hochreiter and Schmidhuber 1997, experiment 4).

Elman, LSTM and GRU networks of the same width are trained on the adding problem at sequence
lengths 50 and 200 (``seqlab.tasks.diagnostics.AddingProblem``), each until its validation MSE
reaches ``TARGET_MSE`` or ``STEPS`` run out, and scored on a fixed test set next to the
baseline of always answering 1, MSE = Var(u1 + u2) = 1/6 = 0.167. The gradient-flow plot shows
|| dLoss/dh_t || at initialisation on length 200: at initialisation the gradient of every cell
dies away towards the start of the sequence (the LSTM's too: its forget gate starts half open);
what the gates add is that training can open them and keep it, which the Elman cell cannot.

The claims the report decides (``CLAIMS``), each after at most ``STEPS`` steps per run:

- LSTM and GRU reach test MSE below ``SOLVED_MSE`` = 0.01 at both lengths, i.e. they add the
  two marked values to within about 0.1 (Hochreiter and Schmidhuber 1997, experiment 4; the
  task in the form of Le et al. 2015, section 4.1).
- The Elman network stays near the baseline at length 200: test MSE above
  ``NEAR_BASELINE_MSE`` = 0.1. A model that carried only the later marked value to the end
  and guessed the mean 0.5 for the earlier one would score Var(u1) = 1/12 = 0.083, so above
  0.1 the network has not carried the first marked value across the >= 100 steps between it
  and the answer (Bengio et al. 1994; Le et al. 2015, section 4.1).

tests/test_adding_problem.py trains the runs these claims rest on; tests/test_experiments.py
checks the verdicts on fabricated numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from seqlab.diagnostics import gradient_flow, plot_gradient_flow
from seqlab.experiments import Claim, Evidence, StepBudget, finish_report
from seqlab.models.recurrent_heads import ManyToOne, RecurrentHeadConfig
from seqlab.report_render import check_report_directory, mark_written
from seqlab.tasks.diagnostics import AddingProblem
from seqlab.training import TrainConfig, Trainer

CLAIM = ("Gated recurrent networks (LSTM, GRU) solve the adding problem at length 200, where a "
         "plain Elman network stays at the baseline (Hochreiter and Schmidhuber 1997).")
CELLS = ("elman", "lstm", "gru")
WRITTEN = ("report.md", "gradient_flow.png")            # what a run writes into its out_dir
GATED_CELLS = ("lstm", "gru")
LENGTHS = (50, 200)
HIDDEN = 64
SEED = 0
DEVICE = "cpu"
STEPS = 2000                  # per training run; the budget the claims are stated for
QUICK_STEPS = 500             # --quick: a first look, too short to decide the claims
TARGET_MSE = 0.005            # validation MSE at which a run stops early
SOLVED_MSE = 0.01
NEAR_BASELINE_MSE = 0.1


@dataclass(frozen=True)
class CellResult:
    """One cell trained at one length: how long it trained and its test MSE."""

    cell: str
    length: int
    steps: int
    seconds: float
    test_mse: float
    stopped_by: str             # "target" (validation MSE reached TARGET_MSE) or "steps"

    def __str__(self) -> str:
        return f"{self.cell} at {self.length}: MSE {self.test_mse:.4f} after {self.steps:,} steps"


Measurements = dict[tuple[str, int], CellResult]          # (cell, length) -> result


def build(cell: str, seed: int = SEED) -> ManyToOne:
    torch.manual_seed(seed)
    return ManyToOne(RecurrentHeadConfig(n_outputs=1, n_features=2, cell=cell, d_model=HIDDEN))


def train(cell: str, length: int, max_steps: int, progress: bool = False) -> CellResult:
    """Train one cell at one length for at most ``max_steps``; its steps, time and test MSE."""
    task = AddingProblem(length)
    model = build(cell)
    # Adam at a constant 1e-2 after a short warm-up: gated cells sit on the baseline plateau for
    # hundreds of steps before they find the markers, and a decaying rate can stall them there.
    config = TrainConfig(steps=max_steps, batch_size=64, lr=1e-2, min_lr_ratio=1.0, warmup_steps=50,
                         weight_decay=0.0, betas=(0.9, 0.999), grad_clip=1.0, eval_every=100,
                         target_loss=TARGET_MSE, seed=SEED, progress=progress, device=DEVICE)
    result = Trainer(model, task, config).fit()
    return CellResult(cell, length, result.steps, result.train_seconds,
                      task.evaluate(model, "test")["mse"], result.stopped_by)


def measure(max_steps: int, progress: bool = False) -> Measurements:
    """Every cell trained at every length, for at most ``max_steps`` each."""
    return {(cell, length): train(cell, length, max_steps, progress) for length in LENGTHS for cell in CELLS}


def gated_cells_solve_it(measured: Measurements) -> Evidence:
    """Held when LSTM and GRU are both below ``SOLVED_MSE`` at every length."""
    runs = [measured[cell, length] for cell in GATED_CELLS for length in LENGTHS]
    return Evidence(all(run.test_mse < SOLVED_MSE for run in runs), "; ".join(map(str, runs)))


def elman_stays_near_the_baseline(measured: Measurements) -> Evidence:
    """Held when the Elman network's test MSE at the longest length is above ``NEAR_BASELINE_MSE``."""
    run = measured["elman", max(LENGTHS)]
    return Evidence(run.test_mse > NEAR_BASELINE_MSE, f"{run}; baseline {AddingProblem.baseline_mse:.3f}")


CLAIMS = (
    Claim(statement=f"LSTM and GRU reach test MSE below {SOLVED_MSE} at lengths "
                    f"{' and '.join(map(str, LENGTHS))} within {STEPS:,} steps",
          source="Hochreiter and Schmidhuber 1997, experiment 4; Le et al. 2015, section 4.1",
          steps_needed=STEPS, check=gated_cells_solve_it),
    Claim(statement=f"the Elman network stays near the {AddingProblem.baseline_mse:.3f} baseline at length "
                    f"{max(LENGTHS)}: test MSE above {NEAR_BASELINE_MSE} after {STEPS:,} steps",
          source="Bengio et al. 1994; Le et al. 2015, section 4.1",
          steps_needed=STEPS, check=elman_stays_near_the_baseline),
)


def gradient_flow_lines(out_dir: Path) -> list[str]:
    """Plot || dLoss/dh_t || at initialisation on the longest length; the report's lines on it."""
    task = AddingProblem(max(LENGTHS))
    batch = task.sample(256, torch.Generator().manual_seed(SEED))
    flows = {cell: gradient_flow(build(cell), batch, task.loss) for cell in CELLS}
    plot = plot_gradient_flow(flows, out_dir / "gradient_flow.png",
                              f"Adding problem, length {max(LENGTHS)}: gradient at initialisation")
    first, last = (f"{flows[c].norms[0].item():.1e}/{flows[c].norms[-1].item():.1e}" for c in ("elman", "lstm"))
    return [f"gradient at t=0 over gradient at t=T-1 at initialisation: elman {first}, lstm {last}",
            f"gradient-flow plot: {plot}"]


def run(out_dir: str | Path = "runs/adding-problem", quick: bool = False, progress: bool = True) -> str:
    """Train every cell at every length, plot the gradient flow, and return the report: the
    table, then one verdict line per claim (``not tested`` for a ``quick`` run)."""
    out_dir = Path(out_dir)
    check_report_directory(out_dir, WRITTEN)
    budget = StepBudget(steps=QUICK_STEPS if quick else STEPS, quick=quick)
    measured = measure(budget.steps, progress)
    lines = [CLAIM, "", f"| cell | length | steps | seconds | test MSE | baseline | solved (< {SOLVED_MSE}) |",
             "|---|---|---|---|---|---|---|"]
    for (cell, length), result in measured.items():
        lines.append(f"| {cell} | {length} | {result.steps} | {result.seconds:.0f} | {result.test_mse:.4f} | "
                     f"{AddingProblem.baseline_mse:.3f} | {'yes' if result.test_mse < SOLVED_MSE else 'no'} |")
    lines += ["", *gradient_flow_lines(out_dir)]
    report = finish_report(lines, CLAIMS, measured, budget, seed=SEED, device=DEVICE)
    (out_dir / "report.md").write_text(report + "\n")
    mark_written(out_dir, WRITTEN)
    return report
