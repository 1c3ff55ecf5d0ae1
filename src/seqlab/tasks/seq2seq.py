"""Sequence-to-sequence transduction: a source sequence in, a target sequence of its own length
out (many-to-many, unsynchronised): translation, and the synthetic tasks that test it.

The data is one of:

- a synthetic kind (``seqlab.data.transduction``): ``copy``, ``reverse``, ``sort``, ``addition``
  (multi-digit sums written as text) or ``dates`` (date formats to ISO), with source lengths
  drawn in ``[min_length, max_length]``, generated from ``data_seed`` with no source sentence in
  two splits;
- a TSV file of ``source<TAB>target`` lines (English-French: ``eng_fra/eng-fra.txt`` with
  ``--filter tutorial``, the PyTorch tutorial's pairs), split by distinct source sentence, so a
  source sentence with several translations is wholly in one split.

Each side has its own tokenizer (char, word, bpe or unigram, trained on the training split),
saved as ``source_tokenizer.json`` and ``target_tokenizer.json``. Model ids shift the
tokenizer's: source id 0 is padding; target ids 0, 1, 2 are PAD, BOS and EOS. A batch is
(src (B, S), src_mask (B, S), tgt_in (B, T) = BOS y_1 .. y_{T-1}, tgt_out (B, T) = y_1 .. EOS),
padded with PAD.

An imported model brings its own id scheme (:class:`IdScheme`, the spec's ``vocabulary``
entry; a run trained here has none and takes the scheme above). T5 (``seqlab import-hf``) has
one tokenizer for both sides (saved under both names), ids unshifted, PAD = 0, EOS = 1, decoding
starting from PAD (BOS = PAD), EOS appended to every source as its tokenizer does, and more
embedding rows than the tokenizer has ids (32128 for 32100). Such a run has no data of its own:
it is evaluated on a TSV file (``seqlab eval RUN --data pairs.tsv``).

Training is teacher forcing, optionally with scheduled sampling (``seqlab.teacher_forcing``,
its sampling probability in the training log) and label smoothing (Szegedy et al. 2016: the
gold token's target mass is 1 - e, the rest spread evenly over the vocabulary, as torch's
``cross_entropy(label_smoothing=e)``).

Metrics: loss (teacher-forced cross-entropy per target token, nats, without smoothing),
token_accuracy (the teacher-forced next-token argmax's share of target tokens, EOS included),
and over greedy decodings: exact_match (the share of outputs equal to the reference), BLEU and
chrF, corpus-level, by ``sacrebleu`` (its signature is in ``describe()``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import sacrebleu
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pad_sequence

from seqlab.contracts import device_of
from seqlab.data import transduction
from seqlab.data.tokenizers import Tokenizer, load_tokenizer, train_tokenizer
from seqlab.data.transduction import Pair
from seqlab.decoding import beam_search, decode_greedy
from seqlab.errors import ConfigError, DataError
from seqlab.fields import config_to_dict, make_config
from seqlab.report import Breakdown, Column, Curve
from seqlab.tasks.base import ReportSpec, Showcase, Task, register_task
from seqlab.teacher_forcing import Decay, check_decay, scheduled_sampling_logits, teacher_forcing_probability

PAD, BOS, EOS = 0, 1, 2
TARGET_SHIFT = 3              # target id = tokenizer id + 3
SOURCE_SHIFT = 1              # source id = tokenizer id + 1
EVAL_BATCH = 64
SHOWN_EXAMPLES = 5


@dataclass(frozen=True, kw_only=True)
class Seq2SeqOptions:
    """The data and training objective of a sequence-to-sequence run.

    Attributes:
        data: a synthetic kind (copy, reverse, sort, addition, dates) or a TSV file of
            source<TAB>target lines (none: no data of its own, an imported model's run).
        filter: none, or tutorial: the PyTorch tutorial's English-French pairs (ASCII-folded,
            lower-cased, fewer than 10 words a side, English starting "i am", "he is", ...).
        tokenizer: the source side's: char, word, bpe or unigram (none: char for dates, whose
            target is one ISO word, word otherwise).
        target_tokenizer: the target side's (none: as the source's).
        tokenizer_from: a seq2seq run (an imported T5, say) whose tokenizers and id scheme to
            use instead of training tokenizers, to fine-tune its model (--init-from RUN).
        vocab_size: the most ids of each trained word, bpe or unigram tokenizer (none: all
            words; 1024 pieces).
        min_length, max_length: source lengths of synthetic data, in symbols (both included;
            for addition the digits of each operand; not for dates).
        train_size, valid_size, test_size: synthetic pairs per split.
        split_fractions: fractions of a TSV file's distinct source sentences for train, valid
            and test.
        data_seed: seeds the synthetic data and the TSV split.
        label_smoothing: e in [0, 1): the gold token's target mass is 1 - e.
        scheduled_sampling: none, linear, exponential or inverse_sigmoid decay of the
            teacher-forcing probability (Bengio et al. 2015).
        sampling_k, sampling_c, sampling_min: the decay's constants k and c and the least
            teacher-forcing probability (linear: max(min, k - c i); exponential: k^i, k < 1;
            inverse_sigmoid: k / (k + exp(i / k)), k >= 1; i the training step).
        max_output_length: the most target tokens a decoding writes, EOS included (none: twice
            the longest training target, plus 5).
    """

    data: str | None = "reverse"
    filter: Literal["none", "tutorial"] = "none"
    tokenizer: Literal["char", "word", "bpe", "unigram"] | None = None
    target_tokenizer: Literal["char", "word", "bpe", "unigram"] | None = None
    tokenizer_from: str | None = None
    vocab_size: int | None = None
    min_length: int = 5
    max_length: int = 20
    train_size: int = 10_000
    valid_size: int = 500
    test_size: int = 500
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    data_seed: int = 0
    label_smoothing: float = 0.0
    scheduled_sampling: Decay = "none"
    sampling_k: float = 1.0
    sampling_c: float = 0.0
    sampling_min: float = 0.0
    max_output_length: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        check_decay(self.scheduled_sampling, self.sampling_k, self.sampling_c, self.sampling_min)
        if self.max_output_length is not None and self.max_output_length < 1:
            raise ConfigError(f"max_output_length must be >= 1 or none, got {self.max_output_length}")
        if self.is_synthetic and self.filter != "none":
            raise ConfigError(f"filter is for TSV files; {self.data} is generated")
        trained = [name for name in ("tokenizer", "target_tokenizer", "vocab_size") if getattr(self, name) is not None]
        if self.tokenizer_from is not None and trained:
            raise ConfigError(f"{trained[0]} is for tokenizers trained here; tokenizer_from brings its own")

    @property
    def is_synthetic(self) -> bool:
        return self.data in transduction.SYNTHETIC_KINDS


@dataclass(frozen=True, kw_only=True)
class TranslationOptions:
    """How ``seqlab translate`` decodes.

    Attributes:
        beam_size: hypotheses kept at each step (1: greedy).
        length_penalty: none, average (log P / |Y|^alpha) or gnmt (log P / ((5 + |Y|) / 6)^alpha).
        alpha: the length penalty's exponent.
        max_output_length: the most target tokens, EOS included (none: the task's).
        batch_size: sources decoded at once.
    """

    beam_size: int = 5
    length_penalty: Literal["none", "average", "gnmt"] = "gnmt"
    alpha: float = 0.6
    max_output_length: int | None = None
    batch_size: int = 32


@dataclass(frozen=True, kw_only=True)
class IdScheme:
    """How model ids relate to the tokenizers' ids. The defaults are seqlab's own scheme (module
    docstring); an imported model's run keeps its own in the spec's ``vocabulary`` entry.

    Attributes:
        pad_id: pads sources and targets; the loss ignores it.
        bos_id: the decoder's first input (T5: PAD itself).
        eos_id: ends every target.
        source_shift, target_shift: model id = tokenizer id + shift, on each side.
        source_eos_id: an id appended to every source (T5's EOS, as its tokenizer appends it),
            or none.
        src_vocab_size, tgt_vocab_size: the model's vocabularies when they are not the
            tokenizer's plus the shift (a T5 checkpoint has rows for ids no piece has), or none.
    """

    pad_id: int = PAD
    bos_id: int = BOS
    eos_id: int = EOS
    source_shift: int = SOURCE_SHIFT
    target_shift: int = TARGET_SHIFT
    source_eos_id: int | None = None
    src_vocab_size: int | None = None
    tgt_vocab_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("pad_id", "bos_id", "eos_id", "source_shift", "target_shift", "source_eos_id"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"the seq2seq vocabulary's {name} must be >= 0, got {value}")
        if self.eos_id == self.pad_id:
            raise ConfigError(f"the seq2seq vocabulary's eos_id and pad_id are both {self.eos_id}; the loss "
                              "would ignore every EOS")


@dataclass
class EncodedPairs:
    """Pairs as model ids: ``sources[i]`` (S_i,) and ``targets[i]`` (T_i,) ending in EOS (None to
    translate); the pairs kept for their text; the scheme's PAD, BOS and EOS."""

    sources: list[Tensor]
    targets: list[Tensor] | None
    pairs: list[Pair]
    pad_id: int = PAD
    bos_id: int = BOS
    eos_id: int = EOS

    def __len__(self) -> int:
        return len(self.sources)

    def batch(self, rows: Sequence[int]) -> tuple[Tensor, ...]:
        """(src, src_mask, tgt_in, tgt_out) of ``rows``, padded with PAD (the module docstring).
        The source mask comes from the lengths, so a source token equal to PAD stays real."""
        sources = [self.sources[i] for i in rows]
        src = pad_sequence(sources, batch_first=True, padding_value=self.pad_id)            # (B, S)
        lengths = torch.tensor([len(source) for source in sources])
        src_mask = torch.arange(src.shape[1])[None, :] < lengths[:, None]                 # (B, S)
        if self.targets is None:
            return src, src_mask
        targets = pad_sequence([self.targets[i] for i in rows], batch_first=True, padding_value=self.pad_id)
        tgt_in = torch.cat([torch.full((len(rows), 1), self.bos_id), targets[:, :-1]], dim=1)   # (B, T)
        tgt_in = tgt_in.masked_fill(tgt_in == self.eos_id, self.pad_id)     # nothing is read after EOS
        return src, src_mask, tgt_in, targets


@register_task("seq2seq")
class Seq2Seq(Task):
    """Transduction over train / valid / test pairs (``read_splits``).

    Args:
        splits: pairs per split name; may be empty (a saved run, to translate).
        options: the options the data came from.
        source_tokenizer, target_tokenizer: a saved run's; None trains them on the training split.
        ids: the id scheme (None: seqlab's own, :class:`IdScheme`'s defaults).
    Raises:
        ConfigError: a scheme whose model vocabularies do not hold the tokenizers' ids.
    """

    Options = Seq2SeqOptions
    PredictOptions = TranslationOptions
    predict_command = "translate"
    predict_help = "one source sentence per line; printed as its translation"
    report = ReportSpec(
        columns=(Column("exact %", "exact_match", "{:.2f}", "higher", 100.0),
                 Column("BLEU", "bleu", "{:.2f}", "higher"),
                 Column("chrF", "chrf", "{:.2f}", "higher"),
                 Column("token acc %", "token_accuracy", "{:.2f}", "higher", 100.0)),
        curve=Curve("valid_bleu", "validation BLEU", "higher"),
        speed="train target tok/s",
        figures=("attention",),
        breakdown=True,
    )
    default_budget_seconds = 300.0
    matched_config_fields = ("src_vocab_size", "tgt_vocab_size")
    artifact_loaders = {"source_tokenizer": load_tokenizer, "target_tokenizer": load_tokenizer}

    def __init__(self, splits: dict[str, list[Pair]], options: Seq2SeqOptions | None = None,
                 source_tokenizer: Tokenizer | None = None, target_tokenizer: Tokenizer | None = None,
                 ids: IdScheme | None = None):
        self.options = options or Seq2SeqOptions()
        self.ids = ids or IdScheme()
        if (source_tokenizer is None or target_tokenizer is None) and not splits.get("train"):
            raise DataError("the seq2seq task needs training pairs")
        self.splits = splits
        train = splits.get("train", [])
        source_kind = self.options.tokenizer or ("char" if self.options.data == "dates" else "word")
        vocab_size = None if source_kind == "char" else self.options.vocab_size
        # Texts are joined by a space, not a newline: a newline in the vocabulary would let a
        # translation break its line (and subword pieces span two texts).
        self.source_tokenizer = source_tokenizer or train_tokenizer(
            source_kind, " ".join(p.source for p in train), vocab_size=vocab_size)
        target_kind = self.options.target_tokenizer or source_kind
        self.target_tokenizer = target_tokenizer or train_tokenizer(
            target_kind, " ".join(p.target for p in train), vocab_size=None if target_kind == "char" else vocab_size)
        self._check_vocabularies()
        self._encoded = {split: self.encode(pairs) for split, pairs in splits.items() if pairs}
        longest = max((len(t) for t in self._encoded["train"].targets), default=0) if "train" in self._encoded else 0
        self.max_output_length = self.options.max_output_length or (2 * longest + 5 if longest else 200)
        self._teacher_forcing = 1.0

    def _check_vocabularies(self) -> None:
        """ConfigError unless the model vocabularies hold every tokenizer id (shifted) and the
        special ids."""
        sizes = self.model_defaults()
        sides = (("source", self.source_tokenizer, self.ids.source_shift, "src_vocab_size"),
                 ("target", self.target_tokenizer, self.ids.target_shift, "tgt_vocab_size"))
        for side, tokenizer, shift, key in sides:
            if tokenizer.vocab_size + shift > sizes[key]:
                raise ConfigError(f"the model's {key} is {sizes[key]}, fewer than the {side} tokenizer's "
                                  f"{tokenizer.vocab_size} ids (+{shift}); they do not belong together")
        specials = {"pad_id": self.ids.pad_id, "bos_id": self.ids.bos_id, "eos_id": self.ids.eos_id}
        for name, value in specials.items():
            if value >= sizes["tgt_vocab_size"]:
                raise ConfigError(f"the seq2seq vocabulary's {name} {value} is outside the model's "
                                  f"{sizes['tgt_vocab_size']} target ids")
        if self.ids.source_eos_id is not None and self.ids.source_eos_id >= sizes["src_vocab_size"]:
            raise ConfigError(f"the seq2seq vocabulary's source_eos_id {self.ids.source_eos_id} is outside the "
                              f"model's {sizes['src_vocab_size']} source ids")

    # ---- building ------------------------------------------------------------------------

    @classmethod
    def from_options(cls, options: Seq2SeqOptions) -> Seq2Seq:
        if options.tokenizer_from is None:
            return cls(read_splits(options), options)
        from seqlab.checkpoint import read_info
        from seqlab.rundir import resolve_checkpoint

        checkpoint = resolve_checkpoint(options.tokenizer_from)
        spec = read_info(checkpoint)["task"]
        if spec["task"] != cls.name:
            raise ConfigError(f"tokenizer_from {options.tokenizer_from!r} is a {spec['task']} run; a seq2seq run "
                              "takes the tokenizers of another seq2seq run")
        tokenizers = cls.load_artifacts(checkpoint)
        return cls(read_splits(options), options, tokenizers["source_tokenizer"], tokenizers["target_tokenizer"],
                   ids=make_config(IdScheme, spec.get("vocabulary") or {}))

    @classmethod
    def from_spec(cls, spec: dict[str, Any], artifacts: dict[str, Any], data: str | None = None,
                  with_data: bool = True) -> Seq2Seq:
        """The task a run was trained on, with its tokenizers and id scheme: over its own data,
        over other ``data`` (a TSV file, wholly the test split, filtered as the run's was), or none.

        Raises:
            DataError: a run without data of its own (an imported model) asked for its data.
        """
        options = make_config(Seq2SeqOptions, {key: value for key, value in spec.items()
                                               if key not in ("task", "vocabulary")})
        ids = make_config(IdScheme, spec.get("vocabulary") or {})
        tokenizers = artifacts["source_tokenizer"], artifacts["target_tokenizer"]
        if not with_data:
            return cls({}, options, *tokenizers, ids=ids)
        if data is not None:
            options = dataclasses.replace(options, data=str(data))
            if Path(data).is_file():
                return cls({"test": read_pairs(options)}, options, *tokenizers, ids=ids)
        elif options.data is None:
            raise DataError("this run has no data of its own (an imported model); evaluate it on a TSV file of "
                            "source<TAB>target lines with --data FILE")
        return cls(read_splits(options), options, *tokenizers, ids=ids)

    def spec(self) -> dict[str, Any]:
        """The options (data resolved), and the id scheme when it is not seqlab's own."""
        options = {**config_to_dict(self.options), "max_output_length": self.max_output_length}   # as resolved
        if options["data"] is not None and not self.options.is_synthetic:
            options["data"] = str(Path(options["data"]).resolve())
        vocabulary = {} if self.ids == IdScheme() else {"vocabulary": config_to_dict(self.ids)}
        return {"task": self.name, **options, **vocabulary}

    def artifacts(self) -> dict[str, Any]:
        return {"source_tokenizer": self.source_tokenizer, "target_tokenizer": self.target_tokenizer}

    def model_defaults(self) -> dict[str, Any]:
        """The model's vocabularies: the scheme's, else each tokenizer's ids plus its shift."""
        ids = self.ids
        return {"src_vocab_size": ids.src_vocab_size or self.source_tokenizer.vocab_size + ids.source_shift,
                "tgt_vocab_size": ids.tgt_vocab_size or self.target_tokenizer.vocab_size + ids.target_shift}

    @classmethod
    def example_model_defaults(cls) -> dict[str, Any]:
        return {"src_vocab_size": 11, "tgt_vocab_size": 13}          # ten digits, <unk>; PAD, BOS, EOS

    def encode(self, pairs: Sequence[Pair], with_targets: bool = True, unknown: str = "replace") -> EncodedPairs:
        """Model ids of ``pairs`` (the scheme's shifts, its EOS after each target and after each
        source if it has one); with ``unknown="error"`` an unseen symbol is a DataError naming
        the pair."""
        scheme = self.ids
        source_end = [] if scheme.source_eos_id is None else [scheme.source_eos_id]
        sources, targets = [], []
        for pair in pairs:
            try:
                tokens = self.source_tokenizer.encode(pair.source, unknown=unknown)
                sources.append(torch.tensor([*(i + scheme.source_shift for i in tokens), *source_end],
                                            dtype=torch.long))
                if with_targets:
                    ids = self.target_tokenizer.encode(pair.target, unknown=unknown)
                    targets.append(torch.tensor([*(i + scheme.target_shift for i in ids), scheme.eos_id]))
            except DataError as error:
                raise DataError(f"{pair.where}: {error}") from None
            if not tokens:
                raise DataError(f"{pair.where}: the source has no tokens")
        return EncodedPairs(sources, targets if with_targets else None, list(pairs),
                            pad_id=scheme.pad_id, bos_id=scheme.bos_id, eos_id=scheme.eos_id)

    # ---- training and evaluation ---------------------------------------------------------

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        encoded = self._split("train")
        return encoded.batch(torch.randint(0, len(encoded), (batch_size,), generator=generator).tolist())

    def batch_tokens(self, batch: Sequence[Tensor]) -> int:
        return int((batch[3] != self.ids.pad_id).sum())

    def loss_items(self, batch: Sequence[Tensor]) -> int:
        return int((batch[3] != self.ids.pad_id).sum())

    def training_schedule(self, step: int) -> dict[str, float]:
        options = self.options
        self._teacher_forcing = teacher_forcing_probability(
            options.scheduled_sampling, step, k=options.sampling_k, c=options.sampling_c, minimum=options.sampling_min)
        return {} if options.scheduled_sampling == "none" else {"sampling_probability": 1.0 - self._teacher_forcing}

    def loss(self, model: nn.Module, batch: Sequence[Tensor]) -> Tensor:
        """Mean cross-entropy per target token, label-smoothed, under scheduled sampling."""
        src, src_mask, tgt_in, tgt_out = batch
        logits = scheduled_sampling_logits(model, src, src_mask, tgt_in, self._teacher_forcing)
        return F.cross_entropy(logits.flatten(0, 1).float(), tgt_out.flatten(), ignore_index=self.ids.pad_id,
                               label_smoothing=self.options.label_smoothing)

    def evaluate(self, model: nn.Module, split: str = "valid", *, max_batches: int | None = None,
                 details: bool = False) -> dict[str, Any]:
        """loss, token_accuracy, exact_match, bleu, chrf and pairs (module docstring), over
        ``split`` (its first ``max_batches`` batches of 64 when given); with ``details``, also
        ``by_source_length`` (``by_source_length``'s rows)."""
        encoded = self._split(split)
        rows = list(range(len(encoded) if max_batches is None else min(len(encoded), max_batches * EVAL_BATCH)))
        hypotheses, (total_loss, correct, tokens) = self._decode(model, encoded, rows)
        references = [encoded.pairs[i].target for i in rows]   # the text itself: an unseen word stays a miss
        metrics: dict[str, Any] = {
            "loss": total_loss / tokens,
            "token_accuracy": correct / tokens,
            **translation_scores(hypotheses, references),
            "pairs": float(len(rows)),
        }
        if details:
            metrics["by_source_length"] = self.by_source_length(model, split)
        return metrics

    def by_source_length(self, model: nn.Module, split: str = "test", n_buckets: int = 8) -> list[dict[str, Any]]:
        """Exact match, BLEU and chrF of greedy decodings by source length (in tokens), in up to
        ``n_buckets`` ranges of equal width: a list of {"lengths": "5-9", "pairs", "exact_match",
        "bleu", "chrf"}, shortest first."""
        encoded = self._split(split)
        lengths = [len(source) for source in encoded.sources]
        low, high = min(lengths), max(lengths)
        width = max(1, math.ceil((high - low + 1) / n_buckets))
        hypotheses, _ = self._decode(model, encoded, list(range(len(encoded))))
        buckets = []
        for start in range(low, high + 1, width):
            rows = [i for i, length in enumerate(lengths) if start <= length < start + width]
            if rows:
                scores = translation_scores([hypotheses[i] for i in rows], [encoded.pairs[i].target for i in rows])
                label = str(start) if width == 1 else f"{start}-{min(start + width - 1, high)}"
                buckets.append({"lengths": label, "pairs": len(rows), **scores})
        return buckets

    @torch.no_grad()
    def _decode(self, model: nn.Module, encoded: EncodedPairs, rows: list[int]) -> tuple[list[str], tuple[float, int, int]]:
        """The greedy decoding's text of each row, and the teacher-forced summed loss, correct
        next-token argmaxes and target tokens over them (eval mode; the model's mode restored)."""
        device = device_of(model)
        total_loss, correct, tokens = 0.0, 0, 0
        outputs: list[list[int]] = []
        was_training = model.training
        model.eval()
        for start in range(0, len(rows), EVAL_BATCH):
            src, src_mask, tgt_in, tgt_out = (part.to(device) for part in encoded.batch(rows[start:start + EVAL_BATCH]))
            logits = model(src, src_mask, tgt_in).float()
            real = tgt_out != self.ids.pad_id
            total_loss += F.cross_entropy(logits[real], tgt_out[real], reduction="sum").item()
            correct += int((logits.argmax(dim=-1) == tgt_out)[real].sum())
            tokens += int(real.sum())
            outputs += decode_greedy(model, src, src_mask, max_length=self.max_output_length,
                                     bos_id=self.ids.bos_id, eos_id=self.ids.eos_id).sequences
        model.train(was_training)
        return [self.target_text(ids) for ids in outputs], (total_loss, correct, tokens)

    def target_text(self, ids: Sequence[int]) -> str:
        """The text of model target ids, up to the first EOS; PAD, BOS and ids that no
        tokenizer id maps to (below the shift, or a model's spare rows) are dropped."""
        scheme, ids = self.ids, list(ids)
        if scheme.eos_id in ids:
            ids = ids[:ids.index(scheme.eos_id)]
        pieces = [i - scheme.target_shift for i in ids if i not in (scheme.pad_id, scheme.bos_id)]
        return self.target_tokenizer.decode([i for i in pieces if 0 <= i < self.target_tokenizer.vocab_size])

    def _split(self, split: str) -> EncodedPairs:
        if split not in self._encoded:
            raise ConfigError(f"unknown or empty split {split!r}; this task has {', '.join(self._encoded) or 'no data'}")
        return self._encoded[split]

    # ---- use and reports -----------------------------------------------------------------

    def predict(self, model: nn.Module, inputs: Sequence[str], options: TranslationOptions | None = None) -> list[str]:
        """The translation of each source line, by beam search (a run on the tutorial's pairs
        first normalises each line as its training sources were: ``I'm cold.`` -> ``i m cold .``).

        Raises:
            DataError: an empty line, or a symbol the source tokenizer never saw, naming the line.
        """
        options = options or TranslationOptions()
        pairs = []
        for number, line in enumerate(inputs, start=1):
            if not line.strip():
                raise DataError(f"input line {number} is empty; give one source sentence per line")
            source = transduction.normalize_tutorial(line) if self.options.filter == "tutorial" else line.strip()
            pairs.append(Pair(source, "", f"input line {number}"))
        encoded = self.encode(pairs, with_targets=False, unknown="error")
        device, translations = device_of(model), []
        max_length = options.max_output_length or self.max_output_length
        for start in range(0, len(encoded), options.batch_size):
            src, src_mask = (part.to(device) for part in encoded.batch(range(start, min(start + options.batch_size,
                                                                                       len(encoded)))))
            decoded = beam_search(model, src, src_mask, beam_size=options.beam_size, max_length=max_length,
                                  length_penalty=options.length_penalty, alpha=options.alpha,
                                  bos_id=self.ids.bos_id, eos_id=self.ids.eos_id)
            translations += [self.target_text(ids) for ids in decoded.sequences]
        return translations

    def describe(self) -> str:
        options = self.options
        if options.data is None:
            source = "no data of its own (an imported model)"
        elif options.is_synthetic:
            lengths = "" if options.data == "dates" else f", source lengths {options.min_length}-{options.max_length}"
            source = f"synthetic `{options.data}`{lengths} (seed {options.data_seed})"
        else:
            source = f"`{options.data}`" + (" (the PyTorch tutorial's filter)" if options.filter == "tutorial" else "")
        sizes = ", ".join(f"{split} {len(encoded):,}" for split, encoded in self._encoded.items())
        return (f"{source}; tokenizers `{self.source_tokenizer.kind}` ({self.source_tokenizer.vocab_size:,}) -> "
                f"`{self.target_tokenizer.kind}` ({self.target_tokenizer.vocab_size:,}); pairs: {sizes}; "
                f"BLEU and chrF by sacrebleu, `{sacrebleu_signature(sacrebleu.BLEU())}`, "
                f"`{sacrebleu_signature(sacrebleu.CHRF())}`")

    def showcase(self, model: nn.Module) -> Showcase:
        """The first test sources with their reference and greedy output; exact match (synthetic
        data) or BLEU (text) by source length; the attention of the first test example."""
        test = self._split("test")
        shown = [test.pairs[i] for i in range(min(SHOWN_EXAMPLES, len(test)))]
        outputs = self.predict(model, [pair.source for pair in shown], TranslationOptions(beam_size=1))
        lines = [f"source: {pair.source}\nreference: {pair.target}\noutput: {output}\n"
                 for pair, output in zip(shown, outputs)]
        key, label = ("exact_match", "exact match (%)") if self.options.is_synthetic else ("bleu", "BLEU")
        scale = 100.0 if key == "exact_match" else 1.0
        buckets = self.by_source_length(model, "test")
        breakdown = Breakdown(f"{label} by source length", "source length (tokens)",
                              {bucket["lengths"]: scale * bucket[key] for bucket in buckets})
        figure = self.attention_figure(model, test.pairs[0])
        return Showcase({"Test examples (greedy)": "\n".join(lines)}, breakdown=breakdown,
                        figures={} if figure is None else {"attention": figure})

    @torch.no_grad()
    def attention_figure(self, model: nn.Module, pair: Pair) -> bytes | None:
        """A heatmap (PNG) of the attention of each greedily decoded token over the source
        tokens of ``pair``, or None for a model without attention."""
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        encoded = self.encode([pair], with_targets=False)
        device = device_of(model)
        src, src_mask = (part.to(device) for part in encoded.batch([0]))
        was_training = model.training
        model.eval()
        scheme = self.ids
        output = decode_greedy(model, src, src_mask, max_length=min(self.max_output_length, 60),
                               bos_id=scheme.bos_id, eos_id=scheme.eos_id).sequences[0]
        weights = model.attention_weights(src, src_mask, torch.tensor([[scheme.bos_id, *output[:-1]]], device=device))
        model.train(was_training)
        if weights is None:
            return None
        source_tokens = [_piece(self.source_tokenizer, i - scheme.source_shift) for i in encoded.sources[0].tolist()]
        output_tokens = [_piece(self.target_tokenizer, i - scheme.target_shift) for i in output]
        figure, axis = plt.subplots(figsize=(1.2 + 0.32 * len(source_tokens), 1.0 + 0.32 * len(output_tokens)))
        axis.imshow(weights[0].float().cpu().numpy(), cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
        axis.set_xticks(range(len(source_tokens)), source_tokens, rotation=90)
        axis.set_yticks(range(len(output_tokens)), output_tokens)
        axis.set_xlabel("source")
        axis.set_ylabel("output")
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        plt.close(figure)
        return buffer.getvalue()


def _piece(tokenizer: Tokenizer, token_id: int) -> str:
    """The text of one tokenizer id, or ``</s>`` for an id it does not have (a special id)."""
    return tokenizer.decode([token_id]) if 0 <= token_id < tokenizer.vocab_size else "</s>"


def sacrebleu_signature(metric: Any) -> str:
    """The signature of a sacrebleu metric with one reference per hypothesis (sacrebleu knows
    the number of references only after scoring, so it scores a one-line corpus first)."""
    metric.corpus_score(["x"], [["x"]])
    return str(metric.get_signature())


def translation_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """exact_match (the share of hypotheses equal to their reference), and corpus BLEU and chrF
    by sacrebleu with its defaults (13a tokenisation, one reference). Text that is already
    tokenised (the tutorial's pairs split off their final ``.``) is scored as it is: sacrebleu's
    warning about it is silenced (``force``), its number unchanged."""
    return {"exact_match": sum(h == r for h, r in zip(hypotheses, references)) / len(references),
            "bleu": sacrebleu.corpus_bleu(list(hypotheses), [list(references)], force=True).score,
            "chrf": sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score}


# ---- reading the data ------------------------------------------------------------------------

def read_pairs(options: Seq2SeqOptions) -> list[Pair]:
    """The pairs of the TSV file ``options.data``, filtered as ``options.filter`` says."""
    path = Path(options.data)
    if not path.is_file():
        raise DataError(f"--data {options.data!r} is neither a synthetic kind "
                        f"({', '.join(transduction.SYNTHETIC_KINDS)}) nor a TSV file")
    pairs = transduction.read_parallel_tsv(path)
    if options.filter == "tutorial":
        pairs = transduction.tutorial_filter(pairs)
        if not pairs:
            raise DataError(f"{path} has no pairs left after the tutorial's filter (English sides starting "
                            "'i am', 'he is', ... of fewer than 10 words); use --filter none")
    return pairs


def read_splits(options: Seq2SeqOptions) -> dict[str, list[Pair]]:
    """Train, valid and test pairs of ``options.data`` (module docstring)."""
    if options.data is None:
        raise DataError("the seq2seq task has no data (--data none); give a synthetic kind "
                        f"({', '.join(transduction.SYNTHETIC_KINDS)}) or a TSV file of source<TAB>target lines")
    if options.is_synthetic:
        sizes = {"train": options.train_size, "valid": options.valid_size, "test": options.test_size}
        return transduction.generate_splits(options.data, sizes, seed=options.data_seed,
                                            min_length=options.min_length, max_length=options.max_length)
    return transduction.split_by_source(read_pairs(options), options.split_fractions, seed=options.data_seed)
