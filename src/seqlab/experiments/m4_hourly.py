"""M4 Hourly: the competition's benchmarks, scored as the competition scored them (Makridakis,
Spiliotis and Assimakopoulos 2020, "The M4 Competition: 100,000 time series and 61 forecasting
methods", Table 4 and the published per-frequency scores).

The 414 hourly series of M4 (../shared/data/m4, the complete set, so the published scores apply
to it exactly) are forecast 48 hours ahead with seasonal period 24 by seqlab's naive, seasonal
naive, drift, Naive2, SES, Holt, Damped, Comb and Theta, each fitted to every series' training
part, and by N-BEATS (generic, trained by the Trainer for ``NBEATS_STEPS`` steps on windows of
the training parts, quantile outputs for the intervals), and scored on the held-out 48 values with M4's sMAPE, MASE, OWA (against our own Naive2,
as M4 computes it) and, for the 95% intervals, MSIS and coverage. Beside each, the published score of the M4
team's implementation of the same benchmark (`m4_point_forecast_scores.csv`,
`m4_prediction_interval_scores.csv`).

The claims the report decides (``CLAIMS``): Naive2, seasonal naive and Theta reproduce the
published sMAPE and MASE within ``TOLERANCE`` = 1% (relative): Naive2 18.383 / 2.395, sNaive
13.912 / 1.193, Theta 18.138 / 2.455; and N-BEATS beats Naive2, OWA below 1 (Oreshkin et al.
2020 report OWA well below 1 on every M4 frequency with ensembles of 180 models; one model of
a few minutes' CPU training is asked less). The report also sets the best OWA here beside the
winner's, 0.440 (Smyl's hybrid). Holt, Damped and Comb are shown without a claim: they are
maximum-likelihood fits, and where the likelihood has several optima R's Nelder-Mead (which the
published scores come from) and seqlab's L-BFGS end in different ones. A ``--quick`` run
scores the first ``QUICK_STEPS`` series only, which the published numbers do not describe, so it
tests none of them.

The data folder is ``DATA`` (``../shared/data/m4`` from the repository root) unless the
environment variable ``SEQLAB_M4_DATA`` names another.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from seqlab.data.series import read_m4
from seqlab.errors import DataError
from seqlab.experiments import Claim, Evidence, StepBudget, finish_report
from seqlab.forecast.base import interval_quantiles
from seqlab.forecast.baselines import SES, Comb, Damped, Drift, Holt, Naive, Naive2, SeasonalNaive, Theta
from seqlab.forecast.nbeats import NBEATS, NBEATSConfig
from seqlab.metrics.forecast import score_forecasts
from seqlab.report_render import check_report_directory, mark_written
from seqlab.tasks.forecast import Forecasting, ForecastOptions
from seqlab.training import TrainConfig, Trainer

CLAIM = ("seqlab's M4 benchmarks (Naive2, seasonal naive, Theta) reproduce the published M4 Hourly sMAPE and "
         "MASE within 1% (Makridakis et al. 2020).")
DATA = Path("../shared/data/m4")
METHODS: dict[str, Callable[[], nn.Module]] = {
    "Naive": Naive, "sNaive": SeasonalNaive, "Naive2": Naive2, "SES": SES, "Holt": Holt, "Damped": Damped,
    "Comb": Comb, "Theta": Theta, "Drift": Drift,
}
PUBLISHED_AS = {"Comb": "Com"}          # the name of a method in M4's score tables, where it differs
CLAIMED = ("Naive2", "sNaive", "Theta")
NBEATS_SHAPE = {"stacks": "generic", "n_blocks": 4, "n_layers": 4, "width": 256}
NBEATS_BATCH = 256
NBEATS_STEPS = 3000
QUICK_NBEATS_STEPS = 50
WINNER_OWA = 0.440
STEPS = 414                        # the series scored: all of M4 Hourly, which the published scores describe
QUICK_STEPS = 40                   # --quick: the first 40 series, which they do not
TOLERANCE = 0.01
LEVEL = 0.95
SEED = 0
DEVICE = "cpu"
WRITTEN = ("report.md",)


@dataclass(frozen=True)
class Scores:
    """One method's scores on the set, and the published ones (None where M4 published none)."""

    method: str
    smape: float
    mase: float
    owa: float
    msis: float
    coverage: float
    seconds: float
    published: dict[str, float | None]

    def __str__(self) -> str:
        return (f"{self.method}: sMAPE {self.smape:.3f} (published {format_published(self.published['smape'])}), "
                f"MASE {self.mase:.3f} (published {format_published(self.published['mase'])})")


Measurements = dict[str, Scores]


def format_published(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def data_dir() -> Path:
    path = Path(os.environ.get("SEQLAB_M4_DATA", DATA))
    if not (path / "Hourly-train.csv").is_file():
        raise DataError(f"M4 Hourly is not at {str(path)!r} (Hourly-train.csv, Hourly-test.csv and the score tables); "
                        "run from the repository root or set SEQLAB_M4_DATA to the folder")
    return path


def published_scores(folder: Path) -> dict[str, dict[str, float | None]]:
    """method -> {"smape", "mase", "owa", "msis"} for M4 Hourly, from the competition's tables."""
    scores: dict[str, dict[str, float | None]] = {}
    with open(folder / "m4_point_forecast_scores.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            scores[row["User ID"]] = {"smape": float(row["sMAPE_Hourly"]), "mase": float(row["MASE_Hourly"]),
                                      "owa": float(row["OWA_Hourly"]), "msis": None}
    with open(folder / "m4_prediction_interval_scores.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            scores.setdefault(row["User ID"], {"smape": None, "mase": None, "owa": None})["msis"] = \
                float(row["MSIS_Hourly"])
    return scores


def train_nbeats(task: Forecasting, steps: int, progress: bool) -> NBEATS:
    """N-BEATS (generic) trained by the Trainer on the task's windows for ``steps`` steps."""
    torch.manual_seed(SEED)
    model = NBEATS(NBEATSConfig(horizon=task.horizon, context=task.context, **NBEATS_SHAPE))
    config = TrainConfig(steps=steps, batch_size=NBEATS_BATCH, lr=1e-3, warmup_steps=min(50, steps // 10),
                         weight_decay=0.0, eval_every=steps, seed=SEED, progress=progress, device=DEVICE)
    Trainer(model, task, config).fit()
    return model


def measure(n_series: int, nbeats_steps: int, progress: bool = False) -> Measurements:
    """Every method fitted to the first ``n_series`` series (N-BEATS trained on their windows for
    ``nbeats_steps``) and scored on their test values."""
    folder = data_dir()
    panel, test = read_m4(folder)
    panel, test = panel.subset(panel.ids[:n_series]), test[:n_series]
    insample = [series.values for series in panel]
    published = published_scores(folder)
    forecasts, seconds = {}, {}
    for name, make in METHODS.items():
        start = time.perf_counter()
        forecasts[name] = make().fit(panel).predict(panel, panel.horizon, interval_quantiles(LEVEL))
        seconds[name] = time.perf_counter() - start
    start = time.perf_counter()
    task = Forecasting(ForecastOptions(data=str(folder), level=LEVEL), panel, test)
    forecasts["N-BEATS"] = train_nbeats(task, nbeats_steps, progress).predict(panel, panel.horizon,
                                                                              interval_quantiles(LEVEL))
    seconds["N-BEATS"] = time.perf_counter() - start
    measured = {}
    for name, forecast in forecasts.items():
        scores = score_forecasts(insample, test, forecast.mean, panel.season, forecast.interval(LEVEL),
                                 naive2=forecasts["Naive2"].mean, alpha=1 - LEVEL)
        measured[name] = Scores(name, scores["smape"], scores["mase"], scores["owa"], scores["msis"],
                                scores["coverage"], seconds[name],
                                published.get(PUBLISHED_AS.get(name, name),
                                              {"smape": None, "mase": None, "owa": None, "msis": None}))
    return measured


def reproduces(method: str) -> Callable[[Measurements], Evidence]:
    """The check that ``method``'s sMAPE and MASE are within ``TOLERANCE`` of the published ones."""

    def check(measured: Measurements) -> Evidence:
        scores = measured[method]
        close = all(scores.published[name] is not None
                    and abs(getattr(scores, name) - scores.published[name]) <= TOLERANCE * scores.published[name]
                    for name in ("smape", "mase"))
        return Evidence(close, str(scores))

    return check


def beats_naive2(method: str) -> Callable[[Measurements], Evidence]:
    """The check that ``method``'s OWA is below 1: better than Naive2 on sMAPE and MASE together."""

    def check(measured: Measurements) -> Evidence:
        scores = measured[method]
        return Evidence(scores.owa < 1.0, f"{method}: OWA {scores.owa:.3f}, sMAPE {scores.smape:.3f}, "
                                          f"MASE {scores.mase:.3f}")

    return check


CLAIMS = tuple(
    Claim(statement=f"{method} reproduces the published M4 Hourly sMAPE and MASE within {TOLERANCE:.0%}",
          source="Makridakis et al. 2020; M4 published scores", steps_needed=STEPS, check=reproduces(method))
    for method in CLAIMED) + (
    Claim(statement=f"N-BEATS trained for {NBEATS_STEPS:,} steps beats Naive2 on M4 Hourly: OWA below 1",
          source="Oreshkin et al. 2020, Table 1 (M4)", steps_needed=STEPS, check=beats_naive2("N-BEATS")),)


def run(out_dir: str | Path = "runs/m4-hourly", quick: bool = False, progress: bool = True) -> str:
    """Forecast and score every method, and return the report: the table against the published
    scores, then one verdict line per claim (``not tested`` for a ``quick`` run)."""
    out_dir = Path(out_dir)
    check_report_directory(out_dir, WRITTEN)
    budget = StepBudget(steps=QUICK_STEPS if quick else STEPS, quick=quick, unit="series")
    measured = measure(budget.steps, QUICK_NBEATS_STEPS if quick else NBEATS_STEPS, progress)
    lines = [CLAIM, "",
             f"M4 Hourly, the first {budget.steps} of {STEPS} series, horizon 48, seasonal period 24; OWA "
             f"against our Naive2; {LEVEL:.0%} intervals. Published: the M4 team's implementation.", "",
             "| method | sMAPE | published | MASE | published | OWA | published | MSIS | published | coverage | "
             "seconds |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    best = min(measured.values(), key=lambda scores: scores.owa)
    for scores in measured.values():
        published = scores.published
        lines.append(f"| {scores.method} | {scores.smape:.3f} | {format_published(published['smape'])} | "
                     f"{scores.mase:.3f} | {format_published(published['mase'])} | {scores.owa:.3f} | "
                     f"{format_published(published['owa'])} | {scores.msis:.3f} | "
                     f"{format_published(published['msis'])} | {scores.coverage:.3f} | {scores.seconds:.1f} |")
    lines += ["", f"best here: {best.method}, OWA {best.owa:.3f}; the competition's winner (Smyl's hybrid ES-RNN): "
                  f"OWA {WINNER_OWA}"]
    report = finish_report(lines, CLAIMS, measured, budget, seed=SEED, device=DEVICE)
    (out_dir / "report.md").write_text(report + "\n")
    mark_written(out_dir, WRITTEN)
    return report
