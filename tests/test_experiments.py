"""Verdicts of ``seqlab reproduce``: each claim held, did not hold, or was not tested, on
fabricated numbers, with training replaced by a stub; the few tests that really train take two
to five steps of a tiny model."""

import dataclasses
import inspect

import pytest
import torch

from seqlab import __version__
from seqlab.cli import main
from seqlab.errors import ConfigError, DataError
from seqlab.experiments import EXPERIMENTS, AccuracySweep, Claim, Evidence, StepBudget, get, judge
from seqlab.experiments import adding_problem as ap
from seqlab.experiments import associative_recall as ar
from seqlab.experiments import induction_heads as ih
from seqlab.experiments import m4_hourly as m4
from seqlab.experiments import selective_copying as sc

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


# ---- selective copying, induction heads, associative recall (Gu and Dao 2023; Arora et al. 2023) ----



def outcomes(claims, measured, budget) -> list[str]:
    return [judge(claim, measured, budget).outcome for claim in claims]


def copying(**accuracy: float) -> sc.Measurements:
    """Every model at 99% after the full budget, but for the accuracies given."""
    return {model: sc.ModelResult(model, sc.STEPS, 60.0, accuracy.get(model, 0.99), 0.05) for model in sc.MODELS}


COPYING_AS_CLAIMED = copying(mamba=0.987, s4d=0.312, hyena=0.405, transformer=0.962)


def test_selective_copying_claims_hold_on_the_papers_numbers_and_fail_on_others():
    full = StepBudget(steps=sc.STEPS)
    assert outcomes(sc.CLAIMS, COPYING_AS_CLAIMED, full) == ["held", "held"]
    assert judge(sc.CLAIMS[0], COPYING_AS_CLAIMED, full).line().endswith(
        f"(mamba: 98.7% after {sc.STEPS:,} steps)")
    assert judge(sc.CLAIMS[1], COPYING_AS_CLAIMED, full).line().endswith(
        f"(s4d: 31.2% after {sc.STEPS:,} steps; chance 12.5%)")
    # Mamba short of near-perfect refutes the first claim only; S4D copying well, the second only.
    assert outcomes(sc.CLAIMS, {**COPYING_AS_CLAIMED, **copying(mamba=0.9499, s4d=0.312)}, full) == [
        "did not hold", "held"]
    assert outcomes(sc.CLAIMS, {**COPYING_AS_CLAIMED, "s4d": copying()["s4d"]}, full) == ["held", "did not hold"]


@pytest.mark.parametrize("mamba, s4d, expected", [
    (0.95, 0.5999, ["held", "held"]), (0.9499, 0.5999, ["did not hold", "held"]), (0.95, 0.60, ["held", "did not hold"])])
def test_selective_copying_thresholds(mamba, s4d, expected):
    assert outcomes(sc.CLAIMS, copying(mamba=mamba, s4d=s4d), StepBudget(steps=sc.STEPS)) == expected


def test_a_quick_selective_copying_report_decides_nothing(monkeypatch, tmp_path):
    budgets = []

    def fake_train(model, max_steps, progress=False):
        budgets.append(max_steps)
        return COPYING_AS_CLAIMED[model]

    monkeypatch.setattr(sc, "train", fake_train)
    report = sc.run(tmp_path, quick=True, progress=False)
    assert budgets == [sc.QUICK_STEPS] * len(sc.MODELS)
    assert all(line.startswith("not tested: ") for line in report.splitlines()[-len(sc.CLAIMS):])
    assert f"| s4d | {sc.STEPS:,} | 60 | 31.2% | 0.050 |" in report
    assert "ordering by test accuracy: mamba > transformer > hyena > s4d" in report
    assert (tmp_path / "report.md").read_text() == report + "\n"
    full = sc.run(tmp_path, quick=False, progress=False)
    assert [line.split(":")[0] for line in full.splitlines()[-2:]] == ["held", "held"]


def test_selective_copying_really_trains_a_model(monkeypatch):
    monkeypatch.setitem(sc.MODELS, "s4d", sc.Setup("s4d", {"d_model": 8}, lr=1e-3, steps=5))
    measured = sc.train("s4d", max_steps=2)
    assert measured.model == "s4d" and measured.steps == 2 and 0.0 <= measured.accuracy <= 1.0
    assert measured.loss > 0


def induction(label: str, accuracies: tuple[float, ...], steps: int = ih.STEPS) -> AccuracySweep:
    return AccuracySweep(label, steps, 60.0, dict(zip(ih.TEST_LENGTHS, accuracies, strict=True)))


INDUCTION_AS_CLAIMED = {
    "mamba": induction("mamba", (1.0, 1.0, 1.0, 0.995, 0.97), steps=1200),
    "attention-learned": induction("attention-learned", (0.98, 0.41, 0.24, 0.14, 0.10)),
    "attention-rope": induction("attention-rope", (1.0, 0.6, 0.16, 0.09, 0.043), steps=1600),
}


@pytest.mark.parametrize("label, accuracies, refuted", [
    ("mamba", (1.0, 1.0, 1.0, 1.0, 0.9499), 0),                        # falls short at 4,096
    ("mamba", (0.9499, 1.0, 1.0, 1.0, 1.0), 0),                        # or anywhere
    ("attention-learned", (0.8999, 0.3, 0.1, 0.1, 0.1), 1),            # never learned the training length
    ("attention-learned", (1.0, 0.9, 0.8, 0.7, 0.5), 1),              # still at 50% at 4,096
    ("attention-rope", (0.8999, 0.5, 0.2, 0.1, 0.05), 2),
    ("attention-rope", (1.0, 1.0, 1.0, 0.99, 0.98), 2),                # extrapolates like Mamba
])
def test_induction_claims_fail_on_numbers_that_refute_them_and_only_them(label, accuracies, refuted):
    full = StepBudget(steps=ih.STEPS)
    assert outcomes(ih.CLAIMS, INDUCTION_AS_CLAIMED, full) == ["held"] * 3
    measured = {**INDUCTION_AS_CLAIMED, label: induction(label, accuracies)}
    assert outcomes(ih.CLAIMS, measured, full) == ["did not hold" if index == refuted else "held" for index in range(3)]


def test_the_induction_verdicts_give_the_accuracy_at_every_length():
    line = judge(ih.CLAIMS[2], INDUCTION_AS_CLAIMED, StepBudget(steps=ih.STEPS)).line()
    assert line.endswith("(attention-rope after 1,600 steps (256: 100.0%, 512: 60.0%, 1024: 16.0%, 2048: 9.0%, "
                         "4096: 4.3%); chance 6.2%)")


def test_a_quick_induction_report_decides_nothing_and_draws_the_plot(monkeypatch, tmp_path):
    budgets = []

    def fake_train(label, max_steps, quick=False, progress=False):
        budgets.append((max_steps, quick))
        return INDUCTION_AS_CLAIMED[label]

    monkeypatch.setattr(ih, "train", fake_train)
    report = ih.run(tmp_path, quick=True, progress=False)
    assert budgets == [(ih.QUICK_STEPS, True)] * len(ih.MODELS)
    assert all(line.startswith("not tested: ") for line in report.splitlines()[-len(ih.CLAIMS):])
    assert "| attention-rope | 0.001 | 1,600 | 60 | 100.0% | 60.0% | 16.0% | 9.0% | 4.3% |" in report
    assert (tmp_path / "induction-heads.png").stat().st_size > 1000
    full = ih.run(tmp_path, quick=False, progress=False)
    assert [line.split(":")[0] for line in full.splitlines()[-3:]] == ["held"] * 3


def test_induction_heads_really_train_and_test_past_the_training_length(monkeypatch):
    small = ih.Setup("transformer", {**ih.ATTENTION, "d_model": 8, "n_heads": 2}, lr=1e-3, steps=5)
    monkeypatch.setitem(ih.MODELS, "attention-learned", small)
    monkeypatch.setattr(ih, "TEST_LENGTHS", (256, 512))
    measured = ih.train("attention-learned", max_steps=2, quick=True)
    assert measured.steps == 2 and list(measured.accuracy) == [256, 512]
    assert all(0.0 <= value <= 1.0 for value in measured.accuracy.values())


def recall(label: str, accuracies: tuple[float, ...]) -> AccuracySweep:
    return AccuracySweep(label, ar.STEPS, 60.0, dict(zip(ar.PAIRS, accuracies, strict=True)))


def recall_measurements(**accuracies: tuple[float, ...]) -> ar.Measurements:
    return {label: recall(label, accuracies[label]) for label in ("attention", "mamba", "hyena", "s4d")}


RECALL_AS_CLAIMED = recall_measurements(attention=(1.0, 1.0, 0.998, 0.991), mamba=(1.0, 0.99, 0.97, 0.92),
                                        hyena=(1.0, 0.62, 0.31, 0.12), s4d=(1.0, 0.55, 0.28, 0.1))


@pytest.mark.parametrize("label, accuracies, refuted", [
    ("attention", (1.0, 1.0, 1.0, 0.9499), [0]),                       # short at the most pairs
    ("mamba", (1.0, 0.9499, 1.0, 1.0), [1]),                           # short at 2 pairs
    ("mamba", (1.0, 0.96, 0.89, 0.5), [1, 2]),                         # falls with the convolutions
    ("hyena", (1.0, 1.0, 1.0, 0.95), [2]),                             # holds as long as Mamba
    ("s4d", (1.0, 1.0, 1.0, 1.0), [2]),
    ("attention", (1.0, 0.95, 0.80, 0.6), [0, 2]),
])
def test_recall_claims_fail_on_numbers_that_refute_them(label, accuracies, refuted):
    full = StepBudget(steps=ar.STEPS)
    assert outcomes(ar.CLAIMS, RECALL_AS_CLAIMED, full) == ["held"] * 3
    measured = {**RECALL_AS_CLAIMED, label: recall(label, accuracies)}
    assert outcomes(ar.CLAIMS, measured, full) == ["did not hold" if index in refuted else "held"
                                                   for index in range(3)]


def test_the_recall_verdict_names_where_the_convolutions_fell_first():
    line = judge(ar.CLAIMS[2], RECALL_AS_CLAIMED, StepBudget(steps=ar.STEPS)).line()
    assert (f"(first at 4 pairs: s4d after {ar.STEPS:,} steps (1: 100.0%, 2: 55.0%, 4: 28.0%, 8: 10.0%); hyena "
            "after") in line
    measured = {**RECALL_AS_CLAIMED, "s4d": recall("s4d", (1.0, 1.0, 1.0, 1.0))}
    assert f"(at no number of pairs: s4d after {ar.STEPS:,} steps (1: 100.0%" in judge(
        ar.CLAIMS[2], measured, StepBudget(steps=ar.STEPS)).line()


@pytest.mark.parametrize("s4d_at_4, mamba_at_4, outcome", [
    (0.4999, 0.90, "held"), (0.50, 0.90, "did not hold"), (0.4999, 0.8999, "did not hold")])
def test_recall_thresholds_of_falling_first(s4d_at_4, mamba_at_4, outcome):
    measured = recall_measurements(attention=(1.0,) * 4, mamba=(1.0, 1.0, mamba_at_4, 0.2),
                                   hyena=(1.0, 0.6, 0.3, 0.1), s4d=(1.0, 0.6, s4d_at_4, 0.1))
    assert judge(ar.CLAIMS[2], measured, StepBudget(steps=ar.STEPS)).outcome == outcome


def test_a_quick_recall_report_decides_nothing_and_draws_the_plot(monkeypatch, tmp_path):
    budgets = []

    def fake_train(label, max_steps, quick=False, progress=False):
        budgets.append((max_steps, quick))
        return RECALL_AS_CLAIMED[label]

    monkeypatch.setattr(ar, "train", fake_train)
    report = ar.run(tmp_path, quick=True, progress=False)
    assert budgets == [(ar.QUICK_STEPS, True)] * len(ar.MODELS)
    assert all(line.startswith("not tested: ") for line in report.splitlines()[-len(ar.CLAIMS):])
    assert f"| s4d | {ar.MODELS['s4d'].lr:g} | {ar.STEPS:,} | 60 | 100.0% | 55.0% | 28.0% | 10.0% |" in report
    assert (tmp_path / "associative-recall.png").stat().st_size > 1000
    full = ar.run(tmp_path, quick=False, progress=False)
    assert [line.split(":")[0] for line in full.splitlines()[-3:]] == ["held"] * 3


def test_the_recall_mixture_trains_on_every_number_of_pairs_and_averages_them():
    mixture = ar.PairMixture(eval_size=4)
    generator = torch.Generator().manual_seed(0)
    lengths = {mixture.train_batch(2, generator)[0].shape[1] for _ in range(100)}
    assert lengths == {3 * pairs for pairs in ar.PAIRS}

    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(()))

        def forward(self, inputs):
            return torch.zeros(*inputs.shape, mixture.vocab_size)

    metrics = mixture.evaluate(Constant(), "test")
    parts = [task.evaluate(Constant(), "test") for task in mixture.tasks.values()]
    assert metrics["loss"] == pytest.approx(sum(part["loss"] for part in parts) / len(parts))
    assert metrics["accuracy"] == pytest.approx(sum(part["accuracy"] for part in parts) / len(parts))


def test_associative_recall_really_trains_a_model(monkeypatch):
    monkeypatch.setitem(ar.MODELS, "hyena", ar.Setup("hyena", {"d_model": 8, "l_max": 24}, lr=1e-3, steps=5))
    measured = ar.train("hyena", max_steps=2, quick=True)
    assert measured.model == "hyena" and measured.steps == 2
    assert list(measured.accuracy) == list(ar.PAIRS)


# ---- M4 Hourly (Makridakis et al. 2020) ----------------------------------------------------------


def m4_scores(method: str, smape: float, mase: float, published=(18.383, 2.395)) -> m4.Scores:
    return m4.Scores(method, smape, mase, 1.0, 20.0, 0.95, 0.1,
                     {"smape": published[0], "mase": published[1], "owa": 1.0, "msis": None})


@pytest.mark.parametrize("smape, mase, outcome", [
    (18.383, 2.395, "held"), (18.383 * 1.0099, 2.395 * 0.9901, "held"),
    (18.383 * 1.0101, 2.395, "did not hold"), (18.383, 2.395 * 0.9899, "did not hold")])
def test_m4_claims_hold_within_one_percent_of_the_published_scores(smape, mase, outcome):
    measured = {method: m4_scores(method, 18.383, 2.395) for method in [*m4.BENCHMARKS, *m4.FITTED, *m4.TRAINED]}
    measured["Naive2"] = m4_scores("Naive2", smape, mase)
    full = StepBudget(steps=m4.STEPS, unit="series")
    assert judge(m4.CLAIMS[0], measured, full).outcome == outcome
    assert [judge(claim, measured, full).outcome for claim in m4.CLAIMS[1:3]] == ["held", "held"]
    unpublished = {**measured, "Naive2": m4_scores("Naive2", 18.383, 2.395, published=(None, None))}
    assert judge(m4.CLAIMS[0], unpublished, full).outcome == "did not hold"


@pytest.mark.parametrize("owa, outcome", [(0.9999, "held"), (1.0, "did not hold")])
@pytest.mark.parametrize("index, method", list(enumerate(m4.BEAT_NAIVE2, start=3)))
def test_the_beats_naive2_claims_ask_an_owa_below_one(index, method, owa, outcome):
    scores = dataclasses.replace(m4_scores(method, 15.0, 2.0), owa=owa)
    verdict = judge(m4.CLAIMS[index], {method: scores}, StepBudget(steps=m4.STEPS, unit="series"))
    assert verdict.outcome == outcome and f"{method}: OWA {owa:.3f}" in verdict.line()


def test_the_m4_hourly_reproduction_quick_run_on_the_data(shared_data, monkeypatch, tmp_path):
    monkeypatch.setenv("SEQLAB_M4_DATA", str(shared_data / "m4"))
    # One model of each kind: the others fit or train through the same code (and their own tests);
    # ETS's batched fit costs about a minute however few the series.
    monkeypatch.setattr(m4, "FITTED", {"Prophet": "prophet"})
    monkeypatch.setattr(m4, "TRAINED", {"N-BEATS": m4.TRAINED["N-BEATS"]})
    report = m4.run(tmp_path, quick=True, progress=False)
    assert "the first 8 of 414 series" in report and "quick run of 8 series" in report
    assert all(line.startswith("not tested: ") for line in report.splitlines()[-len(m4.CLAIMS):])
    assert "(quick run of 8 series; the claim needs up to 414; measured: ETS: not run)" in report
    assert "| Naive | " in report and "| 43.003 | " in report                # the published score beside
    assert "| N-BEATS | " in report and "the competition's winner (Smyl's hybrid ES-RNN): OWA 0.44" in report


def test_the_m4_reproduction_says_where_the_data_should_be(monkeypatch, tmp_path):
    monkeypatch.setenv("SEQLAB_M4_DATA", str(tmp_path))
    with pytest.raises(DataError, match="M4 Hourly is not at .*set SEQLAB_M4_DATA"):
        m4.run(tmp_path / "out", quick=True, progress=False)
