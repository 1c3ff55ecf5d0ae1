"""Rendering a comparison: a markdown table, an HTML page and a plot of the learning curves."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from seqlab.compare import Report

COLUMNS = ("model", "params", "test bpc", "test ppl", "train tok/s", "gen tok/s", "peak MB", "steps")


def rows(report: Report) -> list[tuple[str, ...]]:
    """One tuple of formatted cells per model, best test bits per character first."""
    ordered = sorted(report.results, key=lambda result: result.test["bpc"])
    return [
        (r.name, f"{r.parameters:,}", f"{r.test['bpc']:.3f}", f"{r.test['perplexity']:.2f}",
         f"{r.train_tokens_per_second:,.0f}", f"{r.generate_tokens_per_second:,.0f}",
         f"{r.peak_memory_mb:,.0f}", f"{r.steps:,}")
        for r in ordered
    ]


def markdown_table(report: Report) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows(report)]
    return "\n".join(lines)


def _task_line(report: Report) -> str:
    task = report.task
    tokens = ", ".join(f"{split} {count:,}" for split, count in task["tokens"].items())
    return (f"corpus `{task['corpus']}`, tokenizer `{task['tokenizer']}` (vocabulary "
            f"{task['vocab_size']}), context {task['context']}, tokens: {tokens}; "
            f"{report.budget_seconds:.0f} s of training per model")


def to_markdown(report: Report) -> str:
    parts = ["# seqlab compare", "", _task_line(report), "", markdown_table(report), "",
             "![validation loss against training time](curves.png)", "", "## Samples", ""]
    for result in report.results:
        parts += [f"### {result.name}", "", "```text", result.sample, "```", ""]
    return "\n".join(parts)


def to_html(report: Report) -> str:
    header = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>"
        for cells in rows(report)
    )
    samples = "".join(
        f"<h3>{html.escape(r.name)}</h3><pre>{html.escape(r.sample)}</pre>" for r in report.results
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>seqlab compare</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.3em .6em;text-align:right}"
        "pre{background:#f4f4f4;padding:.5em;white-space:pre-wrap}</style></head><body>"
        f"<h1>seqlab compare</h1><p>{html.escape(_task_line(report))}</p>"
        f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"
        "<p><img src='curves.png' alt='validation loss against training time'></p>"
        f"<h2>Samples</h2>{samples}</body></html>\n"
    )


def plot_curves(report: Report, path: Path) -> None:
    """Validation loss (nats per token) against training seconds, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for result in report.results:
        seconds = [row["train_seconds"] for row in result.history]
        losses = [row["valid_loss"] for row in result.history]
        axis.plot(seconds, losses, marker=".", label=result.name)
    axis.set_xlabel("training time (s)")
    axis.set_ylabel("validation loss (nats/token)")
    axis.set_title("Validation loss against training time")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(report: Report, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "report.md", out_dir / "report.html", out_dir / "curves.png"]
    paths[0].write_text(to_markdown(report))
    paths[1].write_text(to_html(report))
    plot_curves(report, paths[2])
    return paths
