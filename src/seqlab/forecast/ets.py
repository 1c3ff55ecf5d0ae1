"""ETS: exponential smoothing as innovations state-space models (Hyndman et al. 2002, 2008).

``ETS(ETSConfig(form="MAdM"))`` fits one form; ``form="auto"`` fits every candidate form of
``candidate_forms`` (R's forecast::ets(model="ZZZ") set: 15 forms for positive seasonal data)
and keeps the one of least AICc. The forms, recursions and likelihood live in ``ets_fit``, the
batched maximum-likelihood fit (R's bounds, admissible region and starting values) in
``ets_estimate``; this file holds the model and its forecasts (M4's Holt and Damped are
``baselines`` on it).

Forecasts: the point forecast is the recursion run on with zero innovations (for the
multiplicative forms it is not the predictive mean, as in R). Quantiles are Gaussian with the
analytic h-step variance for the linear forms (additive error, no multiplicative component;
Hyndman et al. 2008, §6.3, class 1):

    v_h = sigma^2 (1 + sum_{j=1}^{h-1} c_j^2),  c_j = alpha + beta phi_j + gamma [j mod m = 0],
    phi_j = phi + ... + phi^j (j undamped, 0 without a trend),

and for every other form the empirical quantiles of ``n_paths`` simulated futures, drawn with a
``torch.Generator`` seeded by ``seed`` (so a forecast is reproducible). sigma^2 = SSE / (n - k)
of the fitted residuals r_t (k estimated parameters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor

from seqlab.data.series import Series
from seqlab.errors import ConfigError, DataError
from seqlab.forecast.base import LocalForecaster, gaussian_quantiles
from seqlab.forecast.ets_estimate import fit_rows
from seqlab.forecast.ets_fit import Form, candidate_forms, ets_filter, predict_step, unpack, update_step
from seqlab.registry import register


@dataclass(frozen=True, kw_only=True)
class ETSConfig:
    """Attributes:
        form: "auto" (select by ``criterion`` among the candidate forms) or one ETS form written
            error-trend-season, e.g. "ANN", "AAdN", "MAM", "MMdM" (error A/M; trend N, A, Ad,
            M, Md; season N, A, M).
        multiplicative_trend: whether "auto" also considers M and Md trends (R's default: no).
        criterion: the information criterion "auto" minimises: "aicc", "aic" or "bic".
        season_update: the multiplicative-season update: "hyndman" (Hyndman et al. 2008 and R's
            forecast::ets) or "statsmodels" (the Holt-Winters form of statsmodels' ETSModel).
        max_iterations: L-BFGS iterations per fit at most.
        tolerance: a fit stops when an iteration lowers the per-observation negative
            log-likelihood (of the series scaled to mean absolute value 1) by less than this.
        n_paths: simulated futures for the quantiles of the non-linear forms.
        seed: seed of the simulation's random generator.
    """

    form: str = "auto"
    multiplicative_trend: bool = False
    criterion: Literal["aicc", "aic", "bic"] = "aicc"
    season_update: Literal["hyndman", "statsmodels"] = "hyndman"
    max_iterations: int = 100
    tolerance: float = 1e-8
    n_paths: int = 5000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.form != "auto":
            Form.parse(self.form)
        if self.criterion not in ("aicc", "aic", "bic"):
            raise ConfigError(f"criterion must be 'aicc', 'aic' or 'bic', got {self.criterion!r}")
        if self.season_update not in ("hyndman", "statsmodels"):
            raise ConfigError(f"season_update must be 'hyndman' or 'statsmodels', got {self.season_update!r}")
        for name in ("max_iterations", "n_paths"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.tolerance > 0:
            raise ConfigError(f"tolerance must be positive, got {self.tolerance!r}")


@register("ets", task="forecast", config=ETSConfig, trains="fit", in_default_compare=False)
class ETS(LocalForecaster):
    """Exponential smoothing state-space models (ETS), one form or selected by AICc."""

    def __init__(self, config: ETSConfig = ETSConfig()) -> None:
        super().__init__()
        self.config = config
        self.form = None if config.form == "auto" else Form.parse(config.form)

    def min_length(self, season: int) -> int:
        return (self.form or Form.parse("ANN")).min_length(season)

    def fit_one(self, series: Series, season: int) -> Tensor:
        return self.fit_many([series], season)[0]

    def fit_series(self, values: Tensor, season: int) -> Tensor:
        """The packed parameters (``ets_fit.pack``: form, alpha, beta, gamma, phi, sigma^2,
        log-likelihood, l_0, b_0, s_{-1}..s_{-m}) of the form fitted, or selected, for one series."""
        return self.fit_many([Series("series", values)], season)[0]

    def fit_many(self, series: Sequence[Series], season: int) -> list[Tensor]:
        """Packed parameters of each series: every (series, candidate form) pair is one row of
        one batched fit, then each series keeps its form of least ``criterion``."""
        rows: list[tuple[int, Form]] = [(i, form) for i, one in enumerate(series)
                                        for form in self.candidates(one, season)]
        fits = fit_rows([series[i].values.numpy() for i, _ in rows], [form for _, form in rows], season,
                        season_update=self.config.season_update, max_iterations=self.config.max_iterations,
                        tolerance=self.config.tolerance)
        best: list[tuple[float, Tensor] | None] = [None] * len(series)
        for (i, form), parameters in zip(rows, fits):
            score = self.criterion(unpack(parameters)[1]["loglik"], form.n_params(season) + 1, len(series[i]))
            if math.isfinite(score) and (best[i] is None or score < best[i][0]):
                best[i] = (score, parameters)
        for one, chosen in zip(series, best):
            if chosen is None:
                raise DataError(f"no ETS form could be fitted to series {one.id!r} (every candidate's likelihood "
                                "was not finite); check it for extreme values")
        return [chosen[1] for chosen in best]

    def candidates(self, series: Series, season: int) -> list[Form]:
        """The forms to fit to ``series``; ``DataError`` when a fixed form cannot be."""
        positive = bool((series.values > 0).all())
        if self.form is None:
            forms = candidate_forms(season, positive, self.config.multiplicative_trend)
            return [form for form in forms if len(series) >= form.min_length(season)] or self.too_short(series, season)
        if self.form.season != "N" and season == 1:
            raise ConfigError(f"ETS form {self.form.code} is seasonal but the seasonal period is 1; choose a "
                              "non-seasonal form or data with a seasonal period")
        if self.form.multiplicative and not positive:
            position = int((series.values <= 0).nonzero()[0])
            raise DataError(f"series {series.id!r} has a non-positive value {float(series.values[position]):g} at "
                            f"position {position}; ETS form {self.form.code} is multiplicative and needs positive "
                            "data: choose an additive form or form='auto'")
        if len(series) < self.form.min_length(season):
            self.too_short(series, season)
        return [self.form]

    def too_short(self, series: Series, season: int) -> list[Form]:
        raise DataError(f"series {series.id!r} has {len(series)} values; {type(self).__name__} with seasonal period "
                        f"{season} needs at least {self.min_length(season)}")

    def criterion(self, loglik: float, k: int, n: int) -> float:
        """AIC, AICc or BIC of a fit with ``k`` parameters (sigma^2 counted) to ``n`` values."""
        if self.config.criterion == "bic":
            return -2 * loglik + k * math.log(n)
        aic = -2 * loglik + 2 * k
        return aic + 2 * k * (k + 1) / (n - k - 1) if self.config.criterion == "aicc" else aic

    def forecast_series(self, values: Tensor, season: int, parameters: Tensor, horizon: int,
                        quantiles: Tensor) -> tuple[Tensor, Tensor]:
        """(H,) point forecasts and (Q, H) quantiles (module docstring) of one fitted series."""
        form, p, seasonal = unpack(parameters)
        states = final_states(values, form, p, seasonal, self.config.season_update)
        point = run_forward(form, p, states, torch.zeros(1, horizon, dtype=torch.float64),
                            self.config.season_update)[0]
        if len(quantiles) == 0:
            return point, torch.zeros(0, horizon, dtype=torch.float64)
        if form.linear:
            return point, gaussian_quantiles(point, linear_variance(form, p, season, horizon).sqrt(), quantiles)
        generator = torch.Generator().manual_seed(self.config.seed)
        noise = math.sqrt(p["sigma2"]) * torch.randn(self.config.n_paths, horizon, generator=generator,
                                                     dtype=torch.float64)
        paths = run_forward(form, p, states, noise, self.config.season_update)          # (N, H)
        return point, torch.quantile(paths, quantiles, dim=0)


def final_states(values: Tensor, form: Form, p: dict[str, float], seasonal: Tensor,
                 season_update: str) -> tuple[Tensor, ...]:
    """(1,) level, (1,) trend and (1, m) seasonal states after the last of ``values`` (T,)."""
    row = lambda value: torch.tensor([value], dtype=torch.float64)          # noqa: E731
    seasonal = seasonal[None] if form.season != "N" else torch.zeros(1, 1, dtype=torch.float64)
    _, level, trend, seasonal = ets_filter(values[None], row(p["alpha"]), row(p["beta"]), row(p["gamma"]),
                                           row(p["phi"]), row(p["level"]), row(p["trend"]), seasonal,
                                           mul_trend=form.trend == "M", mul_season=form.season == "M",
                                           statsmodels_season=season_update == "statsmodels")
    return level, trend, seasonal


def run_forward(form: Form, p: dict[str, float], states: tuple[Tensor, ...], noise: Tensor,
                season_update: str) -> Tensor:
    """(N, H) futures from the final states under innovations ``noise`` (N, H): y = mu + e
    (A error) or mu (1 + e) (M error); zero noise gives the point forecasts."""
    level, trend, seasonal = (state.expand(len(noise), *state.shape[1:]) for state in states)
    ring = list(seasonal.flip(1).unbind(1))                  # ring[h % m] holds s_{T+h-m}
    flags = dict(mul_trend=form.trend == "M", mul_season=form.season == "M")
    alpha, beta, gamma, phi = (torch.tensor(p[name], dtype=torch.float64) for name in ("alpha", "beta", "gamma", "phi"))
    futures = []
    for h, e in enumerate(noise.unbind(1)):
        s_old = ring[h % len(ring)]
        damped, base, mu = predict_step(level, trend, s_old, phi, **flags)
        y = mu * (1 + e) if form.error == "M" else mu + e
        futures.append(y)
        level, trend, ring[h % len(ring)] = update_step(y, mu, level, damped, base, s_old, alpha, beta, gamma,
                                                        statsmodels_season=season_update == "statsmodels", **flags)
    return torch.stack(futures, 1)


def linear_variance(form: Form, p: dict[str, float], season: int, horizon: int) -> Tensor:
    """(H,) h-step forecast variances of a linear form (module docstring)."""
    j = torch.arange(1, horizon, dtype=torch.float64)
    if form.trend == "N":
        growth = torch.zeros_like(j)
    elif form.damped:
        growth = p["phi"] * (1 - p["phi"] ** j) / (1 - p["phi"])
    else:
        growth = j
    seasonal = (j % season == 0).to(torch.float64) if form.season != "N" else torch.zeros_like(j)
    c = p["alpha"] + p["beta"] * growth + p["gamma"] * seasonal
    return p["sigma2"] * torch.cat([torch.ones(1, dtype=torch.float64), 1 + torch.cumsum(c * c, 0)])
