"""Feature-based linear-chain CRF tagger (Lafferty, McCallum and Pereira 2001), fitted by L-BFGS.

Each position t of a sentence fires a set of hashed binary features ``phi(x, t)``
(``seqlab.classical.tagging_features``). With a weight matrix W (n_buckets, K), the emission
score of tag k at t is

    e_t(k) = sum_{f in phi(x, t)} W[f, k]

and the tag path ``y`` of sentence x has ``p(y | x) = exp(score(y)) / Z(x)`` with the chain
score of ``seqlab.classical.crf.LinearChainCRF`` (start, transition and end scores over e).

Training minimises, like crfsuite's ``lbfgs`` trainer (Okazaki 2007), the negative
log-likelihood summed (not averaged) over the training sentences plus penalties on every weight
(W and the start, transition and end scores alike):

    F(theta) = -sum_n log p(y_n | x_n) + c1 ||theta||_1 + c2 ||theta||_2^2

by L-BFGS, or OWL-QN when ``c1 > 0`` (``seqlab.optim.owlqn``), from theta = 0. The same c1
and c2 thus mean the same thing here as in crfsuite. Two differences from crfsuite: a weight
exists for every (bucket, tag) pair, not only for pairs seen in training (crfsuite's
``feature.possible_states``), and the chain has start and end scores.

Only the buckets some training feature falls into are optimised: every other row of W has zero
gradient from the data, so the penalties keep it at exactly zero. Sentences are grouped by
length (``words_per_chunk``) so that the chains are padded little.

Shapes: N positions (words) of S sentences, B sentences of at most T words, K tags.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, NamedTuple, Self, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector

from seqlab.classical.crf import LinearChainCRF
from seqlab.classical.tagging_features import FeatureHasher, HashedFeatures
from seqlab.errors import ConfigError, DataError
from seqlab.optim.owlqn import MinimizeResult, minimize
from seqlab.registry import register


@dataclass(frozen=True, kw_only=True)
class FeatureCRFConfig:
    """Feature CRF tagger: hashing, penalties and L-BFGS settings (crfsuite's names where it has them).

    The defaults (elastic net c1 = c2 = 0.1, 100 iterations) scored best on EWT's dev split
    among c2 in {0.1, 0.3, 1} alone and (c1, c2) in {(0.1, 0.1), (0.3, 0.05)}; 200 iterations
    did no better.

    Attributes:
        n_tags: K, the tag set size.
        n_buckets: rows of W; feature strings are hashed into this many buckets.
        c1: weight of the L1 penalty ``c1 ||theta||_1`` (OWL-QN when > 0).
        c2: weight of the L2 penalty ``c2 ||theta||^2``.
        max_iterations: L-BFGS iterations at most.
        epsilon: stop when ``||gradient|| / max(1, ||theta||) < epsilon``.
        period: the stalling test looks this many iterations back (0: no such test).
        delta: stop when F fell by less than this fraction over the last ``period`` iterations.
        n_memories: (s, y) pairs L-BFGS keeps.
        words_per_chunk: sentences of similar length are grouped into chunks of about this many
            padded positions, over which the forward algorithm runs at once.
    """

    n_tags: int
    n_buckets: int = 2**20
    c1: float = 0.1
    c2: float = 0.1
    max_iterations: int = 100
    epsilon: float = 1e-5
    period: int = 10
    delta: float = 1e-5
    n_memories: int = 6
    words_per_chunk: int = 16384

    def __post_init__(self) -> None:
        for name in ("n_tags", "n_buckets", "n_memories", "words_per_chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"FeatureCRFConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("c1", "c2", "epsilon", "delta"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"FeatureCRFConfig.{name} must be a finite number >= 0, got {value}")
        for name in ("max_iterations", "period"):
            if getattr(self, name) < 0:
                raise ConfigError(f"FeatureCRFConfig.{name} must be >= 0, got {getattr(self, name)}")


@register("crf", task="tag", config=FeatureCRFConfig, trains="fit")
class FeatureCRFTagger(nn.Module):
    """Feature-based linear-chain CRF tagger: hashed word features, L-BFGS/OWL-QN fit (crfsuite's objective).

    Parameters: ``feature_weights`` W (n_buckets, K) and the chain's ``crf`` scores. Before
    ``fit`` every weight is zero, crfsuite's starting point.
    """

    def __init__(self, config: FeatureCRFConfig):
        super().__init__()
        self.config = config
        self.feature_weights = nn.Parameter(torch.zeros(config.n_buckets, config.n_tags))
        self.crf = LinearChainCRF(config.n_tags)
        with torch.no_grad():
            for scores in self.crf.parameters():
                scores.zero_()
        self.hasher = FeatureHasher(config.n_buckets)     # a cache of hashed words, not state

    def emissions(self, features: HashedFeatures, weights: Tensor | None = None) -> Tensor:
        """(N, K) emission scores ``e_t(k) = sum_{f in phi(x, t)} W[f, k]`` of every position.

        ``weights`` replaces W (e.g. the rows of the active buckets, with ``features`` renumbered).
        """
        weights = self.feature_weights if weights is None else weights
        return F.embedding_bag(features.buckets, weights, features.offsets, mode="sum")

    def batch_emissions(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Padded emission scores (B, T, K) (0 at padding) of a ``TaggingBatch`` and its mask
        (B, T), both on the model's device; the scores are read from ``batch.words``."""
        if batch.words is None:
            raise DataError("the feature CRF reads the words themselves; give a TaggingBatch with words")
        features = self.hasher(batch.words)
        mask = batch.mask.to(self.feature_weights.device)
        emissions = self.emissions(_to(features, self.feature_weights.device))
        padded = emissions.new_zeros(*mask.shape, self.config.n_tags)                # (B, T, K)
        padded[mask] = emissions
        return padded, mask

    @torch.no_grad()
    def tag(self, batch: Any) -> Tensor:
        """Viterbi tags (B, T) of a ``TaggingBatch`` (read from ``batch.words``; 0 at padding)."""
        return self.crf.decode(*self.batch_emissions(batch))[0]

    def loss(self, batch: Any) -> Tensor:
        """Mean negative log-likelihood per word of the gold tags of a ``TaggingBatch``.

        ``sum_n -log p(y_n | x_n) / (number of real words)``, with ``log p(y | x) = score(y) - log Z(x)``
        of the chain over the hashed-feature emissions (``LinearChainCRF.log_likelihood``):
        the data term of F, divided by the words instead of summed, without the penalties.
        A scalar, differentiable in the weights.

        Raises:
            DataError: the batch has no words or no tags.
        """
        if batch.tags is None:
            raise DataError("the loss needs the gold tags; give a TaggingBatch with tags")
        emissions, mask = self.batch_emissions(batch)
        log_likelihood = self.crf.log_likelihood(emissions, batch.tags.to(mask.device), mask)    # (B,)
        return -log_likelihood.sum() / mask.sum()

    def fit(self, task: Any, *, progress: bool = False, deadline: float | None = None) -> Self:
        """Fit to ``task.splits["train"]`` by minimising F (see the module docstring) from zero.

        Args:
            task: a tagging task (``seqlab.tasks.tagging.Tagging``).
            progress: print F after every iteration to stderr.
            deadline: a ``time.monotonic()`` instant; the search stops at the first iteration
                that ends past it (after one iteration at least), keeping that iterate. None:
                no limit. The optimiser's other settings are the config's.
        Returns:
            self, fitted; ``self.fit_result`` (a ``MinimizeResult``) says how the search ended:
            ``self.fit_result.stopped_by`` is "converged", "stalled", "max_iterations",
            "line_search" or "deadline".
        """
        sentences = task.splits.get("train")
        if not sentences:
            raise DataError("the feature CRF needs training sentences")
        if len(task.vocabulary.tags) != self.config.n_tags:
            raise DataError(f"the task has {len(task.vocabulary.tags)} tags but the model was built for "
                            f"{self.config.n_tags}")
        tags = [task.vocabulary.tag_ids(s.tags, f"train sentence {i + 1}: ") for i, s in enumerate(sentences)]
        objective = PenalisedLikelihood(self, [s.words for s in sentences], tags)

        def report(iteration: int, value: float) -> None:
            print(f"crf iteration {iteration}: F = {value:.4f}", file=sys.stderr)

        config = self.config
        self.fit_result: MinimizeResult = minimize(
            objective, objective.initial(), c1=config.c1, memory=config.n_memories,
            max_iterations=config.max_iterations, epsilon=config.epsilon, past=config.period,
            delta=config.delta, callback=report if progress else None, deadline=deadline)
        objective.store(self.fit_result.x)
        return self


class Incidence(NamedTuple):
    """The 0/1 matrix X (P, A) of which position fires which feature, stored by rows and by columns.

    Attributes:
        columns, row_offsets: the features (columns) of each row, as an ``EmbeddingBag`` input.
        rows, column_offsets: the rows (positions) of each feature.
    """

    columns: Tensor
    row_offsets: Tensor
    rows: Tensor
    column_offsets: Tensor

    @classmethod
    def build(cls, columns: Tensor, row_offsets: Tensor, n_columns: int) -> Incidence:
        counts = torch.diff(row_offsets, append=torch.tensor([len(columns)]))
        row_of_entry = torch.repeat_interleave(torch.arange(len(row_offsets)), counts)
        by_column = torch.argsort(columns, stable=True)
        column_counts = torch.bincount(columns, minlength=n_columns)
        return cls(columns, row_offsets, row_of_entry[by_column], torch.cumsum(column_counts, 0) - column_counts)


class _IncidenceProduct(torch.autograd.Function):
    """``X @ weights`` (P, K) for an ``Incidence`` X; its gradient ``X^T @ grad`` is another bag sum."""

    @staticmethod
    def forward(ctx, weights: Tensor, incidence: Incidence) -> Tensor:
        ctx.incidence = incidence
        return F.embedding_bag(incidence.columns, weights, incidence.row_offsets, mode="sum")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        incidence = ctx.incidence
        return F.embedding_bag(incidence.rows, grad, incidence.column_offsets, mode="sum"), None


class _Chunk(NamedTuple):
    """B sentences of similar length padded to T: their rows of the padded emissions, tags, mask."""

    first_row: int
    tags: Tensor         # (B, T) int64, 0 at padding
    mask: Tensor         # (B, T) bool


class PenalisedLikelihood:
    """F(theta) = -sum_n log p(y_n | x_n) + c2 ||theta||^2 over a training set, and its gradient.

    theta is the flat vector of the rows of W that training features use, then the chain's
    start, transition and end scores; the L1 term is the optimiser's (OWL-QN). Calling the
    objective with theta returns ``(F, dF/dtheta)``; ``store(theta)`` writes theta into the model.

    The emissions of all chunks come from one product ``X W_active`` whose rows are the padded
    positions of the chunks one after another (padding fires no feature), so no gather is needed.

    Args:
        model: the tagger whose parameters are fitted (its dtype and device are the computation's).
        sentences: S sentences of words.
        tags: their tag ids.
    """

    def __init__(self, model: FeatureCRFTagger, sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[int]]):
        self.model = model
        features = model.hasher(sentences)
        self.active_buckets, renumbered = torch.unique(features.buckets, return_inverse=True)
        self.chunks, row_of_position = _length_chunks(features.lengths, torch.tensor([t for row in tags for t in row]),
                                                      model.config.words_per_chunk)
        n_rows = sum(chunk.mask.numel() for chunk in self.chunks)
        counts = torch.diff(features.offsets, append=torch.tensor([len(renumbered)]))
        row_counts = torch.zeros(n_rows, dtype=torch.long).index_put_((row_of_position,), counts)
        # Each position's features, moved to its padded row (a stable sort keeps their order).
        order = torch.argsort(torch.repeat_interleave(row_of_position, counts), stable=True)
        incidence = Incidence.build(renumbered[order], torch.cumsum(row_counts, 0) - row_counts,
                                    len(self.active_buckets))
        device = model.feature_weights.device
        self.incidence = Incidence(*(part.to(device) for part in incidence))
        self.chunks = [_Chunk(c.first_row, c.tags.to(device), c.mask.to(device)) for c in self.chunks]
        self.active_buckets = self.active_buckets.to(device)
        self.active_weights = nn.Parameter(model.feature_weights.detach()[self.active_buckets].clone())  # (A, K)
        self.parameters = [self.active_weights, *model.crf.parameters()]

    def initial(self) -> Tensor:
        return parameters_to_vector(self.parameters).detach().clone()

    def __call__(self, theta: Tensor) -> tuple[float, Tensor]:
        self._load(theta)
        for parameter in self.parameters:
            parameter.grad = None
        emissions = _IncidenceProduct.apply(self.active_weights, self.incidence)          # (P, K)
        log_likelihood = sum(
            self.model.crf.log_likelihood(emissions[c.first_row:c.first_row + c.mask.numel()].view(*c.mask.shape, -1),
                                          c.tags, c.mask).double().sum()
            for c in self.chunks)
        (-log_likelihood).backward()
        c2 = self.model.config.c2
        gradient = torch.cat([p.grad.flatten() for p in self.parameters]) + 2 * c2 * theta
        value = -log_likelihood.item() + c2 * torch.linalg.vector_norm(theta, dtype=torch.float64).item() ** 2
        return value, gradient

    @torch.no_grad()
    def store(self, theta: Tensor) -> None:
        """Write theta into the model: the active rows of W and the chain's scores."""
        self._load(theta)
        self.model.feature_weights.zero_()
        self.model.feature_weights[self.active_buckets] = self.active_weights

    @torch.no_grad()
    def _load(self, theta: Tensor) -> None:
        # A copy, not torch's vector_to_parameters, which would make the parameters views of theta.
        for parameter, values in zip(self.parameters, theta.split([p.numel() for p in self.parameters])):
            parameter.copy_(values.view_as(parameter))


def _length_chunks(lengths: Tensor, tags: Tensor, words_per_chunk: int) -> tuple[list[_Chunk], Tensor]:
    """Sentences sorted by length, cut into chunks of at most ``words_per_chunk`` padded
    positions (or one sentence), and the padded row of each of the N positions."""
    starts = torch.cumsum(lengths, 0) - lengths
    groups, current = [], []
    for sentence in torch.argsort(lengths, stable=True).tolist():
        if current and (len(current) + 1) * int(lengths[sentence]) > words_per_chunk:
            groups.append(current)
            current = []
        current.append(sentence)
    groups.append(current)
    chunks, row_of_position, first_row = [], torch.empty_like(tags), 0
    for members in map(torch.tensor, groups):
        longest = int(lengths[members].max())
        mask = torch.arange(longest) < lengths[members, None]                              # (B, T)
        positions = (starts[members, None] + torch.arange(longest))[mask]                  # row-major
        row_of_position[positions] = first_row + mask.flatten().nonzero()[:, 0]
        chunk_tags = torch.zeros(mask.shape, dtype=torch.long).masked_scatter_(mask, tags[positions])
        chunks.append(_Chunk(first_row, chunk_tags, mask))
        first_row += mask.numel()
    return chunks, row_of_position


def _to(features: HashedFeatures, device: torch.device) -> HashedFeatures:
    return HashedFeatures(*(tensor.to(device) for tensor in features))
