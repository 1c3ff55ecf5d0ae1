"""A batched L-BFGS for the ETS fit: B independent smooth problems minimised at once.

Every (series, form) pair of an automatic ETS fit is one row; the rows share each evaluation of
the recursion (one pass over time for all of them), so the optimiser works row-wise: its own
curvature pairs, line search and stopping per row, and rows that have stopped are no longer
evaluated. Infeasible points (outside the admissible region, a non-positive forecast of a
multiplicative-error form) are +inf, which the line search backs away from.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

MAX_LOGIT_STEP = 1.0        # the first LOGITS coordinates are logits of bounded parameters
LOGITS = 4


def minimise(objective: Callable[[Tensor, Tensor], Tensor], x0: Tensor, active: Tensor, *, max_iterations: int,
             tolerance: float, memory: int = 8) -> tuple[Tensor, Tensor]:
    """Minimise B independent functions at once by L-BFGS (Nocedal & Wright 2006, Alg. 7.4)
    with a backtracking Armijo line search (quadratic interpolation) per row.

    Args:
        objective: (x (R, P), rows (R,)) -> (R,) values of the functions ``rows`` at x,
            differentiable, row i depending on x[i] only; +inf where infeasible.
        x0: (B, P) starting points with finite values.
        active: (B, P) true for the coordinates that move.
    Returns:
        (B, P) minimisers and (B,) minima. A row stops when an iteration lowers its value by
        less than ``tolerance`` * max(1, |f|), when its line search fails from steepest descent,
        or after ``max_iterations``; only rows still running are evaluated.
    """
    def value_and_grad(x: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():          # a fit may run inside a caller's no_grad (an evaluation)
            x = x.detach().requires_grad_(True)
            f = objective(x, rows)
            (g,) = torch.autograd.grad(torch.where(torch.isfinite(f), f, torch.zeros_like(f)).sum(), x)
        return f.detach(), torch.where(torch.isfinite(g) & active[rows], g, torch.zeros_like(g))

    every = torch.arange(x0.shape[0])
    x = x0.clone()
    f, g = value_and_grad(x, every)
    history: list[tuple[Tensor, Tensor, Tensor]] = []       # (s, y, rho) over all rows; rho = 0: no pair
    h0 = torch.ones_like(f)
    fresh = torch.ones_like(f, dtype=torch.bool)            # no usable curvature pair yet
    done = ~torch.isfinite(f)
    for _ in range(max_iterations):
        rows = (~done).nonzero().squeeze(1)
        if len(rows) == 0:
            break
        x_r, f_r, g_r, fresh_r = x[rows], f[rows], g[rows], fresh[rows]
        pairs = [(s[rows], y[rows], rho[rows]) for s, y, rho in history]
        q, coefficients = -g_r, []
        for s, y, rho in reversed(pairs):                   # the two-loop recursion
            c = rho * (s * q).sum(1)
            q = q - c[:, None] * y
            coefficients.append(c)
        direction = q * torch.where(fresh_r, torch.ones_like(f_r), h0[rows])[:, None]
        for (s, y, rho), c in zip(pairs, reversed(coefficients)):
            direction = direction + s * (c - rho * (y * direction).sum(1))[:, None]
        slope = (g_r * direction).sum(1)
        uphill = slope >= 0
        direction = torch.where(uphill[:, None], -g_r, direction)
        slope = torch.where(uphill, -(g_r * g_r).sum(1), slope)
        first = (1 / g_r.norm(dim=1).clamp_min(1e-12)).clamp_max(1.0)
        step = torch.where(fresh_r | uphill, first, torch.ones_like(f_r))
        # no step moves a logit by more than MAX_LOGIT_STEP: a jump deep into a bound's flat tail
        # (where the gradient vanishes) could never come back
        reach = direction[:, :LOGITS].abs().amax(1).clamp_min(1e-300)
        step = torch.minimum(step, MAX_LOGIT_STEP / reach)
        searching = slope < 0
        new_x, new_f = x_r.clone(), f_r.clone()
        for _ in range(30):
            # trials need values only, and only of the rows still searching; the gradient is
            # taken once, where a row's search ends
            trial = x_r + step[:, None] * direction
            trial_f = torch.full_like(f_r, math.inf)
            pending = searching.nonzero().squeeze(1)
            with torch.no_grad():
                trial_f[pending] = objective(trial[pending], rows[pending])
            accept = searching & torch.isfinite(trial_f) & (trial_f <= f_r + 1e-4 * step * slope)
            new_x = torch.where(accept[:, None], trial, new_x)
            new_f = torch.where(accept, trial_f, new_f)
            searching = searching & ~accept
            if not searching.any():
                break
            # the minimum of the quadratic through f, the slope and the trial, kept in [0.1, 0.5] step
            curvature = (trial_f - f_r - slope * step).clamp_min(1e-300)
            guess = torch.where(torch.isfinite(trial_f), -slope * step * step / (2 * curvature), 0.1 * step)
            step = torch.where(searching, torch.minimum(torch.maximum(guess, 0.1 * step), 0.5 * step), step)
        failed = searching | (slope >= 0)
        new_g = g_r.clone()
        moved = (~failed).nonzero().squeeze(1)
        if len(moved):
            new_f[moved], new_g[moved] = value_and_grad(new_x[moved], rows[moved])
        s, y = new_x - x_r, new_g - g_r
        sy = (s * y).sum(1)
        usable = ~failed & (sy > 1e-12 * s.norm(dim=1) * y.norm(dim=1))
        rho = torch.where(usable, 1 / torch.where(usable, sy, torch.ones_like(sy)), torch.zeros_like(sy))
        forget = torch.zeros_like(done)
        forget[rows] = failed                                # a failed search restarts from steepest descent
        history = [(hs, hy, torch.where(forget, torch.zeros_like(hr), hr)) for hs, hy, hr in history]
        entry = (torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(f))
        entry[0][rows], entry[1][rows], entry[2][rows] = s, y, rho
        history = (history + [entry])[-memory:]
        h0[rows] = torch.where(usable, sy / (y * y).sum(1).clamp_min(1e-300), h0[rows])
        gain = f_r - new_f
        done[rows] = (failed & fresh_r) | (~failed & (gain <= tolerance * new_f.abs().clamp_min(1.0)))
        fresh[rows] = failed | (fresh_r & ~usable)
        x[rows], f[rows], g[rows] = new_x, new_f, new_g
    return x, f
