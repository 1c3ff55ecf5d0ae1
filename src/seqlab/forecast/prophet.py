"""A Prophet-style structural model: piecewise-linear trend, Fourier seasonalities, holidays
and extra regressors, fitted per series by maximum a posteriori (Taylor and Letham 2018,
"Forecasting at scale", The American Statistician 72(1); Prophet's Stan model).

The model, on y scaled by y_scale = max |y| and time scaled to t in [0, 1] over the history
(``seqlab.forecast.prophet_features`` builds t, the changepoints s (S,) and the regressor
matrix X (T, K) with its prior scales sigma_j)::

    y(t) = g(t) + X_a(t) beta + eps,            additive mode
    y(t) = g(t) (1 + X_m(t) beta) + eps,         multiplicative mode (seasonalities, holidays and
                                                 extra regressors all multiply the trend)
    g(t) = (k + a(t)' delta) t + (m + a(t)' gamma),  a_j(t) = 1[t >= s_j],  gamma_j = -s_j delta_j

with priors k, m ~ N(0, 5^2), delta_j ~ Laplace(0, tau) (tau = ``changepoint_prior_scale``),
beta_j ~ N(0, sigma_j^2) (``seasonality_prior_scale`` for the Fourier and regressor columns,
``holidays_prior_scale`` for the holiday indicators) and noise eps ~ N(0, sigma^2), sigma ~
half-N(0, 0.5^2). The fit minimises, as Stan's optimiser does for Prophet (no Jacobian for the
log transform of sigma, the constants of each density dropped, so that it equals -lp__)::

    J = (k^2 + m^2) / 50 + sum |delta| / tau + sum beta_j^2 / (2 sigma_j^2) + 2 sigma^2
        + T log sigma + sum (y - mu)^2 / (2 sigma^2)

over (k, m, log sigma, delta, beta) in float64, starting where Prophet starts (k = (y_T - y_1) /
(t_T - t_1), m = y_1, delta = beta = 0, sigma = 1). ``negative_log_posterior`` (torch) is that
objective, the specification, tested equal to the lp__ of Prophet's Stan model. ``fit_map``
minimises it exactly, by alternating a lasso in (k, m, delta, beta) (solved by feature-sign
search; a Gauss-Newton step of it in the multiplicative mode) with the closed-form best sigma:
L-BFGS, which Stan runs for Prophet, stalls at the kinks of |delta|, 0.15 to 0.5 above the
minimum of J on the test series; the fit is tested against the optimality conditions of J
(autograd on the specification) and to reach a J at least as low as Stan's.

Forecasts (Prophet's ``predict``): the point forecast is the trend extended with the fitted
rates plus the seasonal, holiday and regressor terms, without noise (Prophet's yhat). Quantiles
come from ``uncertainty_samples`` simulated paths: future changepoints arrive as a Poisson
process with the history's rate (S per unit of t) on (1, t_H], each changing the rate by a
Laplace(0, mean |delta| + 1e-8) amount, and Gaussian noise N(0, sigma^2) is added at every step;
the paths are drawn from ``series_generator(series)``, so that they depend on the series alone.

A series' parameters (P,) = [k, m, sigma, delta (S), beta (K)] in the scaled units; the
changepoints, the features and y_scale follow from the series and the config, so a loaded model
forecasts from them without refitting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from seqlab.data.series import Series
from seqlab.errors import ConfigError, DataError
from seqlab.forecast.base import LocalForecaster, sample_quantiles, series_generator
from seqlab.forecast.prophet_features import (Design, Holiday, as_tensor, build_design, changepoint_matrix,
                                              parse_holiday, piecewise_linear)
from seqlab.registry import register

TREND_PRIOR_SCALE = 5.0                 # k, m ~ N(0, 5^2) in Prophet's Stan model
SIGMA_PRIOR_SCALE = 0.5                 # sigma ~ half-N(0, 0.5^2)
LAPLACE_FLOOR = 1e-8                    # Prophet adds this to mean |delta|, the simulated changes' scale
SIGMA2_FLOOR = 1e-12                    # sigma >= 1e-6 max|y|: J has no minimum where the model interpolates


@dataclass(frozen=True, kw_only=True)
class ProphetConfig:
    """Prophet's settings, with its defaults.

    Attributes:
        n_changepoints: potential trend changepoints, placed uniformly in the first
            changepoint_range of the history (fewer when the series is short).
        changepoint_range: the fraction of the history that holds the changepoints.
        changepoint_prior_scale: tau, the scale of the Laplace prior on the rate changes.
        seasonality_mode: "additive" (y = g + s) or "multiplicative" (y = g (1 + s)).
        yearly_seasonality: "auto" (on when the timestamps span 2 years) or a Fourier order (0: off).
        weekly_seasonality: "auto" (on for sub-weekly data spanning 2 weeks) or a Fourier order.
        daily_seasonality: "auto" (on for sub-daily data spanning 2 days) or a Fourier order.
        season_order: the Fourier order of the seasonality of period m steps that a series
            without timestamps gets (capped at m // 2; m is the task's seasonal period).
        seasonality_prior_scale: the Normal prior's scale on the Fourier and regressor coefficients.
        holidays: named dates, each "name:YYYY-MM-DD" or "name:YYYY-MM-DD:lower:upper" (days
            before and after, lower <= 0 <= upper); each (name, day offset) is one indicator.
        holiday_lower_window: the lower window of the entries that give none (<= 0).
        holiday_upper_window: the upper window of the entries that give none (>= 0).
        holidays_prior_scale: the Normal prior's scale on the holiday coefficients.
        uncertainty_samples: the simulated paths behind the quantile forecasts.
        max_iterations: the most rounds of the fit's block minimisation (see ``fit_map``).
        tolerance: the fit stops when a round lowers J by less than this, relative to |J|.
    """

    n_changepoints: int = 25
    changepoint_range: float = 0.8
    changepoint_prior_scale: float = 0.05
    seasonality_mode: Literal["additive", "multiplicative"] = "additive"
    yearly_seasonality: Literal["auto"] | int = "auto"
    weekly_seasonality: Literal["auto"] | int = "auto"
    daily_seasonality: Literal["auto"] | int = "auto"
    season_order: int = 10
    seasonality_prior_scale: float = 10.0
    holidays: tuple[str, ...] = ()
    holiday_lower_window: int = 0
    holiday_upper_window: int = 0
    holidays_prior_scale: float = 10.0
    uncertainty_samples: int = 1000
    max_iterations: int = 1000
    tolerance: float = 1e-13

    def __post_init__(self) -> None:
        for name in ("n_changepoints", "season_order", "max_iterations"):
            if getattr(self, name) < (1 if name == "max_iterations" else 0):
                raise ConfigError(f"ProphetConfig.{name} must be >= {1 if name == 'max_iterations' else 0}, "
                                  f"got {getattr(self, name)}")
        if not 0 < self.changepoint_range <= 1:
            raise ConfigError(f"ProphetConfig.changepoint_range must be in (0, 1], got {self.changepoint_range}")
        for name in ("changepoint_prior_scale", "seasonality_prior_scale", "holidays_prior_scale", "tolerance"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"ProphetConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.seasonality_mode not in ("additive", "multiplicative"):
            raise ConfigError(f"ProphetConfig.seasonality_mode must be 'additive' or 'multiplicative', got "
                              f"{self.seasonality_mode!r}")
        for name in ("yearly_seasonality", "weekly_seasonality", "daily_seasonality"):
            value = getattr(self, name)
            if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"ProphetConfig.{name} must be 'auto' or a Fourier order >= 0, got {value!r}")
        if self.uncertainty_samples < 2:
            raise ConfigError(f"ProphetConfig.uncertainty_samples must be >= 2, got {self.uncertainty_samples}")
        if self.holiday_lower_window > 0 or self.holiday_upper_window < 0:
            raise ConfigError("ProphetConfig.holiday_lower_window must be <= 0 and holiday_upper_window >= 0, got "
                              f"{self.holiday_lower_window} and {self.holiday_upper_window}")
        self.parsed_holidays()                      # a date that cannot be read fails here

    def parsed_holidays(self) -> tuple[Holiday, ...]:
        return tuple(parse_holiday(entry, self.holiday_lower_window, self.holiday_upper_window)
                     for entry in self.holidays)


@dataclass(frozen=True)
class Problem:
    """One series' MAP problem as float64 tensors: y (T,) scaled, t (T,), changepoints (S,),
    A (T, S), X (T, K), prior scales (K,), multiplicative (K,) as 0/1, tau."""

    y: Tensor
    t: Tensor
    changepoints: Tensor
    A: Tensor
    X: Tensor
    prior_scales: Tensor
    multiplicative: Tensor
    tau: float

    @classmethod
    def of(cls, design: Design, values: Tensor, tau: float) -> Problem:
        return cls(values.double() / design.y_scale, as_tensor(design.t), as_tensor(design.changepoints),
                   as_tensor(changepoint_matrix(design.t, design.changepoints)), as_tensor(design.features),
                   as_tensor(design.prior_scales), as_tensor(design.multiplicative.astype(np.float64)), tau)

    @cached_property
    def sizes(self) -> tuple[int, int]:
        return self.A.shape[1], self.X.shape[1]


def unpack(theta: Tensor, sizes: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(k, m, third entry, delta (S,), beta (K,)) of a parameter vector."""
    n_changepoints, _ = sizes
    return theta[0], theta[1], theta[2], theta[3: 3 + n_changepoints], theta[3 + n_changepoints:]


def fitted_mean(problem: Problem, k: Tensor, m: Tensor, delta: Tensor, beta: Tensor) -> Tensor:
    """(T,) mu = g (1 + X_m beta) + X_a beta, g = (k + A delta) t + (m - A (s * delta))."""
    trend = (k + problem.A @ delta) * problem.t + (m - problem.A @ (problem.changepoints * delta))
    terms_m = problem.X @ (beta * problem.multiplicative)
    terms_a = problem.X @ (beta * (1 - problem.multiplicative))
    return trend * (1 + terms_m) + terms_a


def negative_log_posterior(problem: Problem, theta: Tensor) -> Tensor:
    """J(k, m, log sigma, delta, beta) of the module docstring (equal to -lp__ of Prophet's Stan
    model at sigma = exp(log sigma)); theta (3 + S + K,)."""
    k, m, log_sigma, delta, beta = unpack(theta, problem.sizes)
    residual = problem.y - fitted_mean(problem, k, m, delta, beta)
    sigma2 = torch.exp(2 * log_sigma)
    return ((k * k + m * m) / (2 * TREND_PRIOR_SCALE ** 2) + delta.abs().sum() / problem.tau
            + (beta * beta / (2 * problem.prior_scales ** 2)).sum() + sigma2 / (2 * SIGMA_PRIOR_SCALE ** 2)
            + len(problem.y) * log_sigma + (residual * residual).sum() / (2 * sigma2))


def initial_theta(problem: Problem) -> Tensor:
    """Prophet's start: the line through the first and last points, no changes, sigma = 1."""
    y, t = problem.y, problem.t
    k = (y[-1] - y[0]) / (t[-1] - t[0]) if t[-1] > t[0] else torch.zeros((), dtype=torch.float64)
    theta = torch.zeros(3 + sum(problem.sizes), dtype=torch.float64)
    theta[0], theta[1] = k, y[0] - k * t[0]
    return theta


# ---- the MAP fit -------------------------------------------------------------------------------
# J is a sum of quadratics and |delta|: L-BFGS, what Stan runs for Prophet, stalls at the kinks
# of |delta| (on a daily test series Stan's optimum is 0.2 above the minimum of J). The fit here is
# exact instead: for a fixed sigma the additive model's mean is linear in w = (k, m, delta, beta)
# (columns t, 1, (t - s_j)_+ and X: a(t)' delta t - a(t)' (s delta) = sum_j delta_j (t - s_j)_+), so
# sigma^2 J is a convex quadratic plus (sigma^2 / tau) |delta|_1, a lasso solved exactly by
# feature-sign search (Lee, Battle, Raina and Ng 2007, "Efficient sparse coding algorithms");
# for fixed w the best sigma solves 4 sigma^4 + T sigma^2 - RSS = 0. The two steps alternate,
# each lowering J, until it stops falling. In the multiplicative mode the mean is bilinear in the
# trend's (k, m, delta) and beta: the lasso step is then a Gauss-Newton one, on the mean
# linearised at the current w, halved until it lowers J.

def lasso(gram: np.ndarray, target: np.ndarray, penalised: np.ndarray, penalty: float,
          start: np.ndarray) -> np.ndarray:
    """argmin_w 1/2 w' G w - b' w + penalty sum_{j penalised} |w_j| for a positive definite G
    (p, p), b (p,), by feature-sign search from ``start`` (p,): solve the quadratic on the
    active set with the signs fixed, step back to the best point where a sign would change,
    and activate the zero coefficient with the largest violation |grad_j| > penalty."""
    w = start.copy()
    signs = np.where(penalised, np.sign(w), 0.0)
    w[penalised & (signs == 0)] = 0.0

    def value(point: np.ndarray) -> float:
        return float(0.5 * point @ gram @ point - target @ point + penalty * np.abs(point[penalised]).sum())

    tolerance = 1e-11 * max(1.0, float(np.abs(target).max()), penalty)
    for _ in range(20 * len(w) + 100):
        active = ~penalised | (signs != 0)
        new = np.zeros_like(w)
        new[active] = solve(gram[np.ix_(active, active)], target[active] - penalty * signs[active])
        crossing = penalised & (signs != 0) & (new * signs <= 0)
        if crossing.any():                     # the quadratic's minimum flips a sign: take the best breakpoint
            gap = w[crossing] - new[crossing]
            steps = np.clip(np.divide(w[crossing], gap, out=np.ones_like(gap), where=gap != 0), 0.0, 1.0)
            step = min([*steps.tolist(), 1.0], key=lambda s: value(w + s * (new - w)))
            w = w + step * (new - w)
            w[np.flatnonzero(crossing)[steps == step]] = 0.0
            signs = np.where(penalised, np.sign(w), 0.0)
            continue
        w = new
        gradient = gram @ w - target
        violation = np.where(penalised & (signs == 0), np.abs(gradient) - penalty, -np.inf)
        worst = int(np.argmax(violation))
        if not violation[worst] > tolerance:
            return w
        signs[worst] = -np.sign(gradient[worst])
    return w


def solve(matrix: np.ndarray, right: np.ndarray) -> np.ndarray:
    """matrix^-1 right; the least-squares solution where the matrix is singular (a short series
    whose columns outnumber its observations)."""
    try:
        return np.linalg.solve(matrix, right)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(matrix, right, rcond=None)[0]


def best_sigma2(rss: float, n: int) -> float:
    """The sigma^2 minimising T log sigma + RSS / (2 sigma^2) + 2 sigma^2: the root of
    4 s^2 + T s - RSS = 0, written without cancellation."""
    return 2.0 * rss / (n + math.sqrt(n * n + 16.0 * rss))


def fit_map(problem: Problem, max_iterations: int, tolerance: float) -> Tensor:
    """The MAP (k, m, log sigma, delta, beta) from Prophet's start, by rounds of a lasso step in
    w = (k, m, delta, beta) and the best sigma for it (see above); stops when a round lowers J
    by less than ``tolerance`` (relative)."""
    y, t = problem.y.numpy(), problem.t.numpy()
    changepoints, X = problem.changepoints.numpy(), problem.X.numpy()
    n_changepoints, n_columns = problem.sizes
    multiplicative = problem.multiplicative.numpy() > 0
    trend_columns = np.concatenate([t[:, None], np.ones((len(t), 1)), np.maximum(t[:, None] - changepoints, 0.0)], 1)
    precision = np.r_[np.full(2, TREND_PRIOR_SCALE ** -2), np.zeros(n_changepoints), problem.prior_scales.numpy() ** -2]
    penalised = np.r_[False, False, np.ones(n_changepoints, dtype=bool), np.zeros(n_columns, dtype=bool)]
    split = 2 + n_changepoints

    def mean(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T,) mu and (T,) the trend g at w."""
        trend, beta = trend_columns @ w[:split], w[split:]
        return trend * (1 + X @ (beta * multiplicative)) + X @ (beta * ~multiplicative), trend

    def value(w: np.ndarray, sigma2: float) -> float:
        """J at (w, sigma^2)."""
        rss = float(((y - mean(w)[0]) ** 2).sum())
        return float(0.5 * (precision * w * w).sum() + np.abs(w[penalised]).sum() / problem.tau
                     + rss / (2 * sigma2) + 2 * sigma2 + 0.5 * len(y) * math.log(sigma2))

    def jacobian(w: np.ndarray) -> np.ndarray:
        """(T, P) d mu / d w: the mean is linear in the trend's (k, m, delta) and in beta apart."""
        mu, trend = mean(w)
        return np.concatenate([trend_columns * (1 + X @ (w[split:] * multiplicative))[:, None],
                               X * np.where(multiplicative, trend[:, None], 1.0)], 1)

    start = initial_theta(problem).numpy()
    w, sigma2 = np.r_[start[:2], start[3:]], 1.0
    Z = jacobian(w)
    current = value(w, sigma2)
    for _ in range(max_iterations):
        previous = current
        if multiplicative.any():
            Z = jacobian(w)
        target = Z.T @ (y - mean(w)[0] + Z @ w)                   # the mean linearised at w
        step = lasso(Z.T @ Z + sigma2 * np.diag(precision), target, penalised, sigma2 / problem.tau, w) - w
        for _ in range(40):                                       # exact (length 1) for the additive mode
            if value(w + step, sigma2) <= current:
                w = w + step
                break
            step = step / 2
        sigma2 = max(best_sigma2(float(((y - mean(w)[0]) ** 2).sum()), len(y)), SIGMA2_FLOOR)
        current = value(w, sigma2)
        if previous - current <= tolerance * max(1.0, abs(current)):
            break
    return torch.from_numpy(np.r_[w[:2], 0.5 * math.log(sigma2), w[2:]])


@register("prophet", task="forecast", config=ProphetConfig, trains="fit", in_default_compare=False)
class Prophet(LocalForecaster):
    """Prophet (Taylor and Letham 2018): piecewise-linear trend, Fourier seasonality, holidays,
    regressors, fitted by MAP; quantiles by simulated trend changes and noise.

    Parameters of a series: (3 + S + K,) [k, m, sigma, delta, beta] on the scaled data.
    """

    def __init__(self, config: ProphetConfig | None = None) -> None:
        super().__init__()
        self.config = config or ProphetConfig()

    def min_length(self, season: int) -> int:
        """More observations than the line's and the period-m seasonality's coefficients: with
        fewer the model interpolates the history and J has no minimum (it falls as sigma -> 0)."""
        return 3 + 2 * min(self.config.season_order, season // 2)

    def design(self, series: Series, season: int, horizon: int = 0) -> Design:
        return build_design(series, season, self.config, horizon)

    def fit_one(self, series: Series, season: int) -> Tensor:
        self.check_length(series, season)
        design = self.design(series, season)
        problem = Problem.of(design, series.values, self.config.changepoint_prior_scale)
        if float(series.values.max()) == float(series.values.min()):
            theta = initial_theta(problem)           # Prophet: a constant series is its start, sigma ~ 0
            theta[0], theta[2] = 0.0, math.log(1e-9)
        else:
            theta = fit_map(problem, self.config.max_iterations, self.config.tolerance)
        theta[2] = theta[2].exp()
        return theta

    def fit_series(self, values: Tensor, season: int) -> Tensor:
        return self.fit_one(Series("series", values.double()), season)

    def forecast_series(self, values: Tensor, season: int, parameters: Tensor, horizon: int,
                        quantiles: Tensor) -> tuple[Tensor, Tensor]:
        return self.forecast_one(Series("series", values.double()), season, parameters, horizon, quantiles)

    def forecast_one(self, series: Series, season: int, parameters: Tensor, horizon: int,
                     quantiles: Tensor) -> tuple[Tensor, Tensor]:
        design = self.design(series, season, horizon)
        sizes = (len(design.changepoints), len(design.prior_scales))
        if len(parameters) != 3 + sum(sizes):
            raise DataError(f"series {series.id!r}: {len(parameters)} fitted parameters do not fit its design "
                            f"(3 + {sizes[0]} changepoints + {sizes[1]} regressor columns); refit it")
        k, m, sigma, delta, beta = unpack(parameters.double(), sizes)
        t = as_tensor(design.t_future)
        X = as_tensor(design.future_features)
        multiplicative = as_tensor(design.multiplicative.astype(np.float64))
        terms_m, terms_a = X @ (beta * multiplicative), X @ (beta * (1 - multiplicative))
        changepoints = as_tensor(design.changepoints)
        trend = piecewise_linear(t, k, m, delta, changepoints)                      # (H,)
        point = (trend * (1 + terms_m) + terms_a) * design.y_scale
        if len(quantiles) == 0:
            return point, torch.zeros(0, horizon, dtype=torch.float64)
        paths = self.sample_paths(series, trend, t, delta, sigma, len(changepoints), terms_m, terms_a)
        _, band = sample_quantiles(paths * design.y_scale, quantiles)
        return point, band

    def sample_paths(self, series: Series, trend: Tensor, t: Tensor, delta: Tensor, sigma: Tensor,
                     n_changepoints: int, terms_m: Tensor, terms_a: Tensor) -> Tensor:
        """(N, H) scaled paths: the trend with simulated changepoints (Poisson rate S per unit
        of t on (1, t_H], changes ~ Laplace(0, mean |delta| + 1e-8)) times (1 + X_m beta), plus
        X_a beta and N(0, sigma^2) noise."""
        generator = series_generator(series)
        n_samples, horizon = self.config.uncertainty_samples, len(t)
        last = float(t.max())
        rate = n_changepoints * max(last - 1.0, 0.0)
        counts = torch.poisson(torch.full((n_samples,), rate, dtype=torch.float64), generator)   # (N,)
        most = int(counts.max())
        scale = (delta.abs().mean() if len(delta) else torch.zeros((), dtype=torch.float64)) + LAPLACE_FLOOR
        times = 1.0 + torch.rand(n_samples, most, generator=generator, dtype=torch.float64) * (last - 1.0)
        exponentials = torch.empty(2, n_samples, most, dtype=torch.float64).exponential_(generator=generator)
        changes = scale * (exponentials[0] - exponentials[1])          # Laplace(0, scale): a difference of exponentials
        changes = changes * (torch.arange(most)[None, :] < counts[:, None])                       # (N, most)
        extra = (changes[:, :, None] * (t[None, None, :] - times[:, :, None]).clamp_min(0)).sum(1)  # (N, H)
        noise = sigma * torch.randn(n_samples, horizon, generator=generator, dtype=torch.float64)
        return (trend + extra) * (1 + terms_m) + terms_a + noise
