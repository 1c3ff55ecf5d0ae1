"""RMSNorm / make_norm and the Transformer feed-forward network against float64 hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from seqlab.errors import ConfigError
from seqlab.layers.feedforward import ACTIVATIONS, FeedForward, feedforward_ref
from seqlab.layers.norms import RMSNorm, make_norm

GATED = ("swiglu", "geglu", "geglu_tanh")
PLAIN = ("gelu", "gelu_tanh", "relu")


# ----------------------------------------------------------------------------- norms


def test_rmsnorm_equals_float64_hand_computation():
    torch.manual_seed(0)
    norm = RMSNorm(5, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(5, dtype=torch.float64))
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    expected = torch.empty_like(x)
    for index in range(12):
        row = x.view(12, 5)[index].tolist()
        rms = math.sqrt(sum(v * v for v in row) / 5 + 1e-6)
        expected.view(12, 5)[index] = torch.tensor([v / rms for v in row], dtype=torch.float64)
    expected = expected * norm.weight.detach()
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)


def test_rmsnorm_starts_at_unit_gain_and_maps_zero_to_zero():
    norm = RMSNorm(4)
    torch.testing.assert_close(norm.weight.detach(), torch.ones(4), rtol=0, atol=0)
    assert norm.eps == 1e-6
    torch.testing.assert_close(norm(torch.zeros(2, 4)), torch.zeros(2, 4), rtol=0, atol=0)


def test_rmsnorm_of_bf16_is_computed_in_float32():
    torch.manual_seed(0)
    # Wide rows with a large mean square: a bf16 reduction would round visibly.
    x = (torch.randn(8, 512) * 3 + 1).to(torch.bfloat16)
    norm = RMSNorm(512)
    y = norm(x)
    assert y.dtype == torch.float32  # fp32 gain times bf16 normalised term promotes, as in HF
    norm_bf16 = RMSNorm(512).to(torch.bfloat16)
    y_bf16 = norm_bf16(x)
    assert y_bf16.dtype == torch.bfloat16
    expected = RMSNorm(512)(x.float()).to(torch.bfloat16)  # unit gain: the normalised term
    torch.testing.assert_close(y_bf16, expected, rtol=0, atol=0)
    # The check has teeth: the same formula evaluated in bf16 throughout gives other numbers.
    naive = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert not torch.equal(naive, expected)


def test_rmsnorm_bf16_applies_gain_after_the_cast_like_hf_llama():
    torch.manual_seed(1)
    x = torch.randn(4, 64).to(torch.bfloat16)
    norm = RMSNorm(64).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(64))
    x32 = x.float()
    normalised = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
    torch.testing.assert_close(norm(x), norm.weight.detach() * normalised, rtol=0, atol=0)


def test_make_norm_kinds():
    layer = make_norm("layernorm", 6)
    assert isinstance(layer, nn.LayerNorm)
    assert layer.eps == 1e-5 and layer.bias is not None
    assert make_norm("layernorm", 6, eps=1e-3).eps == 1e-3
    rms = make_norm("rmsnorm", 6)
    assert isinstance(rms, RMSNorm) and rms.eps == 1e-6
    assert make_norm("rmsnorm", 6, eps=1e-5).eps == 1e-5
    assert [name for name, _ in rms.named_parameters()] == ["weight"]
    x = torch.randn(2, 3, 6)
    assert layer(x).shape == rms(x).shape == (2, 3, 6)


def test_layernorm_without_bias_has_no_bias_parameter():
    layer = make_norm("layernorm", 6, bias=False)
    assert layer.bias is None
    assert [name for name, _ in layer.named_parameters()] == ["weight"]
    x = torch.randn(4, 6, dtype=torch.float64)
    expected = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(layer.double()(x), expected, rtol=1e-12, atol=1e-12)


def test_norm_errors():
    with pytest.raises(ConfigError, match="layernorm, rmsnorm"):
        make_norm("batchnorm", 6)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="d_model"):
        make_norm("rmsnorm", 0)
    with pytest.raises(ConfigError, match="eps"):
        RMSNorm(4, eps=0.0)
    with pytest.raises(ConfigError, match="d_model"):
        RMSNorm(-1)


# ----------------------------------------------------------------------------- feed-forward


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_feedforward_equals_reference(activation, bias):
    torch.manual_seed(0)
    ffn = FeedForward(6, 10, activation, bias=bias).double().eval()
    x = torch.randn(2, 5, 6, dtype=torch.float64) * 2
    torch.testing.assert_close(ffn(x), feedforward_ref(x, ffn), rtol=1e-12, atol=1e-12)


def _gelu(z: float) -> float:
    return 0.5 * z * (1 + math.erf(z / math.sqrt(2)))


def _gelu_tanh(z: float) -> float:
    return 0.5 * z * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))


def _silu(z: float) -> float:
    return z / (1 + math.exp(-z))


HAND = {
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "relu": lambda z: max(z, 0.0),
    "silu": _silu,
    "swiglu": lambda z: _silu(z) * z,
    "geglu": lambda z: _gelu(z) * z,
    "geglu_tanh": lambda z: _gelu_tanh(z) * z,
}


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_feedforward_equals_hand_formula_with_identity_weights(activation):
    # With identity matrices and zero biases the network is act(x), or act(x) * x when gated.
    ffn = FeedForward(7, 7, activation).double()
    with torch.no_grad():
        for layer in (ffn.up, ffn.gate, ffn.down):
            if layer is not None:
                layer.weight.copy_(torch.eye(7, dtype=torch.float64))
                layer.bias.zero_()
    values = [-3.0, -1.5, -0.3, 0.0, 0.4, 1.2, 2.5]
    x = torch.tensor([values], dtype=torch.float64)
    expected = torch.tensor([[HAND[activation](v) for v in values]], dtype=torch.float64)
    torch.testing.assert_close(ffn(x), expected, rtol=1e-12, atol=1e-12)


def test_gelu_variants_differ():
    # The exact and tanh GELUs really are different functions (so "_tanh" is not a no-op).
    torch.manual_seed(0)
    exact = FeedForward(4, 8, "geglu").double()
    approx = FeedForward(4, 8, "geglu_tanh").double()
    approx.load_state_dict(exact.state_dict())
    x = torch.randn(3, 4, dtype=torch.float64) * 2
    assert not torch.allclose(exact(x), approx(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_parameter_names(activation):
    ffn = FeedForward(4, 8, activation)
    names = {name for name, _ in ffn.named_parameters()}
    matrices = {"up.weight", "down.weight"} | ({"gate.weight"} if activation in GATED else set())
    assert names == matrices | {name.replace("weight", "bias") for name in matrices}
    assert ffn.up.weight.shape == (8, 4) and ffn.down.weight.shape == (4, 8)
    if activation in GATED:
        assert ffn.gate.weight.shape == (8, 4)
    else:
        assert ffn.gate is None
    no_bias = FeedForward(4, 8, activation, bias=False)
    assert {name for name, _ in no_bias.named_parameters()} == matrices


def test_dropout_only_in_training():
    torch.manual_seed(0)
    ffn = FeedForward(8, 32, "swiglu", dropout=0.5)
    x = torch.randn(4, 8)
    ffn.eval()
    torch.testing.assert_close(ffn(x), ffn(x), rtol=0, atol=0)
    torch.testing.assert_close(ffn(x), feedforward_ref(x, ffn), rtol=1e-5, atol=1e-6)
    ffn.train()
    first, second = ffn(x), ffn(x)
    assert not torch.allclose(first, second)
    # Dropout acts on the hidden units before ``down``: zeroing them all leaves down's bias.
    ffn.dropout.p = 1.0
    with torch.no_grad():
        assert torch.allclose(ffn(x), ffn.down.bias.expand(4, 8), atol=1e-6)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bf16_autocast_stays_close_to_fp32(activation):
    # Tolerance, stated: atol = rtol = 2e-2 for unit-scale inputs and outputs (bf16 keeps 8
    # significant bits, ~4e-3 relative per rounding; the matmuls accumulate in fp32).
    torch.manual_seed(0)
    ffn = FeedForward(64, 128, activation)
    with torch.no_grad():  # unit-scale hidden and output: weights of std 1 / sqrt(fan_in)
        for layer in (ffn.up, ffn.gate, ffn.down):
            if layer is not None:
                layer.weight.normal_(0, 1 / math.sqrt(layer.in_features))
                layer.bias.normal_(0, 0.1)
    x = torch.randn(4, 16, 64)
    reference = ffn(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = ffn(x)
    assert low.dtype == torch.bfloat16  # the bf16 path really ran
    assert not torch.equal(low.float(), reference)
    # The tolerance is far below the typical output, so a wrong result cannot slip through...
    assert reference.abs().mean() > 0.25
    torch.testing.assert_close(low.float(), reference, rtol=2e-2, atol=2e-2)
    # ...e.g. a bf16 path that dropped the bias, or used the wrong activation, fails it.
    with pytest.raises(AssertionError):
        torch.testing.assert_close(low.float() - ffn.down.bias, reference, rtol=2e-2, atol=2e-2)
    other = "relu" if activation != "relu" else "gelu"
    wrong = FeedForward(64, 128, other)
    wrong.load_state_dict(ffn.state_dict(), strict=False)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(AssertionError):
        torch.testing.assert_close(wrong(x).float(), reference, rtol=2e-2, atol=2e-2)


def test_feedforward_errors():
    with pytest.raises(ConfigError, match="gelu, gelu_tanh, relu, silu, swiglu, geglu, geglu_tanh"):
        FeedForward(4, 8, "tanh")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="d_model"):
        FeedForward(0, 8, "relu")
    with pytest.raises(ConfigError, match="d_hidden"):
        FeedForward(4, -2, "relu")
    with pytest.raises(ConfigError, match="d_hidden"):
        FeedForward(4, 2.5, "relu")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="dropout"):
        FeedForward(4, 8, "relu", dropout=1.0)
    with pytest.raises(ConfigError, match="dropout"):
        FeedForward(4, 8, "relu", dropout=-0.1)
