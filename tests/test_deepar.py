"""DeepAR: the teacher-forced likelihood against a per-step LSTMCell loop with scipy's Student-t,
the generator-aware gamma and Student-t samplers against scipy (KS tests), the first sampled step
against the teacher-forced distribution, scale equivariance, training through the forecasting
task's windows, and bad configs and requests."""

import math

import pytest
import torch
from scipy import stats

from seqlab.data.series import Panel, Series
from seqlab.errors import ConfigError, DataError
from seqlab.forecast.deepar import DeepAR, DeepARConfig
from seqlab.forecast.student_t import disc_points, sample_student_t
from seqlab.training import TrainConfig, Trainer
from test_nbeats import panel_of_sines, sines_task


def softplus(x):
    return torch.log1p(torch.exp(torch.as_tensor(x, dtype=torch.float64)))


def reference_log_likelihood(model, context, target):
    """log p(z_t | z_<t) for t = max(lags) .. C+H-1 of one window, by a Python loop over
    nn.LSTMCell layers (float64, the fused LSTM's weights copied) and scipy's Student-t density
    of the unscaled value with loc nu mu and scale nu sigma."""
    config = model.config
    cells = []
    for layer in range(config.n_layers):
        cell = torch.nn.LSTMCell(len(model.lags) + 1 if layer == 0 else config.hidden, config.hidden).double()
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).data.copy_(getattr(model.lstm, f"{name}_l{layer}"))
        cells.append(cell)
    values = torch.cat([context, target]).tolist()
    nu = config.scale_offset + sum(abs(v) for v in context.tolist()) / len(context)
    states = [(torch.zeros(1, config.hidden, dtype=torch.float64),) * 2 for _ in cells]
    weight, bias = model.head.projection.weight, model.head.projection.bias
    log_densities = []
    for t in range(max(model.lags), len(values)):
        inputs = torch.tensor([[values[t - lag] / nu for lag in model.lags] + [t / (config.context + config.horizon)]],
                              dtype=torch.float64)
        for layer, cell in enumerate(cells):
            states[layer] = cell(inputs, states[layer])
            inputs = states[layer][0]
        raw = (inputs[0] @ weight.T + bias).tolist()
        df, loc, scale = 2 + softplus(raw[0]).item(), raw[1], softplus(raw[2]).item() + 1e-6
        log_densities.append(stats.t.logpdf(values[t], df, loc=nu * loc, scale=nu * scale))
    return torch.tensor(log_densities, dtype=torch.float64), nu


@pytest.mark.parametrize("score_context", [True, False])
def test_the_likelihood_is_a_per_step_cell_loop_with_scipys_student_t(score_context):
    torch.manual_seed(0)
    config = DeepARConfig(horizon=5, context=12, season=4, seasonal_lags=2, hidden=6, n_layers=2, dropout=0.0,
                          score_context=score_context)
    model = DeepAR(config).double()
    assert model.lags == (1, 4, 8)
    context = torch.randn(3, 12, dtype=torch.float64) * 5 + 10
    target = torch.randn(3, 5, dtype=torch.float64) * 5 + 10
    fast = model.log_likelihood(context, target)                                        # (3, 17 - 8)
    assert fast.shape == (3, 9)
    losses = []
    for row in range(3):
        expected, nu = reference_log_likelihood(model, context[row], target[row])
        torch.testing.assert_close(fast[row], expected, rtol=1e-10, atol=1e-10)
        scaled = expected + math.log(nu)                                                # the density of z / nu
        losses.append(-(scaled if score_context else scaled[12 - 8:]))
    assert model.loss(context, target).item() == pytest.approx(torch.cat(losses).mean().item(), rel=1e-10)


@pytest.mark.parametrize("df", [2.2, 4.0, 30.0])
def test_the_student_t_sampler_draws_student_t_variates(df):
    shape = (100000,)
    draws = sample_student_t(torch.full(shape, df), torch.full(shape, 1.5), torch.full(shape, 2.0),
                             torch.Generator().manual_seed(1)).numpy()
    assert stats.kstest(draws, stats.t(df, loc=1.5, scale=2.0).cdf).pvalue > 1e-3
    assert stats.kstest(draws, stats.t(df, loc=1.5, scale=2.1).cdf).pvalue < 1e-6     # and can tell 5% of scale
    assert stats.kstest(draws, stats.t(df, loc=1.6, scale=2.0).cdf).pvalue < 1e-6      # and a shift of 0.05 scale
    # The random numbers drawn do not depend on df (what batching the series' paths relies on).
    first, second = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    sample_student_t(torch.full((500,), df), torch.zeros(500), torch.ones(500), first)
    sample_student_t(torch.full((500,), 2.0 * df), torch.zeros(500), torch.ones(500), second)
    assert torch.equal(first.get_state(), second.get_state())


def test_disc_points_are_uniform_on_the_disc():
    u, w = disc_points((100000,), torch.Generator().manual_seed(2))
    assert ((w > 0) & (w < 1)).all() and (u * u <= w).all()
    assert stats.kstest(w.numpy(), stats.uniform.cdf).pvalue > 1e-3                   # radius^2 ~ U(0, 1)
    angle_cosine = (u / w.sqrt()).numpy()                                              # cos of a uniform angle
    assert stats.kstest(angle_cosine, stats.arcsine(loc=-1, scale=2).cdf).pvalue > 1e-3


def test_sampled_paths_follow_the_teacher_forced_distributions():
    """Every sampled step, given the path so far, is a draw from the distribution the teacher-
    forced network gives that path: its probability integral transform is uniform."""
    torch.manual_seed(2)
    model = DeepAR(DeepARConfig(horizon=4, context=10, season=3, hidden=8, dropout=0.0)).double().eval()
    context = torch.randn(10, dtype=torch.float64) + 5
    paths = model.sample_paths(context[None], 4, 20000, [torch.Generator().manual_seed(3)])[0]    # (N, 4)
    windows = torch.cat([context.expand(20000, -1), paths], dim=1)                              # (N, 14)
    nu = model.scale(windows[:, :10])
    with torch.no_grad():
        steps = model.distributions(windows, nu)                                                 # steps 3 .. 13
    df, loc, scale = (p[:, 10 - model.first:].numpy() for p in (steps.df, steps.loc, steps.scale * nu))
    loc = loc * nu.numpy()
    for step in range(4):
        pit = stats.t.cdf(paths[:, step].numpy(), df[:, step], loc=loc[:, step], scale=scale[:, step])
        assert stats.kstest(pit, stats.uniform.cdf).pvalue > 1e-3, step
        wrong = stats.t.cdf(paths[:, step].numpy(), df[:, step], loc=loc[:, step], scale=1.1 * scale[:, step])
        assert stats.kstest(wrong, stats.uniform.cdf).pvalue < 1e-6, step                      # the test can tell


def test_forecasts_scale_with_the_series():
    torch.manual_seed(4)
    context = panel_of_sines(n_series=1, length=16, noise=0.04).series[0].values
    exact = DeepAR(DeepARConfig(horizon=6, context=16, season=8, hidden=8, scale_offset=0.0)).eval()
    small = exact.sample_paths(context[None], 6, 50, [torch.Generator().manual_seed(5)])
    large = exact.sample_paths(context[None] * 1000, 6, 50, [torch.Generator().manual_seed(5)])
    torch.testing.assert_close(large, small * 1000, rtol=1e-4, atol=0.0)
    # The paper's nu = 1 + mean |z| is equivariant only where 1 is negligible beside the values:
    # to about 1 / mean |z| for a series of magnitude 1e4, far from it for one of magnitude 1.
    paper = DeepAR(DeepARConfig(horizon=6, context=16, season=8, hidden=8, scale_offset=1.0)).eval()
    big = context * 1000 / context.abs().mean()                                          # mean |z| 1000
    sampled = [paper.sample_paths(values[None], 6, 50, [torch.Generator().manual_seed(5)]) for values in (big, big * 1000)]
    torch.testing.assert_close(sampled[1], sampled[0] * 1000, rtol=1e-2, atol=0.0)
    tiny = context / context.abs().mean()                                                # mean |z| 1
    sampled = [paper.sample_paths(values[None], 6, 50, [torch.Generator().manual_seed(5)]) for values in (tiny, tiny * 1000)]
    assert not torch.allclose(sampled[1], sampled[0] * 1000, rtol=1e-2, atol=0.0)


def test_training_on_the_task_windows_beats_naive2_and_covers_its_intervals(tmp_path):
    panel = panel_of_sines(n_series=40, noise=0.1)                 # noise that dominates the model's error
    task = sines_task(tmp_path, panel, level=0.8)
    torch.manual_seed(0)
    model = DeepAR(DeepARConfig(horizon=8, context=32, season=8, hidden=16, n_layers=1, dropout=0.0))
    config = TrainConfig(steps=300, batch_size=64, lr=1e-2, warmup_steps=20, weight_decay=0.0, eval_every=300,
                         seed=0, progress=False, device="cpu")
    Trainer(model, task, config).fit()
    scores = task.evaluate(model, "test")
    assert scores["owa"] < 1.0                            # better than Naive2 on the held-out horizon
    # 320 forecast values; the nominal 80% interval covers between 65% and 92% of them.
    assert 0.65 <= scores["coverage"] <= 0.92


def test_bad_configs_and_requests():
    with pytest.raises(ConfigError, match="context must exceed the largest lag 24"):
        DeepARConfig(context=24, season=24)
    with pytest.raises(ConfigError, match="context must exceed the largest lag 14"):
        DeepARConfig(context=14, season=7, seasonal_lags=2)
    for field, value in (("n_samples", 0), ("hidden", 0), ("seasonal_lags", -1), ("dropout", 1.0),
                         ("scale_offset", -1.0), ("scale_offset", math.inf), ("point_forecast", "mode")):
        with pytest.raises(ConfigError, match=f"DeepARConfig.{field}"):
            DeepARConfig(**{field: value})
    assert DeepARConfig(season=1, seasonal_lags=3).lags == (1,)
    model = DeepAR(DeepARConfig(horizon=4, context=8, season=2, hidden=4, n_samples=10))
    panel = panel_of_sines(n_series=2, length=12, season=2, noise=0.04)
    with pytest.raises(ConfigError, match="quantile level must be in"):
        model.predict(panel, 4, (1.5,))
    with pytest.raises(ConfigError):
        model.predict(panel, 0)
    # A short series is padded, a longer horizon sampled on; the median is the point forecast.
    short = Panel((Series("short", torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64)),), season=2)
    forecast = model.predict(short, 6, (0.5,))
    assert forecast.mean.shape == (1, 6) and torch.equal(forecast.mean, forecast.quantiles[0.5])
    with pytest.raises(DataError, match="non-finite value for series 'huge'"):
        model.predict(Panel((Series("huge", torch.full((12,), 1e300, dtype=torch.float64)),), season=2), 4)


def test_a_series_is_forecast_alike_in_any_batch(monkeypatch):
    from seqlab.forecast import deepar

    torch.manual_seed(6)
    model = DeepAR(DeepARConfig(horizon=5, context=16, season=8, hidden=8, n_samples=40))
    panel = panel_of_sines(n_series=5, length=30, noise=0.04)
    together = model.predict(panel, 5, (0.1, 0.9))
    monkeypatch.setattr(deepar, "PREDICT_ROWS", 40)                                     # one series per batch
    alone = model.predict(panel, 5, (0.1, 0.9))
    torch.testing.assert_close(alone.mean, together.mean, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(alone.quantiles[0.9], together.quantiles[0.9], rtol=1e-5, atol=0.0)
    assert not torch.allclose(together.mean[0], together.mean[1], rtol=1e-2)           # rows are distinct series
    with pytest.raises(DataError, match=r"takes \(S, 16\) contexts and one generator each"):
        model.sample_paths(torch.ones(2, 15), 5, 10, [torch.Generator()] * 2)
