"""A Student-t output head: hidden states -> a Student-t distribution per position, the
likelihood that DeepAR (Salinas et al. 2020, section 3.1) and its descendants (Lag-Llama,
Rasul et al. 2023) put on real-valued series.

The head maps a hidden vector h (width,) linearly to three numbers (a_df, a_loc, a_scale) and
makes them valid parameters:

    df    = max(2 + softplus(a_df), 2 + DF_FLOOR)   > 2: the variance df / (df - 2) scale^2 is finite
    loc   = a_loc
    scale = softplus(a_scale) + SCALE_FLOOR    > 0

The density is (x - loc) / scale ~ t_df:

    log p(x) = lgamma((df + 1)/2) - lgamma(df/2) - log(scale) - 0.5 log(pi df)
               - (df + 1)/2 log(1 + ((x - loc)/scale)^2 / df).

softplus is torch's, which is linear above 20 and exp below -20 in float32, so hidden values of
+-1e4 give finite parameters (df -> 2 + 1e4 or exactly 2 + 0, scale -> 1e4 or the floor).

Sampling (``sample_student_t``) takes a ``torch.Generator``, which ``torch.distributions.StudentT``
does not: forecasters draw each series' paths from that series' own generator
(``seqlab.forecast.base.series_generator``), by Bailey's polar method, whose uniform draws do not
depend on the parameters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import StudentT
from torch.nn.functional import softplus

SCALE_FLOOR = 1e-6
MIN_DF = 2.0
DF_FLOOR = 1e-6


class StudentTHead(nn.Module):
    """A linear map from hidden states to the parameters of a Student-t (see the module docstring)."""

    def __init__(self, width: int):
        super().__init__()
        self.projection = nn.Linear(width, 3)

    def parameters_of(self, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(df, loc, scale), each (...,), for hidden states (..., width)."""
        raw = self.projection(hidden)                                          # (..., 3)
        df = MIN_DF + softplus(raw[..., 0])
        # softplus underflows to 0 for very negative inputs; the floor keeps df > 2 strictly.
        df = df.clamp_min(MIN_DF + DF_FLOOR)
        return df, raw[..., 1], softplus(raw[..., 2]) + SCALE_FLOOR

    def forward(self, hidden: Tensor) -> StudentT:
        """A ``torch.distributions.StudentT`` of batch shape (...) for hidden states (..., width)."""
        df, loc, scale = self.parameters_of(hidden)
        return StudentT(df, loc, scale, validate_args=False)


def student_t_nll(distribution: StudentT, target: Tensor) -> Tensor:
    """The mean negative log-likelihood of ``target`` (...) under ``distribution`` (batch (...))."""
    return -distribution.log_prob(target).mean()


def disc_points(shape: tuple[int, ...], generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(U, W), each of ``shape``, float64: points (U, V) uniform on the unit disc, by rejection
    from the square [-1, 1)^2 with ``generator``, and W = U^2 + V^2 in (0, 1). What is drawn
    does not depend on any distribution parameter (Bailey's method needs nothing else)."""
    count = math.prod(shape)
    u = torch.empty(count, dtype=torch.float64)
    w = torch.empty(count, dtype=torch.float64)
    pending = torch.arange(count)
    while len(pending):                                  # pi/4 of the candidates are kept
        candidates = torch.rand(len(pending), 2, generator=generator, dtype=torch.float64) * 2 - 1
        radius = candidates.pow(2).sum(dim=1)
        inside = (radius < 1) & (radius > 0)
        u[pending[inside]] = candidates[inside, 0]
        w[pending[inside]] = radius[inside]
        pending = pending[~inside]
    return u.view(shape), w.view(shape)


def student_t_from_disc(df: Tensor, u: Tensor, w: Tensor) -> Tensor:
    """Standard Student-t variates T = U sqrt(df (W^(-2/df) - 1) / W) of disc points (U, W)
    (Bailey 1994, "Polar generation of random variates with the t-distribution", Math. Comp.
    62: the polar Box-Muller method with the t's radial law); float64."""
    return u * torch.sqrt(df * torch.expm1(-(2 / df) * torch.log(w)) / w)


def sample_student_t(df: Tensor, loc: Tensor, scale: Tensor, generator: torch.Generator) -> Tensor:
    """One Student-t variate loc + scale T per element (broadcast), T drawn with ``generator``
    by Bailey's polar method; float64 on the CPU."""
    df, loc, scale = torch.broadcast_tensors(df.double(), loc.double(), scale.double())
    u, w = disc_points(tuple(df.shape), generator)
    return loc + scale * student_t_from_disc(df, u, w)
