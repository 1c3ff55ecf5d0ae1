"""Language modelling: predict each token of a text from the tokens before it.

The text is read in one of two ways:

- as a block (the default): the corpus is split by characters into contiguous train / valid /
  test blocks (``split``, 90/5/5 by default), so no held-out text leaks into training through
  overlapping windows;
- one sentence per line (``sentences``), as KenLM and SRILM count: the token stream is
  ``<s> w_1 .. w_n </s> <s> ...`` (``seqlab.data.sentences``; blank lines are skipped) and the
  split is by lines, not characters. Only the ``word`` tokenizer reads sentences: the markers
  are words of its vocabulary, as in an ARPA file, while a char or subword stream already holds
  the line break that ends a sentence, and a marker there would be a piece no text can spell.

``split`` "none" trains on the whole file and validates on a second one (``valid_data``); the
test split is then that validation text too, unless ``seqlab eval RUN --data FILE`` names
another (read in the run's mode: one sentence per line for a sentence run).

The tokenizer is trained on the training text alone; held-out symbols it never saw become
``<unk>`` (a byte-level BPE has none). Training samples windows at random offsets; evaluation
reads every held-out token exactly once, in non-overlapping windows.

Sentences. ``<s>`` is context only: a target that is ``<s>`` is never scored, neither by
evaluation nor by the training loss (``F.cross_entropy(..., ignore_index=<s>)``; keeping the
loss the mean over the tokens that evaluation scores makes training and validation losses
comparable, and the softmax still learns to give ``<s>`` no mass). So perplexity and bits per
character count exactly what KenLM counts: every word, out-of-vocabulary ones as ``<unk>``, and
one ``</s>`` per sentence. Evaluation windows start at a ``<s>`` and hold whole sentences
(``seqlab.data.batching.sentence_windows``), so a model predicts each token from its own
sentence: n-gram scores equal KenLM's for every sentence of fewer than ``context`` words (a
longer one is read in overlapping windows, which keep ``context // 2`` tokens of it as context).
``model_defaults()`` gives ``sentence_start_id``, the id of ``<s>``, to the models that take it:
the n-gram model and the Markov chain count each sentence apart and restart their context at
it, as KenLM scores sentences independently; neural models read the markers as tokens.

A run may read its text with another run's tokenizer (``tokenizer_from``: a run directory or
a tokenizer.json), e.g. to fine-tune a checkpoint imported from Hugging Face
(``seqlab.interop.hf``); it then also takes that run's special tokens (BOS, EOS) and the size of
its embedding, which may exceed the tokenizer's vocabulary (rows padded to a round number).
Generation prepends BOS to a prompt when the tokenizer's own post-processor would (Llama's) and
stops at EOS.

Metrics: loss in nats per token, perplexity, and bits per character counted over the
characters that the predicted tokens cover (``seqlab.metrics.language``). Prediction continues
each input line as a prompt (``seqlab generate`` is its alias); in a sentence run each prompt
starts a sentence.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seqlab.contracts import device_of
from seqlab.data.batching import random_windows, sentence_windows, sequential_windows
from seqlab.data.corpora import Corpus, load_corpus
from seqlab.data.sentences import (
    DEFAULT_SPLIT, NO_SPLIT, encode_sentences, parse_split, sentence_lines, sentence_markers, split_consecutive,
)
from seqlab.data.tokenizers import Tokenizer, TokenizerKind, load_tokenizer, train_tokenizer
from seqlab.errors import ConfigError, DataError, SeqlabWarning
from seqlab.metrics.language import NONE_IGNORED, evaluate_windows
from seqlab.report import Column, Curve
from seqlab.tasks.base import ReportSpec, Showcase, Task, register_task, tokenizer_from

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
        tokenizer_from: a saved tokenizer.json, or a run directory (an imported Hugging Face
            checkpoint, or any language-model run), whose tokenizer to use instead of training
            one; a run also gives its special tokens and vocabulary size (for --init-from RUN).
        context: the window length in tokens.
        vocab_size: the vocabulary size of a word, bpe or unigram tokenizer (none: the kind's own;
            in sentence mode it counts <unk>, <s> and </s>).
        sentences: read each line as a sentence between <s> and </s> (blank lines skipped), as
            KenLM and SRILM count; needs the word tokenizer. <s> is context only, never scored.
        split: the train/valid/test shares of data, as percentages or fractions ("90/5/5",
            "0.8,0.1,0.1"), of characters, or of lines with sentences; or "none": train on all of
            data and validate on valid_data, which is then the test split too.
        valid_data: a second UTF-8 text file to validate on; required by split none, refused
            otherwise.
    """

    data: str | None = None
    tokenizer: TokenizerKind = "char"
    tokenizer_from: str | None = None
    context: int = 128
    vocab_size: int | None = None
    sentences: bool = False
    split: str = "90/5/5"
    valid_data: str | None = None

    def __post_init__(self) -> None:
        check_data_options(self.split, self.sentences, self.tokenizer, self.valid_data is not None,
                           "LanguageModelingOptions.")
        if self.tokenizer_from is not None and self.vocab_size is not None:
            raise ConfigError("LanguageModelingOptions.vocab_size is for a tokenizer trained here; "
                              "tokenizer_from brings its own vocabulary")


def check_data_options(split: Any, sentences: bool, tokenizer: str, has_valid: bool, where: str = "") -> None:
    """Refuse options that do not go together, with a ``ConfigError`` naming the field."""
    fractions = parse_split(split, where)
    if fractions is None and not has_valid:
        raise ConfigError(f"{where}split 'none' trains on the whole file and validates on a second one: "
                          "give valid_data (--valid-data FILE)")
    if fractions is not None and has_valid:
        raise ConfigError(f"{where}valid_data is read only with split 'none' (--split none); "
                          f"with split {split!r} the validation text is a share of data")
    if sentences and tokenizer != "word":
        raise ConfigError(f"{where}sentences needs tokenizer 'word', got {tokenizer!r}: <s> and </s> are words, "
                          "as KenLM and SRILM count them (use --tokenizer word)")


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
            train on the training text (with sentence markers under ``sentences``).
        context: window length T in tokens.
        split: fractions of the characters (of the lines, under ``sentences``) for train, valid
            and test, as a tuple or a string ``parse_split`` reads; or "none": all of ``corpus``
            is the training text and ``valid_corpus`` the validation and test text.
        vocab_size: for a tokenizer trained here (subword and word kinds).
        sentences: read each line as a sentence ``<s> w_1 .. w_n </s>`` (see the module docstring).
        valid_corpus: the validation text, with split "none" only.
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
    matched_config_fields = ("vocab_size", "sentence_start_id")
    artifact_loaders = {"tokenizer": load_tokenizer}

    def __init__(
        self,
        corpus: Corpus,
        tokenizer: Tokenizer | str = "char",
        context: int = 128,
        split: tuple[float, float, float] | str = DEFAULT_SPLIT,
        vocab_size: int | None = None,
        *,
        sentences: bool = False,
        valid_corpus: Corpus | None = None,
    ):
        if not isinstance(corpus, Corpus) or not isinstance(valid_corpus, (Corpus, type(None))):
            raise ConfigError(f"LanguageModeling needs a Corpus (e.g. seqlab.load_corpus(path)), "
                              f"got {type(corpus if not isinstance(corpus, Corpus) else valid_corpus).__name__}")
        if not isinstance(tokenizer, (Tokenizer, str)):
            raise ConfigError(f"tokenizer must be a Tokenizer or a kind name, got {type(tokenizer).__name__}")
        if isinstance(context, bool) or not isinstance(context, int) or context < 1:
            raise ConfigError(f"context must be an int >= 1, got {context!r}")
        kind = tokenizer if isinstance(tokenizer, str) else tokenizer.kind
        check_data_options(split, sentences, kind, valid_corpus is not None)
        fractions = parse_split(split)
        read = _sentences if sentences else (lambda corpus: corpus.text)
        texts = (split_consecutive(read(corpus), fractions) if valid_corpus is None else
                 {"train": read(corpus), "valid": read(valid_corpus)})
        if isinstance(tokenizer, str):
            training_text = "\n".join(texts["train"]) if sentences else texts["train"]
            tokenizer = train_tokenizer(tokenizer, training_text, vocab_size=vocab_size, markers=sentences)
        self._set_up(corpus, tokenizer, context, fractions, sentences=sentences, valid_corpus=valid_corpus)
        self._read_splits(texts, min_tokens=context + 1)
        if valid_corpus is not None:
            self.splits["test"] = self.splits["valid"]          # no test text: test on the validation text

    def _set_up(self, corpus: Corpus, tokenizer: Tokenizer, context: int,
                fractions: tuple[float, float, float] | None, *, sentences: bool,
                valid_corpus: Corpus | None = None) -> None:
        """Everything but the splits, which ``_read_splits`` reads."""
        self.corpus = corpus
        self.valid_corpus = valid_corpus
        self.tokenizer = tokenizer
        self.context = context
        self.split_fractions = fractions
        self.sentences = sentences
        self.start_id = sentence_markers(tokenizer)[0] if sentences else None
        self.splits: dict[str, TokenSplit] = {}
        self.special_tokens: dict[str, Any] = {}       # bos_id, eos_id (an id or a list), add_bos
        self.model_vocab_size: int | None = None       # embedding rows, when more than the tokenizer's

    def _read_splits(self, texts: dict[str, Any], min_tokens: int) -> None:
        """Tokenize ``texts`` (split name -> a text, or its lines under ``sentences``). The
        training split needs ``min_tokens`` (a window and its target), a held-out one as much in
        block mode and a sentence in sentence mode."""
        for name, text in texts.items():
            needed = min_tokens if name == "train" or not self.sentences else 2         # <s> </s>
            self.splits[name] = self._tokenize(name, text, needed)

    def _tokenize(self, name: str, text: str | list[str], needed: int) -> TokenSplit:
        source = self.valid_corpus if name != "train" and self.valid_corpus is not None else self.corpus
        if self.sentences:
            ids, lengths = encode_sentences(self.tokenizer, text)
        else:
            ids, lengths = self.tokenizer.encode_with_lengths(text, unknown="replace")
        if len(ids) < needed:
            unit = f"{len(text)} sentences, {len(ids)} tokens" if self.sentences else f"{len(ids)} tokens"
            raise DataError(
                f"corpus {source.name!r} has {unit} in its {name} split, but "
                + (f"context {self.context} needs at least {needed}; use a longer text or a smaller context"
                   if needed == self.context + 1 else f"at least {needed} are needed")
            )
        return TokenSplit(torch.as_tensor(ids), torch.as_tensor(lengths))

    # ---- building ------------------------------------------------------------------------

    @classmethod
    def from_options(cls, options: LanguageModelingOptions) -> LanguageModeling:
        valid = load_corpus(options.valid_data) if options.valid_data is not None else None
        borrowed: dict[str, Any] = {}
        tokenizer = options.tokenizer
        if options.tokenizer_from is not None:
            tokenizer, borrowed = borrowed_tokenizer(options.tokenizer_from)
        task = cls(load_corpus(options.data), tokenizer, options.context, options.split,
                   options.vocab_size, sentences=options.sentences, valid_corpus=valid)
        return task.with_vocabulary(**borrowed)

    def with_vocabulary(self, special_tokens: dict[str, Any] | None = None,
                        model_vocab_size: int | None = None) -> LanguageModeling:
        """This task with a borrowed model's special tokens and embedding size (see the module
        docstring); returns self."""
        self.special_tokens = dict(special_tokens or {})
        if model_vocab_size is not None and model_vocab_size < self.tokenizer.vocab_size:
            raise ConfigError(f"the model has {model_vocab_size} embedding rows, fewer than the tokenizer's "
                              f"{self.tokenizer.vocab_size} ids; they do not belong together")
        self.model_vocab_size = model_vocab_size
        return self

    @classmethod
    def from_spec(cls, spec: dict[str, Any], artifacts: dict[str, Any], data: str | None = None,
                  with_data: bool = True) -> LanguageModeling:
        """The task a run was trained on, with its saved tokenizer. Over other ``data`` (a text
        file, read as the run read its own: one sentence per line in a sentence run) the whole
        file is the test split; without data there are no splits (to generate)."""
        tokenizer, context = artifacts["tokenizer"], spec["context"]
        split, sentences = spec.get("split", DEFAULT_SPLIT), bool(spec.get("sentences", False))
        vocabulary = {"special_tokens": spec.get("special_tokens"), "model_vocab_size": spec.get("model_vocab_size")}
        if data is None and with_data:
            valid = load_corpus(spec["valid_data"]) if spec.get("valid_data") is not None else None
            return cls(load_corpus(spec.get("data")), tokenizer, context, split, sentences=sentences,
                       valid_corpus=valid).with_vocabulary(**vocabulary)
        task = cls.__new__(cls)
        corpus = load_corpus(data) if with_data else Corpus("none", "", spec.get("data"))
        task._set_up(corpus, tokenizer, context, parse_split(split), sentences=sentences)
        task.with_vocabulary(**vocabulary)
        if with_data:
            task._read_splits({"test": _sentences(corpus) if sentences else corpus.text}, min_tokens=2)
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
        valid = self.valid_corpus
        return {"task": self.name, "data": self.corpus.source, "context": self.context,
                "split": NO_SPLIT if self.split_fractions is None else list(self.split_fractions),
                "sentences": self.sentences, "valid_data": valid and (valid.source or valid.name),
                "tokenizer": self.tokenizer.kind, "vocab_size": self.vocab_size,
                "special_tokens": self.special_tokens, "model_vocab_size": self.model_vocab_size}

    def artifacts(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer}

    @property
    def vocab_size(self) -> int:
        """The model's ids: the tokenizer's, or a borrowed model's embedding rows."""
        return self.model_vocab_size or self.tokenizer.vocab_size

    @property
    def train_tokens(self) -> int:
        """Tokens in the training block."""
        return len(self.splits["train"].ids) if "train" in self.splits else 0

    def model_defaults(self) -> dict[str, Any]:
        """Config values a model for this task must take: its vocabulary and context, and the
        id of ``<s>`` (None outside sentence mode), for models with ``sentence_start_id``."""
        return {"vocab_size": self.vocab_size, "max_len": self.context, "sentence_start_id": self.start_id}

    @classmethod
    def example_model_defaults(cls) -> dict[str, Any]:
        return {"vocab_size": 256, "max_len": 256, "sentence_start_id": None}

    def check_model(self, model: nn.Module) -> None:
        """Also refuse a model that cannot read a whole window of this task (learned positions
        with a table shorter than the context), before training rather than at its first step."""
        super().check_model(model)
        limit = getattr(model, "max_context", None)
        if limit is not None and limit < self.context:
            raise ConfigError(f"the model reads at most {limit} positions (max_len) but the task's context is "
                              f"{self.context}; raise max_len or lower --context")

    @property
    def _ignored(self) -> int:
        """The target id no loss or metric counts: ``<s>``, or none (``NONE_IGNORED``) in block mode."""
        return NONE_IGNORED if self.start_id is None else self.start_id

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Random windows of the training block: inputs and targets, (B, T) each."""
        return random_windows(self.splits["train"].ids, batch_size, self.context, generator)

    def loss_items(self, batch: Sequence[Tensor]) -> int:
        """The targets the loss averages over: every one but ``<s>``."""
        return int((batch[1] != self._ignored).sum())

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
        return self._mean_loss(logits, targets), state

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        """Mean cross-entropy in nats per scored target token (every one but ``<s>``)."""
        inputs, targets = batch
        return self._mean_loss(model(inputs), targets)                         # (B, T, V) logits

    def _mean_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Summed cross-entropy over the scored targets, over their count (0 when there are none)."""
        total = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=self._ignored,
                                reduction="sum")
        return total / (targets != self._ignored).sum().clamp(min=1)          # no host sync

    def evaluate(self, model: nn.Module, split: str = "valid", *, max_batches: int | None = None,
                 details: bool = False, batch_size: int = 32) -> dict[str, float]:
        """loss, perplexity and bits per character over a held-out block.

        Reads every scored token of the block once (or the first ``max_batches`` batches, a
        fixed subset, for quick checks during training): in block mode in consecutive windows,
        in sentence mode in windows of whole sentences. ``details`` adds nothing here.
        """
        if split not in self.splits:
            raise ConfigError(f"unknown split {split!r}; this task has {', '.join(self.splits) or 'no data'}")
        block = self.splits[split]
        windows = (sequential_windows(block.ids, batch_size, self.context) if self.start_id is None
                   else sentence_windows(block.ids, self.start_id, batch_size, self.context))
        return evaluate_windows(model, windows, block.char_lengths, max_batches, ignored=self._ignored)

    # ---- use and reports -----------------------------------------------------------------

    def _prompt_ids(self, prompt: str) -> list[int]:
        """The prompt's ids, after ``<s>`` in sentence mode (a prompt starts a sentence), or
        after BOS for a borrowed tokenizer that adds it."""
        ids = self.tokenizer.encode(prompt, unknown="error")
        if self.special_tokens.get("add_bos"):
            return [self.special_tokens["bos_id"], *ids]
        return ids if self.start_id is None else [self.start_id, *ids]

    def _continuation(self, ids: list[int]) -> str:
        """The text of generated ids, up to (without) the first EOS."""
        eos = self.special_tokens.get("eos_id")
        stops = set([] if eos is None else [eos] if isinstance(eos, int) else eos)
        end = next((index for index, token in enumerate(ids) if token in stops), len(ids))
        return self.tokenizer.decode(ids[:end])

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
                ids = self._prompt_ids(prompt)
            except DataError as error:
                raise DataError(f"prompt rejected: {error}") from None
            limit = getattr(model, "max_context", None)
            if limit is not None and len(ids) > limit:
                raise DataError(f"the prompt has {len(ids)} tokens but the model reads at most {limit} "
                                "(its learned position table); shorten the prompt")
            tokens = torch.tensor([ids], device=device_of(model))
            generated = model.generate(tokens, options.max_new, temperature=options.temperature,
                                       top_k=options.top_k, top_p=options.top_p, seed=options.seed,
                                       eos_id=self.special_tokens.get("eos_id"))
            outputs.append(prompt + self._continuation(generated[0, len(ids):].tolist()))
        return outputs

    def describe(self) -> str:
        tokens = ", ".join(f"{split} {len(block.ids):,}" for split, block in self.splits.items())
        mode = ", one sentence per line" if self.sentences else ""
        valid = f", validated on `{self.valid_corpus.name}`" if self.valid_corpus is not None else ""
        return (f"corpus `{self.corpus.name}`{mode}{valid}, tokenizer `{self.tokenizer.kind}` (vocabulary "
                f"{self.vocab_size:,}), context {self.context}, tokens: {tokens}")

    def showcase(self, model: nn.Module) -> Showcase:
        """A sampled continuation of ``SAMPLE_PROMPT`` (or, when the vocabulary lacks it, of the
        test split's first tokens) at temperature 0.8, and the generation speed."""
        try:
            prompt_ids = self._prompt_ids(SAMPLE_PROMPT)
        except DataError:
            prompt_ids = self.splits["test"].ids[: min(16, self.context // 2)].tolist()
        prompt = torch.tensor([prompt_ids], device=device_of(model))
        started = time.perf_counter()
        generated = model.generate(prompt, SAMPLE_TOKENS, temperature=0.8, seed=0)
        seconds = time.perf_counter() - started
        text = self.tokenizer.decode(prompt_ids) + self._continuation(generated[0, prompt.shape[1]:].tolist())
        return Showcase({"Samples": text[:SAMPLE_TOKENS]},
                        {"generate_tokens_per_second": (generated.shape[1] - prompt.shape[1]) / seconds})


def _sentences(corpus: Corpus) -> list[str]:
    """The sentences of ``corpus``, one per line that holds a word."""
    return sentence_lines(corpus.text, repr(corpus.source or corpus.name))


def borrowed_tokenizer(source: str) -> tuple[Tokenizer, dict[str, Any]]:
    """The tokenizer of ``source`` (a tokenizer.json, or a run directory) and, for a run, its
    special tokens and embedding size (``with_vocabulary``'s arguments)."""
    from seqlab.checkpoint import read_info
    from seqlab.rundir import resolve_checkpoint

    tokenizer = tokenizer_from(source)
    if not Path(source).is_dir():
        return tokenizer, {}
    spec = read_info(resolve_checkpoint(source))["task"]
    return tokenizer, {"special_tokens": spec.get("special_tokens"), "model_vocab_size": spec.get("model_vocab_size")}
