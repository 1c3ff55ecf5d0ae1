"""The Student-t head: its log-density against scipy's, and valid parameters at extreme inputs."""

import pytest
import torch
from scipy import stats

from seqlab.forecast.student_t import MIN_DF, StudentTHead, student_t_nll


def test_log_prob_is_scipys_student_t_log_density():
    torch.manual_seed(0)
    head = StudentTHead(5).double()
    hidden = torch.randn(4, 7, 5, dtype=torch.float64) * 3
    target = torch.randn(4, 7, dtype=torch.float64) * 4
    distribution = head(hidden)
    assert distribution.batch_shape == (4, 7)
    raw = hidden @ head.projection.weight.T + head.projection.bias                   # (4, 7, 3), by hand
    df = 2 + torch.log1p(torch.exp(raw[..., 0]))
    scale = torch.log1p(torch.exp(raw[..., 2])) + 1e-6
    expected = stats.t.logpdf(target.numpy(), df.detach().numpy(), loc=raw[..., 1].detach().numpy(),
                              scale=scale.detach().numpy())
    torch.testing.assert_close(distribution.log_prob(target), torch.from_numpy(expected), rtol=1e-10, atol=1e-10)
    assert student_t_nll(distribution, target).item() == pytest.approx(-expected.mean(), rel=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_hidden_values_give_valid_parameters(dtype):
    torch.manual_seed(1)
    head = StudentTHead(3).to(dtype)
    hidden = torch.tensor([[1e4, 1e4, 1e4], [-1e4, -1e4, -1e4], [1e4, -1e4, 0.0], [0.0, 0.0, 0.0]], dtype=dtype)
    for sign in (1.0, -1.0):
        distribution = head(sign * hidden)
        assert (distribution.df > MIN_DF).all() and (distribution.scale > 0).all()
        for value in (distribution.df, distribution.loc, distribution.scale, distribution.variance,
                      distribution.log_prob(torch.zeros(4, dtype=dtype))):
            assert torch.isfinite(value).all()
    # Gradients flow and stay finite at the extremes too.
    head.zero_grad()
    head(hidden).log_prob(torch.ones(4, dtype=dtype)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
