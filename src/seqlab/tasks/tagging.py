"""Sequence tagging: one tag per word, e.g. universal part of speech on a UD treebank.

The data is a treebank directory (``*-train.conllu``, ``*-dev.conllu``, ``*-test.conllu``)
read by ``seqlab.data.conll``. The vocabulary of word forms and characters comes from the
training split alone; a held-out word outside it is *unseen* and maps to ``<unk>`` (id 1),
and its accuracy is reported apart (``seqlab.metrics.tagging``).

Every tagger sees a ``TaggingBatch``: padded word ids (B, T), character ids (B, T, C), the
mask, the gold tags when known, and the words themselves for taggers that read strings
(the feature CRF, the HMM's suffix model). A tagger defines ``tag(batch) -> (B, T) tag ids``
and ``loss(batch)``, its mean negative log-likelihood of the gold tags per word (the
validation loss of every tagger, so all of them are compared on one quantity); the neural
taggers train on it with the ``Trainer``, while the HMM and the feature CRF ``fit(task)``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from seqlab.contracts import device_of
from seqlab.data.json_files import read_json_file, write_json_file
from seqlab.data.conll import Column, TaggedSentence, find_conllu_files, read_conllu
from seqlab.data.tokenizers import Tokenizer, load_tokenizer
from seqlab.errors import ConfigError, DataError
from seqlab.metrics.tagging import confusion_matrix, confusion_summary, tagging_metrics
from seqlab.report import Column as TableColumn, Curve
from seqlab.tasks.base import ReportSpec, Showcase, Task, register_task, tokenizer_from

SPLITS = ("train", "valid", "test")
PAD, UNK = 0, 1
MAX_WORD_CHARACTERS = 24     # longer words keep their first and last 12 characters
VOCABULARY_KIND = "seqlab-tagging-vocabulary"


class TaggingVocabulary:
    """Word forms and characters of the training split (after ``<pad>`` and ``<unk>``), and the
    tag set. It is the ``vocabulary.json`` of a tagging run.

    With ``pieces`` (another run's tokenizer, ``tokenizer_from``), a word's "characters" are the
    pieces that tokenizer makes of it after a space, ``" " + word``, each piece id plus one
    (0 is padding): a model pre-trained with that tokenizer reads every word as it read text.
    """

    def __init__(self, words: Sequence[str], characters: Sequence[str], tags: Sequence[str],
                 pieces: Tokenizer | None = None):
        self.words = ["<pad>", "<unk>", *words]
        self.pieces = pieces
        self.characters = (["<pad>", "<unk>", *characters] if pieces is None else
                           ["<pad>", *(pieces.decode([index]) for index in range(pieces.vocab_size))])
        self.tags = list(tags)
        self._word_index = {word: index for index, word in enumerate(self.words)}
        self._character_index = {character: index for index, character in enumerate(self.characters)}
        self._tag_index = {tag: index for index, tag in enumerate(self.tags)}

    @classmethod
    def build(cls, sentences: Sequence[TaggedSentence]) -> TaggingVocabulary:
        """Every word, character and tag of ``sentences``, most frequent first."""
        words = Counter(word for sentence in sentences for word in sentence.words)
        characters = Counter(character for word, count in words.items() for character in word for _ in range(count))
        tags = Counter(tag for sentence in sentences for tag in sentence.tags)
        return cls([w for w, _ in words.most_common()], [c for c, _ in characters.most_common()],
                   [t for t, _ in tags.most_common()])

    def word_ids(self, words: Sequence[str]) -> list[int]:
        return [self._word_index.get(word, UNK) for word in words]

    def with_pieces(self, pieces: Tokenizer) -> TaggingVocabulary:
        """The same words and tags, the characters read by ``pieces``."""
        return TaggingVocabulary(self.words[2:], [], self.tags, pieces)

    def character_ids(self, word: str) -> list[int]:
        """The word's character ids (its first and last ``MAX_WORD_CHARACTERS / 2`` of a longer
        word), or its pieces' ids plus one."""
        if self.pieces is not None:
            ids = [index + 1 for index in self.pieces.encode(" " + word, unknown="replace")]
        else:
            ids = [self._character_index.get(character, UNK) for character in word]
        if len(ids) > MAX_WORD_CHARACTERS:
            half = MAX_WORD_CHARACTERS // 2
            ids = ids[:half] + ids[-half:]
        return ids

    def tag_ids(self, tags: Sequence[str], where: str = "") -> list[int]:
        try:
            return [self._tag_index[tag] for tag in tags]
        except KeyError as error:
            raise DataError(
                f"{where}tag {error.args[0]!r} does not occur in the training data; "
                f"known tags: {', '.join(self.tags)}"
            ) from None

    def is_known(self, word: str) -> bool:
        return word in self._word_index

    def save(self, path: str | Path) -> None:
        """Words, characters and tags (no characters with ``pieces``: the run saves the tokenizer)."""
        characters = [] if self.pieces is not None else self.characters[2:]
        write_json_file(path, VOCABULARY_KIND, {"words": self.words[2:], "characters": characters, "tags": self.tags})

    @classmethod
    def load(cls, path: str | Path) -> TaggingVocabulary:
        """The vocabulary ``save`` wrote; DataError if the file is missing or malformed."""
        payload = read_json_file(path, VOCABULARY_KIND, "tagging vocabulary", ("words", "characters", "tags"))
        return cls(payload["words"], payload["characters"], payload["tags"])


@dataclass
class TaggingBatch:
    """Padded sentences: B sentences of at most T words of at most C characters."""

    word_ids: Tensor                              # (B, T) int64, PAD beyond each sentence
    character_ids: Tensor                         # (B, T, C) int64
    mask: Tensor                                  # (B, T) bool, True at real words
    tags: Tensor | None = None                    # (B, T) int64, 0 at padding; None when unknown
    words: list[tuple[str, ...]] | None = None    # the words themselves (not moved by ``to``)

    def to(self, device: torch.device | str) -> TaggingBatch:
        return TaggingBatch(self.word_ids.to(device), self.character_ids.to(device), self.mask.to(device),
                            None if self.tags is None else self.tags.to(device), self.words)

    @property
    def lengths(self) -> Tensor:
        return self.mask.sum(dim=1)

    def as_tuple(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The tensors, for the Trainer (which slices every part by rows)."""
        return self.word_ids, self.character_ids, self.tags, self.mask


@dataclass(frozen=True, kw_only=True)
class TaggingOptions:
    """The data of a tagging run.

    Attributes:
        data: a treebank directory with *-train.conllu, *-dev.conllu and *-test.conllu files.
        column: the tag column to predict: upos (17 universal tags) or xpos (the treebank's own).
        tokenizer_from: a run directory (e.g. an mlm run) or tokenizer.json whose tokenizer splits
            every word into the pieces a character-reading tagger sees, so that --init-from RUN's
            embedding means the same pieces; none: the training words' own characters.
    """

    data: str
    column: Column = "upos"
    tokenizer_from: str | None = None


@register_task("tag")
class Tagging(Task):
    """Tagging over the train / valid / test sentences of a treebank.

    Args:
        splits: sentences per split name (train, valid, test).
        column: the tag column the sentences carry ("upos" or "xpos"), for the spec.
        source: the data path they came from, for the spec.
        vocabulary: a saved run's vocabulary; None builds one from the training split.
    """

    Options = TaggingOptions
    predict_command = "tag"
    predict_help = "one sentence per line, words separated by spaces; printed as word/TAG"
    report = ReportSpec(
        columns=(TableColumn("test acc %", "accuracy", "{:.2f}", "higher", 100.0),
                 TableColumn("unseen acc %", "unseen_accuracy", "{:.2f}", "higher", 100.0),
                 TableColumn("tag tok/s", "tokens_per_second", "{:,.0f}", "higher")),
        curve=Curve("valid_accuracy", "validation accuracy (%)", "higher", 100.0),
        speed="train words/s",
    )
    default_budget_seconds = 1080.0            # 9 minutes for each of the two neural taggers
    matched_config_fields = ("n_words", "n_characters", "n_tags")
    artifact_loaders = {"vocabulary": lambda path: TaggingVocabulary.load(path), "tokenizer": load_tokenizer}
    optional_artifacts = ("tokenizer",)

    def __init__(self, splits: dict[str, list[TaggedSentence]], column: Column = "upos",
                 source: str | None = None, vocabulary: TaggingVocabulary | None = None):
        if not splits.get("train") and vocabulary is None:
            raise DataError("the tagging task needs training sentences")
        self.splits = splits
        self.column = column
        self.source = source
        self.vocabulary = vocabulary or TaggingVocabulary.build(splits["train"])
        for split, sentences in splits.items():
            for index, sentence in enumerate(sentences):
                if len(sentence.words) != len(sentence.tags):
                    raise DataError(f"{split} sentence {index + 1} has {len(sentence.words)} words but "
                                    f"{len(sentence.tags)} tags")
                if not sentence.words:
                    raise DataError(f"{split} sentence {index + 1} is empty")
        self._encoded = {split: self.encode(sentences) for split, sentences in splits.items() if sentences}

    @classmethod
    def from_data(cls, data: str | Path, column: Column = "upos") -> Tagging:
        """The task over a treebank directory (see ``seqlab.data.conll.find_conllu_files``)."""
        files = find_conllu_files(data)
        return cls({split: read_conllu(path, column) for split, path in files.items()}, column,
                   str(Path(data).resolve()))

    @classmethod
    def from_options(cls, options: TaggingOptions) -> Tagging:
        if options.tokenizer_from is None:
            return cls.from_data(options.data, options.column)
        files = find_conllu_files(options.data)
        splits = {split: read_conllu(path, options.column) for split, path in files.items()}
        if not splits.get("train"):
            raise DataError("the tagging task needs training sentences")
        vocabulary = TaggingVocabulary.build(splits["train"]).with_pieces(tokenizer_from(options.tokenizer_from))
        return cls(splits, options.column, str(Path(options.data).resolve()), vocabulary)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], artifacts: dict[str, Any], data: str | None = None,
                  with_data: bool = True) -> Tagging:
        """The task a run was trained on, with its saved vocabulary: over its own treebank, over
        another ``data`` (a treebank directory, or one .conllu file, which becomes the test
        split), or with no data (to tag)."""
        column, vocabulary = spec.get("column", "upos"), artifacts["vocabulary"]
        if "tokenizer" in artifacts:
            vocabulary = vocabulary.with_pieces(artifacts["tokenizer"])
        if not with_data:
            return cls({}, column, spec.get("data"), vocabulary)
        source = data if data is not None else spec["data"]
        if Path(source).is_file():
            return cls({"test": read_conllu(source, column)}, column, str(source), vocabulary)
        files = find_conllu_files(source)
        return cls({split: read_conllu(path, column) for split, path in files.items()}, column, str(source),
                   vocabulary)

    def spec(self) -> dict[str, Any]:
        return {"task": self.name, "data": self.source, "column": self.column}

    def artifacts(self) -> dict[str, Any]:
        if self.vocabulary.pieces is not None:
            return {"vocabulary": self.vocabulary, "tokenizer": self.vocabulary.pieces}
        return {"vocabulary": self.vocabulary}

    @property
    def tag_names(self) -> list[str]:
        return self.vocabulary.tags

    @property
    def train_tokens(self) -> int:
        return sum(len(sentence) for sentence in self.splits.get("train", []))

    def model_defaults(self) -> dict[str, Any]:
        """Config values a tagger for this task must take: the vocabulary and tag set sizes."""
        return {"n_words": len(self.vocabulary.words), "n_characters": len(self.vocabulary.characters),
                "n_tags": len(self.vocabulary.tags)}

    @classmethod
    def example_model_defaults(cls) -> dict[str, Any]:
        return {"n_words": 20_000, "n_characters": 100, "n_tags": 17}

    def batch(self, sentences: Sequence[TaggedSentence | Sequence[str]]) -> TaggingBatch:
        """Pad ``sentences`` into one batch; tags are included when every sentence has them.

        Raises:
            DataError: an empty sentence, or a tag the training data never had.
        """
        encoded = self.encode(sentences)
        return encoded.batch(torch.arange(len(encoded)))

    def encode(self, sentences: Sequence[TaggedSentence | Sequence[str]]) -> EncodedSentences:
        """``sentences`` as ids, from which any subset is batched by indexing alone."""
        return EncodedSentences.build(sentences, self.vocabulary)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Random training sentences, padded: word ids, character ids, tags, mask."""
        encoded = self._encoded["train"]
        rows = torch.randint(0, len(encoded), (batch_size,), generator=generator)
        return encoded.batch(rows).as_tuple()

    def batch_tokens(self, batch: Sequence[Tensor]) -> int:
        """Words in a ``train_batch`` (padding excluded)."""
        return int(batch[-1].sum())

    def loss_items(self, batch: Sequence[Tensor]) -> int:
        """The loss is a mean per word: words, not sentences, weight a part of a batch."""
        return self.batch_tokens(batch)

    def loss(self, model: nn.Module, batch: Sequence[Tensor]) -> Tensor:
        """The tagger's mean loss per word over a ``train_batch``."""
        word_ids, character_ids, tags, mask = batch
        return model.loss(TaggingBatch(word_ids, character_ids, mask, tags))

    @torch.no_grad()
    def tag_sentences(self, model: nn.Module, sentences: Sequence[Sequence[str]],
                      batch_size: int = 128) -> list[list[str]]:
        """The tag names ``model`` gives each word of each sentence."""
        predicted, _ = self._tag_all(model, self.encode(sentences), batch_size)
        return [[self.tag_names[i] for i in row] for row in predicted]

    def predict(self, model: nn.Module, inputs: Sequence[str], options: Any = None) -> list[str]:
        """Each line's words as ``word/TAG``, the words split at whitespace."""
        sentences = [line.split() for line in inputs]
        for number, words in enumerate(sentences, start=1):
            if not words:
                raise DataError(f"input line {number} has no words; give one sentence per line")
        return [" ".join(f"{word}/{tag}" for word, tag in zip(words, tags))
                for words, tags in zip(sentences, self.tag_sentences(model, sentences))]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "valid", *, max_batches: int | None = None,
                 details: bool = False, batch_size: int = 128) -> dict[str, Any]:
        """accuracy, unseen_accuracy, tagging tokens/s and loss (the tagger's mean negative
        log-likelihood per word) over a split; with ``details``, the most frequent confusions.

        ``max_batches`` limits the evaluation to a fixed first part of the split, for quick
        checks during training.
        """
        encoded = self._split(split)
        if max_batches is not None:
            encoded = encoded.subset(torch.arange(min(max_batches * batch_size, len(encoded))))
        was_training = model.training
        model.eval()
        predicted, seconds = self._tag_all(model, encoded, batch_size)
        loss, words = 0.0, 0
        for start in range(0, len(encoded), batch_size):
            part = encoded.batch(torch.arange(start, min(start + batch_size, len(encoded))))
            n = int(part.mask.sum())
            loss += model.loss(part.to(device_of(model))).item() * n
            words += n
        model.train(was_training)
        gold, flat_predicted, unseen = self._flatten(encoded, predicted)
        metrics: dict[str, Any] = tagging_metrics(gold, flat_predicted, unseen)
        metrics["loss"] = loss / words
        metrics["tokens_per_second"] = metrics["tokens"] / seconds
        if details:
            matrix = confusion_matrix(gold, flat_predicted, len(self.tag_names))
            metrics["confusions"] = confusion_summary(matrix, self.tag_names, 5)
        return metrics

    def unseen_words(self, split: str) -> int:
        """Word tokens of ``split`` whose form the training split never had."""
        encoded = self._split(split)
        return int((encoded.type_word_ids[encoded.type_ids] == UNK).sum())

    def describe(self) -> str:
        words = ", ".join(f"{split} {sum(map(len, sentences)):,}" for split, sentences in self.splits.items())
        unseen = f" ({self.unseen_words('test'):,} test words unseen in training)" if "test" in self._encoded else ""
        return (f"treebank `{self.source}`, {self.column.upper()} ({len(self.tag_names)} tags), "
                f"words: {words}{unseen}")

    def showcase(self, model: nn.Module) -> Showcase:
        """The most frequent test confusions and the first test sentence tagged (gold tags
        shown where the tagger erred)."""
        confusions = self.evaluate(model, "test", details=True)["confusions"]
        first = self.splits["test"][0]
        predicted = self.tag_sentences(model, [first.words])[0]
        example = " ".join(f"{word}/{tag}" + ("" if tag == gold else f"(gold {gold})")
                           for word, tag, gold in zip(first.words, predicted, first.tags))
        return Showcase({
            "Most frequent confusions (gold -> predicted)":
                "\n".join(f"{gold:>6} -> {guess:<6} {count:,}" for gold, guess, count in confusions),
            "A tagged test sentence": example,
        })

    def _split(self, split: str) -> EncodedSentences:
        if split not in self._encoded:
            raise ConfigError(f"unknown or empty split {split!r}; this task has {', '.join(self._encoded) or 'no data'}")
        return self._encoded[split]

    def _tag_all(self, model: nn.Module, encoded: EncodedSentences, batch_size: int) -> tuple[list[list[int]], float]:
        """Tag ids per sentence, in order, and the seconds spent tagging (batched by length)."""
        device = device_of(model)
        lengths = encoded.lengths
        order = torch.argsort(lengths, descending=True, stable=True)
        predicted: list[list[int]] = [[] for _ in range(len(order))]
        started = time.perf_counter()
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            tags = model.tag(encoded.batch(rows).to(device)).cpu()
            for row, sentence_tags, length in zip(rows.tolist(), tags.tolist(), lengths[rows].tolist()):
                predicted[row] = sentence_tags[:length]
        return predicted, time.perf_counter() - started

    def _flatten(self, encoded: EncodedSentences, predicted: list[list[int]]) -> tuple[Tensor, Tensor, Tensor]:
        """Gold tags, predicted tags and the unseen-word flags of every word, in order."""
        mask = torch.arange(encoded.type_ids.shape[1]) < encoded.lengths[:, None]
        gold = encoded.tags[mask]
        flat_predicted = torch.tensor([tag for row in predicted for tag in row], dtype=torch.long)
        unseen = (encoded.type_word_ids[encoded.type_ids] == UNK)[mask]
        return gold, flat_predicted, unseen


@dataclass
class EncodedSentences:
    """Sentences as indices into their distinct word forms (types), each type encoded once.

    A batch is then a few gathers, however many sentences and words there are; padding every
    word of every sentence to characters up front would take hundreds of megabytes.
    """

    type_ids: Tensor              # (N, T) indices into the types; type 0 is padding
    lengths: Tensor               # (N,)
    type_word_ids: Tensor         # (n_types,) vocabulary id of each type (UNK when unseen)
    type_characters: Tensor       # (n_types, C) character ids of each type
    type_lengths: Tensor          # (n_types,) characters in each type
    tags: Tensor | None           # (N, T), 0 at padding
    words: list[tuple[str, ...]]

    @classmethod
    def build(cls, sentences: Sequence[TaggedSentence | Sequence[str]], vocabulary: TaggingVocabulary) -> EncodedSentences:
        words = [tuple(s.words) if isinstance(s, TaggedSentence) else tuple(s) for s in sentences]
        if not words:
            raise DataError("no sentences to tag")
        for index, sentence in enumerate(words):
            if not sentence or any(not word for word in sentence):
                raise DataError(f"sentence {index + 1} is empty or has an empty word; "
                                "give at least one word per sentence")
        types = {"": 0}
        for sentence in words:
            for word in sentence:
                types.setdefault(word, len(types))
        n, t = len(words), max(map(len, words))
        type_ids = torch.zeros(n, t, dtype=torch.long)
        for row, sentence in enumerate(words):
            type_ids[row, :len(sentence)] = torch.tensor([types[word] for word in sentence])
        characters = [vocabulary.character_ids(word) for word in types]
        type_characters = torch.zeros(len(types), max(map(len, characters)), dtype=torch.long)
        for index, ids in enumerate(characters[1:], start=1):
            type_characters[index, :len(ids)] = torch.tensor(ids)
        type_word_ids = torch.tensor([PAD] + vocabulary.word_ids(list(types)[1:]), dtype=torch.long)
        tags = None
        if all(isinstance(s, TaggedSentence) for s in sentences):
            tags = torch.zeros(n, t, dtype=torch.long)
            for row, sentence in enumerate(sentences):
                tags[row, :len(sentence)] = torch.tensor(vocabulary.tag_ids(sentence.tags, f"sentence {row + 1}: "))
        return cls(type_ids, torch.tensor(list(map(len, words))), type_word_ids, type_characters,
                   torch.tensor(list(map(len, characters))), tags, words)

    def __len__(self) -> int:
        return len(self.words)

    def subset(self, rows: Tensor) -> EncodedSentences:
        return EncodedSentences(self.type_ids[rows], self.lengths[rows], self.type_word_ids, self.type_characters,
                                self.type_lengths, None if self.tags is None else self.tags[rows],
                                [self.words[i] for i in rows.tolist()])

    def batch(self, rows: Tensor) -> TaggingBatch:
        """The sentences ``rows``, padded to their longest sentence and word."""
        t = int(self.lengths[rows].max())
        type_ids = self.type_ids[rows, :t]
        c = max(1, int(self.type_lengths[type_ids].max()))
        return TaggingBatch(
            word_ids=self.type_word_ids[type_ids],
            character_ids=self.type_characters[type_ids][..., :c],
            mask=torch.arange(t) < self.lengths[rows, None],
            tags=None if self.tags is None else self.tags[rows, :t],
            words=[self.words[i] for i in rows.tolist()],
        )
