"""The forecaster contract: ``fit`` a panel, then ``predict(panel, horizon, quantiles)``.

Every forecaster, classical or neural, is an ``nn.Module`` with

- ``fit(task_or_panel)``: learn from the training panel (a forecasting task's, or a ``Panel``);
- ``predict(panel, horizon, quantiles=()) -> Forecast``: the mean and the asked quantiles of
  the next ``horizon`` values of every series in ``panel``.

A **local** model (naive, Theta, ETS, ARIMA: one fit per series) derives from
``LocalForecaster`` and writes two functions of one series, ``fit_series(values, season)`` (its
parameters as a float64 tensor) and ``forecast_series(values, season, parameters, horizon,
quantiles)``. ``fit`` keeps each series' parameters by id; ``predict`` uses them for a series it
has seen with the same values (and regressors) it was fitted on, and fits afresh a series it
has not seen (or whose history changed: a longer series is refitted, as a forecaster rolled
forward should be).
A saved run keeps every series' parameters (in ``model.safetensors``, see the end of
``LocalForecaster``), so a loaded model forecasts without refitting.
A **global** model (N-BEATS, PatchTST) predicts any series with one set of weights.

Quantile forecasts of the classical models come from their predictive distributions: Gaussian
with the model's h-step variance for most (``gaussian_quantiles``), simulated where the
distribution is not Gaussian.
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass
from typing import Any, Self, Sequence

import torch
from torch import Tensor, nn

from seqlab.data.series import Panel, Series, check_horizon
from seqlab.errors import ConfigError, DataError


@dataclass(frozen=True)
class Forecast:
    """Forecasts of the next ``horizon`` values of a panel's series.

    Attributes:
        ids: the series, in the order of the rows.
        mean: (S, H) float64 point forecasts (the predictive mean, or the method's point forecast).
        quantiles: q -> (S, H) float64 forecasts of the q-quantile, for each q asked.
    """

    ids: tuple[str, ...]
    mean: Tensor
    quantiles: dict[float, Tensor]

    @property
    def horizon(self) -> int:
        return self.mean.shape[1]

    def interval(self, level: float) -> tuple[Tensor, Tensor]:
        """(S, H) lower and upper bounds of the central ``level`` interval (0.95: the 2.5% and
        97.5% quantiles), which must have been asked for (``interval_quantiles(level)``)."""
        lower, upper = interval_quantiles(level)
        missing = [q for q in (lower, upper) if q not in self.quantiles]
        if missing:
            have = ", ".join(f"{q:g}" for q in sorted(self.quantiles)) or "none"
            raise ConfigError(f"a {level:.0%} interval needs the {missing[0]:g} quantile, which was not forecast "
                              f"(forecast: {have}); ask predict() for quantiles={interval_quantiles(level)}")
        return self.quantiles[lower], self.quantiles[upper]


def interval_quantiles(*levels: float) -> tuple[float, ...]:
    """The quantiles that bound central intervals of the given levels: (0.8, 0.95) ->
    (0.025, 0.1, 0.9, 0.975)."""
    quantiles = set()
    for level in levels:
        if not 0 < level < 1:
            raise ConfigError(f"an interval level must be in (0, 1), got {level}")
        quantiles |= {round((1 - level) / 2, 12), round((1 + level) / 2, 12)}
    return tuple(sorted(quantiles))


def check_quantiles(quantiles: Sequence[float]) -> Tensor:
    """(Q,) float64 quantile levels, each in (0, 1)."""
    for q in quantiles:
        if not 0 < q < 1:
            raise ConfigError(f"a quantile level must be in (0, 1), got {q}")
    return torch.tensor(list(quantiles), dtype=torch.float64)


def gaussian_quantiles(mean: Tensor, std: Tensor, quantiles: Tensor) -> Tensor:
    """(Q, H) quantiles of independent Gaussians N(mean_h, std_h^2) at levels (Q,)."""
    z = torch.special.ndtri(quantiles)                                    # (Q,)
    return mean[None, :] + z[:, None] * std[None, :]


def series_generator(series: Series, seed: int = 0) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and the series' own values, for models that forecast
    by sampling: a series' sampled forecast then depends on that series alone, not on the
    order or company it is forecast in, and is the same at every call."""
    return torch.Generator().manual_seed((int.from_bytes(digest(series.values)[:8], "little") ^ seed) % 2 ** 63)


def sample_quantiles(paths: Tensor, quantiles: Tensor) -> tuple[Tensor, Tensor]:
    """((H,) the mean, (Q, H) the empirical quantiles at levels (Q,)) of sampled paths (N, H)
    (``torch.quantile``'s linear interpolation between order statistics)."""
    return paths.mean(dim=0), torch.quantile(paths, quantiles.to(paths.dtype), dim=0)


def training_panel(task_or_panel: Any) -> Panel:
    """The panel to fit: a ``Panel`` itself, or a forecasting task's training panel."""
    if isinstance(task_or_panel, Panel):
        return task_or_panel
    panel = getattr(task_or_panel, "train_panel", None)
    if not isinstance(panel, Panel):
        raise ConfigError(f"a forecaster fits a Panel or a forecasting task, got {type(task_or_panel).__name__}")
    return panel


class LocalForecaster(nn.Module, abc.ABC):
    """Base of the models fitted to each series on its own (see the module docstring).

    A subclass defines ``fit_series``, ``forecast_series`` and ``min_length`` (and ``fit_many``
to fit many series in one batch).
    """

    def __init__(self) -> None:
        super().__init__()
        self.fitted: dict[str, tuple[bytes, Tensor]] = {}    # id -> (digest of the values fitted on, parameters)

    # ---- what a model defines ---------------------------------------------------------------

    def min_length(self, season: int) -> int:
        """The fewest observations a fit needs."""
        return 1

    def fit_series(self, values: Tensor, season: int) -> Tensor:
        """(P,) float64 parameters fitted to one series (T,); a model with no parameters returns
        an empty tensor."""
        return torch.zeros(0, dtype=torch.float64)

    @abc.abstractmethod
    def forecast_series(self, values: Tensor, season: int, parameters: Tensor, horizon: int,
                        quantiles: Tensor) -> tuple[Tensor, Tensor]:
        """(H,) point forecasts and (Q, H) quantile forecasts of one series (T,)."""

    # ---- the contract -------------------------------------------------------------------------

    def fit(self, task: Any, *, progress: bool = False, deadline: float | None = None) -> Self:
        """Fit every series of the training panel (``task``: a forecasting task or a ``Panel``);
        returns self. ``progress`` and ``deadline``, taken as by every model that fits itself,
        are not used: each fit is short."""
        panel = training_panel(task)
        parameters = self.fit_many(list(panel), panel.season)
        self.fitted = {series.id: (digest(series.values, series.exog), fitted)
                       for series, fitted in zip(panel, parameters)}
        return self

    def fit_many(self, series: Sequence[Series], season: int) -> list[Tensor]:
        """(P_i,) parameters of each series: one ``fit_one`` each, unless a model fits a batch of
        series at once (ETS, ARIMA), which it does by overriding this."""
        return [self.fit_one(one, season) for one in series]

    def predict(self, panel: Panel, horizon: int, quantiles: Sequence[float] = ()) -> Forecast:
        """Forecast every series of ``panel``: with the parameters fitted to it when its values
        are those it was fitted on, else fitted now."""
        check_horizon(horizon)
        levels = check_quantiles(quantiles)
        means, bands = [], []
        for series in panel:
            known = self.fitted.get(series.id)
            same = known is not None and known[0] == digest(series.values, series.exog)
            parameters = known[1] if same else self.fit_many([series], panel.season)[0]
            mean, band = self.forecast_one(series, panel.season, parameters, horizon, levels)
            if not (torch.isfinite(mean).all() and torch.isfinite(band).all()):
                raise DataError(f"{type(self).__name__} forecast a non-finite value for series {series.id!r}; its "
                                "values may be too extreme for this model")
            means.append(mean)
            bands.append(band)
        stacked = torch.stack(bands)                                             # (S, Q, H)
        return Forecast(panel.ids, torch.stack(means),
                        {float(q): stacked[:, i] for i, q in enumerate(levels.tolist())})

    def forecast_one(self, series: Series, season: int, parameters: Tensor, horizon: int,
                     quantiles: Tensor) -> tuple[Tensor, Tensor]:
        """``forecast_series`` of one series' values; a model that reads its timestamps or
        regressors (``Series.exog``, ``Series.future_exog``) overrides this instead."""
        return self.forecast_series(series.values, season, parameters, horizon, quantiles)

    def fit_one(self, series: Series, season: int) -> Tensor:
        """``fit_series`` of one series, after checking it is long enough."""
        self.check_length(series, season)
        return self.fit_series(series.values, season)

    def check_length(self, series: Series, season: int) -> None:
        """``DataError`` for a series shorter than ``min_length``, naming it."""
        needed = self.min_length(season)
        if len(series) < needed:
            raise DataError(f"series {series.id!r} has {len(series)} values; {type(self).__name__} with seasonal "
                            f"period {season} needs at least {needed}")

    # ---- the fitted parameters in a checkpoint --------------------------------------------------
    # A run keeps every series' parameters, so that a loaded model forecasts the series it was
    # fitted to without refitting. They travel in the state dict (and so in model.safetensors)
    # as four tensors whose sizes are the data's: the ids as UTF-8 bytes (S, L) padded with 0,
    # the SHA-256 digests of the values fitted on (S, 32), the parameter counts (S,) and the
    # parameters (S, P) padded with 0.

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if not self.fitted:
            return
        ids = [id.encode("utf-8") for id in self.fitted]
        width = max(len(id) for id in ids)
        counts = torch.tensor([len(parameters) for _, parameters in self.fitted.values()], dtype=torch.int64)
        parameters = torch.zeros(len(ids), max(int(counts.max()), 1), dtype=torch.float64)
        for row, (_, values) in enumerate(self.fitted.values()):
            parameters[row, : len(values)] = values
        destination[prefix + "series_ids"] = torch.tensor([list(id.ljust(width, b"\0")) for id in ids], dtype=torch.uint8)
        destination[prefix + "series_digests"] = torch.tensor([list(d) for d, _ in self.fitted.values()], dtype=torch.uint8)
        destination[prefix + "series_parameter_counts"] = counts
        destination[prefix + "series_parameters"] = parameters

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        names = [prefix + name for name in ("series_ids", "series_digests", "series_parameter_counts",
                                            "series_parameters")]
        if all(name in state_dict for name in names):
            ids, digests, counts, parameters = (state_dict.pop(name) for name in names)
            self.fitted = {bytes(row.tolist()).rstrip(b"\0").decode("utf-8"): (bytes(d.tolist()), values[:count].clone())
                           for row, d, count, values in zip(ids, digests, counts.tolist(), parameters.double())}
        super()._load_from_state_dict(state_dict, prefix, *args)


def digest(values: Tensor, exog: Tensor | None = None) -> bytes:
    """SHA-256 of a series' float64 values, then of its regressors if it has any: whether a
    series is the one a model was fitted to."""
    hasher = hashlib.sha256(values.double().contiguous().numpy().tobytes())
    if exog is not None:
        hasher.update(exog.double().contiguous().numpy().tobytes())
    return hasher.digest()
