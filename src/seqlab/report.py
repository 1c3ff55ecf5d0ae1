"""A comparison's report: a table of every model's results, learning curves, and what each model
shows of itself, rendered as markdown, a self-contained HTML page and PNG plots.

The report knows no task: a task describes its columns (``Column``: label, result key, format,
whether higher or lower is better) and its learning curve (``Curve``: one validation metric
against training time), and ``seqlab.compare`` fills one ``ModelResult`` per model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Better = Literal["higher", "lower"]


@dataclass(frozen=True)
class Column:
    """One column of the table: the value ``key`` of each model's result row.

    Attributes:
        label: the header, e.g. "test acc %".
        key: the key in ``ModelResult.metrics``, e.g. "accuracy".
        format: a format string for the value after ``scale``, e.g. "{:.2f}".
        better: whether a higher or a lower value is better (None: neither, e.g. a size).
        scale: the value is multiplied by this before formatting (100 for a percentage).
    """

    label: str
    key: str
    format: str = "{:.3f}"
    better: Better | None = None
    scale: float = 1.0

    def cell(self, metrics: dict[str, Any]) -> str:
        """The formatted value, or "-" when the row has none."""
        value = metrics.get(self.key)
        if value is None:
            return "-"
        return self.format.format(value if self.scale == 1 else value * self.scale)


@dataclass(frozen=True)
class Curve:
    """The learning curve: the history value ``key`` against training seconds, one line per model.

    Attributes:
        key: the key in each history row, e.g. "valid_accuracy".
        label: the axis label, e.g. "validation accuracy (%)".
        better: whether higher or lower is better.
        scale: values are multiplied by this before plotting.
    """

    key: str
    label: str
    better: Better
    scale: float = 1.0


@dataclass(frozen=True)
class Breakdown:
    """One test metric of a model over groups of the inputs (exact match by source length): the
    report tabulates and plots it for every model that has one.

    Attributes:
        title: what is shown, e.g. "exact match (%) by source length".
        group_label: what the groups are, e.g. "source length (tokens)".
        values: each group's value, in the groups' order.
    """

    title: str
    group_label: str
    values: dict[str, float]


@dataclass
class ModelResult:
    """What one model did in a comparison.

    Attributes:
        name: the registry name.
        trains: "trainer" (gradient steps, a learning curve) or "fit" (its own fit: one point).
        metrics: the row of the table: test metrics and run figures (parameters, steps,
            train_seconds, wall_seconds, peak_memory_mb, train_tokens_per_second, ...).
        history: one row per validation evaluation (step, train_seconds, valid_<metric>, ...).
        sections: what the model shows of itself (heading -> preformatted text), e.g. a sample.
        breakdown: a test metric by groups of the inputs, or None.
        figures: images the model shows of itself (figure name -> PNG bytes), e.g. attention.
        config: the model's config.
        train_options: the training options it ran with.
    """

    name: str
    trains: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    sections: dict[str, str] = field(default_factory=dict)
    breakdown: Breakdown | None = None
    figures: dict[str, bytes] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    train_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """A comparison of models on one task.

    Attributes:
        title: the page title.
        description: one line on the task and its data; `backticks` mark code.
        columns: the table's columns after the model name; the first ranks the models.
        curve: what the learning-curve plot shows.
        results: one per model.
        environment: seqlab and torch versions, device, threads, seed, budget, date.
    """

    title: str
    description: str
    columns: tuple[Column, ...]
    curve: Curve
    results: list[ModelResult]
    environment: dict[str, Any] = field(default_factory=dict)

    def ranked(self) -> list[ModelResult]:
        """The results, best first by the first column (models without that value last)."""
        first = self.columns[0]
        sign = -1.0 if first.better == "higher" else 1.0
        return sorted(self.results, key=lambda r: (r.metrics.get(first.key) is None,
                                                   sign * (r.metrics.get(first.key) or 0.0)))

    def rows(self) -> list[tuple[str, ...]]:
        """Formatted cells per model, best first: the name, then one per column."""
        return [(r.name, *(column.cell(r.metrics) for column in self.columns)) for r in self.ranked()]

    def table(self) -> str:
        """The table in markdown."""
        header = ("model", *(column.label for column in self.columns))
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in self.rows()]
        return "\n".join(lines)

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write report.md, report.html, curves.png and the models' figures into ``out_dir``;
        return their paths."""
        from seqlab.report_render import write_report

        return write_report(self, Path(out_dir))
