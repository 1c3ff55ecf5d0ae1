"""The contracts every model family implements (../DESIGN.md, sections 1 and 2).

A causal language model has two views of one computation:

- the parallel view, ``forward(tokens) -> logits``, where ``logits[:, t]`` scores the token
  that follows ``tokens[:, :t+1]``;
- the recurrent view, ``init_state(batch_size)`` then ``step(token, state) -> (logits, state)``,
  one token at a time: after stepping through ``tokens[:, 0..t]`` the last logits equal
  ``forward(tokens)[:, t]``.

:class:`CausalLM` is the one shallow base class: it declares the two views and derives
``prefill``, ``log_prob`` and ``generate`` from them. :class:`EncoderDecoder` extends the
recurrent view to sequence-to-sequence models; the other contracts are protocols.
"""

from __future__ import annotations

import abc
import itertools
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

State = Any  # a tensor, or a tuple/list/dict of tensors: whatever the model carries over time


def device_of(module: nn.Module) -> torch.device:
    """Where a module's tensors live: its first parameter's device, else its first buffer's (a
    count-based model has only buffers), else the CPU."""
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


def auxiliary_loss(model: nn.Module) -> Tensor | None:
    """The sum of the auxiliary losses ``model``'s modules left in their last training forward
    (a mixture of experts' balancing and z losses), each then cleared; None if there are none.

    A module takes part by setting ``self.auxiliary_loss`` (a scalar tensor) in its forward.
    The task's training loss adds this sum (``Task.training_loss``), so it reaches the optimiser
    the same way for every task and model.
    """
    total = None
    for module in model.modules():
        loss = getattr(module, "auxiliary_loss", None)
        if isinstance(loss, Tensor):
            total = loss if total is None else total + loss
            module.auxiliary_loss = None
    return total


def model_statistics(model: nn.Module) -> dict[str, float]:
    """What ``model``'s modules report of their last forward (``statistics() -> dict``, e.g. the
    experts' load), averaged over the modules that report each name; for the training log."""
    values: dict[str, list[float]] = {}
    for module in model.modules():
        if module is not model and callable(getattr(module, "statistics", None)):
            for name, value in module.statistics().items():
                values.setdefault(name, []).append(value)
    return {name: sum(items) / len(items) for name, items in values.items()}


class CausalLM(nn.Module, abc.ABC):
    """Base of every causal language model: a parallel view and a recurrent view.

    Subclasses set ``vocab_size`` and implement ``init_state`` and at least one of ``step`` and
    ``forward_from``; ``forward``, ``prefill``, ``log_prob`` and ``generate`` follow.
    ``max_context`` is the longest prefix the model can condition on (``None``: unbounded);
    generation slides a window when a model with a finite context runs past it.
    ``train_defaults`` holds ``TrainConfig`` values that suit the model (e.g. a learning rate),
    used unless the caller gives others. A model registered with ``trains="fit"`` (a closed-form
    or EM fit) defines ``fit(task, *, progress, deadline) -> self`` instead, and
    ``seqlab.fit`` calls it rather than the Trainer.
    """

    vocab_size: int
    max_context: int | None = None
    train_defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.step is CausalLM.step and cls.forward_from is CausalLM.forward_from:
            raise TypeError(f"{cls.__name__} must define step or forward_from (each default uses the other)")

    def forward(self, tokens: Tensor) -> Tensor:
        """Next-token logits for every position.

        Args:
            tokens: (B, T) token ids.
        Returns:
            (B, T, V) logits; ``[:, t]`` scores the token after ``tokens[:, :t+1]``.
        """
        return self.forward_from(tokens, self.init_state(tokens.shape[0]))[0]

    @abc.abstractmethod
    def init_state(self, batch_size: int) -> State:
        """The state before any token has been read, for ``batch_size`` sequences."""

    def step(self, token: Tensor, state: State) -> tuple[Tensor, State]:
        """Read one token per sequence.

        Args:
            token: (B,) token ids.
            state: from ``init_state`` or the previous ``step``.
        Returns:
            (B, V) logits for the next token, and the new state.
        """
        logits, state = self.forward_from(token[:, None], state)
        return logits[:, 0], state

    def forward_from(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """The parallel view continued from ``state``: logits for every position, and the state
        after the last token. Truncated BPTT carries this state from one window to the next.

        The default steps through ``tokens``; models with a parallel way (a fused RNN over a
        whole window, a Transformer's cached attention, an n-gram table lookup) override it.
        Every model overrides ``step`` or ``forward_from`` (or both): each default is written
        with the other.

        Args:
            tokens: (B, T) token ids, T >= 1.
            state: from ``init_state``, ``step`` or an earlier ``forward_from``.
        Returns:
            (B, T, V) logits, and the state after ``tokens[:, -1]``.
        """
        all_logits = []
        for t in range(tokens.shape[1]):
            logits, state = self.step(tokens[:, t], state)
            all_logits.append(logits)
        return torch.stack(all_logits, dim=1), state

    def prefill(self, tokens: Tensor) -> tuple[Tensor, State]:
        """Read a whole prompt: the logits after its last token, and the state there.

        Args:
            tokens: (B, T) token ids, T >= 1.
        Returns:
            (B, V) logits for the token after ``tokens``, and the state.
        """
        logits, state = self.forward_from(tokens, self.init_state(tokens.shape[0]))
        return logits[:, -1], state

    def log_prob(self, tokens: Tensor) -> Tensor:
        """log p(tokens[:, 1:] | tokens[:, 0]) by the chain rule, in nats.

        Args:
            tokens: (B, T) token ids, T >= 2.
        Returns:
            (B,) summed log-probabilities of every token after the first.
        """
        log_probs = torch.log_softmax(self.forward(tokens[:, :-1]).float(), dim=-1)
        return log_probs.gather(-1, tokens[:, 1:, None]).squeeze(-1).sum(dim=-1)

    def generate(self, prompt: Tensor, max_new_tokens: int, **sampling: Any) -> Tensor:
        """Continue ``prompt`` (B, T) by ``max_new_tokens``; see :func:`seqlab.decoding.generate`."""
        from seqlab.decoding import generate

        return generate(self, prompt, max_new_tokens, **sampling)


@runtime_checkable
class Tagger(Protocol):
    """Many-to-many, synchronised: one tag per word (``seqlab.tasks.tagging``).

    ``tag(batch) -> (B, T)`` tag ids for a ``TaggingBatch``; ``loss(batch)``, the mean negative
    log-likelihood of the gold tags per word (the training loss of a neural tagger, the
    validation loss of every tagger). A tagger registered with ``trains="fit"`` (HMM, feature
    CRF) also defines ``fit(task, *, progress, deadline)``.
    """

    def tag(self, batch: Any) -> Tensor: ...
    def loss(self, batch: Any) -> Tensor: ...


@runtime_checkable
class Classifier(Protocol):
    """Many-to-one: one label per sequence (``seqlab.tasks.classification``).

    ``forward(tokens, mask) -> (B, n_classes)`` logits of (B, T) token ids with a (B, T) mask
    true at real positions; padding never changes a row's logits.
    """

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor: ...
    def loss(self, tokens: Tensor, labels: Tensor, mask: Tensor) -> Tensor: ...
    def predict(self, tokens: Tensor, mask: Tensor) -> Tensor: ...


class EncoderDecoder(nn.Module, abc.ABC):
    """Base of every encoder-decoder (``seqlab.tasks.seq2seq``): unsynchronised input and
    output sequences, through an encoder memory.

    - ``encode(src, src_mask) -> memory``: reads the source once.
    - The causal-LM recurrent view with the memory inside the state:
      ``init_state(batch_size, memory)``, then ``step(token, state) -> (logits, state)``.
    - ``select(state, rows)``: a new state of the batch rows ``rows`` (kept, dropped, repeated
      or reordered), which is all beam search needs to keep and drop hypotheses; its input
      stays usable. ``step`` may update the state it reads in place (a Transformer decoder's
      key/value caches): a state is consumed by the step that reads it.
    - The teacher-forced parallel view, ``forward(src, src_mask, tgt_in) -> logits``, equals
      encoding then unrolling ``step`` over ``tgt_in`` (the contract test checks it); the
      default does exactly that, and a model with a faster way overrides it.

    Target ids 0, 1 and 2 are ``PAD``, ``BOS`` and ``EOS`` (``tgt_in`` starts with BOS); source
    id 0 is padding. ``attention_weights`` gives, for inspection, each target position's
    weights over the source (None for a model without attention).

    A state is a dict of tensors (or of tuples of tensors); every tensor has its batch on dim
    0, except those named in ``layer_major`` (a recurrent stack's (L, B, H) hidden states),
    whose batch is on dim 1. The default ``select`` relies on that.
    """

    src_vocab_size: int
    tgt_vocab_size: int
    layer_major: ClassVar[tuple[str, ...]] = ()
    train_defaults: ClassVar[dict[str, Any]] = {}

    @abc.abstractmethod
    def encode(self, src: Tensor, src_mask: Tensor) -> Any:
        """The memory of a source batch.

        Args:
            src: (B, S) source ids, 0 at padding.
            src_mask: (B, S) bool, true at real tokens (left-aligned, >= 1 per row).
        """

    @abc.abstractmethod
    def init_state(self, batch_size: int, memory: Any) -> dict[str, Any]:
        """The decoder state before the first target token, holding ``memory``."""

    @abc.abstractmethod
    def step(self, token: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """Read one target token per row: (B,) ids -> (B, V) next-token logits, new state."""

    def select(self, state: dict[str, Any], rows: Tensor) -> dict[str, Any]:
        """The state of batch rows ``rows`` (B',) int64, in that order."""

        def take(name: str, value: Any) -> Any:
            if isinstance(value, tuple):
                return tuple(take(name, part) for part in value)
            if isinstance(value, Tensor):
                return value.index_select(1 if name in self.layer_major else 0, rows)
            return value

        return {name: take(name, value) for name, value in state.items()}

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced next-token logits.

        Args:
            src, src_mask: as in ``encode``.
            tgt_in: (B, T) target ids fed to the decoder: BOS, then the target but its last.
        Returns:
            (B, T, V) logits; ``[:, t]`` scores the target token after ``tgt_in[:, :t+1]``.
        """
        state = self.init_state(src.shape[0], self.encode(src, src_mask))
        logits = []
        for t in range(tgt_in.shape[1]):
            step_logits, state = self.step(tgt_in[:, t], state)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)

    def attention_weights(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor | None:
        """(B, T, S) attention of each target position over the source (rows sum to 1 over
        real source tokens), or None for a model without attention."""
        return None


@runtime_checkable
class Forecaster(Protocol):
    """Forecasts a panel of series (``seqlab.forecast.base``): fitted by ``fit(task)`` (local
    models: one fit per series, ``LocalForecaster``) or by the Trainer (global models, on the
    forecasting task's windows), then ``predict(panel, horizon, quantiles) -> Forecast``, the
    mean (S, H) and each asked quantile (S, H) of every series' next ``horizon`` values."""

    def predict(self, panel: Any, horizon: int, quantiles: Sequence[float] = ()) -> Any: ...
