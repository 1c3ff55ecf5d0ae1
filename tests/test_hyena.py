"""Hyena: the FFT long convolution against the O(T^2) sum (outputs and gradients, any length),
causality; the implicit filter's value at t independent of the requested length, its decay
window, its memo following parameter updates; the operator against a hand-written eq. 3 for
orders 1 and 3; step and pieces against one pass; a state growing by one position per step;
config validation."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.nn import functional as F

from seqlab import registry
from seqlab.errors import ConfigError
from seqlab.layers.hyena import HyenaMixer, ImplicitFilter
from seqlab.ops.long_conv import direct_causal_conv_ref, fft_causal_conv
from seqlab.training import parameter_groups

WIDTH = 6


def conv_inputs(batch: int, length: int, channels: int, taps: int | None = None, seed: int = 0,
                dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, length, channels, generator=generator, dtype=dtype),
            torch.randn(channels, taps or length, generator=generator, dtype=dtype),
            torch.randn(channels, generator=generator, dtype=dtype))


def tiny_mixer(order: int = 2, seed: int = 0, **overrides) -> HyenaMixer:
    torch.manual_seed(seed)
    mixer = HyenaMixer(WIDTH, order=order, filter_order=16, emb_dim=5, l_max=16, **overrides).double()
    with torch.no_grad():        # larger filters than the initial ones, so that long lags count
        mixer.filter.ffn[-1].weight.mul_(4.0)
    return mixer


def test_reference_equals_the_closed_form_of_a_geometric_filter():
    # k[lag] = 2^-lag: y_t = sum_s 2^-(t-s) u_s, the recurrence y_t = y_{t-1} / 2 + u_t.
    u = torch.tensor([[[1.0], [2.0], [4.0], [8.0]]], dtype=torch.float64)
    k = 0.5 ** torch.arange(4, dtype=torch.float64)[None]
    expected = torch.tensor([1.0, 2.5, 5.25, 10.625], dtype=torch.float64)
    torch.testing.assert_close(direct_causal_conv_ref(u, k)[0, :, 0], expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(direct_causal_conv_ref(u, k, torch.tensor([3.0], dtype=torch.float64))[0, :, 0],
                               expected + 3 * u[0, :, 0], rtol=0, atol=1e-15)


@pytest.mark.parametrize("length", [1, 2, 7, 16, 33, 100])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fft_conv_equals_the_direct_sum(length, with_bias):
    u, k, bias = conv_inputs(3, length, 4, taps=length + 5)          # taps past T are unused
    bias = bias if with_bias else None
    torch.testing.assert_close(fft_causal_conv(u, k, bias), direct_causal_conv_ref(u, k, bias),
                               rtol=1e-10, atol=1e-11)


@settings(max_examples=40, deadline=None)
@given(length=st.integers(1, 70), channels=st.integers(1, 5), seed=st.integers(0, 999))
def test_fft_conv_equals_the_direct_sum_for_any_length_and_width(length, channels, seed):
    u, k, bias = conv_inputs(2, length, channels, seed=seed)
    torch.testing.assert_close(fft_causal_conv(u, k, bias), direct_causal_conv_ref(u, k, bias),
                               rtol=1e-10, atol=1e-11)


def test_fft_conv_gradients_equal_the_direct_sums():
    u, k, bias = conv_inputs(2, 19, 3, seed=4)
    leaves = [t.clone().requires_grad_() for t in (u, k, bias)]
    leaves_ref = [t.clone().requires_grad_() for t in (u, k, bias)]
    weights = torch.randn(2, 19, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    (fft_causal_conv(*leaves) * weights).sum().backward()
    (direct_causal_conv_ref(*leaves_ref) * weights).sum().backward()
    for leaf, leaf_ref, name in zip(leaves, leaves_ref, ("u", "k", "bias")):
        torch.testing.assert_close(leaf.grad, leaf_ref.grad, rtol=1e-10, atol=1e-11, msg=name)


def test_fft_conv_in_float32_and_bfloat16():
    u, k, bias = conv_inputs(2, 64, 8, seed=6)
    expected = direct_causal_conv_ref(u, k, bias)
    torch.testing.assert_close(fft_causal_conv(u.float(), k.float(), bias.float()), expected.float(),
                               rtol=1e-4, atol=1e-4)
    half = fft_causal_conv(u.bfloat16(), k.bfloat16(), bias.bfloat16())      # transformed in float32
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.double(), direct_causal_conv_ref(u.bfloat16().double(), k.bfloat16().double(),
                                                                     bias.bfloat16().double()),
                               rtol=2e-2, atol=5e-2)


def test_fft_conv_refuses_a_filter_shorter_than_the_input():
    u, k, _ = conv_inputs(1, 10, 2, taps=9)
    with pytest.raises(ConfigError, match="9 taps, fewer than the 10 positions"):
        fft_causal_conv(u, k)


@settings(max_examples=20, deadline=None)
@given(length=st.integers(2, 60), data=st.data())
def test_fft_conv_is_causal(length, data):
    position = data.draw(st.integers(0, length - 1))
    u, k, bias = conv_inputs(2, length, 3, seed=length)
    changed = u.clone()
    changed[:, position] += 10.0
    before, after = fft_causal_conv(u, k, bias), fft_causal_conv(changed, k, bias)
    # No wrap-around: every earlier output is unchanged to rounding, while the changed one moves by
    # about 10 (k[:, 0] + bias), far outside the tolerance.
    torch.testing.assert_close(after[:, :position], before[:, :position], rtol=0, atol=1e-10)
    torch.testing.assert_close(after[:, position] - before[:, position], (10.0 * (k[:, 0] + bias)).expand(2, 3),
                               rtol=1e-9, atol=1e-9)


# ---- the implicit filter -------------------------------------------------------------------

def tiny_filter(**overrides) -> ImplicitFilter:
    torch.manual_seed(1)
    return ImplicitFilter(channels=5, n_filters=2, emb_dim=7, filter_order=12, l_max=64, **overrides).double()


def test_filter_value_at_t_does_not_depend_on_the_requested_length():
    implicit = tiny_filter()
    longest = implicit.filters(200)                                      # past l_max too
    assert longest.shape == (2, 5, 200)
    for length in (1, 5, 37, 64, 65):
        torch.testing.assert_close(implicit.filters(length), longest[..., :length], rtol=1e-12, atol=1e-14)
    # and it is not periodic in the length: positions past l_max are new values
    assert not torch.allclose(longest[..., 64:128], longest[..., :64])


def test_filter_is_the_ffn_of_positional_features_times_the_window():
    implicit = tiny_filter()
    features = implicit.positional_features(9)
    tau = torch.arange(9, dtype=torch.float64) / 64
    frequencies = torch.linspace(1e-4, 2, 3, dtype=torch.float64)
    angles = 2 * math.pi * tau[:, None] * frequencies
    torch.testing.assert_close(features, torch.cat([tau[:, None], angles.cos(), -angles.sin()], dim=-1),
                               rtol=1e-12, atol=1e-14)
    by_hand = implicit.ffn(features).view(9, 2, 5).permute(1, 2, 0) * torch.exp(-implicit.decay_rates()[:, None] * tau)
    torch.testing.assert_close(implicit.filters(9), by_hand, rtol=1e-12, atol=1e-14)


def test_decay_window_spans_the_fast_and_slow_rates_and_bounds_the_filter():
    implicit = tiny_filter(fast_decay_span=0.25, slow_decay_span=2.0)
    window = implicit.window(513)                                                  # (C, T)
    assert torch.all(window[:, 1:] < window[:, :-1])                           # falls with t, every channel
    assert torch.all(implicit.decay_rates().diff() > 0)     # spread slow -> fast
    # the fastest channel reaches 1e-2 at t = 0.25 * 64 = 16, the slowest at t = 2 * 64 = 128
    torch.testing.assert_close(window[-1, 16], torch.tensor(1e-2, dtype=torch.float64), rtol=1e-10, atol=0)
    torch.testing.assert_close(window[0, 128], torch.tensor(1e-2, dtype=torch.float64), rtol=1e-10, atol=0)
    # The FFN ends in Sin then a linear layer, so |FFN| <= sum |W_out| per row: the filter is
    # held under that bound times the window, and its magnitude falls with t.
    filters = implicit.filters(513)                                                # (N, C, T)
    row_bound = implicit.ffn[-1].weight.abs().sum(dim=-1).view(2, 5, 1)
    assert torch.all(filters.abs() <= row_bound * window * (1 + 1e-12))
    early, late = filters[..., :8].abs().mean(), filters[..., 256:].abs().mean()
    assert late < 1e-2 * early


def test_memoised_filter_follows_parameter_updates():
    implicit = tiny_filter()
    with torch.no_grad():
        first = implicit.filters(10)
        torch.testing.assert_close(first, implicit.evaluate(10), rtol=1e-12, atol=1e-14)
        implicit.ffn[0].weight.add_(0.5)                                     # an optimiser step, in place
        second = implicit.filters(10)
        torch.testing.assert_close(second, implicit.evaluate(10), rtol=1e-12, atol=1e-14)
        assert not torch.allclose(second, first)
        torch.testing.assert_close(implicit.filters(300)[..., :10], second, rtol=1e-12, atol=1e-14)


def test_filter_parameters_are_not_decayed_and_projections_are():
    mixer = tiny_mixer()
    decay, no_decay = (set(map(id, group)) for group in parameter_groups(mixer))
    assert {id(p) for p in mixer.filter.parameters()} <= no_decay
    assert mixer.filter.ffn[2].weight.dim() == 2                  # a matrix: only its mark keeps it out
    assert {id(mixer.in_proj.weight), id(mixer.out_proj.weight), id(mixer.short_conv.weight)} <= decay


# ---- the operator --------------------------------------------------------------------------

def hyena_by_hand(mixer: HyenaMixer, x: torch.Tensor) -> torch.Tensor:
    """The paper's eq. 3 from the mixer's weights: z^1 = v, z^{n+1} = x^n * (h^n * z^n), by the
    direct sum, with the short convolution written as a left-padded depthwise conv."""
    length, width = x.shape[1], mixer.short_conv.kernel_size[0]
    projected = mixer.in_proj(x).transpose(1, 2)                                         # (B, (N+1) D, T)
    projected = F.conv1d(F.pad(projected, (width - 1, 0)), mixer.short_conv.weight, mixer.short_conv.bias,
                         groups=projected.shape[1]).transpose(1, 2)                      # (B, T, (N+1) D)
    pieces = projected.split(WIDTH, dim=-1)
    gates, z = pieces[:-1], pieces[-1]
    filters = mixer.filter.filters(length)
    for n, gate in enumerate(gates):
        z = gate * direct_causal_conv_ref(z, filters[n], mixer.filter.bias[n])
    return mixer.out_proj(z)


@pytest.mark.parametrize("order", [1, 3])
def test_operator_equals_equation_3_by_hand(order):
    mixer = tiny_mixer(order)
    x = torch.randn(2, 23, WIDTH, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y, _ = mixer(x)
    expected = hyena_by_hand(mixer, x)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-11)
    assert len(mixer.in_proj.weight) == (order + 1) * WIDTH
    # and every parameter's gradient
    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum(), list(mixer.parameters()))
    grads_ref = torch.autograd.grad((expected * weights).sum(), list(mixer.parameters()))
    for (name, _), grad, grad_ref in zip(mixer.named_parameters(), grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_step_view_equals_parallel_view(order):
    mixer = tiny_mixer(order)
    x = torch.randn(2, 30, WIDTH, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        parallel, parallel_state = mixer(x)
        state, stepped = mixer.init_state(2), []
        for t in range(30):
            y, state = mixer(x[:, t:t + 1], state)
            stepped.append(y)
    torch.testing.assert_close(torch.cat(stepped, dim=1), parallel, rtol=1e-10, atol=1e-11)
    for part, part_ref in zip(state, parallel_state):
        torch.testing.assert_close(part, part_ref, rtol=1e-12, atol=1e-13)


def test_forward_in_uneven_pieces_equals_one_pass():
    mixer = tiny_mixer()
    x = torch.randn(3, 40, WIDTH, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    whole, whole_state = mixer(x)
    state, pieces, start = None, [], 0
    for size in (1, 4, 2, 13, 1, 19):                                      # continues across l_max = 16
        y, state = mixer(x[:, start:start + size], state)
        pieces.append(y)
        start += size
    assert start == 40
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-10, atol=1e-11)
    for part, part_ref in zip(state, whole_state):
        torch.testing.assert_close(part, part_ref, rtol=1e-12, atol=1e-13)


def test_state_grows_by_one_position_per_step():
    # The honest cost of a long convolution's recurrent view: every input of each of the N long
    # convolutions is kept, (B, N, D, t) after t tokens; only the short window is constant.
    mixer = tiny_mixer(order=3)
    state = mixer.init_state(2)
    assert state[0].shape == (2, 4 * WIDTH, 2) and state[1].shape == (2, 3, WIDTH, 0)
    x = torch.randn(2, 9, WIDTH, dtype=torch.float64)
    with torch.no_grad():
        for t in range(9):
            _, state = mixer(x[:, t:t + 1], state)
            assert state[0].shape == (2, 4 * WIDTH, 2)
            assert state[1].shape == (2, 3, WIDTH, t + 1)


def test_language_model_state_grows_per_layer():
    torch.manual_seed(0)
    model = registry.build("hyena", "lm", vocab_size=13, d_model=8, n_layers=2, filter_order=8).eval()
    state = model.init_state(2)
    with torch.no_grad():
        for t in range(5):
            _, state = model.step(torch.full((2,), t), state)
    assert [tuple(part.shape) for layer in state for part in layer] == [(2, 24, 2), (2, 2, 8, 5)] * 2


# ---- configs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("task, sizes", [("lm", {"vocab_size": 9}), ("classify", {"vocab_size": 9, "n_classes": 2})])
@pytest.mark.parametrize("field, value", [
    ("order", 0), ("filter_order", 0), ("emb_dim", 4), ("emb_dim", 1), ("short_filter", 0), ("l_max", 0),
    ("fast_decay_span", 0.0), ("slow_decay_span", 0.1),
])
def test_bad_config_values_name_the_field(task, sizes, field, value):
    with pytest.raises(ConfigError, match=rf"Hyena\w*Config\.{field} must"):
        registry.build("hyena", task, d_model=8, n_layers=1, **sizes, **{field: value})


def test_registered_for_language_modelling_and_classification():
    assert registry.get("hyena", "lm").in_default_compare is False
    assert registry.get("hyena", "classify").in_default_compare is False
    model = registry.build("hyena", "classify", vocab_size=9, n_classes=3, d_model=8, n_layers=1, order=3)
    assert model.backbone.layers[0].mixer.order == 3
