"""Emission distributions of a hidden Markov model: categorical, Gaussian and Gaussian mixture.

Each is an ``nn.Module`` over K states with the interface ``HiddenMarkovModel`` uses:

    prepare(observations, mask) -> observations   checked (``DataError``), padding made harmless
    log_prob(observations) -> (B, T, K)            log p(x_t | s_t = k)
    log_prob_table(observations) -> EmissionTable  the same as a (V, K) table and the symbols
                                                   (finite alphabets only; the chain engine then
                                                   exponentiates V rows, not B T positions)
    statistics(observations, weights) -> dict      expected sufficient statistics of the E-step,
                                                   additive over batches of sequences
    update(statistics)                             the M-step (Rabiner 1989, eqs. 40c, 52-54)
    sample(states, generator) -> observations

``weights`` (B, T, K) are state posteriors (zero at padding), or one-hot states for supervised
estimation. A state that receives no weight keeps its parameters.

Shapes: B sequences, T positions, K states, V symbols, D features, M mixture components.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError, DataError, TrainingError
from seqlab.ops.chain import EmissionTable

CovarianceType = Literal["diag", "full"]


class CategoricalEmission(nn.Module):
    """``p(x_t = v | s_t = k) = softmax(logits[k])[v]`` over V symbols.

    The M-step sets ``p(v | k)`` to the expected count of symbol v in state k, plus
    ``pseudo_count`` (a symmetric Dirichlet prior, MAP estimate), normalised over v.
    """

    def __init__(self, n_states: int, n_symbols: int, pseudo_count: float = 0.0):
        super().__init__()
        if n_states < 1 or n_symbols < 1:
            raise ConfigError(f"need n_states >= 1 and n_symbols >= 1, got {n_states} and {n_symbols}")
        if pseudo_count < 0:
            raise ConfigError(f"pseudo_count must be >= 0, got {pseudo_count}")
        self.n_states, self.n_symbols, self.pseudo_count = n_states, n_symbols, pseudo_count
        probs = torch.distributions.Dirichlet(torch.ones(n_symbols)).sample((n_states,))
        self.logits = nn.Parameter(probs.log())                             # (K, V)

    def log_probs(self) -> Tensor:
        """(K, V) log emission probabilities."""
        return torch.log_softmax(self.logits, dim=-1)

    @torch.no_grad()
    def set_probs(self, probs: Tensor) -> None:
        """Set the (K, V) emission probabilities (rows summing to one)."""
        self.logits.copy_(torch.as_tensor(probs, dtype=self.logits.dtype).log())

    def prepare(self, observations: Tensor, mask: Tensor) -> Tensor:
        if observations.dtype.is_floating_point or observations.dtype == torch.bool:
            raise DataError(f"categorical observations must be integer symbols, got {observations.dtype}")
        _check_shape(observations, mask, ())
        observations = observations.masked_fill(~mask, 0)
        outside = ((observations < 0) | (observations >= self.n_symbols)).nonzero()
        if len(outside):
            sequence, position = outside[0].tolist()
            raise DataError(
                f"symbol {int(observations[sequence, position])} at position {position} of sequence "
                f"{sequence} is outside [0, {self.n_symbols})"
            )
        return observations

    def log_prob(self, observations: Tensor) -> Tensor:
        return self.log_prob_table(observations).scores()       # stored time-major, the engine's layout

    def log_prob_table(self, observations: Tensor) -> EmissionTable:
        return EmissionTable(self.log_probs().T, observations)              # (V, K), (B, T)

    def statistics(self, observations: Tensor, weights: Tensor) -> dict[str, Tensor]:
        symbols, weights = _flatten_positions(observations, weights)        # (N,), (N, K)
        counts = weights.new_zeros(self.n_symbols, self.n_states).index_add_(0, symbols, weights)
        return {"counts": counts.T}                                         # (K, V)

    @torch.no_grad()
    def update(self, statistics: dict[str, Tensor]) -> None:
        counts = statistics["counts"] + self.pseudo_count
        total = counts.sum(-1, keepdim=True)
        self.logits.copy_(torch.where(total > 0, (counts / total).log(), self.logits))

    def sample(self, states: Tensor, generator: torch.Generator | None = None) -> Tensor:
        probs = self.log_probs().exp()[states.flatten()]
        return torch.multinomial(probs, 1, generator=generator).view(states.shape)


class Gaussians(nn.Module):
    """A stack of Gaussians of shape ``S`` (e.g. (K,) or (K, M)) over D features.

    ``N(x; mu, Sigma) = (2 pi)^(-D/2) |Sigma|^(-1/2) exp(-(x - mu)^T Sigma^{-1} (x - mu) / 2)``;
    a diagonal covariance is stored as log-variances (S, D), a full one as its Cholesky factor
    ``L`` (``Sigma = L L^T``): log of its diagonal (S, D) and its strict lower part (S, D, D).
    The M-step adds ``reg_covar`` to the diagonal of each estimated covariance.
    """

    def __init__(self, shape: tuple[int, ...], n_features: int, covariance_type: CovarianceType = "diag",
                 reg_covar: float = 1e-6):
        super().__init__()
        if covariance_type not in ("diag", "full"):
            raise ConfigError(f"covariance_type must be 'diag' or 'full', got {covariance_type!r}")
        if n_features < 1 or reg_covar < 0:
            raise ConfigError(f"need n_features >= 1 and reg_covar >= 0, got {n_features} and {reg_covar}")
        self.shape, self.n_features = tuple(shape), n_features
        self.covariance_type, self.reg_covar = covariance_type, reg_covar
        self.means = nn.Parameter(torch.randn(*shape, n_features))
        if covariance_type == "diag":
            self.log_variances = nn.Parameter(torch.zeros(*shape, n_features))
        else:
            self.log_scale_diag = nn.Parameter(torch.zeros(*shape, n_features))
            self.scale_lower = nn.Parameter(torch.zeros(*shape, n_features, n_features))

    def scale_tril(self) -> Tensor:
        """(S, D, D) Cholesky factor of each full covariance."""
        return self.scale_lower.tril(-1) + torch.diag_embed(self.log_scale_diag.exp())

    def covariances(self) -> Tensor:
        """(S, D) variances, or (S, D, D) covariance matrices."""
        if self.covariance_type == "diag":
            return self.log_variances.exp()
        scale = self.scale_tril()
        return scale @ scale.transpose(-1, -2)

    @torch.no_grad()
    def set_parameters(self, means: Tensor, covariances: Tensor) -> None:
        """Set means (S, D) and covariances (S, D) or (S, D, D)."""
        self.means.copy_(torch.as_tensor(means, dtype=self.means.dtype))
        covariances = torch.as_tensor(covariances, dtype=self.means.dtype, device=self.means.device)
        if self.covariance_type == "diag":
            self.log_variances.copy_(covariances.log())
            return
        scale = torch.linalg.cholesky(covariances)
        self.log_scale_diag.copy_(scale.diagonal(dim1=-2, dim2=-1).log())
        self.scale_lower.copy_(scale.tril(-1))

    def log_density(self, x: Tensor) -> Tensor:
        """(B, T, *S) log densities of observations ``x`` (B, T, D)."""
        diff = x.reshape(*x.shape[:2], *([1] * len(self.shape)), -1) - self.means   # (B, T, *S, D)
        if self.covariance_type == "diag":
            log_det = self.log_variances.sum(-1)
            mahalanobis = (diff.square() / self.log_variances.exp()).sum(-1)
        else:
            log_det = 2 * self.log_scale_diag.sum(-1)
            whitened = torch.linalg.solve_triangular(self.scale_tril(), diff.unsqueeze(-1), upper=False)
            mahalanobis = whitened.square().sum((-2, -1))
        return -0.5 * (self.n_features * math.log(2 * math.pi) + log_det + mahalanobis)

    def statistics(self, x: Tensor, weights: Tensor) -> dict[str, Tensor]:
        """Weighted moments: total weight (S,), sum of x (S, D), sum of x x^T (S, D[, D])."""
        x, weights = _flatten_positions(x, weights)                         # (N, D), (N, *S)
        weights = weights.flatten(1)                                        # (N, prod S)
        if self.covariance_type == "diag":
            second = weights.T @ x.square()
        else:
            second = torch.einsum("ns,nd,ne->sde", weights, x, x)
        return {"weight": weights.sum(0).view(self.shape), "sum_x": (weights.T @ x).view(*self.shape, -1),
                "sum_xx": second.view(*self.shape, *second.shape[1:])}

    @torch.no_grad()
    def update(self, statistics: dict[str, Tensor]) -> None:
        """Maximum-likelihood means and covariances from ``statistics`` (plus ``reg_covar``)."""
        weight = statistics["weight"]                                       # (S,)
        seen = weight > 0
        safe = torch.where(seen, weight, torch.ones_like(weight))[..., None]   # (S, 1)
        means = statistics["sum_x"] / safe
        if self.covariance_type == "diag":
            covariances = statistics["sum_xx"] / safe - means.square() + self.reg_covar
            kept = seen[..., None]
        else:
            outer = means[..., :, None] * means[..., None, :]
            identity = torch.eye(self.n_features, dtype=means.dtype, device=means.device)
            covariances = statistics["sum_xx"] / safe[..., None] - outer + self.reg_covar * identity
            kept = seen[..., None, None]
        try:
            self.set_parameters(torch.where(seen[..., None], means, self.means),
                                torch.where(kept, covariances, self.covariances()))
        except torch.linalg.LinAlgError:
            raise TrainingError("a covariance became singular: a Gaussian collapsed onto too few "
                                "observations; raise reg_covar") from None

    def draw(self, index: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(N, D) draws from the Gaussians at flat indices ``index`` (N,) into S."""
        noise = torch.randn(len(index), self.n_features, generator=generator, dtype=self.means.dtype,
                            device=self.means.device)
        means = self.means.flatten(0, -2)[index]
        if self.covariance_type == "diag":
            return means + noise * (0.5 * self.log_variances.flatten(0, -2)[index]).exp()
        return means + (self.scale_tril().flatten(0, -3)[index] @ noise[..., None])[..., 0]


class GaussianEmission(Gaussians):
    """``p(x_t | s_t = k) = N(x_t; mu_k, Sigma_k)``, diagonal or full covariance (Rabiner 1989,
    eqs. 52-54 with one mixture component)."""

    def __init__(self, n_states: int, n_features: int, covariance_type: CovarianceType = "diag",
                 reg_covar: float = 1e-6):
        super().__init__((n_states,), n_features, covariance_type, reg_covar)
        self.n_states = n_states

    def prepare(self, observations: Tensor, mask: Tensor) -> Tensor:
        return _prepare_vectors(observations, mask, self.n_features)

    def log_prob(self, observations: Tensor) -> Tensor:
        return self.log_density(observations)

    def sample(self, states: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.draw(states.flatten(), generator).view(*states.shape, self.n_features)


class GaussianMixtureEmission(nn.Module):
    """``p(x_t | s_t = k) = sum_m w_km N(x_t; mu_km, Sigma_km)`` (Juang 1985; Rabiner 1989, eq. 49).

    The E-step splits each state posterior over the components in proportion to
    ``w_km N(x_t; mu_km, Sigma_km)``; the M-step re-estimates weights, means and covariances
    from those responsibilities (Rabiner 1989, eqs. 52-54).
    """

    def __init__(self, n_states: int, n_components: int, n_features: int,
                 covariance_type: CovarianceType = "diag", reg_covar: float = 1e-6):
        super().__init__()
        if n_components < 1:
            raise ConfigError(f"n_components must be >= 1, got {n_components}")
        self.n_states, self.n_components, self.n_features = n_states, n_components, n_features
        self.weight_logits = nn.Parameter(torch.zeros(n_states, n_components))
        self.components = Gaussians((n_states, n_components), n_features, covariance_type, reg_covar)

    def log_weights(self) -> Tensor:
        """(K, M) log mixture weights."""
        return torch.log_softmax(self.weight_logits, dim=-1)

    @torch.no_grad()
    def set_parameters(self, weights: Tensor, means: Tensor, covariances: Tensor) -> None:
        """Set weights (K, M), means (K, M, D) and covariances (K, M, D) or (K, M, D, D)."""
        self.weight_logits.copy_(torch.as_tensor(weights, dtype=self.weight_logits.dtype).log())
        self.components.set_parameters(means, covariances)

    def prepare(self, observations: Tensor, mask: Tensor) -> Tensor:
        return _prepare_vectors(observations, mask, self.n_features)

    def _joint(self, observations: Tensor) -> Tensor:
        return self.log_weights() + self.components.log_density(observations)   # (B, T, K, M)

    def log_prob(self, observations: Tensor) -> Tensor:
        return torch.logsumexp(self._joint(observations), dim=-1)

    def statistics(self, observations: Tensor, weights: Tensor) -> dict[str, Tensor]:
        responsibilities = torch.softmax(self._joint(observations), dim=-1) * weights[..., None]
        return self.components.statistics(observations, responsibilities)

    @torch.no_grad()
    def update(self, statistics: dict[str, Tensor]) -> None:
        weight = statistics["weight"]                                       # (K, M)
        total = weight.sum(-1, keepdim=True)
        self.weight_logits.copy_(torch.where(total > 0, (weight / total).log(), self.weight_logits))
        self.components.update(statistics)

    def sample(self, states: Tensor, generator: torch.Generator | None = None) -> Tensor:
        component = torch.multinomial(self.log_weights().exp()[states.flatten()], 1, generator=generator)[:, 0]
        flat = self.components.draw(states.flatten() * self.n_components + component, generator)
        return flat.view(*states.shape, self.n_features)


def _check_shape(observations: Tensor, mask: Tensor, event_shape: tuple[int, ...]) -> None:
    expected = (*mask.shape, *event_shape)
    if tuple(observations.shape) != expected:
        raise DataError(
            f"observations have shape {tuple(observations.shape)} but the mask holds {mask.shape[0]} "
            f"sequences of {mask.shape[1]} positions, so they should have shape {expected}"
        )


def _prepare_vectors(observations: Tensor, mask: Tensor, n_features: int) -> Tensor:
    """Check (B, T, D) real-valued observations and zero them at padding."""
    if not observations.dtype.is_floating_point:
        raise DataError(f"Gaussian observations must be floating point, got {observations.dtype}")
    _check_shape(observations, mask, (n_features,))
    bad = (~torch.isfinite(observations).all(-1) & mask).nonzero()
    if len(bad):
        sequence, position = bad[0].tolist()
        raise DataError(f"observation at position {position} of sequence {sequence} is not finite (NaN or inf)")
    return observations.masked_fill(~mask[..., None], 0)


def _flatten_positions(observations: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """(B, T, ...) observations and weights as rows (B T, ...) in one order; time-major when the
    weights are stored time-major (as the chain engine returns them), so they are not copied."""
    if not weights.is_contiguous() and weights.transpose(0, 1).is_contiguous():
        return observations.transpose(0, 1).flatten(0, 1), weights.transpose(0, 1).flatten(0, 1)
    return observations.flatten(0, 1), weights.flatten(0, 1)
