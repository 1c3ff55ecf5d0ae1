"""ARIMA: the batched filter against the reference Kalman filter, likelihoods and forecasts against
statsmodels' SARIMAX for the same parameters, fits, and the automatic order search."""

import math

import numpy as np
import pytest
import statsmodels.api as sm
import torch
from conftest import SHARED_DATA
from statsmodels.tsa.arima_process import ArmaProcess
from statsmodels.tsa.statespace.initialization import Initialization
from statsmodels.tsa.stattools import kpss

from seqlab.data.series import Panel, Series, single
from seqlab.errors import ConfigError, DataError
from seqlab.forecast.arima import (ARIMA, ArimaFit, ArimaOrder, ARIMAConfig, coefficients_to_pacf, difference,
                                   forecast_arima, pacf_to_coefficients)
from seqlab.forecast.arima_css import css_residuals_ref, css_sums_batch
from seqlab.forecast.arima_fit import ModelBatch, fit_arima_batch
from seqlab.forecast.arima_likelihood import (arma_autocovariances, arma_loglik, arma_loglik_batch, arma_loglik_ref,
                                              stationary_covariance_ref, stationary_first_column)
from seqlab.forecast.arima_search import SearchBounds, auto_arima, kpss_statistic, stepwise_search

TIMESERIES = SHARED_DATA / "timeseries"
needs_data = pytest.mark.skipif(not (TIMESERIES / "Nile.csv").is_file() or
                                not (TIMESERIES / "AirPassengers.csv").is_file(),
                                reason=f"Nile.csv or AirPassengers.csv absent from {TIMESERIES}")
NONE = np.zeros(0)


def load(name: str) -> np.ndarray:
    import pandas as pd
    return pd.read_csv(TIMESERIES / f"{name}.csv")["value"].to_numpy(dtype=float)


def model(order: ArimaOrder, ar=NONE, ma=NONE, sar=NONE, sma=NONE, mean=0.0, sigma2=1.0) -> ArimaFit:
    return ArimaFit(order, np.asarray(ar, float), np.asarray(ma, float), np.asarray(sar, float),
                    np.asarray(sma, float), mean, sigma2, 0.0, 0)


def statsmodels_exact_diffuse(y, order, seasonal_order, exog=None):
    """SARIMAX with the differences in the state, started exactly diffuse, the ARMA part stationary."""
    reference = sm.tsa.SARIMAX(y, exog=exog, order=order, seasonal_order=seasonal_order)
    k_diff = reference._k_states_diff
    initialization = Initialization(reference.k_states)
    initialization.set((0, k_diff), "diffuse")
    initialization.set((k_diff, reference.k_states), "stationary")
    reference.ssm.initialization = initialization
    reference.loglikelihood_burn = 0
    return reference


# ---- the batched filter -------------------------------------------------------------------------

RANDOM_ARMA = [(1, 1, 0, 0, 1), (2, 1, 0, 0, 1), (0, 2, 0, 0, 1), (1, 1, 1, 1, 4), (0, 1, 0, 1, 12), (2, 0, 1, 0, 3)]


@pytest.mark.parametrize("p, q, P, Q, m", RANDOM_ARMA)
def test_batched_filter_equals_reference_kalman_filter(p, q, P, Q, m):
    rng = np.random.default_rng(p + 3 * q + 7 * P + 11 * Q + m)
    order = ArimaOrder(p, 0, q, P, 0, Q, m)
    fit = model(order, *(pacf_to_coefficients(rng.uniform(-0.9, 0.9, (1, k)))[0] * sign
                         for k, sign in ((p, 1), (q, -1), (P, 1), (Q, -1))))
    ar, ma = fit.full_polynomials()
    w = rng.standard_normal(60)
    assert arma_loglik(w, ar, ma, 2.5) == pytest.approx(arma_loglik_ref(w, ar, ma, 2.5), rel=1e-11)


def test_padded_batch_equals_each_series_alone():
    rng = np.random.default_rng(0)
    lengths = [40, 25, 33]
    ar = np.array([[0.5, -0.2, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 0.0]])
    ma = np.array([[0.3, 0.0], [-0.6, 0.2], [0.4, 0.1]])
    w, observed = np.zeros((3, 40)), np.zeros((3, 40), bool)
    series = [rng.standard_normal(n) for n in lengths]
    for i, values in enumerate(series):
        w[i, 40 - len(values):], observed[i, 40 - len(values):] = values, True
    sums = arma_loglik_batch(w, observed, ar, ma)
    for i, values in enumerate(series):
        alone = arma_loglik_batch(values[None], np.ones((1, len(values)), bool), ar[i:i + 1], ma[i:i + 1])
        np.testing.assert_allclose([sums[0][i], sums[1][i]], [alone[0][0], alone[1][0]], rtol=1e-11)
        expected = arma_loglik_ref(values, ar[i], ma[i], 1.7)
        got = -0.5 * (len(values) * (math.log(2 * math.pi) + math.log(1.7)) + sums[1][i] + sums[0][i] / 1.7)
        assert got == pytest.approx(expected, rel=1e-11)


def test_stationary_first_column_equals_the_lyapunov_solution():
    ar = np.array([[0.5, -0.3, 0.2, 0.0], [0.999, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.3, 0.0, 0.0, 0.6]])
    ma = np.array([[0.4, -0.2, 0.0], [0.0, 0.0, 0.0], [0.5, 0.2, -0.3], [0.0, 0.0, -0.5]])
    column = stationary_first_column(ar, ma)
    for i in range(len(ar)):
        T = torch.zeros(4, 4, dtype=torch.float64)
        T[:, 0], T[:3, 1:] = torch.from_numpy(ar[i]), torch.eye(3, dtype=torch.float64)
        R = torch.cat([torch.ones(1, dtype=torch.float64), torch.from_numpy(ma[i])])[:, None]
        np.testing.assert_allclose(column[i], stationary_covariance_ref(T, R @ R.T)[:, 0].numpy(), rtol=1e-10)


def test_autocovariances_equal_statsmodels():
    ar, ma = np.array([[0.5, -0.3]]), np.array([[0.4, 0.2, -0.1]])
    gamma, psi = arma_autocovariances(ar, ma, 6)
    process = ArmaProcess(np.r_[1.0, -ar[0]], np.r_[1.0, ma[0]])
    np.testing.assert_allclose(gamma[0], process.acovf(7), rtol=1e-12)
    np.testing.assert_allclose(psi[0], process.arma2ma(7), rtol=1e-12)


def test_partial_autocorrelations_map_to_the_process_with_those_partials():
    partials = np.array([[0.7, -0.5, 0.3]])
    phi = pacf_to_coefficients(partials)[0]
    process = ArmaProcess(np.r_[1.0, -phi], [1.0])
    assert process.isstationary
    np.testing.assert_allclose(process.pacf(4)[1:], partials[0], rtol=1e-10)


# ---- parity with statsmodels --------------------------------------------------------------------

@needs_data
def test_nile_arima_111_loglik_equals_sarimax():
    # Initialisation: differenced beforehand, stationary ARMA start (SARIMAX simple_differencing=True).
    y = load("Nile")
    w = difference(y, ArimaOrder(1, 1, 1))
    for params in ([0.2, -0.8, 15000.0], [-0.5, 0.3, 21000.0]):
        reference = sm.tsa.SARIMAX(y, order=(1, 1, 1), simple_differencing=True).loglike(params)
        assert arma_loglik(w, np.array(params[:1]), np.array(params[1:2]), params[2]) == pytest.approx(reference,
                                                                                                     rel=1e-10)


@needs_data
def test_airline_model_loglik_equals_sarimax():
    y = np.log(load("AirPassengers"))
    order = ArimaOrder(0, 1, 1, 0, 1, 1, 12)
    ar, ma = model(order, ma=[-0.4], sma=[-0.55]).full_polynomials()
    reference = sm.tsa.SARIMAX(y, order=(0, 1, 1), seasonal_order=(0, 1, 1, 12),
                               simple_differencing=True).loglike([-0.4, -0.55, 0.0013])
    assert arma_loglik(difference(y, order), ar, ma, 0.0013) == pytest.approx(reference, rel=1e-10)
    # With the differences in the state, exactly diffuse: the same up to -1/2 log 2 pi per difference.
    diffuse = statsmodels_exact_diffuse(y, (0, 1, 1), (0, 1, 1, 12)).loglike([-0.4, -0.55, 0.0013])
    assert diffuse == pytest.approx(reference - 13 * 0.5 * math.log(2 * math.pi), rel=1e-10)


@needs_data
def test_mean_is_a_regression_with_arma_errors_as_sarimax_exog():
    y = load("Nile")
    reference = sm.tsa.SARIMAX(y, exog=np.ones(len(y)), order=(1, 0, 1)).loglike([900.0, 0.7, -0.2, 20000.0])
    assert arma_loglik(y - 900.0, np.array([0.7]), np.array([-0.2]), 20000.0) == pytest.approx(reference, rel=1e-10)


@needs_data
@pytest.mark.parametrize("case", ["nile", "airline", "drift", "seasonal_ar"])
def test_forecasts_and_variances_equal_sarimax_get_forecast(case):
    nile, air, horizon = load("Nile"), np.log(load("AirPassengers")), 24
    exog = exog_future = None
    if case == "nile":
        y, fit, params = nile, model(ArimaOrder(1, 1, 1), ar=[0.2], ma=[-0.8], sigma2=15000.0), [0.2, -0.8, 15000.0]
        orders = ((1, 1, 1), (0, 0, 0, 0))
    elif case == "airline":
        y, params = air, [-0.4, -0.55, 0.0013]
        fit, orders = model(ArimaOrder(0, 1, 1, 0, 1, 1, 12), ma=[-0.4], sma=[-0.55], sigma2=0.0013), \
            ((0, 1, 1), (0, 1, 1, 12))
    elif case == "drift":                 # the drift is SARIMAX's regression on t = 1..n
        y, params = nile, [-3.0, 0.3, 15000.0]
        fit, orders = model(ArimaOrder(1, 1, 0, constant=True), ar=[0.3], mean=-3.0, sigma2=15000.0), \
            ((1, 1, 0), (0, 0, 0, 0))
        exog, exog_future = np.arange(1.0, len(y) + 1), np.arange(len(y) + 1.0, len(y) + horizon + 1)
    else:
        y, params = air, [0.5, 0.3, -0.3, 0.002]
        fit, orders = model(ArimaOrder(1, 0, 0, 1, 1, 1, 12), ar=[0.5], sar=[0.3], sma=[-0.3], sigma2=0.002), \
            ((1, 0, 0), (1, 1, 1, 12))
    mean, variance = forecast_arima(y, fit, horizon)
    expected = statsmodels_exact_diffuse(y, *orders, exog=exog).smooth(params).get_forecast(horizon, exog=exog_future)
    np.testing.assert_allclose(mean.numpy(), expected.predicted_mean, rtol=1e-10)
    np.testing.assert_allclose(variance.numpy(), expected.var_pred_mean, rtol=1e-9)


@needs_data
@pytest.mark.parametrize("case", ["nile", "airline"])
def test_maximum_likelihood_reaches_statsmodels_optimum(case):
    if case == "nile":
        y, order, sm_orders = load("Nile"), ArimaOrder(1, 1, 1), ((1, 1, 1), (0, 0, 0, 0))
    else:
        y, order = np.log(load("AirPassengers")), ArimaOrder(0, 1, 1, 0, 1, 1, 12)
        sm_orders = ((0, 1, 1), (0, 1, 1, 12))
    fit = fit_arima_batch([y], [order])[0]
    reference = sm.tsa.SARIMAX(y, order=sm_orders[0], seasonal_order=sm_orders[1], simple_differencing=True).fit(
        disp=0, maxiter=500)
    assert fit.loglik >= reference.llf - 1e-6
    ours = np.r_[fit.ar, fit.ma, fit.seasonal_ma, fit.sigma2]
    np.testing.assert_allclose(ours, reference.params, rtol=2e-3)
    ar, ma = fit.full_polynomials()
    assert fit.loglik == pytest.approx(arma_loglik_ref(difference(y, order), ar, ma, fit.sigma2), rel=1e-10)


# ---- order selection -----------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::statsmodels.tools.sm_exceptions.InterpolationWarning")
def test_kpss_statistic_equals_statsmodels():
    x = np.cumsum(np.random.default_rng(0).standard_normal(120))
    expected = kpss(x, regression="c", nlags=int(3 * math.sqrt(120) / 13), result_object=False)[0]
    assert kpss_statistic(x) == pytest.approx(expected, rel=1e-12)


def test_stepwise_search_walks_to_the_best_order():
    target = (3, 1, 1, 0, True)

    def aicc(candidate):
        return sum(abs(a - b) for a, b in zip(candidate, target))

    search = stepwise_search(200, 12, True, True, SearchBounds())
    request, fitted = next(search), []
    try:
        while True:
            fitted += request
            request = search.send({candidate: aicc(candidate) for candidate in request})
    except StopIteration as stop:
        assert stop.value == target
    assert len(fitted) == len(set(fitted)) <= 94
    assert all(p + q + P + Q <= 5 for p, q, P, Q, _ in fitted)


def test_auto_arima_recovers_a_simulated_ar2():
    rng = np.random.default_rng(0)
    noise, x = rng.standard_normal(400), np.zeros(400)
    for t in range(2, 400):
        x[t] = 0.6 * x[t - 1] - 0.3 * x[t - 2] + noise[t]
    fit = auto_arima([x[100:] + 10.0], 1)[0]
    assert fit.order == ArimaOrder(2, 0, 0, constant=True)
    np.testing.assert_allclose(fit.ar, [0.6, -0.3], atol=0.1)


@needs_data
def test_auto_arima_on_air_passengers_matches_r():
    # R's auto.arima(AirPassengers) gives ARIMA(2,1,1)(0,1,0)[12]; on the logs, the airline model.
    raw, logs = auto_arima([load("AirPassengers"), np.log(load("AirPassengers"))], 12)
    assert raw.order == ArimaOrder(2, 1, 1, 0, 1, 0, 12)
    assert logs.order == ArimaOrder(0, 1, 1, 0, 1, 1, 12)


# ---- the forecaster ------------------------------------------------------------------------------

@needs_data
def test_forecaster_with_a_fixed_order_forecasts_its_fit():
    y = load("Nile")
    panel = single(y, id="nile")
    forecaster = ARIMA(ARIMAConfig(order=(1, 1, 1))).fit(panel)
    fit = ArimaFit.from_tensor(forecaster.fitted["nile"][1])
    assert fit.order == ArimaOrder(1, 1, 1)
    forecast = forecaster.predict(panel, 5, quantiles=(0.025, 0.975))
    mean, variance = forecast_arima(y, fit, 5)
    torch.testing.assert_close(forecast.mean[0], mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(forecast.quantiles[0.975][0], mean + 1.959963984540054 * variance.sqrt(),
                               rtol=1e-9, atol=0)


def test_forecaster_fits_a_panel_and_handles_flat_series():
    rng = np.random.default_rng(1)
    walk = torch.from_numpy(np.cumsum(rng.standard_normal(50)))
    panel = Panel((Series("walk", walk), Series("flat", torch.full((30,), 7.0, dtype=torch.float64))), season=1)
    forecast = ARIMA().fit(panel).predict(panel, 4, quantiles=(0.1, 0.9))
    assert torch.isfinite(forecast.mean).all() and torch.isfinite(forecast.quantiles[0.9]).all()
    torch.testing.assert_close(forecast.mean[1], torch.full((4,), 7.0, dtype=torch.float64), rtol=0, atol=1e-6)


def test_bad_inputs_name_the_series_or_field():
    with pytest.raises(DataError, match="'tiny'"):
        ARIMA(ARIMAConfig(order=(0, 1, 1), seasonal_order=(0, 1, 1))).fit(Panel((Series(
            "tiny", torch.arange(16, dtype=torch.float64)),), season=12))
    with pytest.raises(DataError, match="'three'"):
        ARIMA().fit(single([1.0, 2.0, 3.0], id="three"))
    with pytest.raises(ConfigError, match="max_p"):
        ARIMAConfig(max_p=-1)
    with pytest.raises(ConfigError, match="constant"):
        ARIMAConfig(order=(0, 2, 1), constant=True)
    with pytest.raises(ConfigError, match="fixed model"):
        ARIMAConfig(seasonal_order=(0, 1, 1))


# ---- conditional sum of squares ------------------------------------------------------------------

@pytest.mark.parametrize("p, q, P, Q, m", RANDOM_ARMA)
def test_css_batch_equals_the_plain_loop_and_scipy_lfilter(p, q, P, Q, m):
    from scipy.signal import lfilter
    rng = np.random.default_rng(5 * p + q + 3 * P + 7 * Q + m)
    order = ArimaOrder(p, 0, q, P, 0, Q, m)
    lengths, orders_ar, orders_ma, series = [50, 37], [], [], []
    for _ in lengths:
        fit = model(order, *(pacf_to_coefficients(rng.uniform(-0.9, 0.9, (1, k)))[0] * sign
                             for k, sign in ((p, 1), (q, -1), (P, 1), (Q, -1))))
        ar, ma = fit.full_polynomials()
        orders_ar.append(ar)
        orders_ma.append(ma)
    w, observed = np.zeros((2, 50)), np.zeros((2, 50), bool)
    ar_batch, ma_batch = np.zeros((2, max(order.n_ar, 1))), np.zeros((2, max(order.n_ma, 1)))
    for i, n in enumerate(lengths):
        series.append(rng.standard_normal(n))
        w[i, 50 - n:], observed[i, 50 - n:] = series[i], True
        ar_batch[i, :order.n_ar], ma_batch[i, :order.n_ma] = orders_ar[i], orders_ma[i]
    sums, counts = css_sums_batch(w, observed, ar_batch, ma_batch, np.full(2, order.n_ar))
    for i, values in enumerate(series):
        residuals = css_residuals_ref(values, orders_ar[i], orders_ma[i])
        # independent: e = theta(L)^-1 phi(L) w, run from rest at t = p'
        u = lfilter(np.r_[1.0, -orders_ar[i]], [1.0], values)[order.n_ar:]
        np.testing.assert_allclose(residuals, lfilter([1.0], np.r_[1.0, orders_ma[i]], u), rtol=1e-10, atol=1e-12)
        assert counts[i] == len(residuals)
        assert sums[i] == pytest.approx(residuals @ residuals, rel=1e-12)


def test_css_fit_of_an_ar1_with_mean_is_least_squares():
    rng = np.random.default_rng(3)
    x = np.zeros(300)
    for t in range(1, 300):
        x[t] = 0.5 * x[t - 1] + rng.standard_normal()
    y = x + 4.0
    fit = fit_arima_batch([y], [ArimaOrder(1, 0, 0, constant=True)], method="css")[0]
    design = np.stack([np.ones(299), y[:-1]], axis=1)
    (intercept, slope), residual = np.linalg.lstsq(design, y[1:], rcond=None)[:2]
    np.testing.assert_allclose([fit.ar[0], fit.mean], [slope, intercept / (1 - slope)], rtol=1e-5)
    assert fit.sigma2 == pytest.approx(residual[0] / 299, rel=1e-8)


def test_partial_autocorrelations_round_trip():
    partials = np.random.default_rng(2).uniform(-0.95, 0.95, (5, 4))
    np.testing.assert_allclose(coefficients_to_pacf(pacf_to_coefficients(partials)), partials, rtol=1e-10)


def test_approximate_search_refits_the_chosen_model_exactly():
    rng = np.random.default_rng(4)
    noise, x = rng.standard_normal(460), np.zeros(460)
    for t in range(4, 460):
        x[t] = 0.5 * x[t - 1] + 0.6 * x[t - 4] - 0.3 * x[t - 5] + noise[t]
    fit = auto_arima([x[60:]], 4, approximation=True)[0]
    assert (fit.order.p, fit.order.P, fit.order.D) == (1, 1, 0)
    ar, ma = fit.full_polynomials()
    w = difference(x[60:], fit.order) - fit.mean
    assert fit.loglik == pytest.approx(arma_loglik_ref(w, ar, ma, fit.sigma2), rel=1e-10)
    exact = fit_arima_batch([x[60:]], [fit.order])[0]             # the refit reaches the exact optimum
    assert fit.loglik >= exact.loglik - 1e-6


@needs_data
@pytest.mark.parametrize("case", ["nile", "airline", "drift", "seasonal_ar"])
def test_fast_forecasts_equal_the_reference(case):
    from seqlab.forecast.arima_forecast import forecast_arima_fast
    nile, air = load("Nile"), np.log(load("AirPassengers"))
    y, fit = {"nile": (nile, model(ArimaOrder(1, 1, 1), ar=[0.2], ma=[-0.8], sigma2=15000.0)),
              "airline": (air, model(ArimaOrder(0, 1, 1, 0, 1, 1, 12), ma=[-0.4], sma=[-0.55], sigma2=0.0013)),
              "drift": (nile, model(ArimaOrder(1, 1, 0, constant=True), ar=[0.3], mean=-3.0, sigma2=15000.0)),
              "seasonal_ar": (air, model(ArimaOrder(1, 0, 0, 1, 1, 1, 12), ar=[0.5], sar=[0.3], sma=[-0.3],
                                         sigma2=0.002))}[case]
    expected, got = forecast_arima(y, fit, 30), forecast_arima_fast(y, fit, 30)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-10, atol=0)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-9, atol=0)


# ---- regression with ARIMA errors ------------------------------------------------------------------

def regression_data(n: int = 160, horizon: int = 12):
    rng = np.random.default_rng(7)
    exog = np.stack([np.sin(np.arange(n + horizon) / 5.0), rng.standard_normal(n + horizon).cumsum() / 5], axis=1)
    errors = np.cumsum(rng.standard_normal(n + horizon) * 0.5)
    y = 10.0 + exog @ np.array([2.0, -1.5]) + errors
    return y, exog


@pytest.mark.parametrize("order, params", [((1, 1, 1), [1.8, -1.2, 0.3, -0.4, 0.3]),
                                           ((2, 0, 0), [1.5, -1.0, 0.6, 0.2, 1.1])])
def test_regression_loglik_equals_sarimax_exog(order, params):
    # Initialisation: differenced beforehand (y and the regressors), stationary ARMA start:
    # SARIMAX(exog=..., simple_differencing=True); no constant.
    y, exog = regression_data()
    y, exog = y[:160], exog[:160]
    o = ArimaOrder(order[0], order[1], order[2])
    fit = ArimaFit(o, np.array(params[2:2 + o.p]), np.array(params[2 + o.p:2 + o.p + o.q]), NONE, NONE, 0.0,
                   params[-1], 0.0, 0, np.array(params[:2]))
    from seqlab.forecast.arima_fit import difference_regressors
    batch = ModelBatch.build([difference(y, o)], [o], [difference_regressors(exog, o)])
    x = batch.start_point([fit])
    sum_squares, sum_log_f = batch.sums(x, np.arange(1))
    count, scale = batch.count[0], batch.scale[0]
    ours = -0.5 * (count * (math.log(2 * math.pi) + math.log(params[-1])) + sum_log_f[0]
                   + sum_squares[0] * scale ** 2 / params[-1])
    reference = sm.tsa.SARIMAX(y, exog=exog, order=order, simple_differencing=True).loglike(params)
    assert ours == pytest.approx(reference, rel=1e-6)


def test_regression_fit_and_forecasts_equal_sarimax():
    y, exog = regression_data()
    horizon = 12
    series = Series("sales", torch.from_numpy(y[:160]), exog=torch.from_numpy(exog[:160]),
                    future_exog=torch.from_numpy(exog[160:]))
    forecaster = ARIMA(ARIMAConfig(order=(1, 1, 0))).fit(Panel((series,)))
    fit = ArimaFit.from_tensor(forecaster.fitted["sales"][1])
    reference = sm.tsa.SARIMAX(y[:160], exog=exog[:160], order=(1, 1, 0), simple_differencing=True).fit(
        disp=0, maxiter=500)
    assert fit.loglik >= reference.llf - 1e-6
    np.testing.assert_allclose(np.r_[fit.exog_coefficients, fit.ar, fit.sigma2], reference.params, rtol=2e-3)
    forecast = forecaster.predict(Panel((series,)), horizon)
    params = np.r_[fit.exog_coefficients, fit.ar, fit.sigma2]
    expected = statsmodels_exact_diffuse(y[:160], (1, 1, 0), (0, 0, 0, 0), exog=exog[:160]).smooth(params) \
        .get_forecast(horizon, exog=exog[160:])
    np.testing.assert_allclose(forecast.mean[0].numpy(), expected.predicted_mean, rtol=1e-9)


def test_regression_needs_future_values_and_refits_on_new_regressors():
    y, exog = regression_data()
    series = Series("s", torch.from_numpy(y[:160]), exog=torch.from_numpy(exog[:160]))
    forecaster = ARIMA(ARIMAConfig(order=(1, 1, 0))).fit(Panel((series,)))
    with pytest.raises(DataError, match="future_exog"):
        forecaster.predict(Panel((series,)), 4)
    short = Series("s", series.values, exog=series.exog, future_exog=torch.from_numpy(exog[160:163]))
    with pytest.raises(DataError, match="3 future values"):
        forecaster.predict(Panel((short,)), 4)
    other = Series("s", series.values, exog=series.exog * 2, future_exog=torch.from_numpy(exog[160:] * 2))
    again = Series("s", series.values, exog=series.exog, future_exog=torch.from_numpy(exog[160:]))
    scaled, same = forecaster.predict(Panel((other,)), 4), forecaster.predict(Panel((again,)), 4)
    torch.testing.assert_close(scaled.mean, same.mean, rtol=1e-5, atol=1e-6)   # beta halves: the fit changed


def test_automatic_search_with_regressors_recovers_their_coefficients():
    y, exog = regression_data(n=300)
    series = Series("s", torch.from_numpy(y[:300]), exog=torch.from_numpy(exog[:300]),
                    future_exog=torch.from_numpy(exog[300:]))
    forecaster = ARIMA().fit(Panel((series,)))
    fit = ArimaFit.from_tensor(forecaster.fitted["s"][1])
    assert fit.order.d == 1                                       # the errors are a random walk
    np.testing.assert_allclose(fit.exog_coefficients, [2.0, -1.5], atol=0.15)
    assert torch.isfinite(forecaster.predict(Panel((series,)), 12).mean).all()
