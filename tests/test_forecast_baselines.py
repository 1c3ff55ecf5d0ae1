"""The benchmark forecasters, M4's seasonal adjustment and the exact SES fit, against
hand-computed forecasts, brute force and statsmodels."""

import math

import numpy as np
import pytest
import torch
from statsmodels.tsa.holtwinters import SimpleExpSmoothing
from statsmodels.tsa.seasonal import seasonal_decompose
from statsmodels.tsa.stattools import acf

from seqlab.data.series import Panel, Series, read_single, single
from seqlab.errors import ConfigError, DataError
from seqlab.forecast.backtest import rolling_origin
from seqlab.forecast.base import interval_quantiles
from seqlab.forecast.baselines import SES, Comb, Damped, Drift, Holt, Naive, Naive2, SeasonalNaive, Theta
from seqlab.forecast.ets import ETS, ETSConfig
from seqlab.forecast.seasonality import autocorrelations, is_seasonal, seasonal_adjustment, seasonal_indices
from seqlab.forecast.ses import fit_ses, profile, ses_sse_ref
from seqlab.metrics.forecast import smape


def f64(values):
    return torch.tensor(values, dtype=torch.float64)


def seasonal_series(n=120, season=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64)
    pattern = 1 + 0.3 * torch.sin(2 * math.pi * t / season)
    return (100 + 0.5 * t) * pattern * (1 + 0.02 * torch.randn(n, generator=generator, dtype=torch.float64))


def test_naive_seasonal_naive_and_drift_by_hand():
    values = [1.0, 3.0, 2.0, 5.0, 4.0, 6.0]
    panel = single(values, season=2)
    q = interval_quantiles(0.95)
    naive = Naive().fit(panel).predict(panel, 3, q)
    assert naive.mean.tolist() == [[6.0, 6.0, 6.0]]
    sigma = math.sqrt(sum((b - a) ** 2 for a, b in zip(values, values[1:])) / 5)
    lower, upper = naive.interval(0.95)
    torch.testing.assert_close(upper - naive.mean, 1.959963984540054 * sigma * f64([[1.0, 2 ** 0.5, 3 ** 0.5]]))
    assert SeasonalNaive().fit(panel).predict(panel, 3).mean.tolist() == [[4.0, 6.0, 4.0]]
    drift = Drift().fit(panel).predict(panel, 2).mean
    torch.testing.assert_close(drift, f64([[7.0, 8.0]]))                     # slope (6 - 1) / 5


def test_autocorrelations_and_decomposition_equal_statsmodels():
    values = seasonal_series()
    torch.testing.assert_close(autocorrelations(values, 20), torch.from_numpy(acf(values.numpy(), nlags=20, fft=False)[1:]))
    indices = seasonal_indices(values, 12)
    reference = seasonal_decompose(values.numpy(), model="multiplicative", period=12).seasonal[:12]
    torch.testing.assert_close(indices, torch.from_numpy(reference), rtol=1e-12, atol=1e-12)
    odd = seasonal_series(n=70, season=7, seed=1)
    torch.testing.assert_close(seasonal_indices(odd, 7),
                               torch.from_numpy(seasonal_decompose(odd.numpy(), model="multiplicative", period=7).seasonal[:7]))


def test_the_seasonality_test_by_its_formula_and_limits():
    values = seasonal_series()
    assert is_seasonal(values, 12)
    noise = torch.randn(120, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 10
    assert not is_seasonal(noise, 12)
    assert not is_seasonal(values[:35], 12)                      # fewer than three periods
    assert not is_seasonal(values, 1)
    # A period beyond R's default acf lags, floor(10 log10 n) = 20 for n = 120, is never seasonal.
    assert not is_seasonal(values, 21)
    # The limit: 1.645 sqrt((1 + 2 sum_{k<m} r_k^2) / n), checked by hand on the series' acf.
    r = acf(values.numpy(), nlags=12, fft=False)
    assert abs(r[12]) > 1.645 * math.sqrt((1 + 2 * (r[1:12] ** 2).sum()) / 120)


def test_naive2_is_naive_on_the_adjusted_series_times_the_indices():
    values = seasonal_series()
    adjusted, inside, future = seasonal_adjustment(values, 12, 18)
    torch.testing.assert_close(adjusted * inside, values)
    forecast = Naive2().fit(single(values, 12)).predict(single(values, 12), 18).mean[0]
    torch.testing.assert_close(forecast, adjusted[-1] * future)
    # Positions continue the cycle: the index 12 steps ahead is the one 12 steps before the end.
    torch.testing.assert_close(future[:12], inside[-12:])
    plain = seasonal_adjustment(values[:30], 12, 3)                 # too short to test: not adjusted
    assert torch.equal(plain[0], values[:30]) and torch.equal(plain[2], torch.ones(3, dtype=torch.float64))


def test_ses_is_the_least_squares_fit_over_alpha_and_the_initial_level():
    values = read_series_or_synthetic()
    fit = fit_ses(values)
    sse, level = ses_sse_ref(values, fit.alpha, fit.level0)
    assert fit.sse == pytest.approx(sse, rel=1e-10) and fit.level == pytest.approx(level, rel=1e-10)
    # Brute force: a fine grid over alpha, each with its least-squares l_0, finds nothing better.
    scale = float(values.abs().max())
    grid = min(profile(values.numpy() / scale, alpha)[0] for alpha in np.linspace(1e-4, 0.9999, 2001)) * scale ** 2
    assert fit.sse <= grid * (1 + 1e-12)
    # statsmodels' optimiser ends no lower.
    peer = SimpleExpSmoothing(values.numpy(), initialization_method="estimated").fit()
    assert fit.sse <= peer.sse * (1 + 1e-9)
    assert fit.alpha == pytest.approx(peer.params["smoothing_level"], abs=1e-3)


def read_series_or_synthetic():
    from conftest import SHARED_DATA

    path = SHARED_DATA / "timeseries" / "Nile.csv"
    return read_single(path).series[0].values if path.is_file() else seasonal_series(season=1)


def test_ses_at_the_bounds_and_on_short_input():
    steps = f64([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])                   # a random walk is best followed at once
    assert fit_ses(steps).alpha == pytest.approx(0.9999)
    with pytest.raises(DataError, match="at least 2 values"):
        fit_ses(f64([1.0]))


def test_theta_is_its_definition_from_independent_pieces():
    values = seasonal_series(season=1) + torch.linspace(0, 30, 120, dtype=torch.float64)
    n, horizon = len(values), 6
    slope, intercept = np.polyfit(np.arange(1, n + 1), values.numpy(), 1)
    line_in = intercept + slope * np.arange(1, n + 1)
    line_out = intercept + slope * np.arange(n + 1, n + horizon + 1)
    peer = SimpleExpSmoothing(2 * values.numpy() - line_in, initialization_method="estimated").fit()
    expected = 0.5 * peer.forecast(horizon) + 0.5 * line_out
    mean = Theta().fit(single(values)).predict(single(values), horizon).mean[0]
    torch.testing.assert_close(mean, torch.from_numpy(expected), rtol=1e-5, atol=0.0)
    # Negative forecasts become 0.
    falling = single([50.0 - 5 * t for t in range(10)])
    assert (Theta().predict(falling, 12).mean >= 0).all()


@pytest.mark.parametrize("model", [Naive(), SeasonalNaive(), Drift(), Naive2(), SES(), Theta(), Holt(), Comb()])
def test_every_benchmark_forecasts_unseen_series_and_orders_its_quantiles(model):
    values = seasonal_series()
    panel = Panel((Series("a", values), Series("b", values * 2)), season=12)
    model.fit(Panel((Series("a", values),), season=12))
    forecast = model.predict(panel, 5, (0.1, 0.5, 0.9))
    assert forecast.ids == ("a", "b") and forecast.mean.shape == (2, 5)
    assert (forecast.quantiles[0.1] <= forecast.quantiles[0.5]).all()
    assert (forecast.quantiles[0.5] <= forecast.quantiles[0.9]).all()
    with pytest.raises(ConfigError, match="needs the 0.025 quantile"):
        forecast.interval(0.95)


def test_bad_requests_are_clear_errors():
    panel = single([1.0, 2.0, 3.0], season=4)
    with pytest.raises(DataError, match="has 3 values; SeasonalNaive with seasonal period 4 needs at least 5"):
        SeasonalNaive().fit(panel)
    with pytest.raises(ConfigError, match="positive integer"):
        Naive().predict(panel, 0)
    with pytest.raises(ConfigError, match=r"quantile level must be in \(0, 1\)"):
        Naive().predict(panel, 2, (0.5, 1.0))
    with pytest.raises(ConfigError, match="fits a Panel or a forecasting task"):
        Naive().fit([1.0, 2.0])
    with pytest.raises(DataError, match="needs a positive trend"):
        seasonal_indices(f64([-1.0, -2.0, -3.0, -4.0, -1.0, -2.0]), 2)


def test_rolling_origin_refits_at_each_origin_and_sees_nothing_after_it():
    values = seasonal_series(n=60, season=1)
    panel = Panel((Series("a", values), Series("b", values + 5)), season=1)
    seen = []

    class Recording(Naive):
        def fit(self, task, *, progress=False, deadline=None):
            seen.append([len(series) for series in task])
            return super().fit(task)

    result = rolling_origin(Recording(), panel, horizon=4, n_origins=3, step=2)
    assert seen == [[56, 56], [54, 54], [52, 52]]
    for origin, scores in enumerate(result.by_origin):
        n = 56 - 2 * origin
        actual = torch.stack([values[n: n + 4], values[n: n + 4] + 5])
        expected = smape(actual, torch.stack([values[n - 1].expand(4), values[n - 1].expand(4) + 5])).mean().item()
        assert scores["smape"] == pytest.approx(expected, rel=1e-12)
        assert scores["owa"] == pytest.approx(1.0)                  # naive is Naive2 on a non-seasonal series
    assert result.mean["smape"] == pytest.approx(sum(s["smape"] for s in result.by_origin) / 3)
    with pytest.raises(DataError, match="too few to hold out 62 for 30 origins"):
        rolling_origin(Naive(), panel, horizon=4, n_origins=30, step=2)


def test_comb_is_the_average_of_ses_holt_and_damped_fitted_apart():
    values = seasonal_series(n=72)
    panel = Panel((Series("a", values), Series("b", values[:60] * 1.5)), season=12)
    members = [model.fit(panel).predict(panel, 6, (0.1, 0.9)) for model in (SES(), Holt(), Damped())]
    comb = Comb().fit(panel).predict(panel, 6, (0.1, 0.9))
    torch.testing.assert_close(comb.mean, sum(member.mean for member in members) / 3, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(comb.quantiles[0.9], sum(m.quantiles[0.9] for m in members) / 3, rtol=1e-12, atol=0.0)
    # Holt is ETS(A,A,N) of the adjusted series, multiplied back by the indices.
    adjusted, _, future = seasonal_adjustment(values, 12, 6)
    plain = ETS(ETSConfig(form="AAN")).fit(single(adjusted)).predict(single(adjusted), 6).mean[0]
    torch.testing.assert_close(members[1].mean[0], plain * future, rtol=1e-12, atol=0.0)


def test_sampling_generators_follow_the_series_and_sampled_quantiles_are_torchs():
    from seqlab.forecast.base import sample_quantiles, series_generator

    one, other = Series("a", torch.arange(6.0, dtype=torch.float64)), Series("b", torch.arange(6.0, dtype=torch.float64))
    shifted = Series("a", torch.arange(6.0, dtype=torch.float64) + 1)
    draw = lambda series, seed=0: torch.rand(4, generator=series_generator(series, seed))  # noqa: E731
    assert torch.equal(draw(one), draw(other))                 # the values decide, not the id or the order
    assert not torch.equal(draw(one), draw(shifted)) and not torch.equal(draw(one), draw(one, seed=1))
    paths = torch.randn(2001, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, bands = sample_quantiles(paths, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    ordered = paths.sort(dim=0).values
    torch.testing.assert_close(bands[1], ordered[1000], rtol=0, atol=0)    # the median of 2001 draws is the 1001st
    torch.testing.assert_close(bands[0], ordered[200], rtol=0, atol=0)     # 0.1 * 2000 = 200 exactly
    torch.testing.assert_close(mean, paths.sum(0) / 2001)


def test_future_regressors_must_continue_the_past_ones():
    values = torch.arange(5.0, dtype=torch.float64)
    with pytest.raises(DataError, match="future regressors must be"):
        Series("a", values, future_exog=torch.zeros(2, 1, dtype=torch.float64))
    with pytest.raises(DataError, match="K = 2 columns"):
        Series("a", values, exog=torch.zeros(5, 2, dtype=torch.float64), future_exog=torch.zeros(2, 1, dtype=torch.float64))
    exog = torch.arange(10.0, dtype=torch.float64).view(5, 2)
    history, held = Panel((Series("a", values, exog=exog),)).split_last(2)
    assert torch.equal(history["a"].exog, exog[:3]) and torch.equal(history["a"].future_exog, exog[3:])
    assert torch.equal(held, values[None, 3:])
