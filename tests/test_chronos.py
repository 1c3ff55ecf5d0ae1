"""Chronos: quantisation against a brute-force nearest-centre search, mean scaling's invariance,
the loss against a cross-entropy by hand, cached sampling against full recomputation, training
through the forecasting task's windows, and bad configs and requests."""

import math

import pytest
import torch

from seqlab.data.series import Panel, Series
from seqlab.errors import ConfigError, DataError
from seqlab.forecast.base import series_generator
from seqlab.forecast.chronos import (EOS_ID, N_SPECIAL, PAD_ID, Chronos, ChronosConfig, dequantise, mean_scale,
                                     tokenise)
from seqlab.training import TrainConfig, Trainer

from test_nbeats import panel_of_sines, sines_task

TINY = dict(d_model=16, n_layers=1, n_heads=2)


def brute_force_bins(scaled: torch.Tensor, config: ChronosConfig) -> torch.Tensor:
    """The index of the nearest bin centre low + (j + 1/2) w to each scaled value, by trying all."""
    width = (config.high - config.low) / config.n_bins
    centres = torch.tensor([config.low + (j + 0.5) * width for j in range(config.n_bins)], dtype=torch.float64)
    return (scaled[..., None] - centres).abs().argmin(dim=-1)


def test_mean_scale_is_the_mean_absolute_observed_value():
    context = torch.tensor([[1.0, -3.0, 2.0, float("nan")], [0.0, 0.0, 0.0, 0.0], [float("nan")] * 3 + [-5.0]],
                           dtype=torch.float64)
    torch.testing.assert_close(mean_scale(context), torch.tensor([[2.0], [1.0], [5.0]], dtype=torch.float64))
    with pytest.raises(DataError, match="row 1 has no observed value"):
        mean_scale(torch.tensor([[1.0, 2.0], [float("nan"), float("nan")]]))


@pytest.mark.parametrize("n_bins, low, high", [(7, -2.0, 3.0), (256, -15.0, 15.0), (2, 0.5, 1.5)])
def test_quantisation_round_trips_to_the_nearest_bin_centre(n_bins, low, high):
    config = ChronosConfig(n_bins=n_bins, low=low, high=high, **TINY)
    width = (high - low) / n_bins
    generator = torch.Generator().manual_seed(n_bins)
    scale = torch.tensor([[0.01], [1.0], [37.5]], dtype=torch.float64)
    scaled = low + (high - low) * torch.rand(3, 500, generator=generator, dtype=torch.float64)
    scaled[:, :2] = torch.tensor([low, high], dtype=torch.float64)                 # the edges are inside
    values = scaled * scale
    tokens = tokenise(values, scale, config)
    assert ((tokens >= N_SPECIAL) & (tokens < n_bins + N_SPECIAL)).all()
    assert torch.equal(tokens - N_SPECIAL, brute_force_bins(values / scale, config))
    back = dequantise(tokens, scale, config)
    assert ((back - values).abs() <= (0.5 * width * (1 + 1e-9)) * scale).all()
    # Outside [low, high] a value is clipped to the edge bin, whose centre it then comes back as.
    outside = torch.tensor([[low - 0.3, low - 1e6, high + 0.3, high + 1e6]], dtype=torch.float64) * 2.0
    clipped = tokenise(outside, torch.tensor([[2.0]], dtype=torch.float64), config)
    assert clipped.tolist() == [[N_SPECIAL, N_SPECIAL, n_bins + N_SPECIAL - 1, n_bins + N_SPECIAL - 1]]
    torch.testing.assert_close(dequantise(clipped, torch.tensor([[2.0]], dtype=torch.float64), config)[0, [0, 2]],
                               torch.tensor([2 * (low + width / 2), 2 * (high - width / 2)], dtype=torch.float64))


def test_a_missing_value_is_pad_and_has_no_value():
    config = ChronosConfig(n_bins=8, low=-1.0, high=1.0, **TINY)
    tokens = tokenise(torch.tensor([[float("nan"), 0.1, float("inf")]]), torch.tensor([[1.0]]), config)
    assert tokens[0, 0] == PAD_ID and tokens[0, 2] == PAD_ID and tokens[0, 1] == 4 + N_SPECIAL
    with pytest.raises(DataError, match="PAD or EOS"):
        dequantise(torch.tensor([[EOS_ID]]), torch.tensor([[1.0]]), config)


@pytest.mark.parametrize("factor", [3.7, 0.25])
def test_tokens_are_invariant_to_scaling_and_forecasts_scale_with_the_series(factor):
    torch.manual_seed(0)
    model = Chronos(ChronosConfig(horizon=5, context=12, n_bins=64, low=-3.0, high=3.0, n_paths=16, **TINY)).eval()
    context = 20 + 5 * torch.randn(2, 12, dtype=torch.float64)
    context[1, :4] = float("nan")                                                # a short series
    tokens, scale = model.window_tokens(context)
    scaled_tokens, scaled_scale = model.window_tokens(context * factor)
    assert torch.equal(scaled_tokens, tokens)
    torch.testing.assert_close(scaled_scale, scale * factor, rtol=1e-14, atol=0.0)
    for row in range(2):
        paths = model.sample_paths(context[row], 5, torch.Generator().manual_seed(1))
        scaled_paths = model.sample_paths(context[row] * factor, 5, torch.Generator().manual_seed(1))
        torch.testing.assert_close(scaled_paths, paths * factor, rtol=1e-12, atol=0.0)
        assert paths.std(dim=0).min() > 0                                        # the paths do differ
    # predict seeds each series by its own values, so a scaled series draws differently; greedy
    # decoding draws nothing, and its whole forecast scales (every quantile is the one path).
    greedy = Chronos(ChronosConfig(horizon=5, context=12, n_bins=64, low=-3.0, high=3.0, temperature=0.0, **TINY))
    greedy.load_state_dict(model.state_dict())
    panel = panel_of_sines(n_series=3, length=20)
    larger = Panel(tuple(Series(s.id, s.values * factor) for s in panel), season=8)
    small, large = greedy.predict(panel, 5, (0.1, 0.9)), greedy.predict(larger, 5, (0.1, 0.9))
    torch.testing.assert_close(large.mean, small.mean * factor, rtol=1e-12, atol=0.0)
    assert torch.equal(small.quantiles[0.1], small.mean) and torch.equal(small.quantiles[0.9], small.mean)


@pytest.mark.parametrize("score_context", [True, False])
def test_the_loss_is_the_cross_entropy_of_the_next_token(score_context):
    torch.manual_seed(2)
    config = ChronosConfig(horizon=3, context=6, n_bins=16, low=-2.0, high=4.0, score_context=score_context,
                           pad_probability=0.5, **TINY)
    model = Chronos(config).eval()                                                # eval: no PAD prefixes drawn
    context, target = torch.rand(4, 6, dtype=torch.float64) * 3 + 1, torch.rand(4, 3, dtype=torch.float64) * 9
    context[1, :2] = float("nan")
    model.double()
    # Tokens by hand: PAD for a missing value, else 2 + the nearest bin centre to value / scale.
    scale = torch.stack([row[row.isfinite()].abs().mean() for row in context])[:, None]
    window = torch.cat([context, target], dim=1)
    tokens = torch.where(window.isfinite(), brute_force_bins(torch.nan_to_num(window / scale), config).clamp(0, 15)
                         + N_SPECIAL, torch.full(window.shape, PAD_ID))
    with torch.no_grad():
        logits = model.lm(tokens[:, :-1])
    total, count = 0.0, 0
    for row in range(4):
        for position in range(8):                       # logits[:, p] predicts token p + 1
            following = int(tokens[row, position + 1])
            if following == PAD_ID or (not score_context and position + 1 < 6):
                continue
            log_probs = logits[row, position].double().log_softmax(dim=-1)
            total -= float(log_probs[following])
            count += 1
    assert count == (4 * 8 - 1 if score_context else 4 * 3)     # row 1's second PAD is not scored
    assert model.loss(context, target).item() == pytest.approx(total / count, rel=1e-6)


def test_training_windows_get_pad_prefixes():
    torch.manual_seed(3)
    model = Chronos(ChronosConfig(context=10, pad_probability=0.3, **TINY))
    blanked = model.blank_prefixes(torch.ones(4000, 10))
    missing = blanked.isnan()
    lengths = missing.sum(dim=1)
    assert torch.equal(missing, torch.arange(10)[None, :] < lengths[:, None])   # prefixes only
    assert 0.27 < (lengths > 0).double().mean() < 0.33 and lengths.max() == 9   # at least one value kept
    # Only in training: in eval mode the loss reads the window as it is.
    context, target = torch.rand(8, 10) + 1, torch.rand(8, 8) + 1
    model.eval()
    assert model.loss(context, target).item() == model.loss(context, target).item()


@pytest.mark.parametrize("preset, top_k", [("llama", None), ("gpt", 5)])
def test_cached_sampling_equals_full_recomputation(preset, top_k):
    torch.manual_seed(4)
    config = ChronosConfig(horizon=7, context=9, n_bins=32, preset=preset, top_k=top_k, n_paths=12, **TINY)
    model = Chronos(config).double().eval()
    prompt = tokenise(torch.rand(1, 9, dtype=torch.float64) * 4, torch.ones(1, 1, dtype=torch.float64), config)
    prompt[0, :3] = PAD_ID
    cached = model.sample_tokens(prompt, 7, torch.Generator().manual_seed(5))
    recomputed = model.sample_tokens_ref(prompt, 7, torch.Generator().manual_seed(5))
    assert cached.shape == (12, 7) and torch.equal(cached, recomputed)
    assert len(set(map(tuple, cached.tolist()))) > 1 and (cached >= N_SPECIAL).all()
    greedy = Chronos(ChronosConfig(**{**config.__dict__, "temperature": 0.0})).double().eval()
    greedy.load_state_dict(model.state_dict())
    paths = greedy.sample_tokens(prompt, 7, torch.Generator().manual_seed(6))
    assert torch.equal(paths, greedy.sample_tokens_ref(prompt, 7, torch.Generator()))
    assert (paths == paths[0]).all()                                          # greedy: every path the same


def test_predict_takes_the_median_and_quantiles_of_each_series_own_paths():
    torch.manual_seed(7)
    model = Chronos(ChronosConfig(horizon=4, context=16, n_bins=32, n_paths=20, **TINY)).eval()
    panel = panel_of_sines(n_series=2, length=10)                             # shorter than the context
    forecast = model.predict(panel, 3, (0.2, 0.8))
    for row, series in enumerate(panel):
        context = model.context_of(series)
        assert context[:6].isnan().all() and torch.equal(context[6:], series.values)
        paths = model.sample_paths(context, 3, series_generator(series))
        torch.testing.assert_close(forecast.mean[row], paths.quantile(0.5, dim=0), rtol=0.0, atol=0.0)
        torch.testing.assert_close(forecast.quantiles[0.8][row], paths.quantile(0.8, dim=0), rtol=0.0, atol=0.0)


def test_training_on_the_task_windows_beats_naive2(tmp_path):
    torch.set_num_threads(1)
    task = sines_task(tmp_path)
    torch.manual_seed(0)
    model = Chronos(ChronosConfig(horizon=8, context=32, n_bins=256, low=-4.0, high=4.0, d_model=32, n_layers=1,
                                  n_heads=2, n_paths=50))
    before = task.evaluate(model, "valid")["mase"]
    config = TrainConfig(steps=200, batch_size=32, lr=3e-3, warmup_steps=20, weight_decay=0.0, eval_every=200,
                         seed=0, progress=False, device="cpu")
    Trainer(model, task, config).fit()
    after = task.evaluate(model, "test")
    assert after["mase"] < before / 3
    assert after["owa"] < 1.0                        # better than Naive2 on the held-out horizon
    assert 0.8 < after["coverage"]                   # the 95% interval holds most of the values


@pytest.mark.parametrize("field, value, message", [
    ("n_bins", 1, "n_bins must be >= 2"), ("low", 15.0, "low < high"), ("high", float("nan"), "low < high"),
    ("n_paths", 0, "n_paths must be >= 1"), ("temperature", -1.0, "temperature must be >= 0"),
    ("top_k", 0, "top_k must be >= 1"), ("pad_probability", 1.0, "pad_probability"),
    ("preset", "t5", "preset must be gpt or llama"), ("n_heads", 3, "must divide d_model")])
def test_bad_configs(field, value, message):
    with pytest.raises(ConfigError, match=message):
        ChronosConfig(**{**TINY, field: value})


def test_bad_requests():
    model = Chronos(ChronosConfig(horizon=4, context=8, n_bins=16, **TINY))
    panel = panel_of_sines(n_series=2, length=12)
    with pytest.raises(ConfigError, match="trained to forecast 4 values; 5 were asked"):
        model.predict(panel, 5)
    with pytest.raises(ConfigError, match="quantile level must be in"):
        model.predict(panel, 4, (1.5,))
    with pytest.raises(DataError, match="windows of 8 \\+ 4 values"):
        model.loss(torch.ones(2, 7), torch.ones(2, 4))
    with pytest.raises(DataError, match="has no values"):
        model.predict(Panel((Series("empty", torch.zeros(0, dtype=torch.float64)),)), 4)
    assert math.isfinite(model.loss(torch.ones(2, 8), torch.ones(2, 4)).item())
