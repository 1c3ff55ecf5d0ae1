"""SARIMA forecasts, fast: the stationary filter on the differenced series, then the integrated model.

``arima.forecast_arima`` (the spec) runs ``kalman.kalman_filter`` with the d + mD past values of
y in the state, exactly diffuse, and the ARMA part started from the stationary covariance of
``stationary_covariance_ref`` (a Kronecker system of r^2 unknowns: for m = 24, r = 50, a
2500 x 2500 solve, then 75-state torch steps). Once the first d + mD values are seen, that
filter's diffuse part is known exactly and its ARMA part is the stationary filter of the
differenced series w (the identity behind the likelihood of ``arima_likelihood``; DK 2012
section 5.7). So here:

1. w = (1 - L)^d (1 - L^m)^D (y - trend - x beta); the Kalman filter of Harvey's form over w in
   numpy, P_1 by the Bartels-Stewart solver of P = T P T' + R R' (O(r^3)), giving a_{n+1}, P_{n+1};
2. the h-step means and variances from the state (y_n .. y_{n-s+1}, alpha_{n+1}) of the
   integrated model (``arima_likelihood.arma_state_space`` with the differencing polynomial),
   the past values known (variance 0), the ARMA part N(a_{n+1}, P_{n+1}):
   a <- T a, P <- T P T' + R R' sigma^2, mean Z a, variance Z P Z'.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import solve_discrete_lyapunov
from torch import Tensor

from seqlab.forecast.arima import ArimaFit, deterministic_trend, difference, differencing_polynomial
from seqlab.forecast.arima_likelihood import arma_state_space


def filtered_arma_state(w: np.ndarray, ar: np.ndarray, ma: np.ndarray, sigma2: float) -> tuple[np.ndarray,
                                                                                               np.ndarray]:
    """(r,) a_{n+1} and (r, r) P_{n+1}: the one-step prediction of the state of Harvey's ARMA form
    after w (n,), stationary start, by the covariance form of the Kalman filter."""
    r = max(len(ar), len(ma) + 1, 1)
    T = np.zeros((r, r))
    T[:len(ar), 0] = ar
    T[:-1, 1:] = np.eye(r - 1)
    R = np.zeros(r)
    R[0], R[1:len(ma) + 1] = 1.0, ma
    RR = np.outer(R, R) * sigma2
    P = solve_discrete_lyapunov(T, RR)
    a = np.zeros(r)
    for value in w:
        F = P[0, 0]
        if F <= 0:                               # a perfect fit: nothing left to learn
            a = T @ a
            P = T @ P @ T.T + RR
            continue
        gain = P[:, 0] / F
        a = T @ (a + gain * (value - a[0]))
        P = T @ (P - np.outer(gain, P[0])) @ T.T + RR
    return a, P


def forecast_arima_fast(values: np.ndarray, fit: ArimaFit, horizon: int, exog: np.ndarray | None = None,
                        future_exog: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
    """(H,) means and (H,) variances of y_{n+1..n+H}: ``arima.forecast_arima`` by the route in the
    module docstring (the same arguments)."""
    o, n = fit.order, len(values)
    trend = deterministic_trend(o, fit.mean, np.arange(1.0, n + horizon + 1)) if o.constant else np.zeros(n + horizon)
    if len(fit.exog_coefficients):
        trend = trend + np.concatenate([exog, future_exog[:horizon]]) @ fit.exog_coefficients
    y = values - trend[:n]
    ar, ma = fit.full_polynomials()
    a_arma, P_arma = filtered_arma_state(difference(y, o), ar, ma, fit.sigma2)
    delta = differencing_polynomial(o)
    s, r = len(delta) - 1, len(a_arma)
    model = arma_state_space(ar, ma, fit.sigma2, delta) if s else None
    T = model.T.numpy() if s else None
    a, P = np.zeros(s + r), np.zeros((s + r, s + r))
    a[:s], a[s:], P[s:, s:] = y[::-1][:s], a_arma, P_arma           # y_n .. y_{n-s+1}, then alpha_{n+1}
    Z = np.r_[-delta[1:], 1.0, np.zeros(r - 1)]                     # y_{n+1} = -sum delta_j y_{n+1-j} + w_{n+1}
    RR = np.zeros((s + r, s + r))
    R = np.zeros(r)
    R[0], R[1:len(ma) + 1] = 1.0, ma
    RR[s:, s:] = np.outer(R, R) * fit.sigma2
    T_arma = np.zeros((r, r))
    T_arma[:len(ar), 0] = ar
    T_arma[:-1, 1:] = np.eye(r - 1)
    means, variances = np.zeros(horizon), np.zeros(horizon)
    for h in range(horizon):
        means[h], variances[h] = Z @ a, Z @ P @ Z
        if s:
            a, P = T @ a, T @ P @ T.T + RR
        else:
            a, P = T_arma @ a, T_arma @ P @ T_arma.T + RR
    # the forecast of y_{n+h} is Z times the state (y_{n+h-1}.., alpha_{n+h}): T moves it one step on
    return torch.from_numpy(means + trend[n:]), torch.from_numpy(variances)
