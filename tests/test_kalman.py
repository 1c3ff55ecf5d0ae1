"""The Kalman filter, RTS smoother and forecasts against dense Gaussian conditioning and
statsmodels; the local level forecaster on the Nile."""

import math

import numpy as np
import pytest
import statsmodels.api as sm
import torch
from conftest import SHARED_DATA

from seqlab.data.series import single
from seqlab.errors import ConfigError, DataError
from seqlab.forecast.kalman import (LocalLevel, LocalLevelConfig, StateSpace, kalman_filter, local_level,
                                    local_level_profile, rts_smoother, state_forecast)

NILE = SHARED_DATA / "timeseries" / "Nile.csv"
needs_nile = pytest.mark.skipif(not NILE.is_file(), reason=f"{NILE} is absent")
DK_NILE = (15099.0, 1469.1)        # Durbin and Koopman's MLE of (sigma_eps^2, sigma_eta^2) for the Nile


def nile() -> np.ndarray:
    import pandas as pd
    return pd.read_csv(NILE)["value"].to_numpy(dtype=float)


def random_model(seed: int, m: int = 2, g: int = 2) -> StateSpace:
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    T = 0.5 * draw(m, m)
    R = draw(m, g)
    Q_root, P_root = draw(g, g), draw(m, m)
    return StateSpace(Z=draw(m), H=torch.tensor(0.3, dtype=torch.float64), T=T, R=R, Q=Q_root @ Q_root.T,
                      a1=draw(m), P1=P_root @ P_root.T, P1_diffuse=torch.zeros(m, m, dtype=torch.float64))


def dense_joint(model: StateSpace, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The joint Gaussian of states a_1..n (n m) and observations y_1..n (n), built from the
    independent sources (a_1, eta_1..n-1, eps_1..n): means and the full covariance."""
    m, g = model.n_states, model.R.shape[1]
    sources = m + (n - 1) * g + n
    loading = torch.zeros(n * m + n, sources, dtype=torch.float64)     # states then observations
    state_map = torch.zeros(m, sources, dtype=torch.float64)
    state_map[:, :m] = torch.eye(m, dtype=torch.float64)
    mean_state = model.a1.clone()
    means = torch.zeros(n * m + n, dtype=torch.float64)
    for t in range(n):
        loading[t * m:(t + 1) * m] = state_map
        loading[n * m + t] = model.Z @ state_map
        loading[n * m + t, m + (n - 1) * g + t] = 1.0
        means[t * m:(t + 1) * m], means[n * m + t] = mean_state, model.Z @ mean_state
        state_map = model.T @ state_map
        if t < n - 1:
            state_map[:, m + t * g:m + (t + 1) * g] = model.R
        mean_state = model.T @ mean_state
    source_cov = torch.block_diag(model.P1, *[model.Q] * (n - 1), *[model.H.reshape(1, 1)] * n)
    return means[:n * m], means[n * m:], loading @ source_cov @ loading.T, torch.tensor(n * m)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filter_and_smoother_equal_dense_gaussian_conditioning(seed):
    model, n = random_model(seed), 5
    y = torch.randn(n, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64)
    mean_a, mean_y, cov, split = dense_joint(model, n)
    S_aa, S_ay, S_yy = cov[:split, :split], cov[:split, split:], cov[split:, split:]
    residual = y - mean_y
    expected_mean = mean_a + S_ay @ torch.linalg.solve(S_yy, residual)
    expected_cov = S_aa - S_ay @ torch.linalg.solve(S_yy, S_ay.T)
    expected_loglik = torch.distributions.MultivariateNormal(mean_y, S_yy).log_prob(y)

    filtered = kalman_filter(model, y)
    a_smooth, P_smooth = rts_smoother(model, filtered)
    m = model.n_states
    torch.testing.assert_close(torch.tensor(filtered.loglik, dtype=torch.float64), expected_loglik, rtol=1e-10, atol=0)
    torch.testing.assert_close(a_smooth.reshape(-1), expected_mean, rtol=1e-9, atol=1e-10)
    blocks = torch.stack([expected_cov[t * m:(t + 1) * m, t * m:(t + 1) * m] for t in range(n)])
    torch.testing.assert_close(P_smooth, blocks, rtol=1e-9, atol=1e-10)


def test_forecasts_equal_dense_conditioning_on_the_past():
    model, n, horizon = random_model(3), 4, 3
    y = torch.randn(n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    _, mean_y, cov, split = dense_joint(model, n + horizon)
    S_yy = cov[split:, split:]
    past, future = slice(0, n), slice(n, n + horizon)
    gain = S_yy[future, past] @ torch.linalg.inv(S_yy[past, past])
    expected_mean = mean_y[future] + gain @ (y - mean_y[past])
    expected_joint = S_yy[future, future] - gain @ S_yy[past, future]
    mean, variance, joint = state_forecast(model, kalman_filter(model, y), horizon)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(joint, expected_joint, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(variance, expected_joint.diagonal(), rtol=1e-10, atol=1e-12)


def test_missing_value_is_skipped_as_in_dense_conditioning():
    model, n = random_model(5), 5
    y = torch.randn(n, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    y[2] = float("nan")
    mean_a, mean_y, cov, split = dense_joint(model, n)
    keep = torch.tensor([0, 1, 3, 4]) + split
    S_ay, S_yy = cov[:split][:, keep], cov[keep][:, keep]
    expected = mean_a + S_ay @ torch.linalg.solve(S_yy, y[keep - split] - mean_y[keep - split])
    a_smooth, _ = rts_smoother(model, kalman_filter(model, y))
    torch.testing.assert_close(a_smooth.reshape(-1), expected, rtol=1e-9, atol=1e-10)


@needs_nile
def test_local_level_on_nile_equals_statsmodels_exact_diffuse():
    # Initialisation: exact diffuse level (DK section 5.2); statsmodels with use_exact_diffuse=True.
    y = nile()
    reference = sm.tsa.UnobservedComponents(y, level="local level", use_exact_diffuse=True)
    model = local_level(*DK_NILE)
    filtered = kalman_filter(model, torch.from_numpy(y))
    assert filtered.loglik == pytest.approx(reference.loglike(list(DK_NILE)), rel=1e-12)
    smoothed = reference.smooth(list(DK_NILE))
    a_smooth, P_smooth = rts_smoother(model, filtered)
    np.testing.assert_allclose(a_smooth[:, 0].numpy(), smoothed.smoothed_state[0], rtol=1e-10)
    np.testing.assert_allclose(P_smooth[:, 0, 0].numpy(), smoothed.smoothed_state_cov[0, 0], rtol=1e-9)
    forecast = smoothed.get_forecast(10)
    mean, variance, _ = state_forecast(model, filtered, 10)
    np.testing.assert_allclose(mean.numpy(), forecast.predicted_mean, rtol=1e-12)
    np.testing.assert_allclose(variance.numpy(), forecast.var_pred_mean, rtol=1e-10)


@needs_nile
def test_local_level_with_large_proper_variance_equals_statsmodels_approximate_diffuse():
    # statsmodels' default: a1 = 0, P1 = 1e6, the first observation's term left out (burn 1).
    y = nile()
    reference = sm.tsa.UnobservedComponents(y, level="local level")
    model = local_level(*DK_NILE)
    model = StateSpace(model.Z, model.H, model.T, model.R, model.Q, model.a1,
                       torch.tensor([[1e6]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64))
    filtered = kalman_filter(model, torch.from_numpy(y))
    first = -0.5 * (math.log(2 * math.pi) + math.log(float(filtered.F[0])) + float(filtered.v[0] ** 2 / filtered.F[0]))
    assert filtered.loglik - first == pytest.approx(reference.loglike(list(DK_NILE)), rel=1e-12)


@needs_nile
def test_profile_likelihood_equals_the_filter_at_its_variance():
    y = nile()
    loglik, sigma2 = local_level_profile(y, 0.1)
    assert loglik == pytest.approx(kalman_filter(local_level(sigma2, 0.1 * sigma2), torch.from_numpy(y)).loglik,
                                   rel=1e-12)


@needs_nile
def test_local_level_mle_on_nile_matches_durbin_koopman():
    y = nile()
    parameters = LocalLevel().fit_series(torch.from_numpy(y), 1)
    torch.testing.assert_close(parameters, torch.tensor(DK_NILE, dtype=torch.float64), rtol=2e-4, atol=0)
    reference = sm.tsa.UnobservedComponents(y, level="local level", use_exact_diffuse=True).fit(disp=0)
    ours = kalman_filter(local_level(*parameters.tolist()), torch.from_numpy(y)).loglik
    assert ours >= reference.llf - 1e-9                 # at least as high as statsmodels' optimum


def test_local_level_forecaster_contract():
    values = torch.cumsum(torch.randn(60, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 0)
    panel = single(values, id="walk")
    model = LocalLevel().fit(panel)
    forecast = model.predict(panel, 6, quantiles=(0.1, 0.5, 0.9))
    sigma2_eps, sigma2_eta = model.fitted["walk"][1].tolist()
    filtered = kalman_filter(local_level(sigma2_eps, sigma2_eta), values)
    level, P = float(filtered.a_pred[-1, 0]), float(filtered.P_pred[-1, 0, 0])
    torch.testing.assert_close(forecast.mean[0], torch.full((6,), level, dtype=torch.float64), rtol=1e-12, atol=0)
    steps = torch.arange(6, dtype=torch.float64)
    std = (P + steps * sigma2_eta + sigma2_eps).sqrt()
    torch.testing.assert_close(forecast.quantiles[0.9][0] - forecast.mean[0], 1.2815515655446004 * std,
                               rtol=1e-9, atol=0)
    torch.testing.assert_close(forecast.quantiles[0.5][0], forecast.mean[0], rtol=1e-12, atol=1e-9)


def test_local_level_bad_inputs():
    with pytest.raises(DataError, match="'short'"):
        LocalLevel().fit(single([1.0, 2.0], id="short"))
    with pytest.raises(ConfigError, match="min_log_ratio"):
        LocalLevelConfig(min_log_ratio=3.0, max_log_ratio=1.0)
    flat = single([4.0] * 10, id="flat")
    forecast = LocalLevel().fit(flat).predict(flat, 3, quantiles=(0.05, 0.95))
    torch.testing.assert_close(forecast.quantiles[0.05], torch.full((1, 3), 4.0, dtype=torch.float64))


def test_smoother_refuses_a_long_diffuse_period():
    # A local linear trend: the slope is not identified by the first observation.
    two = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    model = StateSpace(Z=torch.tensor([1.0, 0.0], dtype=torch.float64), H=torch.tensor(1.0, dtype=torch.float64),
                       T=two, R=torch.eye(2, dtype=torch.float64), Q=torch.eye(2, dtype=torch.float64),
                       a1=torch.zeros(2, dtype=torch.float64), P1=torch.zeros(2, 2, dtype=torch.float64),
                       P1_diffuse=torch.eye(2, dtype=torch.float64))
    filtered = kalman_filter(model, torch.arange(6, dtype=torch.float64))
    assert filtered.diffuse[:2].all() and not filtered.diffuse[2:].any()
    with pytest.raises(ConfigError, match="diffuse"):
        rts_smoother(model, filtered)
