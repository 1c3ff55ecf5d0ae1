"""M4's accuracy measures against element-by-element transcriptions of the competition's
definitions; probabilistic scores against closed forms."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqlab.errors import DataError
from seqlab.metrics.forecast import (coverage, crps_from_quantiles, mae, mape, mase, mase_scale, msis, owa,
                                     pinball_loss, rmse, smape)


def loop_smape(actual, forecast):
    return sum(200 * abs(y - f) / (abs(y) + abs(f)) for y, f in zip(actual, forecast)) / len(actual)


def loop_scale(insample, m):
    return sum(abs(insample[t] - insample[t - m]) for t in range(m, len(insample))) / (len(insample) - m)


def loop_msis(insample, actual, lower, upper, m, a):
    total = 0.0
    for y, lo, hi in zip(actual, lower, upper):
        total += (hi - lo) + (2 / a) * (lo - y) * (y < lo) + (2 / a) * (y - hi) * (y > hi)
    return total / len(actual) / loop_scale(insample, m)


positive = st.floats(0.1, 1000.0, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 4), st.integers(1, 6), st.integers(1, 3), st.data())
def test_m4_measures_equal_their_definitions_term_by_term(n_series, horizon, season, data):
    length = season + data.draw(st.integers(1, 8))
    insample = [torch.tensor(data.draw(st.lists(positive, min_size=length, max_size=length)), dtype=torch.float64)
                for _ in range(n_series)]
    grid = st.lists(positive, min_size=horizon, max_size=horizon)
    actual = torch.tensor([data.draw(grid) for _ in range(n_series)], dtype=torch.float64)
    forecast = torch.tensor([data.draw(grid) for _ in range(n_series)], dtype=torch.float64)
    spread = torch.tensor([data.draw(grid) for _ in range(n_series)], dtype=torch.float64)
    lower, upper = forecast - spread, forecast + spread
    if min(loop_scale(series.tolist(), season) for series in insample) == 0:
        return
    for row in range(n_series):
        y, f, history = actual[row].tolist(), forecast[row].tolist(), insample[row].tolist()
        assert smape(actual, forecast)[row].item() == pytest.approx(loop_smape(y, f), rel=1e-12)
        assert mase(insample, actual, forecast, season)[row].item() == pytest.approx(
            sum(abs(a - b) for a, b in zip(y, f)) / horizon / loop_scale(history, season), rel=1e-12)
        assert msis(insample, actual, lower, upper, season)[row].item() == pytest.approx(
            loop_msis(history, y, lower[row].tolist(), upper[row].tolist(), season, 0.05), rel=1e-12)


def test_a_worked_example():
    insample = [torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)]           # naive errors 1, 2, 3
    actual = torch.tensor([[10.0, 10.0]], dtype=torch.float64)
    forecast = torch.tensor([[8.0, 12.0]], dtype=torch.float64)
    assert mase_scale(insample, 1).item() == 2.0
    assert mase(insample, actual, forecast, 1).item() == 1.0                        # mean |error| 2 over 2
    assert smape(actual, forecast).item() == pytest.approx((200 * 2 / 18 + 200 * 2 / 22) / 2)
    assert mae(actual, forecast).item() == 2.0 and rmse(actual, forecast).item() == 2.0
    assert mape(actual, forecast).item() == pytest.approx(20.0)
    # The interval [9, 11] holds neither value: width 2, each outside by 1, scored 2/0.05 each.
    lower, upper = torch.tensor([[9.0, 9.0]], dtype=torch.float64), torch.tensor([[11.0, 9.5]], dtype=torch.float64)
    assert msis(insample, actual, lower, upper, 1).item() == pytest.approx(((2 + 0) + (0.5 + 40 * 0.5)) / 2 / 2)
    assert coverage(actual, lower, upper) == 0.5
    assert owa(10.0, 1.0, 20.0, 4.0) == pytest.approx((0.5 + 0.25) / 2)


def test_a_zero_over_zero_smape_term_counts_zero():
    zeros = torch.zeros(1, 2, dtype=torch.float64)
    assert smape(zeros, torch.tensor([[0.0, 1.0]], dtype=torch.float64)).item() == 100.0


def test_the_quantile_crps_approaches_the_gaussian_closed_form():
    # CRPS of N(mu, s^2) at y: s [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)], z = (y - mu)/s (Gneiting et al. 2005).
    mu, s, y = 3.0, 2.0, 4.5
    z = (y - mu) / s
    exact = s * (z * (2 * 0.5 * (1 + math.erf(z / math.sqrt(2))) - 1) + 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
                 - 1 / math.sqrt(math.pi))
    levels = torch.arange(1, 1000, dtype=torch.float64) / 1000
    quantiles = {q: torch.full((1, 1), mu + s * torch.special.ndtri(torch.tensor(q, dtype=torch.float64)).item(),
                               dtype=torch.float64) for q in levels.tolist()}
    actual = torch.full((1, 1), y, dtype=torch.float64)
    assert crps_from_quantiles(actual, quantiles).item() == pytest.approx(exact, rel=1e-2)
    assert pinball_loss(actual, torch.full((1, 1), 5.0, dtype=torch.float64), 0.9).item() == pytest.approx(0.05)
    assert pinball_loss(actual, torch.full((1, 1), 4.0, dtype=torch.float64), 0.9).item() == pytest.approx(0.45)


def test_undefined_scores_are_data_errors():
    ones = torch.ones(1, 2, dtype=torch.float64)
    with pytest.raises(DataError, match="MAPE is undefined for an actual value of 0"):
        mape(torch.zeros(1, 2, dtype=torch.float64), ones)
    with pytest.raises(DataError, match="repeats exactly every 2 steps"):
        mase([torch.tensor([1.0, 2.0, 1.0, 2.0], dtype=torch.float64)], ones, ones, 2)
    with pytest.raises(DataError, match="needs more than 4"):
        mase_scale([torch.ones(4, dtype=torch.float64)], 4)
    with pytest.raises(DataError, match=r"must both be \(S, H\)"):
        smape(ones, torch.ones(1, 3, dtype=torch.float64))
    with pytest.raises(DataError, match="forecast values hold a NaN"):
        smape(ones, torch.tensor([[1.0, float("nan")]], dtype=torch.float64))
    with pytest.raises(DataError, match="needs quantile forecasts"):
        crps_from_quantiles(ones, {})
