"""The design of a Prophet-style model for one series: its time axis, trend changepoints and the
columns of its regressor matrix (Fourier seasonalities, holiday indicators, extra regressors),
over the history and over the forecast horizon. ``seqlab.forecast.prophet`` fits and forecasts
with it; everything here is a function of the series and the config alone, so that a model
loaded from a checkpoint rebuilds the same design from the series it forecasts.

Time (Taylor and Letham 2018, section 3): a timestamp is ``d`` days since 1970-01-01 (a decimal
year x, as R's ``ts`` writes it, is d = 365.25 (x - 1970)); a series without timestamps counts
steps, d = 0, 1, ..., T - 1. The trend's time is t = (d - d_1) / (d_T - d_1), 0 to 1 over the
history.

Changepoints (Prophet's ``set_changepoints``): with hist = floor(T changepoint_range) and S =
min(n_changepoints, hist - 1), the changepoints are the times t_i at the positions
round(linspace(0, hist - 1, S + 1))[1:] (numpy's round, half to even); the changepoint matrix is
A[i, j] = 1 if t_i >= s_j.

Fourier seasonality of period P (days, or steps without timestamps) and order N (eq. 5):
columns sin(2 pi n d / P), cos(2 pi n d / P) for n = 1 .. N, in that interleaved order. With
timestamps the yearly (P = 365.25, N = 10), weekly (7, 3) and daily (1, 4) seasonalities are on
by Prophet's rules: yearly when the history spans at least 730 days, weekly when it spans at
least 14 days and the shortest step is under 7 days, daily when it spans at least 2 days and the
shortest step is under a day; a config order overrides the rule (0: off). Without timestamps the
one seasonality is the task's period m in steps, order min(season_order, m // 2) (higher orders
alias lower ones at integer steps).

Holidays (section 3.3): each config entry ``name:YYYY-MM-DD[:lower:upper]`` adds, for every day
offset o in [lower, upper], an indicator of the days (calendar dates of the timestamps) equal to
the holiday's date plus o; entries sharing a name share their columns, one per (name, offset),
in sorted order. A column is 1 at every timestamp of a matching day (all 24 of an hourly series).

Extra regressors: the columns of ``Series.exog`` (T, K), standardised as Prophet's ``auto`` does:
(x - mean) / std (sample std, ddof 1) over the history, except a binary 0/1 column or a
constant one, which are kept as they are; the forecast uses ``Series.future_exog`` with the
history's mean and std.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from seqlab.data.series import Series, infer_frequency
from seqlab.errors import ConfigError, DataError

if TYPE_CHECKING:
    from seqlab.forecast.prophet import ProphetConfig

SECONDS_PER_DAY = 86400.0
DAYS_PER_YEAR = 365.25
# name -> (period in days, default Fourier order), Prophet's built-in seasonalities.
BUILTIN_SEASONALITIES = {"yearly": (DAYS_PER_YEAR, 10), "weekly": (7.0, 3), "daily": (1.0, 4)}


@dataclass(frozen=True)
class Holiday:
    """One dated holiday: its name, its date and the day offsets [lower, upper] it affects."""

    name: str
    day: date
    lower: int
    upper: int


def parse_holiday(entry: str, lower: int, upper: int, field: str = "ProphetConfig.holidays") -> Holiday:
    """A holiday from ``name:YYYY-MM-DD`` (with the default window [lower, upper]) or
    ``name:YYYY-MM-DD:lower:upper``; ``ConfigError`` naming ``field`` for anything else."""
    parts = entry.split(":")
    usage = "write each as name:YYYY-MM-DD or name:YYYY-MM-DD:lower:upper (e.g. christmas:2020-12-25:-1:1)"
    if len(parts) not in (2, 4) or not parts[0].strip():
        raise ConfigError(f"{field}: cannot read holiday {entry!r}; {usage}")
    try:
        day = date.fromisoformat(parts[1].strip())
    except ValueError:
        raise ConfigError(f"{field}: holiday {entry!r} has a date {parts[1]!r} that is not a valid YYYY-MM-DD; "
                          f"{usage}") from None
    if len(parts) == 4:
        try:
            lower, upper = int(parts[2]), int(parts[3])
        except ValueError:
            raise ConfigError(f"{field}: holiday {entry!r} has a window that is not two integers; {usage}") from None
    if lower > 0 or upper < 0:
        raise ConfigError(f"{field}: holiday {entry!r} needs lower <= 0 <= upper (days before and after), got "
                          f"[{lower}, {upper}]")
    return Holiday(parts[0].strip(), day, lower, upper)


@dataclass(frozen=True)
class Design:
    """The fixed inputs of one series' model (float64 numpy arrays).

    Attributes:
        t: (T,) the history's scaled time, 0 to 1.
        t_future: (H,) the forecast steps' scaled time (empty when no horizon was asked).
        changepoints: (S,) the changepoint times s_j.
        features: (T, K) the regressor matrix X.
        future_features: (H, K) its rows over the horizon.
        prior_scales: (K,) the Normal prior's scale of each column's coefficient.
        multiplicative: (K,) true for a column that multiplies the trend (y = g (1 + X_m b) + X_a b).
        y_scale: max |y| (1 for an all-zero series), Prophet's ``absmax`` scaling.
        names: (K,) the columns' names, "weekly_sin1", "christmas_+0", "exog_2".
    """

    t: np.ndarray
    t_future: np.ndarray
    changepoints: np.ndarray
    features: np.ndarray
    future_features: np.ndarray
    prior_scales: np.ndarray
    multiplicative: np.ndarray
    y_scale: float
    names: tuple[str, ...]


# ---- time ------------------------------------------------------------------------------------

def day_axis(series: Series, horizon: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """((T,) the history in days since 1970-01-01 (or steps), (H,) the horizon's, whether the
    series has timestamps). The horizon follows the timestamps' frequency (hourly to yearly,
    months added by the calendar)."""
    n = len(series)
    stamps = series.timestamps
    if stamps is None:
        return np.arange(n, dtype=np.float64), np.arange(n, n + horizon, dtype=np.float64), False
    stamps = np.asarray(stamps)
    where = f"series {series.id!r}"
    if np.issubdtype(stamps.dtype, np.number):                   # decimal years
        years = stamps.astype(np.float64)
        if n > 1 and not (np.diff(years) > 0).all():
            raise DataError(f"{where}: the timestamps must increase")
        step = (years[-1] - years[0]) / (n - 1) if n > 1 else 1.0
        future = years[-1] + step * np.arange(1, horizon + 1)
        return (years - 1970.0) * DAYS_PER_YEAR, (future - 1970.0) * DAYS_PER_YEAR, True
    if not np.issubdtype(stamps.dtype, np.datetime64):
        raise DataError(f"{where}: timestamps must be numpy datetime64 or decimal years, got {stamps.dtype}")
    seconds = stamps.astype("datetime64[s]")
    if n > 1 and not (np.diff(seconds.astype(np.int64)) > 0).all():
        raise DataError(f"{where}: the timestamps must increase")
    future = future_stamps(seconds, horizon, infer_frequency(seconds, where) if n > 1 and horizon else "daily")
    return days_since_epoch(seconds), days_since_epoch(future), True


def days_since_epoch(stamps: np.ndarray) -> np.ndarray:
    return stamps.astype("datetime64[s]").astype(np.int64).astype(np.float64) / SECONDS_PER_DAY


def future_stamps(stamps: np.ndarray, horizon: int, frequency: str) -> np.ndarray:
    """(H,) datetime64[s] timestamps after the last of ``stamps`` at ``frequency``; a monthly
    series of month ends continues at month ends."""
    last = stamps[-1]
    fixed = {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400}
    if frequency in fixed:
        return last + np.arange(1, horizon + 1) * np.timedelta64(fixed[frequency], "s")
    step = {"monthly": 1, "quarterly": 3, "yearly": 12}[frequency]
    month = last.astype("datetime64[M]")
    months = month + np.arange(1, horizon + 1) * step
    one_day = np.timedelta64(1, "D")
    time_of_day = last - last.astype("datetime64[D]").astype("datetime64[s]")
    if (last.astype("datetime64[D]") + one_day).astype("datetime64[M]") != month:          # a month end
        return ((months + 1).astype("datetime64[D]") - one_day).astype("datetime64[s]") + time_of_day
    return months.astype("datetime64[s]") + (last - month.astype("datetime64[s]"))


def changepoint_times(t: np.ndarray, n_changepoints: int, changepoint_range: float) -> np.ndarray:
    """(S,) the changepoints: the times at round(linspace(0, hist - 1, S + 1))[1:], hist =
    floor(T changepoint_range), S = min(n_changepoints, hist - 1) (none when S <= 0)."""
    history = int(math.floor(len(t) * changepoint_range))
    count = min(n_changepoints, history - 1)
    if count <= 0:
        return np.zeros(0, dtype=np.float64)
    return t[np.linspace(0, history - 1, count + 1).round().astype(int)[1:]]


def changepoint_matrix(t: np.ndarray, changepoints: np.ndarray) -> np.ndarray:
    """(T, S) A[i, j] = 1 if t_i >= s_j."""
    return (t[:, None] >= changepoints[None, :]).astype(np.float64)


def piecewise_linear(t: Tensor, k: Tensor, m: Tensor, delta: Tensor, changepoints: Tensor) -> Tensor:
    """g(t) = (k + a(t)' delta) t + (m + a(t)' gamma), gamma_j = -s_j delta_j (eq. 4): the rate
    changes by delta_j at s_j and the offsets keep g continuous. t (T,), delta and changepoints
    (S,), or a batch (N, S) of each with t (T,) giving (N, T)."""
    after = (t[..., None, :] >= changepoints[..., :, None]).to(t.dtype)          # (..., S, T)
    rate = k + (delta[..., :, None] * after).sum(-2)
    offset = m - (changepoints[..., :, None] * delta[..., :, None] * after).sum(-2)
    return rate * t + offset


# ---- the regressor columns -------------------------------------------------------------------

def fourier_features(days: np.ndarray, period: float, order: int) -> np.ndarray:
    """(T, 2 order) sin(2 pi n d / P), cos(2 pi n d / P) for n = 1 .. order, interleaved."""
    angles = 2.0 * np.pi * np.arange(1, order + 1)[None, :] * days[:, None] / period     # (T, order)
    return np.stack([np.sin(angles), np.cos(angles)], axis=-1).reshape(len(days), 2 * order)


def seasonalities(days: np.ndarray, timed: bool, season: int,
                  config: ProphetConfig) -> list[tuple[str, float, int]]:
    """(name, period, order) of the seasonalities a series gets (see the module docstring)."""
    if not timed:
        order = min(config.season_order, season // 2)
        return [(f"season{season}", float(season), order)] if order > 0 else []
    span = days[-1] - days[0]
    steps = np.diff(days)
    shortest = steps.min() if len(steps) else math.inf
    automatic = {"yearly": span >= 730, "weekly": span >= 14 and shortest < 7, "daily": span >= 2 and shortest < 1}
    chosen = []
    for name, (period, default_order) in BUILTIN_SEASONALITIES.items():
        setting = getattr(config, f"{name}_seasonality")
        order = (default_order if automatic[name] else 0) if setting == "auto" else int(setting)
        if order > 0:
            chosen.append((name, period, order))
    return chosen


def holiday_features(days: np.ndarray, holidays: tuple[Holiday, ...]) -> tuple[np.ndarray, list[str]]:
    """((T, C) indicators, C names "name_+o"): column (name, o) is 1 on the calendar days equal
    to one of the holiday's dates plus o."""
    epoch_days = np.floor(days + 1e-9).astype(np.int64)          # the calendar day of each timestamp
    columns: dict[tuple[str, int], np.ndarray] = {}
    for holiday in holidays:
        base = (holiday.day - date(1970, 1, 1)).days
        for offset in range(holiday.lower, holiday.upper + 1):
            column = columns.setdefault((holiday.name, offset), np.zeros(len(days)))
            column[epoch_days == base + offset] = 1.0
    keys = sorted(columns)
    matrix = np.stack([columns[key] for key in keys], axis=1) if keys else np.zeros((len(days), 0))
    return matrix, [f"{name}_{offset:+d}" for name, offset in keys]


def regressor_scaling(exog: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((K,) means, (K,) scales) that standardise each column as Prophet's ``auto``: a binary
    0/1 or constant column keeps mean 0, scale 1."""
    means, scales = np.zeros(exog.shape[1]), np.ones(exog.shape[1])
    for j, column in enumerate(exog.T):
        distinct = np.unique(column)
        if len(distinct) < 2 or set(distinct.tolist()) == {0.0, 1.0}:
            continue
        means[j], scales[j] = column.mean(), column.std(ddof=1)
    return means, scales


def build_design(series: Series, season: int, config: ProphetConfig, horizon: int = 0) -> Design:
    """The ``Design`` of ``series`` (see the module docstring), over the next ``horizon`` steps
    too.

    Raises:
        DataError: holidays without timestamps; exogenous regressors that are not finite, or
            whose future values (``Series.future_exog``) are missing or cover fewer than
            ``horizon`` steps.
    """
    days, future_days, timed = day_axis(series, horizon)
    span = days[-1] - days[0]
    scale = span if span > 0 else 1.0
    t, t_future = (days - days[0]) / scale, (future_days - days[0]) / scale
    blocks, future_blocks, priors, names = [], [], [], []
    for name, period, order in seasonalities(days, timed, season, config):
        blocks.append(fourier_features(days, period, order))
        future_blocks.append(fourier_features(future_days, period, order))
        priors += [config.seasonality_prior_scale] * (2 * order)
        names += [f"{name}_{kind}{n}" for n in range(1, order + 1) for kind in ("sin", "cos")]
    holidays = config.parsed_holidays()
    if holidays:
        if not timed:
            raise DataError(f"series {series.id!r} has no timestamps, so its holidays cannot be placed; give the "
                            "data dates (a long-format file with a ds column) or no holidays")
        past, columns = holiday_features(days, holidays)
        blocks.append(past)
        future_blocks.append(holiday_features(future_days, holidays)[0])
        priors += [config.holidays_prior_scale] * len(columns)
        names += columns
    if series.exog is not None:
        exog = series.exog.double().numpy()
        if not np.isfinite(exog).all():
            raise DataError(f"series {series.id!r} has a missing or non-finite exogenous regressor value")
        means, scales = regressor_scaling(exog)
        blocks.append((exog - means) / scales)
        future_blocks.append((check_future_exog(series, horizon) - means) / scales)
        priors += [config.seasonality_prior_scale] * exog.shape[1]
        names += [f"exog_{j}" for j in range(exog.shape[1])]
    features = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(series), 0))
    future = np.concatenate(future_blocks, axis=1) if future_blocks else np.zeros((horizon, 0))
    y_scale = float(series.values.abs().max())
    return Design(t, t_future, changepoint_times(t, config.n_changepoints, config.changepoint_range), features,
                  future, np.array(priors, dtype=np.float64),
                  np.full(len(names), config.seasonality_mode == "multiplicative"), y_scale or 1.0, tuple(names))


def check_future_exog(series: Series, horizon: int) -> np.ndarray:
    """(H, K) the first ``horizon`` rows of the series' future regressors, or ``DataError``."""
    if horizon == 0:
        return np.zeros((0, series.exog.shape[1]))
    future = series.future_exog
    if future is None or len(future) < horizon:
        have = "none" if future is None else f"{len(future)} steps"
        raise DataError(f"series {series.id!r} has exogenous regressors, so forecasting {horizon} steps needs their "
                        f"future values (Series.future_exog) for at least {horizon} steps; it has {have}")
    values = future[:horizon].double().numpy()
    if not np.isfinite(values).all():
        raise DataError(f"series {series.id!r} has a missing or non-finite future regressor value")
    return values


def as_tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
