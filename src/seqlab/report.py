"""Rendering a comparison: a markdown table, an HTML page and a plot of the learning curves.

Any report renders here if it gives ``title``, ``columns``, ``rows()`` (formatted cells, best
model first), ``task_line()``, ``sections()`` (heading and preformatted text per model: LM
samples, tagging confusions), ``curve_label`` and ``results`` whose ``history`` rows hold
``train_seconds`` and ``valid_loss``.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any


class RenderedReport:
    """Base of every comparison report: ``write`` and ``table`` from the fields above."""

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write report.md, report.html and curves.png into ``out_dir``; return their paths."""
        return write_report(self, Path(out_dir))

    def table(self) -> str:
        return markdown_table(self)


def markdown_table(report: Any) -> str:
    lines = ["| " + " | ".join(report.columns) + " |", "|" + "---|" * len(report.columns)]
    lines += ["| " + " | ".join(cells) + " |" for cells in report.rows()]
    return "\n".join(lines)


def to_markdown(report: Any) -> str:
    parts = [f"# {report.title}", "", report.task_line(), "", markdown_table(report), "",
             f"![{report.curve_label} against training time](curves.png)", ""]
    for heading, sections in report.sections().items():
        parts += [f"## {heading}", ""]
        for name, text in sections:
            parts += [f"### {name}", "", "```text", text, "```", ""]
    return "\n".join(parts)


def to_html(report: Any) -> str:
    header = "".join(f"<th>{html.escape(c)}</th>" for c in report.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>"
        for cells in report.rows()
    )
    sections = "".join(
        f"<h2>{html.escape(heading)}</h2>"
        + "".join(f"<h3>{html.escape(name)}</h3><pre>{html.escape(text)}</pre>" for name, text in parts)
        for heading, parts in report.sections().items()
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.3em .6em;text-align:right}"
        "pre{background:#f4f4f4;padding:.5em;white-space:pre-wrap}</style></head><body>"
        f"<h1>{html.escape(report.title)}</h1><p>{html.escape(report.task_line())}</p>"
        f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"
        f"<p><img src='curves.png' alt='{html.escape(report.curve_label)} against training time'></p>"
        f"{sections}</body></html>\n"
    )


def plot_curves(report: Any, path: Path) -> None:
    """The validation loss against training seconds, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for result in report.results:
        seconds = [row["train_seconds"] for row in result.history]
        losses = [row["valid_loss"] for row in result.history]
        axis.plot(seconds, losses, marker=".", label=result.name)
    axis.set_xlabel("training time (s)")
    axis.set_ylabel(report.curve_label)
    axis.set_title(f"{report.curve_label[0].upper()}{report.curve_label[1:]} against training time")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(report: Any, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "report.md", out_dir / "report.html", out_dir / "curves.png"]
    paths[0].write_text(to_markdown(report))
    paths[1].write_text(to_html(report))
    plot_curves(report, paths[2])
    return paths
