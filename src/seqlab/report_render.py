"""Rendering a ``Report``: ``report.md``, a self-contained ``report.html``, ``curves.png``, and,
when models give them, ``breakdown.png`` (a test metric by groups of the inputs, one line per
model) and each model's figures as ``MODEL-NAME.png``.

The HTML page is meant to be mailed: the plot is embedded as a ``data:image/png`` URI, the CSS
and the few lines of table-sorting JavaScript are inline, and nothing is fetched from elsewhere.
The plot shows one quantity only, ``report.curve.key`` against training seconds: trained models
as lines, fitted models as dashed reference lines. Which values fit on the axis is decided as
data by ``curve_plan``, so that logic is tested without comparing images.

matplotlib is imported inside ``plot_curves`` only.
"""

from __future__ import annotations

import base64
import html
import json
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqlab.errors import ConfigError
from seqlab.report import Column, ModelResult, Report

ARROWS = {"higher": "↑", "lower": "↓", None: ""}


REPORT_FILES = ("report.md", "report.html", "curves.png")
BREAKDOWN_FILE = "breakdown.png"
MARKER = ".seqlab-report"          # the names of the files seqlab wrote in a report directory


def figure_file(model: str, figure: str) -> str:
    """The file name of a model's figure."""
    return f"{model}-{figure}.png"


def report_file_names(models: list[str] | tuple[str, ...], figures: tuple[str, ...] = (),
                      breakdown: bool = False) -> tuple[str, ...]:
    """Every file a report of ``models`` may write, when each may draw ``figures`` and a breakdown."""
    return (*REPORT_FILES, *((BREAKDOWN_FILE,) if breakdown else ()),
            *(figure_file(model, figure) for model in models for figure in figures))


def written_file_names(report: Report) -> tuple[str, ...]:
    """The files ``write_report`` writes for ``report``."""
    breakdown = any(result.breakdown is not None for result in report.results)
    return (*REPORT_FILES, *((BREAKDOWN_FILE,) if breakdown else ()),
            *(figure_file(result.name, figure) for result in report.results for figure in result.figures))


def check_report_directory(out_dir: str | Path, names: tuple[str, ...] = REPORT_FILES) -> None:
    """Refuse, before any work, a report directory where writing ``names`` would replace a file
    seqlab did not write there (it records what it wrote in ``MARKER``), or that cannot be written.

    Raises:
        ConfigError: ``out_dir`` is a file, cannot be created or written, or holds one of
            ``names`` that is the user's.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {str(out_dir)!r} is a file; give a directory for the report")
    ours = set((out_dir / MARKER).read_text().split()) if (out_dir / MARKER).is_file() else set()
    foreign = [name for name in names if (out_dir / name).exists() and name not in ours]
    if foreign:
        raise ConfigError(f"--out {str(out_dir)!r} holds a {foreign[0]} that seqlab did not write; it is left "
                          "alone: choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / MARKER).touch()
    except OSError as error:
        raise ConfigError(f"cannot write the report to {str(out_dir)!r} ({error.strerror}); choose another --out") from None


def mark_written(out_dir: str | Path, names: tuple[str, ...]) -> None:
    """Record that seqlab wrote ``names`` in ``out_dir`` (so a later report may replace them)."""
    marker = Path(out_dir) / MARKER
    ours = set(marker.read_text().split()) if marker.is_file() else set()
    marker.write_text("\n".join(sorted(ours | set(names))) + "\n")


def write_report(report: Report, out_dir: Path) -> list[Path]:
    """Write report.md, report.html, curves.png, and breakdown.png and the models' figures when
    there are any, into ``out_dir`` (created if absent).

    Returns:
        The paths written, the three first. Nothing else in ``out_dir`` is touched.
    Raises:
        ConfigError: one of them exists there and seqlab did not write it.
    """
    out_dir = Path(out_dir)
    names = written_file_names(report)
    check_report_directory(out_dir, names)
    md_path, html_path, png_path = (out_dir / name for name in REPORT_FILES)
    plot_curves(report, png_path)
    images = {REPORT_FILES[2]: png_path.read_bytes()}
    if BREAKDOWN_FILE in names:
        plot_breakdown(report, out_dir / BREAKDOWN_FILE)
        images[BREAKDOWN_FILE] = (out_dir / BREAKDOWN_FILE).read_bytes()
    for result in report.results:
        for figure, png in result.figures.items():
            (out_dir / figure_file(result.name, figure)).write_bytes(png)
            images[figure_file(result.name, figure)] = png
    md_path.write_text(to_markdown(report), encoding="utf-8")
    html_path.write_text(to_html(report, images), encoding="utf-8")
    mark_written(out_dir, names)
    return [out_dir / name for name in names]


# ---- what both documents show ------------------------------------------------------------

def sections_by_heading(report: Report) -> dict[str, list[tuple[str, str]]]:
    """Each section heading (in order of first appearance) -> (model name, text) for every model
    that has it, best model first."""
    by_heading: dict[str, list[tuple[str, str]]] = {}
    for result in report.ranked():
        for heading, text in result.sections.items():
            by_heading.setdefault(heading, []).append((result.name, text))
    return by_heading


def model_settings(result: ModelResult) -> str:
    """Two lines, ``config: {...}`` and ``train_options: {...}``, as compact JSON."""
    def compact(values: dict[str, Any]) -> str:
        return json.dumps(values, separators=(", ", ": "), default=str)

    return f"config: {compact(result.config)}\ntrain_options: {compact(result.train_options)}"


def curve_title(report: Report) -> str:
    """The plot's title, also the image's alt text: "<Curve label> against training time", or
    "<Curve label> of the fitted models" when no trained model has a curve."""
    label = report.curve.label
    shows = "against training time" if curve_plan(report).trained else "of the fitted models"
    return f"{label[:1].upper()}{label[1:]} {shows}"


def to_markdown(report: Report) -> str:
    """The report in markdown: title, description, table, plot, sections, environment, models."""
    parts = [f"# {report.title}", "", report.description, "", report.table(), "",
             f"![{curve_title(report)}](curves.png)", ""]
    breakdown = breakdown_table(report)
    if breakdown is not None:
        title, header, rows = breakdown
        parts += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        parts += ["| " + " | ".join(row) + " |" for row in rows] + ["", f"![{title}]({BREAKDOWN_FILE})", ""]
    for result in report.ranked():
        for figure in result.figures:
            parts += [f"## {result.name}: {figure}", "", f"![{result.name} {figure}]({figure_file(result.name, figure)})", ""]
    for heading, entries in sections_by_heading(report).items():
        parts += [f"## {heading}", ""]
        for name, text in entries:
            parts += [f"### {name}", "", "```text", text.rstrip("\n"), "```", ""]
    if report.environment:
        parts += ["## Environment", "", "| setting | value |", "|---|---|"]
        parts += [f"| {key} | {value} |" for key, value in report.environment.items()] + [""]
    parts += ["## Models", ""]
    for result in report.ranked():
        parts += [f"### {result.name} ({result.trains})", "", "```text", model_settings(result), "```", ""]
    return "\n".join(parts)


# ---- HTML --------------------------------------------------------------------------------

STYLE = """
body{font-family:system-ui,sans-serif;max-width:62em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #bbb;padding:.3em .6em;text-align:right}
td:first-child,th:first-child,table.kv td{text-align:left}
table.sortable th{cursor:pointer;background:#f0f0f0;user-select:none}
th.rank{background:#dde8f6}
code,pre{font-family:ui-monospace,monospace;background:#f4f4f4}
code{padding:0 .2em}
pre{padding:.6em;white-space:pre-wrap}
img{max-width:100%}
.note{color:#666;font-size:90%}
"""

# Click a header to sort by it (best first where ``better`` is known), again to reverse. Numbers ("1,234", "95.17") sort as numbers,
# "-" (no value) always last; a column marked data-text sorts as text.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, column) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0];
    var ascending = th.dataset.direction ? th.dataset.direction === "down"
                                         : th.dataset.better !== "higher";
    var direction = ascending ? 1 : -1;
    th.dataset.direction = ascending ? "up" : "down";
    function key(row) {
      var text = row.cells[column].textContent.trim();
      if (text === "-" || text === "") return null;
      var number = parseFloat(text.replace(/,/g, ""));
      return th.hasAttribute("data-text") || isNaN(number) ? text : number;
    }
    Array.from(body.rows).map(function (row) { return [key(row), row]; })
      .sort(function (a, b) {
        if (a[0] === null || b[0] === null) return (a[0] === null) - (b[0] === null);
        if (typeof a[0] === "number" && typeof b[0] === "number") return direction * (a[0] - b[0]);
        return direction * String(a[0]).localeCompare(String(b[0]));
      })
      .forEach(function (pair) { body.appendChild(pair[1]); });
  });
});
"""


def inline_code(text: str) -> str:
    """``text`` as HTML: escaped, with each `backtick span` wrapped in <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _header_cell(column: Column, ranks: bool) -> str:
    """One <th>: the label with an arrow for ``better``; the ranking column gets class "rank"."""
    hint = f"{column.better} is better" if column.better else "neither higher nor lower is better"
    hint += "; the models are ranked by this column" if ranks else ""
    label = f"{column.label} {ARROWS[column.better]}".strip()
    return (f'<th title="{html.escape(hint)}" data-better="{column.better or ""}"'
            f'{" class=rank" if ranks else ""}>{html.escape(label)}</th>')


def html_table(report: Report) -> str:
    """The results table as sortable HTML, best model first."""
    header = "<th data-text>model</th>" + "".join(
        _header_cell(column, ranks=index == 0) for index, column in enumerate(report.columns))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>\n"
                   for cells in report.rows())
    first = report.columns[0]
    note = (f"Ranked by {html.escape(first.label)}"
            f"{f' ({first.better} is better)' if first.better else ''}; click a header to sort.")
    return (f'<table class="sortable"><thead><tr>{header}</tr></thead>\n<tbody>\n{body}</tbody></table>'
            f'<p class="note">{note}</p>')


def to_html(report: Report, images: dict[str, bytes]) -> str:
    """The report as one self-contained HTML page; ``images`` (file name -> PNG bytes: the
    curves, the breakdown, the models' figures) are embedded as data URIs."""
    def image(name: str, alt: str) -> str:
        data = base64.b64encode(images[name]).decode("ascii")
        return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'

    parts = [f'<h1>{inline_code(report.title)}</h1>', f"<p>{inline_code(report.description)}</p>",
             html_table(report), image(REPORT_FILES[2], curve_title(report))]
    breakdown = breakdown_table(report)
    if breakdown is not None:
        title, header, rows = breakdown
        cells = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
        parts += [f"<h2>{html.escape(title)}</h2><table><tr>{cells}</tr>{body}</table>", image(BREAKDOWN_FILE, title)]
    for result in report.ranked():
        for figure in result.figures:
            parts += [f"<h2>{html.escape(result.name)}: {html.escape(figure)}</h2>",
                      image(figure_file(result.name, figure), f"{result.name} {figure}")]
    for heading, entries in sections_by_heading(report).items():
        parts.append(f"<h2>{inline_code(heading)}</h2>")
        parts += [f"<h3>{html.escape(name)}</h3><pre>{html.escape(text)}</pre>" for name, text in entries]
    if report.environment:
        rows = "".join(f"<tr><td>{html.escape(str(key))}</td><td>{html.escape(str(value))}</td></tr>"
                       for key, value in report.environment.items())
        parts.append(f'<h2>Environment</h2><table class="kv">{rows}</table>')
    parts.append("<h2>Models</h2>")
    parts += [f"<details><summary>{html.escape(result.name)} ({html.escape(result.trains)})</summary>"
              f"<pre>{html.escape(model_settings(result))}</pre></details>" for result in report.ranked()]
    return ('<!doctype html>\n<html><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(report.title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + f"\n<script>{SORT_SCRIPT}</script>\n</body></html>\n")


# ---- the plot ----------------------------------------------------------------------------

@dataclass(frozen=True)
class CurvePlan:
    """What curves.png shows, as data; every value is already multiplied by ``curve.scale``.

    Attributes:
        trained: name -> (train seconds, values) of each trained model with at least one point.
        fitted: name -> (fit seconds, value) of each fitted model that has the value.
        ylim: (bottom, top) of the axis, from the trained curves with a margin; None without any.
        off_scale: (name, value, "above" or "below") of each fitted value outside ``ylim``.
    """

    trained: dict[str, tuple[list[float], list[float]]]
    fitted: dict[str, tuple[float, float]]
    ylim: tuple[float, float] | None
    off_scale: list[tuple[str, float, str]]


def curve_plan(report: Report, margin: float = 0.08) -> CurvePlan:
    """Decide the series, the y-limits and the off-scale annotations of the learning-curve plot.

    Only ``report.curve.key`` is read from the history; rows without it are skipped. The limits
    span the trained curves, except a curve's first point when it lies more than the span of the
    rest away (a wildly-off initial evaluation, left to run off the axis), plus ``margin`` times
    the span on each side. Fitted values never widen them: those outside are listed as off scale.
    """
    key, scale = report.curve.key, report.curve.scale
    trained: dict[str, tuple[list[float], list[float]]] = {}
    fitted: dict[str, tuple[float, float]] = {}
    for result in report.results:
        points = [(row.get("train_seconds", 0.0), row[key] * scale)
                  for row in result.history if row.get(key) is not None]
        if points and result.trains == "fit":
            fitted[result.name] = points[-1]
        elif points:
            trained[result.name] = ([s for s, _ in points], [v for _, v in points])
    if not trained:
        return CurvePlan(trained, fitted, None, [])
    rest = [v for _, values in trained.values() for v in (values[1:] if len(values) > 1 else values)]
    low, high = min(rest), max(rest)
    reach = high - low or abs(high) * 0.1 or 1.0
    for _, values in trained.values():
        if low - reach <= values[0] <= high + reach:
            low, high = min(low, values[0]), max(high, values[0])
    pad = margin * (high - low or reach)
    ylim = (low - pad, high + pad)
    off_scale = [(name, value, "above" if value > ylim[1] else "below")
                 for name, (_, value) in fitted.items() if not ylim[0] <= value <= ylim[1]]
    return CurvePlan(trained, fitted, ylim, off_scale)


def _seconds(seconds: float) -> str:
    """A duration for a legend: "0.04 s", "2 s", "3.5 min"."""
    if seconds < 1:
        return f"{seconds:.2g} s"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def plot_curves(report: Report, path: Path) -> Path:
    """Draw ``curve_plan(report)`` and save it as a PNG at ``path``.

    Trained models are lines against training seconds; fitted models are dashed horizontal lines
    labelled "name (fitted in N s)", with a text at the edge for those off scale. Without any
    trained model, the fitted values are a horizontal bar chart.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan, label = curve_plan(report), textwrap.fill(report.curve.label, 45)
    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    if plan.trained:
        for name, (seconds, values) in plan.trained.items():
            axis.plot(seconds, values, marker=".", label=name)
        edge_count = {"above": 0, "below": 0}
        for name, (seconds, value) in plan.fitted.items():
            line = axis.axhline(value, linestyle="--", linewidth=1.2, color=f"C{len(axis.lines)}",
                                label=f"{name} (fitted in {_seconds(seconds)})")
            side = next((side for off, _, side in plan.off_scale if off == name), None)
            if side is not None:
                step = 0.06 * edge_count[side]
                edge_count[side] += 1
                above = side == "above"
                axis.text(0.01, 0.97 - step if above else 0.03 + step,
                          f"{name}: {value:.4g} (off scale {'↑' if above else '↓'})",
                          transform=axis.transAxes, color=line.get_color(), fontsize=8,
                          va="top" if above else "bottom")
        axis.set_ylim(*plan.ylim)
        axis.set_xlim(left=0)
        axis.set_xlabel("training time (s)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    elif plan.fitted:
        names = list(plan.fitted)
        bars = axis.barh(names, [plan.fitted[name][1] for name in names], height=0.6, color="C0")
        axis.bar_label(bars, fmt="%.4g", padding=3, fontsize=8)
        axis.invert_yaxis()
        axis.set_xlabel(label)
        axis.grid(alpha=0.3, axis="x")
    else:
        axis.text(0.5, 0.5, f"no model recorded {report.curve.key}", ha="center", va="center",
                  transform=axis.transAxes)
        axis.set_axis_off()
    title = curve_title(report)
    axis.set_title(textwrap.fill(title, 60), fontsize=11 if len(title) <= 60 else 9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# ---- the breakdown -----------------------------------------------------------------------

def breakdown_table(report: Report) -> tuple[str, list[str], list[list[str]]] | None:
    """The title, header and rows (a model each, best first) of the models' breakdowns, or None
    when no model has one. The groups are the union of every model's, in order of appearance."""
    shown = [result for result in report.ranked() if result.breakdown is not None]
    if not shown:
        return None
    groups = list(dict.fromkeys(group for result in shown for group in result.breakdown.values))
    first = shown[0].breakdown
    rows = [[result.name, *(f"{result.breakdown.values[g]:.1f}" if g in result.breakdown.values else ""
                            for g in groups)] for result in shown]
    return first.title, ["model", *groups], rows


def plot_breakdown(report: Report, path: Path) -> None:
    """One line per model: its breakdown's value in each group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title, header, _ = breakdown_table(report)
    groups = header[1:]
    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    for result in report.ranked():
        if result.breakdown is None:
            continue
        points = [(groups.index(group), value) for group, value in result.breakdown.values.items()]
        axis.plot([x for x, _ in points], [y for _, y in points], marker="o", label=result.name)
    axis.set_xticks(range(len(groups)), groups, rotation=30 if len(groups) > 8 else 0)
    first = next(result.breakdown for result in report.ranked() if result.breakdown is not None)
    axis.set_xlabel(first.group_label)
    axis.set_title(textwrap.shorten(title[:1].upper() + title[1:], 70))
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
