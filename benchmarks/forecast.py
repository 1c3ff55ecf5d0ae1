"""Automatic ETS and ARIMA on M3 Monthly (1,428 series, h = 18, m = 12): seqlab against
statsforecast (the fastest peer, all series) and against statsmodels fitting the same candidate
models (a fixed random subsample), with each side's sMAPE beside its time, so that speed is not
bought with accuracy.

* **ets**: seqlab's automatic ETS (every candidate form of R's restricted set, AICc) against
  statsforecast's ``AutoETS`` and against statsmodels' ``ETSModel`` fitting the same candidate
  forms for each series (the form of least AICc forecasts);
* **arima**: seqlab's Hyndman-Khandakar search against statsforecast's ``AutoARIMA`` and against
  pmdarima's ``auto_arima`` (R's stepwise search over statsmodels' SARIMAX).

Times are fit plus forecast, one process, one thread. A ratio is the peer's seconds over
seqlab's on the same series (above 1: seqlab is faster).

    python benchmarks/forecast.py [--quick] [--subsample 200] [--models ets,arima] [--data ../shared/data/m3/M3-Monthly]

Target (issue 14): ets_vs_statsmodels >= 3 and arima_vs_statsmodels >= 3; the statsforecast
ratios are reported.
"""

from __future__ import annotations

import argparse
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from seqlab import registry
from seqlab.data.series import Panel, read_m4
from seqlab.forecast.ets_fit import candidate_forms
from seqlab.metrics.forecast import smape

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "m3" / "M3-Monthly"


def ours(name: str, panel: Panel, horizon: int) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    forecast = registry.build(name, "forecast").fit(panel).predict(panel, horizon)
    return time.perf_counter() - started, forecast.mean.numpy()


def statsforecast_side(model: str, panel: Panel, horizon: int) -> tuple[float, np.ndarray]:
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import AutoARIMA, AutoETS

    frame = pd.concat([pd.DataFrame({"unique_id": series.id, "ds": np.arange(len(series)), "y": series.values.numpy()})
                       for series in panel])
    peer = AutoETS(season_length=panel.season) if model == "ets" else AutoARIMA(season_length=panel.season)
    started = time.perf_counter()
    forecast = StatsForecast(models=[peer], freq=1, n_jobs=1).forecast(df=frame, h=horizon)
    seconds = time.perf_counter() - started
    column = [name for name in forecast.columns if name not in ("unique_id", "ds")][0]
    by_id = {id: group[column].to_numpy() for id, group in forecast.groupby("unique_id", sort=False)}
    return seconds, np.stack([by_id[id] for id in panel.ids])


def statsmodels_ets(panel: Panel, horizon: int) -> tuple[float, np.ndarray]:
    """statsmodels' ETSModel over the same candidate forms as seqlab's, the least AICc forecasting."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    forecasts = []
    started = time.perf_counter()
    for series in panel:
        values = series.values.numpy()
        best = None
        for form in candidate_forms(panel.season, bool((values > 0).all()), False):
            if len(values) < form.min_length(panel.season):
                continue
            model = ETSModel(values, error="add" if form.error == "A" else "mul",
                             trend=None if form.trend == "N" else "add", damped_trend=form.damped,
                             seasonal=None if form.season == "N" else ("add" if form.season == "A" else "mul"),
                             seasonal_periods=panel.season if form.season != "N" else None)
            try:
                with warnings.catch_warnings():            # statsmodels warns at every unconverged fit
                    warnings.simplefilter("ignore")
                    fit = model.fit(disp=False)
            except (ValueError, np.linalg.LinAlgError):
                continue
            if np.isfinite(fit.aicc) and (best is None or fit.aicc < best.aicc):
                best = fit
        forecasts.append(best.forecast(horizon))
    return time.perf_counter() - started, np.stack(forecasts)


def pmdarima_side(panel: Panel, horizon: int) -> tuple[float, np.ndarray]:
    import pmdarima

    forecasts = []
    started = time.perf_counter()
    for series in panel:
        model = pmdarima.auto_arima(series.values.numpy(), m=panel.season, seasonal=True, stepwise=True,
                                    suppress_warnings=True, error_action="ignore")
        forecasts.append(model.predict(horizon))
    return time.perf_counter() - started, np.stack(forecasts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA), help="an M4-layout pair (default: M3 Monthly)")
    parser.add_argument("--subsample", type=int, default=200, help="series for the statsmodels side")
    parser.add_argument("--quick", action="store_true", help="100 series, 10 for statsmodels: under a few minutes")
    parser.add_argument("--models", default="ets,arima", help="which of ets, arima to time (default: both)")
    args = parser.parse_args()
    if not Path(args.data + "-train.csv").is_file() and not Path(args.data).is_dir():
        print(f"skipped: {args.data} is absent (see ../shared/data/README.md)")
        return
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    panel, test = read_m4(args.data)
    if args.quick:
        panel, test = panel.subset(panel.ids[:100]), test[:100]
    subsample = 10 if args.quick else args.subsample
    chosen = sorted(random.Random(0).sample(range(len(panel)), min(subsample, len(panel))))
    small, small_test = panel.subset([panel.ids[i] for i in chosen]), test[chosen]
    horizon = panel.horizon
    rows, ratios = [], {}

    def record(side: str, model: str, series: Panel, actual: torch.Tensor, seconds: float, mean: np.ndarray) -> float:
        score = smape(actual, torch.from_numpy(np.asarray(mean, dtype=np.float64))).mean().item()
        rows.append((side, model, len(series), seconds, score))
        print(f"  {side} {model} on {len(series)} series: {seconds:.1f} s, sMAPE {score:.3f}", flush=True)
        return seconds

    models = [model for model in ("ets", "arima") if model in args.models.split(",")]
    for model in models:
        mine = record("seqlab", model, panel, test, *ours(model, panel, horizon))
        peer = record("statsforecast", model, panel, test, *statsforecast_side(model, panel, horizon))
        ratios[f"{model}_vs_statsforecast"] = peer / mine
        mine_small = record("seqlab", model, small, small_test, *ours(model, small, horizon))
        slow = statsmodels_ets(small, horizon) if model == "ets" else pmdarima_side(small, horizon)
        peer_small = record("statsmodels" if model == "ets" else "pmdarima", model, small, small_test, *slow)
        ratios[f"{model}_vs_statsmodels"] = peer_small / mine_small

    print("\n| side | model | series | fit + forecast s | s per series | sMAPE |\n|---|---|---|---|---|---|")
    for side, model, count, seconds, score in rows:
        print(f"| {side} | {model} | {count:,} | {seconds:.1f} | {seconds / count:.3f} | {score:.3f} |")
    order = ("ets_vs_statsmodels", "arima_vs_statsmodels", "ets_vs_statsforecast", "arima_vs_statsforecast")
    print("RESULT " + " ".join(f"{key}={ratios[key]:.2f}" for key in order if key in ratios))


if __name__ == "__main__":
    main()
