"""Compare taggers on one treebank: ``seqlab compare --task tag``.

Every tagger sees the same train / dev / test sentences and vocabulary. Taggers with a fit of
their own (the HMM, the feature CRF) take the time they need; the neural ones share the
training budget equally. Each runs in a fresh process (``seqlab.compare``), so its peak memory
is its own. Per tagger the report gives parameters, test accuracy, accuracy on words unseen in
training, training seconds, tagging tokens per second, peak memory, the most frequent
confusions and a tagged test sentence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqlab import registry
from seqlab.compare import PeakMemory, run_in_fresh_process, train_within_budget
from seqlab.data.conll import Column
from seqlab.errors import ConfigError
from seqlab.report import RenderedReport
from seqlab.tasks.tagging import Tagging

DEFAULT_BUDGET_SECONDS = 1080.0    # 9 minutes for each of the two neural taggers


@dataclass(frozen=True, kw_only=True)
class TaggingOptions:
    """The shared task: a treebank directory and the tag column."""

    data: str
    column: Column = "upos"

    def build(self) -> Tagging:
        return Tagging.from_data(self.data, self.column)


@dataclass
class TaggerResult:
    """One row of the report."""

    name: str
    parameters: int
    test: dict[str, float]
    train_seconds: float
    train_tokens_per_second: float
    peak_memory_mb: float
    steps: int
    confusions: list[tuple[str, str, int]]
    example: str
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class TaggingReport(RenderedReport):
    """The comparison (rendered by ``seqlab.report``)."""

    task: dict[str, Any]
    budget_seconds: float
    results: list[TaggerResult]

    title = "seqlab compare --task tag"
    columns = ("model", "params", "test acc %", "unseen acc %", "train s", "tag tok/s", "peak MB", "steps")
    curve_label = "validation loss (per word; error rate for fitted taggers)"

    def rows(self) -> list[tuple[str, ...]]:
        """Formatted cells per tagger, most accurate first."""
        ordered = sorted(self.results, key=lambda result: -result.test["accuracy"])
        return [
            (r.name, f"{r.parameters:,}", f"{100 * r.test['accuracy']:.2f}",
             f"{100 * r.test['unseen_accuracy']:.2f}", f"{r.train_seconds:,.0f}",
             f"{r.test['tokens_per_second']:,.0f}", f"{r.peak_memory_mb:,.0f}", f"{r.steps:,}")
            for r in ordered
        ]

    def task_line(self) -> str:
        task = self.task
        words = ", ".join(f"{split} {count:,}" for split, count in task["words"].items())
        return (f"treebank `{task['data']}`, {task['column'].upper()} ({task['n_tags']} tags), words: {words} "
                f"({task['unseen_test_words']:,} test words unseen in training)"
                + (f"; neural taggers train {self.budget_seconds:.0f} s each" if task["trained_taggers"] else ""))

    def sections(self) -> dict[str, list[tuple[str, str]]]:
        confusions = [
            (r.name, "\n".join(f"{gold:>6} -> {predicted:<6} {count:,}" for gold, predicted, count in r.confusions))
            for r in self.results
        ]
        return {"Most frequent confusions (gold -> predicted)": confusions,
                "A tagged test sentence": [(r.name, r.example) for r in self.results]}


def default_taggers() -> list[str]:
    return [entry.name for entry in registry.entries("tag") if entry.in_default_compare]


def compare_taggers(
    models: list[str] | None,
    task: TaggingOptions,
    budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    train_options: dict[str, Any] | None = None,
    model_options: dict[str, dict[str, Any]] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> TaggingReport:
    """Fit or train each tagger on ``task`` and report; the neural ones share ``budget_seconds``."""
    models = default_taggers() if models is None else models
    if not models:
        raise ConfigError("no taggers to compare; name at least one with --models")
    entries = [registry.get(name, "tag") for name in models]
    if not budget_seconds > 0:
        raise ConfigError(f"budget must be > 0 seconds, got {budget_seconds}")
    tagging = task.build()     # fail here, once, on bad data, before starting any process
    trained = [entry for entry in entries if not callable(getattr(entry.model_class, "fit", None))]
    per_model = budget_seconds / max(1, len(trained))
    model_options = model_options or {}
    results = [run_in_fresh_process(run_tagger, name, task, per_model, train_options or {},
                                    model_options.get(name, {}), progress)
               for name in models]
    report = TaggingReport(
        task={"data": task.data, "column": task.column, "n_tags": len(tagging.tag_names),
              "words": {split: sum(map(len, sentences)) for split, sentences in tagging.splits.items()},
              "unseen_test_words": tagging.unseen_words("test"), "trained_taggers": len(trained)},
        budget_seconds=per_model,
        results=results,
    )
    if out_dir is not None:
        report.write(out_dir)
    return report


def run_tagger(
    name: str, task_options: TaggingOptions, budget_seconds: float, train_options: dict[str, Any],
    overrides: dict[str, Any], progress: bool,
) -> TaggerResult:
    """Fit or train one tagger and evaluate it on the test split; runs in its own process."""
    task = task_options.build()
    memory = PeakMemory(train_options)
    model = registry.build_for_task(name, task.model_defaults(), overrides, task="tag")
    result = train_within_budget(model, task, budget_seconds, train_options, progress)
    test = task.evaluate(model, "test")
    first = task.splits["test"][0]
    predicted = task.predict(model, [first.words])[0]
    example = " ".join(f"{word}/{tag}" + ("" if tag == gold else f"(gold {gold})")
                       for word, tag, gold in zip(first.words, predicted, first.tags))
    return TaggerResult(
        name=name, parameters=registry.parameter_count(model), test=test,
        train_seconds=result.train_seconds, train_tokens_per_second=result.tokens_per_second,
        peak_memory_mb=memory.peak_mb(), steps=result.steps, confusions=task.confusions(model, "test"),
        example=example, history=result.history,
    )
