"""ETS state-space recursions, their Gaussian likelihood and a batched maximum-likelihood fit.

The innovations state-space models of Hyndman, Koehler, Ord & Snyder (2008, "Forecasting with
Exponential Smoothing: the state space approach", Table 2.3; Hyndman et al. 2002). A form is
written E T S: error A(dditive) or M(ultiplicative); trend N(one), A, Ad (damped), M, Md;
season N, A, M (period m). With the one-step forecast

    B_t = phi b_{t-1}  (A trend)  or  b_{t-1}^phi  (M trend)            (damped trend)
    L_t = l_{t-1} + B_t           or  l_{t-1} B_t                       (level forecast)
    mu_t = L_t + s_{t-m}          or  L_t s_{t-m}                       (A / M season)
    y_t = mu_t + e_t  (A error)   or  mu_t (1 + e_t)  (M error),        e_t ~ N(0, sigma^2)

the states are updated from the observation alone (the "y-form": the same equations for both
error types, which differ only in the likelihood):

    l_t = L_t + alpha ((y_t - s_{t-m}) or (y_t / s_{t-m}) - L_t)
    b_t = B_t + (beta / alpha) ((l_t - l_{t-1}) or (l_t / l_{t-1}) - B_t)
    s_t = s_{t-m} + gamma (y_t - L_t - s_{t-m})                         (A season)
    s_t = s_{t-m} + gamma (y_t / L_t - s_{t-m})                         (M season, "hyndman")
    s_t = s_{t-m} + gamma / (1 - alpha) (y_t / l_t - s_{t-m})           (M season, "statsmodels")

Substituting y_t gives Table 2.3's error-correction form (``ets_loglik_ref`` writes it out).
The two multiplicative-season updates differ by a factor 1 + alpha e_t in the seasonal
innovation: "hyndman" is the book's and R's forecast::ets; "statsmodels" is the Holt-Winters
update statsmodels' ``ETSModel`` uses. Additive seasons are the same in both.

The log-likelihood, with sigma^2 concentrated out (as statsmodels' ``ETSModel.loglike``):

    log L = -n/2 (log(2 pi mean_t r_t^2) + 1) - [M error] sum_t log|mu_t|,
    r_t = y_t - mu_t (A error) or (y_t - mu_t) / mu_t (M error).

Initial states are ``level`` l_0, ``trend`` b_0 and ``seasonal`` (m,) in statsmodels' order
(s_{-1}, ..., s_{-m}: the last is the one the first observation uses).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from seqlab.errors import ConfigError

ALPHA_BOUNDS = (1e-4, 0.9999)      # alpha, and beta / alpha and gamma / (1 - alpha) too
PHI_BOUNDS = (0.8, 0.98)
MAX_LOGIT_STEP = 1.0
START_ALPHAS = (0.02, 0.1, 0.3, 0.6, 0.95)      # alpha is started at the best of these
START = {"beta_star": 0.1, "gamma_star": 0.05, "phi": 0.97}
FORM_PATTERN = re.compile(r"^([AM])(N|A|Ad|M|Md)([NAM])$")


@dataclass(frozen=True)
class Form:
    """One ETS form: ``Form.parse("MAdM")``."""

    error: str          # "A" or "M"
    trend: str          # "N", "A" or "M"
    damped: bool
    season: str         # "N", "A" or "M"

    @classmethod
    def parse(cls, code: str) -> Form:
        match = FORM_PATTERN.match(code)
        if match is None:
            raise ConfigError(f"ETS form {code!r} is not E T S with E in A/M, T in N/A/Ad/M/Md, S in N/A/M "
                              "(e.g. 'AAdN', 'MAM')")
        error, trend, season = match.groups()
        return cls(error, trend[0], trend.endswith("d"), season)

    @property
    def code(self) -> str:
        return self.error + self.trend + ("d" if self.damped else "") + self.season

    @property
    def multiplicative(self) -> bool:
        return "M" in (self.error, self.trend, self.season)

    @property
    def linear(self) -> bool:
        """Additive error and no multiplicative component: Gaussian forecasts, analytic variance."""
        return not self.multiplicative

    def n_params(self, season: int) -> int:
        """Estimated parameters: smoothing parameters, phi and the free initial states (the
        seasonal states are normalised, so m - 1 of them are free)."""
        has_trend, has_season = self.trend != "N", self.season != "N"
        return 2 + 2 * has_trend + self.damped + has_season * season

    def min_length(self, season: int) -> int:
        """Fewest observations: five more than R's parameter count (as forecast::ets asks), and
        two full seasons for the seasonal start."""
        needed = self.n_params(season) + (self.season != "N") + 5
        return max(needed, 2 * season) if self.season != "N" else needed


def candidate_forms(season: int, positive: bool, multiplicative_trend: bool) -> list[Form]:
    """The forms automatic selection compares, as R's forecast::ets(model="ZZZ"): multiplicative
    error and components only for positive data, no additive error with a multiplicative
    trend or season, no M trend with A season."""
    forms = []
    for error in "AM" if positive else "A":
        for trend in ["N", "A", "Ad"] + (["M", "Md"] if multiplicative_trend and positive else []):
            for seasonal in "NAM" if season > 1 else "N":
                if error == "A" and ("M" in (trend[0], seasonal)):
                    continue
                if seasonal == "M" and not positive or (trend[0] == "M" and seasonal == "A"):
                    continue
                forms.append(Form.parse(error + trend + seasonal))
    return forms


# ---- the recursion ------------------------------------------------------------------------

def predict_step(level: Tensor, trend: Tensor, s_old: Tensor, phi: Tensor, *, mul_trend: bool,
                 mul_season: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(B_t, L_t, mu_t): the damped trend, the level forecast and the one-step forecast."""
    damped = trend ** phi if mul_trend else phi * trend
    base = level * damped if mul_trend else level + damped
    return damped, base, base * s_old if mul_season else base + s_old


def update_step(y: Tensor, mu: Tensor, level: Tensor, damped: Tensor, base: Tensor, s_old: Tensor,
                alpha: Tensor, beta: Tensor, gamma: Tensor, *, mul_trend: bool, mul_season: bool,
                statsmodels_season: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(l_t, b_t, s_t) after observing y_t: the y-form updates of the module docstring,
    rewritten in the one-step error r_t = y_t - mu_t (so that each is one multiply-add):

        q_t = r_t / s_{t-m} (M season) or r_t;   l_t = L_t + alpha q_t
        b_t = B_t + beta q_t / l_{t-1} (M trend) or B_t + beta q_t
        s_t = s_{t-m} + gamma r_t (A season), + gamma r_t / L_t (M, "hyndman"),
              + gamma r_t / l_t (M, "statsmodels")
    """
    error = y - mu
    scaled = error / s_old if mul_season else error
    new_level = torch.addcmul(base, alpha, scaled)
    new_trend = torch.addcmul(damped, beta, scaled / level if mul_trend else scaled)
    if mul_season:
        error = error / (new_level if statsmodels_season else base)
    return new_level, new_trend, torch.addcmul(s_old, gamma, error)


def ets_filter(y: Tensor, alpha: Tensor, beta: Tensor, gamma: Tensor, phi: Tensor, level: Tensor,
               trend: Tensor, seasonal: Tensor, *, mul_trend: bool, mul_season: bool,
               statsmodels_season: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run the recursion over B series of one trend and season type at once.

    Args:
        y: (B, T) observations.
        alpha, beta, gamma, phi: (B,) parameters (beta = 0 without a trend, gamma = 0 without a
            season, phi = 1 undamped).
        level, trend: (B,) initial states l_0, b_0 (b_0 = 0 without a trend).
        seasonal: (B, m) initial seasonal states s_{-1}, ..., s_{-m} (zeros, m = 1, for none).
    Returns:
        (B, T) one-step forecasts mu_t, and the final level (B,), trend (B,) and seasonal
        states (B, m) in the same order (s_{T-1}, ..., s_{T-m}).
    """
    m = seasonal.shape[1]
    ring = list(seasonal.flip(1).unbind(1))            # ring[t % m] holds s_{t-m}
    flags = dict(mul_trend=mul_trend, mul_season=mul_season)
    forecasts = []
    for t, y_t in enumerate(y.unbind(1)):
        s_old = ring[t % m]
        damped, base, mu = predict_step(level, trend, s_old, phi, **flags)
        forecasts.append(mu)
        level, trend, ring[t % m] = update_step(y_t, mu, level, damped, base, s_old, alpha, beta, gamma,
                                                statsmodels_season=statsmodels_season, **flags)
    steps = y.shape[1]
    final_seasonal = torch.stack([ring[(steps - 1 - i) % m] for i in range(m)], 1)
    return torch.stack(forecasts, 1), level, trend, final_seasonal


def gaussian_loglik(y: Tensor, mu: Tensor, mask: Tensor, mul_error: Tensor) -> tuple[Tensor, Tensor]:
    """(B,) concentrated log-likelihoods and (B,) sums of squared residuals r_t (module
    docstring) of forecasts ``mu`` (B, T) of ``y`` (B, T) where ``mask`` (B, T) is 1."""
    scale = torch.where(mul_error[:, None], mu, torch.ones_like(mu))
    residual = (y - mu) / scale
    n = mask.sum(1)
    sse = (residual.square() * mask).sum(1)
    magnitude = torch.where(mu == 0, torch.full_like(mu, 1e-32), mu.abs())       # as statsmodels
    log_scale = (torch.log(torch.where(mul_error[:, None], magnitude, torch.ones_like(mu))) * mask).sum(1)
    mse = (sse / n).clamp_min(1e-300)            # a perfectly fitted series stays finite
    return -n / 2 * (torch.log(2 * math.pi * mse) + 1) - log_scale, sse


def ets_loglik(y: Tensor, form: Form | str, alpha: float, beta: float, gamma: float, phi: float,
               level: float, trend: float, seasonal: Sequence[float] = (),
               season_update: str = "hyndman") -> float:
    """The log-likelihood of one series (T,) under ``form`` with these parameters and initial
    states (beta, gamma, phi, trend, seasonal ignored where the form lacks them)."""
    form = Form.parse(form) if isinstance(form, str) else form
    as_row = lambda value: torch.tensor([float(value)], dtype=torch.float64)      # noqa: E731
    seasonal_row = (torch.tensor([list(seasonal)], dtype=torch.float64) if form.season != "N"
                    else torch.zeros(1, 1, dtype=torch.float64))
    mu, *_ = ets_filter(y[None], as_row(alpha), as_row(beta if form.trend != "N" else 0.0),
                        as_row(gamma if form.season != "N" else 0.0), as_row(phi if form.damped else 1.0),
                        as_row(level), as_row(trend if form.trend != "N" else 0.0), seasonal_row,
                        mul_trend=form.trend == "M", mul_season=form.season == "M",
                        statsmodels_season=season_update == "statsmodels")
    loglik, _ = gaussian_loglik(y[None], mu, torch.ones_like(mu), torch.tensor([form.error == "M"]))
    return float(loglik[0])


def ets_loglik_ref(y: Sequence[float], form: Form | str, alpha: float, beta: float, gamma: float, phi: float,
                   level: float, trend: float, seasonal: Sequence[float] = (),
                   season_update: str = "hyndman") -> float:
    """The specification of ``ets_loglik``: one plain loop in the error-correction form of
    Hyndman et al. (2008, Table 2.3), one case per error type."""
    form = Form.parse(form) if isinstance(form, str) else form
    phi = phi if form.damped else 1.0
    b, beta = (trend, beta) if form.trend != "N" else (0.0, 0.0)
    s = list(seasonal) if form.season != "N" else [0.0]          # s[-1] is s_{t-m}
    l, mus, residuals = level, [], []
    for y_t in y:
        s_old = s[-1]
        damped = b ** phi if form.trend == "M" else phi * b
        base = l * damped if form.trend == "M" else l + damped
        mu = base * s_old if form.season == "M" else base + s_old
        if form.error == "A":
            e = y_t - mu
            k_level = 1 / s_old if form.season == "M" else 1.0
            new_l = base + alpha * e * k_level
            new_b = damped + beta * e * k_level / (l if form.trend == "M" else 1.0)
            if form.season == "A":
                new_s = s_old + gamma * e
            elif season_update == "statsmodels":
                new_s = s_old + gamma * e / new_l
            else:
                new_s = s_old + gamma * e / base
        else:
            e = (y_t - mu) / mu
            new_l = base * (1 + alpha * e) if form.season == "M" else base + alpha * mu * e
            if form.trend == "M":
                new_b = damped * (1 + beta * e) if form.season == "M" else damped + beta * mu * e / l
            else:
                new_b = damped + beta * (base if form.season == "M" else mu) * e
            if form.season == "A" or form.season == "N":
                new_s = s_old + gamma * mu * e
            elif season_update == "statsmodels":
                new_s = s_old * (1 + gamma * e / (1 + alpha * e))
            else:
                new_s = s_old * (1 + gamma * e)
        if form.season == "N":
            new_s = 0.0
        mus.append(mu)
        residuals.append(e)
        l, b, s = new_l, new_b, [new_s] + s[:-1]
    n = len(mus)
    loglik = -n / 2 * (math.log(2 * math.pi * sum(r * r for r in residuals) / n) + 1)
    return loglik - (sum(math.log(abs(mu)) for mu in mus) if form.error == "M" else 0.0)


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


# ---- the packed parameters of one fitted series ------------------------------------------------

CODES = {"error": "AM", "trend": "NAM", "season": "NAM"}
HEADER = 12            # form (4), alpha, beta, gamma, phi, sigma2, loglik, level, trend


def pack(form: Form, alpha: float, beta: float, gamma: float, phi: float, sigma2: float, loglik: float,
         level: float, trend: float, seasonal: Sequence[float]) -> Tensor:
    """The (12 + m,) float64 layout ``ETS.fit_series`` returns:
    [error (0 A, 1 M), trend (0 N, 1 A, 2 M), damped (0/1), season (0 N, 1 A, 2 M),
    alpha, beta, gamma, phi (1 undamped), sigma^2, log-likelihood, l_0, b_0,
    s_{-1}, ..., s_{-m} (only for a seasonal form)]; beta, gamma, b_0 are 0 and phi 1 where
    the form lacks them."""
    beta, trend = (beta, trend) if form.trend != "N" else (0.0, 0.0)      # canonical: absent parts are inert
    gamma, phi = gamma if form.season != "N" else 0.0, phi if form.damped else 1.0
    head = [CODES["error"].index(form.error), CODES["trend"].index(form.trend), float(form.damped),
            CODES["season"].index(form.season), alpha, beta, gamma, phi, sigma2, loglik, level, trend]
    return torch.tensor(head + (list(seasonal) if form.season != "N" else []), dtype=torch.float64)


def unpack(parameters: Tensor) -> tuple[Form, dict[str, float], Tensor]:
    """(form, {alpha, beta, gamma, phi, sigma2, loglik, level, trend}, (m,) seasonal) of ``pack``."""
    values = parameters.tolist()
    error, trend, damped, season = (int(v) for v in values[:4])
    form = Form(CODES["error"][error], CODES["trend"][trend], bool(damped), CODES["season"][season])
    names = ("alpha", "beta", "gamma", "phi", "sigma2", "loglik", "level", "trend")
    return form, dict(zip(names, values[4:HEADER])), parameters[HEADER:]


# ---- a batched L-BFGS ------------------------------------------------------------------------

def minimise(objective: Callable[[Tensor, Tensor], Tensor], x0: Tensor, active: Tensor, *, max_iterations: int,
             tolerance: float, memory: int = 8) -> tuple[Tensor, Tensor]:
    """Minimise B independent functions at once by L-BFGS (Nocedal & Wright 2006, Alg. 7.4)
    with a backtracking Armijo line search (quadratic interpolation) per row.

    Args:
        objective: (x (R, P), rows (R,)) -> (R,) values of the functions ``rows`` at x,
            differentiable, row i depending on x[i] only; +inf where infeasible.
        x0: (B, P) starting points with finite values.
        active: (B, P) true for the coordinates that move.
    Returns:
        (B, P) minimisers and (B,) minima. A row stops when an iteration lowers its value by
        less than ``tolerance`` * max(1, |f|), when its line search fails from steepest descent,
        or after ``max_iterations``; only rows still running are evaluated.
    """
    def value_and_grad(x: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        x = x.detach().requires_grad_(True)
        f = objective(x, rows)
        (g,) = torch.autograd.grad(torch.where(torch.isfinite(f), f, torch.zeros_like(f)).sum(), x)
        return f.detach(), torch.where(torch.isfinite(g) & active[rows], g, torch.zeros_like(g))

    every = torch.arange(x0.shape[0])
    x = x0.clone()
    f, g = value_and_grad(x, every)
    history: list[tuple[Tensor, Tensor, Tensor]] = []       # (s, y, rho) over all rows; rho = 0: no pair
    h0 = torch.ones_like(f)
    fresh = torch.ones_like(f, dtype=torch.bool)            # no usable curvature pair yet
    done = ~torch.isfinite(f)
    for _ in range(max_iterations):
        rows = (~done).nonzero().squeeze(1)
        if len(rows) == 0:
            break
        x_r, f_r, g_r, fresh_r = x[rows], f[rows], g[rows], fresh[rows]
        pairs = [(s[rows], y[rows], rho[rows]) for s, y, rho in history]
        q, coefficients = -g_r, []
        for s, y, rho in reversed(pairs):                   # the two-loop recursion
            c = rho * (s * q).sum(1)
            q = q - c[:, None] * y
            coefficients.append(c)
        direction = q * torch.where(fresh_r, torch.ones_like(f_r), h0[rows])[:, None]
        for (s, y, rho), c in zip(pairs, reversed(coefficients)):
            direction = direction + s * (c - rho * (y * direction).sum(1))[:, None]
        slope = (g_r * direction).sum(1)
        uphill = slope >= 0
        direction = torch.where(uphill[:, None], -g_r, direction)
        slope = torch.where(uphill, -(g_r * g_r).sum(1), slope)
        first = (1 / g_r.norm(dim=1).clamp_min(1e-12)).clamp_max(1.0)
        step = torch.where(fresh_r | uphill, first, torch.ones_like(f_r))
        # no step moves a logit by more than MAX_LOGIT_STEP: a jump deep into a bound's flat tail
        # (where the gradient vanishes) could never come back
        reach = direction[:, :4].abs().amax(1).clamp_min(1e-300)
        step = torch.minimum(step, MAX_LOGIT_STEP / reach)
        searching = slope < 0
        new_x, new_f, new_g = x_r.clone(), f_r.clone(), g_r.clone()
        for _ in range(30):
            trial = x_r + step[:, None] * direction
            trial_f, trial_g = value_and_grad(trial, rows)
            accept = searching & torch.isfinite(trial_f) & (trial_f <= f_r + 1e-4 * step * slope)
            new_x = torch.where(accept[:, None], trial, new_x)
            new_f, new_g = torch.where(accept, trial_f, new_f), torch.where(accept[:, None], trial_g, new_g)
            searching = searching & ~accept
            if not searching.any():
                break
            # the minimum of the quadratic through f, the slope and the trial, kept in [0.1, 0.5] step
            curvature = (trial_f - f_r - slope * step).clamp_min(1e-300)
            guess = torch.where(torch.isfinite(trial_f), -slope * step * step / (2 * curvature), 0.1 * step)
            step = torch.where(searching, torch.minimum(torch.maximum(guess, 0.1 * step), 0.5 * step), step)
        failed = searching | (slope >= 0)
        s, y = new_x - x_r, new_g - g_r
        sy = (s * y).sum(1)
        usable = ~failed & (sy > 1e-12 * s.norm(dim=1) * y.norm(dim=1))
        rho = torch.where(usable, 1 / torch.where(usable, sy, torch.ones_like(sy)), torch.zeros_like(sy))
        forget = torch.zeros_like(done)
        forget[rows] = failed                                # a failed search restarts from steepest descent
        history = [(hs, hy, torch.where(forget, torch.zeros_like(hr), hr)) for hs, hy, hr in history]
        entry = (torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(f))
        entry[0][rows], entry[1][rows], entry[2][rows] = s, y, rho
        history = (history + [entry])[-memory:]
        h0[rows] = torch.where(usable, sy / (y * y).sum(1).clamp_min(1e-300), h0[rows])
        gain = f_r - new_f
        done[rows] = (failed & fresh_r) | (~failed & (gain <= tolerance * new_f.abs().clamp_min(1.0)))
        fresh[rows] = failed | (fresh_r & ~usable)
        x[rows], f[rows], g[rows] = new_x, new_f, new_g
    return x, f


# ---- fitting forms to series ------------------------------------------------------------------

def squash(u: Tensor, bounds: tuple[float, float]) -> Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * torch.sigmoid(u)


def unsquash(value: float, bounds: tuple[float, float]) -> float:
    p = (value - bounds[0]) / (bounds[1] - bounds[0])
    return math.log(p / (1 - p))


def fit_rows(series: Sequence[np.ndarray], forms: Sequence[Form], season: int, *, season_update: str,
             max_iterations: int, tolerance: float) -> list[Tensor]:
    """Fit ``forms[i]`` to ``series[i]`` by maximum likelihood, every row at once; the packed
    parameters (``pack``) of each row, its log-likelihood -inf where no feasible fit was found.

    Each series is divided by its mean absolute value first (the likelihood only shifts), the
    rows of one trend and season type share one recursion, and ``minimise`` runs over
    x = (logit alpha, logit beta/alpha, logit gamma/(1-alpha), logit phi, l_0, b_0, s_{-1},
    ..., s_{-(m-1)}), each logit onto the usual bounds: alpha, beta/alpha, gamma/(1-alpha) in
    [1e-4, 0.9999], phi in [0.8, 0.98]. s_{-m} makes the seasonal states sum to 0 (A) or
    average 1 (M).
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
    x0[:, 1] = unsquash(START["beta_star"], ALPHA_BOUNDS)
    x0[:, 2], x0[:, 3] = unsquash(START["gamma_star"], ALPHA_BOUNDS), unsquash(START["phi"], PHI_BOUNDS)
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
        alpha = squash(x[:, 0], ALPHA_BOUNDS)
        beta = alpha * squash(x[:, 1], ALPHA_BOUNDS) * has_trend[rows]
        gamma = (1 - alpha) * squash(x[:, 2], ALPHA_BOUNDS) * has_season[rows]
        phi = torch.where(damped[rows], squash(x[:, 3], PHI_BOUNDS), torch.ones_like(alpha))
        free = x[:, 6:]
        last = (m - free.sum(1) if mul_season else -free.sum(1))[:, None]
        return alpha, beta, gamma, phi, x[:, 4], x[:, 5], torch.cat([free, last], 1)

    def loglik(x: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        mu, *_ = ets_filter(y[rows], *model(x, rows), mul_trend=mul_trend, mul_season=mul_season,
                            statsmodels_season=season_update == "statsmodels")
        value, sse = gaussian_loglik(y[rows], mu, mask[rows], mul_error[rows])
        infeasible = mul_error[rows] & ((mu <= 0) & (mask[rows] > 0)).any(1)
        return torch.where(infeasible, torch.full_like(value, -math.inf), value), sse

    def objective(x: Tensor, rows: Tensor) -> Tensor:
        value = loglik(x, rows)[0]
        return torch.where(torch.isfinite(value), -value / lengths[rows], torch.full_like(value, math.inf))

    every = torch.arange(rows)
    with torch.no_grad():                   # the likelihood can be multimodal in alpha: start at the best
        starts = [x0.index_fill(1, torch.tensor([0]), unsquash(alpha, ALPHA_BOUNDS)) for alpha in START_ALPHAS]
        values = torch.stack([objective(start, every) for start in starts])                  # (A, B)
        values = torch.where(torch.isnan(values), torch.full_like(values, math.inf), values)
        x0 = torch.stack(starts)[values.argmin(0), every]
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
