"""ARIMA estimation and automatic order selection, batched over models and series.

**Maximum likelihood** (``fit_arima_batch``): the concentrated log-likelihood of
``arima.arma_loglik_batch`` over unconstrained parameters x (partial autocorrelations tanh(x)
mapped to coefficients, see ``seqlab.forecast.arima``; the mean of the differenced series,
centred and scaled), maximised by BFGS run for many models at once (``minimize_batch``):
forward-difference gradients, a backtracking Armijo line search along -H g, started at x = 0
(white noise around the sample mean), stopping as R's ``optim`` on a relative gain below 1e-8.
Models are grouped by state dimension and period, each group one batch.

**Order selection** (``auto_arima``): Hyndman and Khandakar's (2008, JSS 27(3)) stepwise
algorithm, as R's ``forecast::auto.arima`` documents it; each series' search is a coroutine
(``stepwise_search``) so that each round the candidates of all series are fitted in one batch.

1. D (seasonal data, m > 1): one seasonal difference when the seasonal strength
   F_s = max(0, 1 - Var(remainder) / Var(seasonal + remainder)) exceeds 0.64 (R's
   ``nsdiffs(test = "seas")``, Wang, Smith and Hyndman 2006). R decomposes by STL; here the
   decomposition is the classical additive one (2 x m centred moving average trend, seasonal
   means of the detrended values centred to sum 0), a documented deviation.
2. d: the KPSS test of level stationarity (Kwiatkowski et al. 1992) on the (seasonally
   differenced) series, with Bartlett weights over trunc(3 sqrt(n) / 13) lags (R's ``ndiffs``);
   difference while the statistic exceeds the 5% critical value 0.463, at most ``max_d`` times.
3. Stepwise search over (p, q, P, Q) and the constant (allowed when d + D <= 1), by AICc:
   start from ARIMA(2,d,2)(1,D,1), (0,d,0)(0,D,0), (1,d,0)(1,D,0), (0,d,1)(0,D,1) with the
   constant when allowed, and (0,d,0)(0,D,0) without it; then repeatedly fit the neighbours of
   the best model so far (p, q, P, Q each +-1, p and q together +-1, P and Q together +-1, the
   constant toggled), within max_p = 5, max_q = 5, max_P = 2, max_Q = 2, p + q + P + Q <= 5 and
   max_p, max_q <= n / 3, max_P, max_Q <= n / (3m), and move to the best neighbour while it
   lowers the AICc. R moves to the *first* neighbour that improves; this search fits the whole
   neighbourhood at once (one batch) and moves to the best, so it can end elsewhere.
   A model whose AR or MA polynomial has a root of modulus below 1.01 is rejected (AICc = inf),
   as in R.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Generator

import numpy as np

from seqlab.forecast.arima import (ArimaFit, ArimaOrder, arma_loglik_batch, concentrated_loglik, difference,
                                   pacf_to_coefficients, seasonal_product)

KPSS_CRITICAL_5 = 0.463             # KPSS level-stationarity test, 5% (Kwiatkowski et al. 1992, table 1)
SEASONAL_STRENGTH_THRESHOLD = 0.64  # R's nsdiffs(test = "seas")
ROOT_MARGIN = 1.01                  # R's auto.arima rejects roots of modulus below this

Candidate = tuple[int, int, int, int, bool]      # (p, q, P, Q, constant)


def is_constant(values: np.ndarray) -> bool:
    return bool(len(values) == 0 or np.ptp(values) == 0)


def kpss_statistic(values: np.ndarray) -> float:
    """The KPSS statistic for level stationarity: sum S_t^2 / (n^2 s^2(l)) with S the partial sums
    of the demeaned series and s^2(l) its Newey-West long-run variance over l = trunc(3 sqrt(n)/13)
    lags (Bartlett weights 1 - j / (l + 1))."""
    n = len(values)
    residuals = values - values.mean()
    partial_sums = np.cumsum(residuals)
    lags = int(3 * math.sqrt(n) / 13)
    long_run = residuals @ residuals / n
    for j in range(1, lags + 1):
        long_run += 2 * (1 - j / (lags + 1)) * (residuals[j:] @ residuals[:-j]) / n
    return float(partial_sums @ partial_sums / (n * n * long_run))


def ndiffs(values: np.ndarray, max_d: int = 2) -> int:
    """Differences needed for level stationarity by repeated KPSS tests at 5% (R's ``ndiffs``)."""
    d = 0
    while d < max_d and len(values) > 3 and not is_constant(values) and kpss_statistic(values) > KPSS_CRITICAL_5:
        d += 1
        values = values[1:] - values[:-1]
    return d


def seasonal_strength(values: np.ndarray, m: int) -> float:
    """F_s of a classical additive decomposition with period m (0 without two full periods)."""
    n = len(values)
    if n < 2 * m + 1:
        return 0.0
    weights = np.full(m + 1, 1.0 / m) if m % 2 == 0 else np.full(m, 1.0 / m)
    if m % 2 == 0:
        weights[0] = weights[-1] = 0.5 / m
    half = len(weights) // 2
    trend = np.convolve(values, weights, mode="valid")                   # at t = half .. n - 1 - half
    detrended = values[half:n - half] - trend
    positions = np.arange(half, n - half) % m
    means = np.array([detrended[positions == k].mean() for k in range(m)])
    seasonal = (means - means.mean())[positions]
    remainder = detrended - seasonal
    total = np.var(remainder + seasonal)
    if total <= 0:
        return 0.0
    return float(max(0.0, min(1.0, 1 - np.var(remainder) / total)))


def nsdiffs(values: np.ndarray, m: int, max_D: int = 1) -> int:
    """Seasonal differences by the seasonal-strength heuristic (R's ``nsdiffs(test = "seas")``)."""
    D = 0
    while (D < max_D and not is_constant(values)
           and seasonal_strength(values, m) > SEASONAL_STRENGTH_THRESHOLD):
        D += 1
        values = values[m:] - values[:-m]
    return D


def has_unit_root(ar: np.ndarray, ma: np.ndarray) -> bool:
    """Whether 1 - sum ar_j z^j or 1 + sum ma_j z^j has a root of modulus below ``ROOT_MARGIN``:
    an eigenvalue of its companion matrix of modulus above 1 / ``ROOT_MARGIN``."""
    for coefficients in (ar, -ma):
        nonzero = np.nonzero(np.abs(coefficients) > 0)[0]
        if len(nonzero):
            c = coefficients[:nonzero[-1] + 1]
            companion = np.zeros((len(c), len(c)))
            companion[0] = c
            companion[np.arange(1, len(c)), np.arange(len(c) - 1)] = 1.0
            if np.abs(np.linalg.eigvals(companion)).max() > 1 / ROOT_MARGIN:
                return True
    return False


@dataclass(frozen=True, kw_only=True)
class SearchBounds:
    """The stepwise search's bounds (R's auto.arima defaults).

    Attributes:
        max_p, max_q, max_P, max_Q: the largest orders.
        max_order: the largest p + q + P + Q.
        max_models: the most models one search fits (R's ``nmodels``).
    """

    max_p: int = 5
    max_q: int = 5
    max_P: int = 2
    max_Q: int = 2
    max_order: int = 5
    max_models: int = 94


def stepwise_search(n: int, m: int, seasonal: bool, allow_constant: bool,
                    bounds: SearchBounds) -> Generator[list[Candidate], dict[Candidate, float], Candidate]:
    """The stepwise search of one series of n observations, as a coroutine: it yields lists of
    candidates (p, q, P, Q, constant) to fit and is sent back their AICc (inf for a failed or
    rejected fit); it returns the chosen candidate (or None when every fit failed).

    Args:
        n: the series' length before differencing (it bounds the orders, as in R).
        m: the seasonal period; seasonal: whether P and Q may be non-zero.
        allow_constant: d + D <= 1 (and the caller allows a mean or drift).
    """
    seasonal = seasonal and m > 1
    max_p, max_q = min(bounds.max_p, n // 3), min(bounds.max_q, n // 3)
    max_P = min(bounds.max_P, n // (3 * m)) if seasonal else 0
    max_Q = min(bounds.max_Q, n // (3 * m)) if seasonal else 0
    constant = allow_constant

    def valid(candidate: Candidate) -> bool:
        p, q, P, Q, c = candidate
        return (0 <= p <= max_p and 0 <= q <= max_q and 0 <= P <= max_P and 0 <= Q <= max_Q
                and p + q + P + Q <= bounds.max_order and (allow_constant or not c))

    def clip(p: int, q: int, P: int, Q: int, c: bool) -> Candidate:
        p, q, P, Q = min(p, max_p), min(q, max_q), min(P, max_P), min(Q, max_Q)
        while p + q + P + Q > bounds.max_order:            # as R: trim the start to max_order
            if p >= q and p > 0:
                p -= 1
            elif q > 0:
                q -= 1
            elif P > 0:
                P -= 1
            else:
                Q -= 1
        return p, q, P, Q, c

    start = [clip(2, 2, 1, 1, constant), clip(0, 0, 0, 0, constant), clip(1, 0, 1, 0, constant),
             clip(0, 1, 0, 1, constant)]
    if constant:
        start.append((0, 0, 0, 0, False))
    scores: dict[Candidate, float] = {}
    scores.update((yield list(dict.fromkeys(candidate for candidate in start if valid(candidate)))))
    while True:
        best = min(scores, key=scores.get)
        if not math.isfinite(scores[best]):
            return None
        p, q, P, Q, c = best
        steps = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))
        moves = [(p, q, P + i, Q + j, c) for i, j in steps] + [(p + i, q + j, P, Q, c) for i, j in steps]
        moves.append((p, q, P, Q, not c))
        neighbours = [move for move in dict.fromkeys(moves) if valid(move) and move not in scores]
        neighbours = neighbours[:bounds.max_models - len(scores)]
        if not neighbours:
            return best
        scores.update((yield neighbours))
        if not min(scores.values()) < scores[best]:
            return best


# ---- maximum likelihood, batched over models -----------------------------------------------------

@dataclass(frozen=True)
class ModelBatch:
    """Models fitted together: each a differenced series and an order of one seasonal period.

    Attributes:
        w: (N, n) each model's differenced series centred (by its mean with a constant) and scaled,
            right-aligned; observed: (N, n) where it has values; count: (N,) how many.
        center, scale: (N,) the centring and scaling undone after the fit.
        orders: the N orders; slots: widths of the (ar, ma, sar, sma) blocks of x, then the mean.
        free: (N, k) the coordinates of x each model uses.
    """

    w: np.ndarray
    observed: np.ndarray
    count: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    orders: tuple[ArimaOrder, ...]
    slots: tuple[int, int, int, int]
    free: np.ndarray

    @staticmethod
    def build(series: list[np.ndarray], orders: list[ArimaOrder]) -> ModelBatch:
        n = max(len(w) for w in series)
        slots = tuple(max(getattr(o, name) for o in orders) for name in ("p", "q", "P", "Q"))
        edges = np.cumsum((0,) + slots)
        free = np.zeros((len(orders), edges[-1] + 1), bool)
        w_all, observed = np.zeros((len(orders), n)), np.zeros((len(orders), n), bool)
        center, scale = np.zeros(len(orders)), np.ones(len(orders))
        for i, (w, o) in enumerate(zip(series, orders)):
            for block, width in enumerate((o.p, o.q, o.P, o.Q)):
                free[i, edges[block]:edges[block] + width] = True
            free[i, -1] = o.constant
            center[i] = w.mean() if o.constant else 0.0
            spread = float(np.sqrt(np.mean((w - center[i]) ** 2)))
            scale[i] = spread if spread > 0 else max(abs(center[i]), 1.0)
            w_all[i, n - len(w):], observed[i, n - len(w):] = (w - center[i]) / scale[i], True
        return ModelBatch(w_all, observed, observed.sum(1), center, scale, tuple(orders), slots, free)

    def polynomials(self, x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """(M, p), (M, q), (M, P), (M, Q) coefficients at unconstrained x (M, k) of models ``rows``."""
        partials = np.tanh(x[:, :-1]) * self.free[rows, :-1]
        edges = np.cumsum((0,) + self.slots)
        blocks = [pacf_to_coefficients(partials[:, a:b]) for a, b in zip(edges[:-1], edges[1:])]
        return blocks[0], -blocks[1], blocks[2], -blocks[3]

    def sums(self, x: np.ndarray, rows: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """(M,) sum v^2 / F and (M,) sum log F (``arma_loglik_batch``) at x (M, k) of models ``rows``."""
        m = self.orders[0].m
        sum_squares, sum_log_f = np.empty(len(rows)), np.empty(len(rows))
        for start in range(0, len(rows), chunk):
            part, x_part = rows[start:start + chunk], x[start:start + chunk]
            ar, ma, sar, sma = self.polynomials(x_part, part)
            ar_full, ma_full = seasonal_product(ar, sar, m, -1.0), seasonal_product(ma, sma, m, 1.0)
            r = max(ar_full.shape[1], ma_full.shape[1] + 1)
            ar_full = np.pad(ar_full, ((0, 0), (0, r - ar_full.shape[1])))
            ma_full = np.pad(ma_full, ((0, 0), (0, r - 1 - ma_full.shape[1])))
            w = self.w[part] - (x_part[:, -1] * self.free[part, -1])[:, None]
            with np.errstate(all="ignore"):      # trial steps far out give inf or NaN, scored inf
                sum_squares[start:start + chunk], sum_log_f[start:start + chunk] = arma_loglik_batch(
                    w, self.observed[part], ar_full, ma_full)
        return sum_squares, sum_log_f

    def negative_loglik(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(M,) minus the concentrated log-likelihood per observation, at x (M, k), of models ``rows``."""
        loglik, _ = concentrated_loglik(*self.sums(x, rows), self.count[rows])
        out = -loglik / self.count[rows]
        return np.where(np.isfinite(out), out, np.inf)


def minimize_batch(objective: Callable[[np.ndarray, np.ndarray], np.ndarray], free: np.ndarray,
                   max_iterations: int = 200, reltol: float = 1e-8, step: float = 1e-6) -> np.ndarray:
    """BFGS from x = 0 for N objectives at once: (N, k) minimisers over the ``free`` coordinates.

    ``objective(x (M, k), rows (M,))`` gives (M,) values of the objectives ``rows`` (inf where
    undefined). Gradients are forward differences of ``step``; each iteration backtracks (halving,
    Armijo constant 1e-4) along -H g; a model stops when an iteration gains less than
    reltol (|f| + reltol) (optim's rule) or its line search fails.
    """
    count, k = free.shape
    x = np.zeros((count, k))
    f = objective(x, np.arange(count))

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


def fit_arima_batch(series: list[np.ndarray], orders: list[ArimaOrder], max_iterations: int = 200) -> list[ArimaFit]:
    """Maximum-likelihood fits of SARIMA ``orders[i]`` to ``series[i]`` (n_i,), batched by state
    dimension and period (padding to a larger state costs O(r^2) per step)."""
    fits: list[ArimaFit | None] = [None] * len(orders)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, order in enumerate(orders):
        groups.setdefault((order.state_dim, order.m), []).append(i)
    for members in groups.values():
        differenced = [difference(series[i], orders[i]) for i in members]
        batch = ModelBatch.build(differenced, [orders[i] for i in members])
        x = minimize_batch(batch.negative_loglik, batch.free, max_iterations)
        rows = np.arange(len(members))
        ar, ma, sar, sma = batch.polynomials(x, rows)
        loglik, sigma2 = concentrated_loglik(*batch.sums(x, rows), batch.count)
        for j, i in enumerate(members):
            o, scale, count = orders[i], batch.scale[j], int(batch.count[j])
            fits[i] = ArimaFit(o, ar[j, :o.p].copy(), ma[j, :o.q].copy(), sar[j, :o.P].copy(), sma[j, :o.Q].copy(),
                               float(batch.center[j] + scale * x[j, -1] * o.constant),
                               float(sigma2[j] * scale ** 2),
                               float(loglik[j] - count * math.log(scale)), count)
    return fits


# ---- automatic order selection ---------------------------------------------------------------------

def select_differences(values: np.ndarray, m: int, seasonal: bool, max_d: int, max_D: int) -> tuple[int, int]:
    """(d, D): D by the seasonal-strength test, then d by KPSS tests on the seasonally differenced
    series (``arima_search``), reduced while fewer than 3 differenced values would remain."""
    D = nsdiffs(values, m, max_D) if seasonal and m > 1 else 0
    seasonally_differenced = values
    for _ in range(D):
        seasonally_differenced = seasonally_differenced[m:] - seasonally_differenced[:-m]
    d = ndiffs(seasonally_differenced, max_d)
    while len(values) - d - m * D < 3 and d + D > 0:
        d, D = (d - 1, D) if d > 0 else (d, D - 1)
    return d, D


def auto_arima(series: list[np.ndarray], m: int, *, seasonal: bool = True, allow_constant: bool = True,
               max_d: int = 2, max_D: int = 1, bounds: SearchBounds = SearchBounds(),
               max_iterations: int = 200) -> list[ArimaFit]:
    """Hyndman-Khandakar automatic ARIMA of each series (n_i,) with period m: every series' stepwise
    search (``arima_search.stepwise_search``) runs as a coroutine, and each round the candidates
    of all series are fitted in one batch. A series whose every candidate fails gets
    ARIMA(0,d,0)(0,D,0) without constant."""
    seasonal = seasonal and m > 1
    period = m if seasonal else 1
    differences = [select_differences(values, m, seasonal, max_d, max_D) for values in series]
    searches = [stepwise_search(len(values), period, seasonal, allow_constant and d + D <= 1, bounds)
                for values, (d, D) in zip(series, differences)]
    requests = {i: next(search) for i, search in enumerate(searches)}
    chosen: dict[int, ArimaFit] = {}
    fitted: list[dict[tuple, ArimaFit]] = [{} for _ in series]
    while requests:
        jobs = [(i, ArimaOrder(p, differences[i][0], q, P, differences[i][1], Q, period, c), (p, q, P, Q, c))
                for i, candidates in requests.items() for p, q, P, Q, c in candidates]
        feasible = [job for job in jobs if len(series[job[0]]) >= job[1].min_length()]
        fits = fit_arima_batch([series[i] for i, _, _ in feasible], [order for _, order, _ in feasible], max_iterations)
        for (i, _, key), fit in zip(feasible, fits):
            fitted[i][key] = fit
        for i in list(requests):
            scores = {key: score(fitted[i].get(key)) for i2, _, key in jobs if i2 == i}
            try:
                requests[i] = searches[i].send(scores)
            except StopIteration as stop:
                del requests[i]
                if stop.value is not None:
                    chosen[i] = fitted[i][stop.value]
    missing = [i for i in range(len(series)) if i not in chosen]
    fallback = fit_arima_batch([series[i] for i in missing], [ArimaOrder(0, differences[i][0], 0, 0, differences[i][1],
                                                              0, period) for i in missing])
    chosen.update(zip(missing, fallback))
    return [chosen[i] for i in range(len(series))]


def score(fit: ArimaFit | None) -> float:
    """The AICc of a candidate; inf when it was not fitted, failed, or has a root near the unit circle."""
    if fit is None or not math.isfinite(fit.loglik):
        return math.inf
    ar, ma = fit.full_polynomials()
    return math.inf if has_unit_root(ar, ma) else fit.aicc
