"""Lag-Llama (Rasul et al. 2023, "Lag-Llama: Towards Foundation Models for Probabilistic Time
Series Forecasting"): a decoder-only Llama Transformer over tokens of lagged values, with a
Student-t head, trained globally on windows of many series.

**Tokens.** Each window is standardised robustly by its context part (the C values before the
forecast): z = (x - loc) / scale with loc the median and scale the interquartile range of the
context (the mean absolute deviation from the median where the IQR is 0; never below
``SCALE_FLOOR``), as Lag-Llama's robust scaler. The token that predicts z_s is

    u_s = [z_{s - l} for l in L] ++ [sign(loc) log(1 + |loc|), log scale]        (|L| + 2,)

(the paper's lag features and its "summary statistics"), projected linearly to the model
width. The lags L are ``LagLlamaConfig.lags``, or by default the short lags 1..7 and, for a
seasonal period m > 1, m - 1, m, m + 1, 2m and 3m (the values a season and two and three
seasons back, and their neighbours), kept where they fit in the context. A window of W values
gives tokens for s = max(L) .. W: the first max(L) values are only read as lags.

**Backbone and head.** Llama blocks from ``seqlab.models.transformer`` (causal attention with
RoPE, RMSNorm, SwiGLU), a final RMSNorm, and ``StudentTHead``: p(z_s | z_<s) = t_df(loc, scale).

**Training** (teacher forcing, as the paper): the Trainer's window is the context (B, C) and
its target (B, H); every token s = max(L) .. C + H - 1 of the whole window is scored, and the
loss is the mean negative log-likelihood of the scaled values z_s (on the scale of each
window's context, so series of every size weigh alike). The tokens inside the context carry
the whole context's loc and scale, as in the paper (the same at prediction); from the first
forecast on, a token reads nothing after the value it predicts.

**Forecasting.** The last C values of a series (a shorter series is padded on the left with
its first value, as the task's training windows are) are scaled; then ``n_samples`` paths are
drawn autoregressively, each draw z_s fed back as the lag-l value of the token predicting
z_{s+l}, through the attention layers' key/value caches: the window's tokens pass once, then one
token per step (``sample_paths_ref`` recomputes every token at every step: the specification).
The Student-t draws are the generator-aware ones of ``student_t.sample_student_t`` with
``series_generator`` of each series, so a series' forecast depends on its own values alone; the
mean and the quantiles are those of the unscaled paths (``sample_quantiles``). The paths of a
few series are decoded in one batch (``PATHS_PER_BATCH``), each series with its own generator:
its company changes only the rounding of float32 products. Heavy tails
(df near 2) occasionally give a far draw, which the later tokens read like any other value.

Shapes: B batch, C context, H horizon, W window, T tokens, L lags, N sample paths, D width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import StudentT

from seqlab.data.series import Panel, check_horizon
from seqlab.errors import ConfigError, DataError
from seqlab.forecast.base import Forecast, check_quantiles, sample_quantiles, series_generator
from seqlab.forecast.student_t import StudentTHead, sample_student_t
from seqlab.layers.feedforward import Activation
from seqlab.layers.kv_cache import KeyValueCache
from seqlab.layers.norms import NormKind, make_norm
from seqlab.models.transformer import (BlockConfig, PositionScheme, attention_positions, build_block,
                                       build_feedforward, gpt2_init)
from seqlab.registry import register

SCALE_FLOOR = 1e-8
SHORT_LAGS = tuple(range(1, 8))
PATHS_PER_BATCH = 1600          # sample paths decoded together at prediction (16 series of 100)


def default_lags(season: int, context: int) -> tuple[int, ...]:
    """1..7 and, for a seasonal period m > 1, m - 1, m, m + 1, 2m, 3m; those <= ``context``."""
    lags = set(SHORT_LAGS)
    if season > 1:
        lags |= {season - 1, season, season + 1, 2 * season, 3 * season}
    return tuple(sorted(lag for lag in lags if lag <= context))


@dataclass(frozen=True, kw_only=True)
class LagLlamaConfig(BlockConfig):
    """A Lag-Llama forecaster: the Transformer's shape (``BlockConfig``, Llama's defaults) and:

    Attributes:
        horizon: values forecast (from the forecasting task); longer requests are refused.
        context: past values read per forecast, the lags' reach included (from the task); it
            must be at least the largest lag.
        season: the seasonal period m (from the task), which chooses the default lags.
        lags: the lags l whose values x_{t-l} make the token predicting x_t, increasing; empty:
            ``default_lags(season, context)``.
        n_samples: sample paths drawn per series to estimate the mean and the quantiles.
        max_len: the attention window in tokens (RoPE: each token sees the max_len latest).
    """

    horizon: int = 8
    context: int = 32
    season: int = 1
    lags: tuple[int, ...] = ()
    n_samples: int = 100
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = 2
    positions: PositionScheme = "rope"
    max_len: int = 256
    norm: NormKind = "rmsnorm"
    activation: Activation = "swiglu"
    bias: bool = False

    position_schemes: ClassVar[tuple[str, ...]] = ("rope", "rope_interleaved", "alibi")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("horizon", "context", "season", "n_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"LagLlamaConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lags and (min(self.lags) < 1 or list(self.lags) != sorted(set(self.lags))):
            raise ConfigError(f"LagLlamaConfig.lags must be increasing positive integers, got {self.lags}")
        if self.lags and self.lags[-1] > self.context:
            raise ConfigError(f"LagLlamaConfig.context ({self.context}) must be at least the largest lag "
                              f"({self.lags[-1]}); lengthen the context or drop the long lags")

    @property
    def lag_set(self) -> tuple[int, ...]:
        """The lags in use: ``lags``, or the default ones."""
        return self.lags or default_lags(self.season, self.context)


# ---- tokens ----------------------------------------------------------------------------------

def robust_scale(context: Tensor) -> tuple[Tensor, Tensor]:
    """(B, 1) loc and scale of windows' contexts (B, C): the median and the interquartile range
    (the mean absolute deviation from the median where the IQR is 0), at least SCALE_FLOOR."""
    quartiles = torch.quantile(context, torch.tensor([0.25, 0.5, 0.75], dtype=context.dtype, device=context.device),
                               dim=1, keepdim=True)                                  # (3, B, 1)
    loc, spread = quartiles[1], quartiles[2] - quartiles[0]
    deviation = (context - loc).abs().mean(dim=1, keepdim=True)
    return loc, torch.where(spread > 0, spread, deviation).clamp_min(SCALE_FLOOR)


def summary_features(loc: Tensor, scale: Tensor) -> Tensor:
    """(B, 2) [sign(loc) log(1 + |loc|), log scale]: the window statistics each token carries."""
    return torch.cat([loc.sign() * loc.abs().log1p(), scale.log()], dim=1)


def lag_features(values: Tensor, lags: Tensor) -> Tensor:
    """(B, W - max(L) + 1, L) the lagged values of the tokens predicting values[max(L)] .. values[W]
    (the last one is the value after the window): ``out[b, i, j] = values[b, max(L) + i - lags[j]]``.

    Args:
        values: (B, W) a window, W >= max(L).
        lags: (L,) long, increasing positive lags.
    """
    reach = int(lags[-1])
    history = values.unfold(1, reach, 1)                 # (B, W - reach + 1, reach): values[s - reach .. s - 1]
    return history[..., reach - lags]                    # lag l is reach - l places into that history


def padded_window(values: Tensor, length: int) -> Tensor:
    """(length,) the last ``length`` values, padded on the left with the first value if fewer."""
    return torch.cat([values[:1].expand(max(length - len(values), 0)), values[-length:]])


# ---- the model ---------------------------------------------------------------------------------

@register("lagllama", task="forecast", config=LagLlamaConfig)
class LagLlama(nn.Module):
    """Lag-Llama (Rasul et al. 2023): a Llama decoder over lag-feature tokens with a Student-t
    head, sampled autoregressively."""

    train_defaults = {"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 20}

    def __init__(self, config: LagLlamaConfig = LagLlamaConfig()):
        super().__init__()
        self.config = config
        self.register_buffer("lags", torch.tensor(config.lag_set, dtype=torch.long), persistent=False)
        self.input_projection = nn.Linear(len(config.lag_set) + 2, config.d_model)
        positions = attention_positions(config)
        self.blocks = nn.ModuleList(build_block(config, positions, build_feedforward(config))
                                    for _ in range(config.n_layers))
        self.final_norm = make_norm(config.norm, config.d_model, bias=config.bias)
        self.head = StudentTHead(config.d_model)
        gpt2_init(self, config.n_layers)

    @property
    def reach(self) -> int:
        """The largest lag: the values read before the first token."""
        return int(self.config.lag_set[-1])

    def tokens(self, scaled: Tensor, summary: Tensor) -> Tensor:
        """(B, W - reach + 1, L + 2) the tokens of scaled windows (B, W) and their summaries (B, 2)."""
        lagged = lag_features(scaled, self.lags)                                      # (B, T, L)
        return torch.cat([lagged, summary[:, None, :].expand(-1, lagged.shape[1], -1)], dim=-1)

    def forward(self, tokens: Tensor, caches: Sequence[KeyValueCache] | None = None) -> StudentT:
        """The predictive distribution of each token's value (batch (B, T)), from tokens
        (B, T, L + 2) after the positions held in ``caches`` (one per block, extended in place;
        None: no cache)."""
        x = self.input_projection(tokens)                                             # (B, T, D)
        for index, block in enumerate(self.blocks):
            x = block(x, cache=None if caches is None else caches[index])
        return self.head(self.final_norm(x))

    def scaled_window(self, context: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The teacher-forced view of windows: (B, C + H) values scaled by their context's
        statistics, (B, 2) summaries, and the (B, 1) loc and scale."""
        loc, scale = robust_scale(context)
        return (torch.cat([context, target], dim=1) - loc) / scale, summary_features(loc, scale), loc, scale

    def teacher_forced(self, context: Tensor, target: Tensor) -> tuple[StudentT, Tensor]:
        """(the distributions of batch (B, T), (B, T) the scaled values they predict) for the
        tokens s = reach .. C + H - 1 of windows (context (B, C), target (B, H))."""
        if context.shape[1] < self.reach:
            raise DataError(f"the context has {context.shape[1]} values; the lags reach {self.reach} back")
        scaled, summary, _, _ = self.scaled_window(context, target)
        return self(self.tokens(scaled[:, :-1], summary)), scaled[:, self.reach:]

    def loss(self, context: Tensor, target: Tensor) -> Tensor:
        """The mean negative log-likelihood of the scaled values of every token of the windows."""
        distribution, actual = self.teacher_forced(context, target)
        return -distribution.log_prob(actual).mean()

    # ---- sampling ------------------------------------------------------------------------------

    def _start(self, windows: Tensor, n_paths: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """For windows (S, C): the (S, C) scaled windows, (S, 2) summaries, (S, 1) loc and scale,
        and (S N,) the window of each path (path n of series s is row s N + n)."""
        windows = windows.to(self.lags.device, self.input_projection.weight.dtype)
        loc, scale = robust_scale(windows)
        rows = torch.arange(len(windows), device=windows.device).repeat_interleave(n_paths)
        return (windows - loc) / scale, summary_features(loc, scale), loc, scale, rows

    def sample_paths(self, windows: Tensor, horizon: int, n_paths: int,
                     generators: Sequence[torch.Generator]) -> Tensor:
        """(S, N, H) float64 sample paths after windows (S, C), series s drawn with
        ``generators[s]``: the windows' tokens pass once through the cached layers, their caches
        are copied for the N paths, then each step reads one token."""
        scaled, summary, loc, scale, rows = self._start(windows, n_paths)
        caches = [block.attention.make_cache(len(scaled), scaled.shape[1] + horizon) for block in self.blocks]
        distribution = self(self.tokens(scaled, summary), caches)                     # (S, C - reach + 1)
        parameters = [value[rows] for value in last_parameters(distribution)]          # (S N,) each
        for cache in caches:
            cache.select(rows)
        paths, summary = scaled[rows], summary[rows]                                  # (S N, C), (S N, 2)
        for step in range(horizon):
            if step:
                parameters = last_parameters(self(self.tokens(paths[:, -self.reach:], summary), caches))
            paths = torch.cat([paths, draw(parameters, n_paths, generators)], dim=1)
        return unscale(paths[:, -horizon:], loc, scale, n_paths)

    def sample_paths_ref(self, windows: Tensor, horizon: int, n_paths: int,
                         generators: Sequence[torch.Generator]) -> Tensor:
        """``sample_paths`` by recomputing every token of every path at every step, without a
        cache: the specification, with the same draws in the same order."""
        scaled, summary, loc, scale, rows = self._start(windows, n_paths)
        paths, summary = scaled[rows], summary[rows]
        for _ in range(horizon):
            parameters = last_parameters(self(self.tokens(paths, summary)))            # all S N T tokens
            paths = torch.cat([paths, draw(parameters, n_paths, generators)], dim=1)
        return unscale(paths[:, -horizon:], loc, scale, n_paths)

    @torch.no_grad()
    def predict(self, panel: Panel, horizon: int, quantiles: Sequence[float] = ()) -> Forecast:
        """The mean and the ``quantiles`` of ``n_samples`` paths of each series, drawn with the
        series' own generator from its last ``context`` values (see the module docstring).
        Series are sampled ``max(1, PATHS_PER_BATCH // n_samples)`` at a time."""
        check_horizon(horizon)
        if horizon > self.config.horizon:
            raise ConfigError(f"this Lag-Llama was trained to forecast {self.config.horizon} values; {horizon} were "
                              "asked (train it with a longer horizon)")
        levels = check_quantiles(quantiles)
        was_training = self.training
        self.eval()
        chunk = max(1, PATHS_PER_BATCH // self.config.n_samples)
        means, bands, every = [], [], list(panel)
        for first in range(0, len(every), chunk):
            series = every[first: first + chunk]
            windows = torch.stack([padded_window(one.values, self.config.context) for one in series])
            paths = self.sample_paths(windows, horizon, self.config.n_samples,
                                      [series_generator(one) for one in series]).cpu()    # (S, N, H)
            for one, drawn in zip(series, paths):
                if not torch.isfinite(drawn).all():
                    raise DataError(f"Lag-Llama drew a non-finite value for series {one.id!r}; its values may be "
                                    "too extreme for this model")
                mean, band = sample_quantiles(drawn, levels)
                means.append(mean)
                bands.append(band)
        self.train(was_training)
        stacked = torch.stack(bands)                                                  # (S, Q, H)
        return Forecast(panel.ids, torch.stack(means),
                        {float(q): stacked[:, i] for i, q in enumerate(levels.tolist())})


def last_parameters(distribution: StudentT) -> tuple[Tensor, Tensor, Tensor]:
    """(df, loc, scale), each (B,), of the last token of distributions of batch (B, T)."""
    return distribution.df[:, -1], distribution.loc[:, -1], distribution.scale[:, -1]


def draw(parameters: tuple[Tensor, Tensor, Tensor], n_paths: int, generators: Sequence[torch.Generator]) -> Tensor:
    """(S N, 1) one Student-t draw per path, the N paths of series s (rows s N .. s N + N - 1)
    drawn with ``generators[s]`` by DeepAR's generator-aware sampler (on the CPU)."""
    df, loc, scale = (value.cpu().view(len(generators), n_paths) for value in parameters)
    drawn = torch.stack([sample_student_t(*row, generator) for *row, generator in zip(df, loc, scale, generators)])
    return drawn.view(-1, 1).to(parameters[1])


def unscale(paths: Tensor, loc: Tensor, scale: Tensor, n_paths: int) -> Tensor:
    """(S, N, H) float64 paths on the series' scale from scaled paths (S N, H) and (S, 1) loc and scale."""
    scaled = paths.double().view(len(loc), n_paths, -1)
    return loc.double()[:, :, None] + scale.double()[:, :, None] * scaled
