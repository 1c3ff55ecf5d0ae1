"""The forecasting task: splits that never show a model what it is scored on, windows for
global models, evaluation through M4's measures, runs that save, load and predict, and the CLI."""

import math

import pytest
import torch

from seqlab.cli import main
from seqlab.errors import ConfigError, DataError
from seqlab.forecast.baselines import Naive, Naive2
from seqlab.metrics.forecast import mase, owa, smape
from seqlab.tasks.forecast import Forecasting, ForecastOptions


def write_long(path, lengths=(30, 36), period=4):
    rows = ["unique_id,ds,y"]
    for index, length in enumerate(lengths):
        for hour in range(length):
            value = 100 + 10 * index + hour + 5 * math.sin(2 * math.pi * hour / period)
            rows.append(f"s{index},2024-01-{1 + hour // 24:02d} {hour % 24:02d}:00,{value:.4f}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def task(tmp_path):
    return Forecasting.from_options(ForecastOptions(data=str(write_long(tmp_path / "panel.csv")), horizon=5, season=4))


def test_the_splits_hold_out_the_last_horizons(task):
    history, test = task.split("test")
    valid_history, valid = task.split("valid")
    assert [len(series) for series in history] == [25, 31] and test.shape == (2, 5)
    assert [len(series) for series in valid_history] == [20, 26]
    torch.testing.assert_close(valid[1], history["s1"].values[-5:])
    assert (task.horizon, task.season, task.context) == (5, 4, 20)
    assert task.model_defaults() == {"horizon": 5, "season": 4, "context": 20}


def test_training_windows_come_from_the_validation_histories_alone(task):
    valid_history, valid = task.split("valid")
    inputs, targets = task.train_batch(64, torch.Generator().manual_seed(0))
    assert inputs.shape == (64, 20) and targets.shape == (64, 5)
    # Every window lies inside a validation history (left-padded with its first value when short).
    for window in torch.cat([inputs, targets], dim=1).double():
        assert any(set(window.tolist()) <= set(series.values.tolist()) for series in valid_history)
    assert not (set(targets.double().flatten().tolist()) & set(valid.flatten().tolist()) - set(
        v for series in valid_history for v in series.values.tolist()))


def test_evaluation_scores_the_forecasts_with_mase_as_the_loss(task):
    metrics = task.evaluate(Naive().fit(task), "test")
    history, test = task.split("test")
    forecast = torch.stack([series.values[-1].expand(5) for series in history])
    insample = [series.values for series in history]
    assert metrics["loss"] == metrics["mase"] == pytest.approx(mase(insample, test, forecast, 4).mean().item())
    assert metrics["smape"] == pytest.approx(smape(test, forecast).mean().item())
    naive2 = Naive2().predict(history, 5).mean
    assert metrics["owa"] == pytest.approx(owa(metrics["smape"], metrics["mase"], smape(test, naive2).mean().item(),
                                               mase(insample, test, naive2, 4).mean().item()))
    assert metrics["owa"] != pytest.approx(1.0)                 # the series are seasonal: Naive2 is not naive
    assert set(metrics) >= {"msis", "coverage", "mae", "rmse"}
    assert task.evaluate(Naive2().fit(task), "valid")["owa"] == pytest.approx(1.0)


def test_the_trainers_validation_batches_score_the_first_series(tmp_path, monkeypatch):
    import seqlab.tasks.forecast as forecast_task

    monkeypatch.setattr(forecast_task, "EVAL_SERIES", 2)
    task = Forecasting.from_options(ForecastOptions(data=str(write_long(tmp_path / "panel.csv", (30, 36, 33, 40, 31))),
                                                    horizon=5, season=4))
    model = Naive().fit(task)
    first = Forecasting.from_options(ForecastOptions(data=str(write_long(tmp_path / "first.csv", (30, 36))),
                                                     horizon=5, season=4))
    assert task.evaluate(model, "valid", max_batches=1) == first.evaluate(model, "valid")
    assert task.evaluate(model, "valid", max_batches=3) == task.evaluate(model, "valid")     # 6 > 5 series: all
    assert task.evaluate(model, "valid", max_batches=2) != task.evaluate(model, "valid")


def test_a_saved_run_predicts_without_its_data(task, tmp_path):
    from seqlab.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "run", Naive().fit(task), task)
    loaded = load_checkpoint(tmp_path / "run")
    bare = loaded.task(with_data=False)
    assert bare.predict(loaded.model, ["1, 2, 3"])[0].startswith("3 [")
    with pytest.raises(DataError, match="opened without its data"):
        bare.evaluate(loaded.model, "test")
    with pytest.raises(DataError, match="input line 1 is not a list of numbers"):
        bare.predict(loaded.model, ["1, two"])


def test_bad_options_and_data(tmp_path):
    path = write_long(tmp_path / "panel.csv")
    with pytest.raises(ConfigError, match="--horizon is needed for panel.csv"):
        Forecasting.from_options(ForecastOptions(data=str(path)))
    with pytest.raises(ConfigError, match="positive integer"):
        ForecastOptions(data=str(path), horizon=0)
    with pytest.raises(ConfigError, match="level must be in"):
        ForecastOptions(data=str(path), horizon=3, level=1.0)
    with pytest.raises(DataError, match="too few to hold out a validation horizon of 15"):
        Forecasting.from_options(ForecastOptions(data=str(path), horizon=15))
    # Hourly timestamps give period 24, more than the 20 values left before validation.
    with pytest.raises(DataError, match="series 's0' has 20 values .* seasonal period 24 need more than 24"):
        Forecasting.from_options(ForecastOptions(data=str(path), horizon=5))


def test_the_cli_trains_evaluates_and_predicts(tmp_path, capsys):
    path = write_long(tmp_path / "panel.csv")
    run = tmp_path / "run"
    assert main(["train", "theta", "--task", "forecast", "--data", str(path), "--horizon", "5", "--season", "4",
                 "--out", str(run),
                 "--no-progress"]) == 0
    assert main(["eval", str(run)]) == 0
    assert '"owa"' in capsys.readouterr().out
    assert main(["train", "theta", "--task", "forecast", "--data", str(path), "--out", str(tmp_path / "other"),
                 "--no-progress"]) == 2
    assert "--horizon is needed" in capsys.readouterr().err


def test_seqlab_forecast_writes_the_forecasts_and_keeps_the_users_files(tmp_path, capsys):
    path = write_long(tmp_path / "panel.csv")
    out = tmp_path / "out"
    assert main(["forecast", str(path), "--models", "naive,snaive", "--horizon", "3", "--season", "4",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| step | naive | snaive |" in printed and "| 3 | " in printed
    rows = (out / "forecasts.csv").read_text().splitlines()
    assert rows[0] == "unique_id,step,model,mean,lower,upper" and len(rows) == 1 + 2 * 2 * 3
    assert rows[1].startswith("s0,1,naive,")
    assert (out / "forecast.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["forecast", str(path), "--models", "naive", "--horizon", "3", "--out", str(out)]) == 0  # ours: replaced
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "forecasts.csv").write_text("mine")
    assert main(["forecast", str(path), "--models", "naive", "--horizon", "3", "--out", str(theirs)]) == 2
    assert (theirs / "forecasts.csv").read_text() == "mine"
    assert main(["forecast", str(path), "--models", "nope", "--horizon", "3", "--out", str(out)]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_seqlab_forecast_trains_a_neural_model_within_its_budget(tmp_path, capsys, monkeypatch):
    import seqlab.forecast.ahead as ahead

    monkeypatch.setattr(ahead, "TRAINING_STEPS", 5)
    path = write_long(tmp_path / "panel.csv")
    assert main(["forecast", str(path), "--models", "snaive,nbeats", "--horizon", "3", "--season", "4",
                 "--budget", "30", "--out", str(tmp_path / "out")]) == 0
    assert "| step | snaive | nbeats |" in capsys.readouterr().out
    rows = (tmp_path / "out" / "forecasts.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2 * 3 and any(",nbeats," in row for row in rows)
    assert all(math.isfinite(float(value)) for row in rows[1:] for value in row.split(",")[3:])


def test_every_registered_forecaster_meets_the_forecaster_protocol():
    from seqlab import registry
    from seqlab.contracts import Forecaster

    for entry in registry.entries("forecast"):
        assert isinstance(registry.build(entry.name, "forecast"), Forecaster), entry.name


def test_an_absent_file_is_a_data_error_everywhere(tmp_path, capsys):
    absent = str(tmp_path / "absent.csv")
    with pytest.raises(DataError, match="no file"):
        Forecasting.from_options(ForecastOptions(data=absent, horizon=3))
    assert main(["forecast", absent, "--horizon", "3", "--out", str(tmp_path / "out")]) == 2
    assert "no file" in capsys.readouterr().err
