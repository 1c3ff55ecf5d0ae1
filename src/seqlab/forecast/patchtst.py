"""PatchTST (Nie, Nguyen, Sinthong and Kalagnanam 2023, "A Time Series is Worth 64 Words:
Long-term Forecasting with Transformers"): a Transformer encoder over patches of the lookback
window, trained globally on windows of many series.

For one lookback window x of C values (sec. 3.1, fig. 1):

1. **RevIN** (Kim et al. 2022; ``seqlab.forecast.revin``): x is standardised by its own mean and
   standard deviation, with a learnt affine map; the forecast is mapped back by the exact inverse.
2. **Patching**: the C values are cut into N patches of P values every S values. With
   ``padding="end"`` (the paper's), the last value is first repeated S times at the end, so
   N = floor((C - P) / S) + 2 and every value is read; with ``padding="none"`` (Hugging Face's
   ``PatchTSTPatchify``), N = floor((C - P) / S) + 1 patches end at the last value and the first
   (C - P) mod S values are not read.
3. **Encoder**: each patch is embedded linearly (W_p, P -> D), a learnt positional table
   W_pos (N, D) is added (initialised uniformly in [-0.02, 0.02], as in the authors' code), and
   ``n_layers`` Transformer blocks of bidirectional multi-head attention and a feed-forward read
   the N patch tokens (``seqlab.layers.block.TransformerBlock``). The norms are BatchNorm over
   the batch and the patches (the paper's choice, after Zerveas et al. 2021, who found it better
   than LayerNorm for time series) or LayerNorm; post-norm as in the authors' code, or pre-norm
   (Hugging Face's default), without a final norm in either.
4. **Flatten head**: the N x D outputs are flattened (patch-major, as Hugging Face does) and one
   linear layer maps them to the H forecasts of every quantile level.

**Channel independence** (sec. 3.1): every series of the panel is its own channel, one row of
the batch; a multivariate series would be read the same way, each channel as a univariate
window of its own, all channels sharing every weight (embedding, encoder, head) and never
attending to each other. The model itself only ever sees (B, C) univariate windows.

Uncertainty, where this differs from the paper's point forecasts trained by the MSE: the head
forecasts one value per step for each quantile level of ``levels``, trained by the mean pinball
loss over them on the scale of each window's RevIN sigma (a scale-free loss for a panel of
series of any size; the paper's MSE runs on a data set standardised once). The median is the
point forecast; at prediction the quantiles are sorted and other levels interpolated, as
N-BEATS does (``seqlab.forecast.quantile_output``).

Not here: the self-supervised masked pre-training (sec. 3.2), and the authors' code's residual
attention (scores carried from layer to layer, RealFormer, He et al. 2021), which the paper's
text does not describe and Hugging Face does not have.

Shapes: B windows, C ``context``, P ``patch_len``, S ``stride``, N patches, D ``d_model``,
Q quantile levels, H ``horizon``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from seqlab.data.series import Panel
from seqlab.errors import ConfigError
from seqlab.forecast.base import Forecast
from seqlab.forecast.quantile_output import check_levels, pinball_loss, quantile_forecast
from seqlab.forecast.revin import RevIN
from seqlab.layers.attention import MultiHeadAttention
from seqlab.layers.block import NormPosition, TransformerBlock
from seqlab.layers.feedforward import ACTIVATIONS, Activation, FeedForward
from seqlab.registry import register

Padding = Literal["end", "none"]
PatchNorm = Literal["batchnorm", "layernorm"]


@dataclass(frozen=True, kw_only=True)
class PatchTSTConfig:
    """A PatchTST forecaster (the defaults: the paper's shape for the larger data sets, sec. 4.1
    and appendix A.1.4: P = 16, S = 8, 3 layers, D = 128, 16 heads, F = 256, dropout 0.2).

    Attributes:
        horizon: values forecast (from the forecasting task).
        context: past values read, the lookback window (from the task; the paper: 336 or 512).
        patch_len: P, values per patch (the paper: 16).
        stride: S, values between the starts of consecutive patches, at most P (the paper: 8).
        padding: end (the paper: the last value repeated S times, one patch more) or none
            (Hugging Face: patches end at the last value; the first (C - P) mod S are not read).
        d_model: D, the width of the patch tokens.
        n_heads: attention heads; must divide d_model.
        n_layers: Transformer blocks.
        d_ff: the feed-forward's hidden width.
        norm: batchnorm (the paper) or layernorm, in every block.
        norm_position: post (the authors' code) or pre (Hugging Face's default); no final norm.
        activation: the feed-forward's activation (the paper: gelu).
        dropout: on the embedded patches, the attention weights, the feed-forward's hidden units
            and the residual branches (the paper: 0.2).
        head_dropout: on the flattened outputs before the head.
        revin_affine: RevIN learns its affine map (gamma, beta).
        revin_eps: added to each window's variance (Hugging Face's minimum_scale).
        levels: the quantile levels learnt by the pinball loss; 0.5 must be one of them.
    """

    horizon: int = 8
    context: int = 32
    patch_len: int = 16
    stride: int = 8
    padding: Padding = "end"
    d_model: int = 128
    n_heads: int = 16
    n_layers: int = 3
    d_ff: int = 256
    norm: PatchNorm = "batchnorm"
    norm_position: NormPosition = "post"
    activation: Activation = "gelu"
    dropout: float = 0.2
    head_dropout: float = 0.0
    revin_affine: bool = True
    revin_eps: float = 1e-5
    levels: tuple[float, ...] = (0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975)

    def __post_init__(self) -> None:
        for name in ("horizon", "context", "patch_len", "stride", "d_model", "n_heads", "n_layers", "d_ff"):
            if getattr(self, name) < 1:
                raise ConfigError(f"PatchTSTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.context < self.patch_len:
            raise ConfigError(f"PatchTSTConfig.context ({self.context}) is shorter than a patch "
                              f"(patch_len {self.patch_len})")
        if self.stride > self.patch_len:
            raise ConfigError(f"PatchTSTConfig.stride ({self.stride}) must be at most patch_len "
                              f"({self.patch_len}): a longer stride skips values between patches")
        if self.d_model % self.n_heads:
            raise ConfigError(f"PatchTSTConfig.n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        choices = {"padding": ("end", "none"), "norm": ("batchnorm", "layernorm"),
                   "norm_position": ("pre", "post"), "activation": ACTIVATIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"PatchTSTConfig.{name} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")
        for name in ("dropout", "head_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"PatchTSTConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.revin_eps > 0:
            raise ConfigError(f"PatchTSTConfig.revin_eps must be positive, got {self.revin_eps}")
        check_levels("PatchTSTConfig", self.levels)

    @property
    def n_patches(self) -> int:
        """N: floor((C - P) / S) + 1, and one more with end padding."""
        return (self.context - self.patch_len) // self.stride + 1 + (self.padding == "end")


def patchify(x: Tensor, patch_len: int, stride: int, padding: Padding = "end") -> Tensor:
    """(B, C) windows -> (B, N, P) patches: ``patches[:, n] = x'[:, n S : n S + P]``, where x' is
    x with its last value repeated S times (``padding="end"``), or x without its first
    (C - P) mod S values (``"none"``)."""
    if padding == "end":
        x = torch.cat([x, x[:, -1:].expand(-1, stride)], dim=1)                # (B, C + S)
    else:
        x = x[:, (x.shape[1] - patch_len) % stride:]
    return x.unfold(1, patch_len, stride)                                        # (B, N, P)


class BatchNorm(nn.Module):
    """BatchNorm (Ioffe and Szegedy 2015) of the D features of patch tokens (B, N, D), with
    statistics over the batch and the patches (running ones in evaluation), as PatchTST's."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.batchnorm = nn.BatchNorm1d(d_model, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.batchnorm(x.transpose(1, 2)).transpose(1, 2)                # (B, N, D)


def make_patch_norm(kind: PatchNorm, d_model: int) -> nn.Module:
    """One norm of a block: :class:`BatchNorm` or LayerNorm over D (eps 1e-5 either way)."""
    return BatchNorm(d_model) if kind == "batchnorm" else nn.LayerNorm(d_model)


@register("patchtst", task="forecast", config=PatchTSTConfig)
class PatchTST(nn.Module):
    """PatchTST (Nie et al. 2023): RevIN, patches of the lookback, a Transformer encoder over them
    and a flatten head, channel-independent, with quantile outputs."""

    train_defaults = {"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 20}

    def __init__(self, config: PatchTSTConfig = PatchTSTConfig()):
        super().__init__()
        self.config = config
        self.revin = RevIN(config.revin_affine, config.revin_eps)
        self.patch_embedding = nn.Linear(config.patch_len, config.d_model)                  # W_p
        self.positions = nn.Parameter(torch.empty(config.n_patches, config.d_model).uniform_(-0.02, 0.02))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        norm = partial(make_patch_norm, config.norm, config.d_model)
        self.blocks = nn.ModuleList(
            TransformerBlock(MultiHeadAttention(config.d_model, config.n_heads, causal=False, dropout=config.dropout),
                             FeedForward(config.d_model, config.d_ff, config.activation, config.dropout),
                             norm, norm_position=config.norm_position, dropout=config.dropout)
            for _ in range(config.n_layers))
        self.head_dropout = nn.Dropout(config.head_dropout) if config.head_dropout > 0 else nn.Identity()
        self.head = nn.Linear(config.n_patches * config.d_model, len(config.levels) * config.horizon)
        self.register_buffer("levels", torch.tensor(config.levels))

    def encode(self, z: Tensor) -> Tensor:
        """(B, C) normalised windows -> (B, N, D) the encoder's patch tokens."""
        patches = patchify(z, self.config.patch_len, self.config.stride, self.config.padding)   # (B, N, P)
        x = self.dropout(self.patch_embedding(patches) + self.positions)                    # (B, N, D)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, context: Tensor) -> Tensor:
        """(B, Q, H) forecasts of every learnt quantile level for lookback windows (B, C), in
        their own scale."""
        z, mean, std = self.revin.normalise(context)                                        # (B, C)
        tokens = self.encode(z)                                                             # (B, N, D)
        output = self.head(self.head_dropout(tokens.flatten(1)))                            # (B, Q H)
        output = output.view(len(context), len(self.config.levels), self.config.horizon)    # (B, Q, H)
        return self.revin.denormalise(output, mean, std)

    def loss(self, context: Tensor, target: Tensor) -> Tensor:
        """The mean pinball loss over the levels, on the scale of each window's RevIN sigma."""
        _, std = self.revin.moments(context)                                                # (B, 1)
        return pinball_loss(self(context), target, std, self.levels)

    def predict(self, panel: Panel, horizon: int, quantiles: Sequence[float] = ()) -> Forecast:
        """Forecasts from each series' last ``context`` values (a shorter series is padded on the
        left with its first value), in evaluation mode (BatchNorm's running statistics, no
        dropout) and the weights' dtype; ``horizon`` at most the trained one."""
        return quantile_forecast(self, panel, horizon, quantiles)
