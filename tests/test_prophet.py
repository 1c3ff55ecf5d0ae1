"""The Prophet-style model: its design matrices against per-element formulas, its objective
against the lp__ of Prophet's own Stan model, its MAP against Prophet's fits (daily data with
weekly and yearly seasonality, a holiday and a regressor; monthly multiplicative data) and
against the optimality conditions of the objective, its forecasts and intervals, and its errors.

The peer library is ``prophet`` (>= 1.1.5, for ``scaling="absmax"``; a dev dependency: it ships
its compiled Stan model and needs cmdstanpy, not torch)."""

import logging
import math
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
import torch

from seqlab.data.series import Panel, Series, single
from seqlab.errors import ConfigError, DataError
from seqlab.forecast.prophet import Problem, Prophet, ProphetConfig, negative_log_posterior, unpack
from seqlab.forecast.prophet_features import (changepoint_matrix, changepoint_times, day_axis, fourier_features,
                                              future_stamps, holiday_features, piecewise_linear, regressor_scaling)

torch.set_num_threads(1)
XMAS = ("christmas:2019-12-25", "christmas:2020-12-25", "christmas:2021-12-25")


def peer_prophet(uncertainty_samples: int = 0, **settings):
    logging.getLogger("cmdstanpy").disabled = True
    from prophet import Prophet as PeerProphet
    return PeerProphet(scaling="absmax", uncertainty_samples=uncertainty_samples, **settings)


# ---- design matrices against per-element formulas --------------------------------------------

def test_fourier_features_match_the_formula():
    days = np.array([0.0, 1.5, 17.25, 18262.0, 20000.125])
    features = fourier_features(days, 365.25, 3)
    for i, d in enumerate(days):
        for n in range(1, 4):
            assert features[i, 2 * n - 2] == pytest.approx(math.sin(2 * math.pi * n * d / 365.25), abs=1e-12)
            assert features[i, 2 * n - 1] == pytest.approx(math.cos(2 * math.pi * n * d / 365.25), abs=1e-12)


@pytest.mark.parametrize("length, expected_count", [(50, 25), (20, 15), (3, 1), (2, 0)])
def test_changepoints_and_their_matrix_match_the_formula(length, expected_count):
    t = np.arange(length) / max(length - 1, 1)
    changepoints = changepoint_times(t, 25, 0.8)
    history = math.floor(0.8 * length)
    assert len(changepoints) == expected_count == max(min(25, history - 1), 0)
    for j in range(expected_count):                       # position round(j (hist - 1) / S), half to even
        position = round((j + 1) * (history - 1) / expected_count)
        assert changepoints[j] == t[position]
    A = changepoint_matrix(t, changepoints)
    for i in range(length):
        for j in range(expected_count):
            assert A[i, j] == (1.0 if t[i] >= changepoints[j] else 0.0)


def test_trend_is_continuous_at_the_changepoints():
    changepoints = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64)
    delta = torch.tensor([1.5, -4.0, 2.5], dtype=torch.float64)
    k, m = torch.tensor(0.7, dtype=torch.float64), torch.tensor(-0.3, dtype=torch.float64)
    eps = 1e-9
    for s in changepoints.tolist():
        around = torch.tensor([s - eps, s, s + eps], dtype=torch.float64)
        g = piecewise_linear(around, k, m, delta, changepoints)
        assert abs(float(g[2] - g[0])) < 20 * eps          # a jump would survive eps -> 0
    # between changepoints the slope is k plus the changes so far
    grid = torch.tensor([0.1, 0.11, 0.6, 0.61], dtype=torch.float64)
    g = piecewise_linear(grid, k, m, delta, changepoints)
    assert float((g[1] - g[0]) / 0.01) == pytest.approx(0.7, rel=1e-9)
    assert float((g[3] - g[2]) / 0.01) == pytest.approx(0.7 + 1.5 - 4.0, rel=1e-9)


def test_holiday_indicators_mark_the_dates_and_their_windows():
    config = ProphetConfig(holidays=("xmas:2020-12-25:-1:1", "easter:2021-04-04"))
    stamps = np.arange(np.datetime64("2020-12-20T00"), np.datetime64("2021-04-10T00"), np.timedelta64(6, "h"))
    days = stamps.astype("datetime64[s]").astype(np.int64) / 86400.0
    matrix, names = holiday_features(days, config.parsed_holidays())
    assert names == ["easter_+0", "xmas_-1", "xmas_+0", "xmas_+1"]
    for i, stamp in enumerate(stamps.astype("datetime64[D]").astype(object)):
        expected = [stamp == date(2021, 4, 4)] + [stamp == date(2020, 12, 25) + timedelta(days=o) for o in (-1, 0, 1)]
        assert matrix[i].tolist() == [float(e) for e in expected]
    assert matrix.sum() == 4 * 4                           # 4 columns, each one day of four stamps


def test_future_timestamps_follow_the_calendar():
    months = np.array(["2020-11-01", "2020-12-01"], dtype="datetime64[s]")
    assert future_stamps(months, 3, "monthly").astype("datetime64[D]").astype(str).tolist() == \
        ["2021-01-01", "2021-02-01", "2021-03-01"]
    ends = np.array(["2020-11-30", "2020-12-31"], dtype="datetime64[s]")
    assert future_stamps(ends, 2, "monthly").astype("datetime64[D]").astype(str).tolist() == \
        ["2021-01-31", "2021-02-28"]


def test_decimal_years_are_days_of_365_25():
    years = 1949 + np.arange(48) / 12
    days, future, timed = day_axis(Series("air", torch.ones(48, dtype=torch.float64), years), 3)
    assert timed
    np.testing.assert_allclose(days, (years - 1970) * 365.25, rtol=0, atol=1e-9)
    np.testing.assert_allclose(future, (1953 + np.arange(3) / 12 - 1970) * 365.25, rtol=0, atol=1e-9)
    names = Prophet().design(Series("air", torch.ones(48, dtype=torch.float64), years), 12).names
    assert names[0] == "yearly_sin1" and len(names) == 20          # 4 years: yearly on; monthly: no weekly


def test_regressors_are_standardised_except_binary_and_constant_ones():
    rng = np.random.default_rng(0)
    exog = np.stack([rng.normal(3, 2, 30), rng.integers(0, 2, 30).astype(float), np.full(30, 7.0)], 1)
    means, scales = regressor_scaling(exog)
    assert means[0] == pytest.approx(exog[:, 0].mean()) and scales[0] == pytest.approx(exog[:, 0].std(ddof=1))
    assert means[1:].tolist() == [0.0, 0.0] and scales[1:].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("frequency, periods", [("h", 24 * 20), ("h", 30), ("D", 400), ("D", 13), ("W", 150),
                                                ("MS", 30)])
def test_automatic_seasonalities_are_prophets(frequency, periods):
    ds = pd.date_range("2020-01-01", periods=periods, freq=frequency)
    y = 10 + np.sin(np.arange(periods))
    peer = peer_prophet()
    peer.fit(pd.DataFrame({"ds": ds, "y": y}))
    expected = {name: props["fourier_order"] for name, props in peer.seasonalities.items()}
    names = Prophet().design(Series("s", torch.tensor(y), ds.to_numpy()), 1).names
    ours = {}
    for name in names:
        ours[name.split("_")[0]] = ours.get(name.split("_")[0], 0) + 0.5
    assert ours == expected


# ---- against Prophet ---------------------------------------------------------------------------

def daily_case():
    """800 days: trend with a kink, weekly and yearly seasonality, Christmas (+-1 day), a regressor."""
    rng = np.random.default_rng(0)
    n = 830
    ds = pd.date_range("2019-01-01", periods=n, freq="D")
    i = np.arange(n)
    temperature = 15 + 8 * np.sin(2 * np.pi * (i - 100) / 365.25) + rng.normal(0, 2, n)
    y = (20 + 0.01 * i - 0.02 * np.clip(i - 400, 0, None) + 2 * np.sin(2 * np.pi * i / 7)
         + 3 * np.cos(2 * np.pi * i / 365.25) + 0.3 * temperature + rng.normal(0, 0.5, n))
    y[(ds.month == 12) & (ds.day == 25)] += 8
    return ds, y, temperature


def monthly_case():
    """144 months of AirPassengers-like multiplicative seasonality on a growing trend."""
    rng = np.random.default_rng(1)
    i = np.arange(144)
    ds = pd.date_range("1949-01-01", periods=144, freq="MS")
    trend = 100 + 2.5 * i + 0.004 * i ** 2
    y = trend * (1 + 0.15 * np.sin(2 * np.pi * i / 12) + 0.05 * np.cos(4 * np.pi * i / 12)) + rng.normal(0, 4, 144)
    return ds, y


def peer_column(name: str) -> str:
    """Our column name -> Prophet's (its Fourier columns are name_delim_1.. interleaving sin, cos)."""
    if name.startswith("exog_"):
        return "temperature"
    prefix, rest = name.split("_")
    if rest.startswith("sin") or rest.startswith("cos"):
        n = int(rest[3:])
        return f"{prefix}_delim_{2 * n - 1 if rest.startswith('sin') else 2 * n}"
    return f"{prefix}_delim_{rest}"


def compare_with_peer(peer, model, series, horizon, future_frame):
    """Shared checks: the design equals Prophet's, J equals -lp__ at Prophet's optimum, our
    optimum is at least as low, and the fits agree. Returns the largest |yhat difference| / max|y|."""
    design = model.design(series, 1, horizon)
    peer_features, _, _, _ = peer.make_all_seasonality_features(peer.history)
    columns = [peer_column(name) for name in design.names]
    assert sorted(columns) == sorted(peer_features.columns)
    np.testing.assert_allclose(design.features, peer_features[columns].to_numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(design.t, peer.history["t"].to_numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(design.changepoints, peer.changepoints_t, rtol=0, atol=1e-12)
    assert design.y_scale == peer.y_scale

    problem = Problem.of(design, series.values, model.config.changepoint_prior_scale)
    p = peer.params
    order = [list(peer_features.columns).index(c) for c in columns]
    peer_theta = torch.tensor(np.r_[p["k"][0, 0], p["m"][0, 0], math.log(p["sigma_obs"][0, 0]), p["delta"][0],
                                    p["beta"][0][order]])
    peer_value = float(negative_log_posterior(problem, peer_theta))
    assert peer_value == pytest.approx(-float(p["lp__"][0, 0]), rel=1e-9)    # the same objective as Stan's

    fitted = model.fit_one(series, 1)
    ours = fitted.clone()
    ours[2] = ours[2].log()
    our_value = float(negative_log_posterior(problem, ours))
    assert our_value <= peer_value + 1e-9 * abs(peer_value)                  # at least as low as Stan's optimum

    mean, _ = model.forecast_one(series, 1, fitted, horizon, torch.zeros(0, dtype=torch.float64))
    peer_yhat = peer.predict(future_frame)["yhat"].to_numpy()
    return np.abs(mean.numpy() - peer_yhat[-horizon:]).max() / np.abs(series.values.numpy()).max()


def test_map_fit_matches_prophet_on_daily_data_with_holidays_and_a_regressor():
    ds, y, temperature = daily_case()
    horizon, n = 30, len(y) - 30
    holidays = pd.DataFrame({"holiday": "christmas", "ds": pd.to_datetime([h.split(":")[1] for h in XMAS]),
                             "lower_window": -1, "upper_window": 1})
    peer = peer_prophet(holidays=holidays)
    peer.add_regressor("temperature")
    peer.fit(pd.DataFrame({"ds": ds[:n], "y": y[:n], "temperature": temperature[:n]}), sig_figs=18)
    model = Prophet(ProphetConfig(holidays=XMAS, holiday_lower_window=-1, holiday_upper_window=1))
    series = Series("daily", torch.tensor(y[:n]), ds[:n].to_numpy(), torch.tensor(temperature[:n, None]),
                    torch.tensor(temperature[n:, None]))
    difference = compare_with_peer(peer, model, series, horizon,
                                   pd.DataFrame({"ds": ds, "temperature": temperature}))
    # Stan's L-BFGS stops short of the optimum of this kinked objective (|delta|), 0.2 higher in J
    # here: the forecasts then differ by some 1e-4 of max|y|; a wrong feature or prior shows as 1e-2.
    assert difference < 2e-3


def test_map_fit_matches_prophet_on_monthly_multiplicative_data():
    ds, y = monthly_case()
    horizon, n = 12, 132
    peer = peer_prophet(seasonality_mode="multiplicative")
    peer.fit(pd.DataFrame({"ds": ds[:n], "y": y[:n]}), sig_figs=18)
    model = Prophet(ProphetConfig(seasonality_mode="multiplicative"))
    series = Series("monthly", torch.tensor(y[:n]), ds[:n].to_numpy())
    difference = compare_with_peer(peer, model, series, horizon, pd.DataFrame({"ds": ds}))
    assert difference < 2e-3


@pytest.mark.parametrize("mode", ["additive", "multiplicative"])
def test_the_fit_satisfies_the_optimality_conditions(mode):
    """At a minimum of J the gradient of its smooth part vanishes in k, m, log sigma and beta, and
    in each delta_j it is -sign(delta_j) / tau, or within [-1/tau, 1/tau] where delta_j = 0
    (autograd on the objective, independent of the fit's algebra)."""
    ds, y = monthly_case()
    model = Prophet(ProphetConfig(seasonality_mode=mode))
    series = Series("monthly", torch.tensor(y), ds.to_numpy())
    design = model.design(series, 1)
    problem = Problem.of(design, series.values, model.config.changepoint_prior_scale)
    theta = model.fit_one(series, 1)
    theta[2] = theta[2].log()
    theta.requires_grad_(True)
    k, m, log_sigma, delta, beta = unpack(theta, problem.sizes)
    smooth = negative_log_posterior(problem, theta) - delta.abs().sum() / problem.tau
    gradient = torch.autograd.grad(smooth, theta)[0]
    _, _, _, delta_gradient, beta_gradient = unpack(gradient, problem.sizes)
    scale = 1 / problem.tau                                 # the size of the terms that balance
    assert gradient[:3].abs().max() < 1e-6 * scale and beta_gradient.abs().max() < 1e-6 * scale
    moving = delta.detach() != 0
    assert 0 < int(moving.sum()) < len(delta)               # both kinds of condition are tested
    torch.testing.assert_close(delta_gradient[moving], -delta.detach()[moving].sign() * scale, rtol=0,
                               atol=1e-6 * scale)
    assert (delta_gradient[~moving].abs() <= scale * (1 + 1e-9)).all()


# ---- forecasts ---------------------------------------------------------------------------------

def test_a_series_without_timestamps_gets_the_period_m_seasonality():
    m, n = 24, 24 * 20
    j = np.arange(n + 48)
    values = 50 + 0.01 * j + 5 * np.sin(2 * np.pi * j / m) + 2 * np.cos(6 * np.pi * j / m)
    model = Prophet()
    panel = single(values[:n], season=m)
    assert model.design(panel.series[0], m).names[:2] == ("season24_sin1", "season24_cos1")
    forecast = model.fit(panel).predict(panel, 48)
    # noiseless: the shrinkage of the priors is all that separates the fit from the truth
    torch.testing.assert_close(forecast.mean[0], torch.tensor(values[n:]), rtol=0, atol=2e-3 * values.max())
    assert model.design(panel.series[0], 4).names[:4] == ("season4_sin1", "season4_cos1", "season4_sin2",
                                                          "season4_cos2")
    assert model.design(panel.series[0], 1).names == ()


def test_quantiles_without_trend_changes_are_the_noise_quantiles():
    """With every fitted delta 0 the simulated changes vanish (Laplace scale 1e-8): the paths are
    yhat + N(0, sigma^2) y_scale, whose quantiles are known."""
    values = torch.tensor(10 + np.sin(np.arange(60)), dtype=torch.float64)
    series = Series("s", values)
    model = Prophet(ProphetConfig(uncertainty_samples=20000))
    design = model.design(series, 4, 5)
    sizes = (len(design.changepoints), len(design.names))
    parameters = torch.zeros(3 + sum(sizes), dtype=torch.float64)
    parameters[0], parameters[1], parameters[2] = 0.1, 0.8, 0.05          # k, m, sigma
    levels = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    mean, band = model.forecast_one(series, 4, parameters, 5, levels)
    z = torch.special.ndtri(levels)[:, None]
    expected = mean[None, :] + z * 0.05 * design.y_scale
    # the standard error of an empirical 5% quantile of 20000 normals is about 0.015 sigma
    torch.testing.assert_close(band, expected, rtol=0, atol=0.06 * 0.05 * design.y_scale)
    assert mean.tolist() == pytest.approx(((0.1 * torch.tensor(design.t_future) + 0.8) * design.y_scale).tolist())


def test_intervals_match_prophets_simulation_with_its_parameters():
    """Prophet's own sampler (numpy's generator) and ours (torch's), given Stan's parameters,
    draw from one distribution: their 10% and 90% quantiles agree within Monte Carlo error."""
    ds, y = monthly_case()
    horizon, samples = 72, 10000
    peer = peer_prophet(uncertainty_samples=samples, interval_width=0.8, seasonality_mode="multiplicative")
    peer.fit(pd.DataFrame({"ds": ds, "y": y}), sig_figs=18)
    np.random.seed(0)
    future = peer.predict(pd.DataFrame({"ds": pd.date_range(ds[-1], periods=horizon + 1, freq="MS")[1:]}))
    model = Prophet(ProphetConfig(seasonality_mode="multiplicative", uncertainty_samples=samples))
    series = Series("monthly", torch.tensor(y), ds.to_numpy())
    peer_features = peer.make_all_seasonality_features(peer.history)[0]
    order = [list(peer_features.columns).index(peer_column(name)) for name in model.design(series, 1).names]
    p = peer.params
    parameters = torch.tensor(np.r_[p["k"][0, 0], p["m"][0, 0], p["sigma_obs"][0, 0], p["delta"][0], p["beta"][0][order]])
    mean, band = model.forecast_one(series, 1, parameters, horizon, torch.tensor([0.1, 0.9], dtype=torch.float64))
    np.testing.assert_allclose(mean.numpy(), future["yhat"].to_numpy(), rtol=1e-6)
    width = future["yhat_upper"].to_numpy() - future["yhat_lower"].to_numpy()
    assert width[-1] > 2 * width[0]                           # the simulated trend changes dominate late
    for ours, theirs in ((band[0], future["yhat_lower"]), (band[1], future["yhat_upper"])):
        # each empirical 10% / 90% quantile of 10000 draws has a standard error near 1% of the
        # width; they differ by at most 2.2% here, and by more than 6% with the Laplace scale of
        # the simulated changes 1.5 times or sigma 1.3 times what it should be
        assert np.abs(ours.numpy() - theirs.to_numpy()).max() < 0.06 * width.max()


def test_intervals_widen_with_the_horizon_and_hold_the_point_forecast():
    ds, y = monthly_case()
    series = Series("monthly", torch.tensor(y), ds.to_numpy())
    model = Prophet(ProphetConfig(seasonality_mode="multiplicative"))
    levels = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    parameters = model.fit_one(series, 1)
    mean, band = model.forecast_one(series, 1, parameters, 72, levels)
    width = band[2] - band[0]
    assert width[-1] > 1.5 * width[0] > 0                  # simulated trend changes accumulate
    assert ((band[0] < mean) & (mean < band[2])).all()
    again = model.forecast_one(series, 1, parameters, 72, levels)[1]
    assert torch.equal(again, band)                         # seeded by the series: the same every call


# ---- bad input ---------------------------------------------------------------------------------

def test_bad_input_gives_clear_errors():
    with pytest.raises(DataError, match="needs at least"):
        Prophet().fit(single([1.0, 2.0, 3.0, 4.0], season=24))
    exog = torch.randn(40, 2, dtype=torch.float64)
    panel = Panel((Series("x", torch.arange(40, dtype=torch.float64), None, exog),), 1)
    model = Prophet().fit(panel)
    with pytest.raises(DataError, match="future values"):
        model.predict(panel, 3)
    short = Panel((Series("x", torch.arange(40, dtype=torch.float64), None, exog, exog[:2]),), 1)
    with pytest.raises(DataError, match="at least 3 steps; it has 2 steps"):
        model.predict(short, 3)
    assert model.predict(short, 2).mean.shape == (1, 2)
    stamps = np.array(["2020-01-01"] * 2 + ["2020-01-02"] * 28, dtype="datetime64[s]")
    with pytest.raises(DataError, match="timestamps must increase"):
        Prophet().fit(Panel((Series("x", torch.arange(30, dtype=torch.float64), stamps),), 1))
    with pytest.raises(DataError, match="no timestamps"):
        Prophet(ProphetConfig(holidays=XMAS)).fit(single(np.arange(30.0)))
    for bad in ("christmas:2020-13-25", "christmas", "christmas:2020-12-25:1:2", ":2020-12-25"):
        with pytest.raises(ConfigError, match="ProphetConfig.holidays"):
            ProphetConfig(holidays=(bad,))
    with pytest.raises(ConfigError, match="changepoint_range"):
        ProphetConfig(changepoint_range=0.0)
    with pytest.raises(ConfigError, match="weekly_seasonality"):
        ProphetConfig(weekly_seasonality=-1)
    with pytest.raises(ConfigError, match="changepoint_prior_scale"):
        ProphetConfig(changepoint_prior_scale=0.0)
