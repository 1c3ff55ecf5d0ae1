"""Hidden Markov models: inference, sampling, Baum-Welch EM and supervised estimation; and the
categorical HMM as a causal language model.

An HMM over K hidden states (Rabiner 1989) has

    p(s_0 = k) = pi_k,   p(s_t = j | s_{t-1} = i) = A_ij,   p(x_t | s_t = k) from an emission module

(``seqlab.classical.emissions``: categorical, Gaussian, Gaussian mixture). ``p(x)`` sums over
state paths of a linear chain (``seqlab.ops.chain``) with ``init = log pi``, ``trans = log A``,
``emit_t = log p(x_t | s)``: the forward algorithm gives ``log p(x)``, forward-backward the
posteriors, max-product the Viterbi path. Everything is batched over sequences of different
lengths (padded (B, T, ...) observations and a (B, T) mask); the only Python loops are over time
(and over batches of sequences, when EM is asked to bound its memory).

Baum-Welch (Baum et al. 1970; Rabiner 1989, eqs. 40a-c) over a batch of sequences: the E-step
computes ``gamma_t(k) = p(s_t = k | x)`` and ``xi_t(i, j) = p(s_{t-1} = i, s_t = j | x)``, the
M-step sets

    pi_k = sum_b gamma^b_0(k) / B,   A_ij = sum_{b,t} xi^b_t(i, j) / sum_{b,t,j'} xi^b_t(i, j')

and the emission's own estimates, with ``pseudo_count`` added to every expected count (the MAP
estimate under a symmetric Dirichlet prior). With ``pseudo_count = 0`` (and no covariance
regularisation) no iteration lowers the log-likelihood. Supervised estimation is the same M-step
with one-hot posteriors: relative frequencies of observed states.

Shapes: B sequences, T positions, K states, V symbols (``vocab_size``), D features.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Self, Sequence

import torch
from torch import Tensor, nn

from seqlab.classical.emissions import CategoricalEmission
from seqlab.contracts import CausalLM
from seqlab.errors import ConfigError, DataError
from seqlab.ops.chain import (ChainPosteriors, EmissionTable, chain_forward, chain_log_partition, chain_posteriors,
                              chain_viterbi, log_matmul_exp)
from seqlab.registry import register

Statistics = dict[str, Any]   # tensors, and the emission's own dict under "emission"


class HiddenMarkovModel(nn.Module):
    """Hidden Markov model with a pluggable emission distribution (Rabiner 1989).

    Args:
        emission: an emission module of ``seqlab.classical.emissions`` (it fixes K).
        pseudo_count: added to the expected start and transition counts in the M-step.
    """

    def __init__(self, emission: nn.Module, pseudo_count: float = 0.0):
        super().__init__()
        if pseudo_count < 0:
            raise ConfigError(f"pseudo_count must be >= 0, got {pseudo_count}")
        self.n_states, self.emission, self.pseudo_count = emission.n_states, emission, pseudo_count
        self.init_logits = nn.Parameter(torch.zeros(self.n_states))
        transitions = torch.distributions.Dirichlet(torch.ones(self.n_states)).sample((self.n_states,))
        self.transition_logits = nn.Parameter(transitions.log())
        self.history: list[float] = []            # mean log-likelihood per position, each EM iteration
        self.stopped_by: str | None = None        # why the last ``fit`` ended (None: never fitted)

    def log_init(self) -> Tensor:
        """(K,) ``log pi``."""
        return torch.log_softmax(self.init_logits, dim=-1)

    def log_transitions(self) -> Tensor:
        """(K, K) ``log A``, rows summing to one in probability."""
        return torch.log_softmax(self.transition_logits, dim=-1)

    @torch.no_grad()
    def set_parameters(self, start_probs: Tensor | None = None,
                       transition_probs: Tensor | None = None) -> HiddenMarkovModel:
        """Set ``pi`` (K,) and/or ``A`` (K, K) from probabilities; returns ``self``."""
        for logits, probs in ((self.init_logits, start_probs), (self.transition_logits, transition_probs)):
            if probs is not None:
                logits.copy_(torch.as_tensor(probs, dtype=logits.dtype).log())
        return self

    def log_emissions(self, observations: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Checked emission scores ``log p(x_t | s_t = k)`` (B, T, K), the mask (B, T) and the
        observations with padding made harmless.

        Raises:
            DataError: naming the sequence and position of a symbol out of range or a NaN, or
                saying how the mask and observations disagree.
        """
        log_emit, mask, observations = self._chain_emissions(observations, mask)
        return (log_emit.scores() if isinstance(log_emit, EmissionTable) else log_emit), mask, observations

    def _chain_emissions(self, observations: Tensor,
                         mask: Tensor | None) -> tuple[Tensor | EmissionTable, Tensor, Tensor]:
        """As ``log_emissions``, except that an emission over a finite alphabet gives its scores as
        a table (``EmissionTable``): the chain engine then exponentiates V rows, not B T positions."""
        mask = _mask_for(observations, mask)
        observations = self.emission.prepare(observations, mask)
        if hasattr(self.emission, "log_prob_table"):
            return self.emission.log_prob_table(observations), mask, observations
        return self.emission.log_prob(observations), mask, observations

    def log_likelihood(self, observations: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B,) ``log p(x)`` of each sequence, by the forward algorithm; differentiable."""
        log_emit, mask, _ = self._chain_emissions(observations, mask)
        return chain_log_partition(self.log_init(), self.log_transitions(), log_emit, mask)

    def forward(self, observations: Tensor, mask: Tensor | None = None) -> Tensor:
        """Calling the module gives ``log_likelihood`` (B,)."""
        return self.log_likelihood(observations, mask)

    @torch.no_grad()
    def forward_backward(self, observations: Tensor, mask: Tensor | None = None) -> ChainPosteriors:
        """``log p(x)`` (B,), posteriors ``gamma`` (B, T, K) and expected transitions (K, K)."""
        log_emit, mask, _ = self._chain_emissions(observations, mask)
        return chain_posteriors(self.log_init(), self.log_transitions(), log_emit, mask)

    def posteriors(self, observations: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, T, K) ``p(s_t = k | x)``, zero at padding."""
        return self.forward_backward(observations, mask).unary

    @torch.no_grad()
    def viterbi(self, observations: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The most probable state paths (B, T) (0 at padding) and their ``log p(x, s)`` (B,)."""
        log_emit, mask, _ = self._chain_emissions(observations, mask)
        return chain_viterbi(self.log_init(), self.log_transitions(), log_emit, mask)

    @torch.no_grad()
    def sample(self, n_sequences: int, length: int,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``n_sequences`` sequences of ``length``: states (B, T) and observations (B, T[, D])."""
        if n_sequences < 1 or length < 1:
            raise ConfigError(f"need n_sequences >= 1 and length >= 1, got {n_sequences} and {length}")
        init, transitions = self.log_init().exp(), self.log_transitions().exp()
        state = torch.multinomial(init.expand(n_sequences, -1), 1, replacement=True, generator=generator)[:, 0]
        states = [state]
        for _ in range(length - 1):
            state = torch.multinomial(transitions[state], 1, generator=generator)[:, 0]
            states.append(state)
        states = torch.stack(states, dim=1)
        return states, self.emission.sample(states, generator)

    @torch.no_grad()
    def expected_statistics(self, observations: Tensor, mask: Tensor | None = None) -> tuple[Statistics, Tensor]:
        """The E-step: expected counts (additive over batches) and ``log p(x)`` (B,)."""
        log_emit, mask, observations = self._chain_emissions(observations, mask)
        posteriors = chain_posteriors(self.log_init(), self.log_transitions(), log_emit, mask)
        statistics = {
            "start": posteriors.unary[:, 0].sum(0),                                     # (K,)
            "transitions": posteriors.pairwise,                                         # (K, K)
            "emission": self.emission.statistics(observations, posteriors.unary),
        }
        return statistics, posteriors.log_partition

    @torch.no_grad()
    def maximize(self, statistics: Statistics) -> None:
        """The M-step: the parameters that maximise the expected complete-data log-likelihood."""
        for logits, counts in ((self.init_logits, statistics["start"]),
                               (self.transition_logits, statistics["transitions"])):
            counts = counts + self.pseudo_count
            total = counts.sum(-1, keepdim=True)
            logits.copy_(torch.where(total > 0, (counts / total).log(), logits))   # no data: keep
        self.emission.update(statistics["emission"])

    @torch.no_grad()
    def em_step(self, observations: Tensor, mask: Tensor | None = None,
                batch_size: int | None = None) -> Tensor:
        """One Baum-Welch iteration over all sequences, E-step in batches of ``batch_size``
        sequences (all at once by default); returns the total ``log p(x)`` before the update."""
        total, log_likelihood = None, observations.new_zeros((), dtype=self.init_logits.dtype)
        for rows in _batches(observations.shape[0], batch_size):
            statistics, batch_log_likelihood = self.expected_statistics(
                observations[rows], None if mask is None else mask[rows])
            total = statistics if total is None else _add(total, statistics)
            log_likelihood = log_likelihood + batch_log_likelihood.sum()
        self.maximize(total)
        return log_likelihood

    def fit(self, observations: Tensor, mask: Tensor | None = None, *, n_iter: int = 10,
            tol: float = 1e-4, batch_size: int | None = None, deadline: float | None = None,
            callback: Callable[[int, float], None] | None = None) -> HiddenMarkovModel:
        """Baum-Welch EM from the current parameters; returns ``self``.

        EM stops after ``n_iter`` iterations, when the mean log-likelihood per position gains
        less than ``tol`` nats from one iteration to the next, or when an iteration ends at or
        after ``deadline`` (a ``time.monotonic()`` instant; None: no limit). Every stop keeps
        the parameters of the last completed M-step. ``self.history`` holds the mean
        log-likelihood per position before each iteration, and ``self.stopped_by`` says which
        rule ended EM: "converged", "max_iterations" or "deadline". ``callback`` is called
        after every iteration with (iteration, mean log-likelihood before it).
        """
        n_positions = observations.shape[0] * observations.shape[1] if mask is None else int(mask.sum())
        self.history, self.stopped_by = [], "max_iterations"
        for iteration in range(1, n_iter + 1):
            self.history.append(float(self.em_step(observations, mask, batch_size)) / max(n_positions, 1))
            if callback is not None:
                callback(iteration, self.history[-1])
            if len(self.history) > 1 and self.history[-1] - self.history[-2] < tol:
                self.stopped_by = "converged"
                break
            if deadline is not None and iteration < n_iter and time.monotonic() >= deadline:
                self.stopped_by = "deadline"
                break
        return self

    @torch.no_grad()
    def fit_supervised(self, observations: Tensor, states: Tensor, mask: Tensor | None = None) -> HiddenMarkovModel:
        """Estimate every parameter from observations with known states (B, T); returns ``self``.

        Relative frequencies of starts, transitions and emissions (plus ``pseudo_count``): the
        M-step with posteriors that are one-hot at the given states.
        """
        _, mask, observations = self._chain_emissions(observations, mask)
        if tuple(states.shape) != tuple(mask.shape) or states.dtype.is_floating_point:
            raise DataError(f"states must be integers of shape {tuple(mask.shape)}, got {states.dtype} "
                            f"of shape {tuple(states.shape)}")
        states = states.to(mask.device).masked_fill(~mask, 0)
        outside = ((states < 0) | (states >= self.n_states)).nonzero()
        if len(outside):
            sequence, position = outside[0].tolist()
            raise DataError(f"state {int(states[sequence, position])} at position {position} of sequence "
                            f"{sequence} is outside [0, {self.n_states})")
        k = self.n_states
        dtype = self.init_logits.dtype
        pairs = (states[:, :-1] * k + states[:, 1:])[mask[:, 1:]]
        one_hot = nn.functional.one_hot(states, k).to(dtype) * mask[..., None]
        self.maximize({
            "start": torch.bincount(states[:, 0], minlength=k).to(dtype),
            "transitions": torch.bincount(pairs, minlength=k * k).view(k, k).to(dtype),
            "emission": self.emission.statistics(observations, one_hot),
        })
        return self


def stack_sequences(sequences: Sequence[Tensor], padding_value: float = 0) -> tuple[Tensor, Tensor]:
    """Pad sequences of different lengths, (L_b, ...) each, into (B, T, ...) and a (B, T) mask."""
    for index, sequence in enumerate(sequences):
        if len(sequence) == 0:
            raise DataError(f"sequence {index} is empty; every sequence needs at least one element")
    padded = nn.utils.rnn.pad_sequence(list(sequences), batch_first=True, padding_value=padding_value)
    lengths = torch.tensor([len(s) for s in sequences], device=padded.device)
    return padded, torch.arange(padded.shape[1], device=padded.device) < lengths[:, None]


def _mask_for(observations: Tensor, mask: Tensor | None) -> Tensor:
    if observations.dim() < 2:
        raise DataError(f"observations must be batched as (B, T) or (B, T, D), got shape {tuple(observations.shape)}")
    if observations.shape[1] == 0:
        raise DataError("the batch has no positions (T = 0); every sequence needs at least one element")
    if mask is None:
        return torch.ones(observations.shape[:2], dtype=torch.bool, device=observations.device)
    if tuple(mask.shape) != tuple(observations.shape[:2]):
        raise DataError(f"mask has shape {tuple(mask.shape)} but the observations hold {observations.shape[0]} "
                        f"sequences of {observations.shape[1]} positions")
    return mask.to(device=observations.device, dtype=torch.bool)


def _batches(n_sequences: int, batch_size: int | None) -> list[slice]:
    size = n_sequences if batch_size is None else batch_size
    if size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    return [slice(start, start + size) for start in range(0, n_sequences, size)]


def _add(first: Statistics, second: Statistics) -> Statistics:
    return {key: _add(value, second[key]) if isinstance(value, dict) else value + second[key]
            for key, value in first.items()}


# --- The categorical HMM as a causal language model ---------------------------------------------


@dataclass(frozen=True, kw_only=True)
class HMMConfig:
    """A hidden Markov model language model, fitted by Baum-Welch EM.

    Attributes:
        vocab_size: number of token ids (the emission's symbols).
        n_states: hidden states K.
        n_iter: at most this many EM iterations in ``fit``.
        tol: EM stops once the mean log-likelihood per training token gains less than this (nats).
        chunk_length: the training tokens are cut into sequences of this length, each starting
            from ``pi``, and fitted together as one batch.
        pseudo_count: added to every expected count in the M-step (a Dirichlet prior), so that
            no probability is zero and tokens unseen in training keep a finite loss.
        seed: seed of the random initialisation.
    """

    vocab_size: int
    n_states: int = 32
    n_iter: int = 20
    tol: float = 1e-4
    chunk_length: int = 128
    pseudo_count: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        for field in ("vocab_size", "n_states", "n_iter", "chunk_length"):
            if getattr(self, field) < 1:
                raise ConfigError(f"HMMConfig.{field} must be >= 1, got {getattr(self, field)}")
        if self.pseudo_count < 0 or self.tol < 0:
            raise ConfigError(f"HMMConfig.pseudo_count and tol must be >= 0, got {self.pseudo_count} and {self.tol}")


@register("hmm", task="lm", config=HMMConfig, trains="fit")
class HMMLanguageModel(CausalLM):
    """Hidden Markov model language model (categorical emissions), fitted by Baum-Welch EM.

    The recurrent state is ``log p(s_{t+1} | x_{<=t})`` (B, K), the normalised one-step-ahead
    forward vector (``log pi`` before any token). Reading ``x_t`` filters it, ``+ log B[:, x_t]``
    and normalise, then predicts: ``log(exp(filtered) A)``; the logits are the next-token
    log-probabilities ``log(exp(predicted) B)``. The parallel view runs the same filter over a
    whole window with the chain engine. ``fit`` (Baum-Welch) trains it, not the Trainer: the
    views are computed without gradients (``HiddenMarkovModel.log_likelihood`` has them).
    """

    def __init__(self, config: HMMConfig):
        super().__init__()
        self.config, self.vocab_size = config, config.vocab_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            emission = CategoricalEmission(config.n_states, config.vocab_size, config.pseudo_count)
            self.hmm = HiddenMarkovModel(emission, config.pseudo_count)

    def init_state(self, batch_size: int) -> Tensor:
        return self.hmm.log_init().detach().expand(batch_size, -1).clone()          # (B, K)

    def step(self, token: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        log_joint = state + self.hmm.emission.log_probs().T[token]                  # (B, K)
        return self._predict(log_joint - torch.logsumexp(log_joint, dim=-1, keepdim=True))

    def forward_from(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        log_emit = self.hmm.emission.log_probs().T[tokens]                          # (B, T, K)
        log_alpha = chain_forward(state, self.hmm.log_transitions(), log_emit)
        logits, predicted = self._predict(log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True))
        return logits, predicted[:, -1]

    def _predict(self, filtered: Tensor) -> tuple[Tensor, Tensor]:
        """Next-token log-probabilities (..., V) and next-state log-probabilities (..., K)."""
        predicted = log_matmul_exp(filtered, self.hmm.log_transitions())
        return log_matmul_exp(predicted, self.hmm.emission.log_probs()), predicted

    @torch.no_grad()
    def fit(self, task: Any, *, progress: bool = False, deadline: float | None = None) -> Self:
        """Baum-Welch on the task's training tokens, cut into ``chunk_length`` sequences.

        Emissions start from the training unigram distribution perturbed per state (seeded),
        which breaks the symmetry between states. EM runs for at most ``n_iter`` iterations
        of the config, stops early at its ``tol``, or at ``deadline`` (a ``time.monotonic()``
        instant, checked after every EM step, keeping the last step's parameters);
        ``self.hmm.stopped_by`` says which: "max_iterations", "converged" or "deadline".
        ``progress`` prints the mean log-likelihood per token of every iteration to stderr.
        Returns ``self``.
        """
        config = self.config
        device = self.hmm.init_logits.device
        ids = task.splits["train"].ids.to(device)
        if len(ids) == 0:
            raise DataError("the training split has no tokens")
        n_chunks = -(-len(ids) // config.chunk_length)
        chunks = ids.new_zeros(n_chunks * config.chunk_length)
        chunks[: len(ids)] = ids
        mask = (torch.arange(len(chunks), device=device) < len(ids)).view(n_chunks, -1)
        generator = torch.Generator(device=device).manual_seed(config.seed)
        unigram = torch.bincount(ids, minlength=config.vocab_size).to(self.hmm.init_logits.dtype) + 1
        # Log-normal noise (sigma 2) gives each state its own preferred symbols from the start;
        # mild noise leaves EM on a long plateau near the symmetric point.
        noise = torch.randn(config.n_states, config.vocab_size, generator=generator, device=device,
                            dtype=unigram.dtype).mul_(2).exp_()
        self.hmm.emission.set_probs(torch.nn.functional.normalize(unigram * noise, p=1, dim=-1))
        self.hmm.fit(chunks.view(n_chunks, -1), mask, n_iter=config.n_iter, tol=config.tol, batch_size=512,
                     deadline=deadline, callback=_print_iteration if progress else None)
        return self


def _print_iteration(iteration: int, mean_log_likelihood: float) -> None:
    print(f"hmm EM iteration {iteration}: mean log-likelihood per token {mean_log_likelihood:.4f}",
          file=sys.stderr)
