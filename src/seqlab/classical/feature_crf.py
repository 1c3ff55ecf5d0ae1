"""Feature-based linear-chain CRF tagger (Lafferty, McCallum and Pereira 2001), fitted by L-BFGS.

Each position t of a sentence fires a set of hashed binary features ``phi(x, t)``
(``seqlab.classical.tagging_features``; which ones, the config's ``templates`` say, in the
template language of ``seqlab.classical.feature_templates``). With a weight matrix W (n_buckets, K), the emission
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
gradient from the data, so the penalties keep it at exactly zero. Each evaluation of F is one
forward-backward over the corpus and two bag sums (``PenalisedLikelihood``); sentences are
grouped by length (``words_per_chunk``) so that the chains are padded little.

Storage: W stays dense in memory (``feature_weights`` is indexed by bucket), but the state dict,
hence the checkpoint, holds only its non-zero rows and their buckets (``feature_buckets``,
``feature_rows``): on EWT 4.8 MB instead of the 71 MB of the (2^20, 17) table. Dense state
dicts of older checkpoints still load.

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

from seqlab.classical.crf import LinearChainCRF
from seqlab.classical.feature_templates import parse_templates
from seqlab.classical.tagging_features import FeatureHasher, HashedFeatures
from seqlab.errors import CheckpointError, ConfigError, DataError
from seqlab.ops.chain import chain_posteriors
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
        templates: the features, as a template set (``seqlab.classical.feature_templates``), e.g.
            ``"bias w[0] suffix3[0] w[-1]|w[0]"``; None: the built-in features
            (``DEFAULT_TEMPLATES``).
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
    templates: str | None = None

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
        if self.templates is not None:
            if not isinstance(self.templates, str):
                raise ConfigError(f"FeatureCRFConfig.templates must be a template set (a string) or None, "
                                  f"got {type(self.templates).__name__}")
            try:
                parse_templates(self.templates)
            except ConfigError as error:
                raise ConfigError(f"FeatureCRFConfig.templates: {error}") from None


@register("crf", task="tag", config=FeatureCRFConfig, trains="fit")
class FeatureCRFTagger(nn.Module):
    """Feature-based linear-chain CRF tagger: hashed word features, L-BFGS/OWL-QN fit (crfsuite's objective).

    Parameters: ``feature_weights`` W (n_buckets, K) and the chain's ``crf`` scores. Before
    ``fit`` every weight is zero, crfsuite's starting point. The state dict stores W sparsely
    (see the module docstring).
    """

    def __init__(self, config: FeatureCRFConfig):
        super().__init__()
        self.config = config
        self.feature_weights = nn.Parameter(torch.zeros(config.n_buckets, config.n_tags))
        self.crf = LinearChainCRF(config.n_tags)
        with torch.no_grad():
            for scores in self.crf.parameters():
                scores.zero_()
        self.hasher = FeatureHasher(config.n_buckets, config.templates)     # a cache of hashed words, not state

    # ---- sparse storage: the state dict holds the non-zero rows of W and their buckets --------

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        """W (n_buckets, K) is stored as ``feature_buckets`` (R,) int64, the sorted buckets whose
        row has a non-zero weight, and ``feature_rows`` (R, K), those rows; every other row is zero."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        weights = destination.pop(prefix + "feature_weights")
        buckets = weights.detach().ne(0).any(1).nonzero()[:, 0]
        destination[prefix + "feature_buckets"] = buckets
        destination[prefix + "feature_rows"] = weights.detach()[buckets]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Reads the sparse form (``_save_to_state_dict``) or the dense ``feature_weights`` of older checkpoints."""
        buckets_key, rows_key = prefix + "feature_buckets", prefix + "feature_rows"
        if buckets_key in state_dict or rows_key in state_dict:
            error_messages = args[-1]
            try:
                state_dict[prefix + "feature_weights"] = self._dense_weights(state_dict.pop(buckets_key, None),
                                                                             state_dict.pop(rows_key, None))
            except CheckpointError as error:
                error_messages.append(str(error))
                return
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _dense_weights(self, buckets: Tensor | None, rows: Tensor | None) -> Tensor:
        n_buckets, n_tags = self.feature_weights.shape
        if buckets is None or rows is None:
            raise CheckpointError("the feature CRF's weights need both feature_buckets and feature_rows")
        if buckets.dim() != 1 or buckets.dtype != torch.int64 or tuple(rows.shape) != (len(buckets), n_tags):
            raise CheckpointError(f"feature_buckets must be (R,) int64 and feature_rows (R, {n_tags}), got "
                                  f"{buckets.dtype} {tuple(buckets.shape)} and {tuple(rows.shape)}")
        if len(buckets) and (int(buckets.min()) < 0 or int(buckets.max()) >= n_buckets
                             or bool((buckets[1:] <= buckets[:-1]).any())):
            raise CheckpointError(f"feature_buckets must be increasing bucket ids in [0, {n_buckets})")
        return rows.new_zeros(n_buckets, n_tags).index_copy_(0, buckets.to(rows.device), rows)

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


class _Chunk(NamedTuple):
    """B sentences of similar length padded to T, stored time-major: position (b, t) is padded
    row ``first_row + t * B + b`` of the emissions."""

    first_row: int
    mask: Tensor         # (B, T) bool
    last_rows: Tensor    # (B,) int64 the row of each sentence's last position, within the chunk


class PenalisedLikelihood:
    """F(theta) = -sum_n log p(y_n | x_n) + c2 ||theta||^2 over a training set, and its gradient.

    theta is the flat vector of the rows of W that training features use, (A, K) row after row,
    then the chain's start, transition and end scores; the L1 term is the optimiser's (OWL-QN).
    Calling the objective with theta returns ``(F, dF/dtheta)``; ``store(theta)`` writes theta
    into the model.

    The score of a tag path is linear in theta, ``score(y_n) = theta . c(x_n, y_n)`` with c the
    counts of every (feature, tag), start, transition and end along the path, so

        F(theta) = sum_n log Z(x_n) - theta . c_gold + c2 ||theta||^2
        dF/dtheta = sum_n E_{p(y | x_n)}[c(x_n, y)] - c_gold + 2 c2 theta

    (Lafferty et al. 2001; Sutton and McCallum 2012, eq. 5.7): the gold counts ``c_gold`` are
    counted once, and every evaluation runs one forward-backward (``chain_posteriors``) for
    log Z and the expected counts: the expected (feature, tag) counts are ``X^T gamma``, where
    X (P, A) is the 0/1 incidence of padded positions and features and gamma (P, K) the
    posterior marginals; both that product and the emissions ``X W`` are one ``embedding_bag``
    over the whole corpus.

    Args:
        model: the tagger whose parameters are fitted (its dtype and device are the computation's).
        sentences: S sentences of words.
        tags: their tag ids.
    """

    def __init__(self, model: FeatureCRFTagger, sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[int]]):
        self.model = model
        n_tags = model.config.n_tags
        features = model.hasher(sentences)
        self.active_buckets, renumbered = torch.unique(features.buckets, return_inverse=True)
        gold = torch.tensor([t for row in tags for t in row])                              # (N,)
        self.chunks, row_of_position = _length_chunks(features.lengths, model.config.words_per_chunk)
        n_rows = sum(chunk.mask.numel() for chunk in self.chunks)
        counts = torch.diff(features.offsets, append=torch.tensor([len(renumbered)]))
        row_counts = torch.zeros(n_rows, dtype=torch.long).index_put_((row_of_position,), counts)
        # Each position's features, moved to its padded row (a stable sort keeps their order).
        order = torch.argsort(torch.repeat_interleave(row_of_position, counts), stable=True)
        incidence = Incidence.build(renumbered[order], torch.cumsum(row_counts, 0) - row_counts,
                                    len(self.active_buckets))
        # c_gold: (feature, tag) pairs, start, transition and end counts of the gold paths, as
        # indices into theta and their counts.
        pair = renumbered * n_tags + torch.repeat_interleave(gold, counts)
        starts = torch.cumsum(features.lengths, 0) - features.lengths
        ends = starts + features.lengths - 1
        offset = len(self.active_buckets) * n_tags
        following = torch.ones(len(gold), dtype=torch.bool)
        following[starts] = False
        transition = gold[torch.nonzero(following)[:, 0] - 1] * n_tags + gold[following]
        # theta's tail follows the order of model.crf.parameters()
        chain_offsets = {name: offset + sum(p.numel() for p in list(model.crf.parameters())[:i])
                         for i, (name, _) in enumerate(model.crf.named_parameters())}
        gold_entries = torch.cat([pair, chain_offsets["start_scores"] + gold[starts],
                                  chain_offsets["transition_scores"] + transition, chain_offsets["end_scores"] + gold[ends]])
        self.gold_entries, gold_counts = torch.unique(gold_entries, return_counts=True)
        device, dtype = model.feature_weights.device, model.feature_weights.dtype
        self.incidence = Incidence(*(part.to(device) for part in incidence))
        self.chunks = [_Chunk(c.first_row, c.mask.to(device), c.last_rows.to(device)) for c in self.chunks]
        self.active_buckets = self.active_buckets.to(device)
        self.gold_entries = self.gold_entries.to(device)
        self.gold_counts = gold_counts.to(device, torch.float64)
        self.gold_gradient = torch.zeros(offset + sum(p.numel() for p in model.crf.parameters()), dtype=dtype,
                                         device=device).index_put_((self.gold_entries,), self.gold_counts.to(dtype))
        self.n_rows = n_rows

    def initial(self) -> Tensor:
        weights = self.model.feature_weights.detach()[self.active_buckets]
        return torch.cat([weights.flatten(), *(p.detach().flatten() for p in self.model.crf.parameters())])

    @torch.no_grad()
    def __call__(self, theta: Tensor) -> tuple[float, Tensor]:
        n_weights = len(self.active_buckets) * self.model.config.n_tags
        weights = theta[:n_weights].view(len(self.active_buckets), -1)                      # (A, K)
        self._load_chain(theta[n_weights:])
        start, transitions, end = self.model.crf.chain_scores()
        emissions = F.embedding_bag(self.incidence.columns, weights, self.incidence.row_offsets, mode="sum")  # (P, K)
        marginals = torch.empty_like(emissions)                                            # gamma (P, K)
        expected_start, expected_transitions, expected_end = (torch.zeros_like(s) for s in (start, transitions, end))
        log_partition = 0.0
        for chunk in self.chunks:
            rows = slice(chunk.first_row, chunk.first_row + chunk.mask.numel())
            batch, length = chunk.mask.shape
            chunk_emissions = emissions[rows].view(length, batch, -1).transpose(0, 1)      # (B, T, K)
            posteriors = chain_posteriors(start, transitions, chunk_emissions, chunk.mask, end)
            unary = posteriors.unary.transpose(0, 1)                                      # (T, B, K)
            marginals[rows].view(length, batch, -1).copy_(unary)
            log_partition += float(posteriors.log_partition.sum(dtype=torch.float64))
            expected_start += unary[0].sum(0)
            expected_transitions += posteriors.pairwise
            expected_end += marginals[rows][chunk.last_rows].sum(0)
        expected = F.embedding_bag(self.incidence.rows, marginals, self.incidence.column_offsets, mode="sum")  # (A, K)
        chain = {"start_scores": expected_start, "transition_scores": expected_transitions, "end_scores": expected_end}
        gradient = torch.cat([expected.flatten(), *(chain[name].flatten() for name, _ in self.model.crf.named_parameters())])
        gradient.sub_(self.gold_gradient).add_(theta, alpha=2 * self.model.config.c2)
        gold_score = float(theta[self.gold_entries].double() @ self.gold_counts)
        # ||theta||^2: each row's norm in theta's dtype, their squares summed in float64.
        squares = (float(torch.linalg.vector_norm(weights, dim=1).double().square().sum())
                   + float(theta[n_weights:].double().square().sum()))
        return log_partition - gold_score + self.model.config.c2 * squares, gradient

    @torch.no_grad()
    def store(self, theta: Tensor) -> None:
        """Write theta into the model: the active rows of W and the chain's scores."""
        n_weights = len(self.active_buckets) * self.model.config.n_tags
        self._load_chain(theta[n_weights:])
        self.model.feature_weights.zero_()
        self.model.feature_weights[self.active_buckets] = theta[:n_weights].view(len(self.active_buckets), -1)

    @torch.no_grad()
    def _load_chain(self, scores: Tensor) -> None:
        # A copy, not torch's vector_to_parameters, which would make the parameters views of theta.
        parameters = list(self.model.crf.parameters())
        for parameter, values in zip(parameters, scores.split([p.numel() for p in parameters])):
            parameter.copy_(values.view_as(parameter))


def _length_chunks(lengths: Tensor, words_per_chunk: int) -> tuple[list[_Chunk], Tensor]:
    """Sentences sorted by length, cut into chunks of at most ``words_per_chunk`` padded
    positions (or one sentence), and the padded row of each of the N positions (time-major
    within a chunk, see ``_Chunk``)."""
    starts = torch.cumsum(lengths, 0) - lengths
    groups, current = [], []
    for sentence in torch.argsort(lengths, stable=True).tolist():
        if current and (len(current) + 1) * int(lengths[sentence]) > words_per_chunk:
            groups.append(current)
            current = []
        current.append(sentence)
    groups.append(current)
    chunks, row_of_position, first_row = [], torch.empty(int(lengths.sum()), dtype=torch.long), 0
    for members in map(torch.tensor, groups):
        batch, longest = len(members), int(lengths[members].max())
        mask = torch.arange(longest) < lengths[members, None]                              # (B, T)
        positions = starts[members, None] + torch.arange(longest)                           # (B, T)
        row = torch.arange(longest) * batch + torch.arange(batch)[:, None]                  # (B, T) time-major
        row_of_position[positions[mask]] = first_row + row[mask]
        chunks.append(_Chunk(first_row, mask, (lengths[members] - 1) * batch + torch.arange(batch)))
        first_row += mask.numel()
    return chunks, row_of_position


def _to(features: HashedFeatures, device: torch.device) -> HashedFeatures:
    return HashedFeatures(*(tensor.to(device) for tensor in features))
