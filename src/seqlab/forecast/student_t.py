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
"""

from __future__ import annotations

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
