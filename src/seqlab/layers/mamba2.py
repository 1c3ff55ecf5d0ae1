"""The Mamba-2 mixer (Dao and Gu 2024, "Transformers are SSMs", section 7 and Figure 6): the
SSD layer (``seqlab.ops.ssd``) in a block whose projections all read the block's input at once.

    [z, xBC, dt] = x W_in                               z (B, T, Di), xBC (Di + 2 G N), dt (H)
    [x, B, C] = SiLU(CausalConv1d(xBC))                 x as H heads of width P = Di / H;
                                                        B, C as G groups of size N
    Delta = softplus(dt + dt_bias)                      (B, T, H): one step size per head
    y = SSD(x, Delta, A = -exp(A_log), B, C, D)         A and D: one scalar per head
    out = GroupRMSNorm(y * SiLU(z)) W_out               normalised per group of Di / G channels

Against Mamba: A is a scalar per head (so the scan becomes matrix products, ``ssd_chunked``),
B, C and Delta come from the block's input in parallel with x rather than from x itself, the
state is larger (N of 64-256 rather than 16) at a similar cost, and a normalisation before the
output projection keeps the larger model stable. Initialisation as the reference code: A drawn
uniformly in [1, 16] (``A_log = log A``), dt log-uniform in [dt_min, dt_max] through the
inverse softplus into ``dt_bias``, D = 1; ``A_log``, ``D`` and ``dt_bias`` are not decayed.

The recurrent state is the convolution's window (B, Di + 2 G N, K-1) and the SSM state
(B, H, P, N). Parameter names are those of Hugging Face's ``Mamba2Mixer``.

Shapes: B batch, T time, D model width, Di inner width, H heads, P head width, G groups, N state.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seqlab.layers.causal_conv import CausalConv1d
from seqlab.layers.mamba import inverse_softplus, log_uniform, no_weight_decay
from seqlab.ops.ssd import DEFAULT_CHUNK_SIZE, ssd_chunked, ssd_step

Mamba2State = tuple[Tensor, Tensor]          # (convolution window, SSM state)


class GroupRMSNorm(nn.Module):
    """RMSNorm over each of ``n_groups`` equal groups of the last dimension, one gain per
    channel, applied after gating: y = g * Norm_group(x * SiLU(z)) (computed in float32)."""

    def __init__(self, width: int, n_groups: int, eps: float = 1e-5):
        super().__init__()
        self.n_groups, self.eps = n_groups, eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor, gate: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float() * F.silu(gate.float())
        grouped = x.unflatten(-1, (self.n_groups, -1))                            # (*, G, Di / G)
        grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * grouped.flatten(-2).to(dtype)


class Mamba2Mixer(nn.Module):
    """The Mamba-2 mixer; see the module docstring.

    Args:
        d_model: D.
        d_state: N.
        head_dim: P; ``expand * d_model`` must be a multiple of it.
        n_groups: G, groups of heads sharing B and C; must divide the number of heads.
        expand: Di / D.
        d_conv: K.
        dt_min, dt_max, dt_floor: the initial step sizes' range and lower clamp.
        A_init_range: the range of the initial -A.
        conv_bias, bias: biases in the convolution, and in the projections.
        norm_eps: the group norm's epsilon.
        chunk_size: steps per chunk of the SSD (speed and memory only).
    """

    def __init__(self, d_model: int, d_state: int = 64, head_dim: int = 32, n_groups: int = 1, expand: int = 2,
                 d_conv: int = 4, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_floor: float = 1e-4,
                 A_init_range: tuple[float, float] = (1.0, 16.0), conv_bias: bool = True, bias: bool = False,
                 norm_eps: float = 1e-5, chunk_size: int = DEFAULT_CHUNK_SIZE):
        super().__init__()
        inner = expand * d_model
        self.n_heads, self.head_dim, self.n_groups, self.d_state = inner // head_dim, head_dim, n_groups, d_state
        self.inner, self.chunk_size = inner, chunk_size
        conv_width = inner + 2 * n_groups * d_state
        self.in_proj = nn.Linear(d_model, inner + conv_width + self.n_heads, bias=bias)
        self.conv1d = CausalConv1d(conv_width, d_conv, bias=conv_bias)
        self.dt_bias = nn.Parameter(inverse_softplus(log_uniform(self.n_heads, dt_min, dt_max, dt_floor)))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.n_heads).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(self.n_heads))
        self.norm = GroupRMSNorm(inner, n_groups, norm_eps)
        self.out_proj = nn.Linear(inner, d_model, bias=bias)
        no_weight_decay(self.A_log, self.D, self.dt_bias)

    def init_state(self, batch_size: int) -> Mamba2State:
        """Zeros: the convolution's window and the SSM state (B, H, P, N)."""
        return (self.conv1d.init_state(batch_size),
                self.A_log.new_zeros(batch_size, self.n_heads, self.head_dim, self.d_state))

    def forward(self, x: Tensor, state: Mamba2State | None = None) -> tuple[Tensor, Mamba2State]:
        """Args:
            x: (B, T, D).
            state: after the previous positions; None is ``init_state``.
        Returns:
            (B, T, D) outputs and the state after the last position.
        """
        window, ssm_state = (None, None) if state is None else state
        batch, length, _ = x.shape
        z, xBC, dt = self.in_proj(x).split([self.inner, self.conv1d.in_channels, self.n_heads], dim=-1)
        xBC, window = self.conv1d(xBC, window)
        u, B, C = F.silu(xBC).split([self.inner, self.n_groups * self.d_state, self.n_groups * self.d_state], dim=-1)
        u = u.unflatten(-1, (self.n_heads, self.head_dim))                           # (B, T, H, P)
        B, C = (part.unflatten(-1, (self.n_groups, self.d_state)) for part in (B, C))  # (B, T, G, N)
        delta = F.softplus(dt.float() + self.dt_bias.float())                       # (B, T, H)
        A = -torch.exp(self.A_log.float())
        if ssm_state is not None and length == 1:        # one generation step: the recurrence itself
            y, ssm_state = ssd_step(u[:, 0].float(), delta[:, 0], A, B[:, 0].float(), C[:, 0].float(),
                                    self.D.float(), ssm_state)
            y = y[:, None]
        else:
            y, ssm_state = ssd_chunked(u, delta, A, B, C, self.D, initial_state=ssm_state,
                                       chunk_size=self.chunk_size)
        y = self.norm(y.flatten(-2).to(x.dtype), z)
        return self.out_proj(y), (window, ssm_state)
