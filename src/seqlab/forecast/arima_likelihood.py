"""The exact Gaussian likelihood of ARMA models: Harvey's state-space form and the batched filter.

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
``kalman.kalman_filter`` on the same state-space model (``arma_state_space``, ``arma_loglik_ref``)
is the reference it is tested against.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from seqlab.forecast.kalman import LOG_2PI, StateSpace, kalman_filter

SIGMA2_FLOOR = 1e-12             # on data scaled to unit spread: a perfect fit keeps a positive variance

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
