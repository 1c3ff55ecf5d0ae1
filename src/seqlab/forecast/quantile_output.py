"""Multi-quantile outputs of the global forecasters that forecast quantiles directly (N-BEATS,
PatchTST): one forecast per step for each learnt level of ``levels``, trained by the mean
pinball loss over them, and turned into a ``Forecast`` at prediction.

The pinball (quantile) loss of level q for an error e = y - y_hat is
rho_q(e) = max(q e, (q - 1) e), whose expectation is minimised by the q-quantile of y
(Koenker and Bassett 1978). At prediction the learnt quantiles are sorted across levels
(monotone rearrangement, Chernozhukov, Fernandez-Val and Galichon 2010: never worse, and no
crossing quantiles), the median is the point forecast, and a level between two learnt ones is
interpolated linearly.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from seqlab.data.series import Panel, check_horizon
from seqlab.errors import ConfigError
from seqlab.forecast.base import Forecast, check_quantiles


def check_levels(owner: str, levels: Sequence[float]) -> None:
    """``ConfigError`` unless ``levels`` are increasing levels in (0, 1) that include 0.5 (the
    median, the point forecast); ``owner`` names the config field in the message."""
    if 0.5 not in levels or list(levels) != sorted(set(levels)) or not all(0 < q < 1 for q in levels):
        raise ConfigError(f"{owner}.levels must be increasing levels in (0, 1) including 0.5, got {tuple(levels)}")


def pinball_loss(forecast: Tensor, target: Tensor, scale: Tensor, levels: Tensor) -> Tensor:
    """The mean pinball loss of quantile forecasts (B, Q, H) at ``levels`` (Q,) for targets
    (B, H), the errors divided by each window's ``scale`` (B, 1) (a scale-free loss over series
    of any size)."""
    error = (target[:, None, :] - forecast) / scale[:, :, None]                  # (B, Q, H)
    q = levels[None, :, None]
    return torch.maximum(q * error, (q - 1) * error).mean()


def last_windows(panel: Panel, width: int) -> Tensor:
    """(S, width) each series' last ``width`` values, a shorter series padded on the left with
    its first value."""
    return torch.stack([torch.cat([series.values[:1].expand(max(width - len(series), 0)), series.values[-width:]])
                        for series in panel])


def interpolate(learnt: Tensor, levels: Tensor, q: float) -> Tensor:
    """(S, H) the q-quantile, linear between the learnt levels (Q,) of ``learnt`` (S, Q, H)."""
    above = int(torch.searchsorted(levels, torch.tensor(q, dtype=levels.dtype)).clamp(1, len(levels) - 1))
    below = above - 1
    weight = (q - levels[below]) / (levels[above] - levels[below])
    return learnt[:, below] + weight * (learnt[:, above] - learnt[:, below])


@torch.no_grad()
def quantile_forecast(model: nn.Module, panel: Panel, horizon: int, quantiles: Sequence[float] = ()) -> Forecast:
    """``model``'s forecasts of ``panel``: ``model(windows (S, C)) -> (S, Q, H)`` quantiles of its
    ``config.levels``, read from each series' last ``config.context`` values (``last_windows``)
    in evaluation mode and the weights' dtype, then sorted and interpolated; ``horizon`` at most
    ``config.horizon``, and the asked quantiles within the learnt levels."""
    config, name = model.config, type(model).__name__
    check_horizon(horizon)
    if horizon > config.horizon:
        raise ConfigError(f"this {name} forecasts {config.horizon} values; {horizon} were asked")
    asked = check_quantiles(quantiles)
    low, high = config.levels[0], config.levels[-1]
    if len(asked) and (asked.min() < low or asked.max() > high):
        raise ConfigError(f"this {name} learnt quantiles from {low} to {high}; {asked.tolist()} were asked")
    weight = next(model.parameters())
    was_training = model.training
    model.eval()
    learnt = model(last_windows(panel, config.context).to(weight.device, weight.dtype))
    model.train(was_training)
    learnt = learnt.double().cpu()[:, :, :horizon].sort(dim=1).values        # (S, Q, H), no crossing quantiles
    levels = torch.tensor(config.levels, dtype=torch.float64)
    median = learnt[:, config.levels.index(0.5)]
    return Forecast(panel.ids, median, {float(q): interpolate(learnt, levels, float(q)) for q in asked.tolist()})
