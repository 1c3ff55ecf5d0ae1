"""Masked language modelling: BERT's pre-training objective (Devlin et al. 2019, sec. 3.1).

Over windows of ``context`` tokens of a corpus, 15% of the positions are chosen; of those, 80%
are replaced by ``[MASK]``, 10% by a random token and 10% kept, and the model predicts the
original token at every chosen position from both sides:

    loss = - mean over chosen positions t of log p(x_t | x with the choices applied).

(The random and kept 10% keep the encoder from learning that only ``[MASK]`` positions matter:
at fine-tuning time there is no ``[MASK]``.)

The corpus, its splits and the tokenizer are the language-modelling task's
(``seqlab.tasks.lm``, the same flags; block mode only). Ids: the tokenizer's 0 .. V - 1, and
``[MASK]`` = V, so a model has V + 1 embedding rows; a classification or tagging run that takes
this run's tokenizer (``--task classify --tokenizer-from RUN``, ``--task tag --tokenizer-from
RUN``) then means the same thing by every row, and ``--init-from RUN`` carries the encoder over.
A model whose vocabulary holds ``[MASK]`` itself (a ``mask_id`` attribute that is not None, as a
BERT imported from Hugging Face has) reads its own id there instead: batches are drawn with V,
and the loss, evaluation and prediction put the model's id in its place (``model_mask_id``).

A model for this task maps (B, T) ids to (B, T, V + 1) logits, bidirectionally. Evaluation
masks each held-out window with a fixed seed, so every evaluation scores the same choices:
loss (nats per predicted token) and accuracy of the predicted tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.contracts import device_of
from seqlab.data.batching import random_windows, sequential_windows
from seqlab.data.tokenizers import load_tokenizer
from seqlab.errors import ConfigError, DataError
from seqlab.report import Column, Curve
from seqlab.tasks.base import ReportSpec, Showcase, Task, register_task
from seqlab.tasks.lm import LanguageModeling, LanguageModelingOptions

MASK_PROBABILITY = 0.15
REPLACE_WITH_MASK, REPLACE_WITH_RANDOM = 0.8, 0.1          # the rest (0.1) is kept
IGNORED = -100                                              # the target of a position not chosen
EVALUATION_SEED = 1234
MASK_MARKER = "[MASK]"
SAMPLE = "The quick brown fox jumps over the lazy dog."


@dataclass(frozen=True, kw_only=True)
class MaskedLanguageModelingOptions(LanguageModelingOptions):
    """The data of a masked-language-modelling run (as the language-modelling task's; block mode)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sentences:
            raise ConfigError("the mlm task reads blocks of text; drop --sentences")


def mask_tokens(ids: Tensor, mask_id: int, vocab_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """BERT's corruption of (B, T) ids: each position is chosen with probability 0.15; a chosen
    one becomes ``mask_id`` (80%), a uniformly random id in [0, vocab_size) (10%) or stays
    (10%). Returns the corrupted inputs and the targets: the original id at chosen positions,
    ``IGNORED`` (-100) elsewhere. Draws on ``generator`` (on the CPU), so one seed gives one
    corruption."""
    shape = ids.shape
    chosen = torch.rand(shape, generator=generator) < MASK_PROBABILITY
    action = torch.rand(shape, generator=generator)
    random_ids = torch.randint(0, vocab_size, shape, generator=generator)
    inputs = torch.where(chosen & (action < REPLACE_WITH_MASK), mask_id, ids)
    replaced = chosen & (action >= REPLACE_WITH_MASK) & (action < REPLACE_WITH_MASK + REPLACE_WITH_RANDOM)
    inputs = torch.where(replaced, random_ids, inputs)
    return inputs, torch.where(chosen, ids, IGNORED)


def model_mask_id(model: nn.Module, vocab_size: int) -> int:
    """The id ``model`` reads as ``[MASK]``: its ``mask_id`` when it has one, else V = vocab_size."""
    mask_id = getattr(model, "mask_id", None)
    return vocab_size if mask_id is None else int(mask_id)


@register_task("mlm")
class MaskedLanguageModeling(Task):
    """Masked-token prediction over a corpus, for pre-training encoders (BERT)."""

    Options = MaskedLanguageModelingOptions
    predict_help = f"one text per line with {MASK_MARKER} where tokens are to be filled in"
    report = ReportSpec(
        columns=(Column("test loss", "loss", "{:.3f}", "lower"),
                 Column("masked acc %", "accuracy", "{:.2f}", "higher", 100.0)),
        curve=Curve("valid_loss", "validation loss (nats per masked token)", "lower"),
    )
    default_budget_seconds = 120.0
    matched_config_fields = ("vocab_size",)
    artifact_loaders = {"tokenizer": load_tokenizer}

    def __init__(self, text: LanguageModeling):
        if text.sentences:
            raise ConfigError("the mlm task reads blocks of text, not sentences")
        self.text = text
        self.tokenizer = text.tokenizer
        self.context = text.context
        self.splits = text.splits

    @classmethod
    def from_options(cls, options: MaskedLanguageModelingOptions) -> MaskedLanguageModeling:
        return cls(LanguageModeling.from_options(options))

    @classmethod
    def from_spec(cls, spec: dict[str, Any], artifacts: dict[str, Any], data: str | None = None,
                  with_data: bool = True) -> MaskedLanguageModeling:
        return cls(LanguageModeling.from_spec(spec, artifacts, data, with_data))

    def spec(self) -> dict[str, Any]:
        return {**self.text.spec(), "task": self.name}

    def artifacts(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer}

    @property
    def vocab_size(self) -> int:
        """V, the tokenizer's ids; ``[MASK]`` is V."""
        return self.tokenizer.vocab_size

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def train_tokens(self) -> int:
        return self.text.train_tokens

    def model_defaults(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size}

    @classmethod
    def example_model_defaults(cls) -> dict[str, Any]:
        return {"vocab_size": 256}

    # ---- training and evaluation ---------------------------------------------------------

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Random windows, corrupted: inputs and targets (-100 where nothing is predicted)."""
        windows, _ = random_windows(self.splits["train"].ids, batch_size, self.context, generator)
        return mask_tokens(windows, self.mask_id, self.vocab_size, generator)

    def loss_items(self, batch: Sequence[Tensor]) -> int:
        return int((batch[1] != IGNORED).sum())

    def loss(self, model: nn.Module, batch: Sequence[Tensor]) -> Tensor:
        """Mean cross-entropy over the chosen positions (0 when a batch has none)."""
        inputs, targets = batch
        mask_id = model_mask_id(model, self.vocab_size)
        if mask_id != self.vocab_size:                                            # the model's own [MASK]
            inputs = inputs.masked_fill(inputs == self.vocab_size, mask_id)
        logits = model(inputs)                                                    # (B, T, V + 1)
        total = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORED,
                                reduction="sum")
        return total / (targets != IGNORED).sum().clamp(min=1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "valid", *, max_batches: int | None = None,
                 details: bool = False, batch_size: int = 32) -> dict[str, float]:
        """loss and accuracy of the predicted tokens over consecutive windows of ``split``,
        corrupted with a fixed seed (the same choices at every evaluation)."""
        if split not in self.splits:
            raise ConfigError(f"unknown split {split!r}; this task has {', '.join(self.splits) or 'no data'}")
        was_training = model.training
        model.eval()
        generator = torch.Generator().manual_seed(EVALUATION_SEED)
        device = device_of(model)
        mask_id = model_mask_id(model, self.vocab_size)
        total, correct, count = 0.0, 0, 0
        try:
            for index, (windows, _, _) in enumerate(sequential_windows(self.splits[split].ids, batch_size,
                                                                       self.context)):
                if max_batches is not None and index >= max_batches:
                    break
                inputs, targets = mask_tokens(windows, mask_id, self.vocab_size, generator)
                logits = model(inputs.to(device)).float()
                targets = targets.to(device)
                chosen = targets != IGNORED
                total += float(F.cross_entropy(logits[chosen], targets[chosen], reduction="sum"))
                correct += int((logits[chosen].argmax(-1) == targets[chosen]).sum())
                count += int(chosen.sum())
        finally:
            model.train(was_training)
        if count == 0:
            raise DataError(f"the {split} split is too short to mask any token; use a longer text")
        return {"loss": total / count, "accuracy": correct / count}

    # ---- use and reports -----------------------------------------------------------------

    def _encode_with_masks(self, line: str, mask_id: int) -> list[int]:
        pieces = line.split(MASK_MARKER)
        ids: list[int] = []
        for index, piece in enumerate(pieces):
            if index:
                ids.append(mask_id)
            if piece:
                ids.extend(self.tokenizer.encode(piece, unknown="replace"))
        return ids

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: Sequence[str], options: Any = None) -> list[str]:
        """Each line with every ``[MASK]`` replaced by the model's most likely token.

        Raises:
            DataError: a line without ``[MASK]``, or longer than the model reads.
        """
        outputs = []
        model.eval()
        mask_id = model_mask_id(model, self.vocab_size)
        for number, line in enumerate(inputs, start=1):
            if MASK_MARKER not in line:
                raise DataError(f"line {number} has no {MASK_MARKER} to fill in; mark the tokens to predict")
            ids = torch.tensor([self._encode_with_masks(line, mask_id)], device=device_of(model))
            limit = getattr(getattr(model, "config", None), "max_len", None)
            if getattr(getattr(model, "config", None), "positions", None) == "learned" and ids.shape[1] > limit:
                raise DataError(f"line {number} has {ids.shape[1]} tokens; the model reads at most {limit}")
            predicted = _fillers(model(ids)[0], mask_id, self.vocab_size)
            filled = torch.where(ids[0] == mask_id, predicted, ids[0])
            outputs.append(self.tokenizer.decode(filled.tolist()))
        return outputs

    def describe(self) -> str:
        return "masked tokens (15%: 80% [MASK], 10% random, 10% kept); " + self.text.describe()

    def showcase(self, model: nn.Module) -> Showcase:
        """The sample sentence with every fifth token masked, and the model's filling."""
        try:
            ids = self.tokenizer.encode(SAMPLE, unknown="error")
        except DataError:
            return Showcase()
        mask_id = model_mask_id(model, self.vocab_size)
        masked = [mask_id if index % 5 == 2 else token for index, token in enumerate(ids)]
        with torch.no_grad():
            model.eval()
            predicted = _fillers(model(torch.tensor([masked], device=device_of(model)))[0], mask_id, self.vocab_size)
        filled = [int(p) if m == mask_id else m for m, p in zip(masked, predicted.tolist())]
        shown = "".join(MASK_MARKER if m == mask_id else self.tokenizer.decode([m]) for m in masked)
        return Showcase({"Filled masks": f"{shown}\n{self.tokenizer.decode(filled)}"})


def _fillers(logits: Tensor, mask_id: int, vocab_size: int) -> Tensor:
    """(T, R) logits -> (T,) the most likely token at each position among the tokenizer's V ids,
    never ``[MASK]`` itself."""
    logits = logits[:, :vocab_size].clone()
    if mask_id < vocab_size:
        logits[:, mask_id] = float("-inf")
    return logits.argmax(-1)
