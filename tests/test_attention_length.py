"""`seqlab reproduce attention-length`: its claims decided on fabricated numbers, and its report
(the training itself is the seq2seq task's, tested in tests/test_seq2seq_task.py; the full
reproduction runs from `seqlab reproduce attention-length`, 15 minutes on CPU)."""

import pytest

from seqlab.experiments import StepBudget, judge
from seqlab.experiments import attention_length as al

RANGES = ("5-10", "11-16", "17-22", "23-28", "29-34", "35-40")


def result(model: str, values: tuple[float, ...], steps: int = al.STEPS) -> al.ModelResult:
    return al.ModelResult(model, steps, 60.0, dict(zip(RANGES, values)))


AS_CLAIMED = {
    "seq2seq": result("seq2seq", (0.95, 0.7, 0.4, 0.2, 0.1, 0.05)),
    "seq2seq-bahdanau": result("seq2seq-bahdanau", (1.0, 1.0, 0.99, 0.98, 0.96, 0.93)),
    "seq2seq-luong": result("seq2seq-luong", (1.0, 0.99, 0.98, 0.95, 0.92, 0.90)),
}
ATTENTION, PLAIN = al.CLAIMS
FULL = StepBudget(steps=al.STEPS)


def test_both_claims_hold_on_the_numbers_they_state():
    assert judge(ATTENTION, AS_CLAIMED, FULL).outcome == "held"
    assert judge(PLAIN, AS_CLAIMED, FULL).outcome == "held"


@pytest.mark.parametrize("longest, outcome", [(0.90, "held"), (0.899, "did not hold")])
def test_attention_must_reach_the_floor_in_every_range(longest, outcome):
    measured = {**AS_CLAIMED, "seq2seq-luong": result("seq2seq-luong", (1.0, 1.0, 1.0, 1.0, 1.0, longest))}
    assert judge(ATTENTION, measured, FULL).outcome == outcome


@pytest.mark.parametrize("values, outcome", [
    ((0.95, 0.7, 0.4, 0.2, 0.1, 0.49), "held"),
    ((0.95, 0.9, 0.8, 0.7, 0.6, 0.55), "did not hold"),     # above the ceiling on the longest
    ((0.45, 0.4, 0.3, 0.2, 0.2, 0.2), "did not hold"),      # low everywhere: no fall of 30 points
])
def test_the_plain_model_must_fall_with_length(values, outcome):
    measured = {**AS_CLAIMED, "seq2seq": result("seq2seq", values)}
    assert judge(PLAIN, measured, FULL).outcome == outcome


def test_a_quick_report_decides_nothing_and_shows_the_table(monkeypatch, tmp_path):
    budgets = []

    def fake_train(task, name, steps, progress=False):
        budgets.append(steps)
        return AS_CLAIMED[name]

    monkeypatch.setattr(al, "make_task", lambda quick=False: None)
    monkeypatch.setattr(al, "train", fake_train)
    report = al.run(tmp_path, quick=True, progress=False)
    assert set(budgets) == {al.QUICK_STEPS} and len(budgets) == len(al.MODELS)
    verdicts = report.splitlines()[-len(al.CLAIMS):]
    assert all(line.startswith("not tested: ") for line in verdicts)
    assert "| seq2seq-luong | 1,200 | 60 | 100.0 | 99.0 | 98.0 | 95.0 | 92.0 | 90.0 |" in report
    assert (tmp_path / "report.md").read_text() == report + "\n"
    full = al.run(tmp_path, quick=False, progress=False)            # the report of seqlab's own writing is replaced
    assert [line.split(":")[0] for line in full.splitlines()[-2:]] == ["held", "held"]
