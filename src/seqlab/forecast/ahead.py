"""``seqlab forecast SERIES.csv --models theta,ets --horizon H``: fit forecasters to a file's
series and forecast past its end.

Every model is fitted to the whole of every series (nothing is held out: this is for use, the
forecasting task is for evaluation) and forecasts ``horizon`` values ahead with its central
``level`` interval. A neural model (one the Trainer trains) is trained for ``budget_seconds``
(at most ``TRAINING_STEPS`` steps, its own learning rate) on windows of the series, as the
forecasting task draws them: windows that end before the last ``horizon`` values, which it
validates on. The output directory gets ``forecasts.csv`` (long format: unique_id, step,
model, mean, lower, upper) and ``forecast.png`` (the last history of the first few series with
each model's forecast and interval); the returned text is a table of the first series'
forecasts, one row per step and one column per model.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from torch import nn

from seqlab import registry
from seqlab.data.series import Panel, check_horizon, m4_prefix, read_csv_panel, read_m4
from seqlab.forecast.base import Forecast, interval_quantiles
from seqlab.forecast.plots import forecast_figure
from seqlab.report_render import check_report_directory, mark_written

WRITTEN = ("forecasts.csv", "forecast.png")
TRAINING_STEPS = 2000


@dataclass(frozen=True)
class Forecasts:
    """What ``forecast_file`` made: each model's forecasts, the table, and the files written."""

    panel: Panel
    by_model: dict[str, Forecast]
    table: str
    files: tuple[Path, ...]


def read_any(path: str | Path, season: int | None) -> Panel:
    """The series of a long-format or ``time,value`` CSV, or an M4-layout pair's training part."""
    prefix = m4_prefix(path)
    return read_csv_panel(path, season) if prefix is None else read_m4(prefix, season=season)[0]


def forecast_file(path: str | Path, models: Sequence[str], horizon: int, out_dir: str | Path,
                  season: int | None = None, level: float = 0.95, budget_seconds: float = 60.0) -> Forecasts:
    """Fit (or train, for ``budget_seconds`` each) ``models`` on every series of ``path`` and
    forecast ``horizon`` values ahead."""
    check_horizon(horizon)
    for name in models:
        registry.get(name, "forecast")                    # an unknown name fails before any work
    check_report_directory(out_dir, WRITTEN)
    panel = read_any(path, season)
    quantiles = interval_quantiles(level)
    by_model = {}
    for name in models:
        model = fitted(name, panel, horizon, level, budget_seconds)
        by_model[name] = model.predict(panel, horizon, quantiles)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = out_dir / "forecast.png"
    figure.write_bytes(forecast_figure(panel, by_model, level))
    files = (write_csv(out_dir / "forecasts.csv", by_model, level), figure)
    mark_written(out_dir, WRITTEN)
    return Forecasts(panel, by_model, first_series_table(panel, by_model, level), files)


def fitted(name: str, panel: Panel, horizon: int, level: float, budget_seconds: float) -> nn.Module:
    """Model ``name`` fitted to ``panel``, or, if the Trainer trains it, built for the horizon
    and trained on the panel's windows (see the module docstring)."""
    if registry.get(name, "forecast").trains == "fit":
        return registry.build(name, "forecast").fit(panel)
    from seqlab.tasks.forecast import Forecasting, ForecastOptions
    from seqlab.training import TrainConfig, Trainer

    options = ForecastOptions(data="", horizon=horizon, season=panel.season, level=level)
    task = Forecasting(options, dataclasses.replace(panel, horizon=horizon))
    model = registry.build_for_task(name, task.model_defaults(), {}, task="forecast")
    defaults = getattr(model, "train_defaults", {})
    config = TrainConfig(steps=TRAINING_STEPS, budget_seconds=budget_seconds, eval_every=TRAINING_STEPS,
                         eval_batches=1, progress=False, **defaults)
    Trainer(model, task, config).fit()
    return model


def write_csv(path: Path, by_model: dict[str, Forecast], level: float) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["unique_id", "step", "model", "mean", "lower", "upper"])
        for name, forecast in by_model.items():
            lower, upper = forecast.interval(level)
            for row, id in enumerate(forecast.ids):
                for step in range(forecast.horizon):
                    writer.writerow([id, step + 1, name, f"{forecast.mean[row, step].item():.6g}",
                                     f"{lower[row, step].item():.6g}", f"{upper[row, step].item():.6g}"])
    return path


def first_series_table(panel: Panel, by_model: dict[str, Forecast], level: float) -> str:
    """Markdown: the first series' forecasts, ``mean [lower, upper]`` per step and model."""
    lines = [f"Forecasts of {panel.ids[0]!r} ({level:.0%} intervals; every series: forecasts.csv)", "",
             "| step | " + " | ".join(by_model) + " |", "|---|" + "---|" * len(by_model)]
    horizon = next(iter(by_model.values())).horizon
    bounds = {name: forecast.interval(level) for name, forecast in by_model.items()}
    for step in range(horizon):
        cells = [f"{forecast.mean[0, step].item():.4g} [{bounds[name][0][0, step].item():.4g}, "
                 f"{bounds[name][1][0, step].item():.4g}]" for name, forecast in by_model.items()]
        lines.append(f"| {step + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
