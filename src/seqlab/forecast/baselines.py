"""The benchmarks every forecaster must beat: naive, seasonal naive, drift, and M4's Naive2,
SES and Theta (Makridakis et al. 2020; the competition's `Benchmarks and Evaluation.R`).

- naive: every future value is the last one, y_{n+h} = y_n; a random walk, whose h-step
  forecast has standard deviation sigma sqrt(h).
- seasonal naive: the value one period earlier, y_{n+h} = y_{n+h-m(k+1)} with k = floor((h-1)/m);
  standard deviation sigma sqrt(k + 1).
- drift: the line through the first and last values, y_n + h (y_n - y_1)/(n - 1); standard
  deviation sigma sqrt(h (1 + h/(n - 1))) (Hyndman and Athanasopoulos, "Forecasting: principles
  and practice", section 5.5).
- Naive2 and SES: naive and simple exponential smoothing of the seasonally adjusted series,
  multiplied back by the seasonal indices (``seasonality.seasonal_adjustment``: M4's 90% test,
  then classical multiplicative decomposition).
- Theta (Assimakopoulos and Nikolopoulos 2000, in M4's classic form): on the adjusted series,
  the least-squares line (theta line 0) and the line 2 y_t - line_t (theta line 2, which doubles
  the curvature) smoothed by SES; the forecast is the average of the SES forecast of line 2 and
  the extrapolated line 0, negative values set to 0, times the seasonal indices. Hyndman and
  Billah (2003) showed this equals SES with a drift of half the line's slope, which gives its
  intervals: standard deviation sigma sqrt(1 + (h - 1) alpha^2) with sigma from the in-sample
  one-step errors of the theta forecasts.

sigma is estimated from each method's in-sample one-step residuals, sum of squares over their
count less the parameters fitted (none for naive, the drift for drift). Intervals are Gaussian
(``gaussian_quantiles``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from seqlab.data.series import Series
from seqlab.forecast.base import LocalForecaster, gaussian_quantiles
from seqlab.forecast.ets import ETS, ETSConfig
from seqlab.forecast.seasonality import seasonal_adjustment
from seqlab.forecast.ses import SESFit, fit_ses, run_ses
from seqlab.registry import register

def residual_sigma(residuals: Tensor, n_parameters: int = 0) -> float:
    """The standard deviation of one-step errors: sqrt(sum e^2 / (count - n_parameters))."""
    return math.sqrt(float(residuals.square().sum()) / max(len(residuals) - n_parameters, 1))


def naive_forecast(values: Tensor, horizon: int, quantiles: Tensor) -> tuple[Tensor, Tensor]:
    steps = torch.arange(1, horizon + 1, dtype=torch.float64)
    mean = values[-1].expand(horizon).clone()
    sigma = residual_sigma(values[1:] - values[:-1])
    return mean, gaussian_quantiles(mean, sigma * steps.sqrt(), quantiles)


def seasonal_naive_forecast(values: Tensor, season: int, horizon: int, quantiles: Tensor) -> tuple[Tensor, Tensor]:
    steps = torch.arange(horizon)
    mean = values[-season:][steps % season]
    sigma = residual_sigma(values[season:] - values[:-season])
    periods = (steps // season + 1).double()
    return mean, gaussian_quantiles(mean, sigma * periods.sqrt(), quantiles)


def drift_forecast(values: Tensor, horizon: int, quantiles: Tensor) -> tuple[Tensor, Tensor]:
    n = len(values)
    slope = (values[-1] - values[0]) / (n - 1)
    steps = torch.arange(1, horizon + 1, dtype=torch.float64)
    mean = values[-1] + slope * steps
    sigma = residual_sigma(values[1:] - values[:-1] - slope, n_parameters=1)
    return mean, gaussian_quantiles(mean, sigma * (steps * (1 + steps / (n - 1))).sqrt(), quantiles)


def ses_forecast(values: Tensor, horizon: int, quantiles: Tensor, fit: SESFit) -> tuple[Tensor, Tensor]:
    """SES given its ``fit`` to ``values``: the last level, standard deviation
    sigma sqrt(1 + (h - 1) alpha^2) (ETS(A,N,N))."""
    steps = torch.arange(1, horizon + 1, dtype=torch.float64)
    mean = torch.full((horizon,), fit.level, dtype=torch.float64)
    sigma = residual_sigma(values - fit.fitted, n_parameters=2)
    return mean, gaussian_quantiles(mean, sigma * (1 + (steps - 1) * fit.alpha ** 2).sqrt(), quantiles)


def theta_lines(values: Tensor, horizon: int) -> tuple[Tensor, Tensor]:
    """(theta line 0: the least-squares line over the n values and the next ``horizon``, (n + H,);
    theta line 2: 2 y_t - line_t, (n,))."""
    n = len(values)
    time = torch.arange(1, n + horizon + 1, dtype=torch.float64)
    centred = time[:n] - time[:n].mean()                  # least squares in closed form (deterministic)
    slope = (centred @ (values - values.mean())) / (centred @ centred)
    line = values.mean() + slope * (time - time[:n].mean())
    return line, 2 * values - line[:n]


def theta_forecast(values: Tensor, horizon: int, quantiles: Tensor, fit: SESFit) -> tuple[Tensor, Tensor]:
    """M4's classic Theta of a (seasonally adjusted) series, given the SES ``fit`` of its theta
    line 2; see the module docstring."""
    n = len(values)
    line, _ = theta_lines(values, horizon)
    fitted = 0.5 * fit.fitted + 0.5 * line[:n]
    mean = (0.5 * fit.level + 0.5 * line[n:]).clamp_min(0.0)
    steps = torch.arange(1, horizon + 1, dtype=torch.float64)
    sigma = residual_sigma(values - fitted, n_parameters=2)
    return mean, gaussian_quantiles(mean, sigma * (1 + (steps - 1) * fit.alpha ** 2).sqrt(), quantiles)


@dataclass(frozen=True, kw_only=True)
class BaselineConfig:
    """A benchmark forecaster: it has no settings."""


class Benchmark(LocalForecaster):
    """A benchmark built from its config (they have no settings)."""

    def __init__(self, config: BaselineConfig = BaselineConfig()):
        super().__init__()
        self.config = config


@register("naive", task="forecast", config=BaselineConfig, trains="fit", in_default_compare=False)
class Naive(Benchmark):
    """Naive: every future value is the last one (random walk intervals)."""

    def min_length(self, season: int) -> int:
        return 2

    def forecast_series(self, values, season, parameters, horizon, quantiles):
        return naive_forecast(values, horizon, quantiles)


@register("snaive", task="forecast", config=BaselineConfig, trains="fit")
class SeasonalNaive(Benchmark):
    """Seasonal naive: the value one seasonal period earlier."""

    def min_length(self, season: int) -> int:
        return season + 1

    def forecast_series(self, values, season, parameters, horizon, quantiles):
        return seasonal_naive_forecast(values, season, horizon, quantiles)


@register("drift", task="forecast", config=BaselineConfig, trains="fit", in_default_compare=False)
class Drift(Benchmark):
    """Drift: the line through the first and last values."""

    def min_length(self, season: int) -> int:
        return 3

    def forecast_series(self, values, season, parameters, horizon, quantiles):
        return drift_forecast(values, horizon, quantiles)


class ExactSES(Benchmark):
    """Simple exponential smoothing fitted exactly (``ses.fit_ses``); parameters (alpha, l_0)."""

    def min_length(self, season: int) -> int:
        return 3

    def fit_series(self, values: Tensor, season: int) -> Tensor:
        fit = fit_ses(values)
        return torch.tensor([fit.alpha, fit.level0], dtype=torch.float64)

    def forecast_series(self, values, season, parameters, horizon, quantiles):
        return ses_forecast(values, horizon, quantiles, run_ses(values, *parameters.tolist()))


class ClassicTheta(Benchmark):
    """M4's classic Theta of a series as it is; parameters (alpha, l_0) of theta line 2's SES."""

    def min_length(self, season: int) -> int:
        return 4

    def fit_series(self, values: Tensor, season: int) -> Tensor:
        fit = fit_ses(theta_lines(values, 0)[1])
        return torch.tensor([fit.alpha, fit.level0], dtype=torch.float64)

    def forecast_series(self, values, season, parameters, horizon, quantiles):
        return theta_forecast(values, horizon, quantiles, run_ses(theta_lines(values, 0)[1], *parameters.tolist()))


class SeasonallyAdjusted(LocalForecaster):
    """A non-seasonal forecaster applied as M4 applies its benchmarks: to the seasonally
    adjusted series (``seasonality.seasonal_adjustment``), its forecasts multiplied back by the
    indices of the positions they fall on (quantiles scale with the positive indices). The
    parameters are the inner model's, fitted to the adjusted series with period 1."""

    def __init__(self, inner: LocalForecaster, config: BaselineConfig = BaselineConfig()):
        super().__init__()
        self.inner, self.config = inner, config

    def min_length(self, season: int) -> int:
        return self.inner.min_length(1)

    def fit_many(self, series: Sequence[Series], season: int) -> list[Tensor]:
        for one in series:
            self.check_length(one, season)
        adjusted = [Series(one.id, seasonal_adjustment(one.values, season, 0)[0]) for one in series]
        return self.inner.fit_many(adjusted, 1)

    def forecast_series(self, values, season, parameters, horizon, quantiles):
        adjusted, _, future = seasonal_adjustment(values, season, horizon)
        mean, bands = self.inner.forecast_series(adjusted, 1, parameters, horizon, quantiles)
        return mean * future, bands * future


@register("naive2", task="forecast", config=BaselineConfig, trains="fit")
class Naive2(SeasonallyAdjusted):
    """M4's Naive2: naive on the seasonally adjusted series, reseasonalised."""

    def __init__(self, config: BaselineConfig = BaselineConfig()):
        super().__init__(Naive(), config)


@register("ses", task="forecast", config=BaselineConfig, trains="fit")
class SES(SeasonallyAdjusted):
    """M4's SES: simple exponential smoothing of the seasonally adjusted series."""

    def __init__(self, config: BaselineConfig = BaselineConfig()):
        super().__init__(ExactSES(), config)


@register("holt", task="forecast", config=BaselineConfig, trains="fit", in_default_compare=False)
class Holt(SeasonallyAdjusted):
    """M4's Holt: Holt's linear trend, ETS(A,A,N), of the seasonally adjusted series."""

    def __init__(self, config: BaselineConfig = BaselineConfig()):
        super().__init__(ETS(ETSConfig(form="AAN")), config)


@register("damped", task="forecast", config=BaselineConfig, trains="fit", in_default_compare=False)
class Damped(SeasonallyAdjusted):
    """M4's Damped: the additive damped trend, ETS(A,Ad,N), of the seasonally adjusted series."""

    def __init__(self, config: BaselineConfig = BaselineConfig()):
        super().__init__(ETS(ETSConfig(form="AAdN")), config)


@register("theta", task="forecast", config=BaselineConfig, trains="fit")
class Theta(SeasonallyAdjusted):
    """M4's classic Theta: SES of the doubled-curvature line averaged with the linear trend."""

    def __init__(self, config: BaselineConfig = BaselineConfig()):
        super().__init__(ClassicTheta(), config)


@register("comb", task="forecast", config=BaselineConfig, trains="fit", in_default_compare=False)
class Comb(Benchmark):
    """M4's Comb: the average of SES, Holt and Damped.

    Its quantiles are the average of theirs (quantile averaging; Lichtendahl, Grushka-Cockayne
    and Winkler 2013), M4 having defined none. Parameters: the three members' parameter counts,
    then their parameters, in order."""

    def __init__(self, config: BaselineConfig = BaselineConfig()):
        super().__init__(config)
        self.members = nn.ModuleList([SES(), Holt(), Damped()])

    def min_length(self, season: int) -> int:
        return max(member.min_length(season) for member in self.members)

    def fit_many(self, series: Sequence[Series], season: int) -> list[Tensor]:
        for one in series:
            self.check_length(one, season)
        by_member = [member.fit_many(series, season) for member in self.members]
        return [torch.cat([torch.tensor([len(p) for p in fits], dtype=torch.float64), *fits])
                for fits in zip(*by_member)]

    def forecast_series(self, values, season, parameters, horizon, quantiles):
        counts = [int(count) for count in parameters[: len(self.members)].tolist()]
        parts = parameters[len(self.members):].split(counts)
        forecasts = [member.forecast_series(values, season, part, horizon, quantiles)
                     for member, part in zip(self.members, parts)]
        return (torch.stack([mean for mean, _ in forecasts]).mean(0),
                torch.stack([bands for _, bands in forecasts]).mean(0))
