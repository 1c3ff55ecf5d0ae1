"""A figure of forecasts: for each of the first few series, its last history, each model's
forecast with its interval, and, when known, what followed."""

from __future__ import annotations

import io
from typing import Mapping

from torch import Tensor

from seqlab.data.series import Panel
from seqlab.forecast.base import Forecast

PLOTTED_SERIES = 4


def forecast_figure(panel: Panel, by_model: Mapping[str, Forecast], level: float,
                    actual: Tensor | None = None) -> bytes:
    """PNG bytes: one axis per series (the first ``PLOTTED_SERIES``), the last four horizons of
    its history, each model's forecast and central ``level`` interval, and ``actual`` (S, H)
    values dotted when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = panel.series[:PLOTTED_SERIES]
    horizon = next(iter(by_model.values())).horizon
    figure, axes = plt.subplots(len(shown), 1, figsize=(8, 2.3 * len(shown)), squeeze=False)
    bounds = {name: forecast.interval(level) for name, forecast in by_model.items()}
    for row, (axis, series) in enumerate(zip(axes[:, 0], shown)):
        history = series.values[-4 * horizon:]
        axis.plot(range(-len(history), 0), history.tolist(), color="black", linewidth=1, label="history")
        if actual is not None:
            axis.plot(range(horizon), actual[row].tolist(), color="black", linestyle=":", label="actual")
        for name, forecast in by_model.items():
            line, = axis.plot(range(horizon), forecast.mean[row].tolist(), label=name)
            lower, upper = bounds[name]
            axis.fill_between(range(horizon), lower[row].tolist(), upper[row].tolist(), color=line.get_color(),
                              alpha=0.2)
        axis.set_title(series.id, fontsize=9)
    axes[0, 0].legend(fontsize=8, loc="upper left", title=f"{level:.0%} intervals", title_fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
