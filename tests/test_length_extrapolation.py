"""`seqlab reproduce length-extrapolation`: its claims decided on fabricated numbers, its loss at
a length against a direct computation, and a real quick run of one scheme (the full
reproduction runs from `seqlab reproduce length-extrapolation`, about 12 minutes on CPU)."""

import pytest
import torch
import torch.nn.functional as F

from seqlab import registry
from seqlab.experiments import StepBudget, judge
from seqlab.experiments import length_extrapolation as le

from helpers import tiny_task


def result(scheme: str, losses: tuple, steps: int = le.STEPS) -> le.SchemeResult:
    return le.SchemeResult(scheme, steps, 170.0, dict(zip(le.EVAL_LENGTHS, losses)))


AS_CLAIMED = {
    "sinusoidal": result("sinusoidal", (1.50, 1.70, 2.30, 3.10)),
    "learned": result("learned", (1.48, None, None, None)),
    "rope": result("rope", (1.45, 1.52, 1.80, 2.20)),
    "alibi": result("alibi", (1.46, 1.43, 1.42, 1.42)),
}
ALIBI, SINUSOIDAL = le.CLAIMS
FULL = StepBudget(steps=le.STEPS)


def test_both_claims_hold_on_the_numbers_they_state():
    assert judge(ALIBI, AS_CLAIMED, FULL).outcome == "held"
    assert judge(SINUSOIDAL, AS_CLAIMED, FULL).outcome == "held"


@pytest.mark.parametrize("at_512, outcome", [(1.48, "held"), (1.4801, "did not hold")])
def test_alibi_must_stay_within_the_margin_at_every_length(at_512, outcome):
    measured = {**AS_CLAIMED, "alibi": result("alibi", (1.46, 1.40, at_512, 1.30))}
    assert judge(ALIBI, measured, FULL).outcome == outcome


@pytest.mark.parametrize("longest, outcome", [(1.60, "held"), (1.5999, "did not hold")])
def test_sinusoidal_must_degrade_by_the_stated_amount(longest, outcome):
    measured = {**AS_CLAIMED, "sinusoidal": result("sinusoidal", (1.50, 1.50, 1.50, longest))}
    assert judge(SINUSOIDAL, measured, FULL).outcome == outcome


def test_loss_at_a_length_scores_every_target_once_in_windows_of_that_length():
    task = tiny_task(3000)
    torch.manual_seed(0)
    model = registry.build("transformer", task, d_model=16, n_layers=1, positions="alibi", max_len=64).eval()
    ids = task.splits["train"].ids[: 4 * 16 + 1]
    expected = []
    for start in range(0, 64, 16):
        window = ids[start: start + 17]
        expected.append(F.cross_entropy(model(window[None, :-1])[0], window[1:], reduction="none"))
    torch.testing.assert_close(torch.tensor(le.loss_at_length(model, ids, 16, batch_size=3)),
                               torch.cat(expected).mean().detach(), rtol=1e-6, atol=1e-7)


def test_a_quick_report_decides_nothing_and_draws_the_plot(monkeypatch, tmp_path):
    calls = []

    def fake_train(task, scheme, steps, seconds, progress):
        calls.append((steps, seconds))
        return AS_CLAIMED[scheme]

    monkeypatch.setattr(le, "train", fake_train)
    report = le.run(tmp_path, quick=True, progress=False)
    assert set(calls) == {(le.QUICK_STEPS, le.QUICK_SECONDS)} and len(calls) == len(le.SCHEMES)
    assert all(line.startswith("not tested: ") for line in report.splitlines()[-2:])
    assert "| learned | 4,000 | 170 | 1.480 | n/a | n/a | n/a |" in report
    assert (tmp_path / "length-extrapolation.png").stat().st_size > 1000
    full = le.run(tmp_path, quick=False, progress=False)
    assert [line.split(":")[0] for line in full.splitlines()[-2:]] == ["held", "held"]


def test_one_scheme_really_trains_and_reads_past_its_training_length(monkeypatch):
    monkeypatch.setattr(le, "SHAPE", {"d_model": 16, "n_layers": 1, "n_heads": 2, "dropout": 0.0})
    task = tiny_task(40_000, context=le.TRAIN_LENGTH)
    measured = le.train(task, "rope", steps=3, seconds=60.0, progress=False)
    assert measured.steps == 3 and all(loss is not None and loss > 0 for loss in measured.loss_by_length.values())
    learned = le.train(task, "learned", steps=1, seconds=60.0, progress=False)
    assert list(learned.loss_by_length.values())[1:] == [None, None, None]
