"""Attention and source length: why attention was invented (Bahdanau, Cho and Bengio 2014, Fig. 2).

An encoder-decoder without attention passes the whole source through one fixed-size state, so
its output degrades as the source grows; a decoder that attends to every encoder state does
not. The paper shows it as BLEU against sentence length on English-French; here the same shape
is measured on the reverse task (``seqlab.tasks.seq2seq``, synthetic ``reverse``), where the
answer is exact and the length is controlled: sources of ``MIN_LENGTH`` to ``MAX_LENGTH`` digits,
test exact match by source length, for the plain encoder-decoder (``seq2seq``, read forwards:
for reversal the last symbol read is the first written, its easiest setting) and the two
attention decoders (``seq2seq-bahdanau``, ``seq2seq-luong``), each trained for ``STEPS`` steps of
the same width, batch and learning rate.

The claims the report decides (``CLAIMS``):

- both attention models keep test exact match at or above ``ATTENTION_FLOOR`` = 90% in every
  length range from 5 to 40 (Bahdanau et al. 2014, Fig. 2: RNNsearch does not degrade with
  length);
- the model without attention falls as the source grows: on the longest range its exact match
  is below ``PLAIN_LONGEST_CEILING`` = 50% and at least ``PLAIN_DROP`` = 30 points under its
  shortest range (Cho et al. 2014b, "On the properties of neural machine translation", Fig. 4;
  Bahdanau et al. 2014, Fig. 2, RNNencdec).

tests/test_experiments.py checks the verdicts on fabricated numbers and runs a tiny quick run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from seqlab import registry
from seqlab.experiments import Claim, Evidence, StepBudget, finish_report
from seqlab.report_render import check_report_directory, mark_written
from seqlab.tasks.seq2seq import Seq2Seq, Seq2SeqOptions
from seqlab.training import TrainConfig, Trainer

CLAIM = ("Attention decoders keep their accuracy as the source grows, where an encoder-decoder "
         "without attention falls (Bahdanau, Cho and Bengio 2014, Fig. 2).")
MODELS = {"seq2seq": {"reverse_source": False}, "seq2seq-bahdanau": {}, "seq2seq-luong": {}}
ATTENTION_MODELS = ("seq2seq-bahdanau", "seq2seq-luong")
PLAIN_MODEL = "seq2seq"
WRITTEN = ("report.md",)
MIN_LENGTH, MAX_LENGTH = 5, 40
LENGTH_RANGES = 6                  # 5-10, 11-16, ..., 35-40
WIDTH = 128
SEED = 0
DEVICE = "cpu"
STEPS = 1200                       # per model; the budget the claims are stated for
QUICK_STEPS = 100                  # --quick: a first look, too short to decide the claims
ATTENTION_FLOOR = 0.90
PLAIN_LONGEST_CEILING = 0.50
PLAIN_DROP = 0.30


@dataclass(frozen=True)
class ModelResult:
    """One model trained on the reverse task: its steps, time and exact match by length range."""

    model: str
    steps: int
    seconds: float
    exact_by_length: dict[str, float]          # "5-10" -> exact match in [0, 1], shortest first

    def __str__(self) -> str:
        ranges = ", ".join(f"{lengths}: {100 * value:.1f}%" for lengths, value in self.exact_by_length.items())
        return f"{self.model} ({ranges})"


Measurements = dict[str, ModelResult]


def make_task(quick: bool = False) -> Seq2Seq:
    """The reverse task: 20,000 training pairs (2,000 for a quick run), 300 valid, 900 test."""
    options = Seq2SeqOptions(data="reverse", min_length=MIN_LENGTH, max_length=MAX_LENGTH,
                             train_size=2_000 if quick else 20_000, valid_size=300, test_size=900, data_seed=SEED)
    return Seq2Seq.from_options(options)


def train(task: Seq2Seq, name: str, steps: int, progress: bool = False) -> ModelResult:
    """Train one model for ``steps``; its exact match by source length on the test split."""
    torch.manual_seed(SEED)
    model = registry.build_for_task(name, task.model_defaults(), {"d_model": WIDTH, "n_layers": 1, **MODELS[name]},
                                    task="seq2seq")
    config = TrainConfig(steps=steps, batch_size=64, lr=3e-3, warmup_steps=min(100, steps // 10), eval_every=400,
                         eval_batches=3, seed=SEED, progress=progress, device=DEVICE)
    result = Trainer(model, task, config).fit()
    buckets = task.by_source_length(model, "test", n_buckets=LENGTH_RANGES)
    return ModelResult(name, result.steps, result.train_seconds,
                       {bucket["lengths"]: bucket["exact_match"] for bucket in buckets})


def attention_holds_at_every_length(measured: Measurements) -> Evidence:
    """Held when both attention models are at or above ``ATTENTION_FLOOR`` in every range."""
    runs = [measured[name] for name in ATTENTION_MODELS]
    held = all(value >= ATTENTION_FLOOR for run in runs for value in run.exact_by_length.values())
    return Evidence(held, "; ".join(map(str, runs)))


def plain_model_falls_with_length(measured: Measurements) -> Evidence:
    """Held when the plain model's longest range is below ``PLAIN_LONGEST_CEILING`` and at least
    ``PLAIN_DROP`` under its shortest range."""
    run = measured[PLAIN_MODEL]
    values = list(run.exact_by_length.values())
    shortest, longest = values[0], values[-1]
    return Evidence(longest < PLAIN_LONGEST_CEILING and shortest - longest >= PLAIN_DROP, str(run))


CLAIMS = (
    Claim(statement=f"seq2seq-bahdanau and seq2seq-luong keep test exact match >= {100 * ATTENTION_FLOOR:.0f}% "
                    f"in every source-length range from {MIN_LENGTH} to {MAX_LENGTH} after {STEPS:,} steps",
          source="Bahdanau, Cho and Bengio 2014, Fig. 2", steps_needed=STEPS, check=attention_holds_at_every_length),
    Claim(statement=f"seq2seq without attention falls with length: below {100 * PLAIN_LONGEST_CEILING:.0f}% on the "
                    f"longest sources and >= {100 * PLAIN_DROP:.0f} points under its shortest after {STEPS:,} steps",
          source="Cho et al. 2014b, Fig. 4; Bahdanau, Cho and Bengio 2014, Fig. 2", steps_needed=STEPS,
          check=plain_model_falls_with_length),
)


def run(out_dir: str | Path = "runs/attention-length", quick: bool = False, progress: bool = True) -> str:
    """Train the three models, and return the report: exact match by source length for each,
    then one verdict line per claim (``not tested`` for a ``quick`` run)."""
    out_dir = Path(out_dir)
    check_report_directory(out_dir, WRITTEN)
    budget = StepBudget(steps=QUICK_STEPS if quick else STEPS, quick=quick)
    task = make_task(quick)
    measured = {name: train(task, name, budget.steps, progress) for name in MODELS}
    ranges = list(next(iter(measured.values())).exact_by_length)
    lines = [CLAIM, "", "Test exact match (%) by source length (reverse task):", "",
             "| model | steps | seconds | " + " | ".join(ranges) + " |", "|---|---|---|" + "---|" * len(ranges)]
    for result in measured.values():
        cells = " | ".join(f"{100 * result.exact_by_length.get(r, float('nan')):.1f}" for r in ranges)
        lines.append(f"| {result.model} | {result.steps:,} | {result.seconds:.0f} | {cells} |")
    report = finish_report(lines, CLAIMS, measured, budget, seed=SEED, device=DEVICE)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(report + "\n")
    mark_written(out_dir, WRITTEN)
    return report
