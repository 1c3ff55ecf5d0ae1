"""Greedy and beam decoding of an RNN transducer (Graves 2012, sec. 2.6).

A transducer reads encoder vectors one frame at a time. At frame ``t``, with the labels
``y_1..y_u`` emitted so far summarised by the prediction network, the joint network gives
``p(k | t, y_1..y_u)`` over the vocabulary: a label ``k != BLANK`` is emitted and fed to the
prediction network (the decoder stays on frame ``t``); the blank moves on to frame ``t + 1``.

Decoding bounds the labels per frame by ``m = max_symbols_per_frame`` (a frame that has emitted
``m`` labels moves on without a blank). This defines the *frame-bounded process*: each frame emits
``k_t <= m`` labels, followed by a blank if ``k_t < m``, and an alignment's probability is the
product of its steps' probabilities. It is a proper distribution over label sequences,

    P_m(y | x) = sum over frame-bounded alignments of y of  prod_t [ prod_{i <= k_t} p(y_. | t, .)
                                                                    * (p(blank | t, .) if k_t < m) ],

and where every alignment of ``y`` has fewer than ``m`` labels per frame (``|y| < m``) it equals the
lattice probability of ``seqlab.speech.transducer_loss`` exactly.

- :func:`transducer_greedy` follows the most probable step of this process: at each frame it emits
  the argmax until the argmax is blank or ``m`` labels were emitted.
- :func:`transducer_beam_search` is a time-synchronous beam search over the same process (in the
  spirit of Saon et al. 2020's time-synchronous decoding). At frame ``t`` hypotheses that have
  emitted ``k`` labels in this frame are expanded for ``k = 0 .. m-1``; in each round every
  expansion by the blank ends the frame and is *merged* with any hypothesis that ended it with the
  same labels (log-add of the two probabilities), and the ended hypotheses together with the new
  label expansions are pruned to the ``beam_size`` most probable. Label expansions of round ``m-1``
  end the frame without a blank. A returned score is ``log`` of the sum of the probabilities of
  the alignments that survived pruning: when the beam holds every hypothesis it is exactly
  ``log P_m(y | x)``, and with ``beam_size = 1`` the search is the greedy decoder.

The model is any object with the :class:`Transducer` methods. Its prediction network reads
``BLANK`` (= 0) as its start symbol; its state is a tuple of tensors with the batch on dim 1
(like an ``nn.LSTM``'s (h, c), each (num_layers, B, H)), so rows can be selected and merged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from seqlab.errors import ConfigError, DataError
from seqlab.speech.ctc_beam import log_add
from seqlab.speech.recogniser import BLANK

PredictorState = tuple[Tensor, ...]


@runtime_checkable
class Transducer(Protocol):
    """What the decoders need of a transducer.

    - ``predictor_init(batch_size)``: the prediction network's state before any symbol, a tuple of
      tensors with the batch on dim 1;
    - ``predictor_step(tokens (B,) long, state) -> (pred_out (B, D_p), state)``: read one symbol
      per row; the first symbol read is always ``BLANK`` (the start symbol);
    - ``joint(enc (B, D_e), pred (B, D_p)) -> logits (B, V)``, unnormalised.
    """

    def predictor_init(self, batch_size: int) -> PredictorState: ...
    def predictor_step(self, tokens: Tensor, state: PredictorState) -> tuple[Tensor, PredictorState]: ...
    def joint(self, encoder_out: Tensor, predictor_out: Tensor) -> Tensor: ...


def _check_options(max_symbols_per_frame: int, beam_size: int = 1) -> None:
    if max_symbols_per_frame < 1:
        raise ConfigError(f"max_symbols_per_frame is {max_symbols_per_frame}; use 1 or more")
    if beam_size < 1:
        raise ConfigError(f"beam_size is {beam_size}; use 1 or more")


def _merge_rows(take_new: Tensor, new_state: PredictorState, old_state: PredictorState) -> PredictorState:
    """Row ``b`` (dim 1) of the new state where ``take_new[b]``, else of the old one."""
    return tuple(torch.where(take_new.view(1, -1, *[1] * (new.dim() - 2)), new, old)
                 for new, old in zip(new_state, old_state))


@dataclass
class GreedyDecoding:
    """Where greedy decoding stands: the labels so far and the prediction network after them,
    for every row. Frames can be fed to it in any number of pieces (``greedy_frames``), which is
    how a streaming recogniser decodes chunk by chunk."""

    hypotheses: list[list[int]]
    predictor_out: Tensor          # (B, D_p) after reading BLANK and each row's labels
    state: PredictorState


@torch.no_grad()
def greedy_start(model: Transducer, batch_size: int, device: torch.device | str = "cpu") -> GreedyDecoding:
    """Greedy decoding before any frame: the prediction network has read its start symbol."""
    start = torch.full((batch_size,), BLANK, dtype=torch.long, device=device)
    predictor_out, state = model.predictor_step(start, model.predictor_init(batch_size))
    return GreedyDecoding([[] for _ in range(batch_size)], predictor_out, state)


@torch.no_grad()
def greedy_frames(model: Transducer, encoder_out: Tensor, lengths: Tensor, decoding: GreedyDecoding, *,
                  max_symbols_per_frame: int = 5) -> GreedyDecoding:
    """``decoding`` carried on over the frames ``encoder_out`` (B, T, D_e), of which row b has
    ``lengths[b]``: at each frame, emit the argmax label until it is the blank or
    ``max_symbols_per_frame`` labels were emitted in that frame. The prediction network advances
    only for rows that emitted a label; frames past a row's length emit nothing."""
    predictor_out, state, hypotheses = decoding.predictor_out, decoding.state, decoding.hypotheses
    for t in range(encoder_out.shape[1]):
        in_frame = t < lengths                                                              # (B,) still emitting
        for _ in range(max_symbols_per_frame):
            best = model.joint(encoder_out[:, t], predictor_out).argmax(dim=-1)            # (B,)
            emits = in_frame & (best != BLANK)
            if not emits.any():
                break
            for row in emits.nonzero().flatten().tolist():
                hypotheses[row].append(int(best[row]))
            stepped_out, stepped_state = model.predictor_step(torch.where(emits, best, BLANK), state)
            predictor_out = torch.where(emits[:, None], stepped_out, predictor_out)
            state = _merge_rows(emits, stepped_state, state)
            in_frame = emits
    return GreedyDecoding(hypotheses, predictor_out, state)


@torch.no_grad()
def transducer_greedy(model: Transducer, encoder_out: Tensor, lengths: Tensor, *,
                      max_symbols_per_frame: int = 5) -> list[list[int]]:
    """Batched greedy decoding of whole utterances (``greedy_start``, then ``greedy_frames``
    over every frame).

    Args:
        model: a :class:`Transducer`.
        encoder_out: (B, T, D_e) encoder vectors.
        lengths: (B,) frames of each utterance, at most T.
        max_symbols_per_frame: the most labels one frame may emit (``m`` in the module docstring).
    Returns:
        one list of label ids (no blanks) per utterance.
    Raises:
        DataError: an encoder output that is not (B, T, D) or lengths that do not fit it.
        ConfigError: ``max_symbols_per_frame < 1``.
    """
    _check_options(max_symbols_per_frame)
    if encoder_out.dim() != 3 or lengths.shape != encoder_out.shape[:1]:
        raise DataError(f"encoder_out {tuple(encoder_out.shape)} and lengths {tuple(lengths.shape)} must be "
                        "(B, T, D) and (B,)")
    if len(lengths) and (int(lengths.min()) < 0 or int(lengths.max()) > encoder_out.shape[1]):
        raise DataError(f"lengths must lie in [0, {encoder_out.shape[1]}], got {lengths.tolist()}")
    decoding = greedy_start(model, encoder_out.shape[0], encoder_out.device)
    return greedy_frames(model, encoder_out, lengths, decoding, max_symbols_per_frame=max_symbols_per_frame).hypotheses


@dataclass
class _Hypothesis:
    labels: tuple[int, ...]
    log_prob: float
    predictor_out: Tensor          # (D_p,) after reading BLANK and ``labels``
    state: PredictorState          # each with a batch of 1 on dim 1


def _stack_states(hypotheses: list[_Hypothesis]) -> PredictorState:
    return tuple(torch.cat(parts, dim=1) for parts in zip(*(h.state for h in hypotheses)))


@torch.no_grad()
def transducer_beam_search(model: Transducer, encoder_out: Tensor, *, beam_size: int = 4,
                           max_symbols_per_frame: int = 2) -> list[tuple[list[int], float]]:
    """Time-synchronous beam search over the frame-bounded process (see the module docstring).

    At each frame, with ``ended`` the hypotheses that have finished the frame (a dict keyed by
    the label sequence) and ``active`` those that have emitted ``k`` labels in it (starting with
    the beam, ``k = 0``), each round ``k < m`` does:

        ended[y]     = logaddexp(ended[y], log P(h) + log p(blank | t, h))   for h in active, y = h
        candidates   = ended  U  {h + v: log P(h) + log p(v | t, h)}        for h in active, v != blank
        keep the beam_size most probable candidates; the kept h + v become the next ``active``

    and after round ``m - 1`` the kept ``h + v`` end the frame without a blank (merged into
    ``ended``). The next frame's beam is ``ended``.

    Args:
        model: a :class:`Transducer`.
        encoder_out: (T, D_e) one utterance's encoder vectors (every frame is real).
        beam_size: hypotheses kept after each round.
        max_symbols_per_frame: ``m``, the most labels one frame may emit.
    Returns:
        at most ``beam_size`` pairs (labels without blanks, log-probability), most probable first.
    Raises:
        DataError: an encoder output that is not (T, D_e).
        ConfigError: ``beam_size`` or ``max_symbols_per_frame`` below 1.
    """
    _check_options(max_symbols_per_frame, beam_size)
    if encoder_out.dim() != 2:
        raise DataError(f"encoder_out must be one utterance's (T, D_e) vectors, got shape {tuple(encoder_out.shape)}")
    start = torch.full((1,), BLANK, dtype=torch.long, device=encoder_out.device)
    predictor_out, state = model.predictor_step(start, model.predictor_init(1))
    beam = [_Hypothesis((), 0.0, predictor_out[0], state)]
    for frame in encoder_out:                                                               # (D_e,)
        ended: dict[tuple[int, ...], _Hypothesis] = {}
        active = beam
        for round_index in range(max_symbols_per_frame):
            if not active:
                break
            predictor_outs = torch.stack([h.predictor_out for h in active])                # (N, D_p)
            log_probs = model.joint(frame.expand(len(active), -1), predictor_outs).log_softmax(dim=-1).double().cpu()
            for h, log_blank in zip(active, log_probs[:, BLANK].tolist()):
                _end_frame(ended, _Hypothesis(h.labels, h.log_prob + log_blank, h.predictor_out, h.state))

            # Only the beam_size best label expansions can survive the pruning below.
            scores = torch.tensor([h.log_prob for h in active], dtype=torch.float64)[:, None] + log_probs
            scores[:, BLANK] = -math.inf
            top = scores.flatten().topk(min(beam_size, scores.numel())).indices.tolist()
            expansions = [(float(scores.flatten()[i]), i // scores.shape[1], i % scores.shape[1]) for i in top]
            expansions = [e for e in expansions if e[0] > -math.inf]
            ranked = sorted([(h.log_prob, False, h) for h in ended.values()] +
                            [(score, True, (row, label)) for score, row, label in expansions],
                            key=lambda entry: entry[0], reverse=True)[:beam_size]
            ended = {h.labels: h for _, is_expansion, h in ranked if not is_expansion}
            kept = [(score, row_label) for score, is_expansion, row_label in ranked if is_expansion]
            active = _expand(model, active, kept)
            if round_index == max_symbols_per_frame - 1:
                for h in active:
                    _end_frame(ended, h)
        beam = list(ended.values())
    beam.sort(key=lambda h: h.log_prob, reverse=True)
    return [(list(h.labels), h.log_prob) for h in beam]


def _end_frame(ended: dict[tuple[int, ...], _Hypothesis], hypothesis: _Hypothesis) -> None:
    """Add ``hypothesis`` to the frame's ended set, log-adding it to one with the same labels."""
    same = ended.get(hypothesis.labels)
    if same is not None:
        hypothesis.log_prob = log_add(same.log_prob, hypothesis.log_prob)
    ended[hypothesis.labels] = hypothesis


def _expand(model: Transducer, parents: list[_Hypothesis], kept: list[tuple[float, tuple[int, int]]]
            ) -> list[_Hypothesis]:
    """The hypotheses ``parents[row] + label`` for each kept (score, (row, label)), with the
    prediction network advanced by one batched step."""
    if not kept:
        return []
    rows = [row for _, (row, _) in kept]
    labels = torch.tensor([label for _, (_, label) in kept], dtype=torch.long, device=parents[0].predictor_out.device)
    state = tuple(part.index_select(1, torch.tensor(rows, device=part.device)) for part in _stack_states(parents))
    predictor_outs, state = model.predictor_step(labels, state)
    return [_Hypothesis(parents[row].labels + (label,), score, predictor_outs[i],
                        tuple(part[:, i:i + 1] for part in state))
            for i, (score, (row, label)) in enumerate(kept)]
