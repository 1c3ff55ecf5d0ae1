"""The mixture-of-experts feed-forward: routing against a per-token loop, the balancing loss's
closed forms, the dense limit, capacity and drops, and the auxiliary loss reaching the
optimiser through the Trainer."""

from __future__ import annotations

import math

import pytest
import torch

from seqlab import registry
from seqlab.contracts import auxiliary_loss
from seqlab.errors import ConfigError
from seqlab.layers.feedforward import FeedForward
from seqlab.layers.moe import MixtureOfExperts
from seqlab.training import TaskLoss, TrainConfig, Trainer

from helpers import tiny_task

D, HIDDEN = 8, 16


def make_moe(n_experts=4, top_k=2, seed=0, **options) -> MixtureOfExperts:
    torch.manual_seed(seed)
    return MixtureOfExperts(D, HIDDEN, n_experts, top_k, "gelu", **options).double()


def tokens(n=12, seed=1):
    return torch.randn(n, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_output_equals_a_per_token_loop(top_k):
    moe = make_moe(top_k=top_k).eval()
    x = tokens()
    expected = []
    for row in x:
        p = torch.softmax(moe.router(row), dim=-1)
        chosen = p.topk(top_k).indices
        gates = p[chosen] / p[chosen].sum() if top_k > 1 else p[chosen]
        expected.append(sum(g * moe.experts[int(e)](row) for g, e in zip(gates, chosen)))
    torch.testing.assert_close(moe(x), torch.stack(expected), rtol=1e-10, atol=1e-12)


def test_balancing_loss_is_alpha_under_uniform_routing():
    moe = make_moe(n_experts=4, top_k=1, balance_weight=0.3, z_loss_weight=0.0).train()
    with torch.no_grad():
        moe.router.weight.zero_()                               # p = 1/N for every token
    moe(tokens())
    torch.testing.assert_close(moe.auxiliary_loss, torch.tensor(0.3, dtype=torch.float64))
    # With the z-loss: (logsumexp of N zeros)^2 = (log N)^2 per token.
    moe.z_loss_weight = 0.01
    moe(tokens())
    torch.testing.assert_close(moe.auxiliary_loss, torch.tensor(0.3 + 0.01 * math.log(4) ** 2, dtype=torch.float64))


def test_balancing_loss_grows_when_load_concentrates_and_ignores_padding():
    moe = make_moe(n_experts=4, top_k=1, balance_weight=1.0, z_loss_weight=0.0).train()
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 50.0                          # x_0 > 0 sends a token to expert 0
    x = tokens(40).abs() + 0.1                                  # every token to expert 0: f_0 = 1
    moe(x)
    p_0 = torch.softmax(50.0 * x[:, :1] * torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64), dim=-1)[:, 0]
    torch.testing.assert_close(moe.auxiliary_loss, 4 * p_0.mean())     # alpha N f_0 P_0
    assert moe.auxiliary_loss.item() > 3.9
    assert moe.statistics()["expert_max_load"] == pytest.approx(4.0)
    # Padding does not vote: the loss with a mask equals the loss of the real tokens alone.
    x = tokens(10)
    mask = torch.tensor([True] * 6 + [False] * 4)
    moe(x, mask=mask)
    masked = moe.auxiliary_loss
    moe(x[:6])
    torch.testing.assert_close(masked, moe.auxiliary_loss)


@pytest.mark.parametrize("top_k", [2, 3])
def test_identical_experts_with_renormalised_gates_equal_a_dense_feedforward(top_k):
    moe = make_moe(n_experts=3, top_k=top_k, capacity_factor=10.0).train()
    dense = FeedForward(D, HIDDEN, "gelu").double()
    for expert in moe.experts:
        expert.load_state_dict(dense.state_dict())
    x = tokens()
    torch.testing.assert_close(moe(x), dense(x), rtol=1e-12, atol=1e-12)
    assert moe.statistics()["expert_dropped"] == 0.0


def test_tokens_dropped_at_capacity_pass_through_the_residual():
    # Every token wants expert 0; capacity = ceil(0.5 * 1 * 12 / 2) = 3, so tokens 3.. are dropped:
    # their rows are zero here, and the block's residual carries them on unchanged.
    from functools import partial

    from seqlab.layers.attention import MultiHeadAttention
    from seqlab.layers.block import TransformerBlock
    from seqlab.layers.norms import make_norm

    moe = make_moe(n_experts=2, top_k=1, capacity_factor=0.5).train()
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 50.0
    x = tokens(12).abs()
    out = moe(x)
    assert torch.count_nonzero(out[:3].abs().sum(-1)) == 3
    assert torch.equal(out[3:], torch.zeros_like(out[3:]))
    assert moe.statistics()["expert_dropped"] == pytest.approx(9 / 12)
    moe.eval()                                                   # eval: no capacity, nothing dropped
    assert torch.count_nonzero(moe(x).abs().sum(-1)) == 12

    torch.manual_seed(0)
    attention = MultiHeadAttention(D, 2, causal=True).double()
    block = TransformerBlock(attention, moe, partial(make_norm, "layernorm", D)).double().train()
    with torch.no_grad():
        block.feedforward_norm.weight.zero_()                   # Norm(h) = its bias: every token alike
        block.feedforward_norm.bias.fill_(1.0)
        stream = x[None]
        h = stream + block.attention(block.attention_norm(stream))
        out = block(stream)
    torch.testing.assert_close(out[0, 3:], h[0, 3:], rtol=0, atol=0)
    assert not torch.allclose(out[0, :3], h[0, :3])


def test_top_k_larger_than_the_experts_is_a_config_error():
    with pytest.raises(ConfigError, match=r"experts_top_k \(3\) must be between 1 and"):
        MixtureOfExperts(D, HIDDEN, 2, 3)
    with pytest.raises(ConfigError, match=r"experts_top_k \(5\) must be between 1 and n_experts \(4\)"):
        registry.build("transformer", tiny_task(2000), n_experts=4, experts_top_k=5)


def test_the_auxiliary_loss_reaches_the_optimiser_and_the_log(tmp_path):
    task = tiny_task(4000, context=8)
    torch.manual_seed(0)
    model = registry.build("transformer", task, d_model=16, n_layers=2, n_experts=4, experts_top_k=1,
                           capacity_factor=1.0, balance_weight=0.5).train()
    batch = task.train_batch(4, torch.Generator().manual_seed(0))
    total = TaskLoss(task, model)(batch)
    plain = task.loss(model, batch)
    extra = auxiliary_loss(model)                               # what that forward left
    assert extra is not None and auxiliary_loss(model) is None  # collected once, then cleared
    torch.testing.assert_close(total, plain + extra, rtol=1e-6, atol=1e-6)
    assert extra.item() > 2 * 0.5                               # two layers, each >= alpha
    # The router's gradient includes the balancing term's.
    model.zero_grad()
    task.loss(model, batch).backward()
    auxiliary_loss(model)
    without = model.blocks[0].feedforward.router.weight.grad.clone()
    model.zero_grad()
    TaskLoss(task, model)(batch).backward()
    assert not torch.allclose(model.blocks[0].feedforward.router.weight.grad, without)
    config = TrainConfig(steps=2, batch_size=4, eval_every=2, log_every=1, warmup_steps=0, progress=False)
    result = Trainer(model, task, config, tmp_path / "run").fit()
    logged = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "expert" in line]
    assert logged and '"expert_max_load"' in logged[0] and '"expert_dropped"' in logged[0]
    assert result.steps == 2


def test_a_comparison_reports_the_experts_load(tmp_path):
    import time

    from seqlab.compare import run_one
    from seqlab.tasks.lm import LanguageModelingOptions

    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    result = run_one("lm", LanguageModelingOptions(data=str(text), context=16), "transformer", 4.0, time.monotonic(),
                     {"batch_size": 4}, {"d_model": 16, "n_layers": 1, "n_experts": 4, "experts_top_k": 1,
                                         "capacity_factor": 0.25}, False, None)
    # Capacity 0.25 lets each expert take a sixteenth of the tokens: at least 3/4 are dropped in
    # a training step (the statistics reported), none in evaluation (which runs later).
    assert result.metrics["expert_dropped"] >= 0.74
    assert 1.0 <= result.metrics["expert_max_load"]
    assert f"expert_dropped: {result.metrics['expert_dropped']:.4g}" in result.sections["Last training step"]
