"""Conditional sum of squares (CSS) for ARMA models: the cheap objective of the order search.

For a zero-mean ARMA(p', q') of the differenced values w_1..w_n (p' = p + mP and q' = q + mQ the
degrees of the multiplied polynomials phi(L) Phi(L^m) and theta(L) Theta(L^m)), CSS conditions on
the first p' values and on zero innovations before them (Box and Jenkins 1976, section 7.1.2;
R's ``arima(method = "CSS")``):

    e_t = w_t - sum_{j=1}^{p'} phi_j w_{t-j} - sum_{j=1}^{q'} theta_j e_{t-j},   t = p' + 1 .. n,
    e_t = 0 for t <= p',     sigma^2_CSS = sum_t e_t^2 / (n - p').

Minimising sigma^2_CSS is least squares: no state covariance, so each step costs O(number of
non-zero lags), against the Kalman filter's O(r) with r = max(p', q' + 1) (50 for a seasonal model
with m = 24), and no stationary start to solve for. R's ``auto.arima`` ranks candidates by it when
``approximation = (n > 150 || m > 12)`` and refits only the chosen model by exact maximum
likelihood; ``arima_search.auto_arima`` does the same.

``css_sums_batch`` runs the recursion for many (series, parameter) pairs at once, over only the
lags some model uses (at most (q + 1)(Q + 1) - 1 of them for MA, not q + mQ);
``css_residuals_ref`` is the plain per-step loop it is tested against.
"""

from __future__ import annotations

import numpy as np


def css_residuals_ref(w: np.ndarray, ar: np.ndarray, ma: np.ndarray) -> np.ndarray:
    """(n - p',) conditional residuals e_{p'+1..n} of one zero-mean ARMA series (n,), by the plain
    loop over t and j (the spec of ``css_sums_batch``).

    Args:
        w: (n,) the (differenced, centred) series.
        ar: (p',) phi_1..phi_p' and ma: (q',) theta_1..theta_q' of the multiplied polynomials.
    """
    n, p, q = len(w), len(ar), len(ma)
    e = np.zeros(n)
    for t in range(p, n):
        value = w[t]
        for j in range(1, p + 1):
            value -= ar[j - 1] * w[t - j]
        for j in range(1, q + 1):
            if t - j >= p:
                value -= ma[j - 1] * e[t - j]
        e[t] = value
    return e[p:]


def used_lags(coefficients: np.ndarray) -> np.ndarray:
    """(L,) the lags 1.. whose coefficient is non-zero in some row of (N, k) coefficients."""
    return np.nonzero(np.abs(coefficients).max(0) > 0)[0] + 1 if coefficients.size else np.zeros(0, int)


def css_sums_batch(w: np.ndarray, observed: np.ndarray, ar: np.ndarray, ma: np.ndarray,
                   ar_degree: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums of squared conditional residuals of N zero-mean ARMA models, and their counts.

    The AR part u_t = w_t - sum_j phi_j w_{t-j} is one vectorised pass per used lag; the MA part
    e_t = u_t - sum_j theta_j e_{t-j} is a loop over t, each step one gather and one product over
    the used MA lags of all N models.

    Args:
        w: (N, n) series, each right-aligned (its values last), left positions padding.
        observed: (N, n) true where w is a value.
        ar: (N, pa) AR coefficients and ma: (N, qa) MA coefficients, zero-padded.
        ar_degree: (N,) each model's p' (the values it conditions on), at least its last non-zero
            AR lag.
    Returns:
        (N,) sum e_t^2 and (N,) n - p' (the residuals counted).
    """
    count, n = w.shape
    first = np.argmax(observed, axis=1)                                        # (N,) first value
    start = first + ar_degree                                                  # (N,) first residual
    u = w.copy()
    for lag in used_lags(ar):
        u[:, lag:] -= ar[:, lag - 1:lag] * w[:, :-lag]
    times = np.arange(n)
    valid = times[None, :] >= start[:, None]                                   # (N, n)
    u = np.where(valid, u, 0.0)
    lags = used_lags(ma)
    if len(lags) == 0:
        return (u * u).sum(1), valid.sum(1)
    longest = int(lags.max())
    theta = np.ascontiguousarray(ma[:, lags - 1].T)                            # (L, N)
    e = np.zeros((n + longest, count))                                         # e[t + longest] = e_t
    u_by_time, valid_by_time = np.ascontiguousarray(u.T), np.ascontiguousarray(valid.T)
    for t in range(int(start.min()) if count else n, n):
        step = u_by_time[t] - np.einsum("ln,ln->n", theta, e[t + longest - lags])
        e[t + longest] = np.where(valid_by_time[t], step, 0.0)
    residuals = e[longest:]
    return np.einsum("tn,tn->n", residuals, residuals), valid.sum(1)
