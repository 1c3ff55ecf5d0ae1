"""The adding-problem reproduction: gates carry information across 200 steps, Elman does not."""

import pytest

from seqlab.experiments import adding_problem
from seqlab.tasks.diagnostics import AddingProblem


@pytest.mark.slow
def test_gated_cells_solve_the_adding_problem_and_elman_does_not_at_200():
    outcomes = {(cell, length): row for cell, length, row in adding_problem.results()}
    for cell in ("lstm", "gru"):
        for length in adding_problem.LENGTHS:
            assert outcomes[cell, length]["test_mse"] < 0.01, (cell, length, outcomes[cell, length])
    assert outcomes["elman", 200]["test_mse"] > 0.8 * AddingProblem.baseline_mse, outcomes["elman", 200]


def test_quick_reproduction_writes_its_report_and_plot(tmp_path, monkeypatch):
    # The whole pipeline on tiny budgets: the table, the plot, the CLI entry.
    monkeypatch.setattr(adding_problem, "LENGTHS", (10, 20))
    monkeypatch.setattr(adding_problem, "results", lambda max_steps, progress: [
        (cell, length, adding_problem.train(cell, length, 20, False))
        for length in (10, 20) for cell in adding_problem.CELLS])
    report = adding_problem.run(tmp_path, quick=True, progress=False)
    assert report.count("\n| ") == 7 and "0.167" in report
    assert (tmp_path / "gradient_flow.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "report.md").read_text().strip() == report.strip()
