"""The Mamba mixer (Gu and Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces", section 3.4 and Figure 3): a gated selective SSM.

    [u, z] = x W_in                                    (B, T, 2 Di), Di = expand * D
    u = SiLU(CausalConv1d(u))                          short depthwise convolution
    [dt, B, C] = u W_x                                 dt of rank R, B and C of size N
    Delta = softplus(dt W_dt + b_dt)                   (B, T, Di), input-dependent steps
    y = SelectiveScan(u, Delta, A = -exp(A_log), B, C, D)
    out = (y * SiLU(z)) W_out

What is selective: Delta, B and C depend on the input, so the model can choose per token what
to let into the state and what to forget (the paper's section 3.1); with them constant it is
the time-invariant S4D (``seqlab.layers.s4d``). Initialisation as the paper's (section 3.6 and
the reference code): A by S4D-real, A[d, n] = -(n + 1), stored as ``A_log``; dt drawn
log-uniformly in [dt_min, dt_max] and stored through the inverse softplus in ``dt_proj``'s bias;
``A_log`` and ``D`` carry ``no_weight_decay`` (``seqlab.training.parameter_groups``).

The recurrent state is the convolution's window (B, Di, K-1) and the SSM state (B, Di, N): its
size does not grow with the sequence. The parameter names are those of the reference
implementation and of Hugging Face's ``MambaMixer``.

Shapes: B batch, T time, D model width, Di inner width, N state size, R the rank of dt.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seqlab.layers.causal_conv import CausalConv1d
from seqlab.ops.scan import selective_scan

MambaState = tuple[Tensor, Tensor]          # (convolution window, SSM state)


def inverse_softplus(y: Tensor) -> Tensor:
    """x with softplus(x) = y, for y > 0: x = y + log(1 - exp(-y)), computed stably."""
    return y + torch.log(-torch.expm1(-y))


def log_uniform(size: int, low: float, high: float, floor: float = 0.0) -> Tensor:
    """``size`` draws exp(U(log low, log high)), clamped below at ``floor``."""
    draws = torch.exp(torch.rand(size) * (math.log(high) - math.log(low)) + math.log(low))
    return draws.clamp(min=floor)


def no_weight_decay(*parameters: nn.Parameter) -> None:
    """Mark parameters that the optimiser must not decay (an SSM's A, D and step bias)."""
    for parameter in parameters:
        parameter.no_weight_decay = True


class MambaMixer(nn.Module):
    """The Mamba mixer; see the module docstring.

    Args:
        d_model: D.
        d_state: N.
        expand: Di / D.
        d_conv: K, the convolution's width.
        dt_rank: R; None is ceil(D / 16).
        dt_min, dt_max, dt_floor: the range of the initial step sizes, and their lower clamp.
        conv_bias: a bias in the convolution.
        bias: biases in the input and output projections.
        chunk_size: steps per chunk of the scan (speed and memory only); None: automatic.
    """

    def __init__(self, d_model: int, d_state: int = 16, expand: int = 2, d_conv: int = 4, dt_rank: int | None = None,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, dt_floor: float = 1e-4, conv_bias: bool = True,
                 bias: bool = False, chunk_size: int | None = None):
        super().__init__()
        inner = expand * d_model
        self.d_state, self.dt_rank = d_state, dt_rank or math.ceil(d_model / 16)
        self.chunk_size = chunk_size
        self.in_proj = nn.Linear(d_model, 2 * inner, bias=bias)
        self.conv1d = CausalConv1d(inner, d_conv, bias=conv_bias)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, d_model, bias=bias)
        with torch.no_grad():
            bound = self.dt_rank ** -0.5
            self.dt_proj.weight.uniform_(-bound, bound)
            self.dt_proj.bias.copy_(inverse_softplus(log_uniform(inner, dt_min, dt_max, dt_floor)))
        no_weight_decay(self.A_log, self.D)

    def init_state(self, batch_size: int) -> MambaState:
        """Zeros: the convolution's window (B, Di, K-1) and the SSM state (B, Di, N)."""
        return self.conv1d.init_state(batch_size), self.A_log.new_zeros(batch_size, *self.A_log.shape)

    def forward(self, x: Tensor, state: MambaState | None = None) -> tuple[Tensor, MambaState]:
        """Args:
            x: (B, T, D).
            state: after the previous positions; None is ``init_state``.
        Returns:
            (B, T, D) outputs and the state after the last position.
        """
        window, ssm_state = (None, None) if state is None else state
        u, z = self.in_proj(x).chunk(2, dim=-1)                                   # (B, T, Di) each
        u, window = self.conv1d(u, window)
        u = F.silu(u)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt).float())                              # (B, T, Di)
        y, ssm_state = selective_scan(u, delta, -torch.exp(self.A_log.float()), B, C, self.D,
                                      initial_state=ssm_state, chunk_size=self.chunk_size)
        y = y.to(x.dtype) * F.silu(z)
        return self.out_proj(y), (window, ssm_state)
