"""A linear time-invariant diagonal SSM (S4D, Gu, Gupta, Goel and Re 2022, "On the
Parameterization and Initialization of Diagonal State Space Models") in Mamba's block: the
baseline that shows what selection buys.

The block is the Mamba mixer's (``seqlab.layers.mamba``: input projection, causal convolution,
SiLU, gate, output projection) with its SSM made time-invariant: Delta, B and C are parameters,
not functions of the input,

    h_t = exp(Delta A) h_{t-1} + Delta B u_t,     y_t = sum_n C[:, n] h_t[:, n] + D u_t,

per channel d, with A, B, C of shape (Di, N), A by S4D-real (A[d, n] = -(n + 1), as Mamba's)
and Delta per channel, log-uniform in [dt_min, dt_max] at initialisation. Being time-invariant,
the whole map is one causal convolution (the S4 "convolutional view") with the kernel

    K[d, t] = sum_n C[d, n] exp(t Delta_d A[d, n]) Delta_d B[d, n],

so the parallel view builds K (O(T Di N)) and convolves through the FFT (O(B Di T log T));
the recurrent view is the recurrence above. It cannot do what Mamba's selection does: every
input is written into the state with the same weight wherever it stands, so it cannot skip
noise tokens or reset on a delimiter (the paper's section 3.1, and the selective-copying
experiment).

The recurrent state is the convolution's window (B, Di, K-1) and the SSM state (B, Di, N).

Shapes: B batch, T time, D model width, Di inner width, N state size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seqlab.layers.causal_conv import CausalConv1d
from seqlab.ops.long_conv import fft_causal_conv
from seqlab.layers.mamba import log_uniform, no_weight_decay
from seqlab.ops.scan import full_precision

S4DState = tuple[Tensor, Tensor]          # (convolution window, SSM state)


@full_precision
def lti_ssm(u: Tensor, log_decay: Tensor, input_weight: Tensor, C: Tensor, D: Tensor, state: Tensor | None = None
            ) -> tuple[Tensor, Tensor]:
    """The time-invariant diagonal SSM by its convolutional view.

    Args:
        u: (B, T, Di) inputs.
        log_decay: (Di, N) Delta A.
        input_weight: (Di, N) Delta B.
        C: (Di, N).  D: (Di,).
        state: (B, Di, N) the state before u; None is zeros.
    Returns:
        y (B, T, Di) and the state after the last step (B, Di, N), in float32.
    """
    u, log_decay, input_weight, C, D = (t.float() for t in (u, log_decay, input_weight, C, D))
    length = u.shape[1]
    steps = torch.arange(length + 1, dtype=torch.float32, device=u.device)
    powers = torch.exp(steps[:, None, None] * log_decay)                           # (T+1, Di, N): exp(t Delta A)
    kernel = torch.einsum("tdn,dn->dt", powers[:length], C * input_weight)        # (Di, T)
    y = fft_causal_conv(u, kernel, D)
    # h_{T-1} = sum_s exp((T-1-s) Delta A) Delta B u_s  [+ exp(T Delta A) h_{-1}]
    final = torch.einsum("bsd,sdn->bdn", u, powers[:length].flip(0)) * input_weight
    if state is not None:
        state = state.float()
        y = y + torch.einsum("tdn,bdn->btd", powers[1:], state * C)
        final = final + powers[length] * state
    return y, final


class S4DMixer(nn.Module):
    """Mamba's block around a time-invariant diagonal SSM; see the module docstring.

    Args:
        d_model: D.
        d_state: N.
        expand: Di / D.
        d_conv: the causal convolution's width.
        dt_min, dt_max: the range of the initial step sizes.
        conv_bias, bias: biases in the convolution, and in the projections.
    """

    def __init__(self, d_model: int, d_state: int = 16, expand: int = 2, d_conv: int = 4, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, conv_bias: bool = True, bias: bool = False):
        super().__init__()
        inner = expand * d_model
        self.in_proj = nn.Linear(d_model, 2 * inner, bias=bias)
        self.conv1d = CausalConv1d(inner, d_conv, bias=conv_bias)
        self.log_dt = nn.Parameter(torch.log(log_uniform(inner, dt_min, dt_max)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.B = nn.Parameter(torch.ones(inner, d_state))
        self.C = nn.Parameter(torch.randn(inner, d_state) / math.sqrt(d_state))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, d_model, bias=bias)
        no_weight_decay(self.log_dt, self.A_log, self.B, self.D)

    def init_state(self, batch_size: int) -> S4DState:
        """Zeros: the convolution's window (B, Di, K-1) and the SSM state (B, Di, N)."""
        return self.conv1d.init_state(batch_size), self.A_log.new_zeros(batch_size, *self.A_log.shape)

    def discretised(self) -> tuple[Tensor, Tensor]:
        """Delta A (Di, N), the log of the per-step decay, and Delta B (Di, N), in float32."""
        dt = torch.exp(self.log_dt.float())[:, None]
        return -dt * torch.exp(self.A_log.float()), dt * self.B.float()

    def forward(self, x: Tensor, state: S4DState | None = None) -> tuple[Tensor, S4DState]:
        """Args:
            x: (B, T, D).
            state: after the previous positions; None is ``init_state``.
        Returns:
            (B, T, D) outputs and the state after the last position.
        """
        window, ssm_state = (None, None) if state is None else state
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u, window = self.conv1d(u, window)
        log_decay, input_weight = self.discretised()
        y, ssm_state = lti_ssm(F.silu(u), log_decay, input_weight, self.C, self.D, ssm_state)
        return self.out_proj(y.to(x.dtype) * F.silu(z)), (window, ssm_state)
