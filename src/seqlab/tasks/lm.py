"""Language modelling: predict each token of a text from the tokens before it.

The corpus is split by characters into contiguous train / valid / test blocks (90/5/5 by
default), so no held-out text leaks into training through overlapping windows. The tokenizer
is trained on the training block alone; held-out symbols it never saw become ``<unk>`` (a
byte-level BPE has none). Training samples windows at random offsets; evaluation reads every
held-out token exactly once, in non-overlapping windows.

Metrics: loss in nats per token, perplexity, and bits per character counted over the
characters that the predicted tokens cover (``seqlab.metrics.language``). Prediction continues
each input line as a prompt (``seqlab generate`` is its alias).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seqlab.contracts import device_of
from seqlab.data.batching import random_windows, sequential_windows
from seqlab.data.corpora import Corpus, load_corpus
from seqlab.data.tokenizers import Tokenizer, TokenizerKind, load_tokenizer, train_tokenizer
from seqlab.errors import ConfigError, DataError, SeqlabWarning
from seqlab.metrics.language import language_metrics
from seqlab.report import Column, Curve
from seqlab.tasks.base import ReportSpec, Showcase, Task, register_task

SPLITS = ("train", "valid", "test")
SAMPLE_PROMPT = "The "
WARNED_UNKNOWN_SHARE = 0.01      # of an evaluation text's tokens outside the vocabulary
REFUSED_UNKNOWN_SHARE = 0.5
SAMPLE_TOKENS = 200


@dataclass(frozen=True, kw_only=True)
class LanguageModelingOptions:
    """The data of a language-modelling run.

    Attributes:
        data: a UTF-8 text file; none: the built-in corpus (CPython's help topics, 465 KB).
        tokenizer: char, word, bpe or unigram, trained on the training split.
        context: the window length in tokens.
        vocab_size: the vocabulary size of a word, bpe or unigram tokenizer (none: the kind's own).
    """

    data: str | None = None
    tokenizer: TokenizerKind = "char"
    context: int = 128
    vocab_size: int | None = None


@dataclass(frozen=True, kw_only=True)
class GenerationOptions:
    """How a language model continues a prompt.

    Attributes:
        max_new: tokens to generate after each prompt.
        temperature: sampling temperature; 0 decodes greedily.
        top_k: sample among the k most likely tokens only (none: all).
        top_p: sample from the smallest set of tokens holding this probability (none: all).
        seed: seeds the sampler, so one seed gives one text (none: a fresh draw).
    """

    max_new: int = 200
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class TokenSplit:
    """One contiguous block of the corpus as token ids, with each token's character count."""

    ids: Tensor             # (N,) int64
    char_lengths: Tensor    # (N,) int64; sums to the block's length in characters


@register_task("lm")
class LanguageModeling(Task):
    """Next-token prediction over one corpus.

    Args:
        corpus: the text (see ``seqlab.data.corpora.load_corpus``).
        tokenizer: a trained ``Tokenizer``, or a kind ("char", "word", "bpe", "unigram") to
            train on the training block.
        context: window length T in tokens.
        split: fractions of the characters for train, valid and test.
        vocab_size: for a tokenizer trained here (subword and word kinds).
    """

    Options = LanguageModelingOptions
    PredictOptions = GenerationOptions
    predict_command = "generate"
    predict_help = "one prompt per line; each is continued by the model"
    inline_flag = "--prompt"
    report = ReportSpec(
        columns=(Column("test bpc", "bpc", "{:.3f}", "lower"),
                 Column("test ppl", "perplexity", "{:.2f}", "lower"),
                 Column("gen tok/s", "generate_tokens_per_second", "{:,.0f}", "higher")),
        curve=Curve("valid_bpc", "validation bits per character", "lower"),
    )
    default_budget_seconds = 90.0
    compare_defaults = {"context": 64}        # short windows: more steps in a CPU budget
    matched_config_fields = ("vocab_size",)
    artifact_loaders = {"tokenizer": load_tokenizer}

    def __init__(
        self,
        corpus: Corpus,
        tokenizer: Tokenizer | str = "char",
        context: int = 128,
        split: tuple[float, float, float] = (0.9, 0.05, 0.05),
        vocab_size: int | None = None,
    ):
        if not isinstance(corpus, Corpus):
            raise ConfigError(f"LanguageModeling needs a Corpus (e.g. seqlab.load_corpus(path)), "
                              f"got {type(corpus).__name__}")
        if not isinstance(tokenizer, (Tokenizer, str)):
            raise ConfigError(f"tokenizer must be a Tokenizer or a kind name, got {type(tokenizer).__name__}")
        if isinstance(context, bool) or not isinstance(context, int) or context < 1:
            raise ConfigError(f"context must be an int >= 1, got {context!r}")
        if len(split) != 3 or min(split) <= 0 or not math.isclose(sum(split), 1.0):
            raise ConfigError(f"split must be three positive fractions summing to 1, got {split}")
        texts = _split_text(corpus.text, split)
        if isinstance(tokenizer, str):
            tokenizer = train_tokenizer(tokenizer, texts["train"], vocab_size=vocab_size)
        self._set_up(corpus, tokenizer, context, tuple(split), texts)

    def _set_up(self, corpus: Corpus, tokenizer: Tokenizer, context: int, split: tuple[float, ...],
                texts: dict[str, str], min_tokens: int | None = None) -> None:
        """Tokenize ``texts`` (split name -> text); each needs ``min_tokens`` (default: a window
        and its target, ``context + 1``)."""
        self.corpus = corpus
        self.tokenizer = tokenizer
        self.context = context
        self.split_fractions = split
        self.splits: dict[str, TokenSplit] = {}
        for name, text in texts.items():
            ids, lengths = tokenizer.encode_with_lengths(text, unknown="replace")
            needed = context + 1 if min_tokens is None else min_tokens
            if len(ids) < needed:
                raise DataError(
                    f"corpus {corpus.name!r} has {len(ids)} tokens in its {name} split, but "
                    + (f"context {context} needs at least {needed}; use a longer text or a smaller context"
                       if min_tokens is None else f"at least {needed} are needed")
                )
            self.splits[name] = TokenSplit(torch.as_tensor(ids), torch.as_tensor(lengths))

    # ---- building ------------------------------------------------------------------------

    @classmethod
    def from_options(cls, options: LanguageModelingOptions) -> LanguageModeling:
        return cls(load_corpus(options.data), options.tokenizer, options.context,
                   vocab_size=options.vocab_size)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], artifacts: dict[str, Any], data: str | None = None,
                  with_data: bool = True) -> LanguageModeling:
        """The task a run was trained on, with its saved tokenizer. Over other ``data`` (a text
        file) the whole file is the test split; without data there are no splits (to generate)."""
        tokenizer, context = artifacts["tokenizer"], spec["context"]
        split = tuple(spec.get("split", (0.9, 0.05, 0.05)))
        if data is None and with_data:
            return cls(load_corpus(spec.get("data")), tokenizer, context, split=split)
        task = cls.__new__(cls)
        if not with_data:
            task._set_up(Corpus("none", "", spec.get("data")), tokenizer, context, split, {})
        else:
            corpus = load_corpus(data)
            task._set_up(corpus, tokenizer, context, split, {"test": corpus.text}, min_tokens=2)
            task._check_vocabulary_coverage()
        return task

    def _check_vocabulary_coverage(self) -> None:
        """Warn when a fair share of the evaluation text is outside the run's vocabulary (each
        such token is scored as ``<unk>``, which flatters the model), and refuse when most is.

        Raises:
            DataError: more than ``REFUSED_UNKNOWN_SHARE`` of the tokens are unknown.
        """
        if self.tokenizer.unk_id is None:
            return
        ids = self.splits["test"].ids
        share = float((ids == self.tokenizer.unk_id).double().mean())
        where = f"{share:.1%} of the tokens of {self.corpus.source or self.corpus.name!r}"
        if share > REFUSED_UNKNOWN_SHARE:
            raise DataError(f"{where} are outside the run's vocabulary: it was trained on other text; "
                            "its scores here would mean little")
        if share > WARNED_UNKNOWN_SHARE:
            warnings.warn(f"{where} are outside the run's vocabulary and scored as <unk>, which flatters the "
                          "model", SeqlabWarning, stacklevel=2)

    def spec(self) -> dict[str, Any]:
        """JSON description from which ``from_spec`` rebuilds the task (with the saved tokenizer)."""
        return {"task": self.name, "data": self.corpus.source, "context": self.context,
                "split": list(self.split_fractions), "tokenizer": self.tokenizer.kind,
                "vocab_size": self.vocab_size}

    def artifacts(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer}

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def train_tokens(self) -> int:
        """Tokens in the training block."""
        return len(self.splits["train"].ids) if "train" in self.splits else 0

    def model_defaults(self) -> dict[str, Any]:
        """Config values a model for this task must take: its vocabulary and context."""
        return {"vocab_size": self.vocab_size, "max_len": self.context}

    @classmethod
    def example_model_defaults(cls) -> dict[str, Any]:
        return {"vocab_size": 256, "max_len": 256}

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

    def evaluate(self, model: nn.Module, split: str = "valid", *, max_batches: int | None = None,
                 details: bool = False, batch_size: int = 32) -> dict[str, float]:
        """loss, perplexity and bits per character over a held-out block.

        Reads every token of the block once (or the first ``max_batches`` batches, a fixed
        subset, for quick checks during training). ``details`` adds nothing here.
        """
        if split not in self.splits:
            raise ConfigError(f"unknown split {split!r}; this task has {', '.join(self.splits) or 'no data'}")
        return evaluate_block(model, self.splits[split], self.context, batch_size, max_batches)

    # ---- use and reports -----------------------------------------------------------------

    def predict(self, model: nn.Module, inputs: Sequence[str], options: GenerationOptions | None = None) -> list[str]:
        """Each prompt followed by the model's continuation of it.

        Raises:
            DataError: an empty prompt, or one with a symbol the tokenizer never saw.
        """
        options = options or GenerationOptions()
        outputs = []
        for prompt in inputs:
            if not prompt:
                raise DataError("the prompt is empty; give at least one character")
            try:
                ids = self.tokenizer.encode(prompt, unknown="error")
            except DataError as error:
                raise DataError(f"prompt rejected: {error}") from None
            tokens = torch.tensor([ids], device=device_of(model))
            generated = model.generate(tokens, options.max_new, temperature=options.temperature,
                                       top_k=options.top_k, top_p=options.top_p, seed=options.seed)
            outputs.append(prompt + self.tokenizer.decode(generated[0, len(ids):].tolist()))
        return outputs

    def describe(self) -> str:
        tokens = ", ".join(f"{split} {len(block.ids):,}" for split, block in self.splits.items())
        return (f"corpus `{self.corpus.name}`, tokenizer `{self.tokenizer.kind}` (vocabulary "
                f"{self.vocab_size:,}), context {self.context}, tokens: {tokens}")

    def showcase(self, model: nn.Module) -> Showcase:
        """A sampled continuation of ``SAMPLE_PROMPT`` (or, when the vocabulary lacks it, of the
        test split's first tokens) at temperature 0.8, and the generation speed."""
        try:
            prompt_ids = self.tokenizer.encode(SAMPLE_PROMPT, unknown="error")
        except DataError:
            prompt_ids = self.splits["test"].ids[: min(16, self.context // 2)].tolist()
        prompt = torch.tensor([prompt_ids], device=device_of(model))
        started = time.perf_counter()
        generated = model.generate(prompt, SAMPLE_TOKENS, temperature=0.8, seed=0)
        seconds = time.perf_counter() - started
        text = self.tokenizer.decode(prompt_ids) + self.tokenizer.decode(generated[0, prompt.shape[1]:].tolist())
        return Showcase({"Samples": text[:SAMPLE_TOKENS]},
                        {"generate_tokens_per_second": (generated.shape[1] - prompt.shape[1]) / seconds})


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
