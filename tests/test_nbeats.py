"""N-BEATS: the bases, the doubly residual stack, scale equivariance, the pinball loss against its
definition, and training through the forecasting task's windows."""

import math

import pytest
import torch

from seqlab.data.series import Panel, Series
from seqlab.errors import ConfigError
from seqlab.forecast.nbeats import NBEATS, NBEATSConfig, fourier_basis, polynomial_basis
from seqlab.tasks.forecast import Forecasting, ForecastOptions
from seqlab.training import TrainConfig, Trainer


def panel_of_sines(n_series=12, length=80, seed=0, season=8, noise=None):
    """Seasonal series with a trend, each at its own level; ``noise``: the noise's standard
    deviation as a fraction of the level (None: 1, whatever the level)."""
    generator = torch.Generator().manual_seed(seed)
    series = []
    for index in range(n_series):
        t = torch.arange(length, dtype=torch.float64)
        level = 20 + 10 * torch.rand((), generator=generator, dtype=torch.float64)
        values = level * (1 + 0.3 * torch.sin(2 * math.pi * (t + index) / season)) + 0.02 * level * t \
            + (1 if noise is None else noise * level) * torch.randn(length, generator=generator, dtype=torch.float64)
        series.append(Series(f"s{index}", values))
    return Panel(tuple(series), season=season)


def sines_task(directory, panel=None, **options) -> Forecasting:
    """The forecasting task (horizon 8, season 8 unless ``options`` say otherwise) of ``panel``
    (default ``panel_of_sines()``), written in the long format under ``directory``."""
    panel = panel_of_sines() if panel is None else panel
    rows = ["unique_id,ds,y"] + [f"{s.id},{2000 + t},{v:.6f}" for s in panel for t, v in enumerate(s.values.tolist())]
    (directory / "panel.csv").write_text("\n".join(rows) + "\n")
    return Forecasting.from_options(ForecastOptions(data=str(directory / "panel.csv"),
                                                    **{"horizon": 8, "season": 8, **options}))


def pinball_by_hand(context, target, forecast, levels, scale_of) -> float:
    """The mean pinball loss of ``forecast`` (B, Q, H), one error at a time, each divided by
    ``scale_of(window)``."""
    total, count = 0.0, 0
    for row in range(len(context)):
        scale = scale_of(context[row])
        for level_index, q in enumerate(levels):
            for step in range(target.shape[1]):
                error = (target[row, step] - forecast[row, level_index, step]).item() / scale
                total += max(q * error, (q - 1) * error)
                count += 1
    return total / count


def test_the_bases():
    basis = polynomial_basis(2, 4)
    torch.testing.assert_close(basis, torch.tensor([[1.0] * 4, [0, 0.25, 0.5, 0.75], [0, 0.0625, 0.25, 0.5625]]))
    fourier = fourier_basis(8, 3)
    assert fourier.shape == (6, 8)
    torch.testing.assert_close(fourier[1], torch.cos(2 * math.pi * torch.arange(8) / 8))
    torch.testing.assert_close(fourier[5], torch.sin(4 * math.pi * torch.arange(8) / 8))


def test_interpretable_stacks_forecast_in_their_bases():
    torch.manual_seed(0)
    config = NBEATSConfig(horizon=6, context=12, stacks="interpretable", n_blocks=1, width=16, levels=(0.5,))
    model = NBEATS(config)
    context = torch.randn(5, 12)
    trend_backcast, trend = model.blocks[0](context)
    _, seasonal = model.blocks[1](context - trend_backcast)
    for forecast, basis in ((trend, polynomial_basis(2, 6)), (seasonal, fourier_basis(6, 2))):
        flat = forecast[:, 0].double()
        projection = basis.double().T @ torch.linalg.pinv(basis.double().T)          # onto the basis' span
        torch.testing.assert_close(flat @ projection.T, flat, rtol=1e-5, atol=1e-5)
        assert (flat - flat.mean()).abs().max() > 1e-3                               # and not trivially zero
    # The whole forecast is the two stacks' sum, each read of its residual, in the input's scale.
    scale = context.abs().mean(1, keepdim=True)
    _, trend_scaled = model.blocks[0](context / scale)
    backcast_scaled, _ = model.blocks[0](context / scale)
    _, seasonal_scaled = model.blocks[1](context / scale - backcast_scaled)
    torch.testing.assert_close(model(context), (trend_scaled + seasonal_scaled) * scale[:, :, None])


@pytest.mark.parametrize("stacks", ["generic", "interpretable"])
def test_forecasts_scale_with_the_series(stacks):
    torch.manual_seed(1)
    model = NBEATS(NBEATSConfig(horizon=4, context=16, stacks=stacks, n_blocks=2, width=32))
    panel = panel_of_sines(n_series=3, length=30)
    scaled = Panel(tuple(Series(s.id, s.values * 1000.0) for s in panel), season=8)
    small, large = model.predict(panel, 4, (0.1, 0.9)), model.predict(scaled, 4, (0.1, 0.9))
    torch.testing.assert_close(large.mean, small.mean * 1000.0, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(large.quantiles[0.9], small.quantiles[0.9] * 1000.0, rtol=1e-5, atol=0.0)
    assert (small.quantiles[0.1] <= small.mean).all() and (small.mean <= small.quantiles[0.9]).all()


def test_the_loss_is_the_mean_pinball_loss_on_the_lookback_scale():
    torch.manual_seed(2)
    model = NBEATS(NBEATSConfig(horizon=3, context=5, n_blocks=1, width=8, levels=(0.1, 0.5, 0.9)))
    context, target = torch.rand(4, 5) + 1, torch.rand(4, 3) * 3
    expected = pinball_by_hand(context, target, model(context), (0.1, 0.5, 0.9), lambda x: x.abs().mean().item())
    assert model.loss(context, target).item() == pytest.approx(expected, rel=1e-5)


def test_training_on_the_task_windows_learns_the_seasonal_pattern(tmp_path):
    task = sines_task(tmp_path)
    torch.manual_seed(0)
    model = NBEATS(NBEATSConfig(horizon=8, context=32, n_blocks=2, n_layers=2, width=64))
    before = task.evaluate(model, "valid")["mase"]
    config = TrainConfig(steps=300, batch_size=64, lr=1e-3, warmup_steps=20, weight_decay=0.0, eval_every=300,
                         seed=0, progress=False, device="cpu")
    Trainer(model, task, config).fit()
    after = task.evaluate(model, "test")
    assert after["mase"] < before / 3
    assert after["owa"] < 1.0                        # better than Naive2 on the held-out horizon


def test_bad_requests():
    with pytest.raises(ConfigError, match="including 0.5"):
        NBEATSConfig(levels=(0.1, 0.9))
    model = NBEATS(NBEATSConfig(horizon=4, context=8, n_blocks=1, width=8))
    panel = panel_of_sines(n_series=2, length=12)
    with pytest.raises(ConfigError, match="forecasts 4 values; 5 were asked"):
        model.predict(panel, 5)
    with pytest.raises(ConfigError, match="learnt quantiles from 0.025 to 0.975"):
        model.predict(panel, 4, (0.01,))
