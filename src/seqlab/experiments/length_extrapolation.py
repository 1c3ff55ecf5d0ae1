"""Train short, test long: how position schemes extrapolate (Press, Smith and Lewis 2021).

Four decoder-only Transformers of one shape, differing only in their positions (sinusoidal,
learned, RoPE, ALiBi), are trained on the built-in corpus (characters) at context
``TRAIN_LENGTH`` = 128 for the same wall time each (``SECONDS``, capped at ``STEPS`` steps), then
evaluated on the test split in non-overlapping windows of 128, 256, 512 and 1,024 tokens. Every
length scores the same targets (the first ``1024 k`` tokens of the split), so the losses differ
only by how much context each target gets and by how the model copes with positions it never
saw. Learned positions have no row past their table: n/a beyond 128. The other schemes are
built with ``max_len`` = 1,024, so their attention is never windowed here.

The claims the report decides (``CLAIMS``), Press et al. 2021, Fig. 1 and sec. 4:

- ALiBi extrapolates: its loss at every length up to 1,024 is at most its loss at 128 plus
  ``FLAT_MARGIN`` (it stays flat, or improves with the longer context);
- sinusoidal positions do not: their loss at 1,024 is at least ``DEGRADED_BY`` above their loss
  at 128.

tests/test_experiments.py checks the verdicts on fabricated numbers and runs a tiny quick run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from seqlab import registry
from seqlab.data.corpora import builtin_corpus
from seqlab.experiments import Claim, Evidence, StepBudget, finish_report, plot_curves
from seqlab.report_render import check_report_directory, mark_written
from seqlab.tasks.lm import LanguageModeling
from seqlab.training import TrainConfig, Trainer

CLAIM = ("ALiBi's loss stays flat beyond the training length while sinusoidal positions degrade "
         "(Press, Smith and Lewis 2021, Fig. 1).")
SCHEMES = ("sinusoidal", "learned", "rope", "alibi")
TRAIN_LENGTH = 128
EVAL_LENGTHS = (128, 256, 512, 1024)
SHAPE = {"d_model": 128, "n_layers": 4, "n_heads": 4, "dropout": 0.0}
BATCH = 16
SECONDS = 170.0                    # wall time per model, evaluations included
QUICK_SECONDS = 10.0
STEPS = 4000                       # the cap; the time runs out first on these machines
QUICK_STEPS = 60
FLAT_MARGIN = 0.02
DEGRADED_BY = 0.10
SEED = 0
DEVICE = "cpu"
WRITTEN = ("report.md", "length-extrapolation.png")


@dataclass(frozen=True)
class SchemeResult:
    """One position scheme: its training steps and time, and test loss by evaluation length
    (None where the scheme cannot read that far)."""

    scheme: str
    steps: int
    seconds: float
    loss_by_length: dict[int, float | None]

    def __str__(self) -> str:
        losses = ", ".join(f"{length}: {'n/a' if loss is None else f'{loss:.3f}'}"
                           for length, loss in self.loss_by_length.items())
        return f"{self.scheme} ({losses})"


Measurements = dict[str, SchemeResult]


@torch.no_grad()
def loss_at_length(model: torch.nn.Module, ids: torch.Tensor, length: int, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats) over non-overlapping windows of ``length`` tokens of
    ``ids``, whose length is a multiple of ``length`` plus one."""
    windows = ids[:-1].view(-1, length), ids[1:].view(-1, length)                 # (W, L) each
    total = 0.0
    for start in range(0, windows[0].shape[0], batch_size):
        inputs, targets = (part[start: start + batch_size] for part in windows)
        total += F.cross_entropy(model(inputs).flatten(0, 1).float(), targets.flatten(), reduction="sum").item()
    return total / windows[1].numel()


def train(task: LanguageModeling, scheme: str, steps: int, seconds: float, progress: bool) -> SchemeResult:
    """Train one scheme for ``seconds`` (at most ``steps``); its test loss at every length."""
    torch.manual_seed(SEED)
    max_len = TRAIN_LENGTH if scheme == "learned" else max(EVAL_LENGTHS)
    model = registry.build_for_task("transformer", task.model_defaults(),
                                    {**SHAPE, "positions": scheme, "max_len": max_len}, task="lm")
    config = TrainConfig(steps=steps, batch_size=BATCH, lr=1e-3, warmup_steps=min(100, steps // 10),
                         eval_every=10 * steps, eval_batches=2, budget_seconds=seconds, seed=SEED,
                         progress=progress, device=DEVICE)
    result = Trainer(model, task, config).fit()
    model.eval()
    test = task.splits["test"].ids
    span = (len(test) - 1) // max(EVAL_LENGTHS) * max(EVAL_LENGTHS)
    ids = test[: span + 1]
    losses = {length: (loss_at_length(model, ids, length) if length <= max_len else None) for length in EVAL_LENGTHS}
    return SchemeResult(scheme, result.steps, result.train_seconds, losses)


def alibi_stays_flat(measured: Measurements) -> Evidence:
    """Held when ALiBi's loss at every length is at most its training-length loss + ``FLAT_MARGIN``."""
    run = measured["alibi"]
    base = run.loss_by_length[TRAIN_LENGTH]
    return Evidence(all(loss <= base + FLAT_MARGIN for loss in run.loss_by_length.values()), str(run))


def sinusoidal_degrades(measured: Measurements) -> Evidence:
    """Held when the sinusoidal loss at the longest length is >= ``DEGRADED_BY`` above its
    training-length loss."""
    run = measured["sinusoidal"]
    longest = run.loss_by_length[max(EVAL_LENGTHS)]
    return Evidence(longest >= run.loss_by_length[TRAIN_LENGTH] + DEGRADED_BY, str(run))


CLAIMS = (
    Claim(statement=f"ALiBi trained at {TRAIN_LENGTH} keeps its test loss within {FLAT_MARGIN} nats of its "
                    f"{TRAIN_LENGTH}-token loss (or lower) at every length up to {max(EVAL_LENGTHS):,}",
          source="Press, Smith and Lewis 2021, Fig. 1", steps_needed=STEPS, check=alibi_stays_flat),
    Claim(statement=f"sinusoidal positions trained at {TRAIN_LENGTH} lose at least {DEGRADED_BY} nats at "
                    f"{max(EVAL_LENGTHS):,} tokens",
          source="Press, Smith and Lewis 2021, Fig. 1 and sec. 2", steps_needed=STEPS, check=sinusoidal_degrades),
)


def plot(measured: Measurements, path: Path) -> Path:
    """Test loss against evaluation length, one line per scheme; saved as PNG."""
    return plot_curves({result.scheme: result.loss_by_length for result in measured.values()}, path,
                       title="Train short, test long: positions of a character Transformer",
                       xlabel="evaluation length (tokens)", ylabel="test loss (nats per character)",
                       lines=[("v", TRAIN_LENGTH, "training length")])


def run(out_dir: str | Path = "runs/length-extrapolation", quick: bool = False, progress: bool = True) -> str:
    """Train the four schemes, and return the report: test loss by length for each, the plot,
    then one verdict line per claim (``not tested`` for a ``quick`` run)."""
    out_dir = Path(out_dir)
    check_report_directory(out_dir, WRITTEN)
    budget = StepBudget(steps=QUICK_STEPS if quick else STEPS, quick=quick)
    task = LanguageModeling(builtin_corpus(), "char", TRAIN_LENGTH)
    seconds = QUICK_SECONDS if quick else SECONDS
    measured = {scheme: train(task, scheme, budget.steps, seconds, progress) for scheme in SCHEMES}
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = plot(measured, out_dir / "length-extrapolation.png")
    lines = [CLAIM, "", f"Test loss (nats per character) by evaluation length, trained at {TRAIN_LENGTH} for "
             f"{seconds:.0f} s each:", "",
             "| positions | steps | seconds | " + " | ".join(map(str, EVAL_LENGTHS)) + " |",
             "|---|---|---|" + "---|" * len(EVAL_LENGTHS)]
    for result in measured.values():
        cells = " | ".join("n/a" if loss is None else f"{loss:.3f}" for loss in result.loss_by_length.values())
        lines.append(f"| {result.scheme} | {result.steps:,} | {result.seconds:.0f} | {cells} |")
    lines += ["", f"plot: {figure}"]
    report = finish_report(lines, CLAIMS, measured, budget, seed=SEED, device=DEVICE)
    (out_dir / "report.md").write_text(report + "\n")
    mark_written(out_dir, WRITTEN)
    return report
