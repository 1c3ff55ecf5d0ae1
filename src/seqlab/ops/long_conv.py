"""Long causal convolutions, one filter per channel as long as the sequence: Hyena's operator
and the convolutional view of a time-invariant SSM (S4D) both run on them.

    y_t[c] = sum_{s <= t} k[c, t - s] u_s[c]  (+ bias[c] u_t[c])

- ``fft_causal_conv``: through the FFT in O(T log T);
- ``direct_causal_conv_ref``: the O(T^2) sum over lags, the specification;
- ``conv_output_at_last_position``: the output at the newest position alone, O(t) (a step of
  a recurrent view that keeps every past input).

Shapes: B batch, T time, C channels, L filter length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqlab.errors import ConfigError


def fft_causal_conv(u: Tensor, k: Tensor, bias: Tensor | None = None) -> Tensor:
    """Causal long convolution per channel through the FFT:

        y_t[c] = sum_{s<=t} k[c, t-s] u_s[c]  (+ bias[c] u_t[c]).

    Both signals are zero-padded to 2T before the FFT, so the circular convolution it computes
    equals the linear one on the first T outputs (no wrap-around). Half-precision inputs are
    transformed in float32.

    Args:
        u: (B, T, C) inputs.
        k: (C, L) filters, L >= T; taps beyond T - 1 cannot reach any output and are unused.
        bias: (C,) the lag-0 skip weight, or None.
    Returns:
        (B, T, C), in ``u``'s dtype.
    """
    length = u.shape[1]
    if k.shape[-1] < length:
        raise ConfigError(f"filters have {k.shape[-1]} taps, fewer than the {length} positions of the input")
    fft_dtype = torch.promote_types(u.dtype, torch.float32)
    n_fft = 2 * length
    u_freq = torch.fft.rfft(u.to(fft_dtype), n=n_fft, dim=1)                        # (B, T+1, C)
    k_freq = torch.fft.rfft(k[:, :length].to(fft_dtype), n=n_fft, dim=-1)           # (C, T+1)
    y = torch.fft.irfft(u_freq * k_freq.transpose(0, 1), n=n_fft, dim=1)[:, :length]  # (B, T, C)
    if bias is not None:
        y = y + bias.to(fft_dtype) * u.to(fft_dtype)
    return y.to(u.dtype)


def direct_causal_conv_ref(u: Tensor, k: Tensor, bias: Tensor | None = None) -> Tensor:
    """The specification of ``fft_causal_conv``: the O(T^2) sum over lags,

        y_t[c] = sum_{lag=0}^{t} k[c, lag] u_{t-lag}[c]  (+ bias[c] u_t[c]).

    Args:
        u: (B, T, C) inputs.
        k: (C, L) filters, L >= T.
        bias: (C,) or None.
    Returns:
        (B, T, C).
    """
    length = u.shape[1]
    y = torch.zeros_like(u)
    for lag in range(length):
        y[:, lag:] += k[:, lag] * u[:, :length - lag]          # u_{t-lag} reaches y_t
    return y if bias is None else y + bias * u


def conv_output_at_last_position(inputs: Tensor, k: Tensor, bias: Tensor | None = None) -> Tensor:
    """The causal convolution's output at the last position only, by the direct sum: one
    recurrent step, O(t C).

    Args:
        inputs: (B, C, t) every input so far, the newest last.
        k: (C, L) filters, L >= t.
        bias: (C,) or None.
    Returns:
        (B, C): sum_{s<t} k[c, t-1-s] inputs[:, c, s] (+ bias[c] inputs[:, c, t-1]).
    """
    t = inputs.shape[-1]
    y = (inputs * k[:, :t].flip(-1)).sum(dim=-1)
    return y if bias is None else y + bias * inputs[:, :, -1]
