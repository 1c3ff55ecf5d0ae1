"""The short causal convolution: its shifted multiply-adds against torch's depthwise conv1d,
causality, and pieces with the window carried equal to one pass."""

import pytest
import torch

from seqlab.layers.causal_conv import CausalConv1d, causal_conv1d_ref


@pytest.mark.parametrize("kernel_size, bias", [(4, True), (1, True), (3, False)])
def test_equals_torch_conv1d_with_gradients(kernel_size, bias):
    torch.manual_seed(0)
    conv = CausalConv1d(5, kernel_size, bias=bias).double()
    x = torch.randn(2, 9, 5, dtype=torch.float64, requires_grad=True)
    window = torch.randn(2, 5, kernel_size - 1, dtype=torch.float64)
    y, _ = conv(x, window)
    expected = causal_conv1d_ref(conv, x, window)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum(), [x, conv.weight])
    grads_ref = torch.autograd.grad((expected * weights).sum(), [x, conv.weight])
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-12)


def test_pieces_with_the_window_carried_equal_one_pass_and_no_future_leaks():
    torch.manual_seed(0)
    conv = CausalConv1d(3, 4).double()
    x = torch.randn(2, 11, 3, dtype=torch.float64)
    whole, _ = conv(x)
    window, pieces = None, []
    for piece in (slice(0, 1), slice(1, 6), slice(6, 7), slice(7, 11)):
        y, window = conv(x[:, piece], window)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=0, atol=0)
    changed = x.clone()
    changed[:, 6:] += 1.0
    torch.testing.assert_close(conv(changed)[0][:, :6], whole[:, :6], rtol=0, atol=0)
    assert not torch.allclose(conv(changed)[0][:, 6:], whole[:, 6:])
