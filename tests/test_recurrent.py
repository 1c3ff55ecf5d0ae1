"""Recurrent layers: our reference cells against torch's fused modules, gradients, padding."""

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from seqlab.errors import ConfigError, DataError
from seqlab.layers.recurrent import (
    Recurrent, RecurrentCell, elman_step, gru_step, jordan_step, lstm_step, reverse_padded, unroll,
)

B, T, D, H = 3, 7, 5, 4


@pytest.mark.parametrize("kind, options", [("elman", {"nonlinearity": "tanh"}),
                                           ("elman", {"nonlinearity": "relu"}),
                                           ("lstm", {}), ("gru", {})])
def test_reference_step_equals_torch_module(kind, options):
    torch.manual_seed(0)
    module = {"elman": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind](D, H, batch_first=True, **options)
    x = torch.randn(B, T, D, dtype=torch.float64)
    module = module.double()
    expected, final = module(x)
    weights = (module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0)
    state = (torch.zeros(B, H, dtype=torch.float64),) * 2 if kind == "lstm" else torch.zeros(B, H, dtype=torch.float64)
    outputs = []
    for t in range(T):
        if kind == "elman":
            state = elman_step(x[:, t], state, *weights, options["nonlinearity"])
        elif kind == "lstm":
            state = lstm_step(x[:, t], state, *weights)
        else:
            state = gru_step(x[:, t], state, *weights)
        outputs.append(state[0] if kind == "lstm" else state)
    torch.testing.assert_close(torch.stack(outputs, 1), expected, rtol=1e-6, atol=1e-6)
    final_h = final[0] if kind == "lstm" else final
    torch.testing.assert_close(final_h[0], outputs[-1], rtol=1e-6, atol=1e-6)
    if kind == "lstm":
        torch.testing.assert_close(final[1][0], state[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["elman", "lstm", "gru"])
@settings(max_examples=8, deadline=None)
@given(n_layers=st.integers(1, 3), bidirectional=st.booleans(), seed=st.integers(0, 1000))
def test_deep_bidirectional_cells_equal_fused_module_on_padded_batches(kind, n_layers, bidirectional, seed):
    # Our masked unrolling and per-sequence reversal against torch's packed sequences.
    torch.manual_seed(seed)
    fused = Recurrent(kind, D, H, n_layers, bidirectional=bidirectional, fused=True).double()
    cells = fused.unfused()
    assert not cells.fused
    x = torch.randn(B, T, D, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(seed))
    expected, expected_state = fused(x, lengths=lengths)
    actual, actual_state = cells(x, lengths=lengths)
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)
    for a, e in zip(*(s if isinstance(s, tuple) else (s,) for s in (actual_state, expected_state))):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind, peepholes", [("elman", False), ("jordan", False), ("lstm", False),
                                             ("lstm", True), ("gru", False)])
def test_cells_pass_gradcheck(kind, peepholes):
    torch.manual_seed(0)
    cell = RecurrentCell(kind, 3, 2, peepholes=peepholes).double()
    step = {"elman": elman_step, "jordan": jordan_step, "gru": gru_step,
            "lstm": lambda x, s, *w: lstm_step(x, s, *w[:4], w[4] if peepholes else None)}[kind]

    def unrolled(x, *weights):
        state = cell.init_state(x.shape[0])
        outputs = []
        for t in range(x.shape[1]):
            state = step(x[:, t], state, *weights)
            outputs.append(state[0] if kind == "lstm" else state)
        return torch.stack(outputs, 1)

    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    # The parameters in the order the step functions take them.
    names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"] + {"jordan": ["weight_hy", "bias_y"],
                                                                "lstm": ["peephole"] if peepholes else []}.get(kind, [])
    weights = tuple(getattr(cell, name).detach().clone().requires_grad_(True) for name in names)
    assert torch.autograd.gradcheck(unrolled, (x, *weights), eps=1e-6, atol=1e-5)
    torch.testing.assert_close(unroll(cell, x, cell.init_state(2))[0], unrolled(x, *weights), rtol=0, atol=0)


def test_peephole_lstm_with_zero_peepholes_is_the_plain_lstm():
    torch.manual_seed(0)
    plain = Recurrent("lstm", D, H, 2, fused=True)
    peephole = Recurrent("lstm", D, H, 2, peepholes=True)
    for cell, copied in zip(peephole.cells, plain.unfused().cells):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).data.copy_(getattr(copied, name))
    for cell in peephole.cells:
        cell.peephole.data.zero_()
    x = torch.randn(B, T, D)
    torch.testing.assert_close(peephole(x)[0], plain(x)[0], rtol=1e-5, atol=1e-6)
    peephole.cells[0].peephole.data.fill_(0.5)
    assert not torch.allclose(peephole(x)[0], plain(x)[0], atol=1e-3)


def test_jordan_feeds_back_its_output():
    torch.manual_seed(0)
    layer = Recurrent("jordan", D, H)
    cell = layer.cells[0]
    x = torch.randn(1, 3, D)
    outputs, final = layer(x)
    y1 = torch.tanh(torch.tanh(x[0, 0] @ cell.weight_ih.T + cell.bias_ih + cell.bias_hh) @ cell.weight_hy.T + cell.bias_y)
    h2 = torch.tanh(x[0, 1] @ cell.weight_ih.T + cell.bias_ih + y1 @ cell.weight_hh.T + cell.bias_hh)
    y2 = torch.tanh(h2 @ cell.weight_hy.T + cell.bias_y)
    torch.testing.assert_close(outputs[0, :2], torch.stack([y1, y2]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(final[0, 0], outputs[0, 2])


@pytest.mark.parametrize("kind", ["elman", "jordan", "lstm", "gru"])
def test_padding_does_not_change_results(kind):
    torch.manual_seed(0)
    layer = Recurrent(kind, D, H, 2, bidirectional=True)
    x = torch.randn(2, T, D)
    lengths = torch.tensor([T, 4])
    padded, _ = layer(x, lengths=lengths)
    alone, _ = layer(x[1:, :4])
    torch.testing.assert_close(padded[1, :4], alone[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(padded[1, 4:], torch.zeros_like(padded[1, 4:]))


def test_reverse_padded_reverses_within_lengths():
    x = torch.arange(8).view(2, 4, 1)
    reversed_x = reverse_padded(x, torch.tensor([4, 2]))
    assert reversed_x.squeeze(-1).tolist() == [[3, 2, 1, 0], [5, 4, 6, 7]]


@pytest.mark.parametrize("x, lengths, message", [
    (torch.randn(3, 5), None, "must be \\(batch, time, features\\)"),
    (torch.randn(2, 5, D + 1), None, "has 6 features, the layer expects 5"),
    (torch.randn(2, 0, D), None, "zero time steps"),
    (torch.randn(2, 5, D), torch.tensor([5, 6]), "sequence 1 has length 6, outside 1..5"),
    (torch.randn(2, 5, D), torch.tensor([0, 5]), "sequence 0 has length 0"),
    (torch.randn(2, 5, D), torch.tensor([5]), "lengths must have shape"),
])
def test_bad_input(x, lengths, message):
    for fused in (True, False):
        with pytest.raises(DataError, match=message):
            Recurrent("lstm", D, H, fused=fused)(x, lengths=lengths)


def test_bad_options():
    with pytest.raises(ConfigError, match="unknown recurrent cell"):
        Recurrent("lstn", D, H)
    with pytest.raises(ConfigError, match="peepholes"):
        Recurrent("gru", D, H, peepholes=True)
    with pytest.raises(ConfigError, match="no fused module for jordan"):
        Recurrent("jordan", D, H, fused=True)


def test_lstm_forget_bias_starts_at_one():
    for fused in (True, False):
        layer = Recurrent("lstm", D, H, fused=fused)
        total = sum(p[H:2 * H] for name, p in layer.named_parameters() if "bias" in name)
        torch.testing.assert_close(total, torch.ones(H))
