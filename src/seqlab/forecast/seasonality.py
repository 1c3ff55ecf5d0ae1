"""M4's seasonal adjustment: a 90% autocorrelation test for seasonality at lag m, and classical
multiplicative decomposition (as R's ``decompose``), which Naive2, SES, Holt, Damped, Comb and
Theta are applied after in the M4 competition's benchmarks (`Benchmarks and Evaluation.R`).

The test (``is_seasonal``): a series of n >= 3m values is seasonal when its lag-m sample
autocorrelation r_m exceeds, in absolute value, 1.645 sqrt((1 + 2 sum_{k<m} r_k^2) / n), the
one-sided 90% limit of Bartlett's formula for the variance of r_m under an MA(m-1); the
autocorrelations are R's ``acf``, computed up to lag floor(10 log10 n) (a period beyond that
has no estimate and is not seasonal).

The decomposition (``seasonal_indices``): the trend is the centred moving average of order m
(2 x m for even m: weights 1/(2m), 1/m, ..., 1/m, 1/(2m)); the ratios y_t / trend_t averaged
over each position of the cycle (positions counted from the first observation) give the indices,
normalised to mean 1. A seasonal series is divided by its indices; forecasts of the adjusted
series are multiplied by the indices of the positions they fall on.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from seqlab.errors import DataError

TEST_CRITICAL_VALUE = 1.645           # one-sided 90%


def autocorrelations(values: Tensor, max_lag: int) -> Tensor:
    """(max_lag,) sample autocorrelations r_1 .. r_max_lag: sum_t (y_t - ybar)(y_{t+k} - ybar) /
    sum_t (y_t - ybar)^2 (R's ``acf``)."""
    centred = values.double() - values.double().mean()
    denominator = centred @ centred
    if denominator == 0:
        return torch.zeros(max_lag, dtype=torch.float64)
    return torch.stack([centred[:-k] @ centred[k:] for k in range(1, max_lag + 1)]) / denominator


def is_seasonal(values: Tensor, season: int) -> bool:
    """M4's test: whether ``values`` are seasonal with period ``season`` (always False for a
    period of 1 or a series shorter than three periods)."""
    n = len(values)
    if season <= 1 or n < 3 * season or season > math.floor(10 * math.log10(n)):
        return False
    r = autocorrelations(values, season)
    limit = TEST_CRITICAL_VALUE / math.sqrt(n) * math.sqrt(1 + 2 * float(r[: season - 1].square().sum()))
    return abs(float(r[season - 1])) > limit


def centred_moving_average(values: Tensor, season: int) -> Tensor:
    """(T - 2 floor(m/2),) the centred moving average of order m (2 x m for even m) at positions
    floor(m/2) .. T - 1 - floor(m/2), where it is defined."""
    if season % 2:
        weights = torch.full((season,), 1.0 / season, dtype=torch.float64)
    else:
        weights = torch.full((season + 1,), 1.0 / season, dtype=torch.float64)
        weights[0] = weights[-1] = 0.5 / season
    return values.double().unfold(0, len(weights), 1) @ weights


def seasonal_indices(values: Tensor, season: int) -> Tensor:
    """(m,) multiplicative seasonal indices by position in the cycle (position 0: that of the
    first value), with mean 1.

    Raises:
        DataError: fewer than two full periods, or a moving average of 0 (a ratio to a zero
            trend is undefined: multiplicative decomposition needs positive data).
    """
    if len(values) < 2 * season:
        raise DataError(f"seasonal decomposition with period {season} needs at least {2 * season} values, "
                        f"got {len(values)}")
    trend = centred_moving_average(values, season)
    if (trend <= 0).any():
        raise DataError("multiplicative seasonal decomposition needs a positive trend; the series has "
                        "non-positive values: forecast it without seasonal adjustment")
    half = season // 2
    ratios = values.double()[half: half + len(trend)] / trend
    positions = (torch.arange(len(trend)) + half) % season
    sums = torch.zeros(season, dtype=torch.float64).index_add_(0, positions, ratios)
    counts = torch.bincount(positions, minlength=season).double()
    figure = sums / counts
    return figure / figure.mean()


def seasonal_adjustment(values: Tensor, season: int, horizon: int) -> tuple[Tensor, Tensor, Tensor]:
    """M4's adjustment: (adjusted values (T,), in-sample indices (T,), indices of the next
    ``horizon`` positions (H,)); all indices are 1 when the series is not seasonal by
    ``is_seasonal``."""
    n = len(values)
    if not is_seasonal(values, season):
        ones = torch.ones(n + horizon, dtype=torch.float64)
        return values.double(), ones[:n], ones[n:]
    figure = seasonal_indices(values, season)
    indices = figure[torch.arange(n + horizon) % season]
    return values.double() / indices[:n], indices[:n], indices[n:]
