"""Maximum-likelihood estimation of ETS forms, as R's forecast::ets (Hyndman et al. 2008, ch. 5).

Every (series, form) pair is one row of one batched fit (``fit_rows``). Each row follows R:

* **Starting values** (R's ``initparam``): alpha = l + 0.2 (u - l) / m (m = 1 for a form
  without a season), beta = l + 0.1 (alpha - l), gamma = l + 0.05 (1 - alpha - l),
  phi = 0.8 + 0.99 (0.98 - 0.8); initial states by ``heuristic_states``. The fit is local from
  there, as R's is. The likelihood has several optima, and the highest is often not the one
  that forecasts best: on M4 Hourly, alpha ~ 1 with beta ~ alpha (a local linear extrapolation)
  fits one step ahead best and forecasts 48 steps ahead worst; starting from the best of
  several alphas found it, and lost to Naive2 (OWA 1.8 against 1.4 from R's start, five series).
* **The parameter space** is R's ``bounds="both"``: the "usual" region, l = 1e-4, u = 0.9999,

      l <= alpha <= u,   l <= beta <= alpha,   l <= gamma <= 1 - alpha,   0.8 <= phi <= 0.98,

  mapped one to one onto R^4 by logits (beta = l + (alpha - l) sigmoid(x_1), ...), intersected
  with the admissible region (Hyndman, Akram & Archibald 2008: the forecastability region of
  the linear form, tested as R's ``admissible``), outside which the objective is +inf.
* **Initial states** l_0, b_0, s_{-1}..s_{-(m-1)} are estimated with the smoothing parameters;
  s_{-m} makes the seasonal states sum to 0 (A) or m (M). The AICc counts them (``Form.n_params``).

The series is divided by its mean absolute value first (the likelihood only shifts).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from seqlab.forecast.ets_fit import Form, ets_filter, gaussian_loglik, pack
from seqlab.forecast.ets_lbfgs import minimise

LOWER, UPPER = 1e-4, 0.9999                 # alpha, beta, gamma
PHI_BOUNDS = (0.8, 0.98)
START = {"alpha": 0.2, "beta": 0.1, "gamma": 0.05, "phi": 0.99}      # R's fractions of each range
ROOT_TOLERANCE = 1e-10                      # R: inadmissible when a root's modulus exceeds 1 + this


# ---- the admissible region ----------------------------------------------------------------

def characteristic(alpha: Tensor, beta: Tensor, gamma: Tensor, phi: Tensor, m: int) -> Tensor:
    """(B, m + 2) coefficients, constant first, of the polynomial whose roots must lie in the
    unit disc for a seasonal linear form to be forecastable (Hyndman et al. 2008, §10.2; R's
    ``admissible``): phi (1 - alpha - gamma) + (alpha + beta - alpha phi + gamma - 1) z
    + (alpha + beta - alpha phi) (z^2 + ... + z^{m-1}) + (alpha + beta - phi) z^m + z^{m+1}."""
    c = alpha + beta - alpha * phi
    return torch.stack([phi * (1 - alpha - gamma), c + gamma - 1] + [c] * (m - 2)
                       + [alpha + beta - phi, torch.ones_like(alpha)], 1)


def roots_inside(coefficients: Tensor, radius: float = 1.0) -> Tensor:
    """(B,) whether every root of sum_i coefficients[:, i] z^i (B, n + 1), leading coefficient
    non-zero, lies in |z| < radius: the Schur-Cohn test. p has all n roots inside the unit
    circle iff |a_0| < |a_n| and q(z) = (a_n p(z) - a_0 p*(z)) / z, of degree n - 1, has too
    (p* the reversed polynomial; Rouche's theorem on |z| = 1). No roots are computed, so the
    test is O(n^2) elementwise work for all B at once."""
    n = coefficients.shape[1] - 1
    a = coefficients * radius ** torch.arange(n + 1, dtype=coefficients.dtype)       # roots of p(radius z)
    inside = torch.ones(len(a), dtype=torch.bool)
    for degree in range(n, 0, -1):
        lead, constant = a[:, degree], a[:, 0]
        inside &= constant.abs() < lead.abs()
        a = lead[:, None] * a[:, 1:degree + 1] - constant[:, None] * a[:, :degree].flip(1)
        a = a / torch.where(a[:, -1:] == 0, torch.ones_like(a[:, -1:]), a[:, -1:])        # keep it monic
    return inside


def admissible(alpha: Tensor, beta: Tensor, gamma: Tensor, phi: Tensor, m: int, seasonal: Tensor) -> Tensor:
    """(B,) whether (alpha, beta, gamma, phi) (each (B,); beta = 0 without a trend, phi = 1
    undamped) is in R's admissible region, for rows with a season of period m where
    ``seasonal`` (B,) is true and without one elsewhere. ``admissible_ref`` is the specification."""
    inside = (phi >= 0) & (phi <= 1 + 1e-8)
    plain = (alpha >= 1 - 1 / phi) & (alpha <= 1 + 1 / phi) & (beta >= alpha * (phi - 1)) \
        & (beta <= (1 + phi) * (2 - alpha))
    if m == 1:
        return inside & plain
    season = (gamma >= (1 - 1 / phi - alpha).clamp_min(0)) & (gamma <= 1 + 1 / phi - alpha)
    season &= alpha >= 1 - 1 / phi - gamma * (1 - m + phi + phi * m) / (2 * phi * m)
    season &= beta >= -(1 - phi) * (gamma / m + alpha)
    season &= roots_inside(characteristic(alpha, beta, gamma, phi, m), 1 + ROOT_TOLERANCE)
    return inside & torch.where(seasonal, season, plain)


def admissible_ref(alpha: float, beta: float | None, gamma: float | None, phi: float | None, m: int) -> bool:
    """R's ``admissible`` written plainly, None for an absent parameter, the roots by numpy."""
    phi = 1.0 if phi is None else phi
    if phi < 0 or phi > 1 + 1e-8:
        return False
    if gamma is None:
        if alpha < 1 - 1 / phi or alpha > 1 + 1 / phi:
            return False
        return beta is None or alpha * (phi - 1) <= beta <= (1 + phi) * (2 - alpha)
    beta = 0.0 if beta is None else beta
    if gamma < max(1 - 1 / phi - alpha, 0) or gamma > 1 + 1 / phi - alpha:
        return False
    if alpha < 1 - 1 / phi - gamma * (1 - m + phi + phi * m) / (2 * phi * m):
        return False
    if beta < -(1 - phi) * (gamma / m + alpha):
        return False
    c = alpha + beta - alpha * phi
    constant_first = [phi * (1 - alpha - gamma), c + gamma - 1] + [c] * (m - 2) + [alpha + beta - phi, 1.0]
    return bool(np.abs(np.roots(constant_first[::-1])).max() <= 1 + ROOT_TOLERANCE)


# ---- initial states -------------------------------------------------------------------------

def heuristic_states(y: np.ndarray, trend: str, season: str, m: int) -> tuple[float, float, np.ndarray]:
    """Starting l_0, b_0 and (m,) seasonal states s_{-1}..s_{-m} (Hyndman et al. 2008, §2.6.1):
    seasonal indices from a classical decomposition (a centred moving average) of the first
    two or three seasons, then a line through the first max(10, 2m) seasonally adjusted
    values: its intercept is l_0 and its slope b_0 (a ratio for an M trend)."""
    n = len(y)
    if season != "N":
        cycles = min(n // m, 3)
        x = y[: cycles * m]
        half = m // 2
        weights = np.full(m + 1 - m % 2, 1.0 / m)
        if m % 2 == 0:
            weights[[0, -1]] = 0.5 / m                   # the 2 x m moving average
        trend_line = np.convolve(x, weights, mode="valid")          # centred at half..len-half-1
        centre = np.arange(half, half + len(trend_line))
        detrended = x[centre] / trend_line if season == "M" else x[centre] - trend_line
        indices = np.array([detrended[centre % m == j].mean() for j in range(m)])
        indices = indices / indices.mean() if season == "M" else indices - indices.mean()
        position = indices[np.arange(n) % m]
        adjusted = y / position if season == "M" else y - position
        seasonal = indices[::-1].copy()                  # s_{-1} is the index of position m - 1
    else:
        adjusted, seasonal = y, np.zeros(1)
    first = adjusted[: min(max(10, 2 * m), n)]
    if trend == "N":
        return float(first.mean()), 0.0, seasonal
    slope, intercept = np.polyfit(np.arange(1, len(first) + 1), first, 1)
    if trend == "A":
        return float(intercept), float(slope), seasonal
    growth = (intercept + 2 * slope) / (intercept + slope)
    if intercept + slope <= 0 or growth <= 0:
        return float(max(adjusted[0], 1e-3)), float(max(adjusted[1] / adjusted[0], 1e-3)), seasonal
    return float((intercept + slope) / growth), float(growth), seasonal


# ---- the parameter map ----------------------------------------------------------------------------

def smoothing(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(alpha, beta, gamma, phi), each (B,), of the logits x (B, 4): one to one onto the usual
    region (module docstring), whatever the form (absent parameters are zeroed by the caller)."""
    fraction = torch.sigmoid(x)
    alpha = LOWER + (UPPER - LOWER) * fraction[:, 0]
    beta = LOWER + (alpha - LOWER) * fraction[:, 1]
    gamma = LOWER + (1 - alpha - LOWER) * fraction[:, 2]
    phi = PHI_BOUNDS[0] + (PHI_BOUNDS[1] - PHI_BOUNDS[0]) * fraction[:, 3]
    return alpha, beta, gamma, phi


def start_logits(forms: Sequence[Form], m: int) -> Tensor:
    """(B, 4) logits of R's starting alpha, beta, gamma, phi (module docstring)."""
    logit = lambda p: math.log(p / (1 - p))          # noqa: E731
    alpha = [START["alpha"] / (m if form.season != "N" else 1) for form in forms]
    return torch.tensor([[logit(a), logit(START["beta"]), logit(START["gamma"]), logit(START["phi"])]
                         for a in alpha], dtype=torch.float64)


# ---- fitting forms to series ------------------------------------------------------------------

def fit_rows(series: Sequence[np.ndarray], forms: Sequence[Form], season: int, *, season_update: str,
             max_iterations: int, tolerance: float) -> list[Tensor]:
    """Fit ``forms[i]`` to ``series[i]`` by maximum likelihood, every row at once; the packed
    parameters (``pack``) of each row, its log-likelihood -inf where no feasible fit was found
    (R's start inadmissible, or a multiplicative-error forecast not positive).

    The rows of one trend and season type share one recursion, and ``minimise`` runs over
    x = (the 4 logits of ``smoothing``, l_0, b_0, s_{-1}, ..., s_{-(m-1)}).
    """
    results: list[Tensor | None] = [None] * len(series)
    groups: dict[tuple[bool, bool], list[int]] = {}
    for row, form in enumerate(forms):
        groups.setdefault((form.trend == "M", form.season == "M"), []).append(row)
    for (mul_trend, mul_season), rows in groups.items():
        m = season if any(forms[row].season != "N" for row in rows) else 1
        for row, fitted in zip(rows, fit_group([series[row] for row in rows], [forms[row] for row in rows], m,
                                               mul_trend, mul_season, season_update, max_iterations, tolerance)):
            results[row] = fitted
    return results


def fit_group(series: list[np.ndarray], forms: list[Form], m: int, mul_trend: bool, mul_season: bool,
              season_update: str, max_iterations: int, tolerance: float) -> list[Tensor]:
    rows, steps = len(series), max(len(values) for values in series)
    scales = np.array([np.abs(values).mean() or 1.0 for values in series])
    padded = np.stack([np.pad(values / scale, (0, steps - len(values)), mode="edge")
                       for values, scale in zip(series, scales)])
    y = torch.from_numpy(padded)                                                        # (B, T)
    lengths = torch.tensor([len(values) for values in series], dtype=torch.float64)
    mask = (torch.arange(steps)[None, :] < lengths[:, None]).to(torch.float64)         # (B, T)
    column = lambda test: torch.tensor([test(form) for form in forms])                  # noqa: E731
    has_trend, has_season = column(lambda f: f.trend != "N"), column(lambda f: f.season != "N")
    damped, mul_error = column(lambda f: f.damped), column(lambda f: f.error == "M")
    x0 = torch.zeros(rows, 6 + m - 1, dtype=torch.float64)
    x0[:, :4] = start_logits(forms, m)
    for row, (values, form) in enumerate(zip(padded, forms)):
        level, trend, seasonal = heuristic_states(values[: len(series[row])], form.trend, form.season, m)
        x0[row, 4], x0[row, 5] = level, trend
        x0[row, 6:] = torch.from_numpy(seasonal[:-1]) if form.season != "N" else 0.0
    active = torch.ones_like(x0, dtype=torch.bool)
    active[:, 1] = active[:, 5] = has_trend
    active[:, 2] = has_season
    active[:, 3] = damped
    active[:, 6:] = has_season[:, None]

    def model(x: Tensor, rows: Tensor) -> tuple[Tensor, ...]:
        alpha, beta, gamma, phi = smoothing(x[:, :4])
        beta, gamma = beta * has_trend[rows], gamma * has_season[rows]
        phi = torch.where(damped[rows], phi, torch.ones_like(phi))
        free = x[:, 6:]
        last = (m - free.sum(1) if mul_season else -free.sum(1))[:, None]
        return alpha, beta, gamma, phi, x[:, 4], x[:, 5], torch.cat([free, last], 1)

    def loglik(x: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        parameters = model(x, rows)
        mu, *_ = ets_filter(y[rows], *parameters, mul_trend=mul_trend, mul_season=mul_season,
                            statsmodels_season=season_update == "statsmodels")
        value, sse = gaussian_loglik(y[rows], mu, mask[rows], mul_error[rows])
        with torch.no_grad():
            infeasible = ~admissible(*(p.detach() for p in parameters[:4]), m, has_season[rows])
            infeasible |= mul_error[rows] & ((mu <= 0) & (mask[rows] > 0)).any(1)
        return torch.where(infeasible, torch.full_like(value, -math.inf), value), sse

    def objective(x: Tensor, rows: Tensor) -> Tensor:
        value = loglik(x, rows)[0]
        return torch.where(torch.isfinite(value), -value / lengths[rows], torch.full_like(value, math.inf))

    every = torch.arange(rows)
    x, _ = minimise(objective, x0, active, max_iterations=max_iterations, tolerance=tolerance)
    with torch.no_grad():
        value, sse = loglik(x, every)
        parameters = model(x, every)
    value = value - lengths * torch.from_numpy(np.log(scales))          # undo the scaling
    packed = []
    for row, form in enumerate(forms):
        alpha, beta, gamma, phi, level, trend, seasonal = (float(p[row]) if p.dim() == 1 else p[row].tolist()
                                                           for p in parameters)
        scale = float(scales[row])
        k = form.n_params(m if form.season != "N" else 1)
        sigma2 = float(sse[row]) / max(len(series[row]) - k, 1) * (scale ** 2 if form.error == "A" else 1.0)
        packed.append(pack(form, alpha, beta, gamma, phi, sigma2, float(value[row]), level * scale,
                           trend * (scale if form.trend == "A" else 1.0),
                           [s * (scale if form.season == "A" else 1.0) for s in seasonal]))
    return packed
