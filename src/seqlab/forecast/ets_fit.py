"""ETS forms, their state-space recursions and Gaussian likelihood (the fit is in ``ets_estimate``).

The innovations state-space models of Hyndman, Koehler, Ord & Snyder (2008, "Forecasting with
Exponential Smoothing: the state space approach", Table 2.3; Hyndman et al. 2002). A form is
written E T S: error A(dditive) or M(ultiplicative); trend N(one), A, Ad (damped), M, Md;
season N, A, M (period m). With the one-step forecast

    B_t = phi b_{t-1}  (A trend)  or  b_{t-1}^phi  (M trend)            (damped trend)
    L_t = l_{t-1} + B_t           or  l_{t-1} B_t                       (level forecast)
    mu_t = L_t + s_{t-m}          or  L_t s_{t-m}                       (A / M season)
    y_t = mu_t + e_t  (A error)   or  mu_t (1 + e_t)  (M error),        e_t ~ N(0, sigma^2)

the states are updated from the observation alone (the "y-form": the same equations for both
error types, which differ only in the likelihood):

    l_t = L_t + alpha ((y_t - s_{t-m}) or (y_t / s_{t-m}) - L_t)
    b_t = B_t + (beta / alpha) ((l_t - l_{t-1}) or (l_t / l_{t-1}) - B_t)
    s_t = s_{t-m} + gamma (y_t - L_t - s_{t-m})                         (A season)
    s_t = s_{t-m} + gamma (y_t / L_t - s_{t-m})                         (M season, "hyndman")
    s_t = s_{t-m} + gamma / (1 - alpha) (y_t / l_t - s_{t-m})           (M season, "statsmodels")

Substituting y_t gives Table 2.3's error-correction form (``ets_loglik_ref`` writes it out).
The two multiplicative-season updates differ by a factor 1 + alpha e_t in the seasonal
innovation: "hyndman" is the book's and R's forecast::ets; "statsmodels" is the Holt-Winters
update statsmodels' ``ETSModel`` uses. Additive seasons are the same in both.

The log-likelihood, with sigma^2 concentrated out (as statsmodels' ``ETSModel.loglike``):

    log L = -n/2 (log(2 pi mean_t r_t^2) + 1) - [M error] sum_t log|mu_t|,
    r_t = y_t - mu_t (A error) or (y_t - mu_t) / mu_t (M error).

Initial states are ``level`` l_0, ``trend`` b_0 and ``seasonal`` (m,) in statsmodels' order
(s_{-1}, ..., s_{-m}: the last is the one the first observation uses).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from seqlab.errors import ConfigError

FORM_PATTERN = re.compile(r"^([AM])(N|A|Ad|M|Md)([NAM])$")


@dataclass(frozen=True)
class Form:
    """One ETS form: ``Form.parse("MAdM")``."""

    error: str          # "A" or "M"
    trend: str          # "N", "A" or "M"
    damped: bool
    season: str         # "N", "A" or "M"

    @classmethod
    def parse(cls, code: str) -> Form:
        match = FORM_PATTERN.match(code)
        if match is None:
            raise ConfigError(f"ETS form {code!r} is not E T S with E in A/M, T in N/A/Ad/M/Md, S in N/A/M "
                              "(e.g. 'AAdN', 'MAM')")
        error, trend, season = match.groups()
        return cls(error, trend[0], trend.endswith("d"), season)

    @property
    def code(self) -> str:
        return self.error + self.trend + ("d" if self.damped else "") + self.season

    @property
    def multiplicative(self) -> bool:
        return "M" in (self.error, self.trend, self.season)

    @property
    def linear(self) -> bool:
        """Additive error and no multiplicative component: Gaussian forecasts, analytic variance."""
        return not self.multiplicative

    def n_params(self, season: int) -> int:
        """Estimated parameters: smoothing parameters, phi and the free initial states (the
        seasonal states are normalised, so m - 1 of them are free)."""
        has_trend, has_season = self.trend != "N", self.season != "N"
        return 2 + 2 * has_trend + self.damped + has_season * season

    def min_length(self, season: int) -> int:
        """Fewest observations: five more than R's parameter count (as forecast::ets asks), and
        two full seasons for the seasonal start."""
        needed = self.n_params(season) + (self.season != "N") + 5
        return max(needed, 2 * season) if self.season != "N" else needed


def candidate_forms(season: int, positive: bool, multiplicative_trend: bool) -> list[Form]:
    """The forms automatic selection compares, as R's forecast::ets(model="ZZZ"): multiplicative
    error and components only for positive data, no additive error with a multiplicative
    trend or season, no M trend with A season."""
    forms = []
    for error in "AM" if positive else "A":
        for trend in ["N", "A", "Ad"] + (["M", "Md"] if multiplicative_trend and positive else []):
            for seasonal in "NAM" if season > 1 else "N":
                if error == "A" and ("M" in (trend[0], seasonal)):
                    continue
                if seasonal == "M" and not positive or (trend[0] == "M" and seasonal == "A"):
                    continue
                forms.append(Form.parse(error + trend + seasonal))
    return forms


# ---- the recursion ------------------------------------------------------------------------

def predict_step(level: Tensor, trend: Tensor, s_old: Tensor, phi: Tensor, *, mul_trend: bool,
                 mul_season: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(B_t, L_t, mu_t): the damped trend, the level forecast and the one-step forecast."""
    damped = trend ** phi if mul_trend else phi * trend
    base = level * damped if mul_trend else level + damped
    return damped, base, base * s_old if mul_season else base + s_old


def update_step(y: Tensor, mu: Tensor, level: Tensor, damped: Tensor, base: Tensor, s_old: Tensor,
                alpha: Tensor, beta: Tensor, gamma: Tensor, *, mul_trend: bool, mul_season: bool,
                statsmodels_season: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(l_t, b_t, s_t) after observing y_t: the y-form updates of the module docstring,
    rewritten in the one-step error r_t = y_t - mu_t (so that each is one multiply-add):

        q_t = r_t / s_{t-m} (M season) or r_t;   l_t = L_t + alpha q_t
        b_t = B_t + beta q_t / l_{t-1} (M trend) or B_t + beta q_t
        s_t = s_{t-m} + gamma r_t (A season), + gamma r_t / L_t (M, "hyndman"),
              + gamma r_t / l_t (M, "statsmodels")
    """
    error = y - mu
    scaled = error / s_old if mul_season else error
    new_level = torch.addcmul(base, alpha, scaled)
    new_trend = torch.addcmul(damped, beta, scaled / level if mul_trend else scaled)
    if mul_season:
        error = error / (new_level if statsmodels_season else base)
    return new_level, new_trend, torch.addcmul(s_old, gamma, error)


def ets_filter(y: Tensor, alpha: Tensor, beta: Tensor, gamma: Tensor, phi: Tensor, level: Tensor,
               trend: Tensor, seasonal: Tensor, *, mul_trend: bool, mul_season: bool,
               statsmodels_season: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run the recursion over B series of one trend and season type at once.

    Args:
        y: (B, T) observations.
        alpha, beta, gamma, phi: (B,) parameters (beta = 0 without a trend, gamma = 0 without a
            season, phi = 1 undamped).
        level, trend: (B,) initial states l_0, b_0 (b_0 = 0 without a trend).
        seasonal: (B, m) initial seasonal states s_{-1}, ..., s_{-m} (zeros, m = 1, for none).
    Returns:
        (B, T) one-step forecasts mu_t, and the final level (B,), trend (B,) and seasonal
        states (B, m) in the same order (s_{T-1}, ..., s_{T-m}).
    """
    m = seasonal.shape[1]
    ring = list(seasonal.flip(1).unbind(1))            # ring[t % m] holds s_{t-m}
    flags = dict(mul_trend=mul_trend, mul_season=mul_season)
    forecasts = []
    for t, y_t in enumerate(y.unbind(1)):
        s_old = ring[t % m]
        damped, base, mu = predict_step(level, trend, s_old, phi, **flags)
        forecasts.append(mu)
        level, trend, ring[t % m] = update_step(y_t, mu, level, damped, base, s_old, alpha, beta, gamma,
                                                statsmodels_season=statsmodels_season, **flags)
    steps = y.shape[1]
    final_seasonal = torch.stack([ring[(steps - 1 - i) % m] for i in range(m)], 1)
    return torch.stack(forecasts, 1), level, trend, final_seasonal


def gaussian_loglik(y: Tensor, mu: Tensor, mask: Tensor, mul_error: Tensor) -> tuple[Tensor, Tensor]:
    """(B,) concentrated log-likelihoods and (B,) sums of squared residuals r_t (module
    docstring) of forecasts ``mu`` (B, T) of ``y`` (B, T) where ``mask`` (B, T) is 1."""
    scale = torch.where(mul_error[:, None], mu, torch.ones_like(mu))
    residual = (y - mu) / scale
    n = mask.sum(1)
    sse = (residual.square() * mask).sum(1)
    magnitude = torch.where(mu == 0, torch.full_like(mu, 1e-32), mu.abs())       # as statsmodels
    log_scale = (torch.log(torch.where(mul_error[:, None], magnitude, torch.ones_like(mu))) * mask).sum(1)
    mse = (sse / n).clamp_min(1e-300)            # a perfectly fitted series stays finite
    return -n / 2 * (torch.log(2 * math.pi * mse) + 1) - log_scale, sse


def ets_loglik(y: Tensor, form: Form | str, alpha: float, beta: float, gamma: float, phi: float,
               level: float, trend: float, seasonal: Sequence[float] = (),
               season_update: str = "hyndman") -> float:
    """The log-likelihood of one series (T,) under ``form`` with these parameters and initial
    states (beta, gamma, phi, trend, seasonal ignored where the form lacks them)."""
    form = Form.parse(form) if isinstance(form, str) else form
    as_row = lambda value: torch.tensor([float(value)], dtype=torch.float64)      # noqa: E731
    seasonal_row = (torch.tensor([list(seasonal)], dtype=torch.float64) if form.season != "N"
                    else torch.zeros(1, 1, dtype=torch.float64))
    mu, *_ = ets_filter(y[None], as_row(alpha), as_row(beta if form.trend != "N" else 0.0),
                        as_row(gamma if form.season != "N" else 0.0), as_row(phi if form.damped else 1.0),
                        as_row(level), as_row(trend if form.trend != "N" else 0.0), seasonal_row,
                        mul_trend=form.trend == "M", mul_season=form.season == "M",
                        statsmodels_season=season_update == "statsmodels")
    loglik, _ = gaussian_loglik(y[None], mu, torch.ones_like(mu), torch.tensor([form.error == "M"]))
    return float(loglik[0])


def ets_loglik_ref(y: Sequence[float], form: Form | str, alpha: float, beta: float, gamma: float, phi: float,
                   level: float, trend: float, seasonal: Sequence[float] = (),
                   season_update: str = "hyndman") -> float:
    """The specification of ``ets_loglik``: one plain loop in the error-correction form of
    Hyndman et al. (2008, Table 2.3), one case per error type."""
    form = Form.parse(form) if isinstance(form, str) else form
    phi = phi if form.damped else 1.0
    b, beta = (trend, beta) if form.trend != "N" else (0.0, 0.0)
    s = list(seasonal) if form.season != "N" else [0.0]          # s[-1] is s_{t-m}
    l, mus, residuals = level, [], []
    for y_t in y:
        s_old = s[-1]
        damped = b ** phi if form.trend == "M" else phi * b
        base = l * damped if form.trend == "M" else l + damped
        mu = base * s_old if form.season == "M" else base + s_old
        if form.error == "A":
            e = y_t - mu
            k_level = 1 / s_old if form.season == "M" else 1.0
            new_l = base + alpha * e * k_level
            new_b = damped + beta * e * k_level / (l if form.trend == "M" else 1.0)
            if form.season == "A":
                new_s = s_old + gamma * e
            elif season_update == "statsmodels":
                new_s = s_old + gamma * e / new_l
            else:
                new_s = s_old + gamma * e / base
        else:
            e = (y_t - mu) / mu
            new_l = base * (1 + alpha * e) if form.season == "M" else base + alpha * mu * e
            if form.trend == "M":
                new_b = damped * (1 + beta * e) if form.season == "M" else damped + beta * mu * e / l
            else:
                new_b = damped + beta * (base if form.season == "M" else mu) * e
            if form.season == "A" or form.season == "N":
                new_s = s_old + gamma * mu * e
            elif season_update == "statsmodels":
                new_s = s_old * (1 + gamma * e / (1 + alpha * e))
            else:
                new_s = s_old * (1 + gamma * e)
        if form.season == "N":
            new_s = 0.0
        mus.append(mu)
        residuals.append(e)
        l, b, s = new_l, new_b, [new_s] + s[:-1]
    n = len(mus)
    loglik = -n / 2 * (math.log(2 * math.pi * sum(r * r for r in residuals) / n) + 1)
    return loglik - (sum(math.log(abs(mu)) for mu in mus) if form.error == "M" else 0.0)


# ---- the packed parameters of one fitted series ------------------------------------------------

CODES = {"error": "AM", "trend": "NAM", "season": "NAM"}
HEADER = 12            # form (4), alpha, beta, gamma, phi, sigma2, loglik, level, trend


def pack(form: Form, alpha: float, beta: float, gamma: float, phi: float, sigma2: float, loglik: float,
         level: float, trend: float, seasonal: Sequence[float]) -> Tensor:
    """The (12 + m,) float64 layout ``ETS.fit_series`` returns:
    [error (0 A, 1 M), trend (0 N, 1 A, 2 M), damped (0/1), season (0 N, 1 A, 2 M),
    alpha, beta, gamma, phi (1 undamped), sigma^2, log-likelihood, l_0, b_0,
    s_{-1}, ..., s_{-m} (only for a seasonal form)]; beta, gamma, b_0 are 0 and phi 1 where
    the form lacks them."""
    beta, trend = (beta, trend) if form.trend != "N" else (0.0, 0.0)      # canonical: absent parts are inert
    gamma, phi = gamma if form.season != "N" else 0.0, phi if form.damped else 1.0
    head = [CODES["error"].index(form.error), CODES["trend"].index(form.trend), float(form.damped),
            CODES["season"].index(form.season), alpha, beta, gamma, phi, sigma2, loglik, level, trend]
    return torch.tensor(head + (list(seasonal) if form.season != "N" else []), dtype=torch.float64)


def unpack(parameters: Tensor) -> tuple[Form, dict[str, float], Tensor]:
    """(form, {alpha, beta, gamma, phi, sigma2, loglik, level, trend}, (m,) seasonal) of ``pack``."""
    values = parameters.tolist()
    error, trend, damped, season = (int(v) for v in values[:4])
    form = Form(CODES["error"][error], CODES["trend"][trend], bool(damped), CODES["season"][season])
    names = ("alpha", "beta", "gamma", "phi", "sigma2", "loglik", "level", "trend")
    return form, dict(zip(names, values[4:HEADER])), parameters[HEADER:]
