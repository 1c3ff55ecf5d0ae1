"""The selective scan: the chunked scan against the loop over time (outputs, final states and
every input's gradient), the loop against a closed form, pieces against one pass, long
sequences, bf16 autocast, and bad shapes."""

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.nn import functional as F

from seqlab.errors import ConfigError
from seqlab.ops.scan import automatic_chunk_size, linear_scan_, selective_scan, selective_scan_ref


def scan_inputs(batch: int, length: int, channels: int, size: int, dtype=torch.float32, seed: int = 0,
                initial: bool = True) -> dict[str, torch.Tensor]:
    """Inputs as a Mamba layer makes them: positive step sizes, negative A (S4D-real-like)."""
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    inputs = {"x": draw(batch, length, channels), "delta": F.softplus(draw(batch, length, channels) - 1),
              "A": -torch.exp(draw(channels, size)), "B": draw(batch, length, size), "C": draw(batch, length, size),
              "D": draw(channels)}
    if initial:
        inputs["initial_state"] = draw(batch, channels, size)
    return inputs


def test_reference_equals_the_closed_form_of_a_scalar_recurrence():
    # One channel, one state, constant Delta = 1, A = log(1/2), B = C = 1, D = 0:
    # h_t = h_{t-1} / 2 + x_t, so h_t = sum_s 2^-(t-s) x_s.
    x = torch.tensor([[[1.0], [2.0], [4.0], [8.0]]], dtype=torch.float64)
    ones = torch.ones(1, 4, 1, dtype=torch.float64)
    y, state = selective_scan_ref(x, ones, torch.tensor([[-0.6931471805599453]], dtype=torch.float64),
                                  ones, ones, None)
    torch.testing.assert_close(y[0, :, 0], torch.tensor([1.0, 2.5, 5.25, 10.625], dtype=torch.float64))
    torch.testing.assert_close(state[0, 0, 0], torch.tensor(10.625, dtype=torch.float64))


@settings(max_examples=40, deadline=None)
@given(length=st.integers(1, 50), chunk_size=st.integers(1, 20), initial=st.booleans(), seed=st.integers(0, 99))
def test_chunked_scan_equals_the_loop_for_any_length_and_chunk_size(length, chunk_size, initial, seed):
    inputs = scan_inputs(2, length, 3, 4, dtype=torch.float64, seed=seed, initial=initial)
    y, state = selective_scan(**inputs, chunk_size=chunk_size)
    y_ref, state_ref = selective_scan_ref(**inputs)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, state_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("length, chunk_size", [(64, 16), (37, 16), (5, 16), (33, 1)])
def test_chunked_scan_equals_the_loop_in_float32_with_equal_gradients(length, chunk_size):
    inputs = scan_inputs(2, length, 8, 16)
    leaves = {name: tensor.clone().requires_grad_() for name, tensor in inputs.items()}
    leaves_ref = {name: tensor.clone().requires_grad_() for name, tensor in inputs.items()}
    y, state = selective_scan(**leaves, chunk_size=chunk_size)
    y_ref, state_ref = selective_scan_ref(**leaves_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, state_ref, rtol=1e-5, atol=1e-5)
    weights_y, weights_state = torch.randn_like(y), torch.randn_like(state)    # a loss using both outputs
    ((y * weights_y).sum() + (state * weights_state).sum()).backward()
    ((y_ref * weights_y).sum() + (state_ref * weights_state).sum()).backward()
    for name in inputs:
        torch.testing.assert_close(leaves[name].grad, leaves_ref[name].grad, rtol=1e-5, atol=1e-4, msg=name)


def test_chunked_scan_passes_gradcheck():
    inputs = scan_inputs(1, 7, 2, 3, dtype=torch.float64)
    names = list(inputs)

    def scan(*tensors):
        return selective_scan(**dict(zip(names, tensors)), chunk_size=3)

    assert torch.autograd.gradcheck(scan, [t.requires_grad_() for t in inputs.values()])


@pytest.mark.parametrize("scan", [selective_scan, selective_scan_ref])
def test_pieces_with_the_state_carried_equal_one_pass(scan):
    inputs = scan_inputs(2, 40, 4, 5, dtype=torch.float64)
    whole_y, whole_state = scan(**inputs)
    state, outputs = inputs["initial_state"], []
    for piece in (slice(0, 1), slice(1, 17), slice(17, 18), slice(18, 40)):     # uneven, with single steps
        pieces = {name: inputs[name][:, piece] for name in ("x", "delta", "B", "C")}
        y, state = scan(**pieces, A=inputs["A"], D=inputs["D"], initial_state=state)
        outputs.append(y)
    torch.testing.assert_close(torch.cat(outputs, dim=1), whole_y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, whole_state, rtol=1e-12, atol=1e-12)


def test_long_sequence_stays_finite_and_equal_to_the_loop():
    # T = 65,536 with step sizes up to ~10 and |A| up to ~20: cumulative decays down to
    # exp(-10^6), which a formula dividing by cumulative products would overflow on.
    inputs = scan_inputs(1, 65_536, 2, 3, seed=3)
    inputs["delta"] = inputs["delta"] * 4
    y, state = selective_scan(**inputs)
    y_ref, state_ref = selective_scan_ref(**inputs)
    assert torch.isfinite(y).all() and torch.isfinite(state).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, state_ref, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_keeps_the_scan_within_tolerance_of_fp32():
    # Under autocast the scan computes in float32; bf16 inputs (as autocast's matmuls give
    # them) cost only their own rounding: within 2% of the output's scale.
    inputs = scan_inputs(2, 200, 8, 16, initial=False)
    y, _ = selective_scan(**inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = {name: tensor.to(torch.bfloat16) for name, tensor in inputs.items()}
        y_low, state_low = selective_scan(**low)
    assert y_low.dtype == torch.float32 and state_low.dtype == torch.float32
    torch.testing.assert_close(y_low, y, rtol=0, atol=0.02 * y.abs().max().item())
    assert not torch.equal(y_low, y)                 # the inputs' rounding does show


@pytest.mark.parametrize("name, shape, message", [
    ("delta", (2, 9, 4), "x and delta must both be"),
    ("A", (3, 5), r"A must be \(Dn=4, N\)"),
    ("B", (2, 8, 4), r"B must be \(B, T, N\)"),
    ("D", (5,), r"D must be \(Dn,\)"),
    ("initial_state", (2, 4, 6), "initial_state must be"),
])
@pytest.mark.parametrize("scan", [selective_scan, selective_scan_ref])
def test_wrong_shapes_raise_config_errors(scan, name, shape, message):
    inputs = scan_inputs(2, 8, 4, 5)
    inputs[name] = torch.zeros(shape)
    with pytest.raises(ConfigError, match=message):
        scan(**inputs)


@pytest.mark.parametrize("length", [1, 2, 3, 8, 13, 16, 33])
@pytest.mark.parametrize("reverse", [False, True])
def test_work_efficient_scan_equals_the_loop_either_way(length, reverse):
    generator = torch.Generator().manual_seed(length)
    decay = torch.rand(2, length, 3, generator=generator, dtype=torch.float64)
    inputs = torch.randn(2, length, 3, generator=generator, dtype=torch.float64)
    initial = torch.randn(2, 3, generator=generator, dtype=torch.float64)
    state, expected = initial, [None] * length
    for t in (reversed(range(length)) if reverse else range(length)):
        state = decay[:, t] * state + inputs[:, t]
        expected[t] = state
    states = linear_scan_(decay.clone(), inputs.clone(), initial, reverse=reverse)
    torch.testing.assert_close(states, torch.stack(expected, dim=1), rtol=1e-12, atol=1e-12)


def test_automatic_chunks_hold_about_two_mebibytes_of_states():
    assert automatic_chunk_size(8, 256, 16) == 16              # 128 KiB a step
    assert automatic_chunk_size(32, 256, 16) == 4
    assert automatic_chunk_size(1, 8, 4) == 64                 # capped
    assert automatic_chunk_size(512, 1024, 16) == 1            # a step alone is larger
    assert automatic_chunk_size(8, 256, 16, element_bytes=8) == 8
