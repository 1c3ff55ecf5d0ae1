"""Linear-chain conditional random field over emission scores from any encoder.

For tags ``y = (y_0, ..., y_{L-1})`` of a sequence with emission scores ``e`` (B, T, K)
(Lafferty, McCallum and Pereira 2001; on a neural encoder, Collobert et al. 2011 and Lample
et al. 2016):

    score(y) = start[y_0] + sum_t e_t[y_t] + sum_{t>0} trans[y_{t-1}, y_t] + end[y_{L-1}]
    p(y | e) = exp(score(y)) / Z(e),   Z(e) = sum over all tag paths y' of exp(score(y'))

Training maximises ``log p(y | e) = score(y) - log Z(e)``; ``log Z`` is the forward algorithm
and its gradient, the posterior marginals, the backward algorithm (``seqlab.ops.chain``).
Decoding is Viterbi.

Hard constraints: a start, transition or end marked not allowed scores ``-inf``, so no path
through it has any probability: ``log Z`` sums over allowed paths only, Viterbi never returns a
forbidden path, and a gold path that breaks a constraint has log-likelihood ``-inf``.
``bio_constraints`` builds them from tag names (BIO: ``I-X`` only after ``B-X`` or ``I-X``).

Shapes: B sequences, T positions, K tags.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError, DataError
from seqlab.ops.chain import (chain_log_partition, chain_path_score, chain_posteriors, chain_viterbi,
                              check_chain_mask)


class TransitionConstraints(NamedTuple):
    """Which tags may start a sequence (K,), follow each tag (K, K) ``[previous, next]``, end it (K,)."""

    allowed_starts: Tensor
    allowed_transitions: Tensor
    allowed_ends: Tensor


def bio_constraints(tag_names: Sequence[str], scheme: Literal["BIO", "BIOES"] = "BIO") -> TransitionConstraints:
    """The constraints of a chunk tagging scheme, from tag names such as ``O``, ``B-PER``, ``I-PER``.

    BIO (IOB2; Ramshaw and Marcus 1995): ``I-X`` only after ``B-X`` or ``I-X``, so never first.
    BIOES adds ``E-X`` (ends a chunk) and ``S-X`` (a one-token chunk): inside a chunk
    (after ``B-X`` or ``I-X``) only ``I-X`` or ``E-X`` may follow; outside one, only ``O``,
    ``B-*`` or ``S-*``; a sequence starts and ends outside a chunk.

    Raises:
        ConfigError: an unknown scheme.
        DataError: a tag name that is not ``O`` or ``P-TYPE`` with a prefix P of the scheme.
    """
    if scheme not in ("BIO", "BIOES"):
        raise ConfigError(f"scheme must be 'BIO' or 'BIOES', got {scheme!r}")
    prefixes = tuple(scheme.replace("O", ""))                  # ("B", "I") or ("B", "I", "E", "S")
    parsed = []
    for index, name in enumerate(tag_names):
        prefix, _, kind = name.partition("-")
        if name != "O" and (prefix not in prefixes or not kind):
            raise DataError(f"tag {name!r} (index {index}) is not O or {'/'.join(prefixes)}-TYPE "
                            f"of the {scheme} scheme")
        parsed.append((prefix, kind))
    inside = [prefix in ("B", "I") for prefix, _ in parsed]      # a chunk is open after this tag
    continues = [prefix in ("I", "E") for prefix, _ in parsed]   # needs an open chunk of its type
    n_tags = len(parsed)
    transitions = torch.ones(n_tags, n_tags, dtype=torch.bool)
    for previous, (_, previous_kind) in enumerate(parsed):
        for following, (_, kind) in enumerate(parsed):
            if continues[following]:
                transitions[previous, following] = inside[previous] and previous_kind == kind
            elif scheme == "BIOES" and inside[previous]:
                transitions[previous, following] = False      # an open chunk must go on or end
    starts = torch.tensor([not c for c in continues])
    ends = torch.tensor([not i for i in inside]) if scheme == "BIOES" else torch.ones(n_tags, dtype=torch.bool)
    return TransitionConstraints(starts, transitions, ends)


class LinearChainCRF(nn.Module):
    """Linear-chain CRF layer: start, end and transition scores over emission scores (B, T, K).

    Args:
        n_tags: K.
        constraints: allowed starts, transitions and ends (``bio_constraints``); None allows all.
    """

    def __init__(self, n_tags: int, constraints: TransitionConstraints | None = None):
        super().__init__()
        if n_tags < 1:
            raise ConfigError(f"n_tags must be >= 1, got {n_tags}")
        self.n_tags = n_tags
        self.start_scores = nn.Parameter(torch.empty(n_tags).uniform_(-0.1, 0.1))
        self.end_scores = nn.Parameter(torch.empty(n_tags).uniform_(-0.1, 0.1))
        self.transition_scores = nn.Parameter(torch.empty(n_tags, n_tags).uniform_(-0.1, 0.1))
        if constraints is None:
            everything = torch.ones(n_tags, dtype=torch.bool)
            constraints = TransitionConstraints(everything, torch.ones(n_tags, n_tags, dtype=torch.bool), everything)
        for name, allowed, shape in zip(TransitionConstraints._fields, constraints,
                                        ((n_tags,), (n_tags, n_tags), (n_tags,))):
            if tuple(allowed.shape) != shape:
                raise ConfigError(f"{name} must have shape {shape} for {n_tags} tags, got {tuple(allowed.shape)}")
            self.register_buffer(name, allowed.to(torch.bool).clone())

    def chain_scores(self) -> tuple[Tensor, Tensor, Tensor]:
        """Start (K,), transition (K, K) and end (K,) scores, ``-inf`` where not allowed."""
        return (self.start_scores.masked_fill(~self.allowed_starts, float("-inf")),
                self.transition_scores.masked_fill(~self.allowed_transitions, float("-inf")),
                self.end_scores.masked_fill(~self.allowed_ends, float("-inf")))

    def forward(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B,) ``log p(tags | emissions)`` for tags (B, T); the training loss is its negative mean."""
        return self.log_likelihood(emissions, tags, mask)

    def log_likelihood(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B,) ``score(tags) - log Z`` for tags (B, T)."""
        emissions = self._check(emissions)
        mask = check_chain_mask(emissions, mask)
        start, transitions, end = self.chain_scores()                      # once, for both terms
        return (chain_path_score(start, transitions, emissions, self._check_tags(tags, mask), mask, end)
                - chain_log_partition(start, transitions, emissions, mask, end))

    def log_partition(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B,) ``log Z``: log-sum-exp of the scores of every allowed tag path."""
        start, transitions, end = self.chain_scores()
        return chain_log_partition(start, transitions, self._check(emissions), mask, end)

    def path_score(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B,) ``score(tags)`` of tag paths (B, T) (any value at padding)."""
        emissions = self._check(emissions)
        mask = check_chain_mask(emissions, mask)
        start, transitions, end = self.chain_scores()
        return chain_path_score(start, transitions, emissions, self._check_tags(tags, mask), mask, end)

    def decode(self, emissions: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Viterbi: the best allowed tags (B, T) (0 at padding) and their scores (B,)."""
        start, transitions, end = self.chain_scores()
        return chain_viterbi(start.detach(), transitions.detach(), self._check(emissions).detach(), mask,
                             end.detach())

    def marginals(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, T, K) ``p(y_t = k | emissions)``, zero at padding."""
        start, transitions, end = self.chain_scores()
        return chain_posteriors(start, transitions, self._check(emissions), mask, end).unary

    def _check(self, emissions: Tensor) -> Tensor:
        if emissions.dim() != 3 or emissions.shape[-1] != self.n_tags:
            raise DataError(f"emissions must have shape (B, T, {self.n_tags}), got {tuple(emissions.shape)}")
        return emissions

    def _check_tags(self, tags: Tensor, mask: Tensor) -> Tensor:
        if tuple(tags.shape) != tuple(mask.shape) or tags.dtype.is_floating_point or tags.dtype == torch.bool:
            raise DataError(f"tags must be integers of shape {tuple(mask.shape)}, got {tags.dtype} "
                            f"of shape {tuple(tags.shape)}")
        tags = tags.masked_fill(~mask, 0)
        outside = ((tags < 0) | (tags >= self.n_tags)).nonzero()
        if len(outside):
            sequence, position = outside[0].tolist()
            raise DataError(f"tag {int(tags[sequence, position])} at position {position} of sequence {sequence} "
                            f"is outside [0, {self.n_tags})")
        return tags.long()
