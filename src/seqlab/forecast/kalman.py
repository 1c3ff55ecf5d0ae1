"""Linear Gaussian state-space models: the Kalman filter, the Rauch-Tung-Striebel smoother,
h-step forecasts, and the local level model as a forecaster.

The model (Durbin and Koopman 2012, "Time Series Analysis by State Space Methods", eq. 4.12),
for a univariate series y_1 .. y_n and an m-dimensional state:

    y_t     = Z a_t + eps_t,          eps_t ~ N(0, H)
    a_{t+1} = T a_t + R eta_t,        eta_t ~ N(0, Q)
    a_1     ~ N(a1, P1 + kappa P1_diffuse),  kappa -> infinity

``P1_diffuse`` zero is a proper (given) initialisation; a diagonal of ones over some states makes
them diffuse, and the filter is then Durbin and Koopman's exact initial filter (section 5.2,
univariate observations): while the diffuse part P_inf of the predicted covariance is non-zero
the prediction error variance splits as F = kappa F_inf + F_star, and a step with F_inf > 0
updates by the diffuse gain and adds -1/2 (log 2 pi + log F_inf) to the log-likelihood (DK eq.
7.5, the diffuse log-likelihood, as statsmodels computes it); otherwise the usual step
contributes -1/2 (log 2 pi + log F + v^2 / F) (the prediction-error decomposition, DK eq. 7.2).

The RTS smoother (Rauch, Tung and Striebel 1965) runs backward over the filtered moments:

    J_t = P_{t|t} T' P_{t+1|t}^+,   a_{t|n} = a_{t|t} + J_t (a_{t+1|n} - a_{t+1|t}),
    P_{t|n} = P_{t|t} + J_t (P_{t+1|n} - P_{t+1|t}) J_t'

(P^+ the pseudo-inverse: the companion forms of ARIMA have singular predicted covariances). With
a diffuse start it needs P_inf to vanish after the first observation (the local level, a random
walk plus noise, does); longer diffuse periods need the exact diffuse smoother, not written.

``kalman_filter`` is the plain loop over time, the specification; ``seqlab.forecast.arima`` has a
batched filter specialised to ARMA companion forms, tested equal to it. ``LocalLevel`` fits the
local level model (random walk plus noise, DK chapter 2) by maximum likelihood of its two
variances: the diffuse likelihood concentrated over the observation variance is maximised over the
signal-to-noise ratio q = sigma_eta^2 / sigma_eps^2 by a bounded scalar search, with a scalar
recursion (``local_level_profile``) tested equal to ``kalman_filter``.

Shapes: n observations, m states, g state disturbances, H forecast steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from seqlab.errors import ConfigError, DataError
from seqlab.forecast.base import LocalForecaster, gaussian_quantiles
from seqlab.registry import register

LOG_2PI = math.log(2 * math.pi)
DIFFUSE_TOLERANCE = 1e-9          # |P_inf| entries below this end the diffuse period


@dataclass(frozen=True)
class StateSpace:
    """A linear Gaussian state-space model with univariate observations (float64 tensors).

    Attributes:
        Z: (m,) observation vector.
        H: () observation noise variance.
        T: (m, m) transition matrix.
        R: (m, g) disturbance loading.
        Q: (g, g) disturbance covariance.
        a1: (m,) mean of the first state.
        P1: (m, m) its proper covariance (P_star).
        P1_diffuse: (m, m) its diffuse part (P_inf), zero for a proper initialisation.
    """

    Z: Tensor
    H: Tensor
    T: Tensor
    R: Tensor
    Q: Tensor
    a1: Tensor
    P1: Tensor
    P1_diffuse: Tensor

    @property
    def n_states(self) -> int:
        return len(self.Z)


@dataclass(frozen=True)
class FilterResult:
    """The Kalman filter's output over n observations.

    Attributes:
        loglik: the exact (diffuse, when the start is diffuse) Gaussian log-likelihood.
        v: (n,) one-step prediction errors y_t - Z a_t (0 where y_t is missing).
        F: (n,) their variances (F_inf during the diffuse period).
        a_pred: (n + 1, m) predicted states a_{t|t-1}, the last one a_{n+1|n}.
        P_pred: (n + 1, m, m) their proper covariances.
        a_filt: (n, m) filtered states a_{t|t}.
        P_filt: (n, m, m) their covariances.
        diffuse: (n + 1,) true where the predicted covariance still has a diffuse part.
    """

    loglik: float
    v: Tensor
    F: Tensor
    a_pred: Tensor
    P_pred: Tensor
    a_filt: Tensor
    P_filt: Tensor
    diffuse: Tensor


def kalman_filter(model: StateSpace, y: Tensor) -> FilterResult:
    """The Kalman filter with an exact diffuse start, by the plain loop over time (the spec).

    Args:
        model: the state-space model.
        y: (n,) float64 observations; NaN marks a missing one (the step only predicts).
    Returns:
        the ``FilterResult``.
    """
    n, m = len(y), model.n_states
    Z, T, H = model.Z, model.T, model.H
    RQR = model.R @ model.Q @ model.R.T
    a, P, P_inf = model.a1.clone(), model.P1.clone(), model.P1_diffuse.clone()
    a_pred, P_pred = torch.zeros(n + 1, m, dtype=torch.float64), torch.zeros(n + 1, m, m, dtype=torch.float64)
    a_filt, P_filt = torch.zeros(n, m, dtype=torch.float64), torch.zeros(n, m, m, dtype=torch.float64)
    v_all, F_all = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    diffuse = torch.zeros(n + 1, dtype=torch.bool)
    loglik = 0.0
    for t in range(n):
        is_diffuse = bool(P_inf.abs().max() > DIFFUSE_TOLERANCE)
        a_pred[t], P_pred[t], diffuse[t] = a, P, is_diffuse
        if not torch.isnan(y[t]):
            v = y[t] - Z @ a
            M, F = P @ Z, Z @ P @ Z + H
            M_inf, F_inf = P_inf @ Z, Z @ P_inf @ Z
            if is_diffuse and F_inf > DIFFUSE_TOLERANCE:       # DK eqs. 5.12-5.14, filtered form
                a = a + M_inf * v / F_inf
                P = (P + torch.outer(M_inf, M_inf) * F / F_inf ** 2
                     - (torch.outer(M, M_inf) + torch.outer(M_inf, M)) / F_inf)
                P_inf = P_inf - torch.outer(M_inf, M_inf) / F_inf
                loglik -= 0.5 * (LOG_2PI + math.log(float(F_inf)))
                v_all[t], F_all[t] = v, F_inf
            else:
                a = a + M * v / F
                P = P - torch.outer(M, M) / F
                loglik -= 0.5 * (LOG_2PI + math.log(float(F)) + float(v * v / F))
                v_all[t], F_all[t] = v, F
        a_filt[t], P_filt[t] = a, P
        a, P, P_inf = T @ a, T @ P @ T.T + RQR, T @ P_inf @ T.T
    a_pred[n], P_pred[n], diffuse[n] = a, P, bool(P_inf.abs().max() > DIFFUSE_TOLERANCE)
    return FilterResult(loglik, v_all, F_all, a_pred, P_pred, a_filt, P_filt, diffuse)


def rts_smoother(model: StateSpace, filtered: FilterResult) -> tuple[Tensor, Tensor]:
    """Smoothed states E[a_t | y_1..n] (n, m) and covariances (n, m, m) by the RTS recursion.

    Raises:
        ConfigError: the diffuse part of the state outlives the first observation.
    """
    if filtered.diffuse[1:].any():
        raise ConfigError("the RTS smoother needs the diffuse initial state to be identified by the first "
                          "observation; give a proper initialisation (P1_diffuse = 0) for this model")
    n = len(filtered.v)
    a_smooth, P_smooth = filtered.a_filt.clone(), filtered.P_filt.clone()
    for t in range(n - 2, -1, -1):
        gain = filtered.P_filt[t] @ model.T.T @ torch.linalg.pinv(filtered.P_pred[t + 1], hermitian=True)
        a_smooth[t] = filtered.a_filt[t] + gain @ (a_smooth[t + 1] - filtered.a_pred[t + 1])
        P_smooth[t] = filtered.P_filt[t] + gain @ (P_smooth[t + 1] - filtered.P_pred[t + 1]) @ gain.T
    return a_smooth, P_smooth


def state_forecast(model: StateSpace, filtered: FilterResult, horizon: int) -> tuple[Tensor, Tensor, Tensor]:
    """h-step forecasts from the end of the filtered sample.

    Returns:
        (H,) means E[y_{n+h} | y_1..n], (H,) their variances Z P_{n+h|n} Z' + H, and (H, H) the
        joint covariance of the H forecast errors (Cov(a_{n+h}, a_{n+k}) = T^{h-k} P_{n+k|n}).
    Raises:
        DataError: the state is still diffuse at the end of the sample (too few observations).
    """
    if filtered.diffuse[-1]:
        raise DataError(f"{len(filtered.v)} observations leave part of the state diffuse: the forecast variance "
                        "is infinite")
    a, P = filtered.a_pred[-1], filtered.P_pred[-1]
    RQR = model.R @ model.Q @ model.R.T
    mean = torch.zeros(horizon, dtype=torch.float64)
    joint = torch.zeros(horizon, horizon, dtype=torch.float64)
    cross = torch.zeros(horizon, model.n_states, dtype=torch.float64)    # rows: Z T^{h-k} P_{n+k|n}, k < h
    for h in range(horizon):
        mean[h] = model.Z @ a
        joint[h, h] = model.Z @ P @ model.Z + model.H
        joint[h, :h] = cross[:h] @ model.Z
        joint[:h, h] = joint[h, :h]
        cross[:h] = cross[:h] @ model.T.T
        cross[h] = model.Z @ P @ model.T.T
        a, P = model.T @ a, model.T @ P @ model.T.T + RQR
    return mean, joint.diagonal().clone(), joint


# ---- the local level model ---------------------------------------------------------------------

def local_level(sigma2_eps: float, sigma2_eta: float) -> StateSpace:
    """The local level model y_t = mu_t + eps_t, mu_{t+1} = mu_t + eta_t with a diffuse mu_1."""
    def scalar(x: float) -> Tensor:
        return torch.tensor([[x]], dtype=torch.float64)
    return StateSpace(Z=torch.ones(1, dtype=torch.float64), H=torch.tensor(float(sigma2_eps), dtype=torch.float64),
                      T=scalar(1.0), R=scalar(1.0), Q=scalar(sigma2_eta), a1=torch.zeros(1, dtype=torch.float64),
                      P1=scalar(0.0), P1_diffuse=scalar(1.0))


def local_level_profile(values: np.ndarray, ratio: float) -> tuple[float, float]:
    """(the diffuse log-likelihood of the local level maximised over sigma_eps^2, that sigma_eps^2)
    for the signal-to-noise ratio ``ratio`` = sigma_eta^2 / sigma_eps^2, by the scalar recursion.

    With every variance a multiple of sigma_eps^2, the first observation fixes the level
    (contributing -1/2 log 2 pi), then p_t (P_t / sigma_eps^2) follows p_{t+1} = p_t / (p_t + 1) + q
    from p_2 = 1 + q and f_t = p_t + 1; sigma_eps^2 = sum v^2 / f / (n - 1) (DK section 2.10.2).
    """
    level, p = float(values[0]), 1.0 + ratio
    sum_squares = sum_log_f = 0.0
    for y in values[1:].tolist():
        f = p + 1.0
        v = y - level
        sum_squares += v * v / f
        sum_log_f += math.log(f)
        level += p / f * v
        p = p / f + ratio
    count = len(values) - 1
    sigma2 = sum_squares / count
    if sigma2 <= 0:
        return -math.inf, 0.0
    loglik = -0.5 * (LOG_2PI + count * (LOG_2PI + 1.0 + math.log(sigma2)) + sum_log_f)
    return loglik, sigma2


@dataclass(frozen=True, kw_only=True)
class LocalLevelConfig:
    """How the local level model is fitted.

    Attributes:
        min_log_ratio: the smallest log signal-to-noise ratio log(sigma_eta^2 / sigma_eps^2) searched.
        max_log_ratio: the largest one; a bound reached is kept, not extrapolated.
        grid_points: points of the coarse grid over the log ratio that picks the cell Brent's
            method then narrows (the profile likelihood need not be unimodal).
    """

    min_log_ratio: float = -12.0
    max_log_ratio: float = 12.0
    grid_points: int = 25

    def __post_init__(self) -> None:
        if not self.min_log_ratio < self.max_log_ratio:
            raise ConfigError(f"LocalLevelConfig: need min_log_ratio < max_log_ratio, got {self.min_log_ratio} and "
                              f"{self.max_log_ratio}")
        if self.grid_points < 3:
            raise ConfigError(f"LocalLevelConfig.grid_points must be >= 3, got {self.grid_points}")


@register("kalman", task="forecast", config=LocalLevelConfig, trains="fit", in_default_compare=False)
class LocalLevel(LocalForecaster):
    """The local level model (random walk plus noise) with maximum-likelihood variances.

    Parameters of a series: (2,) [sigma_eps^2, sigma_eta^2]. Forecasts: the filtered level
    a_{n+1|n}, with variance P_{n+1|n} + (h - 1) sigma_eta^2 + sigma_eps^2, Gaussian quantiles.
    """

    def __init__(self, config: LocalLevelConfig | None = None) -> None:
        super().__init__()
        self.config = config or LocalLevelConfig()

    def min_length(self, season: int) -> int:
        return 3

    def fit_series(self, values: Tensor, season: int) -> Tensor:
        from scipy import optimize          # here: scipy takes a second to import, and most runs never fit this

        y = values.double().numpy()
        scale = float(np.abs(y - y[0]).max())
        if scale == 0:                                   # a constant series: no noise at all
            return torch.zeros(2, dtype=torch.float64)
        y = (y - y[0]) / scale

        def negative(log_ratio: float) -> float:
            return -local_level_profile(y, math.exp(log_ratio))[0]

        config = self.config
        grid = np.linspace(config.min_log_ratio, config.max_log_ratio, config.grid_points)
        best = int(np.argmin([negative(x) for x in grid]))
        cell = (grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)])
        search = optimize.minimize_scalar(negative, bounds=cell, method="bounded", options={"xatol": 1e-8})
        log_ratio = min((float(search.x), float(grid[best])), key=negative)
        ratio = math.exp(log_ratio)
        sigma2 = local_level_profile(y, ratio)[1] * scale * scale
        return torch.tensor([sigma2, ratio * sigma2], dtype=torch.float64)

    def forecast_series(self, values: Tensor, season: int, parameters: Tensor, horizon: int,
                        quantiles: Tensor) -> tuple[Tensor, Tensor]:
        sigma2_eps, sigma2_eta = parameters.tolist()
        if sigma2_eps == 0 and sigma2_eta == 0:
            mean = values[-1].expand(horizon).clone()
            return mean, gaussian_quantiles(mean, torch.zeros(horizon, dtype=torch.float64), quantiles)
        model = local_level(sigma2_eps, sigma2_eta)
        mean, variance, _ = state_forecast(model, kalman_filter(model, values.double()), horizon)
        return mean, gaussian_quantiles(mean, variance.clamp_min(0).sqrt(), quantiles)
