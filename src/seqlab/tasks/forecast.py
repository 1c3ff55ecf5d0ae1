"""Forecasting: a panel of series in, the next ``horizon`` values of each out, with quantiles.

The data is one of (``seqlab.data.series``):

- an M4-layout pair, ``<Name>-train.csv`` and ``<Name>-test.csv`` (a directory holding one pair,
  or the pair's common prefix such as ``../shared/data/m3/M3-Monthly``): the test file holds
  each series' next h values; the horizon and seasonal period follow M4's conventions for the
  frequency in the name (Hourly h = 48, m = 24; Monthly 18 and 12; ...) unless given;
- a long-format CSV (``unique_id, ds, y``) or one series as ``time,value``: the last
  ``horizon`` values of every series are the test split (``horizon`` must be given).

Splits: ``test`` forecasts the test values from the whole history; ``valid`` forecasts the last
``horizon`` values of the history from the rest (so a validation score never sees the test
values, and a model selected by it has not seen them either); ``train`` is the history the
models fit (``train_panel``). A model fitted to the history is refitted for the shorter
validation histories (local models) or reads them as context (global models).

Metrics (``seqlab.metrics.forecast.score_forecasts``, as M4 defines them): sMAPE, MASE, OWA
against Naive2 on the same split, MAE, RMSE, and for the central ``level`` interval MSIS and
coverage; ``loss`` is the MASE, the scale-free error that checkpoints are selected by.

Forecasters fit the task (``fit(task)`` reads ``train_panel``); global neural ones train by
the Trainer on windows: ``train_batch`` draws (B, context) inputs and (B, horizon) targets from
random positions of the validation histories (so the validation values stay unseen), and
``loss`` is the model's ``loss(context, target)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from seqlab.data.series import Panel, check_horizon, m4_prefix, read_csv_panel, read_m4
from seqlab.errors import ConfigError, DataError
from seqlab.fields import make_config
from seqlab.forecast.base import interval_quantiles
from seqlab.forecast.baselines import Naive2
from seqlab.forecast.plots import PLOTTED_SERIES, forecast_figure
from seqlab.metrics.forecast import score_forecasts
from seqlab.report import Column, Curve
from seqlab.tasks.base import ReportSpec, Showcase, Task, register_task

EVAL_SERIES = 64          # series per evaluation batch, for the Trainer's ``eval_batches``


@dataclass(frozen=True, kw_only=True)
class ForecastOptions:
    """The data of a forecasting run.

    Attributes:
        data: an M4-layout pair (a directory holding <Name>-train.csv and <Name>-test.csv, or
            their common prefix), a long-format CSV (unique_id, ds, y), or a CSV of one series
            (time, value).
        horizon: values to forecast (none: M4's horizon for the frequency in an M4 file name;
            required for other data).
        season: the seasonal period m (none: M4's for an M4 file, else from the timestamps).
        level: the central prediction interval scored by MSIS and coverage (M4: 0.95).
        context: past values a global model reads per forecast (none: four horizons).
    """

    data: str
    horizon: int | None = None
    season: int | None = None
    level: float = 0.95
    context: int | None = None

    def __post_init__(self) -> None:
        if self.horizon is not None:
            check_horizon(self.horizon)
        if self.season is not None and self.season < 1:
            raise ConfigError(f"season must be >= 1, got {self.season}")
        if not 0 < self.level < 1:
            raise ConfigError(f"level must be in (0, 1), got {self.level}")
        if self.context is not None and self.context < 1:
            raise ConfigError(f"context must be >= 1, got {self.context}")


def read_panel(options: ForecastOptions) -> tuple[Panel, Tensor]:
    """(the history panel, (S, h) the test values) of the data ``options`` name."""
    prefix = m4_prefix(options.data)
    if prefix is not None:
        return read_m4(prefix, options.horizon, options.season)
    if options.horizon is None:
        raise ConfigError(f"--horizon is needed for {Path(options.data).name}: only M4-layout pairs fix a horizon")
    return read_csv_panel(options.data, options.season).split_last(options.horizon)


@register_task("forecast")
class Forecasting(Task):
    """Forecast the next ``horizon`` values of every series of a panel."""

    Options = ForecastOptions
    report = ReportSpec(
        columns=(Column("OWA", "owa", "{:.3f}", "lower"), Column("sMAPE", "smape", "{:.3f}", "lower"),
                 Column("MASE", "mase", "{:.3f}", "lower"), Column("MSIS", "msis", "{:.3f}", "lower"),
                 Column("coverage %", "coverage", "{:.1f}", scale=100.0)),
        curve=Curve("valid_loss", "validation MASE", "lower"),
        speed="train values/s",
        figures=("forecast",),
    )
    default_budget_seconds = 120.0
    predict_help = "one series per line: its values, separated by commas or spaces"
    inline_flag = "--series"

    def __init__(self, options: ForecastOptions, history: Panel | None = None, test: Tensor | None = None):
        """The task over ``history`` and its ``test`` values; without them (a saved run opened
        to predict), only ``predict`` works, with the options' horizon and season."""
        horizon = options.horizon if history is None else history.horizon
        if horizon is None:
            raise ConfigError("the forecast horizon is unknown: give --horizon")
        self.options = options
        self.horizon = horizon
        self.season = (options.season or 1) if history is None else history.season
        self.context = options.context or 4 * self.horizon
        self.splits: dict[str, tuple[Panel, Tensor]] = {}
        if history is None:
            return
        self.train_panel = history
        shortest = min(history, key=len)
        if len(shortest) <= self.horizon + 1:
            raise DataError(f"series {shortest.id!r} has {len(shortest)} values before the test part: too few to hold "
                            f"out a validation horizon of {self.horizon}")
        self.valid_panel, valid_values = history.split_last(self.horizon)
        shortest = min(self.valid_panel, key=len)
        if len(shortest) <= self.season:
            raise DataError(f"series {shortest.id!r} has {len(shortest)} values before its validation horizon; the "
                            f"scaled errors (MASE) with seasonal period {self.season} need more than {self.season} "
                            "(set --season, or use longer series)")
        self.splits = {"valid": (self.valid_panel, valid_values), "test": (history, test)}

    # ---- building ------------------------------------------------------------------------

    @classmethod
    def from_options(cls, options: ForecastOptions) -> Forecasting:
        return cls(options, *read_panel(options))

    @classmethod
    def from_spec(cls, spec: dict[str, Any], artifacts: dict[str, Any], data: str | None = None,
                  with_data: bool = True) -> Forecasting:
        values = {key: value for key, value in spec.items() if key != "task"}
        if data is not None:
            values["data"] = data
        options = make_config(ForecastOptions, values)
        return cls.from_options(options) if with_data else cls(options)

    def spec(self) -> dict[str, Any]:
        """The options, with the horizon and seasonal period the data fixed."""
        return {"task": self.name, **dataclasses.asdict(self.options), "horizon": self.horizon, "season": self.season}

    def artifacts(self) -> dict[str, Any]:
        return {}

    def model_defaults(self) -> dict[str, Any]:
        return {"horizon": self.horizon, "season": self.season, "context": self.context}

    @classmethod
    def example_model_defaults(cls) -> dict[str, Any]:
        return {"horizon": 8, "season": 1, "context": 32}

    # ---- training and evaluation -----------------------------------------------------------

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(B, context) inputs and (B, horizon) targets from uniform random windows of the
        validation histories (a series shorter than a window is padded on the left with its
        first value)."""
        width = self.context + self.horizon
        series = [s.values for s in self.valid_panel]
        chosen = torch.randint(len(series), (batch_size,), generator=generator).tolist()
        windows = []
        for index in chosen:
            values = series[index]
            if len(values) < width:
                values = torch.cat([values[:1].expand(width - len(values)), values])
            start = int(torch.randint(len(values) - width + 1, (), generator=generator))
            windows.append(values[start: start + width])
        stacked = torch.stack(windows)
        return stacked[:, : self.context].float(), stacked[:, self.context:].float()

    def batch_tokens(self, batch: Sequence[Tensor]) -> int:
        return batch[0].numel() + batch[1].numel()

    def loss(self, model: nn.Module, batch: Sequence[Tensor]) -> Tensor:
        return model.loss(*batch)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "valid", *, max_batches: int | None = None,
                 details: bool = False) -> dict[str, Any]:
        """Scores of ``model``'s forecasts of ``split`` (see the module docstring); ``loss`` is
        the MASE. ``max_batches``: score only the first ``max_batches`` batches of
        ``EVAL_SERIES`` series (the Trainer's validation of a large panel; none: every series)."""
        panel, actual = self.split(split)
        if max_batches is not None and max_batches * EVAL_SERIES < len(panel):
            kept = max_batches * EVAL_SERIES
            panel, actual = panel.subset(panel.ids[:kept]), actual[:kept]
        forecast = model.predict(panel, self.horizon, interval_quantiles(self.options.level))
        naive2 = Naive2().predict(panel, self.horizon).mean
        scores = score_forecasts([series.values for series in panel], actual, forecast.mean, panel.season,
                                 forecast.interval(self.options.level), naive2=naive2, alpha=1 - self.options.level)
        return {"loss": scores["mase"], **scores}

    def split(self, name: str) -> tuple[Panel, Tensor]:
        """(the histories, (S, horizon) the values that follow them) of split ``name``."""
        if not self.splits:
            raise DataError("this forecasting task was opened without its data; give --data to evaluate")
        return self.splits["valid" if name == "valid" else "test"]

    @property
    def train_tokens(self) -> int:
        return sum(len(series) for series in self.train_panel)

    # ---- use and reports -------------------------------------------------------------------

    def predict(self, model: nn.Module, inputs: Sequence[str], options: Any = None) -> list[str]:
        """Forecast each input line's series ``horizon`` values ahead: the mean, then the
        interval, as ``mean [lower, upper]`` per step."""
        from seqlab.data.series import single

        outputs = []
        for number, line in enumerate(inputs, start=1):
            try:
                values = [float(value) for value in line.replace(",", " ").split()]
            except ValueError:
                raise DataError(f"input line {number} is not a list of numbers: {line[:60]!r}") from None
            forecast = model.predict(single(values, self.season, id=f"line {number}"), self.horizon,
                                     interval_quantiles(self.options.level))
            lower, upper = forecast.interval(self.options.level)
            outputs.append(" ".join(f"{m:.6g} [{lo:.6g}, {hi:.6g}]" for m, lo, hi in
                                    zip(forecast.mean[0].tolist(), lower[0].tolist(), upper[0].tolist())))
        return outputs

    def describe(self) -> str:
        if not self.splits:
            return f"forecasts of horizon {self.horizon}, seasonal period {self.season}"
        panel = self.train_panel
        return (f"`{Path(self.options.data).name}`: {len(panel):,} series ({panel.frequency or 'unknown frequency'}), "
                f"horizon {self.horizon}, seasonal period {panel.season}")

    def showcase(self, model: nn.Module) -> Showcase:
        """A plot of the first few test series: the last history, the forecast and its interval,
        and what happened."""
        panel, actual = self.split("test")
        shown = panel.subset(panel.ids[:PLOTTED_SERIES])
        forecast = model.predict(shown, self.horizon, interval_quantiles(self.options.level))
        return Showcase(figures={"forecast": forecast_figure(shown, {"forecast": forecast}, self.options.level,
                                                              actual[:PLOTTED_SERIES])})
