"""Gradient diagnostics and the synthetic memory tasks."""

import math

import pytest
import torch
from torch import nn

from seqlab.diagnostics import gradient_flow, plot_gradient_flow, recurrent_matrices
from seqlab.errors import ConfigError
from seqlab.models.recurrent_heads import ManyToOne, RecurrentHeadConfig
from seqlab.tasks.diagnostics import AddingProblem, CopyMemory


def regressor(cell, seed=0):
    torch.manual_seed(seed)
    return ManyToOne(RecurrentHeadConfig(n_outputs=1, n_features=2, cell=cell, d_model=16))


@pytest.mark.parametrize("cell", ["elman", "jordan", "lstm", "gru"])
def test_gradient_flow_equals_autograd_on_the_states(cell):
    model = regressor(cell)
    task = AddingProblem(30)
    batch = task.sample(8, torch.Generator().manual_seed(0))
    flow = gradient_flow(model, batch, task.loss)
    # By hand: step the cell, keeping every h_t, and differentiate the loss with respect to each.
    inputs, targets = batch
    cell = model.encoder.recurrent.unfused().cells[0]
    state, hidden = cell.init_state(8), []
    for t in range(30):
        state = cell.step(inputs[:, t], state)
        hidden.append(state[0] if isinstance(state, tuple) else state)
    prediction = model.head(hidden[-1]).squeeze(-1)
    grads = torch.autograd.grad(nn.functional.mse_loss(prediction, targets), hidden)
    torch.testing.assert_close(flow.norms, torch.stack([g.norm(dim=-1).mean(0) for g in grads]),
                               rtol=1e-5, atol=1e-12)
    assert flow.norms[0] > 0 and flow.norms[0] != flow.norms[-1]
    assert all(p.grad is None for p in model.parameters())           # parameters left untouched


def test_elman_gradient_vanishes_back_through_time_and_lstm_keeps_more():
    task = AddingProblem(200)
    batch = task.sample(64, torch.Generator().manual_seed(0))
    elman = gradient_flow(regressor("elman"), batch, task.loss)
    lstm = gradient_flow(regressor("lstm"), batch, task.loss)
    back = 30                                                        # steps back from the end
    elman_ratio = elman.norms[-1 - back] / elman.norms[-1]
    lstm_ratio = lstm.norms[-1 - back] / lstm.norms[-1]
    assert elman_ratio < 1e-4
    assert lstm_ratio > 100 * elman_ratio


def test_spectral_radius_is_that_of_the_recurrent_matrix():
    model = regressor("elman")
    flow = gradient_flow(model, AddingProblem(5).sample(2, torch.Generator()), AddingProblem(5).loss)
    weight = model.encoder.recurrent.module.weight_hh_l0.detach().double()
    assert flow.spectral_radius == [pytest.approx(torch.linalg.eigvals(weight).abs().max().item())]
    lstm = regressor("lstm")
    (candidate,) = recurrent_matrices(lstm.encoder.recurrent)
    assert torch.equal(candidate, lstm.encoder.recurrent.module.weight_hh_l0[32:48].detach())


def test_plot_and_bad_model(tmp_path):
    flow = gradient_flow(regressor("gru"), AddingProblem(10).sample(4, torch.Generator()), AddingProblem(10).loss)
    path = plot_gradient_flow({"gru": flow}, tmp_path / "flow.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="no recurrent layer"):
        gradient_flow(nn.Linear(2, 1), None, lambda model, batch: None)


def test_adding_problem_samples_and_baseline():
    task = AddingProblem(50)
    inputs, targets = task.sample(4000, torch.Generator().manual_seed(0))
    markers = inputs[..., 1]
    assert torch.equal(markers.sum(1), torch.full((4000,), 2.0))
    assert torch.equal(markers[:, :25].sum(1), torch.ones(4000))
    torch.testing.assert_close(targets, (inputs[..., 0] * markers).sum(1))
    always_one = ((targets - 1.0) ** 2).mean().item()
    assert always_one == pytest.approx(AddingProblem.baseline_mse, abs=0.01)

    class AlwaysOne(nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = nn.Parameter(torch.zeros(()))

        def forward(self, inputs):
            return torch.ones(inputs.shape[0], 1)

    assert task.evaluate(AlwaysOne(), "test")["mse"] == pytest.approx(1 / 6, abs=0.02)


def test_copy_memory_layout_and_baseline():
    task = CopyMemory(gap=15)
    inputs, targets = task.sample(3, torch.Generator().manual_seed(0))
    assert inputs.shape == (3, 35)
    assert torch.equal(targets[:, -10:], inputs[:, :10])
    assert torch.equal(inputs[:, 24], torch.full((3,), 9))
    assert int(targets[:, :25].abs().sum()) == 0

    class BlanksThenUniform(nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = nn.Parameter(torch.zeros(()))

        def forward(self, inputs):
            logits = torch.full((*inputs.shape, 10), -1e9)
            logits[:, :-10, 0] = 0.0
            logits[:, -10:, 1:9] = 0.0
            return logits

    metrics = task.evaluate(BlanksThenUniform(), "test")
    assert metrics["loss"] == pytest.approx(task.baseline_loss, rel=1e-5)
    assert task.baseline_loss == pytest.approx(10 * math.log(8) / 35)


def test_bad_task_options():
    with pytest.raises(ConfigError):
        AddingProblem(1)
    with pytest.raises(ConfigError):
        CopyMemory(gap=0)
