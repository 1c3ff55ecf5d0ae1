"""Verdicts of ``seqlab reproduce``: each claim held, did not hold, or was not tested, on
fabricated numbers, with training replaced by a stub so that nothing here trains."""

import dataclasses
import inspect

import pytest
import torch

from seqlab import __version__
from seqlab.cli import main
from seqlab.errors import ConfigError
from seqlab.experiments import EXPERIMENTS, Claim, Evidence, StepBudget, get, judge
from seqlab.experiments import adding_problem as ap

GATED, ELMAN = ap.CLAIMS
FULL = StepBudget(steps=ap.STEPS)
QUICK = StepBudget(steps=ap.QUICK_STEPS, quick=True)


def measurements(test_mse: dict[tuple[str, int], float]) -> ap.Measurements:
    """Every (cell, length) at MSE 0.002 after 2,000 steps, but for the MSEs given."""
    return {(cell, length): ap.CellResult(cell, length, ap.STEPS, 1.0, test_mse.get((cell, length), 0.002), "steps")
            for length in ap.LENGTHS for cell in ap.CELLS}


# Numbers as the literature has them: gated cells solve both lengths, Elman stays at 0.16.
AS_CLAIMED = measurements({("elman", 50): 0.05, ("elman", 200): 0.16, ("lstm", 200): 0.0085})
# Numbers that refute each claim, and only that one.
REFUTING = {GATED: {**AS_CLAIMED, ("gru", 50): ap.CellResult("gru", 50, 2000, 1.0, 0.0123, "steps")},
            ELMAN: {**AS_CLAIMED, ("elman", 200): ap.CellResult("elman", 200, 2000, 1.0, 0.0631, "steps")}}


@pytest.mark.parametrize("claim", ap.CLAIMS, ids=["gated", "elman"])
def test_each_claim_holds_on_the_numbers_it_states(claim):
    line = judge(claim, AS_CLAIMED, FULL).line()
    assert line.startswith(f"held: {claim.statement} [{claim.source}] (")
    assert "after 2,000 steps" in line


def test_the_verdict_lines_give_the_numbers_that_decide_them():
    assert judge(GATED, AS_CLAIMED, FULL).line().endswith(
        "(lstm at 50: MSE 0.0020 after 2,000 steps; lstm at 200: MSE 0.0085 after 2,000 steps; "
        "gru at 50: MSE 0.0020 after 2,000 steps; gru at 200: MSE 0.0020 after 2,000 steps)")
    assert judge(ELMAN, AS_CLAIMED, FULL).line().endswith(
        "(elman at 200: MSE 0.1600 after 2,000 steps; baseline 0.167)")


@pytest.mark.parametrize("claim", ap.CLAIMS, ids=["gated", "elman"])
def test_each_claim_fails_on_numbers_that_refute_it(claim):
    line = judge(claim, REFUTING[claim], FULL).line()
    assert line.startswith(f"did not hold: {claim.statement}")
    assert ("gru at 50: MSE 0.0123" if claim is GATED else "elman at 200: MSE 0.0631") in line
    other = ELMAN if claim is GATED else GATED
    assert judge(other, REFUTING[claim], FULL).outcome == "held"


@pytest.mark.parametrize("mse, outcome", [(0.0099, "held"), (0.01, "did not hold")])
def test_the_gated_threshold_is_strict(mse, outcome):
    assert judge(GATED, measurements({("elman", 200): 0.16, ("lstm", 200): mse}), FULL).outcome == outcome


@pytest.mark.parametrize("mse, outcome", [(0.1001, "held"), (0.1, "did not hold"), (1 / 12, "did not hold")])
def test_near_the_baseline_means_above_the_mse_of_remembering_one_value(mse, outcome):
    # 1/12 is what carrying only the later marked value scores: that is not "near the baseline".
    assert judge(ELMAN, measurements({("elman", 200): mse}), FULL).outcome == outcome


@pytest.mark.parametrize("claim", ap.CLAIMS, ids=["gated", "elman"])
@pytest.mark.parametrize("numbers", ["as claimed", "refuting"])
def test_a_quick_run_tests_no_claim_but_shows_what_it_measured(claim, numbers):
    measured = AS_CLAIMED if numbers == "as claimed" else REFUTING[claim]
    verdict = judge(claim, measured, QUICK)
    assert verdict.outcome == "not tested"
    assert verdict.line() == (f"not tested: {claim} (quick run of 500 steps; the claim needs up to 2,000; "
                              f"measured: {claim.check(measured).numbers})")


def test_any_budget_below_what_the_claim_needs_leaves_it_untested():
    assert judge(ELMAN, AS_CLAIMED, StepBudget(steps=1999)).line().startswith(
        f"not tested: {ELMAN} (run of 1,999 steps; the claim needs up to 2,000; measured: elman at 200")
    assert judge(ELMAN, AS_CLAIMED, StepBudget(steps=5000)).outcome == "held"


def test_claims_are_one_line_and_need_some_steps():
    check = lambda measured: Evidence(True, "")                          # noqa: E731
    with pytest.raises(ConfigError, match="statement"):
        Claim(statement="two\nlines", source="a paper", steps_needed=10, check=check)
    with pytest.raises(ConfigError, match="source"):
        Claim(statement="a claim", source="", steps_needed=10, check=check)
    with pytest.raises(ConfigError, match="steps_needed"):
        Claim(statement="a claim", source="a paper", steps_needed=0, check=check)


class FakeTraining:
    """Stands in for ``adding_problem.train``: returns ``numbers`` (capped at the step budget it
    is given) and records the budgets."""

    def __init__(self, numbers: ap.Measurements):
        self.numbers, self.budgets = numbers, []

    def __call__(self, cell: str, length: int, max_steps: int, progress: bool = False) -> ap.CellResult:
        self.budgets.append(max_steps)
        result = self.numbers[cell, length]
        return dataclasses.replace(result, steps=min(max_steps, result.steps))


@pytest.fixture
def fake_training(monkeypatch) -> FakeTraining:
    """Training replaced by ``FakeTraining`` and the gradient-flow plot by one line (the real
    ones run in tests/test_adding_problem.py)."""
    fake = FakeTraining(AS_CLAIMED)
    monkeypatch.setattr(ap, "train", fake)
    monkeypatch.setattr(ap, "gradient_flow_lines", lambda out_dir: ["gradient-flow plot: (stubbed)"])
    return fake


def verdict_lines(report: str) -> list[str]:
    return report.splitlines()[-len(ap.CLAIMS):]


@pytest.mark.parametrize("numbers", ["as claimed", "refuting the gated claim", "refuting the elman claim"])
def test_a_quick_report_never_passes_or_fails_a_claim(fake_training, tmp_path, numbers):
    fake_training.numbers = {"as claimed": AS_CLAIMED, "refuting the gated claim": REFUTING[GATED],
                             "refuting the elman claim": REFUTING[ELMAN]}[numbers]
    report = ap.run(tmp_path, quick=True, progress=False)
    assert set(fake_training.budgets) == {ap.QUICK_STEPS}
    lines = report.splitlines()
    assert not [line for line in lines if line.startswith(("held", "did not hold"))]
    for line, claim in zip(verdict_lines(report), ap.CLAIMS, strict=True):
        assert line.startswith(f"not tested: {claim} (quick run of 500 steps; the claim needs up to 2,000; ")
    # No claim stands on a line of its own, as if it were a result.
    assert not [line for line in lines for claim in ap.CLAIMS if line.strip() in (claim.statement, str(claim))]


def test_a_full_report_ends_with_one_verdict_per_claim(fake_training, tmp_path):
    fake_training.numbers = REFUTING[ELMAN]
    report = ap.run(tmp_path, quick=False, progress=False)
    assert set(fake_training.budgets) == {ap.STEPS}
    assert verdict_lines(report) == [judge(GATED, REFUTING[ELMAN], FULL).line(),
                                     judge(ELMAN, REFUTING[ELMAN], FULL).line()]
    assert verdict_lines(report)[0].startswith("held: ") and verdict_lines(report)[1].startswith("did not hold: ")
    verdicts = [line for line in report.splitlines() if line.startswith(("held", "did not hold", "not tested"))]
    assert len(verdicts) == len(ap.CLAIMS)
    assert f"seqlab {__version__}, torch {torch.__version__}, seed 0, device cpu; run of 2,000 steps" in report
    assert "| elman | 200 | 2000 | 1 | 0.0631 | 0.167 | no |" in report
    assert (tmp_path / "report.md").read_text() == report + "\n"


def test_the_cli_prints_the_verdicts_of_a_quick_run(fake_training, tmp_path, capsys):
    assert main(["reproduce", "adding-problem", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.rstrip("\n").splitlines()
    for line in printed[-len(ap.CLAIMS):]:
        assert line.startswith("not tested: ") and "(quick run of 500 steps; the claim needs up to 2,000;" in line


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_experiment_states_its_claims_and_runs_by_one_signature(name):
    experiment = get(name)
    assert experiment.CLAIM and "\n" not in experiment.CLAIM
    assert experiment.CLAIMS and all(isinstance(claim, Claim) for claim in experiment.CLAIMS)
    # A full run decides every claim; a quick one none.
    needed = [claim.steps_needed for claim in experiment.CLAIMS]
    assert experiment.QUICK_STEPS < min(needed) and experiment.STEPS >= max(needed)
    assert list(inspect.signature(experiment.run).parameters) == ["out_dir", "quick", "progress"]
    assert inspect.signature(experiment.run).parameters["quick"].default is False


def test_unknown_experiments_are_a_config_error():
    with pytest.raises(ConfigError, match="unknown experiment 'adding'; known: adding-problem"):
        get("adding")
