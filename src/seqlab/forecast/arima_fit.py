"""ARIMA estimation, batched over models and series: exact maximum likelihood, or conditional sum of
squares (CSS) for the order search.

**Parameters.** Each model's unconstrained x holds, in blocks, the partial autocorrelations (as
atanh) of phi, theta, Phi and Theta (``seqlab.forecast.arima``: Durbin-Levinson maps, so every AR
part is stationary and every MA part invertible), the K regression coefficients beta of its
exogenous regressors, and the mean mu of the differenced series. The data are centred by least
squares on the differenced series (w on its differenced regressors, and on 1 with a constant), and
scaled to unit spread: x = 0 is white noise around the least-squares fit.

**Maximum likelihood** (``fit_arima_batch(method="ml")``): the concentrated log-likelihood of
``arima_likelihood.arma_loglik_batch`` of w - x beta - mu, maximised by BFGS run for many models at
once (``minimize_batch``): forward-difference gradients, a backtracking Armijo line search along
-H g, stopping as R's ``optim`` on a relative gain below 1e-8. Started at x = 0, or at given fits
(CSS estimates, as R's ``method = "CSS-ML"``). Models are grouped by state dimension and period,
each group one batch.

**CSS** (``fit_arima_batch(method="css")``): the same BFGS on 1/2 log sigma^2_CSS
(``arima_css.css_sums_batch``), all models of one period in one batch. Its "log-likelihood" is
R's for CSS fits, -n'/2 (log 2 pi + 1 + log sigma^2_CSS), n' = n - d - mD, and ranks models of
one series as R's ``auto.arima`` ranks approximate fits (its offset is the same for all of them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from seqlab.forecast.arima import (ArimaFit, ArimaOrder, coefficients_to_pacf, difference, pacf_to_coefficients,
                                   seasonal_product)
from seqlab.forecast.arima_css import css_sums_batch
from seqlab.forecast.arima_likelihood import SIGMA2_FLOOR, arma_loglik_batch, concentrated_loglik

MAX_START_PARTIAL = 0.98           # a start from given fits keeps its partials inside (-1, 1) by this margin


@dataclass(frozen=True)
class ModelBatch:
    """Models fitted together: each a differenced series and an order of one seasonal period.

    Attributes:
        w: (N, n) each model's differenced series less its least-squares fit, scaled, right-aligned;
            observed: (N, n) where it has values; count: (N,) how many.
        regressors: (N, n, K) the differenced regressors, each column scaled to unit spread by
            ``regressor_scale`` (N, K) (K = 0: none).
        center: (N,) the least-squares mean; beta0: (N, K) the least-squares coefficients;
            scale: (N,) the spread of what they leave.
        orders: the N orders; slots: widths of the (ar, ma, sar, sma) blocks of x, then K, then the mean.
        free: (N, k) the coordinates of x each model uses.
    """

    w: np.ndarray
    observed: np.ndarray
    count: np.ndarray
    regressors: np.ndarray
    regressor_scale: np.ndarray
    center: np.ndarray
    beta0: np.ndarray
    scale: np.ndarray
    orders: tuple[ArimaOrder, ...]
    slots: tuple[int, int, int, int]
    free: np.ndarray

    @staticmethod
    def build(series: list[np.ndarray], orders: list[ArimaOrder],
              regressors: list[np.ndarray | None] | None = None) -> ModelBatch:
        """From differenced series (n_i,) and their differenced regressors (n_i, K_i) or None."""
        regressors = regressors or [None] * len(series)
        count_models, n = len(orders), max(len(w) for w in series)
        K = max((0 if x is None else x.shape[1]) for x in regressors)
        slots = tuple(max(getattr(o, name) for o in orders) for name in ("p", "q", "P", "Q"))
        edges = np.cumsum((0,) + slots)
        free = np.zeros((count_models, edges[-1] + K + 1), bool)
        w_all, observed = np.zeros((count_models, n)), np.zeros((count_models, n), bool)
        x_all, x_scale = np.zeros((count_models, n, K)), np.ones((count_models, K))
        center, beta0, scale = np.zeros(count_models), np.zeros((count_models, K)), np.ones(count_models)
        for i, (w, o, x) in enumerate(zip(series, orders, regressors)):
            for block, width in enumerate((o.p, o.q, o.P, o.Q)):
                free[i, edges[block]:edges[block] + width] = True
            k = 0 if x is None else x.shape[1]
            free[i, edges[-1]:edges[-1] + k], free[i, -1] = True, o.constant
            design = np.concatenate([np.zeros((len(w), 0)) if x is None else x,
                                     np.ones((len(w), int(o.constant)))], axis=1)
            coefficients = np.linalg.lstsq(design, w, rcond=None)[0] if design.shape[1] else np.zeros(0)
            beta0[i, :k] = coefficients[:k]
            center[i] = coefficients[k] if o.constant else 0.0
            residual = w - design @ coefficients
            spread = float(np.sqrt(np.mean(residual ** 2)))
            scale[i] = spread if spread > 0 else max(abs(center[i]), 1.0)
            w_all[i, n - len(w):], observed[i, n - len(w):] = residual / scale[i], True
            if k:
                column_spread = np.sqrt(np.mean(x ** 2, axis=0))
                x_scale[i, :k] = np.where(column_spread > 0, column_spread, 1.0)
                x_all[i, n - len(w):, :k] = x / x_scale[i, :k]
        return ModelBatch(w_all, observed, observed.sum(1), x_all, x_scale, center, beta0, scale, tuple(orders),
                          slots, free)

    @property
    def n_exog(self) -> int:
        return self.regressors.shape[2]

    def polynomials(self, x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """(M, p), (M, q), (M, P), (M, Q) coefficients at unconstrained x (M, k) of models ``rows``."""
        edges = np.cumsum((0,) + self.slots)
        partials = np.tanh(x[:, :edges[-1]]) * self.free[rows, :edges[-1]]
        blocks = [pacf_to_coefficients(partials[:, a:b]) for a, b in zip(edges[:-1], edges[1:])]
        return blocks[0], -blocks[1], blocks[2], -blocks[3]

    def full_polynomials(self, x: np.ndarray, rows: np.ndarray, width: int | None = None) -> tuple[np.ndarray,
                                                                                                     np.ndarray]:
        """(M, r) AR and (M, r - 1) MA coefficients of the multiplied polynomials, zero-padded to
        r = max(p', q' + 1) (or to ``width``)."""
        ar, ma, sar, sma = self.polynomials(x, rows)
        m = self.orders[0].m
        ar_full, ma_full = seasonal_product(ar, sar, m, -1.0), seasonal_product(ma, sma, m, 1.0)
        r = max(ar_full.shape[1], ma_full.shape[1] + 1) if width is None else width
        return (np.pad(ar_full, ((0, 0), (0, r - ar_full.shape[1]))),
                np.pad(ma_full, ((0, 0), (0, r - 1 - ma_full.shape[1]))))

    def residual_series(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(M, n) the scaled w less the regression and the mean at x (M, k)."""
        w = self.w[rows] - (x[:, -1] * self.free[rows, -1])[:, None]
        if self.n_exog:
            beta = x[:, -1 - self.n_exog:-1] * self.free[rows, -1 - self.n_exog:-1]
            w = w - np.einsum("mtk,mk->mt", self.regressors[rows], beta)
        return w

    def sums(self, x: np.ndarray, rows: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """(M,) sum v^2 / F and (M,) sum log F (``arma_loglik_batch``) at x (M, k) of models ``rows``."""
        sum_squares, sum_log_f = np.empty(len(rows)), np.empty(len(rows))
        for start in range(0, len(rows), chunk):
            part, x_part = rows[start:start + chunk], x[start:start + chunk]
            ar_full, ma_full = self.full_polynomials(x_part, part)
            with np.errstate(all="ignore"):      # trial steps far out give inf or NaN, scored inf
                sum_squares[start:start + chunk], sum_log_f[start:start + chunk] = arma_loglik_batch(
                    self.residual_series(x_part, part), self.observed[part], ar_full, ma_full)
        return sum_squares, sum_log_f

    def negative_loglik(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(M,) minus the concentrated log-likelihood per observation, at x (M, k), of models ``rows``."""
        loglik, _ = concentrated_loglik(*self.sums(x, rows), self.count[rows])
        out = -loglik / self.count[rows]
        return np.where(np.isfinite(out), out, np.inf)

    def css(self, x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M,) sigma^2_CSS (at least ``SIGMA2_FLOOR``, NaN where undefined) and (M,) residual counts."""
        ar_full, ma_full = self.full_polynomials(x, rows)
        degree = np.array([self.orders[i].n_ar for i in rows], dtype=int)
        with np.errstate(all="ignore"):
            sum_squares, counts = css_sums_batch(self.residual_series(x, rows), self.observed[rows], ar_full,
                                                 ma_full, degree)
            return np.maximum(sum_squares / np.maximum(counts, 1), SIGMA2_FLOOR), counts

    def css_objective(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(M,) 1/2 log sigma^2_CSS at x (M, k) of models ``rows`` (inf where undefined)."""
        sigma2, _ = self.css(x, rows)
        out = 0.5 * np.log(sigma2)
        return np.where(np.isfinite(out), out, np.inf)

    def start_point(self, fits: list[ArimaFit]) -> np.ndarray:
        """(N, k) the x of given fits of these models (their coefficients, regression and mean)."""
        edges = np.cumsum((0,) + self.slots)
        x = np.zeros(self.free.shape)
        for i, fit in enumerate(fits):
            for block, (values, sign) in enumerate(((fit.ar, 1.0), (fit.ma, -1.0), (fit.seasonal_ar, 1.0),
                                                    (fit.seasonal_ma, -1.0))):
                if len(values):
                    partials = coefficients_to_pacf(sign * np.asarray(values)[None])[0]
                    x[i, edges[block]:edges[block] + len(values)] = np.arctanh(
                        np.clip(partials, -MAX_START_PARTIAL, MAX_START_PARTIAL))
            k = len(fit.exog_coefficients)
            if k:
                x[i, edges[-1]:edges[-1] + k] = ((fit.exog_coefficients - self.beta0[i, :k])
                                                 * self.regressor_scale[i, :k] / self.scale[i])
            if fit.order.constant:
                x[i, -1] = (fit.mean - self.center[i]) / self.scale[i]
        return np.where(np.isfinite(x), x, 0.0) * self.free


def minimize_batch(objective: Callable[[np.ndarray, np.ndarray], np.ndarray], free: np.ndarray,
                   max_iterations: int = 200, reltol: float = 1e-8, step: float = 1e-6,
                   start: np.ndarray | None = None) -> np.ndarray:
    """BFGS from x = 0 (or ``start`` (N, k)) for N objectives at once: (N, k) minimisers over the
    ``free`` coordinates.

    ``objective(x (M, k), rows (M,))`` gives (M,) values of the objectives ``rows`` (inf where
    undefined). Gradients are forward differences of ``step``; each iteration backtracks (halving,
    Armijo constant 1e-4) along -H g; a model stops when an iteration gains less than
    reltol (|f| + reltol) (optim's rule) or its line search fails.
    """
    count, k = free.shape
    x = np.zeros((count, k)) if start is None else start.copy()
    f = objective(x, np.arange(count))
    if start is not None and not np.isfinite(f).all():        # a start that fails starts at 0
        bad = np.nonzero(~np.isfinite(f))[0]
        x[bad] = 0.0
        f[bad] = objective(x[bad], bad)

    def gradient(points: np.ndarray, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        model, coordinate = np.nonzero(free[rows])
        shifted = points[model].copy()
        shifted[np.arange(len(model)), coordinate] += step
        g = np.zeros_like(points)
        g[model, coordinate] = (objective(shifted, rows[model]) - values[model]) / step
        return np.where(np.isfinite(g), g, 0.0)

    g = gradient(x, f, np.arange(count))
    inverse_hessian = np.eye(k)[None] * (free[:, :, None] & free[:, None, :])
    active = np.nonzero(free.any(1) & np.isfinite(f))[0]
    for _ in range(max_iterations):
        if not len(active):
            break
        xa, fa, ga, Ha = x[active], f[active], g[active], inverse_hessian[active]
        direction = -np.einsum("nij,nj->ni", Ha, ga)
        slope = np.einsum("ni,ni->n", ga, direction)
        uphill = ~(slope < 0)                                   # reset a lost curvature estimate
        direction[uphill], slope[uphill] = -ga[uphill], -np.einsum("ni,ni->n", ga[uphill], ga[uphill])
        length = np.ones(len(active))
        x_new, f_new, accepted = xa.copy(), fa.copy(), np.zeros(len(active), bool)
        pending = np.nonzero(slope < 0)[0]
        for _ in range(40):
            if not len(pending):
                break
            trial = xa[pending] + length[pending, None] * direction[pending]
            f_trial = objective(trial, active[pending])
            ok = f_trial <= fa[pending] + 1e-4 * length[pending] * slope[pending]
            done = pending[ok]
            x_new[done], f_new[done], accepted[done] = trial[ok], f_trial[ok], True
            pending = pending[~ok]
            length[pending] *= 0.5
        moved = np.nonzero(accepted)[0]
        g_new = gradient(x_new[moved], f_new[moved], active[moved])
        s, y = x_new[moved] - xa[moved], g_new - ga[moved]
        sy = np.einsum("ni,ni->n", s, y)
        update = sy > 1e-12
        H = Ha[moved]
        rho = np.where(update, 1.0 / np.where(update, sy, 1.0), 0.0)
        left = np.eye(k)[None] - rho[:, None, None] * s[:, :, None] * y[:, None, :]
        H_new = left @ H @ left.transpose(0, 2, 1) + rho[:, None, None] * s[:, :, None] * s[:, None, :]
        H_new[~update] = H[~update]
        rows = active[moved]
        x[rows], f[rows], g[rows], inverse_hessian[rows] = x_new[moved], f_new[moved], g_new, H_new
        gained = fa[moved] - f_new[moved]
        keep = gained > reltol * (np.abs(fa[moved]) + reltol)
        active = rows[keep]
    return x


def difference_regressors(exog: np.ndarray, order: ArimaOrder) -> np.ndarray:
    """(n - d - mD, K) the regressors (n, K) differenced as y is."""
    return np.stack([difference(column, order) for column in exog.T], axis=1) if exog.shape[1] else \
        np.zeros((len(exog) - order.n_diff, 0))


def fit_arima_batch(series: list[np.ndarray], orders: list[ArimaOrder], max_iterations: int = 200, *,
                    exog: list[np.ndarray | None] | None = None, method: Literal["ml", "css"] = "ml",
                    start: list[ArimaFit | None] | None = None) -> list[ArimaFit]:
    """Fits of SARIMA ``orders[i]`` to ``series[i]`` (n_i,), with regressors ``exog[i]`` (n_i, K_i) or
    None: by exact maximum likelihood, batched by state dimension and period (padding to a larger
    state costs O(r^2) per step), or by CSS, batched by period; ML starts from ``start[i]`` where
    given (the same order and regressors)."""
    exog = exog or [None] * len(series)
    start = start or [None] * len(series)
    fits: list[ArimaFit | None] = [None] * len(orders)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, order in enumerate(orders):
        groups.setdefault((order.state_dim if method == "ml" else 0, order.m), []).append(i)
    for members in groups.values():
        differenced = [difference(series[i], orders[i]) for i in members]
        regressors = [None if exog[i] is None else difference_regressors(exog[i], orders[i]) for i in members]
        batch = ModelBatch.build(differenced, [orders[i] for i in members], regressors)
        rows = np.arange(len(members))
        if method == "ml":
            given = [start[i] or empty_fit(orders[i]) for i in members]
            x0 = batch.start_point(given) if any(start[i] is not None for i in members) else None
            x = minimize_batch(batch.negative_loglik, batch.free, max_iterations, start=x0)
            loglik, sigma2 = concentrated_loglik(*batch.sums(x, rows), batch.count)
        else:
            x = minimize_batch(batch.css_objective, batch.free, max_iterations)
            sigma2, _ = batch.css(x, rows)
            with np.errstate(divide="ignore", invalid="ignore"):
                loglik = -0.5 * batch.count * (math.log(2 * math.pi) + 1 + np.log(sigma2))
            loglik = np.where(np.isfinite(loglik), loglik, -np.inf)
        ar, ma, sar, sma = batch.polynomials(x, rows)
        first_beta = x.shape[1] - 1 - batch.n_exog                     # x: (.., beta (K), mean)
        for j, i in enumerate(members):
            o, scale, count = orders[i], batch.scale[j], int(batch.count[j])
            k = 0 if exog[i] is None else exog[i].shape[1]
            beta = batch.beta0[j, :k] + x[j, first_beta:first_beta + k] * scale / batch.regressor_scale[j, :k]
            fits[i] = ArimaFit(o, ar[j, :o.p].copy(), ma[j, :o.q].copy(), sar[j, :o.P].copy(), sma[j, :o.Q].copy(),
                               float(batch.center[j] + scale * x[j, -1] * o.constant),
                               float(sigma2[j] * scale ** 2),
                               float(loglik[j] - count * math.log(scale)), count, beta.copy())
    return fits


def empty_fit(order: ArimaOrder) -> ArimaFit:
    """The x = 0 point of a model without a start: white noise around the least-squares fit."""
    zeros = np.zeros
    return ArimaFit(order, zeros(order.p), zeros(order.q), zeros(order.P), zeros(order.Q), math.nan, 1.0, 0.0, 0)
