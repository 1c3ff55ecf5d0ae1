"""Chronos (Ansari et al. 2024, "Chronos: Learning the Language of Time Series"): a series read as
a sentence of tokens by a language model, trained by cross-entropy on the next token, forecast
by sampling token paths.

Tokens (section 3.1). A window of C context values x_1..x_C and H target values is **mean
scaled** by the context alone, s = (1/|O|) sum_{t in O} |x_t| over the observed context
positions O (s = 1 when they are all zero), and each scaled value u = x / s is **quantised**
into one of B uniform bins over [low, high], of width w = (high - low) / B:

    q(u) = clamp(floor((u - low) / w), 0, B - 1),      d(j) = low + (j + 1/2) w,

so every u in [low, high] comes back from its bin centre d(q(u)) within w / 2, and a value
outside is clipped to the edge bin. (Chronos's code puts B centres on linspace(low, high) with
boundaries at their midpoints; the bins here tile [low, high] exactly, a detail.) Two ids come
first, as in the paper: PAD = 0 for a missing value, EOS = 1; bin j is id j + 2, so the
vocabulary holds B + 2 ids. The paper uses B = 4094 over [-15, 15].

The model. The paper trains T5 (an encoder-decoder) on the context and decodes the target;
here the language model is seqlab's decoder-only Transformer (``TransformerLanguageModel``,
the ``gpt`` or ``llama`` preset), reading the window as one sequence [context tokens, target
tokens] (the paper trains a decoder-only GPT-2 variant too, Chronos-GPT2). The loss is the mean
cross-entropy of the next token at the H target positions, and, with ``score_context`` (the
default), at every context position too: each prefix of a window is a forecasting problem as
well, so one window teaches C + H - 1 predictions instead of H. Positions whose next token is
PAD are never scored. No EOS is read or predicted: every forecast has a known length, so the
id is reserved but unused.

Missing values and short series: a missing value is the PAD token, a learnt embedding read like
any other (no attention mask; a PAD position is simply a token that says "no value"). A series
shorter than the context is padded on the left with PAD. The task's training windows have no
gaps, so with ``pad_probability`` > 0 the loss blanks a uniform random prefix (1 .. C - 1
values) of that fraction of the context windows, so that the model has read PAD before it meets
a short series.

Forecasts (section 3.3): ``n_paths`` token paths are drawn autoregressively from the model
(``seqlab.decoding.sample_next``: ``temperature``, ``top_k``; PAD and EOS are never drawn),
the prompt read once (``prefill``) and its key/value cache repeated to the paths, then one
``step`` per token; each path is dequantised and multiplied by s. The point forecast is the
median of the paths (as the paper's), the quantiles their empirical ones (``sample_quantiles``).
Each series draws from its own generator (``series_generator``): its forecast depends on its
own values alone. With ``temperature`` 0 every path is the greedy one, so all quantiles equal
the point forecast (a zero-width interval).

Shapes: B batch, C context, H horizon, N paths, V = n_bins + 2 ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seqlab.data.series import Panel, Series, check_horizon
from seqlab.decoding import sample_next
from seqlab.errors import ConfigError, DataError
from seqlab.forecast.base import Forecast, check_quantiles, sample_quantiles, series_generator
from seqlab.models.transformer import LlamaConfig, TransformerConfig, TransformerLanguageModel
from seqlab.registry import register

PAD_ID = 0
EOS_ID = 1
N_SPECIAL = 2


@dataclass(frozen=True, kw_only=True)
class ChronosConfig:
    """A Chronos-style forecaster: mean scaling, uniform bins, a decoder-only Transformer LM.

    Attributes:
        horizon: values forecast (from the forecasting task); the most a forecast may ask.
        context: past values read (from the task); a shorter series is padded with PAD.
        n_bins: B, uniform bins over [low, high] (the paper: 4094).
        low: the lower edge of the bins, in units of the context's mean absolute value.
        high: the upper edge (the paper: [-15, 15]).
        preset: the language model: gpt (learned positions, LayerNorm, GELU) or llama (RoPE,
            RMSNorm, SwiGLU); either with plain multi-head attention (n_kv_heads = n_heads).
        d_model: the LM's width.
        n_layers: the LM's Transformer blocks.
        n_heads: the LM's attention heads.
        dropout: the LM's dropout.
        score_context: the loss scores the next token at the context positions too, not only
            at the target's.
        pad_probability: the fraction of training windows whose context gets a random PAD prefix.
        n_paths: N, sample paths per series a forecast draws (the paper: 20).
        temperature: divides the logits before sampling; 0 is greedy (all paths equal).
        top_k: sample among the k most probable bins only (the paper: 50); none: all.
        seed: mixed into each series' generator.
    """

    horizon: int = 8
    context: int = 32
    n_bins: int = 4094
    low: float = -15.0
    high: float = 15.0
    preset: Literal["gpt", "llama"] = "llama"
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.0
    score_context: bool = True
    pad_probability: float = 0.1
    n_paths: int = 100
    temperature: float = 1.0
    top_k: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("horizon", "context", "n_paths"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ChronosConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_bins < 2:
            raise ConfigError(f"ChronosConfig.n_bins must be >= 2, got {self.n_bins}")
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ConfigError(f"ChronosConfig needs finite low < high, got low={self.low}, high={self.high}")
        if self.preset not in ("gpt", "llama"):
            raise ConfigError(f"ChronosConfig.preset must be gpt or llama, got {self.preset!r}")
        if not 0 <= self.pad_probability < 1:
            raise ConfigError(f"ChronosConfig.pad_probability must be in [0, 1), got {self.pad_probability}")
        if not self.temperature >= 0:
            raise ConfigError(f"ChronosConfig.temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"ChronosConfig.top_k must be >= 1 or none, got {self.top_k}")
        self.language_model()                     # the LM's own fields (d_model, n_heads ...) checked now

    @property
    def bin_width(self) -> float:
        return (self.high - self.low) / self.n_bins

    def language_model(self) -> TransformerConfig:
        """The config of the LM over the B + 2 ids and C + H positions."""
        preset = LlamaConfig if self.preset == "llama" else TransformerConfig
        return preset(vocab_size=self.n_bins + N_SPECIAL, max_len=self.context + self.horizon,
                      d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
                      n_kv_heads=None, dropout=self.dropout)


# ---- tokens ------------------------------------------------------------------------------------

def mean_scale(context: Tensor) -> Tensor:
    """(B, 1) s: the mean absolute value of each row's observed (finite) values of ``context``
    (B, C); 1 where they are all zero. A row needs at least one observed value."""
    observed = torch.isfinite(context)
    if not observed.any(dim=1).all():
        row = int((~observed.any(dim=1)).nonzero()[0])
        raise DataError(f"context row {row} has no observed value; mean scaling needs at least one")
    total = torch.where(observed, context.abs(), torch.zeros_like(context)).sum(dim=1, keepdim=True)
    scale = total / observed.sum(dim=1, keepdim=True)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def tokenise(values: Tensor, scale: Tensor, config: ChronosConfig) -> Tensor:
    """Token ids of ``values`` (B, T) at ``scale`` (B, 1): the bin of each value / s, clipped to
    the edge bins, plus N_SPECIAL; PAD where a value is missing (not finite). (B, T) int64."""
    scaled = values / scale
    index = torch.floor((scaled - config.low) / config.bin_width).clamp(0, config.n_bins - 1)
    index = torch.nan_to_num(index, nan=0.0)                                 # missing: replaced below
    return torch.where(torch.isfinite(values), index.long() + N_SPECIAL, torch.full_like(index.long(), PAD_ID))


def dequantise(tokens: Tensor, scale: Tensor, config: ChronosConfig) -> Tensor:
    """The values of bin ids ``tokens`` (B, T) at ``scale`` (B, 1): each bin's centre times s.
    (B, T) in the dtype of ``scale``; a special id (PAD, EOS) is a DataError."""
    if (tokens < N_SPECIAL).any():
        raise DataError("dequantise got a PAD or EOS id; only bin ids have values")
    centres = config.low + (tokens - N_SPECIAL).to(scale.dtype).add(0.5) * config.bin_width
    return centres * scale


# ---- the model ---------------------------------------------------------------------------------

@register("chronos", task="forecast", config=ChronosConfig)
class Chronos(nn.Module):
    """Chronos-style forecaster (Ansari et al. 2024): mean-scaled, binned values read by a
    decoder-only Transformer LM, trained by next-token cross-entropy, forecast by sampling."""

    train_defaults = {"lr": 3e-3, "weight_decay": 0.0, "warmup_steps": 20}

    def __init__(self, config: ChronosConfig = ChronosConfig()):
        super().__init__()
        self.config = config
        self.lm = TransformerLanguageModel(config.language_model())

    def window_tokens(self, context: Tensor, target: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(tokens (B, C [+ H]), scale (B, 1)): the context (NaN where missing), then the target,
        tokenised at the context's mean scale."""
        scale = mean_scale(context)
        values = context if target is None else torch.cat([context, target], dim=1)
        return tokenise(values, scale, self.config), scale

    def loss(self, context: Tensor, target: Tensor) -> Tensor:
        """The mean next-token cross-entropy (nats) of windows ``context`` (B, C) and ``target``
        (B, H): at the H target positions, and with ``score_context`` at the context's too; a
        position whose next token is PAD is not scored. In training, ``pad_probability`` of the
        windows get a PAD prefix (torch's global generator draws which and how long)."""
        if context.shape[1] != self.config.context or target.shape[1] != self.config.horizon:
            raise DataError(f"chronos reads windows of {self.config.context} + {self.config.horizon} values, got "
                            f"{context.shape[1]} + {target.shape[1]}")
        if self.training and self.config.pad_probability > 0 and self.config.context > 1:
            context = self.blank_prefixes(context)
        tokens, _ = self.window_tokens(context, target)                       # (B, C + H)
        logits = self.lm(tokens[:, :-1])                                      # (B, C + H - 1, V)
        following = tokens[:, 1:]                                             # the token each predicts
        scored = following != PAD_ID
        if not self.config.score_context:
            scored[:, : self.config.context - 1] = False
        return F.cross_entropy(logits[scored].float(), following[scored])

    def blank_prefixes(self, context: Tensor) -> Tensor:
        """``context`` (B, C) with a uniform 1 .. C - 1 first values of ``pad_probability`` of
        the rows set to NaN (missing)."""
        rows, width = context.shape
        blanked = torch.rand(rows, device=context.device) < self.config.pad_probability
        lengths = torch.randint(1, width, (rows,), device=context.device) * blanked   # (B,)
        missing = torch.arange(width, device=context.device)[None, :] < lengths[:, None]
        return context.masked_fill(missing, float("nan"))

    # ---- sampling ----------------------------------------------------------------------------

    def draw(self, logits: Tensor, generator: torch.Generator) -> Tensor:
        """(N,) bin ids drawn from next-token ``logits`` (N, V) with the config's temperature and
        top-k, never PAD or EOS; on the CPU, where the series' generator lives."""
        logits = logits.float().cpu().clone()                                 # never write the model's output
        logits[:, :N_SPECIAL] = float("-inf")
        top_k = None if self.config.top_k is None else min(self.config.top_k, self.config.n_bins)
        return sample_next(logits, temperature=self.config.temperature, top_k=top_k, generator=generator)

    @torch.no_grad()
    def sample_tokens(self, prompt: Tensor, horizon: int, generator: torch.Generator) -> Tensor:
        """(N, H) bin ids: ``n_paths`` continuations of one prompt (1, C), each token drawn by
        ``draw`` from ``generator``. The prompt is read once and its key/value cache repeated to
        the N paths; then one cached step per token (``sample_tokens_ref`` recomputes instead)."""
        device = next(self.lm.parameters()).device
        logits, state = self.lm.prefill(prompt.to(device))                    # (1, V)
        repeat = torch.zeros(self.config.n_paths, dtype=torch.long, device=device)
        for cache in state:
            cache.select(repeat)                                              # (N, ...) copies of the prompt's
        logits = logits.expand(self.config.n_paths, -1)
        drawn = []
        for step in range(horizon):
            tokens = self.draw(logits, generator)                             # (N,)
            drawn.append(tokens)
            if step < horizon - 1:
                logits, state = self.lm.step(tokens.to(device), state)
        return torch.stack(drawn, dim=1)

    @torch.no_grad()
    def sample_tokens_ref(self, prompt: Tensor, horizon: int, generator: torch.Generator) -> Tensor:
        """``sample_tokens`` by full recomputation: every step reads the whole sequence so far,
        without a cache (the specification the cached path is tested against)."""
        device = next(self.lm.parameters()).device
        sequence = prompt.to(device).expand(self.config.n_paths, -1)          # (N, C)
        for _ in range(horizon):
            tokens = self.draw(self.lm(sequence)[:, -1], generator)           # (N,)
            sequence = torch.cat([sequence, tokens.to(device)[:, None]], dim=1)
        return sequence[:, prompt.shape[1]:].cpu()

    def sample_paths(self, context: Tensor, horizon: int, generator: torch.Generator) -> Tensor:
        """(N, H) float64 sample paths of the values after ``context`` (C,) float64 (NaN where
        missing), drawn from ``generator``."""
        window = context[None, :]
        tokens, scale = self.window_tokens(window)                            # (1, C), (1, 1)
        was_training = self.training
        self.eval()
        try:
            drawn = self.sample_tokens(tokens, horizon, generator)            # (N, H)
        finally:
            self.train(was_training)
        return dequantise(drawn, scale, self.config)

    def context_of(self, series: Series) -> Tensor:
        """(C,) float64: the series' last ``context`` values, NaN (PAD) on the left of a short one."""
        if len(series) == 0:
            raise DataError(f"series {series.id!r} has no values; chronos needs at least one to forecast")
        values = series.values[-self.config.context:]
        missing = torch.full((self.config.context - len(values),), float("nan"), dtype=torch.float64)
        return torch.cat([missing, values])

    def predict(self, panel: Panel, horizon: int, quantiles: Sequence[float] = ()) -> Forecast:
        """The median and ``quantiles`` of ``n_paths`` sampled paths of every series, each drawn
        from the series' own generator; ``horizon`` at most the trained one."""
        check_horizon(horizon)
        if horizon > self.config.horizon:
            raise ConfigError(f"this chronos was trained to forecast {self.config.horizon} values; {horizon} were "
                              "asked (train with a longer horizon)")
        levels = check_quantiles(quantiles)
        medians, bands = [], []
        for series in panel:
            paths = self.sample_paths(self.context_of(series), horizon, series_generator(series, self.config.seed))
            _, band = sample_quantiles(paths, torch.cat([torch.tensor([0.5], dtype=torch.float64), levels]))
            medians.append(band[0])
            bands.append(band[1:])
        stacked = torch.stack(bands)                                          # (S, Q, H)
        return Forecast(panel.ids, torch.stack(medians),
                        {float(q): stacked[:, i] for i, q in enumerate(levels.tolist())})
