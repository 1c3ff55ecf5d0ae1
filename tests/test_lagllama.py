"""Lag-Llama: lag tokens against a Python loop, causality, the teacher-forced loss against scipy's
Student-t density step by step, cached sampling against full recompute, training through the
forecasting task's windows, and bad requests."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from seqlab.data.series import Panel, Series
from seqlab.errors import ConfigError
from seqlab.forecast.base import series_generator
from seqlab.forecast.lagllama import LagLlama, LagLlamaConfig, default_lags, lag_features, padded_window, robust_scale
from seqlab.training import TrainConfig, Trainer
from test_nbeats import panel_of_sines, sines_task


def small_model(seed=0, **overrides):
    torch.manual_seed(seed)
    values = {"horizon": 4, "context": 12, "season": 4, "d_model": 16, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1,
              "n_samples": 16, **overrides}
    return LagLlama(LagLlamaConfig(**values)).eval()


def scaled_by_numpy(window, context):
    """(the window standardised by its first ``context`` values' median and IQR, loc, scale), float64."""
    head = np.asarray(window[:context], dtype=np.float64)
    loc = np.percentile(head, 50)
    spread = np.percentile(head, 75) - np.percentile(head, 25)
    scale = spread if spread > 0 else np.abs(head - loc).mean()
    return (np.asarray(window, dtype=np.float64) - loc) / scale, loc, scale


def tokens_by_loop(scaled, lags, loc, scale):
    """The token predicting each value s = max(lags) .. len(scaled), one Python list each."""
    summary = [math.copysign(math.log1p(abs(loc)), loc), math.log(scale)]
    return [[scaled[s - lag] for lag in lags] + summary for s in range(max(lags), len(scaled) + 1)]


def test_default_lags():
    assert default_lags(1, 32) == (1, 2, 3, 4, 5, 6, 7)
    assert default_lags(4, 24) == (1, 2, 3, 4, 5, 6, 7, 8, 12)
    assert default_lags(24, 60) == (1, 2, 3, 4, 5, 6, 7, 23, 24, 25, 48)        # 72 does not fit
    assert LagLlamaConfig(context=100, season=24).lag_set[-1] == 72


def test_lag_tokens_equal_a_python_loop_with_padding():
    values = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0, 5.5]                      # 9 values, context 12: 3 pads
    window = padded_window(torch.tensor(values, dtype=torch.float64), 12)
    padded = [values[0]] * 3 + values
    assert window.tolist() == padded
    lags = torch.tensor([1, 2, 5])
    expected = [[padded[s - lag] for lag in (1, 2, 5)] for s in range(5, 13)]
    assert lag_features(window[None], lags)[0].tolist() == expected
    # The model's tokens: lags of the robustly scaled window, then the window's statistics.
    model = small_model(lags=(1, 2, 5))
    scaled, loc, scale = scaled_by_numpy(padded, 12)
    ours, summary, _, _ = model.scaled_window(window[None, :12], window[None, 12:])
    torch.testing.assert_close(model.tokens(ours, summary)[0],
                               torch.tensor(tokens_by_loop(list(scaled), (1, 2, 5), loc, scale)),
                               rtol=1e-12, atol=1e-12)
    assert padded_window(torch.arange(20.0), 12).tolist() == list(range(8, 20))


def test_robust_scale_falls_back_to_the_mean_absolute_deviation():
    context = torch.tensor([[5.0, 5.0, 5.0, 5.0, 5.0, 9.0, 5.0, 5.0],             # IQR 0
                            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 100.0],
                            [2.0] * 8], dtype=torch.float64)                         # constant: the floor
    loc, scale = robust_scale(context)
    for row in range(2):
        _, expected_loc, expected_scale = scaled_by_numpy(context[row].tolist(), 8)
        assert loc[row, 0].item() == pytest.approx(expected_loc, rel=1e-12)
        assert scale[row, 0].item() == pytest.approx(expected_scale, rel=1e-12)
    assert scale[1, 0].item() == pytest.approx(3.5)                                 # the outlier does not count
    assert loc[2, 0].item() == 2.0 and scale[2, 0].item() == pytest.approx(1e-8)


def test_a_prediction_depends_on_the_past_only():
    model = small_model(seed=1, lags=(1, 2, 4))
    context, target = torch.randn(2, 12) + 3, torch.randn(2, 4) + 3
    reach = model.reach
    before, _ = model.teacher_forced(context, target)
    for step in range(3):
        changed = target.clone()
        changed[:, step] += 5.0
        after, _ = model.teacher_forced(context, changed)
        position = 12 + step - reach + 1                      # the first token that reads the changed value
        for name in ("df", "loc", "scale"):
            old, new = getattr(before, name), getattr(after, name)
            torch.testing.assert_close(new[:, :position], old[:, :position], rtol=1e-6, atol=1e-6)
        assert (after.loc[:, position] - before.loc[:, position]).abs().min() > 1e-4
    # The backbone alone: token t + k never reaches the output at t.
    tokens = torch.randn(2, 9, len(model.config.lag_set) + 2)
    edited = tokens.clone()
    edited[:, 5] += 1.0
    torch.testing.assert_close(model(edited).loc[:, :5], model(tokens).loc[:, :5], rtol=1e-6, atol=1e-6)
    assert (model(edited).loc[:, 5] - model(tokens).loc[:, 5]).abs().min() > 1e-4


def test_the_loss_is_the_mean_student_t_nll_of_the_step_by_step_distributions():
    model = small_model(seed=2).double()
    generator = torch.Generator().manual_seed(3)
    context = torch.randn(2, 12, generator=generator, dtype=torch.float64) * 4 + 20
    target = torch.randn(2, 4, generator=generator, dtype=torch.float64) * 4 + 20
    lags = model.config.lag_set
    log_densities = []
    for row in range(2):
        window = context[row].tolist() + target[row].tolist()
        scaled, loc, scale = scaled_by_numpy(window, 12)
        tokens = torch.tensor(tokens_by_loop(list(scaled), lags, loc, scale), dtype=torch.float64)[None]
        for s in range(max(lags), 16):                                   # each step alone, from its past only
            distribution = model(tokens[:, : s - max(lags) + 1])
            df, mu, sigma = (getattr(distribution, name)[0, -1].item() for name in ("df", "loc", "scale"))
            log_densities.append(stats.t.logpdf(scaled[s], df, loc=mu, scale=sigma))
    assert len(log_densities) == 2 * (16 - max(lags))
    assert model.loss(context, target).item() == pytest.approx(-np.mean(log_densities), rel=1e-10)


@pytest.mark.parametrize("max_len", [1024, 3])               # 3: a sliding window shorter than the tokens
def test_cached_sampling_equals_full_recompute(max_len):
    model = small_model(seed=4, max_len=max_len, lags=(1, 2, 4))          # 9 tokens before the first draw
    t = torch.arange(12, dtype=torch.float64)
    noise = torch.randn(2, 12, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    windows = torch.stack([50 + 5 * torch.sin(t * math.pi / 2), 3 - 0.1 * t]) + noise
    with torch.no_grad():
        cached = model.sample_paths(windows, 4, 8, [torch.Generator().manual_seed(seed) for seed in (6, 7)])
        recomputed = model.sample_paths_ref(windows, 4, 8, [torch.Generator().manual_seed(seed) for seed in (6, 7)])
        alone = model.sample_paths_ref(windows[1:], 4, 8, [torch.Generator().manual_seed(7)])
        other = model.sample_paths(windows, 4, 8, [torch.Generator().manual_seed(seed) for seed in (8, 7)])
    assert cached.shape == (2, 8, 4) and cached.dtype == torch.float64
    torch.testing.assert_close(cached, recomputed, rtol=1e-5, atol=1e-5 * windows.abs().max().item())
    torch.testing.assert_close(alone[0], recomputed[1], rtol=1e-5, atol=1e-5)   # a series' paths are its own
    assert (cached[0] - other[0]).abs().max() > 0.1                           # its generator decides them
    torch.testing.assert_close(other[1], cached[1], rtol=1e-5, atol=1e-5)


def test_predict_summarises_paths_drawn_with_each_series_generator():
    model = small_model(seed=8, lags=(1, 2, 4))
    panel = panel_of_sines(n_series=2, length=9)                    # shorter than the context: padded
    forecast = model.predict(panel, 4, (0.1, 0.9))
    for row, series in enumerate(panel):
        with torch.no_grad():
            paths = model.sample_paths_ref(padded_window(series.values, 12)[None], 4, 16,
                                           [series_generator(series)])[0]
        scale = series.values.abs().max().item()
        torch.testing.assert_close(forecast.mean[row], paths.mean(0), rtol=1e-5, atol=1e-5 * scale)
        for q in (0.1, 0.9):
            expected = torch.tensor(np.quantile(paths.numpy(), q, axis=0))
            torch.testing.assert_close(forecast.quantiles[q][row], expected, rtol=1e-5, atol=1e-5 * scale)


def test_training_on_the_task_windows_beats_naive2(tmp_path):
    task = sines_task(tmp_path)
    torch.manual_seed(0)
    model = LagLlama(LagLlamaConfig(horizon=8, context=task.context, season=8, d_model=32, n_layers=2,
                                    n_samples=100))
    before = task.evaluate(model, "valid")["mase"]
    config = TrainConfig(steps=150, batch_size=32, lr=1e-3, warmup_steps=20, weight_decay=0.0, eval_every=150,
                         seed=0, progress=False, device="cpu")
    Trainer(model, task, config).fit()
    after = task.evaluate(model, "test")
    assert after["mase"] < before / 3
    assert after["owa"] < 1.0                        # better than Naive2 on the held-out horizon
    assert 0.8 <= after["coverage"] <= 1.0           # the 95% intervals hold about 95% of the values


def test_bad_configs_and_requests():
    with pytest.raises(ConfigError, match="context \\(10\\) must be at least the largest lag \\(12\\)"):
        LagLlamaConfig(context=10, lags=(1, 12))
    with pytest.raises(ConfigError, match="lags must be increasing"):
        LagLlamaConfig(lags=(2, 1))
    with pytest.raises(ConfigError, match="lags must be increasing"):
        LagLlamaConfig(lags=(0, 1))
    with pytest.raises(ConfigError, match="n_samples must be >= 1"):
        LagLlamaConfig(n_samples=0)
    with pytest.raises(ConfigError, match="positions must be one of rope"):
        LagLlamaConfig(positions="learned")
    with pytest.raises(ConfigError, match="n_heads \\(3\\) must divide d_model"):
        LagLlamaConfig(d_model=16, n_heads=3)
    model = small_model()
    panel = Panel((Series("a", torch.arange(1.0, 21.0, dtype=torch.float64)),), season=4)
    with pytest.raises(ConfigError, match="trained to forecast 4 values; 5 were asked"):
        model.predict(panel, 5)
    with pytest.raises(ConfigError, match="quantile level must be in \\(0, 1\\)"):
        model.predict(panel, 4, (0.5, 1.5))
    # A series shorter than the context is padded, not refused.
    short = Panel((Series("b", torch.tensor([4.0, 5.0, 6.0], dtype=torch.float64)),), season=4)
    assert torch.isfinite(model.predict(short, 4, (0.1, 0.9)).mean).all()
