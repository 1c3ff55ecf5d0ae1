"""Forecast accuracy, exactly as the M4 competition defines it (Makridakis, Spiliotis and
Assimakopoulos 2020, "The M4 Competition: 100,000 time series and 61 forecasting methods",
section 2.3 and the competition's `Evaluation.R`), plus the usual scale-dependent errors and
the scores of probabilistic forecasts.

For one series with in-sample values y_1..y_n, seasonal period m, out-of-sample values Y and
forecasts F over the horizon h:

    sMAPE = (1/h) sum_t 200 |Y_t - F_t| / (|Y_t| + |F_t|)                (percent)
    MASE  = (1/h) sum_t |Y_t - F_t| / s,     s = 1/(n-m) sum_{t>m} |y_t - y_{t-m}|
    MSIS  = (1/h) sum_t [(U_t - L_t) + 2/a (L_t - Y_t) 1{Y_t < L_t} + 2/a (Y_t - U_t) 1{Y_t > U_t}] / s

with (L, U) the central 1 - a interval (a = 0.05 in M4). A set of series is scored by the mean
over series of each; OWA, the overall weighted average, divides the set's mean sMAPE and mean
MASE by those of the Naive2 benchmark and averages the two ratios (below 1: better than
Naive2). A term with |Y_t| + |F_t| = 0 counts 0 in sMAPE (M4's data has none).

Probabilistic scores: the pinball (quantile) loss of a q-quantile forecast f of y is
max(q (y - f), (q - 1)(y - f)); CRPS is approximated from a set of quantile forecasts as twice
their mean pinball loss (the CRPS is the integral of the pinball loss over q in (0, 1), times 2;
Gneiting and Raftery 2007, eq. 21). Coverage is the fraction of values inside an interval.

Every function takes (S, H) tensors (S series, H steps) and returns per-series values (S,),
or a number for a whole set; in-sample histories are a sequence of (n_i,) tensors, one per series.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from seqlab.errors import DataError

M4_INTERVAL_ALPHA = 0.05            # M4 scored 95% intervals


def check_pair(actual: Tensor, forecast: Tensor) -> None:
    if actual.shape != forecast.shape or actual.dim() != 2:
        raise DataError(f"actual and forecast values must both be (S, H); got {tuple(actual.shape)} and "
                        f"{tuple(forecast.shape)}")
    for name, values in (("actual", actual), ("forecast", forecast)):
        if not torch.isfinite(values).all():
            raise DataError(f"the {name} values hold a NaN or an infinity (series row "
                            f"{int((~torch.isfinite(values)).any(1).nonzero()[0])}); a score of them would be NaN")


def smape(actual: Tensor, forecast: Tensor) -> Tensor:
    """(S,) M4's symmetric MAPE per series, in percent (0 to 200)."""
    check_pair(actual, forecast)
    denominator = actual.abs() + forecast.abs()
    terms = torch.where(denominator > 0, 200 * (actual - forecast).abs() / denominator.clamp_min(1e-300), 0.0)
    return terms.mean(dim=1)


def mase_scale(insample: Sequence[Tensor], season: int) -> Tensor:
    """(S,) the in-sample mean absolute seasonal-naive error s of each series (lag ``season``).

    Raises:
        DataError: a series of ``season`` values or fewer, or one whose scale is 0 (its
            in-sample values repeat exactly every ``season`` steps: MASE is undefined).
    """
    scales = []
    for index, values in enumerate(insample):
        if len(values) <= season:
            raise DataError(f"series row {index} has {len(values)} in-sample values; the MASE scale with seasonal "
                            f"period {season} needs more than {season}")
        scale = (values[season:] - values[:-season]).abs().mean()
        if scale == 0:
            raise DataError(f"series row {index} repeats exactly every {season} steps in-sample: its MASE scale is 0 "
                            "and the scaled errors are undefined")
        scales.append(scale)
    return torch.stack(scales).to(torch.float64)


def mase(insample: Sequence[Tensor], actual: Tensor, forecast: Tensor, season: int) -> Tensor:
    """(S,) M4's mean absolute scaled error per series."""
    check_pair(actual, forecast)
    return (actual - forecast).abs().mean(dim=1) / mase_scale(insample, season)


def msis(insample: Sequence[Tensor], actual: Tensor, lower: Tensor, upper: Tensor, season: int,
         alpha: float = M4_INTERVAL_ALPHA) -> Tensor:
    """(S,) M4's mean scaled interval score per series, for central 1 - ``alpha`` intervals."""
    check_pair(actual, lower)
    check_pair(actual, upper)
    width = upper - lower
    below = (lower - actual).clamp_min(0)
    above = (actual - upper).clamp_min(0)
    return (width + 2 / alpha * (below + above)).mean(dim=1) / mase_scale(insample, season)


def coverage(actual: Tensor, lower: Tensor, upper: Tensor) -> float:
    """The fraction of values inside their interval [lower, upper]."""
    check_pair(actual, lower)
    check_pair(actual, upper)
    return ((actual >= lower) & (actual <= upper)).double().mean().item()


def mae(actual: Tensor, forecast: Tensor) -> Tensor:
    """(S,) mean absolute error per series."""
    check_pair(actual, forecast)
    return (actual - forecast).abs().mean(dim=1)


def rmse(actual: Tensor, forecast: Tensor) -> Tensor:
    """(S,) root mean squared error per series."""
    check_pair(actual, forecast)
    return (actual - forecast).square().mean(dim=1).sqrt()


def mape(actual: Tensor, forecast: Tensor) -> Tensor:
    """(S,) mean absolute percentage error per series, in percent.

    Raises:
        DataError: an actual value of 0, where the percentage error is undefined.
    """
    check_pair(actual, forecast)
    if (actual == 0).any():
        raise DataError(f"MAPE is undefined for an actual value of 0 (series row {int((actual == 0).any(1).nonzero()[0])}); "
                        "use sMAPE or MASE")
    return (100 * (actual - forecast).abs() / actual.abs()).mean(dim=1)


def owa(smape_mean: float, mase_mean: float, naive2_smape: float, naive2_mase: float) -> float:
    """M4's overall weighted average of a method's set-mean sMAPE and MASE relative to Naive2's."""
    return (smape_mean / naive2_smape + mase_mean / naive2_mase) / 2


def pinball_loss(actual: Tensor, quantile_forecast: Tensor, q: float) -> Tensor:
    """(S,) mean pinball loss per series of forecasts of the ``q``-quantile."""
    check_pair(actual, quantile_forecast)
    error = actual - quantile_forecast
    return torch.maximum(q * error, (q - 1) * error).mean(dim=1)


def crps_from_quantiles(actual: Tensor, quantiles: Mapping[float, Tensor]) -> Tensor:
    """(S,) CRPS per series approximated by twice the mean pinball loss over the quantile
    forecasts given (a finer, evenly spread set of levels approximates it better)."""
    if not quantiles:
        raise DataError("the CRPS needs quantile forecasts; none were given")
    return 2 * torch.stack([pinball_loss(actual, forecast, q) for q, forecast in quantiles.items()]).mean(dim=0)


def score_forecasts(insample: Sequence[Tensor], actual: Tensor, mean: Tensor, season: int,
                    interval: tuple[Tensor, Tensor] | None = None, naive2: Tensor | None = None,
                    alpha: float = M4_INTERVAL_ALPHA) -> dict[str, float]:
    """The set's scores, each the mean over series: ``smape``, ``mase``, ``mae``, ``rmse``; with
    ``naive2`` (S, H) point forecasts, ``owa`` against them; with an ``interval`` (lower, upper),
    the central 1 - ``alpha`` one, ``msis`` and ``coverage``. Evaluation written once: the
    forecasting task, backtests and the M4 reproduction all score through it."""
    scores = {"smape": smape(actual, mean).mean().item(), "mase": mase(insample, actual, mean, season).mean().item(),
              "mae": mae(actual, mean).mean().item(), "rmse": rmse(actual, mean).mean().item()}
    if naive2 is not None:
        scores["owa"] = owa(scores["smape"], scores["mase"], smape(actual, naive2).mean().item(),
                            mase(insample, actual, naive2, season).mean().item())
    if interval is not None:
        scores["msis"] = msis(insample, actual, *interval, season, alpha).mean().item()
        scores["coverage"] = coverage(actual, *interval)
    return scores
