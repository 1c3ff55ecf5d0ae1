"""Multi-query associative recall against the number of pairs (Arora et al. 2023, "Zoology",
section 3 and Figure 2).

Four 2-layer language models of width ``WIDTH`` are trained on multi-query associative recall
(``seqlab.tasks.diagnostics.AssociativeRecall``): ``P`` key-value pairs, keys and values from
disjoint ranges of ``N_KEYS`` and ``N_VALUES`` ids, then every key again in random order, each
to be answered by its value. The models are attention (a Transformer with RoPE), Mamba (a
selective SSM with its default state size 16), Hyena (gated long convolutions) and S4D (Mamba's
block with a time-invariant SSM of the same state size). Each is trained once, for the same
number of steps, on a mixture of ``PAIRS`` (every batch at one number of pairs, drawn uniformly:
Zoology trains on a mixture of settings too), and scored on fixed test sets at each number of
pairs: the fraction of queries answered right, against the chance baseline 1 / ``N_VALUES``.

Zoology uses a vocabulary of 8,192, sequences up to 512 and widths 64 to 512, trained for
tens of thousands of steps on GPUs; here the vocabulary, the pairs and the width are small
enough that every model trains in a few minutes on a CPU core, and a fixed-size state runs
short within 8 pairs. Each model has its own learning rate, the one at which it learnt the task
here (found by trying 3e-4, 1e-3 and 3e-3): attention sat on the plateau of guessing among the
values seen (about 1/P) for 20,000 steps at 1e-3 and 3e-3 and left it within about 4,000 at
3e-4; Mamba stayed on it at 1e-3 and learnt at 3e-3; Hyena and S4D share Mamba's 3e-3. The pairs
start at 1 (where copying the one value seen is right): the easy counts get every model off the
plateau sooner, as the short sequences do in the induction-heads reproduction.

The claims the report decides (``CLAIMS``):

- attention answers at least ``SOLVED`` = 95% of the queries at every number of pairs (Zoology,
  Figure 2: attention solves MQAR at every width and length);
- Mamba answers at least 95% at few pairs (``FEW_PAIRS``), as attention does (Arora et al.
  2024, "Based", Figure 2: Mamba solves MQAR at small numbers of pairs);
- S4D and Hyena fall first as the pairs grow: at some number of pairs both are under
  ``FALLEN`` = 50% while attention and Mamba are both still at or above ``HELD`` = 90% (Zoology,
  section 3 and Figure 2: gated convolutions need a width that grows with the pairs).

tests/test_experiments.py checks the verdicts on fabricated numbers and trains a tiny model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from seqlab.experiments import (AccuracySweep, Claim, Evidence, Setup, StepBudget, at_least, finish_report,
                                plot_curves, sweep_table, train_setup)
from seqlab.report_render import check_report_directory, mark_written
from seqlab.tasks.diagnostics import AssociativeRecall, answer_loss

CLAIM = ("Attention and Mamba recall every queried key's value at few key-value pairs; as the pairs grow, "
         "S4D and Hyena fall first (Arora et al. 2023, Zoology, Figure 2).")
PAIRS = (1, 2, 4, 8)
FEW_PAIRS = (2, 4)
N_KEYS = 64
N_VALUES = 64
WIDTH = 64
MODELS = {
    "attention": Setup("transformer", {"d_model": WIDTH, "positions": "rope", "n_heads": 4, "max_len": 3 * max(PAIRS)},
                       lr=3e-4, steps=6000),
    "mamba": Setup("mamba", {"d_model": WIDTH, "d_state": 16, "chunk_size": 32}, lr=3e-3, steps=6000),
    "hyena": Setup("hyena", {"d_model": WIDTH, "l_max": 3 * max(PAIRS)}, lr=3e-3, steps=6000),
    "s4d": Setup("s4d", {"d_model": WIDTH, "d_state": 16}, lr=3e-3, steps=6000),
}
BATCH = 32
EVAL_SIZE = 500
QUICK_EVAL_SIZE = 50
SEED = 0
DEVICE = "cpu"
STEPS = max(setup.steps for setup in MODELS.values())    # a full run: every model its own steps
QUICK_STEPS = 30                   # --quick: a first look, too short to decide the claims
TARGET_LOSS = 1e-3                 # mean validation cross-entropy at which a run stops early
SOLVED = 0.95
HELD = 0.90
FALLEN = 0.50
WRITTEN = ("report.md", "associative-recall.png")


class PairMixture:
    """Associative recall at several numbers of pairs, trained as one task: each training batch
    is drawn at one number of pairs, uniformly; validation averages over them."""

    name = "associative-recall-mixture"

    def __init__(self, eval_size: int = EVAL_SIZE, seed: int = SEED):
        self.tasks = {pairs: AssociativeRecall(pairs, n_keys=N_KEYS, n_values=N_VALUES, eval_size=eval_size,
                                               seed=seed + 10 * index)
                      for index, pairs in enumerate(PAIRS)}
        self.vocab_size = N_KEYS + N_VALUES

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        pairs = PAIRS[int(torch.randint(len(PAIRS), (), generator=generator))]
        return self.tasks[pairs].train_batch(batch_size, generator)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        return answer_loss(model, *batch)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "valid", batch_size: int = 250,
                 max_batches: int | None = None) -> dict[str, float]:
        """Mean ``loss`` and ``accuracy`` over the numbers of pairs."""
        scores = [task.evaluate(model, split, batch_size, max_batches) for task in self.tasks.values()]
        return {name: sum(score[name] for score in scores) / len(scores) for name in ("loss", "accuracy")}

    def spec(self) -> dict[str, Any]:
        return {"task": self.name, "pairs": list(PAIRS), "n_keys": N_KEYS, "n_values": N_VALUES}


Measurements = dict[str, AccuracySweep]          # label -> test accuracy by number of pairs


def train(label: str, max_steps: int, quick: bool = False, progress: bool = False) -> AccuracySweep:
    """Train one model on the mixture for its steps (at most ``max_steps``); its test accuracy
    by number of pairs."""
    task = PairMixture(eval_size=QUICK_EVAL_SIZE if quick else EVAL_SIZE)
    model, result = train_setup(MODELS[label], task, max_steps, batch_size=BATCH, eval_every=250, seed=SEED,
                                device=DEVICE, progress=progress, target_loss=TARGET_LOSS)
    accuracy = {pairs: part.evaluate(model, "test")["accuracy"] for pairs, part in task.tasks.items()}
    return AccuracySweep(label, result.steps, result.train_seconds, accuracy)


def measure(max_steps: int, quick: bool = False, progress: bool = False) -> Measurements:
    """Every model trained for its steps (at most ``max_steps``), and tested at every number of pairs."""
    return {label: train(label, max_steps, quick, progress) for label in MODELS}


def convolutions_fall_first(measured: Measurements) -> Evidence:
    """Held when at some number of pairs S4D and Hyena are both under ``FALLEN`` while attention
    and Mamba are both at or above ``HELD``; the numbers name the first such count."""
    first = next((pairs for pairs in PAIRS
                  if max(measured[label].accuracy[pairs] for label in ("s4d", "hyena")) < FALLEN
                  and min(measured[label].accuracy[pairs] for label in ("attention", "mamba")) >= HELD),
                 None)
    runs = "; ".join(str(measured[label]) for label in ("s4d", "hyena", "attention", "mamba"))
    where = f"first at {first} pairs" if first is not None else "at no number of pairs"
    return Evidence(first is not None, f"{where}: {runs}")


CLAIMS = (
    Claim(statement=f"attention answers at least {SOLVED:.0%} of the queries at every number of pairs up to "
                    f"{max(PAIRS)}",
          source="Arora et al. 2023, Zoology, Figure 2", steps_needed=MODELS["attention"].steps,
          check=at_least("attention", SOLVED)),
    Claim(statement=f"Mamba answers at least {SOLVED:.0%} of the queries at {' and '.join(map(str, FEW_PAIRS))} pairs",
          source="Arora et al. 2024, Based, Figure 2", steps_needed=MODELS["mamba"].steps, check=at_least("mamba", SOLVED, FEW_PAIRS)),
    Claim(statement=f"S4D and Hyena fall first: at some number of pairs both are under {FALLEN:.0%} while attention "
                    f"and Mamba are both at or above {HELD:.0%}",
          source="Arora et al. 2023, Zoology, section 3 and Figure 2", steps_needed=STEPS,
          check=convolutions_fall_first),
)


def plot(measured: Measurements, path: Path) -> Path:
    """Test accuracy against the number of pairs, one line per model; saved as PNG."""
    return plot_curves({result.model: result.accuracy for result in measured.values()}, path,
                       title=f"Multi-query associative recall, width {WIDTH}", xlabel="key-value pairs",
                       ylabel="test accuracy (queries)", ylim=(0, 1.02), lines=[("h", 1 / N_VALUES, "chance")])


def run(out_dir: str | Path = "runs/associative-recall", quick: bool = False, progress: bool = True) -> str:
    """Train the four models, test them at every number of pairs, and return the report: the
    table, the plot, then one verdict line per claim (``not tested`` for a ``quick`` run)."""
    out_dir = Path(out_dir)
    check_report_directory(out_dir, WRITTEN)
    budget = StepBudget(steps=QUICK_STEPS if quick else STEPS, quick=quick)
    measured = measure(budget.steps, quick, progress)
    figure = plot(measured, out_dir / "associative-recall.png")
    lines = [CLAIM, "",
             f"Multi-query associative recall: keys from {N_KEYS} ids, values from {N_VALUES} others, every key "
             f"queried once; 2-layer models of width {WIDTH}; trained on a mixture of {', '.join(map(str, PAIRS))} "
             f"pairs (one count per batch of {BATCH}), AdamW without weight decay at each model's learning rate, "
             f"annealed over its steps (stopping at mean validation loss {TARGET_LOSS:g}). Test accuracy over the "
             f"queries, on {QUICK_EVAL_SIZE if quick else EVAL_SIZE} sequences per count; chance "
             f"{100 / N_VALUES:.1f}%.", "",
             *sweep_table(measured, MODELS, [f"{pairs} pairs" for pairs in PAIRS]), "", f"plot: {figure}"]
    report = finish_report(lines, CLAIMS, measured, budget, seed=SEED, device=DEVICE)
    (out_dir / "report.md").write_text(report + "\n")
    mark_written(out_dir, WRITTEN)
    return report
