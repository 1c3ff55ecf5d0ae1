"""N-BEATS (Oreshkin, Carpov, Chapados and Bengio 2020, "N-BEATS: Neural basis expansion analysis
for interpretable time series forecasting"): a deep stack of fully connected blocks, trained
globally on windows of many series.

Each block reads the residual of the lookback window x (C values) through ``n_layers`` ReLU
layers of ``width`` units, and emits expansion coefficients theta^b and theta^f, which bases
turn into a backcast x_hat = theta^b V^b and a forecast y_hat = theta^f V^f (eq. 1-2). The
blocks are stacked doubly residually (eq. 3): block l + 1 reads x_l - x_hat_l, and the forecast
is the sum of every block's y_hat. Two configurations (section 3.3):

- **generic**: the bases V^b, V^f are learnt (linear layers without bias);
- **interpretable**: a trend stack whose bases are polynomials of degree ``degree`` in
  t = (0 .. H-1)/H (and the same over the lookback), then a seasonality stack whose bases are
  the Fourier terms cos(2 pi i t), sin(2 pi i t), i = 0 .. floor(H/2) - 1; the blocks of a
  stack share their weights, as in the paper.

Scale and uncertainty, where this differs from the paper's point forecasts trained on sMAPE,
MASE or MAPE: each window is divided by the mean absolute value of its lookback (DeepAR's mean
scaling, Salinas et al. 2020), and every block forecasts one theta^f per quantile level of
``levels``, trained by the mean pinball loss over them (``seqlab.forecast.quantile_output``:
the median is the point forecast, the quantiles sorted and interpolated at prediction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from seqlab.data.series import Panel
from seqlab.errors import ConfigError
from seqlab.forecast.base import Forecast
from seqlab.forecast.quantile_output import check_levels, pinball_loss, quantile_forecast
from seqlab.registry import register

SCALE_FLOOR = 1e-8


@dataclass(frozen=True, kw_only=True)
class NBEATSConfig:
    """An N-BEATS forecaster.

    Attributes:
        horizon: values forecast (from the forecasting task).
        context: past values read, the lookback window (from the task; the paper: 2 to 7 horizons).
        stacks: "generic" (learnt bases) or "interpretable" (a trend then a seasonality stack).
        n_blocks: blocks (generic: in all; interpretable: per stack, weights shared in a stack).
        n_layers: fully connected ReLU layers per block (the paper: 4).
        width: units of each layer (the paper: 512).
        expansion: coefficients of a generic block's learnt bases.
        degree: the trend basis's polynomial degree (interpretable).
        levels: the quantile levels learnt by the pinball loss; 0.5 must be one of them.
    """

    horizon: int = 8
    context: int = 32
    stacks: Literal["generic", "interpretable"] = "generic"
    n_blocks: int = 4
    n_layers: int = 4
    width: int = 256
    expansion: int = 32
    degree: int = 2
    levels: tuple[float, ...] = (0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975)

    def __post_init__(self) -> None:
        for name in ("horizon", "context", "n_blocks", "n_layers", "width", "expansion"):
            if getattr(self, name) < 1:
                raise ConfigError(f"NBEATSConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.degree < 0:
            raise ConfigError(f"NBEATSConfig.degree must be >= 0, got {self.degree}")
        check_levels("NBEATSConfig", self.levels)


def polynomial_basis(degree: int, length: int) -> Tensor:
    """(degree + 1, length) rows t^0 .. t^degree at t = (0 .. length-1)/length."""
    t = torch.arange(length, dtype=torch.float32) / length
    return torch.stack([t ** power for power in range(degree + 1)])


def fourier_basis(length: int, harmonics: int) -> Tensor:
    """(2 harmonics, length) rows cos(2 pi i t), sin(2 pi i t) for i = 0 .. harmonics-1."""
    t = torch.arange(length, dtype=torch.float32) / length
    frequencies = torch.arange(harmonics, dtype=torch.float32)[:, None]
    return torch.cat([torch.cos(2 * math.pi * frequencies * t), torch.sin(2 * math.pi * frequencies * t)])


class Block(nn.Module):
    """One block: ReLU layers, then theta^b -> backcast (B, C) and theta^f -> forecasts (B, Q, H),
    through a learnt basis or a fixed one (``backcast_basis`` (p, C), ``forecast_basis`` (p, H))."""

    def __init__(self, config: NBEATSConfig, backcast_basis: Tensor | None = None,
                 forecast_basis: Tensor | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(config.n_layers):
            layers += [nn.Linear(config.context if index == 0 else config.width, config.width), nn.ReLU()]
        self.layers = nn.Sequential(*layers)
        self.n_levels = len(config.levels)
        size = config.expansion if backcast_basis is None else len(backcast_basis)
        self.theta_backcast = nn.Linear(config.width, size, bias=False)
        self.theta_forecast = nn.Linear(config.width, size * self.n_levels, bias=False)
        if backcast_basis is None:                                   # generic: learnt bases
            self.backcast_basis = nn.Parameter(torch.empty(size, config.context))
            self.forecast_basis = nn.Parameter(torch.empty(size, config.horizon))
            for basis in (self.backcast_basis, self.forecast_basis):
                nn.init.kaiming_uniform_(basis, a=math.sqrt(5))
        else:
            self.register_buffer("backcast_basis", backcast_basis)
            self.register_buffer("forecast_basis", forecast_basis)

    def forward(self, residual: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.layers(residual)                                          # (B, width)
        backcast = self.theta_backcast(hidden) @ self.backcast_basis            # (B, C)
        theta = self.theta_forecast(hidden).view(len(residual), self.n_levels, -1)   # (B, Q, p)
        return backcast, theta @ self.forecast_basis                            # (B, Q, H)


@register("nbeats", task="forecast", config=NBEATSConfig)
class NBEATS(nn.Module):
    """N-BEATS (Oreshkin et al. 2020): doubly residual stacks of fully connected blocks, generic
    or interpretable (trend and seasonality), with quantile outputs."""

    train_defaults = {"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 20}

    def __init__(self, config: NBEATSConfig = NBEATSConfig()):
        super().__init__()
        self.config = config
        if config.stacks == "generic":
            self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_blocks))
            self.order = list(range(config.n_blocks))
        else:
            harmonics = max(config.horizon // 2 - 1, 1)
            trend = Block(config, polynomial_basis(config.degree, config.context),
                          polynomial_basis(config.degree, config.horizon))
            seasonality = Block(config, fourier_basis(config.context, harmonics), fourier_basis(config.horizon, harmonics))
            self.blocks = nn.ModuleList([trend, seasonality])
            self.order = [0] * config.n_blocks + [1] * config.n_blocks      # each stack's block, repeated
        self.register_buffer("levels", torch.tensor(config.levels))

    def forward(self, context: Tensor) -> Tensor:
        """(B, Q, H) forecasts of every learnt quantile level for lookback windows (B, C), in
        their own scale."""
        scale = context.abs().mean(dim=1, keepdim=True).clamp_min(SCALE_FLOOR)  # (B, 1)
        residual = context / scale
        forecast = torch.zeros(len(context), len(self.config.levels), self.config.horizon, device=context.device)
        for index in self.order:
            backcast, block_forecast = self.blocks[index](residual)
            residual = residual - backcast
            forecast = forecast + block_forecast
        return forecast * scale[:, :, None]

    def loss(self, context: Tensor, target: Tensor) -> Tensor:
        """The mean pinball loss over the levels, on the scale of each window's lookback."""
        scale = context.abs().mean(dim=1, keepdim=True).clamp_min(SCALE_FLOOR)
        return pinball_loss(self(context), target, scale, self.levels)

    def predict(self, panel: Panel, horizon: int, quantiles: Sequence[float] = ()) -> Forecast:
        """Forecasts from each series' last ``context`` values (a shorter series is padded on the
        left with its first value); ``horizon`` at most the trained one."""
        return quantile_forecast(self, panel, horizon, quantiles)
