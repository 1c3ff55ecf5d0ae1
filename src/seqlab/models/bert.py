"""Encoder-only Transformer (BERT; Devlin et al. 2019): pre-trained by masked language modelling,
then fine-tuned with a token head (tagging) or a pooled head (classification).

One encoder, three registrations under the name ``bert``:

* ``--task mlm``: ``BertForMaskedLM``, the encoder and BERT's prediction head (a dense layer,
  GELU and LayerNorm, then the output layer tied to the token embedding, with a bias);
* ``--task tag``: ``BertTagger``, the encoder over each sentence's pieces (the characters, or a
  tokenizer's pieces, of its words, in order), each word the mean of its pieces' outputs,
  then a softmax over tags;
* ``--task classify``: ``BertClassifier``, the encoder and a linear layer over the mean of the
  real tokens' outputs.

The encoder's parameters have the same names and shapes in all three, so ``seqlab train bert
--task tag --init-from MLM_RUN`` starts from the pre-trained encoder. Its embedding has one row
more than the task's ids: the last row is ``[MASK]`` (``seqlab.tasks.mlm``); a masked language
model whose vocabulary holds ``[MASK]`` itself (Hugging Face BERT's, ``mask_id``) has none.
Blocks are bidirectional: every position attends to every real position (key padding masked).

BERT's input is the sum of three embeddings, then a LayerNorm (Devlin et al. 2019, fig. 2):

    x_t = E_token[id_t] + E_type[type_t] + E_position[t],

the token-type (segment) table telling sentence A from sentence B. ``n_token_types=0`` (the
default) leaves it out; with a table, a forward pass without types reads type 0 everywhere.

By default the blocks are post-norm with an embedding LayerNorm and GELU, as BERT's; positions
are rotary (RoFormer, Su et al. 2021) rather than BERT's learned table, because a sentence read
character by character often runs past the windows the encoder was pre-trained on, and RoPE
scores depend on relative offsets only. ``positions=learned`` gives BERT's table.

Shapes: B batch, L pieces (tokens), T words, C pieces per word, D ``d_model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError, DataError
from seqlab.layers.block import NormPosition, TransformerBlock
from seqlab.layers.norms import make_norm
from seqlab.models.taggers import SoftmaxOutput
from seqlab.models.transformer import (BlockConfig, PositionScheme, attention_positions, block_attention, block_norm,
                                       build_feedforward, gpt2_init, input_positions, token_embedding_std)
from seqlab.registry import register
from seqlab.tasks.tagging import TaggingBatch


@dataclass(frozen=True, kw_only=True)
class BertConfig(BlockConfig):
    """The encoder's shape (each registration's config adds the task's sizes).

    Attributes:
        positions: rope (default), rope_interleaved, alibi, sinusoidal or learned (BERT's).
        max_len: learned positions' table size (the longest input).
        norm: layernorm (BERT) or rmsnorm.
        norm_position: post (BERT, with a LayerNorm on the embeddings) or pre (with a final norm).
        dropout: on embeddings, attention weights and residual branches (BERT: 0.1).
        n_token_types: rows of the token-type (segment) embedding (BERT: 2); 0: none.
    """

    positions: PositionScheme = "rope"
    max_len: int = 512
    norm_position: NormPosition = "post"
    dropout: float = 0.1
    n_token_types: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_token_types < 0:
            raise ConfigError(f"{type(self).__name__}.n_token_types must be >= 0 (0: none), got {self.n_token_types}")


@dataclass(frozen=True, kw_only=True)
class BertMLMConfig(BertConfig):
    """BERT for masked language modelling.

    Attributes:
        vocab_size: the tokenizer's ids, from the task ([MASK] is one more, unless mask_id).
        mask_id: none: ``[MASK]`` is id vocab_size, an embedding row of its own (seqlab's
            mlm task); an id below vocab_size: the vocabulary's own ``[MASK]`` (Hugging Face
            BERT's), and the embedding and logits have exactly vocab_size rows.
    """

    vocab_size: int
    mask_id: int | None = None
    size_fields: ClassVar[tuple[str, ...]] = ("vocab_size",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mask_id is not None and not 0 <= self.mask_id < self.vocab_size:
            raise ConfigError(f"BertMLMConfig.mask_id must be an id below vocab_size ({self.vocab_size}) or none "
                              f"(an extra [MASK] row), got {self.mask_id}")


@dataclass(frozen=True, kw_only=True)
class BertClassifierConfig(BertConfig):
    """BERT with a mean-pooled classification head.

    Attributes:
        vocab_size: the tokenizer's ids, from the task.
        n_classes: labels, from the task.
    """

    vocab_size: int
    n_classes: int
    size_fields: ClassVar[tuple[str, ...]] = ("vocab_size", "n_classes")


@dataclass(frozen=True, kw_only=True)
class BertTaggerConfig(BertConfig):
    """BERT with a token head over word pieces.

    Attributes:
        n_words: the task's word forms (unused: words are read through their pieces).
        n_characters: piece ids, padding 0 included, from the task.
        n_tags: tags, from the task.
    """

    n_words: int
    n_characters: int
    n_tags: int
    size_fields: ClassVar[tuple[str, ...]] = ("n_characters", "n_tags")


class TransformerEncoder(nn.Module):
    """Embeddings (``n_ids`` rows, and a last one, ``[MASK]``, when ``mask_row``), token types,
    positions and bidirectional blocks."""

    def __init__(self, config: BertConfig, n_ids: int, mask_row: bool = True):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(n_ids + int(mask_row), config.d_model)
        if config.n_token_types:
            self.token_type_embedding = nn.Embedding(config.n_token_types, config.d_model)
        self.input_positions = input_positions(config)
        norm = block_norm(config)
        post = config.norm_position == "post"
        self.embedding_norm = norm() if post else nn.Identity()
        self.dropout = nn.Dropout(config.dropout)
        shared = attention_positions(config, causal=False)
        self.blocks = nn.ModuleList(
            TransformerBlock(block_attention(config, causal=False, positions=shared), build_feedforward(config), norm, norm_position=config.norm_position,
                             dropout=config.dropout, checkpoint=config.gradient_checkpointing)
            for _ in range(config.n_layers))
        self.final_norm = nn.Identity() if post else norm()

    def forward(self, ids: Tensor, mask: Tensor | None = None, added: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        """(B, L) ids (and (B, L) mask, true at real positions; None: all real) -> (B, L, D).
        ``added`` (B, L, D) is added to the embeddings (e.g. a word-start marker);
        ``token_type_ids`` (B, L) index the token-type table (None: type 0 everywhere)."""
        x = self.embedding(ids)
        if added is not None:
            x = x + added
        if self.config.n_token_types:
            table = self.token_type_embedding.weight
            x = x + (table[0] if token_type_ids is None else self.token_type_embedding(token_type_ids))
        elif token_type_ids is not None:
            raise DataError("this encoder has no token-type embedding (n_token_types=0); pass no token_type_ids")
        if self.input_positions is not None:
            x = self.input_positions(x, 0)
        x = self.dropout(self.embedding_norm(x))
        for block in self.blocks:
            x = block(x, key_padding_mask=mask)
        return self.final_norm(x)


def masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    """(B, L, D) states, (B, L) mask -> (B, D) mean over the real positions."""
    weights = mask.to(states.dtype)[..., None]
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1)


TRAIN_DEFAULTS: dict[str, Any] = {"lr": 1e-3, "warmup_steps": 200, "weight_decay": 0.01, "betas": (0.9, 0.98)}


@register("bert", task="mlm", config=BertMLMConfig)
class BertForMaskedLM(nn.Module):
    """Transformer encoder with BERT's masked-token prediction head."""

    train_defaults: ClassVar[dict[str, Any]] = TRAIN_DEFAULTS

    def __init__(self, config: BertMLMConfig):
        super().__init__()
        self.config = config
        self.encoder = TransformerEncoder(config, config.vocab_size, mask_row=config.mask_id is None)
        self.transform = nn.Linear(config.d_model, config.d_model)
        self.transform_norm = make_norm(config.norm, config.d_model, eps=config.norm_eps)
        self.output_bias = nn.Parameter(torch.zeros(self.encoder.embedding.num_embeddings))
        gpt2_init(self, config.n_layers, token_embedding_std(config))     # N(0, 0.02), as BERT's own

    @property
    def mask_id(self) -> int:
        """The id this model reads as ``[MASK]``: ``config.mask_id``, or vocab_size (the extra row)."""
        return self.config.vocab_size if self.config.mask_id is None else self.config.mask_id

    def forward(self, tokens: Tensor, mask: Tensor | None = None, token_type_ids: Tensor | None = None) -> Tensor:
        """(B, T) ids (``[MASK]`` = ``mask_id``), optional (B, T) mask (true at real tokens) and
        token types -> (B, T, R) logits over the R embedding rows (vocab_size, + 1 for the
        extra ``[MASK]`` row)."""
        states = self.encoder(tokens, mask, token_type_ids=token_type_ids)                 # (B, T, D)
        hidden = self.transform_norm(F.gelu(self.transform(states)))
        return F.linear(hidden, self.encoder.embedding.weight, self.output_bias)


@register("bert", task="classify", config=BertClassifierConfig)
class BertClassifier(nn.Module):
    """Transformer encoder, mean-pooled, with a linear classifier."""

    train_defaults: ClassVar[dict[str, Any]] = TRAIN_DEFAULTS

    def __init__(self, config: BertClassifierConfig):
        super().__init__()
        self.config = config
        self.encoder = TransformerEncoder(config, config.vocab_size)
        self.head = nn.Linear(config.d_model, config.n_classes)
        gpt2_init(self, config.n_layers, token_embedding_std(config))     # N(0, 0.02), as BERT's own

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """(B, T) ids and mask -> (B, n_classes) logits."""
        return self.head(masked_mean(self.encoder(tokens, mask), mask))

    def loss(self, tokens: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        return F.cross_entropy(self(tokens, mask).float(), labels)

    def predict(self, tokens: Tensor, mask: Tensor) -> Tensor:
        return self(tokens, mask).argmax(dim=-1)


def pack_pieces(character_ids: Tensor, word_mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Each sentence's pieces, every word's in order, left-aligned in one row.

    Args:
        character_ids: (B, T, C) piece ids, 0 at padding.
        word_mask: (B, T) true at real words.
    Returns:
        packed (B, L) piece ids minus one (the encoder's ids), 0 beyond each row;
        piece_mask (B, L) true at real pieces;
        slot (B, T, C) the packed position of each real piece (0 elsewhere);
        real (B, T, C) true at real pieces.
    """
    batch, words, width = character_ids.shape
    real = (character_ids > 0) & word_mask[..., None]                                 # (B, T, C)
    flat = real.reshape(batch, words * width)
    slot = (flat.long().cumsum(dim=1) - 1).clamp(min=0)                              # (B, T C)
    lengths = flat.sum(dim=1)                                                         # (B,)
    length = max(int(lengths.max()), 1)
    packed = character_ids.new_zeros(batch, length)
    rows = torch.arange(batch, device=character_ids.device)[:, None].expand_as(slot)
    packed[rows[flat], slot[flat]] = character_ids.reshape(batch, -1)[flat] - 1
    piece_mask = torch.arange(length, device=character_ids.device)[None, :] < lengths[:, None]
    return packed, piece_mask, slot.view(batch, words, width), real


@register("bert", task="tag", config=BertTaggerConfig)
class BertTagger(nn.Module):
    """Transformer encoder over the words' pieces, each word the mean of its pieces, softmax tags."""

    train_defaults: ClassVar[dict[str, Any]] = {
        **TRAIN_DEFAULTS, "batch_size": 32, "steps": 100_000, "budget_seconds": 540.0, "eval_every": 100_000,
        "eval_every_seconds": 60.0, "eval_batches": 20}

    def __init__(self, config: BertTaggerConfig):
        super().__init__()
        self.config = config
        # Piece id c >= 1 is encoder id c - 1: n_characters - 1 ids, and the [MASK] row.
        self.encoder = TransformerEncoder(config, config.n_characters - 1)
        self.word_start = nn.Parameter(torch.zeros(config.d_model))
        self.head = nn.Linear(config.d_model, config.n_tags)
        self.output = SoftmaxOutput(config.n_tags)
        gpt2_init(self, config.n_layers, token_embedding_std(config))     # N(0, 0.02), as BERT's own

    def scores(self, batch: TaggingBatch) -> Tensor:
        """(B, T, n_tags) scores of every word."""
        packed, piece_mask, slot, real = pack_pieces(batch.character_ids, batch.mask)
        starts = torch.zeros_like(packed, dtype=self.word_start.dtype)                 # (B, L)
        first = real & (real.long().cumsum(dim=2) == 1)                                # each word's first piece
        rows = torch.arange(packed.shape[0], device=packed.device)[:, None, None].expand_as(slot)
        starts[rows[first], slot[first]] = 1.0
        states = self.encoder(packed, piece_mask, starts[..., None] * self.word_start)  # (B, L, D)
        batch_size, words, width = slot.shape
        per_piece = states.gather(1, slot.reshape(batch_size, -1, 1).expand(-1, -1, states.shape[-1]))
        per_piece = per_piece.view(batch_size, words, width, -1) * real[..., None]       # (B, T, C, D)
        word_states = per_piece.sum(2) / real.sum(2, keepdim=True).clamp(min=1)         # (B, T, D)
        return self.head(word_states)

    def loss(self, batch: TaggingBatch) -> Tensor:
        """Mean negative log-likelihood per real word of the batch."""
        return self.output.negative_log_likelihood(self.scores(batch), batch.tags, batch.mask).sum() / batch.mask.sum()

    @torch.no_grad()
    def tag(self, batch: TaggingBatch) -> Tensor:
        """(B, T) int64 tag ids, 0 at padding."""
        return self.output.decode(self.scores(batch), batch.mask)


