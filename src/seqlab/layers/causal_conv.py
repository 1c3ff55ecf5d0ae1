"""The short causal convolution of Mamba, Mamba-2 and Hyena: depthwise (one filter of width K
per channel) over time, where output t reads inputs t-K+1 .. t only:

    y_t[c] = b[c] + sum_{k<K} w[c, k] x_{t-K+1+k}[c].

Its recurrent view holds the last K-1 inputs (the *window*, (B, C, K-1)), so a model can run a
sequence in pieces, or one token at a time, with the numbers of one pass: a zero window is the
zero padding of the first piece. The module holds the parameters of torch's depthwise
``nn.Conv1d`` (the weight is (C, 1, K), as in the Mamba and Hugging Face checkpoints), but its
call is K shifted multiply-adds over (B, T, C): on a CPU, torch's depthwise convolution takes
hundreds of times longer in the backward pass at Mamba's sizes (``benchmarks/ssm.py``), and
``causal_conv1d_ref`` keeps ``F.conv1d`` as the specification.

Shapes: B batch, T time, C channels, K kernel size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CausalConv1d(nn.Conv1d):
    """Depthwise causal convolution over (B, T, C) inputs, continued from a window."""

    def __init__(self, channels: int, kernel_size: int, bias: bool = True):
        super().__init__(channels, channels, kernel_size, groups=channels, bias=bias)

    def init_state(self, batch_size: int) -> Tensor:
        """The window before the first input: (B, C, K-1) zeros."""
        return self.weight.new_zeros(batch_size, self.in_channels, self.kernel_size[0] - 1)

    def forward(self, x: Tensor, window: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Args:
            x: (B, T, C) inputs.
            window: (B, C, K-1) the inputs before ``x``; None is zeros.
        Returns:
            (B, T, C) outputs and the window after ``x``.
        """
        window = self.init_state(x.shape[0]).to(x.dtype) if window is None else window
        inputs = torch.cat([window.transpose(1, 2), x], dim=1)                   # (B, K-1+T, C)
        length, taps = x.shape[1], self.weight[:, 0, :]                          # taps (C, K)
        outputs = inputs[:, :length] * taps[:, 0]
        for k in range(1, taps.shape[1]):
            outputs = outputs + inputs[:, k:k + length] * taps[:, k]
        if self.bias is not None:
            outputs = outputs + self.bias
        return outputs, inputs[:, inputs.shape[1] - window.shape[-1]:].transpose(1, 2)


def causal_conv1d_ref(conv: CausalConv1d, x: Tensor, window: Tensor | None = None) -> Tensor:
    """``conv``'s outputs by torch's depthwise ``F.conv1d`` over the window and ``x`` (the
    specification of ``CausalConv1d.forward``): (B, T, C)."""
    window = conv.init_state(x.shape[0]).to(x.dtype) if window is None else window
    inputs = torch.cat([window, x.transpose(1, 2)], dim=-1)                      # (B, C, K-1+T)
    return torch.nn.functional.conv1d(inputs, conv.weight, conv.bias, groups=conv.groups).transpose(1, 2)
