"""Reversible instance normalisation, RevIN (Kim, Kim, Tae, Park, Choi and Choo 2022, "Reversible
Instance Normalization for Accurate Time-Series Forecasting against Distribution Shift").

Each input window x (one series' C lookback values) is standardised by its own statistics,
then given a learnt affine map (eq. 1-2 of the paper):

    mu = mean(x),   sigma = sqrt(var(x) + eps)   (the biased variance, over the C values),
    z = gamma (x - mu) / sigma + beta;

the network forecasts in z's units, and its output y is mapped back by the exact inverse
(eq. 3):

    y_hat = sigma (y - beta) / gamma + mu.

So a forecaster that reads z and writes y is equivariant to positive affine maps of its input
(x -> a x + b, a > 0, gives y_hat -> a y_hat + b) up to the eps under the square root.

Where this differs from the authors' code (``RevIN.py`` of the paper, used by PatchTST): the
inverse divides by gamma itself, not by ``gamma + eps^2``, so ``denormalise`` undoes
``normalise`` exactly (the test asks it to). Like theirs, the statistics are detached: no
gradient flows through mu and sigma. ``affine=False`` drops gamma and beta; with gamma = 1 and
beta = 0 (their initial values) RevIN is Hugging Face's ``PatchTSTStdScaler`` (eps is its
``minimum_scale``).

Shapes: B windows, C lookback values; the statistics are (B, 1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError


class RevIN(nn.Module):
    """Per-window standardisation with a learnt affine map, and its inverse.

    Args:
        affine: learn gamma and beta (one each: every series is one channel), initialised to 1
            and 0.
        eps: added to the variance under the square root, so a constant window has a finite
            sigma (sqrt(eps)).
    """

    def __init__(self, affine: bool = True, eps: float = 1e-5):
        super().__init__()
        if not eps > 0:
            raise ConfigError(f"RevIN eps must be positive, got {eps}")
        self.affine = affine
        self.eps = float(eps)
        if affine:
            self.weight = nn.Parameter(torch.ones(1))                   # gamma
            self.bias = nn.Parameter(torch.zeros(1))                    # beta

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 1) mu and (B, 1) sigma of windows x (B, C), detached."""
        mean = x.mean(dim=-1, keepdim=True)
        std = torch.sqrt(x.var(dim=-1, keepdim=True, unbiased=False) + self.eps)
        return mean.detach(), std.detach()

    def normalise(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, C) windows -> (z (B, C), mu (B, 1), sigma (B, 1))."""
        mean, std = self.moments(x)
        z = (x - mean) / std
        if self.affine:
            z = z * self.weight + self.bias
        return z, mean, std

    def denormalise(self, y: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """The exact inverse of :meth:`normalise`: (B, *) outputs in z's units -> the windows'
        own units, with mu and sigma (B, 1) of the windows they were read from."""
        if self.affine:
            y = (y - self.bias) / self.weight
        shape = (len(y),) + (1,) * (y.dim() - 1)                        # broadcast over (*)
        return y * std.reshape(shape) + mean.reshape(shape)

    def extra_repr(self) -> str:
        return f"affine={self.affine}, eps={self.eps}"
