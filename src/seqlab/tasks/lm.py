"""Language modelling: predict each token of a text from the tokens before it.

The corpus is split by characters into contiguous train / valid / test blocks (90/5/5 by
default), so no held-out text leaks into training through overlapping windows. The tokenizer
is trained on the training block alone; held-out symbols it never saw become ``<unk>`` (a
byte-level BPE has none). Training samples windows at random offsets; evaluation reads every
held-out token exactly once, in non-overlapping windows.

Metrics: loss in nats per token, perplexity, and bits per character counted over the
characters that the predicted tokens cover (``seqlab.metrics.language``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seqlab.contracts import device_of
from seqlab.data.batching import random_windows, sequential_windows
from seqlab.data.corpora import Corpus, load_corpus
from seqlab.data.tokenizers import Tokenizer, train_tokenizer
from seqlab.errors import ConfigError, DataError
from seqlab.metrics.language import language_metrics

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class TokenSplit:
    """One contiguous block of the corpus as token ids, with each token's character count."""

    ids: Tensor             # (N,) int64
    char_lengths: Tensor    # (N,) int64; sums to the block's length in characters


class LanguageModeling:
    """Next-token prediction over one corpus.

    Args:
        corpus: the text (see ``seqlab.data.corpora.load_corpus``).
        tokenizer: a trained ``Tokenizer``, or a kind ("char", "word", "bpe", "unigram") to
            train on the training block.
        context: window length T in tokens.
        split: fractions of the characters for train, valid and test.
        vocab_size: for a tokenizer trained here (subword and word kinds).
    """

    name = "lm"

    def __init__(
        self,
        corpus: Corpus,
        tokenizer: Tokenizer | str = "char",
        context: int = 128,
        split: tuple[float, float, float] = (0.9, 0.05, 0.05),
        vocab_size: int | None = None,
    ):
        if context < 1:
            raise ConfigError(f"context must be >= 1, got {context}")
        if len(split) != 3 or min(split) <= 0 or not math.isclose(sum(split), 1.0):
            raise ConfigError(f"split must be three positive fractions summing to 1, got {split}")
        self.corpus = corpus
        self.context = context
        self.split_fractions = tuple(split)
        texts = _split_text(corpus.text, split)
        if isinstance(tokenizer, str):
            tokenizer = train_tokenizer(tokenizer, texts["train"], vocab_size=vocab_size)
        self.tokenizer = tokenizer
        self.splits: dict[str, TokenSplit] = {}
        for name, text in texts.items():
            ids, lengths = tokenizer.encode_with_lengths(text, unknown="replace")
            if len(ids) < context + 1:
                raise DataError(
                    f"corpus {corpus.name!r} has {len(ids)} tokens in its {name} split, but context "
                    f"{context} needs at least {context + 1}; use a longer text or a smaller context"
                )
            self.splits[name] = TokenSplit(torch.as_tensor(ids), torch.as_tensor(lengths))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def train_tokens(self) -> int:
        """Tokens in the training block."""
        return len(self.splits["train"].ids)

    def model_defaults(self) -> dict[str, Any]:
        """Config values a model for this task must take: its vocabulary and context."""
        return {"vocab_size": self.vocab_size, "max_len": self.context}

    def spec(self) -> dict[str, Any]:
        """JSON description from which ``from_spec`` rebuilds the task (with the saved tokenizer)."""
        return {
            "task": self.name,
            "data": self.corpus.source,
            "context": self.context,
            "split": list(self.split_fractions),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any], tokenizer: Tokenizer, data: str | None = None):
        """The task a checkpoint was trained on, optionally over another text file."""
        corpus = load_corpus(data if data is not None else spec.get("data"))
        return cls(corpus, tokenizer, context=spec["context"], split=tuple(spec["split"]))

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Random windows of the training block: inputs and targets, (B, T) each."""
        return random_windows(self.splits["train"].ids, batch_size, self.context, generator)

    def stream_windows(self, batch_size: int) -> int:
        """How many consecutive windows each of ``batch_size`` streams holds (truncated BPTT)."""
        windows = (len(self.splits["train"].ids) - 1) // batch_size // self.context
        if windows < 1:
            raise DataError(
                f"the training split is too short for {batch_size} streams of {self.context} tokens; "
                "use a smaller batch or context"
            )
        return windows

    def stream_batch(self, batch_size: int, index: int) -> tuple[Tensor, Tensor]:
        """Window ``index`` (modulo the number of windows) of ``batch_size`` parallel streams.

        The training block is cut into ``batch_size`` contiguous streams; window w of every
        stream directly follows window w - 1, so a state carried between consecutive calls
        continues the text (truncated BPTT). Returns inputs and targets, (B, T) each.
        """
        ids = self.splits["train"].ids
        windows = self.stream_windows(batch_size)
        stream_length = windows * self.context
        streams = ids[: batch_size * stream_length + 1]
        starts = torch.arange(batch_size) * stream_length + (index % windows) * self.context
        offsets = starts[:, None] + torch.arange(self.context + 1)              # (B, T + 1)
        window = streams[offsets]
        return window[:, :-1], window[:, 1:]

    def stream_loss(self, model: nn.Module, batch: tuple[Tensor, Tensor], state: Any) -> tuple[Tensor, Any]:
        """Mean cross-entropy of one stream window read from ``state`` (None: a fresh state)."""
        inputs, targets = batch
        if state is None:
            state = model.init_state(inputs.shape[0])
        logits, state = model.forward_from(inputs, state)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()), state

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        """Mean cross-entropy in nats per target token."""
        inputs, targets = batch
        logits = model(inputs)                                                  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def evaluate(
        self, model: nn.Module, split: str = "valid", batch_size: int = 32,
        max_batches: int | None = None,
    ) -> dict[str, float]:
        """loss, perplexity and bits per character over a held-out block.

        Reads every token of the block once (or the first ``max_batches`` batches, a fixed
        subset, for quick checks during training).
        """
        if split not in self.splits:
            raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return evaluate_block(model, self.splits[split], self.context, batch_size, max_batches)

    def evaluate_text(self, model: nn.Module, text: str, batch_size: int = 32) -> dict[str, float]:
        """The same metrics over a whole other text, tokenized with this task's tokenizer."""
        ids, lengths = self.tokenizer.encode_with_lengths(text, unknown="replace")
        if len(ids) < 2:
            raise DataError("the evaluation text has fewer than 2 tokens; nothing to predict")
        block = TokenSplit(torch.as_tensor(ids), torch.as_tensor(lengths))
        return evaluate_block(model, block, self.context, batch_size)


@torch.no_grad()
def evaluate_block(
    model: nn.Module, block: TokenSplit, context: int, batch_size: int, max_batches: int | None = None
) -> dict[str, float]:
    """Summed NLL over non-overlapping windows of ``block``, as language metrics.

    The model is put in eval mode and restored to its previous mode.
    """
    device = device_of(model)
    was_training = model.training
    model.eval()
    total_nll, n_tokens, n_chars = 0.0, 0, 0
    for index, (inputs, targets, target_index) in enumerate(sequential_windows(block.ids, batch_size, context)):
        if max_batches is not None and index >= max_batches:
            break
        logits = model(inputs.to(device)).float()                               # (B, T, V)
        nll = F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten(), reduction="sum")
        total_nll += nll.item()
        n_tokens += targets.numel()
        n_chars += int(block.char_lengths[target_index].sum())
    model.train(was_training)
    return language_metrics(total_nll, n_tokens, n_chars)


def _split_text(text: str, fractions: tuple[float, float, float]) -> dict[str, str]:
    """Contiguous blocks of ``text`` by character fractions."""
    n = len(text)
    first = round(n * fractions[0])
    second = first + round(n * fractions[1])
    return {"train": text[:first], "valid": text[first:second], "test": text[second:]}
