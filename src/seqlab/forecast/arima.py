"""ARIMA and seasonal ARIMA: the exact Gaussian likelihood by the Kalman filter, maximum-likelihood
fits with stationarity and invertibility enforced, and forecasts with Gaussian intervals.

The model SARIMA(p,d,q)(P,D,Q)_m of a series y (Box and Jenkins; R's ``arima``, statsmodels'
``SARIMAX`` use the same sign conventions):

    phi(L) Phi(L^m) (w_t - mu) = theta(L) Theta(L^m) e_t,   w_t = (1 - L)^d (1 - L^m)^D y_t,
    e_t ~ N(0, sigma^2),  phi(L) = 1 - phi_1 L - ..,  theta(L) = 1 + theta_1 L + ..

with a constant mu only when d + D <= 1: the mean of y for d + D = 0, its drift otherwise (R's
``include.drift``: y minus mu t for d = 1, minus mu t / m for D = 1, is an ARIMA without constant).

**Likelihood** (``seqlab.forecast.arima_likelihood``): the exact Gaussian likelihood of the
differenced series by the Kalman filter on Harvey's state-space form, stationary start (statsmodels'
``SARIMAX(..., simple_differencing=True)``), batched in Chandrasekhar form.

**Regressors.** With exogenous regressors x_t (K,) the model is a regression with SARIMA errors
(R's ``Arima(xreg = )``, statsmodels' ``SARIMAX(exog = )``): y_t = x_t' beta + n_t, n_t the SARIMA
above. Its likelihood is that of the differenced (1 - L)^d (1 - L^m)^D (y - x beta), an ARMA, so beta
is estimated jointly with the ARMA coefficients and the mean, started from least squares on the
differenced series; forecasts add future_x' beta to the forecast of n.

**Fit** (``arima_fit.fit_arima_batch``). Maximum likelihood over unconstrained x: each
polynomial's coefficients are the Durbin-Levinson map of partial autocorrelations tanh(x) (Jones
1980; Monahan 1984), so the AR parts are stationary and the MA parts invertible (theta = -that
map), and the mean mu; a fit can therefore never be non-stationary, and a failed one (a
non-finite likelihood) raises ``DataError`` naming the series.

**Forecasts.** With the differences in the state (the first d + mD states the past values of y,
diffuse; DK section 5.2) the Kalman filter over y gives the h-step means and variances (as
statsmodels' ``SARIMAX(..., simple_differencing=False)`` with an exact diffuse start); intervals
are Gaussian. ``forecast_arima`` here is that spec; the forecaster uses
``arima_forecast.forecast_arima_fast``, the same numbers from the stationary filter of the
differenced series (no r^2 x r^2 Lyapunov system), tested against it.

Estimation is in ``seqlab.forecast.arima_fit`` (maximum likelihood, CSS), automatic order
selection (Hyndman and Khandakar 2008) in ``seqlab.forecast.arima_search``; both build on this module.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from seqlab.data.series import Series
from seqlab.errors import ConfigError, DataError
from seqlab.forecast.base import LocalForecaster, gaussian_quantiles
from seqlab.forecast.arima_likelihood import arma_state_space
from seqlab.forecast.kalman import kalman_filter, state_forecast
from seqlab.registry import register


@dataclass(frozen=True)
class ArimaOrder:
    """The orders of SARIMA(p,d,q)(P,D,Q)_m and whether it has a constant (mean or drift)."""

    p: int = 0
    d: int = 0
    q: int = 0
    P: int = 0
    D: int = 0
    Q: int = 0
    m: int = 1
    constant: bool = False

    def __post_init__(self) -> None:
        for name in ("p", "d", "q", "P", "D", "Q"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ARIMA order {name} must be >= 0, got {getattr(self, name)}")
        if self.m < 1:
            raise ConfigError(f"the seasonal period must be >= 1, got {self.m}")
        if self.m == 1 and self.P + self.D + self.Q > 0:
            raise ConfigError(f"seasonal orders (P, D, Q) = ({self.P}, {self.D}, {self.Q}) need a seasonal period > 1")
        if self.constant and self.d + self.D > 1:
            raise ConfigError(f"a constant needs d + D <= 1 (a mean or a drift), got d = {self.d}, D = {self.D}")

    @property
    def n_ar(self) -> int:
        return self.p + self.m * self.P

    @property
    def n_ma(self) -> int:
        return self.q + self.m * self.Q

    @property
    def n_diff(self) -> int:
        return self.d + self.m * self.D

    @property
    def state_dim(self) -> int:
        return max(self.n_ar, self.n_ma + 1)

    @property
    def n_coefficients(self) -> int:
        return self.p + self.q + self.P + self.Q + int(self.constant)

    def min_length(self) -> int:
        """The fewest observations of y a fit needs: the differences, then enough values for the
        lags and every coefficient plus sigma^2 with AICc defined."""
        return self.n_diff + max(self.n_ar + 1, self.n_coefficients + 3)

    def __str__(self) -> str:
        text = f"ARIMA({self.p},{self.d},{self.q})"
        if self.m > 1:
            text += f"({self.P},{self.D},{self.Q})[{self.m}]"
        return text + (" with " + ("mean" if self.d + self.D == 0 else "drift") if self.constant else "")


@dataclass(frozen=True)
class ArimaFit:
    """A fitted SARIMA model.

    Attributes:
        order: the orders.
        ar, ma, seasonal_ar, seasonal_ma: (p,), (q,), (P,), (Q,) coefficients.
        mean: mu, the mean of the differenced series (0 without a constant).
        sigma2: the innovation variance.
        loglik: the exact log-likelihood of the n_used differenced values.
        n_used: n - d - mD.
        exog_coefficients: (K,) beta of the regressors (empty without).
    """

    order: ArimaOrder
    ar: np.ndarray
    ma: np.ndarray
    seasonal_ar: np.ndarray
    seasonal_ma: np.ndarray
    mean: float
    sigma2: float
    loglik: float
    n_used: int
    exog_coefficients: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def n_parameters(self) -> int:
        return self.order.n_coefficients + len(self.exog_coefficients) + 1

    @property
    def aic(self) -> float:
        return -2 * self.loglik + 2 * self.n_parameters

    @property
    def aicc(self) -> float:
        k = self.n_parameters
        return self.aic + 2 * k * (k + 1) / (self.n_used - k - 1) if self.n_used - k - 1 > 0 else math.inf

    def full_polynomials(self) -> tuple[np.ndarray, np.ndarray]:
        """(p + mP,) AR and (q + mQ,) MA coefficients of the products phi(L) Phi(L^m), theta(L) Theta(L^m)."""
        o = self.order
        ar = seasonal_product(self.ar[None], self.seasonal_ar[None], o.m, -1.0)[0]
        ma = seasonal_product(self.ma[None], self.seasonal_ma[None], o.m, 1.0)[0]
        return ar, ma

    def to_tensor(self, exog_digest: tuple[int, int] = (0, 0)) -> Tensor:
        """(17 + p + q + P + Q + K,) float64: the orders, the coefficients, mu, sigma^2, log L,
        n_used, K, beta, and two 32-bit halves of a digest of the regressors fitted on."""
        o = self.order
        head = [o.p, o.d, o.q, o.P, o.D, o.Q, o.m, float(o.constant)]
        tail = [self.mean, self.sigma2, self.loglik, self.n_used, len(self.exog_coefficients),
                *self.exog_coefficients, *exog_digest]
        return torch.tensor(head + [*self.ar, *self.ma, *self.seasonal_ar, *self.seasonal_ma] + tail,
                            dtype=torch.float64)

    @staticmethod
    def from_tensor(parameters: Tensor) -> ArimaFit:
        values = parameters.tolist()
        p, d, q, P, D, Q, m = (int(v) for v in values[:7])
        order = ArimaOrder(p, d, q, P, D, Q, m, bool(values[7]))
        bounds = np.cumsum([8, p, q, P, Q])
        parts = [np.array(values[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        mean, sigma2, loglik, n_used = values[bounds[-1]:bounds[-1] + 4]
        K = int(values[bounds[-1] + 4]) if len(values) > bounds[-1] + 4 else 0       # absent: saved before K
        beta = np.array(values[bounds[-1] + 5:bounds[-1] + 5 + K])
        return ArimaFit(order, *parts, mean, sigma2, loglik, int(n_used), beta)

    @staticmethod
    def exog_digest_of(parameters: Tensor) -> tuple[int, int]:
        """The regressors' digest ``to_tensor`` stored ((0, 0) for none)."""
        return int(parameters[-2]), int(parameters[-1])


# ---- polynomials ---------------------------------------------------------------------------------

def pacf_to_coefficients(partials: np.ndarray) -> np.ndarray:
    """(N, k) AR coefficients of a stationary phi(L) = 1 - sum phi_j L^j from (N, k) partial
    autocorrelations in (-1, 1), by the Durbin-Levinson recursion
    phi^(j)_i = phi^(j-1)_i - r_j phi^(j-1)_{j-i}, phi^(j)_j = r_j (Monahan 1984)."""
    coefficients = np.zeros_like(partials)
    for j in range(partials.shape[1]):
        r = partials[:, j:j + 1]
        coefficients[:, :j] = coefficients[:, :j] - r * coefficients[:, :j][:, ::-1]
        coefficients[:, j] = r[:, 0]
    return coefficients


def coefficients_to_pacf(coefficients: np.ndarray) -> np.ndarray:
    """(N, k) partial autocorrelations of (N, k) stationary AR coefficients: the inverse of
    ``pacf_to_coefficients``, by the step-down recursion r_j = phi^(j)_j,
    phi^(j-1)_i = (phi^(j)_i + r_j phi^(j)_{j-i}) / (1 - r_j^2)."""
    current = np.array(coefficients, dtype=np.float64)
    partials = np.zeros_like(current)
    for j in range(current.shape[1], 0, -1):
        r = current[:, j - 1:j]
        partials[:, j - 1] = r[:, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            current = (current[:, :j - 1] + r * current[:, :j - 1][:, ::-1]) / (1 - r * r)
    return partials


def seasonal_product(nonseasonal: np.ndarray, seasonal: np.ndarray, m: int, sign: float) -> np.ndarray:
    """(N, k + mK) coefficients c of (1 + sign sum a_i L^i)(1 + sign sum b_j L^{mj}) = 1 + sign sum c L^i,
    from (N, k) a and (N, K) b: sign -1 for AR polynomials, +1 for MA ones."""
    count, k, K = nonseasonal.shape[0], nonseasonal.shape[1], seasonal.shape[1]
    inner = np.concatenate([np.ones((count, 1)), sign * nonseasonal], axis=1)       # (N, k + 1)
    product = np.zeros((count, k + m * K + 1))
    product[:, :k + 1] = inner
    for j in range(K):
        product[:, m * (j + 1):m * (j + 1) + k + 1] += sign * seasonal[:, j:j + 1] * inner
    return sign * product[:, 1:]


def differencing_polynomial(order: ArimaOrder) -> np.ndarray:
    """(d + mD + 1,) coefficients delta of (1 - L)^d (1 - L^m)^D, delta_0 = 1."""
    delta = np.array([1.0])
    for _ in range(order.d):
        delta = np.convolve(delta, [1.0, -1.0])
    for _ in range(order.D):
        delta = np.convolve(delta, np.r_[1.0, np.zeros(order.m - 1), -1.0])
    return delta


def difference(values: np.ndarray, order: ArimaOrder) -> np.ndarray:
    """(n - d - mD,) w = (1 - L)^d (1 - L^m)^D y."""
    w = values
    for _ in range(order.d):
        w = w[1:] - w[:-1]
    for _ in range(order.D):
        w = w[order.m:] - w[:-order.m]
    return w


def deterministic_trend(order: ArimaOrder, mean: float, times: np.ndarray) -> np.ndarray:
    """x_t with (1 - L)^d (1 - L^m)^D x_t = mu at times t = 1, 2, ..: mu, mu t or mu t / m."""
    if order.d + order.D == 0:
        return np.full(len(times), mean)
    return mean * times / (1.0 if order.d == 1 else order.m)


def forecast_arima(values: np.ndarray, fit: ArimaFit, horizon: int, exog: np.ndarray | None = None,
                   future_exog: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
    """(H,) means and (H,) variances of y_{n+1..n+H}, from the filter with the differences in the
    state (exact diffuse start) over y less its deterministic trend and its regression x beta
    (``exog`` (n, K) and ``future_exog`` (>= H, K) when the fit has K > 0 coefficients)."""
    o, n = fit.order, len(values)
    trend = deterministic_trend(o, fit.mean, np.arange(1.0, n + horizon + 1)) if o.constant else np.zeros(n + horizon)
    if len(fit.exog_coefficients):
        trend = trend + np.concatenate([exog, future_exog[:horizon]]) @ fit.exog_coefficients
    ar, ma = fit.full_polynomials()
    model = arma_state_space(ar, ma, fit.sigma2, differencing_polynomial(o))
    mean, variance, _ = state_forecast(model, kalman_filter(model, torch.from_numpy(values - trend[:n])), horizon)
    return mean + torch.from_numpy(trend[n:]), variance


def exog_digest(exog: Tensor | None) -> tuple[int, int]:
    """Two 32-bit halves of the SHA-256 of a series' regressors ((0, 0) without), kept with its fit
    so that a forecast with other regressors refits (the base class digests only the values)."""
    if exog is None:
        return 0, 0
    digest = hashlib.sha256(exog.double().contiguous().numpy().tobytes()).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:8], "little")


# ---- the forecaster -------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class ARIMAConfig:
    """A fixed SARIMA model, or the automatic search (``order=None``).

    Attributes:
        order: (p, d, q) of a fixed model; None chooses every series' model by the stepwise search.
        seasonal_order: (P, D, Q) of a fixed model, its period the panel's season (which must then
            be > 1 unless this is (0, 0, 0)).
        constant: whether a fixed model has a constant: a mean (d + D = 0) or a drift (d + D = 1).
        seasonal: whether the search considers seasonal models (when the season is > 1).
        allow_constant: whether the search considers a mean or drift (R's allowmean, allowdrift).
        max_p, max_q, max_P, max_Q: the search's largest orders (R's defaults).
        max_order: the search's largest p + q + P + Q.
        max_d, max_D: the most differences and seasonal differences the tests may choose.
        max_models: the most models one series' search fits.
        max_iterations: BFGS iterations per fit.
        approximation: whether the search ranks candidates by conditional sum of squares and refits
            only the chosen one by exact likelihood; None: R's rule, for series longer than 150
            or seasonal periods above 12.
    """

    order: tuple[int, int, int] | None = None
    seasonal_order: tuple[int, int, int] = (0, 0, 0)
    constant: bool = False
    seasonal: bool = True
    allow_constant: bool = True
    max_p: int = 5
    max_q: int = 5
    max_P: int = 2
    max_Q: int = 2
    max_order: int = 5
    max_d: int = 2
    max_D: int = 1
    max_models: int = 94
    max_iterations: int = 200
    approximation: bool | None = None

    def __post_init__(self) -> None:
        for name in ("max_p", "max_q", "max_P", "max_Q", "max_order", "max_d", "max_D"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ARIMAConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_models", "max_iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ARIMAConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.order is not None:
            if len(self.order) != 3 or len(self.seasonal_order) != 3:
                raise ConfigError(f"ARIMAConfig: order and seasonal_order are (p, d, q) and (P, D, Q), got "
                                  f"{self.order} and {self.seasonal_order}")
            self.fixed_order(2 if any(self.seasonal_order) else 1)            # raises on a bad order
        elif any(self.seasonal_order) or self.constant:
            raise ConfigError("ARIMAConfig: seasonal_order and constant describe a fixed model; give order too")

    def fixed_order(self, season: int) -> ArimaOrder:
        p, d, q = self.order
        P, D, Q = self.seasonal_order
        return ArimaOrder(p, d, q, P, D, Q, season if any(self.seasonal_order) else 1, self.constant)


@register("arima", task="forecast", config=ARIMAConfig, trains="fit", in_default_compare=False)
class ARIMA(LocalForecaster):
    """SARIMA forecasts: a fixed order or Hyndman-Khandakar's automatic search, fitted by exact
    maximum likelihood; Gaussian intervals from the state-space forecast variances.

    Parameters of a series: ``ArimaFit.to_tensor()`` (orders, coefficients, mu, sigma^2, ...).
    ``fit`` fits all series of a panel together (one batch per round of the search). A series
    with regressors (``Series.exog``) is a regression with SARIMA errors, forecast from its
    ``Series.future_exog``; its parameters keep a digest of the regressors, and a forecast with
    other regressors refits.
    """

    def __init__(self, config: ARIMAConfig | None = None) -> None:
        super().__init__()
        self.config = config or ARIMAConfig()

    def min_length(self, season: int) -> int:
        if self.config.order is None:
            return 5
        return self.config.fixed_order(season).min_length()

    def fit_arrays(self, series: list[np.ndarray], season: int,
                   exog: list[np.ndarray | None] | None = None) -> list[ArimaFit]:
        """Fits of (n_i,) series with seasonal period ``season`` and regressors (n_i, K_i) or None
        (no length checks)."""
        from seqlab.forecast.arima_fit import fit_arima_batch        # they import this module
        from seqlab.forecast.arima_search import SearchBounds, auto_arima

        config = self.config
        if config.order is not None:
            return fit_arima_batch(series, [config.fixed_order(season)] * len(series), config.max_iterations,
                                   exog=exog)
        return auto_arima(series, season, seasonal=config.seasonal, allow_constant=config.allow_constant,
                          max_d=config.max_d, max_D=config.max_D,
                          bounds=SearchBounds(max_p=config.max_p, max_q=config.max_q, max_P=config.max_P,
                                              max_Q=config.max_Q, max_order=config.max_order,
                                              max_models=config.max_models),
                          max_iterations=config.max_iterations, exog=exog, approximation=config.approximation)

    def fit_many(self, series: Sequence[Series], season: int) -> list[Tensor]:
        """(P_i,) parameters of each series, fitted together; a series with ``exog`` is a regression
        on it with SARIMA errors.

        Raises:
            DataError: a series shorter than ``min_length`` (plus its number of regressors), or
                whose fit failed, named.
        """
        needed = self.min_length(season)
        for one in series:
            width = 0 if one.exog is None else one.exog.shape[1]
            if len(one) < needed + width:
                raise DataError(f"series {one.id!r} has {len(one)} values; ARIMA with seasonal period {season} "
                                f"and {width} regressors needs at least {needed + width}")
        fits = self.fit_arrays([one.values.double().numpy() for one in series], season,
                               [None if one.exog is None else one.exog.double().numpy() for one in series])
        for one, fit in zip(series, fits):
            if not (math.isfinite(fit.loglik) and math.isfinite(fit.sigma2) and fit.sigma2 >= 0):
                raise DataError(f"ARIMA could not fit series {one.id!r} ({fit.order}): the likelihood is not finite")
        return [fit.to_tensor(exog_digest(one.exog)) for one, fit in zip(series, fits)]

    def fit_one(self, series: Series, season: int) -> Tensor:
        return self.fit_many([series], season)[0]

    def fit_series(self, values: Tensor, season: int) -> Tensor:
        return self.fit_arrays([values.double().numpy()], season)[0].to_tensor()

    def forecast_series(self, values: Tensor, season: int, parameters: Tensor, horizon: int,
                        quantiles: Tensor) -> tuple[Tensor, Tensor]:
        from seqlab.forecast.arima_forecast import forecast_arima_fast

        fit = ArimaFit.from_tensor(parameters)
        mean, variance = forecast_arima_fast(values.double().numpy(), fit, horizon)
        return mean, gaussian_quantiles(mean, variance.clamp_min(0).sqrt(), quantiles)

    def forecast_one(self, series: Series, season: int, parameters: Tensor, horizon: int,
                     quantiles: Tensor) -> tuple[Tensor, Tensor]:
        """Forecasts of one series; with regressors, from its ``future_exog``, refitting first when
        the regressors are not those the parameters were fitted with.

        Raises:
            DataError: regressors without future values, fewer than ``horizon`` of them, or of
                another width than the fit's.
        """
        fit = ArimaFit.from_tensor(parameters)
        if series.exog is None:
            if len(fit.exog_coefficients):
                raise DataError(f"series {series.id!r} has no regressors, but ARIMA was fitted to it with "
                                f"{len(fit.exog_coefficients)}; forecast it with the same exog")
            return self.forecast_series(series.values, season, parameters, horizon, quantiles)
        if ArimaFit.exog_digest_of(parameters) != exog_digest(series.exog):
            parameters = self.fit_many([series], season)[0]
            fit = ArimaFit.from_tensor(parameters)
        future = series.future_exog
        if future is None or len(future) < horizon:
            have = "none" if future is None else str(len(future))
            raise DataError(f"series {series.id!r} has regressors but {have} future values of them for a horizon of "
                            f"{horizon}; give future_exog with at least {horizon} rows")
        from seqlab.forecast.arima_forecast import forecast_arima_fast

        mean, variance = forecast_arima_fast(series.values.double().numpy(), fit, horizon,
                                             series.exog.double().numpy(), future.double().numpy())
        return mean, gaussian_quantiles(mean, variance.clamp_min(0).sqrt(), quantiles)
