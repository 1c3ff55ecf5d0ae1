"""Sequence classification: a sequence in, one label out (many-to-one).

The data is one of:

- ``listops``: the built-in ListOps generator (``seqlab.data.listops``), nested MAX / MIN / MED /
  SM expressions over digits whose value is the label (ten classes), drawn from ``data_seed``. The
  defaults (8,000 / 500 / 500 expressions of 100-300 tokens, drawn in about 3 s) suit a CPU
  comparison of a few minutes, in which a 1-layer LSTM of width 128 reaches about 20% accuracy
  in 1,000 steps (the majority class is 15%); the Long Range Arena's ListOps has 96,000 / 2,000 /
  2,000 expressions of 501-1,999 tokens:
  ``--listops-train 96000 --listops-valid 2000 --listops-test 2000 --listops-min-length 501
  --listops-max-length 1999``;
- a TSV file of ``label<TAB>text`` lines, shuffled with ``data_seed`` and split into train, valid
  and test by the ``split_fractions``;
- a directory of ``train.tsv``, ``dev.tsv`` (or ``valid.tsv``, ``val.tsv``) and ``test.tsv``
  (a name may also end so, as ``sst_train.tsv``).

The tokenizer (char or word; ListOps is read word by word) and the label set come from the
training split alone, unless a saved tokenizer is given (``tokenizer_from``: a language model's,
for fine-tuning it); a held-out token it never saw becomes ``<unk>``, a held-out label is an
error. A batch is (token ids (B, T), padded with 0; mask (B, T), true at real tokens; labels
(B,)). A classifier gives ``forward(tokens, mask) -> (B, C)`` logits, ``loss`` and ``predict``
(``seqlab.contracts.Classifier``).

Metrics: loss (mean cross-entropy in nats), accuracy, macro-F1 (the unweighted mean over the
classes present in gold or predicted labels of F1 = 2 TP / (2 TP + FP + FN)), and the
majority-class baseline: the share of the split that the training split's most frequent label
would get right.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seqlab.contracts import device_of
from seqlab.data import listops
from seqlab.data.json_files import read_json_file, write_json_file
from seqlab.data.tokenizers import Tokenizer, load_tokenizer, train_tokenizer
from seqlab.data.tsv import LabeledText, find_tsv_files, read_tsv, split_by_fractions
from seqlab.errors import ConfigError, DataError
from seqlab.fields import config_to_dict, make_config
from seqlab.metrics.tagging import confusion_matrix, confusion_summary
from seqlab.report import Column, Curve
from seqlab.tasks.base import ReportSpec, Showcase, Task, register_task, tokenizer_from

LISTOPS = "listops"
LABELS_KIND = "seqlab-labels"
SHOWN_EXAMPLES = 5


@dataclass(frozen=True, kw_only=True)
class ClassificationOptions:
    """The data of a classification run.

    Attributes:
        data: listops (the built-in generator), a TSV file of label<TAB>text lines, or a
            directory of train.tsv, dev.tsv (or valid.tsv) and test.tsv (a file named listops:
            ./listops).
        tokenizer: char or word, trained on the training split (ListOps: always word).
        tokenizer_from: a saved tokenizer.json, or a run directory, whose tokenizer to use instead
            (a language-model run's, so that --init-from RUN's embedding means the same tokens).
        vocab_size: keep the most frequent words only (word tokenizer; none: every word).
        max_length: tokens kept from the start of each text (none: all; not for ListOps).
        split_fractions: fractions of a single TSV file for train, valid and test.
        data_seed: seeds the shuffle of a single TSV file and the ListOps generator.
        listops_train, listops_valid, listops_test: ListOps expressions per split (LRA: 96000,
            2000, 2000).
        listops_min_length, listops_max_length: tokens per ListOps expression, both included
            (LRA: 501 and 1999; up to 2,000 and beyond works, at more cost per step).
        listops_max_depth: levels of a ListOps tree, digits included (LRA: 10).
        listops_max_args: the most arguments of a ListOps operator (LRA: 10).
    """

    data: str = LISTOPS
    tokenizer: Literal["char", "word"] = "word"
    tokenizer_from: str | None = None
    vocab_size: int | None = None
    max_length: int | None = None
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    data_seed: int = 0
    listops_train: int = 8000
    listops_valid: int = 500
    listops_test: int = 500
    listops_min_length: int = 100
    listops_max_length: int = 300
    listops_max_depth: int = 10
    listops_max_args: int = 10

    def __post_init__(self) -> None:
        fractions = self.split_fractions
        if len(fractions) != 3 or min(fractions) <= 0 or not math.isclose(sum(fractions), 1.0):
            raise ConfigError(f"split_fractions must be three positive fractions summing to 1, got {fractions}")
        if self.max_length is not None and self.max_length < 1:
            raise ConfigError(f"max_length must be >= 1 or none, got {self.max_length}")
        if self.tokenizer_from is not None and self.vocab_size is not None:
            raise ConfigError("vocab_size is for a tokenizer trained here; tokenizer_from brings its own vocabulary")
        if self.data != LISTOPS:
            return
        for name, value in (("tokenizer", self.tokenizer != "word"), ("tokenizer_from", self.tokenizer_from),
                            ("vocab_size", self.vocab_size), ("max_length", self.max_length)):
            if value:
                raise ConfigError(f"{name} is for TSV data; ListOps is read word by word, whole (its lengths "
                                  "are listops_min_length and listops_max_length)")
        for split in ("train", "valid", "test"):
            if getattr(self, f"listops_{split}") < 1:
                raise ConfigError(f"listops_{split} must be >= 1, got {getattr(self, f'listops_{split}')}")
        listops.check_bounds(self.listops_max_depth, self.listops_max_args, self.listops_min_length,
                             self.listops_max_length, prefix="listops_")


class LabelSet:
    """The labels of the training split, in natural order (numbers by value), with their counts
    there. It is the ``labels.json`` of a classification run."""

    def __init__(self, names: Sequence[str], counts: Sequence[int]):
        self.names, self.counts = list(names), list(counts)
        self._index = {name: index for index, name in enumerate(self.names)}

    @classmethod
    def build(cls, examples: Sequence[LabeledText]) -> LabelSet:
        counts = Counter(example.label for example in examples)
        names = sorted(counts, key=lambda name: (0, int(name), "") if re.fullmatch(r"-?\d+", name) else (1, 0, name))
        return cls(names, [counts[name] for name in names])

    @property
    def majority(self) -> int:
        """The id of the most frequent training label (the first of equals)."""
        return max(range(len(self.names)), key=self.counts.__getitem__)

    def ids(self, examples: Sequence[LabeledText]) -> list[int]:
        """Label ids; DataError naming the example whose label training never had."""
        for example in examples:
            if example.label not in self._index:
                raise DataError(f"{example.where}: label {example.label!r} does not occur in the training data; "
                                f"known labels: {', '.join(self.names)}")
        return [self._index[example.label] for example in examples]

    def save(self, path: str | Path) -> None:
        write_json_file(path, LABELS_KIND, {"labels": self.names, "counts": self.counts})

    @classmethod
    def load(cls, path: str | Path) -> LabelSet:
        """The labels ``save`` wrote; DataError if the file is missing or is not one."""
        payload = read_json_file(path, LABELS_KIND, "label file", ("labels", "counts"))
        return cls(payload["labels"], payload["counts"])


@register_task("classify")
class Classification(Task):
    """Classification over train / valid / test examples (``read_splits``).

    Args:
        splits: examples per split name; may be empty (a saved run, to predict).
        options: the options the data came from (for the spec, ``max_length`` and the tokenizer).
        tokenizer, labels: a saved run's; None trains them on the training split.
    """

    Options = ClassificationOptions
    predict_command = "classify"
    predict_help = "one text per line; printed as the predicted label and its probability, tab-separated"
    report = ReportSpec(
        columns=(Column("test acc %", "accuracy", "{:.2f}", "higher", 100.0),
                 Column("macro-F1 %", "macro_f1", "{:.2f}", "higher", 100.0),
                 Column("classify seq/s", "sequences_per_second", "{:,.0f}", "higher")),
        curve=Curve("valid_accuracy", "validation accuracy (%)", "higher", 100.0),
    )
    default_budget_seconds = 300.0
    matched_config_fields = ("vocab_size", "n_classes")
    artifact_loaders = {"tokenizer": load_tokenizer, "labels": LabelSet.load}

    def __init__(self, splits: dict[str, list[LabeledText]], options: ClassificationOptions | None = None,
                 tokenizer: Tokenizer | None = None, labels: LabelSet | None = None):
        self.options = options or ClassificationOptions()
        if (tokenizer is None or labels is None) and not splits.get("train"):
            raise DataError("the classification task needs training examples")
        self.splits = splits
        self.labels = labels or LabelSet.build(splits["train"])
        if len(self.labels.names) < 2:
            raise DataError(f"the training data has one label, {self.labels.names[0]!r}; a classifier needs two or more")
        self.tokenizer = tokenizer or self._tokenizer(splits["train"])
        self._encoded = {split: self.encode([e.text for e in examples], self.labels.ids(examples))
                         for split, examples in splits.items() if examples}

    def _tokenizer(self, examples: list[LabeledText]) -> Tokenizer:
        """The ``tokenizer_from`` file's tokenizer, or one trained on the training examples."""
        if self.options.tokenizer_from is not None:
            return tokenizer_from(self.options.tokenizer_from)
        kind = "word" if self.options.data == LISTOPS else self.options.tokenizer
        return train_tokenizer(kind, "\n".join(example.text for example in examples), vocab_size=self.options.vocab_size)

    @classmethod
    def from_options(cls, options: ClassificationOptions) -> Classification:
        return cls(read_splits(options), options)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], artifacts: dict[str, Any], data: str | None = None,
                  with_data: bool = True) -> Classification:
        """The task a run was trained on, with its saved tokenizer and labels: over its own data,
        over another ``data`` (a TSV file, which becomes the test split, a directory, or
        ``listops``), or with no data (to classify)."""
        options = make_config(ClassificationOptions, {key: value for key, value in spec.items() if key != "task"})
        tokenizer, labels = artifacts["tokenizer"], artifacts["labels"]
        if not with_data:
            return cls({}, options, tokenizer, labels)
        if data is not None:
            options = dataclasses.replace(options, data=str(data))
            if Path(data).is_file():
                return cls({"test": read_tsv(Path(data))}, options, tokenizer, labels)
        return cls(read_splits(options), options, tokenizer, labels)

    def spec(self) -> dict[str, Any]:
        """The options, with a data path made absolute (a run is read again from elsewhere)."""
        options = config_to_dict(self.options)
        if options["data"] != LISTOPS:
            options["data"] = str(Path(options["data"]).resolve())
        return {"task": self.name, **options}

    def artifacts(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer, "labels": self.labels}

    @property
    def train_tokens(self) -> int:
        return int(self._encoded["train"].lengths.sum()) if "train" in self._encoded else 0

    def model_defaults(self) -> dict[str, Any]:
        """Config values a classifier for this task must take: vocabulary and label set sizes."""
        return {"vocab_size": self.tokenizer.vocab_size, "n_classes": len(self.labels.names)}

    @classmethod
    def example_model_defaults(cls) -> dict[str, Any]:
        return {"vocab_size": 16, "n_classes": 10}          # ListOps: <unk>, 10 digits, 4 operators, "]"

    def encode(self, texts: Sequence[str], label_ids: Sequence[int] | None = None) -> EncodedTexts:
        """``texts`` as token ids (the first ``max_length`` of each), with their label ids."""
        ids = [self.tokenizer.encode_with_lengths(text)[0][:self.options.max_length] for text in texts]
        return EncodedTexts.build(ids, label_ids, list(texts))

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Random training examples: token ids (B, T), mask (B, T), labels (B,)."""
        encoded = self._encoded["train"]
        return encoded.batch(torch.randint(0, len(encoded), (batch_size,), generator=generator))

    def batch_tokens(self, batch: Sequence[Tensor]) -> int:
        """Real tokens in a ``train_batch`` (padding excluded)."""
        return int(batch[1].sum())

    def loss(self, model: nn.Module, batch: Sequence[Tensor]) -> Tensor:
        """The classifier's mean cross-entropy over a ``train_batch``."""
        tokens, mask, labels = batch
        return model.loss(tokens, labels, mask)

    def evaluate(self, model: nn.Module, split: str = "valid", *, max_batches: int | None = None,
                 details: bool = False, batch_size: int = 64) -> dict[str, Any]:
        """loss, accuracy, macro_f1, majority_accuracy, sequences, tokens_per_second and
        sequences_per_second over a split (its first ``max_batches`` batches, a fixed part, when
        given); with ``details``, the most frequent confusions as (gold, predicted, count)."""
        encoded = self._split(split)
        if max_batches is not None:
            encoded = encoded.subset(torch.arange(min(max_batches * batch_size, len(encoded))))
        logits, seconds = self._logits(model, encoded, batch_size)
        gold, predicted = encoded.labels, logits.argmax(dim=-1)
        matrix = confusion_matrix(gold, predicted, len(self.labels.names))
        metrics: dict[str, Any] = {
            "loss": F.cross_entropy(logits, gold).item(),
            "accuracy": (predicted == gold).float().mean().item(),
            "macro_f1": macro_f1(matrix),
            "majority_accuracy": (gold == self.labels.majority).float().mean().item(),
            "sequences": float(len(encoded)),
            "tokens_per_second": float(encoded.lengths.sum()) / seconds,
            "sequences_per_second": len(encoded) / seconds,
        }
        if details:
            metrics["confusions"] = confusion_summary(matrix, self.labels.names, 5)
        return metrics

    def predict(self, model: nn.Module, inputs: Sequence[str], options: Any = None) -> list[str]:
        """Each text's predicted label and its probability, as ``label<TAB>0.873``.

        Raises:
            DataError: an empty line, naming it.
        """
        for number, line in enumerate(inputs, start=1):
            if not line.strip():
                raise DataError(f"input line {number} is empty; give one text per line")
        logits, _ = self._logits(model, self.encode(inputs), 64)
        probabilities, predicted = torch.softmax(logits, dim=-1).max(dim=-1)
        return [f"{self.labels.names[label]}\t{probability:.3f}"
                for label, probability in zip(predicted.tolist(), probabilities.tolist())]

    def describe(self) -> str:
        options = self.options
        if options.data == LISTOPS:
            source = (f"ListOps (depth <= {options.listops_max_depth}, <= {options.listops_max_args} arguments, "
                      f"{options.listops_min_length}-{options.listops_max_length} tokens, seed {options.data_seed})")
        else:
            source = f"`{options.data}`"
        sizes = ", ".join(f"{split} {len(encoded):,}" for split, encoded in self._encoded.items())
        majority = ""
        if "test" in self._encoded:
            share = (self._encoded["test"].labels == self.labels.majority).float().mean().item()
            majority = f"; majority class `{self.labels.names[self.labels.majority]}` is {100 * share:.1f}% of test"
        return (f"{source}, tokenizer `{self.tokenizer.kind}` (vocabulary {self.tokenizer.vocab_size:,}), "
                f"{len(self.labels.names)} classes, sequences: {sizes}{majority}")

    def showcase(self, model: nn.Module) -> Showcase:
        """The first test examples with their predicted and gold labels, and the most frequent
        test confusions."""
        confusions = self.evaluate(model, "test", details=True)["confusions"]
        test = self._split("test")
        shown = test.subset(torch.arange(min(SHOWN_EXAMPLES, len(test))))
        predicted = self.predict(model, shown.texts)
        lines = []
        for text, output, gold in zip(shown.texts, predicted, shown.labels.tolist()):
            label, probability = output.split("\t")
            text = text if len(text) <= 60 else text[:57] + "..."
            lines.append(f"{label:>8} ({probability}) gold {self.labels.names[gold]:<8} {text}")
        return Showcase({
            "Test examples: predicted (probability), gold, text": "\n".join(lines),
            "Most frequent confusions (gold -> predicted)":
                "\n".join(f"{gold:>8} -> {guess:<8} {count:,}" for gold, guess, count in confusions) or "none",
        })

    def _split(self, split: str) -> EncodedTexts:
        if split not in self._encoded:
            raise ConfigError(f"unknown or empty split {split!r}; this task has {', '.join(self._encoded) or 'no data'}")
        return self._encoded[split]

    @torch.no_grad()
    def _logits(self, model: nn.Module, encoded: EncodedTexts, batch_size: int) -> tuple[Tensor, float]:
        """(N, C) fp32 logits of every text, in order, batched by length in eval mode (the
        model's mode is restored), and the seconds they took."""
        device = device_of(model)
        order = torch.argsort(encoded.lengths, descending=True, stable=True)
        logits = torch.empty(len(encoded), len(self.labels.names))
        was_training = model.training
        model.eval()
        started = time.perf_counter()
        for rows in order.split(batch_size):
            tokens, mask, _ = encoded.batch(rows)
            logits[rows] = model(tokens.to(device), mask.to(device)).float().cpu()
        seconds = time.perf_counter() - started
        model.train(was_training)
        return logits, seconds


@dataclass
class EncodedTexts:
    """Texts as token ids, concatenated: a batch of any rows is one gather, with no padded copy
    of the whole split (a few long texts would make that huge)."""

    ids: Tensor              # (total,) int64, every text's ids one after another
    starts: Tensor           # (N,) where each text's ids start
    lengths: Tensor          # (N,) tokens in each text, >= 1
    labels: Tensor | None    # (N,) label ids; None when unknown (prediction)
    texts: list[str]

    @classmethod
    def build(cls, ids: Sequence[np.ndarray], labels: Sequence[int] | None, texts: list[str]) -> EncodedTexts:
        lengths = torch.tensor([len(row) for row in ids], dtype=torch.long)
        if len(ids) == 0 or int(lengths.min()) == 0:
            raise DataError("no texts to classify, or a text without tokens")
        starts = torch.cumsum(lengths, 0) - lengths
        flat = torch.from_numpy(np.concatenate(ids).astype(np.int64))
        return cls(flat, starts, lengths, None if labels is None else torch.tensor(labels, dtype=torch.long), texts)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, rows: Tensor) -> EncodedTexts:
        return EncodedTexts(self.ids, self.starts[rows], self.lengths[rows],
                            None if self.labels is None else self.labels[rows], [self.texts[i] for i in rows.tolist()])

    def batch(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Token ids (B, T) padded with 0 to the longest of ``rows``, mask (B, T), labels (B,)."""
        lengths = self.lengths[rows]
        positions = torch.arange(int(lengths.max()))
        mask = positions < lengths[:, None]                                             # (B, T)
        index = (self.starts[rows, None] + positions).clamp(max=len(self.ids) - 1)      # (B, T)
        tokens = torch.where(mask, self.ids[index], 0)
        return tokens, mask, None if self.labels is None else self.labels[rows]


def macro_f1(matrix: Tensor) -> float:
    """The mean F1 over the classes that occur in the gold or the predicted labels.

    Args:
        matrix: (C, C) counts, ``[gold, predicted]``.
    """
    true_positives = matrix.diagonal().double()
    gold, predicted = matrix.sum(dim=1).double(), matrix.sum(dim=0).double()
    present = (gold + predicted) > 0
    return (2 * true_positives[present] / (gold[present] + predicted[present])).mean().item()


# ---- reading the data ------------------------------------------------------------------------

def read_splits(options: ClassificationOptions) -> dict[str, list[LabeledText]]:
    """The train, valid and test examples that ``options.data`` names (module docstring).

    Raises:
        DataError: a missing path, an unreadable or malformed file, too few examples to split.
    """
    if options.data == LISTOPS:
        sizes = {split: getattr(options, f"listops_{split}") for split in ("train", "valid", "test")}
        generated = listops.generate_splits(
            sizes, seed=options.data_seed, max_depth=options.listops_max_depth, max_args=options.listops_max_args,
            min_length=options.listops_min_length, max_length=options.listops_max_length)
        return {split: [LabeledText(str(label), text, f"listops {split} example {index + 1}")
                        for index, (text, label) in enumerate(examples)] for split, examples in generated.items()}
    path = Path(options.data)
    if path.is_dir():
        return {split: read_tsv(file) for split, file in find_tsv_files(path).items()}
    if not path.is_file():
        raise DataError(f"--data {options.data!r} is not listops, a TSV file or a directory")
    return split_by_fractions(read_tsv(path), options.split_fractions, options.data_seed,
                              f"examples in {path} (or give a directory of three files)")
