"""ARIMA and seasonal ARIMA: the exact Gaussian likelihood by the Kalman filter, maximum-likelihood
fits with stationarity and invertibility enforced, and forecasts with Gaussian intervals.

The model SARIMA(p,d,q)(P,D,Q)_m of a series y (Box and Jenkins; R's ``arima``, statsmodels'
``SARIMAX`` use the same sign conventions):

    phi(L) Phi(L^m) (w_t - mu) = theta(L) Theta(L^m) e_t,   w_t = (1 - L)^d (1 - L^m)^D y_t,
    e_t ~ N(0, sigma^2),  phi(L) = 1 - phi_1 L - ..,  theta(L) = 1 + theta_1 L + ..

with a constant mu only when d + D <= 1: the mean of y for d + D = 0, its drift otherwise (R's
``include.drift``: y minus mu t for d = 1, minus mu t / m for D = 1, is an ARIMA without constant).

**Likelihood.** Differencing is done beforehand: the likelihood is that of the n - d - mD
differenced values w, an ARMA(p + mP, q + mQ) in Harvey's state-space form (Harvey 1989; DK 2012
section 3.4): state dimension r = max(p', q' + 1), Z = e_1, H = 0, T the companion matrix with
the AR coefficients in its first column, R = (1, theta'_1, .., theta'_{r-1}), and the state
started from its stationary distribution (mean 0, covariance solving P = T P T' + R R'). This is
statsmodels' ``SARIMAX(..., simple_differencing=True)``, and equals the exact-diffuse likelihood
with the differences in the state up to the -1/2 log 2 pi terms of the diffuse steps. sigma^2 is
concentrated out: with P, F computed for sigma^2 = 1, sigma^2 = sum(v_t^2 / F_t) / n' and
log L = -n'/2 (log 2 pi + 1 + log sigma^2) - 1/2 sum log F_t.

**Fast path.** ``arma_loglik_batch`` runs the filter over many (series, parameter) pairs at once in
numpy float64, in Chandrasekhar form (O(r) per step, not O(r^2) or O(r^3)), from the first
column of the stationary covariance computed from the ARMA autocovariances, and, once every
filter in the batch has reached its steady state, only the state recursion.
``kalman.kalman_filter`` on the same state-space model is the reference it is tested against.

**Fit** (``arima_search.fit_arima_batch``). Maximum likelihood over unconstrained x: each
polynomial's coefficients are the Durbin-Levinson map of partial autocorrelations tanh(x) (Jones
1980; Monahan 1984), so the AR parts are stationary and the MA parts invertible (theta = -that
map), and the mean mu; a fit can therefore never be non-stationary, and a failed one (a
non-finite likelihood) raises ``DataError`` naming the series.

**Forecasts.** With the differences in the state (the first d + mD states the past values of y,
diffuse; DK section 5.2) the Kalman filter over y gives the h-step means and variances (as
statsmodels' ``SARIMAX(..., simple_differencing=False)`` with an exact diffuse start); intervals
are Gaussian.

Estimation and automatic order selection (Hyndman and Khandakar 2008) are in
``seqlab.forecast.arima_search``, which builds on this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from seqlab.data.series import Series
from seqlab.errors import ConfigError, DataError
from seqlab.forecast.base import LocalForecaster, gaussian_quantiles
from seqlab.forecast.kalman import LOG_2PI, StateSpace, kalman_filter, state_forecast
from seqlab.registry import register

SIGMA2_FLOOR = 1e-12             # on data scaled to unit spread: a perfect fit keeps a positive variance


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

    @property
    def n_parameters(self) -> int:
        return self.order.n_coefficients + 1

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

    def to_tensor(self) -> Tensor:
        """(12 + p + q + P + Q,) float64: the orders, the coefficients, mu, sigma^2, log L, n_used."""
        o = self.order
        head = [o.p, o.d, o.q, o.P, o.D, o.Q, o.m, float(o.constant)]
        tail = [self.mean, self.sigma2, self.loglik, self.n_used]
        return torch.tensor(head + [*self.ar, *self.ma, *self.seasonal_ar, *self.seasonal_ma] + tail,
                            dtype=torch.float64)

    @staticmethod
    def from_tensor(parameters: Tensor) -> ArimaFit:
        values = parameters.tolist()
        p, d, q, P, D, Q, m = (int(v) for v in values[:7])
        order = ArimaOrder(p, d, q, P, D, Q, m, bool(values[7]))
        bounds = np.cumsum([8, p, q, P, Q])
        parts = [np.array(values[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        mean, sigma2, loglik, n_used = values[bounds[-1]:]
        return ArimaFit(order, *parts, mean, sigma2, loglik, int(n_used))


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


# ---- state-space form ------------------------------------------------------------------------------

def stationary_covariance_ref(T: Tensor, RQR: Tensor) -> Tensor:
    """(r, r) P solving P = T P T' + RQR' by the Kronecker-product linear system (the spec)."""
    r = T.shape[0]
    vec = torch.linalg.solve(torch.eye(r * r, dtype=torch.float64) - torch.kron(T, T), RQR.reshape(-1))
    return vec.reshape(r, r)


def arma_state_space(ar: np.ndarray, ma: np.ndarray, sigma2: float, delta: np.ndarray | None = None) -> StateSpace:
    """Harvey's form of ARMA(ar, ma) with innovation variance sigma2, stationary start; with
    ``delta`` (a differencing polynomial of degree s) the state is extended by y_{t-1}..y_{t-s},
    diffuse, and the model observes y with delta(L) y_t = the ARMA (DK section 3.4)."""
    r = max(len(ar), len(ma) + 1)
    T = torch.zeros(r, r, dtype=torch.float64)
    T[:len(ar), 0] = torch.from_numpy(np.asarray(ar, dtype=np.float64))
    T[:-1, 1:] = torch.eye(r - 1, dtype=torch.float64)
    R = torch.zeros(r, 1, dtype=torch.float64)
    R[0, 0] = 1.0
    R[1:len(ma) + 1, 0] = torch.from_numpy(np.asarray(ma, dtype=np.float64))
    Z = torch.zeros(r, dtype=torch.float64)
    Z[0] = 1.0
    P1 = stationary_covariance_ref(T, R @ R.T) * sigma2
    Q = torch.tensor([[sigma2]], dtype=torch.float64)
    if delta is None or len(delta) == 1:
        return StateSpace(Z, torch.tensor(0.0, dtype=torch.float64), T, R, Q, torch.zeros(r, dtype=torch.float64),
                          P1, torch.zeros(r, r, dtype=torch.float64))
    s = len(delta) - 1
    Z_full = torch.cat([-torch.from_numpy(delta[1:].copy()), Z])                # y_t = -sum delta_j y_{t-j} + w_t
    T_full = torch.zeros(s + r, s + r, dtype=torch.float64)
    T_full[0] = Z_full                                                          # the new y_t
    T_full[1:s, :s - 1] = torch.eye(s - 1, dtype=torch.float64)                 # shift the past values
    T_full[s:, s:] = T
    P1_full = torch.zeros(s + r, s + r, dtype=torch.float64)
    P1_full[s:, s:] = P1
    P_inf = torch.zeros(s + r, s + r, dtype=torch.float64)
    P_inf[:s, :s] = torch.eye(s, dtype=torch.float64)
    return StateSpace(Z_full, torch.tensor(0.0, dtype=torch.float64), T_full, torch.cat([torch.zeros(s, 1,
                      dtype=torch.float64), R]), Q, torch.zeros(s + r, dtype=torch.float64), P1_full, P_inf)


def arma_loglik_ref(w: np.ndarray, ar: np.ndarray, ma: np.ndarray, sigma2: float) -> float:
    """The exact log-likelihood of a zero-mean ARMA by ``kalman.kalman_filter`` (the spec)."""
    return kalman_filter(arma_state_space(ar, ma, sigma2), torch.from_numpy(np.asarray(w, dtype=np.float64))).loglik


# ---- the batched filter ----------------------------------------------------------------------------

def arma_autocovariances(ar: np.ndarray, ma: np.ndarray, lags: int) -> tuple[np.ndarray, np.ndarray]:
    """Autocovariances gamma(0..lags) and MA(infinity) weights psi_0..lags of N ARMA models with
    sigma^2 = 1 (Brockwell and Davis 1991, section 3.3, third method): psi_k = theta_k +
    sum_j phi_j psi_{k-j}; gamma(0..p) solve gamma(k) - sum_j phi_j gamma(|k - j|) =
    sum_{j>=k} theta_j psi_{j-k}; beyond p, gamma follows the same recursion.

    Args:
        ar: (N, p) and ma: (N, q) coefficients (zero-padded).
    Returns:
        (N, lags + 1) gamma and (N, lags + 1) psi.
    """
    count, p, q = ar.shape[0], ar.shape[1], ma.shape[1]
    theta = np.concatenate([np.ones((count, 1)), ma, np.zeros((count, max(lags - q, 0)))], axis=1)
    psi = np.zeros((count, lags + 1))
    for k in range(lags + 1):
        j = np.arange(1, min(k, p) + 1)
        psi[:, k] = theta[:, k] + np.einsum("nj,nj->n", ar[:, j - 1], psi[:, k - j])
    rhs = np.stack([np.einsum("nj,nj->n", theta[:, k:q + 1], psi[:, :q + 1 - k]) if k <= q else np.zeros(count)
                    for k in range(max(p, lags) + 1)], axis=1)
    system = np.broadcast_to(np.eye(p + 1), (count, p + 1, p + 1)).copy()
    rows, lag = np.meshgrid(np.arange(p + 1), np.arange(1, p + 1), indexing="ij")
    np.add.at(system, (np.arange(count)[:, None, None], rows[None], np.abs(rows - lag)[None]), -ar[:, None, :])
    gamma = np.zeros((count, max(p, lags) + 1))
    gamma[:, :p + 1] = solve_or_nan(system, rhs[:, :p + 1])
    for k in range(p + 1, lags + 1):
        gamma[:, k] = rhs[:, k] + np.einsum("nj,nj->n", ar, gamma[:, k - 1::-1][:, :p])
    return gamma[:, :lags + 1], psi


def solve_or_nan(system: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """(N, k) solutions of N systems (N, k, k) x = (N, k); NaN rows for singular systems (a unit
    root: partial autocorrelations of exactly +-1, which a trial step far out can reach)."""
    try:
        return np.linalg.solve(system, rhs[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        out = np.full(rhs.shape, np.nan)
        for i in range(len(system)):
            try:
                out[i] = np.linalg.solve(system[i], rhs[i])
            except np.linalg.LinAlgError:
                pass
        return out


def stationary_first_column(ar: np.ndarray, ma: np.ndarray) -> np.ndarray:
    """(N, r) first column of the stationary state covariance P_1 (sigma^2 = 1) of Harvey's form:
    Cov(alpha_i, y_t) = sum_{j>=i} phi_j gamma(j + 1 - i) + sum_{j>=i-1} theta_j psi_{j+1-i}.

    Args:
        ar: (N, r) AR coefficients, ma: (N, r - 1) MA coefficients, zero-padded to one r.
    """
    count, r = ar.shape
    used = np.nonzero(np.abs(ar).max(0) > 0)[0]
    p = int(used[-1]) + 1 if len(used) else 0
    gamma, psi = arma_autocovariances(ar[:, :p], ma, r)
    column = np.zeros((count, r))
    column[:, 0] = gamma[:, 0]
    theta = np.concatenate([np.ones((count, 1)), ma], axis=1)                       # theta_0 .. theta_{r-1}
    for i in range(2, r + 1):
        j = np.arange(i, r + 1)
        column[:, i - 1] = np.einsum("nj,nj->n", ar[:, j - 1], gamma[:, j + 1 - i])
        j = np.arange(i - 1, r)
        column[:, i - 1] += np.einsum("nj,nj->n", theta[:, j], psi[:, j + 1 - i])
    return column


def arma_loglik_batch(w: np.ndarray, observed: np.ndarray, ar: np.ndarray, ma: np.ndarray) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    """Sufficient sums of the concentrated log-likelihood of N zero-mean ARMA models, by the
    Kalman filter in Chandrasekhar form (Morf, Sidhu and Kailath 1974; Herbst 2015).

    From the stationary start the covariance increments Delta P_t = P_{t+1} - P_t have rank one,
    W_t M_t W_t', so the filter needs only g_t = T P_t Z' (r), F_t and W_t, M_t, each step O(r):

        a_{t+1} = T a_t + g_t v_t / F_t,         z = Z W_t,   u = T W_t,
        W_{t+1} = u - g_t z / F_t,   F_{t+1} = F_t + z^2 M_t,   g_{t+1} = g_t + u M_t z,
        M_{t+1} = M_t F_t / F_{t+1},   from g_1 = T P_1 Z', F_1 = Z P_1 Z', W_1 = g_1, M_1 = -1 / F_1

    (P_1 enters only through its first column, ``stationary_first_column``). Once every increment
    is below 1e-13 F only the state recursion runs.

    Args:
        w: (N, n) series, each right-aligned (observed values last), left positions padding.
        observed: (N, n) true where w is a value; a model's recursion starts at its first value
            (padding, as missing values before it, would leave the stationary start unchanged).
        ar: (N, r) AR coefficients, ma: (N, r - 1) MA coefficients, zero-padded to one r.
    Returns:
        (N,) sum v_t^2 / F_t and (N,) sum log F_t over the observed t, for sigma^2 = 1.
    """
    count, n = w.shape
    column = stationary_first_column(ar, ma)

    def transition(x: np.ndarray) -> np.ndarray:                 # T x for the companion matrix
        out = ar * x[:, :1]
        out[:, :-1] += x[:, 1:]
        return out

    F = column[:, 0].copy()
    g = transition(column)
    W, M = g.copy(), -1.0 / F
    a = np.zeros_like(g)
    sum_squares, sum_log_f = np.zeros(count), np.zeros(count)
    all_observed = observed.all(axis=0)
    first_all_observed = int(np.argmax(all_observed)) if all_observed.any() else n
    t = 0
    while t < n:
        seen = observed[:, t]
        v = w[:, t] - a[:, 0]
        gain = g / F[:, None]
        sum_squares += np.where(seen, v * v / F, 0.0)
        sum_log_f += np.where(seen, np.log(F), 0.0)
        z = W[:, 0]
        u = transition(W)
        F_next = F + z * z * M
        # Steady once every increment Delta P = M W W' is negligible (F alone can pause, e.g. between seasons).
        steady = t > first_all_observed and bool((np.abs(M) * (W * W).sum(1) <= 1e-13 * F).all())
        if seen.all():
            a = transition(a) + gain * v[:, None]
            W = u - gain * z[:, None]
            g = g + u * (M * z)[:, None]
            M = M * F / F_next
            F = F_next
        else:
            a = np.where(seen[:, None], transition(a) + gain * v[:, None], a)
            W = np.where(seen[:, None], u - gain * z[:, None], W)
            g = np.where(seen[:, None], g + u * (M * z)[:, None], g)
            M = np.where(seen, M * F / F_next, M)
            F = np.where(seen, F_next, F)
        t += 1
        if steady:
            break
    gain, log_F = g / F[:, None], np.log(F)
    for t in range(t, n):                        # the steady state: only the state recursion
        v = w[:, t] - a[:, 0]
        sum_squares += v * v / F
        sum_log_f += log_F
        a = transition(a) + gain * v[:, None]
    return sum_squares, sum_log_f


def concentrated_loglik(sum_squares: np.ndarray, sum_log_f: np.ndarray, count: np.ndarray) -> tuple[np.ndarray,
                                                                                                       np.ndarray]:
    """(N,) log-likelihood maximised over sigma^2 and (N,) that sigma^2 = sum v^2 / F / n' (at
    least ``SIGMA2_FLOOR``, for data scaled to unit spread)."""
    sigma2 = np.maximum(sum_squares / count, SIGMA2_FLOOR)        # a perfect fit keeps a finite likelihood
    with np.errstate(divide="ignore", invalid="ignore"):
        loglik = -0.5 * (count * (LOG_2PI + np.log(sigma2)) + sum_squares / sigma2 + sum_log_f)
    return np.where(np.isfinite(loglik), loglik, -np.inf), sigma2


def arma_loglik(w: np.ndarray, ar: np.ndarray, ma: np.ndarray, sigma2: float | None = None) -> float:
    """The exact log-likelihood of one zero-mean ARMA series (T,) by the batched filter: at
    ``sigma2``, or concentrated (maximised over sigma^2) when it is None."""
    r = max(len(ar), len(ma) + 1, 1)
    ar_padded, ma_padded = np.zeros((1, r)), np.zeros((1, r - 1))
    ar_padded[0, :len(ar)], ma_padded[0, :len(ma)] = ar, ma
    sum_squares, sum_log_f = arma_loglik_batch(np.asarray(w, dtype=np.float64)[None], np.ones((1, len(w)), bool),
                                               ar_padded, ma_padded)
    if sigma2 is None:
        return float(concentrated_loglik(sum_squares, sum_log_f, np.array([len(w)]))[0][0])
    return float(-0.5 * (len(w) * (LOG_2PI + math.log(sigma2)) + sum_log_f[0] + sum_squares[0] / sigma2))


def forecast_arima(values: np.ndarray, fit: ArimaFit, horizon: int) -> tuple[Tensor, Tensor]:
    """(H,) means and (H,) variances of y_{n+1..n+H}, from the filter with the differences in the
    state (exact diffuse start) over y less its deterministic trend."""
    o, n = fit.order, len(values)
    trend = deterministic_trend(o, fit.mean, np.arange(1.0, n + horizon + 1)) if o.constant else np.zeros(n + horizon)
    ar, ma = fit.full_polynomials()
    model = arma_state_space(ar, ma, fit.sigma2, differencing_polynomial(o))
    mean, variance, _ = state_forecast(model, kalman_filter(model, torch.from_numpy(values - trend[:n])), horizon)
    return mean + torch.from_numpy(trend[n:]), variance


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
    ``fit`` fits all series of a panel together (one batch per round of the search).
    """

    def __init__(self, config: ARIMAConfig | None = None) -> None:
        super().__init__()
        self.config = config or ARIMAConfig()

    def min_length(self, season: int) -> int:
        if self.config.order is None:
            return 5
        return self.config.fixed_order(season).min_length()

    def fit_arrays(self, series: list[np.ndarray], season: int) -> list[ArimaFit]:
        """Fits of (n_i,) series with seasonal period ``season`` (no length checks)."""
        from seqlab.forecast.arima_search import SearchBounds, auto_arima, fit_arima_batch  # it imports this module

        config = self.config
        if config.order is not None:
            return fit_arima_batch(series, [config.fixed_order(season)] * len(series), config.max_iterations)
        return auto_arima(series, season, seasonal=config.seasonal, allow_constant=config.allow_constant,
                          max_d=config.max_d, max_D=config.max_D,
                          bounds=SearchBounds(max_p=config.max_p, max_q=config.max_q, max_P=config.max_P,
                                              max_Q=config.max_Q, max_order=config.max_order,
                                              max_models=config.max_models),
                          max_iterations=config.max_iterations)

    def fit_many(self, series: Sequence[Series], season: int) -> list[Tensor]:
        """(P_i,) parameters of each series, fitted together.

        Raises:
            DataError: a series shorter than ``min_length``, or whose fit failed, named.
        """
        needed = self.min_length(season)
        for one in series:
            if len(one) < needed:
                raise DataError(f"series {one.id!r} has {len(one)} values; ARIMA with seasonal period {season} "
                                f"needs at least {needed}")
        fits = self.fit_arrays([one.values.double().numpy() for one in series], season)
        for one, fit in zip(series, fits):
            if not (math.isfinite(fit.loglik) and math.isfinite(fit.sigma2) and fit.sigma2 >= 0):
                raise DataError(f"ARIMA could not fit series {one.id!r} ({fit.order}): the likelihood is not finite")
        return [fit.to_tensor() for fit in fits]

    def fit_one(self, series: Series, season: int) -> Tensor:
        return self.fit_many([series], season)[0]

    def fit_series(self, values: Tensor, season: int) -> Tensor:
        return self.fit_arrays([values.double().numpy()], season)[0].to_tensor()

    def forecast_series(self, values: Tensor, season: int, parameters: Tensor, horizon: int,
                        quantiles: Tensor) -> tuple[Tensor, Tensor]:
        fit = ArimaFit.from_tensor(parameters)
        mean, variance = forecast_arima(values.double().numpy(), fit, horizon)
        return mean, gaussian_quantiles(mean, variance.clamp_min(0).sqrt(), quantiles)
