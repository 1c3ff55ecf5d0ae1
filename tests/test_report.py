"""Rendering a comparison report: report.md, a self-contained report.html and curves.png."""

import base64
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from seqlab.report import Column, Curve, ModelResult, Report
from seqlab.report_render import curve_plan, inline_code, plot_curves, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COLUMNS = (Column("test acc %", "accuracy", "{:.2f}", "higher", scale=100.0),
           Column("params", "parameters", "{:,.0f}"),
           Column("train s", "train_seconds", "{:.1f}", "lower"))
CURVE = Curve("valid_accuracy", "validation accuracy (%)", "higher", scale=100.0)


def _history(points: list[tuple[float, float]]) -> list[dict]:
    """History rows holding the curve's key and a different quantity (valid_loss) beside it."""
    return [{"step": 10 * i, "train_seconds": s, "valid_accuracy": a, "valid_loss": 5.0 - 4 * a}
            for i, (s, a) in enumerate(points)]


def make_report() -> Report:
    """Two trained models whose first evaluation is wildly off, one fitted model far below the
    trained curves, one model without the ranking metric, and data that needs escaping."""
    lstm = ModelResult("lstm", "trainer", {"accuracy": 0.9312, "parameters": 1234567, "train_seconds": 20.0},
                       history=_history([(0.0, 0.02), (5.0, 0.80), (10.0, 0.90), (20.0, 0.93)]),
                       sections={"Tagged sentence": "The/DET <dog>/NOUN & co"},
                       config={"hidden": 64}, train_options={"lr": 0.001})
    gru_history = _history([(0.0, 0.05), (6.0, 0.82), (12.0, 0.91), (18.0, 0.92)])
    gru_history.append({"step": 40, "train_seconds": 19.0, "valid_loss": 1.0})   # no accuracy
    gru = ModelResult("gru", "trainer", {"accuracy": 0.9201, "parameters": 987654, "train_seconds": 19.0},
                      history=gru_history, sections={"Tagged sentence": "<script>alert(1)</script>"})
    hmm = ModelResult("hmm", "fit", {"accuracy": 0.30, "parameters": 5000, "train_seconds": 2.0},
                      history=[{"train_seconds": 2.0, "valid_accuracy": 0.30}],
                      config={"n_states": 17})
    mystery = ModelResult("mystery", "fit", {"parameters": 10})
    return Report(title="Tagging <UD> & friends",
                  description="Tag `en_ewt <train>` sentences; scores are 'accuracy' & <more>.",
                  columns=COLUMNS, curve=CURVE, results=[hmm, gru, mystery, lstm],
                  environment={"seqlab": "0.1.0", "torch": "2.4.0", "device": "cpu", "threads": 2,
                               "seed": 0, "budget_seconds": 60, "date": "2024-05-01"})


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Report, list[Path]]:
    out_dir = tmp_path_factory.mktemp("report") / "nested"
    report = make_report()
    return report, write_report(report, out_dir)


def test_write_report_writes_exactly_the_three_files(written, tmp_path):
    _, paths = written
    assert [p.name for p in paths] == ["report.md", "report.html", "curves.png"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    (tmp_path / "keep.txt").write_text("mine")
    assert make_report().write(tmp_path) == [tmp_path / n for n in ("report.md", "report.html", "curves.png")]
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".seqlab-report", "curves.png", "keep.txt", "report.html",
                                                          "report.md"]
    assert (tmp_path / ".seqlab-report").read_text().split() == ["curves.png", "report.html", "report.md"]


def test_html_is_self_contained(written):
    _, (_, html_path, png_path) = written
    page = html_path.read_text()
    assert "curves.png" not in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    (encoded,) = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    png = base64.b64decode(encoded)
    assert png.startswith(PNG_MAGIC) and png == png_path.read_bytes()


def test_html_escapes_data_and_marks_code(written):
    _, (_, html_path, _) = written
    page = html_path.read_text()
    assert "<code>en_ewt &lt;train&gt;</code>" in page
    assert "&#x27;accuracy&#x27; &amp; &lt;more&gt;" in page
    assert "<title>Tagging &lt;UD&gt; &amp; friends</title>" in page
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;dog&gt;/NOUN &amp; co" in page
    assert "<UD>" not in page and "<dog>" not in page


def test_inline_code_escapes_inside_and_outside_spans():
    assert inline_code("a `x<y` & `z`") == "a <code>x&lt;y</code> &amp; <code>z</code>"
    assert inline_code("one ` alone") == "one ` alone"


def test_html_table_models_columns_environment_and_sorting(written):
    report, (_, html_path, _) = written
    page = html_path.read_text()
    for name in ("lstm", "gru", "hmm", "mystery"):
        assert f"<td>{name}</td>" in page and f"<summary>{name} (" in page
    for column in COLUMNS:
        assert column.label in page
    assert "test acc % ↑" in page and "train s ↓" in page and "params</th>" in page
    assert re.search(r"<th [^>]*class=rank>test acc % ↑</th>", page)
    assert "<td>1,234,567</td>" in page and "<td>-</td>" in page
    for key, value in report.environment.items():
        assert f"<td>{key}</td><td>{value}</td>" in page
    assert '<table class="sortable">' in page and 'querySelectorAll("table.sortable th")' in page
    assert "<pre>config: {&quot;hidden&quot;: 64}\ntrain_options: {&quot;lr&quot;: 0.001}</pre>" in page


def test_markdown_has_table_sections_environment_and_models(written):
    report, (md_path, _, _) = written
    text = md_path.read_text()
    assert report.table() in text
    assert text.index("| lstm | 93.12 |") < text.index("| gru | 92.01 |") < text.index("| mystery | - |")
    assert "![Validation accuracy (%) against training time](curves.png)" in text
    assert "## Tagged sentence\n\n### lstm\n\n```text\nThe/DET <dog>/NOUN & co\n```" in text
    assert "### gru\n\n```text\n<script>alert(1)</script>\n```" in text
    assert "## Environment" in text and "| budget_seconds | 60 |" in text
    assert '## Models' in text and '### hmm (fit)\n\n```text\nconfig: {"n_states": 17}\ntrain_options: {}' in text


def test_png_opens(written):
    _, (_, _, png_path) = written
    assert png_path.read_bytes().startswith(PNG_MAGIC) and png_path.stat().st_size > 10_000
    height, width, _ = matplotlib.image.imread(png_path).shape
    assert width > 600 and height > 400


def test_curve_plan_plots_only_the_curve_key_and_ignores_wild_points():
    plan = curve_plan(make_report())
    assert set(plan.trained) == {"lstm", "gru"} and set(plan.fitted) == {"hmm"}
    seconds, values = plan.trained["gru"]
    assert seconds == [0.0, 6.0, 12.0, 18.0]                 # the row without the key is skipped
    assert values == pytest.approx([5.0, 82.0, 91.0, 92.0])  # valid_accuracy x 100, never valid_loss
    # first points (2 and 5) are far off the rest (80..93): limits from 80..93 with 8% margin
    assert plan.ylim == pytest.approx((80.0 - 0.08 * 13, 93.0 + 0.08 * 13))
    assert plan.fitted["hmm"] == pytest.approx((2.0, 30.0))
    assert [(name, side) for name, _, side in plan.off_scale] == [("hmm", "below")]
    assert plan.off_scale[0][1] == pytest.approx(30.0)


def test_curve_plan_keeps_near_first_points_and_fitted_values_inside():
    report = make_report()
    report.results[1].history[0]["valid_accuracy"] = 0.75    # gru starts near the rest: kept
    report.results[0].history[0]["valid_accuracy"] = 0.85    # hmm within the trained range
    plan = curve_plan(report)
    assert plan.ylim == pytest.approx((75.0 - 0.08 * 18, 93.0 + 0.08 * 18))
    assert plan.off_scale == []


def test_only_fitted_models_give_a_chart_of_their_values(tmp_path):
    report = make_report()
    report.results = [r for r in report.results if r.trains == "fit"]
    plan = curve_plan(report)
    assert plan.trained == {} and plan.ylim is None and plan.off_scale == []
    path = plot_curves(report, tmp_path / "curves.png")
    assert path.read_bytes().startswith(PNG_MAGIC)
    report.results = []
    assert plot_curves(report, tmp_path / "empty.png").read_bytes().startswith(PNG_MAGIC)


def test_importing_the_renderer_does_not_import_matplotlib():
    code = "import sys, seqlab.report_render; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_breakdowns_and_figures_are_tabulated_plotted_embedded_and_never_replace_the_users(tmp_path):
    from seqlab.report import Breakdown
    from seqlab.report_render import report_file_names

    report = make_report()
    lstm = next(result for result in report.results if result.name == "lstm")
    gru = next(result for result in report.results if result.name == "gru")
    lstm.breakdown = Breakdown("exact match (%) by source length", "source length", {"1-5": 90.0, "6-10": 60.0})
    gru.breakdown = Breakdown("exact match (%) by source length", "source length", {"1-5": 95.0, "11-15": 40.0})
    figure = (tmp_path / "probe.png")
    plot_curves(report, figure)
    lstm.figures = {"attention": figure.read_bytes()}
    out_dir = tmp_path / "out"
    names = [path.name for path in write_report(report, out_dir)]
    assert names == ["report.md", "report.html", "curves.png", "breakdown.png", "lstm-attention.png"]
    assert set(names) <= set(report_file_names(["lstm", "gru"], ("attention",), True))
    markdown = (out_dir / "report.md").read_text()
    # Best model first; a group a model lacks is an empty cell; groups in order of appearance.
    assert "| model | 1-5 | 6-10 | 11-15 |\n|---|---|---|---|\n| lstm | 90.0 | 60.0 |  |\n| gru | 95.0 |  | 40.0 |" \
        in markdown
    assert "![lstm attention](lstm-attention.png)" in markdown
    page = (out_dir / "report.html").read_text()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 3 and "breakdown.png" not in page
    assert matplotlib.image.imread(out_dir / "breakdown.png").shape[0] > 100
    # A figure name that is the user's file is refused before anything is written.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "lstm-attention.png").write_bytes(b"my own picture")
    with pytest.raises(Exception, match="lstm-attention.png that seqlab did not write"):
        write_report(report, mine)
    assert (mine / "lstm-attention.png").read_bytes() == b"my own picture" and not (mine / "report.md").exists()
