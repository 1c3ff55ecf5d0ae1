"""Neural taggers: a character-aware BiLSTM encoder under a softmax or a linear-chain CRF output.

For a sentence of words w_1 .. w_n (Huang, Xu and Yu 2015; Lample et al. 2016; Plank et al. 2016):

    x_t = [E w_t ; char(w_t)]                                  word embedding, character features
    h_t = [LSTM_fwd(x_1 .. x_t) ; LSTM_bwd(x_n .. x_t)]        a BiLSTM over the sentence
    s_t = W dropout(h_t) + b                                   tag scores, (B, T, K)

``char(w)`` reads the word's characters, so an unseen word (``<unk>``, id 1) still has a
representation: a character BiLSTM's two final states (Lample et al. 2016, section 4.1; Plank
et al. 2016) or a character CNN max-pooled over positions (dos Santos and Zadrozny 2014; Ma and
Hovy 2016). Word dropout (Kiperwasser and Goldberg 2016, who count occurrences in the whole
corpus; here, per thousand sentences, so alpha does not depend on the corpus size) reads a
training word w as ``<unk>`` with probability ``alpha / (alpha + f(w))``, f(w) its occurrences
per thousand training sentences: rare words, the ones most like those unseen at test time, are dropped most, so the
``<unk>`` embedding is learnt in their contexts and the tagger learns to tag them from their
characters. The model counts f(w) itself over the batches it trains on (buffers, so a
checkpoint keeps them), since a batch carries word ids but not the corpus counts.

Two output layers read the scores s:

- softmax ("bilstm"): ``p(y_t | w) = softmax(s_t)[y_t]``, each position on its own; the loss
  is ``-sum_t log p(y_t | w) / n`` and tagging takes each position's argmax.
- CRF ("bilstm-crf"): ``p(y | w) = exp(sum_t s_t[y_t] + transitions(y)) / Z(s)`` with
  ``seqlab.classical.crf.LinearChainCRF``; the loss is ``-log p(y | w) / n`` and tagging is
  Viterbi, so the tags of neighbouring words are chosen together.

Either way ``loss`` is the mean per word over the batch's real words. Padding (the batch mask)
is never read: the BiLSTM runs on packed sequences, the character features of each word do not
depend on how far the batch pads characters, and both losses skip padded positions.

Shapes: B sentences, T words, C characters, K tags, H hidden units per direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from seqlab.classical.crf import LinearChainCRF
from seqlab.errors import ConfigError
from seqlab.layers.recurrent import Recurrent
from seqlab.registry import register
from seqlab.tasks.tagging import PAD, UNK, TaggingBatch


@dataclass(frozen=True, kw_only=True)
class BiLSTMTaggerConfig:
    """A character-aware BiLSTM tagger.

    Attributes:
        n_words: word ids, ``<pad>`` (0) and ``<unk>`` (1) included (from the task).
        n_characters: character ids, likewise (from the task).
        n_tags: K (from the task).
        word_dim: word embedding size.
        character_dim: character embedding size.
        character_encoder: "lstm" (a character BiLSTM) or "cnn" (convolution and max pooling);
            on EWT the BiLSTM tagged 0.25 points better at the same speed (benchmarks/taggers.py).
        character_features: size of ``char(w)`` (for the LSTM, half per direction).
        character_width: the CNN's window, in characters (odd).
        hidden: BiLSTM units per direction.
        n_layers: stacked BiLSTM layers.
        dropout: on the word representations, between BiLSTM layers and before the scores.
        word_dropout_alpha: alpha of the word dropout: a word seen alpha times per thousand training
            sentences is read as ``<unk>`` half the time (0: no word dropout).
    """

    n_words: int
    n_characters: int
    n_tags: int
    word_dim: int = 100
    character_dim: int = 50
    character_encoder: Literal["lstm", "cnn"] = "lstm"
    character_features: int = 128
    character_width: int = 3
    hidden: int = 150
    n_layers: int = 1
    dropout: float = 0.33
    word_dropout_alpha: float = 0.25

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field in ("n_words", "n_characters"):
            if getattr(self, field) < 3:
                raise ConfigError(f"{name}.{field} must be >= 3 (<pad>, <unk> and one more), "
                                  f"got {getattr(self, field)}")
        for field in ("n_tags", "word_dim", "character_dim", "character_features", "hidden", "n_layers"):
            if getattr(self, field) < 1:
                raise ConfigError(f"{name}.{field} must be >= 1, got {getattr(self, field)}")
        if self.character_encoder not in ("lstm", "cnn"):
            raise ConfigError(f"{name}.character_encoder must be 'lstm' or 'cnn', got {self.character_encoder!r}")
        if self.character_encoder == "lstm" and self.character_features % 2:
            raise ConfigError(f"{name}.character_features must be even for the character BiLSTM "
                              f"(half per direction), got {self.character_features}")
        if self.character_width < 1 or self.character_width % 2 == 0:
            raise ConfigError(f"{name}.character_width must be odd and >= 1, got {self.character_width}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{name}.dropout must be in [0, 1), got {self.dropout}")
        if not self.word_dropout_alpha >= 0.0:
            raise ConfigError(f"{name}.word_dropout_alpha must be >= 0, got {self.word_dropout_alpha}")


class CharacterBiLSTM(nn.Module):
    """``char(w)``: the last forward and first backward states of a BiLSTM over w's characters.

    ``forward(characters)``: (N, C) character ids of N words, 0 after each word's end ->
    (N, F) features; the BiLSTM runs packed, so trailing padding never changes them.
    """

    def __init__(self, n_characters: int, character_dim: int, features: int):
        super().__init__()
        self.embedding = nn.Embedding(n_characters, character_dim, padding_idx=PAD)
        self.recurrent = Recurrent("lstm", character_dim, features // 2, bidirectional=True)

    def forward(self, characters: Tensor) -> Tensor:
        lengths = (characters != PAD).sum(dim=1)                               # (N,)
        _, (final, _) = self.recurrent(self.embedding(characters), lengths=lengths)
        return torch.cat([final[0], final[1]], dim=-1)                         # (N, F)


class CharacterCNN(nn.Module):
    """``char(w)``: a convolution over w's character embeddings, max-pooled over positions.

    ``forward(characters)``: (N, C) -> (N, F). Windows are centred on the word's own characters
    (zero vectors beyond its ends, which is also what padding embeds to) and the pooling skips
    positions past the word's end, so trailing padding never changes the features.
    """

    def __init__(self, n_characters: int, character_dim: int, features: int, width: int):
        super().__init__()
        self.embedding = nn.Embedding(n_characters, character_dim, padding_idx=PAD)
        self.convolution = nn.Conv1d(character_dim, features, width, padding=width // 2)

    def forward(self, characters: Tensor) -> Tensor:
        embedded = self.embedding(characters).transpose(1, 2)                  # (N, D, C)
        activations = torch.tanh(self.convolution(embedded))                   # (N, F, C)
        outside = (characters == PAD)[:, None, :]                              # (N, 1, C)
        return activations.masked_fill(outside, float("-inf")).amax(dim=-1)    # (N, F)


class BiLSTMEncoder(nn.Module):
    """Word ids, character ids and the mask of a ``TaggingBatch`` -> tag scores (B, T, K)."""

    def __init__(self, config: BiLSTMTaggerConfig):
        super().__init__()
        self.word_dropout_alpha = config.word_dropout_alpha
        self.register_buffer("word_counts", torch.zeros(config.n_words, dtype=torch.long))
        self.register_buffer("sentences_seen", torch.zeros((), dtype=torch.long))
        self.word_embedding = nn.Embedding(config.n_words, config.word_dim, padding_idx=PAD)
        nn.init.normal_(self.word_embedding.weight, std=0.1)
        with torch.no_grad():
            self.word_embedding.weight[PAD].zero_()
        if config.character_encoder == "lstm":
            self.characters = CharacterBiLSTM(config.n_characters, config.character_dim, config.character_features)
        else:
            self.characters = CharacterCNN(config.n_characters, config.character_dim, config.character_features,
                                           config.character_width)
        self.dropout = nn.Dropout(config.dropout)
        self.recurrent = Recurrent("lstm", config.word_dim + config.character_features, config.hidden,
                                   config.n_layers, dropout=config.dropout, bidirectional=True)
        self.scores = nn.Linear(2 * config.hidden, config.n_tags)

    def forward(self, batch: TaggingBatch) -> Tensor:
        mask, word_ids = batch.mask, batch.word_ids
        if self.training and self.word_dropout_alpha > 0:
            self.count_words(word_ids, mask)
            dropped = torch.rand(word_ids.shape, device=word_ids.device) < self.dropout_probability(word_ids)
            word_ids = word_ids.masked_fill(dropped & mask, UNK)
        # Only the N real words are embedded, dropped out and scored; padding stays zero.
        words = torch.cat([self.word_embedding(word_ids[mask]), self.word_characters(batch.character_ids[mask])],
                          dim=-1)                                              # (N, D + F)
        hidden, _ = self.recurrent(scatter_rows(self.dropout(words), mask), lengths=mask.sum(dim=1))  # (B, T, 2H)
        return scatter_rows(self.scores(self.dropout(hidden[mask])), mask)   # (B, T, K)

    @torch.no_grad()
    def count_words(self, word_ids: Tensor, mask: Tensor) -> None:
        """Add a training batch's real words (B, T) to the running counts."""
        self.word_counts += torch.bincount(word_ids[mask], minlength=len(self.word_counts))
        self.sentences_seen += word_ids.shape[0]

    def dropout_probability(self, word_ids: Tensor) -> Tensor:
        """``alpha / (alpha + f(w))`` for word ids (B, T), f(w) = occurrences per 1,000 sentences."""
        per_thousand = self.word_counts[word_ids] * (1000.0 / self.sentences_seen.clamp_min(1))
        return self.word_dropout_alpha / (self.word_dropout_alpha + per_thousand)

    def word_characters(self, character_ids: Tensor) -> Tensor:
        """(N, F) character features of N words given as character ids (N, C).

        Each distinct spelling is encoded once (a sentence batch repeats its function words and
        punctuation many times over).
        """
        spellings, which = torch.unique(character_ids, dim=0, return_inverse=True)   # (U, C), (N,)
        return self.characters(spellings)[which]


def scatter_rows(rows: Tensor, mask: Tensor) -> Tensor:
    """Rows (N, F) of the N true positions of mask (B, T) laid out as (B, T, F), zero elsewhere."""
    return rows.new_zeros(*mask.shape, rows.shape[-1]).masked_scatter(mask[..., None], rows)


class SoftmaxOutput(nn.Module):
    """Each position's tag on its own: ``-log softmax(s_t)[y_t]``, and the argmax.

    It has no parameters; it takes ``n_tags`` because every output layer is built as
    ``output_layer(n_tags)``.
    """

    def __init__(self, n_tags: int):
        super().__init__()

    def negative_log_likelihood(self, scores: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """(B,) ``-sum_t log p(y_t | w)`` over each sentence's real words; scores (B, T, K)."""
        log_probs = torch.log_softmax(scores.float(), dim=-1)
        picked = log_probs.gather(-1, tags.masked_fill(~mask, 0)[..., None])[..., 0]       # (B, T)
        return -(picked.masked_fill(~mask, 0.0).sum(dim=1))

    def decode(self, scores: Tensor, mask: Tensor) -> Tensor:
        return scores.argmax(dim=-1).masked_fill(~mask, 0)


class CRFOutput(nn.Module):
    """The whole tag sequence at once: ``-log p(y | w)`` of a linear-chain CRF, and Viterbi."""

    def __init__(self, n_tags: int):
        super().__init__()
        self.crf = LinearChainCRF(n_tags)

    def negative_log_likelihood(self, scores: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """(B,) ``-log p(y | w)`` of each sentence; scores (B, T, K) are the CRF's emissions."""
        return -self.crf.log_likelihood(scores.float(), tags, mask)

    def decode(self, scores: Tensor, mask: Tensor) -> Tensor:
        return self.crf.decode(scores.float(), mask)[0]


@register("bilstm", task="tag", config=BiLSTMTaggerConfig)
class BiLSTMTagger(nn.Module):
    """BiLSTM tagger with character features and a softmax per word (Plank et al. 2016)."""

    output_layer: ClassVar[type[nn.Module]] = SoftmaxOutput
    # The time budget, not the step count, ends a run, and the learning rate decays over it.
    # On UD English EWT with 2 CPU threads (benchmarks/taggers.py) 540 s of training reach
    # 95.2% test accuracy for either output layer; evaluations add about 10 s.
    train_defaults: ClassVar[dict[str, Any]] = {
        "lr": 2e-3, "batch_size": 32, "warmup_steps": 100, "steps": 100_000, "budget_seconds": 540.0,
        "weight_decay": 0.0, "grad_clip": 5.0, "min_lr_ratio": 0.05, "betas": (0.9, 0.98),
        "eval_every": 100_000, "eval_every_seconds": 60.0, "eval_batches": 20,
    }

    def __init__(self, config: BiLSTMTaggerConfig):
        super().__init__()
        self.config = config
        self.encoder = BiLSTMEncoder(config)
        self.output = self.output_layer(config.n_tags)

    def loss(self, batch: TaggingBatch) -> Tensor:
        """Mean negative log-likelihood per real word of the batch (a scalar)."""
        scores = self.encoder(batch)
        return self.output.negative_log_likelihood(scores, batch.tags, batch.mask).sum() / batch.mask.sum()

    @torch.no_grad()
    def tag(self, batch: TaggingBatch) -> Tensor:
        """(B, T) int64 tag ids, 0 at padding."""
        return self.output.decode(self.encoder(batch), batch.mask)


@register("bilstm-crf", task="tag", config=BiLSTMTaggerConfig)
class BiLSTMCRFTagger(BiLSTMTagger):
    """BiLSTM tagger with character features and a linear-chain CRF output (Lample et al. 2016)."""

    output_layer = CRFOutput
