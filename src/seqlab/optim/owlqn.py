"""L-BFGS and OWL-QN: quasi-Newton minimisation of a smooth objective plus an optional L1 term.

Minimises ``F(x) = f(x) + c1 * ||x||_1`` for a smooth ``f`` given as ``x -> (f(x), grad f(x))``.

L-BFGS (Nocedal 1980; Liu and Nocedal 1989) keeps the last ``m`` pairs ``s_k = x_{k+1} - x_k``,
``y_k = grad f(x_{k+1}) - grad f(x_k)`` and turns a gradient into a quasi-Newton direction
``-H g`` by the two-loop recursion (Nocedal and Wright 2006, Algorithm 7.4), with the initial
inverse Hessian ``H_0 = (s.y / y.y) I``.

OWL-QN (Andrew and Gao 2007, "Scalable training of L1-regularized log-linear models") handles
the L1 term, which has no gradient at zero, by staying within one orthant per iteration:

- the pseudo-gradient ``pg`` is the gradient of F where it exists, and at ``x_i = 0`` the
  one-sided derivative that points downhill, or 0 when neither side descends:
  ``pg_i = g_i + c1 sign(x_i)`` for ``x_i != 0``; ``g_i + c1`` if that is < 0, ``g_i - c1``
  if that is > 0, else 0, for ``x_i = 0``;
- the direction ``d = -H pg`` (H from the smooth ``s``, ``y`` pairs) has every component whose
  sign disagrees with ``-pg`` set to 0;
- the line search moves within the orthant ``xi = sign(x)`` (``sign(-pg)`` where ``x_i = 0``):
  each trial point is projected onto it (components that would cross zero become exactly
  zero), and is accepted when ``F(x') <= F(x) + ftol * pg.(x' - x)`` (backtracking, halving
  the step).

With ``c1 = 0`` this is L-BFGS with a backtracking Armijo line search. The stopping rules are
libLBFGS's (Okazaki), which crfsuite uses: converged when ``||pg|| / max(1, ||x||) < epsilon``;
stalled when the relative decrease of F over the last ``past`` iterations is below ``delta``.
A wall-clock ``deadline`` (a ``time.monotonic()`` instant) is checked after every iteration,
so a search stops at most one iteration (line search included) past it, at an accepted point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from seqlab.errors import ConfigError

Objective = Callable[[Tensor], tuple[float, Tensor]]      # x -> (f(x), grad f(x)), f smooth


@dataclass
class MinimizeResult:
    """The minimiser found and how the search ended.

    ``stopped_by``: "converged" (gradient test), "stalled" (the ``delta`` test),
    "max_iterations", "line_search" (no step decreased F; ``x`` is the last accepted point), or
    "deadline" (the wall-clock deadline passed; ``x`` is the last accepted point).
    """

    x: Tensor
    value: float                     # F(x), the L1 term included
    iterations: int
    evaluations: int
    stopped_by: Literal["converged", "stalled", "max_iterations", "line_search", "deadline"]


def pseudo_gradient(x: Tensor, gradient: Tensor, c1: float) -> Tensor:
    """The OWL-QN pseudo-gradient of ``f(x) + c1 ||x||_1`` from ``gradient = grad f(x)``."""
    if c1 == 0:
        return gradient
    right = gradient + c1                 # derivative of F moving up from x_i = 0
    left = gradient - c1                  # ... moving down
    at_zero = torch.where(right < 0, right, torch.where(left > 0, left, torch.zeros_like(gradient)))
    return torch.where(x > 0, right, torch.where(x < 0, left, at_zero))


def two_loop_direction(gradient: Tensor, history: list[tuple[Tensor, Tensor, float]]) -> Tensor:
    """``-H gradient`` by the L-BFGS two-loop recursion over ``history`` of (s, y, 1 / s.y), oldest first."""
    direction = -gradient                                   # a fresh tensor: updated in place below
    alphas = []
    for s, y, rho in reversed(history):
        alpha = rho * float(s @ direction)
        direction.add_(y, alpha=-alpha)
        alphas.append(alpha)
    if history:
        s, y, _ = history[-1]
        direction.mul_(float(s @ y) / float(y @ y))
    for (s, y, rho), alpha in zip(history, reversed(alphas)):
        beta = rho * float(y @ direction)
        direction.add_(s, alpha=alpha - beta)
    return direction


def minimize(
    objective: Objective, x0: Tensor, *, c1: float = 0.0, memory: int = 6, max_iterations: int = 100,
    epsilon: float = 1e-5, past: int = 10, delta: float = 1e-5, max_line_search: int = 20,
    ftol: float = 1e-4, callback: Callable[[int, float], None] | None = None, deadline: float | None = None,
) -> MinimizeResult:
    """Minimise ``f(x) + c1 ||x||_1`` from ``x0`` by OWL-QN (L-BFGS when ``c1 = 0``).

    Args:
        objective: ``x -> (f(x), grad f(x))`` of the smooth part; ``x`` is a 1-D tensor.
        x0: (n,) starting point (not modified).
        c1: weight of the L1 term.
        memory: number of (s, y) pairs kept.
        max_iterations: iterations (accepted steps) at most.
        epsilon: converged when ``||pg|| / max(1, ||x||) < epsilon``.
        past, delta: stalled when ``(F_{k-past} - F_k) / F_k < delta``; ``past = 0`` turns it off.
        max_line_search: trial steps per iteration before giving up.
        ftol: sufficient decrease constant of the Armijo condition.
        callback: called after every iteration with (iteration, F).
        deadline: a ``time.monotonic()`` instant; once an iteration ends past it, the search
            stops with ``stopped_by="deadline"`` (after one iteration at least). None: no limit.
    Returns:
        a ``MinimizeResult``.
    """
    if c1 < 0:
        raise ConfigError(f"c1 must be >= 0, got {c1}")
    if memory < 1 or max_iterations < 0 or max_line_search < 1:
        raise ConfigError(f"memory and max_line_search must be >= 1 and max_iterations >= 0, got "
                          f"{memory}, {max_line_search}, {max_iterations}")
    x = x0.detach().clone()
    smooth, gradient = objective(x)
    evaluations = 1
    value = smooth + c1 * float(x.abs().sum())
    steepest = pseudo_gradient(x, gradient, c1)
    values = [value]
    history: list[tuple[Tensor, Tensor, float]] = []

    def converged() -> bool:
        return float(steepest.norm()) / max(1.0, float(x.norm())) < epsilon

    if converged():
        return MinimizeResult(x, value, 0, evaluations, "converged")
    direction = -steepest
    step = 1.0 / max(float(direction.norm()), 1e-300)
    for iteration in range(1, max_iterations + 1):
        if c1 > 0:
            direction = torch.where(direction * steepest < 0, direction, torch.zeros_like(direction))
            orthant = torch.where(x != 0, x.sign(), -steepest.sign())
        slope = float(steepest @ direction)
        if slope >= 0:      # no descent direction left (e.g. the gradient is at rounding level)
            return MinimizeResult(x, value, iteration - 1, evaluations, "line_search")
        for _ in range(max_line_search):
            trial = x + step * direction
            if c1 > 0:
                trial = torch.where(trial * orthant > 0, trial, torch.zeros_like(trial))
            trial_smooth, trial_gradient = objective(trial)
            evaluations += 1
            trial_value = trial_smooth + c1 * float(trial.abs().sum())
            decrease = float(steepest @ (trial - x)) if c1 > 0 else step * slope
            if trial_value <= value + ftol * decrease:
                break
            step *= 0.5
        else:
            return MinimizeResult(x, value, iteration - 1, evaluations, "line_search")
        s, y = trial - x, trial_gradient - gradient
        x, gradient, value = trial, trial_gradient, trial_value
        steepest = pseudo_gradient(x, gradient, c1)
        values.append(value)
        if callback is not None:
            callback(iteration, value)
        if converged():
            return MinimizeResult(x, value, iteration, evaluations, "converged")
        if past > 0 and iteration >= past and (values[-1 - past] - value) / abs(value) < delta:
            return MinimizeResult(x, value, iteration, evaluations, "stalled")
        if deadline is not None and iteration < max_iterations and time.monotonic() >= deadline:
            return MinimizeResult(x, value, iteration, evaluations, "deadline")
        curvature = float(s @ y)
        if curvature > 0:                   # always for a strictly convex f; else skip the pair
            history.append((s, y, 1.0 / curvature))
            del history[:-memory]
        direction = two_loop_direction(steepest, history)
        step = 1.0
    return MinimizeResult(x, value, max_iterations, evaluations, "max_iterations")
