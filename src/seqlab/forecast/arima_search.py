"""Automatic ARIMA order selection (Hyndman and Khandakar 2008), batched over series.

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
   as in R; the multiplied polynomial is tested, so with m = 24 a seasonal coefficient of modulus
   above 1.01^-24 = 0.79 is rejected (hourly series often prefer Theta near -0.9: P = 2 instead).
4. Approximation (R's ``approximation = (n > 150 || m > 12)``): candidates are fitted by
   conditional sum of squares (``arima_css``) and ranked by the AICc with n' log sigma^2_CSS in
   place of -2 log L; then the best is refitted by exact maximum likelihood started from its CSS
   estimates, and if that fit fails or has a root within the margin, the next best, and so on.
   Otherwise every candidate is fitted by exact maximum likelihood (``arima_fit``).

With regressors (``exog``), as R's ``auto.arima(xreg = )``: d and D are chosen on the residuals
of the least-squares regression of y on them (with an intercept), and every candidate is a
regression with SARIMA errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generator

import numpy as np

from seqlab.forecast.arima import ArimaFit, ArimaOrder
from seqlab.forecast.arima_fit import fit_arima_batch

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




def regression_residuals(values: np.ndarray, exog: np.ndarray | None) -> np.ndarray:
    """(n,) y less its least-squares fit on the regressors (n, K) and an intercept (y without them)."""
    if exog is None or exog.shape[1] == 0:
        return values
    design = np.concatenate([np.ones((len(values), 1)), exog], axis=1)
    return values - design @ np.linalg.lstsq(design, values, rcond=None)[0]


def auto_arima(series: list[np.ndarray], m: int, *, seasonal: bool = True, allow_constant: bool = True,
               max_d: int = 2, max_D: int = 1, bounds: SearchBounds = SearchBounds(),
               max_iterations: int = 200, exog: list[np.ndarray | None] | None = None,
               approximation: bool | None = None) -> list[ArimaFit]:
    """Hyndman-Khandakar automatic ARIMA of each series (n_i,) with period m, with regressors
    ``exog[i]`` (n_i, K_i) or None: every series' stepwise search (``stepwise_search``) runs as a
    coroutine, and each round the candidates of all series are fitted in one batch, by CSS where
    ``approximation`` applies (None: R's rule, n_i > 150 or m > 12) and by exact maximum likelihood
    elsewhere. A series whose every candidate fails gets ARIMA(0,d,0)(0,D,0) without constant."""
    seasonal = seasonal and m > 1
    period = m if seasonal else 1
    exog = exog or [None] * len(series)
    approximate = [(len(values) > 150 or period > 12) if approximation is None else approximation
                   for values in series]
    differences = [select_differences(regression_residuals(values, x), m, seasonal, max_d, max_D)
                   for values, x in zip(series, exog)]
    searches = [stepwise_search(len(values), period, seasonal, allow_constant and d + D <= 1, bounds)
                for values, (d, D) in zip(series, differences)]
    requests = {i: next(search) for i, search in enumerate(searches)}
    chosen: dict[int, ArimaFit] = {}
    fitted: list[dict[tuple, ArimaFit]] = [{} for _ in series]
    scores: list[dict[tuple, float]] = [{} for _ in series]

    def order_of(i: int, key: Candidate) -> ArimaOrder:
        p, q, P, Q, c = key
        return ArimaOrder(p, differences[i][0], q, P, differences[i][1], Q, period, c)

    while requests:
        jobs = [(i, order_of(i, key), key) for i, candidates in requests.items() for key in candidates]
        feasible = [job for job in jobs if len(series[job[0]]) >= job[1].min_length() + n_exog(exog[job[0]])]
        for method in ("css", "ml"):
            part = [job for job in feasible if approximate[job[0]] == (method == "css")]
            fits = fit_arima_batch([series[i] for i, _, _ in part], [order for _, order, _ in part], max_iterations,
                                   exog=[exog[i] for i, _, _ in part], method=method)
            for (i, _, key), fit in zip(part, fits):
                fitted[i][key] = fit
        for i in list(requests):
            round_scores = {key: score(fitted[i].get(key)) for i2, _, key in jobs if i2 == i}
            scores[i].update(round_scores)
            try:
                requests[i] = searches[i].send(round_scores)
            except StopIteration as stop:
                del requests[i]
                if stop.value is not None:
                    chosen[i] = fitted[i][stop.value]
    refit_exactly(series, exog, [i for i in chosen if approximate[i]], fitted, scores, chosen, max_iterations)
    missing = [i for i in range(len(series)) if i not in chosen]
    fallback = fit_arima_batch([series[i] for i in missing], [order_of(i, (0, 0, 0, 0, False)) for i in missing],
                               exog=[exog[i] for i in missing])
    chosen.update(zip(missing, fallback))
    return [chosen[i] for i in range(len(series))]


def refit_exactly(series: list[np.ndarray], exog: list[np.ndarray | None], approximated: list[int],
                  fitted: list[dict[tuple, ArimaFit]], scores: list[dict[tuple, float]],
                  chosen: dict[int, ArimaFit], max_iterations: int) -> None:
    """Replace the CSS fits in ``chosen`` by exact maximum-likelihood fits started from them: each
    series' candidates in order of their approximate AICc, the next where a fit scores inf (R's
    auto.arima after an approximate search); a series with none left is dropped from ``chosen``."""
    queues = {i: [key for key in sorted(scores[i], key=scores[i].get) if math.isfinite(scores[i][key])]
              for i in approximated}
    while queues:
        jobs = [(i, queue.pop(0)) for i, queue in queues.items() if queue]
        for i in [i for i, queue in queues.items() if not queue and i not in dict(jobs)]:
            del queues[i]
            chosen.pop(i, None)
        if not jobs:
            break
        starts = [fitted[i][key] for i, key in jobs]
        fits = fit_arima_batch([series[i] for i, _ in jobs], [start.order for start in starts], max_iterations,
                               exog=[exog[i] for i, _ in jobs], start=starts)
        for (i, _), fit in zip(jobs, fits):
            if math.isfinite(score(fit)):
                chosen[i] = fit
                del queues[i]


def n_exog(x: np.ndarray | None) -> int:
    return 0 if x is None else x.shape[1]


def score(fit: ArimaFit | None) -> float:
    """The AICc of a candidate; inf when it was not fitted, failed, or has a root near the unit circle."""
    if fit is None or not math.isfinite(fit.loglik):
        return math.inf
    ar, ma = fit.full_polynomials()
    return math.inf if has_unit_root(ar, ma) else fit.aicc
