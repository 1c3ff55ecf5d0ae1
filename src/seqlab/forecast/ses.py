"""Simple exponential smoothing fitted exactly: the fast path of ETS(A,N,N) that Theta and
M4's SES benchmark use.

SES (Brown 1956; in state-space form ETS(A,N,N), Hyndman et al. 2008, chapter 2) forecasts every
future value by the last level, updated as

    e_t = y_t - l_{t-1},        l_t = l_{t-1} + alpha e_t          (t = 1 .. n)

from a level l_0 and 0 < alpha < 1. Maximum likelihood with Gaussian errors minimises the sum of
squared one-step errors SSE(alpha, l_0) (R's ``ses``, ``ets(y, "ANN")``). Because the level is
linear in l_0, l_{t-1} = a_{t-1} + (1 - alpha)^{t-1} l_0 with a the level started from 0, each
error is e_t = r_t - b_t l_0 (r_t = y_t - a_{t-1}, b_t = (1 - alpha)^{t-1}) and for a fixed alpha
the best l_0 is the least-squares one, l_0 = sum r b / sum b^2. The fit minimises this profile
SSE over alpha alone, within R's usual bounds [1e-4, 0.9999]: a grid of 21 points, then
scipy's bounded Brent method in the best cell, the recursion a_t = alpha y_t + (1 - alpha)
a_{t-1} run by a linear filter in C (scipy's ``lfilter``). ``ses_sse_ref`` is the plain loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from seqlab.errors import DataError

ALPHA_BOUNDS = (1e-4, 0.9999)          # R forecast's "usual" bounds for alpha
GRID_POINTS = 21


@dataclass(frozen=True)
class SESFit:
    """A fitted SES: smoothing parameter, initial level, last level (the point forecast), the
    SSE and the in-sample one-step forecasts l_0 .. l_{n-1}."""

    alpha: float
    level0: float
    level: float
    sse: float
    fitted: Tensor


def ses_sse_ref(values: Tensor, alpha: float, level0: float) -> tuple[float, float]:
    """(SSE, last level) of SES by the plain loop over time: the specification."""
    level, sse = level0, 0.0
    for y in values.tolist():
        error = y - level
        sse += error * error
        level += alpha * error
    return sse, level


def profile(values: np.ndarray, alpha: float) -> tuple[float, float]:
    """(the least SSE over l_0 for this alpha, that l_0)."""
    from scipy import signal          # here: scipy takes a second to import, and most runs never fit SES

    n = len(values)
    started_at_zero = signal.lfilter([alpha], [1.0, alpha - 1.0], values)              # a_1 .. a_n
    residual = values - np.concatenate(([0.0], started_at_zero[:-1]))                 # r_t = y_t - a_{t-1}
    weight = (1.0 - alpha) ** np.arange(n)                                            # b_t
    level0 = float(residual @ weight / (weight @ weight))
    errors = residual - weight * level0
    return float(errors @ errors), level0


def fit_ses(values: Tensor) -> SESFit:
    """The SES of least SSE over alpha in ``ALPHA_BOUNDS`` and any l_0.

    Raises:
        DataError: fewer than two values, or a non-finite value.
    """
    from scipy import optimize

    if len(values) < 2:
        raise DataError(f"simple exponential smoothing needs at least 2 values, got {len(values)}")
    y = values.double().numpy()
    if not np.isfinite(y).all():
        raise DataError("simple exponential smoothing got a NaN or infinite value")
    scale = float(np.abs(y).max()) or 1.0          # SSE of order 1: the search's tolerance is relative
    y_scaled = y / scale
    # The profile SSE need not be unimodal in alpha: a coarse grid finds the best basin, which
    # Brent's method then narrows.
    grid = np.linspace(*ALPHA_BOUNDS, GRID_POINTS)
    best = int(np.argmin([profile(y_scaled, alpha)[0] for alpha in grid]))
    bracket = (grid[max(best - 1, 0)], grid[min(best + 1, GRID_POINTS - 1)])
    search = optimize.minimize_scalar(lambda alpha: profile(y_scaled, alpha)[0], bounds=bracket,
                                      method="bounded", options={"xatol": 1e-10})
    alpha = min((float(search.x), float(grid[best])), key=lambda a: profile(y_scaled, a)[0])
    return run_ses(values, alpha, profile(y_scaled, alpha)[1] * scale)


def run_ses(values: Tensor, alpha: float, level0: float) -> SESFit:
    """SES with given parameters over ``values``: its one-step forecasts, last level and SSE."""
    from scipy import signal

    y = values.double().numpy()
    levels = signal.lfilter([alpha], [1.0, alpha - 1.0], y, zi=[(1 - alpha) * level0])[0]
    fitted = np.concatenate(([level0], levels[:-1]))
    errors = y - fitted
    return SESFit(alpha, level0, float(levels[-1]), float(errors @ errors), torch.from_numpy(fitted))
