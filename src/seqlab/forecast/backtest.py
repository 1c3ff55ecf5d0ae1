"""Rolling-origin evaluation (Tashman 2000, "Out-of-sample tests of forecasting accuracy"): fit
at several forecast origins, each ``step`` values earlier than the next, forecast ``horizon``
values from each, and score every origin's forecasts against what followed it.

Origin k (k = 0 .. n_origins - 1) cuts every series after its first n - horizon - k step values
and holds out the next ``horizon`` values; origin 0 holds out the last ``horizon``. The model
is refitted at each origin (``fit`` on the cut panel), as a forecaster rolled forward would be;
nothing after an origin is seen by its fit. Scores are ``score_forecasts``' with OWA against
Naive2 at the same origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from seqlab.data.series import Panel, Series, check_horizon
from seqlab.errors import ConfigError, DataError
from seqlab.forecast.base import interval_quantiles
from seqlab.forecast.baselines import Naive2
from seqlab.metrics.forecast import M4_INTERVAL_ALPHA, score_forecasts


@dataclass(frozen=True)
class Backtest:
    """Scores by origin (``by_origin[k]``: origin k, 0 the latest) and their mean."""

    by_origin: list[dict[str, float]]

    @property
    def mean(self) -> dict[str, float]:
        return {name: sum(scores[name] for scores in self.by_origin) / len(self.by_origin)
                for name in self.by_origin[0]}


def rolling_origin(model: Any, panel: Panel, horizon: int, n_origins: int = 3, step: int | None = None,
                   level: float = 1 - M4_INTERVAL_ALPHA) -> Backtest:
    """Score ``model`` at ``n_origins`` origins ``step`` apart (default: ``horizon``).

    Raises:
        DataError: a series too short to hold out every origin's horizon.
    """
    check_horizon(horizon)
    step = horizon if step is None else step
    if n_origins < 1 or step < 1:
        raise ConfigError(f"a backtest needs n_origins >= 1 and step >= 1, got {n_origins} and {step}")
    shortest = min(panel, key=len)
    held_out = horizon + (n_origins - 1) * step
    if len(shortest) <= held_out + 1:
        raise DataError(f"series {shortest.id!r} has {len(shortest)} values, too few to hold out {held_out} for "
                        f"{n_origins} origins {step} apart with horizon {horizon}")
    results = []
    for origin in range(n_origins):
        lengths = [len(series) - horizon - origin * step for series in panel]
        history = Panel(tuple(Series(series.id, series.values[:n]) for series, n in zip(panel, lengths)),
                        panel.season, panel.frequency, horizon)
        actual = torch.stack([series.values[n: n + horizon] for series, n in zip(panel, lengths)])
        forecast = model.fit(history).predict(history, horizon, interval_quantiles(level))
        naive2 = Naive2().predict(history, horizon).mean
        results.append(score_forecasts([series.values for series in history], actual, forecast.mean, panel.season,
                                       forecast.interval(level), naive2=naive2, alpha=1 - level))
    return Backtest(results)
