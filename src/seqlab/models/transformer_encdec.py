"""Transformer encoder-decoder (Vaswani et al. 2017), T5-style by default (Raffel et al. 2020).

The encoder reads the source with bidirectional self-attention (padding masked); the decoder
reads the target prefix with causal self-attention and attends to the encoder's outputs with
cross-attention in every block:

    memory = Norm(Encoder(Embed_src(src)))
    logits = W_out Norm(Decoder(Embed_tgt(tgt_in), memory))

By default positions are T5's: a learned scalar per head for each bucket of the key-minus-query
offset (``seqlab.layers.positions.relative_position_bucket``), bidirectional in the encoder and
causal in the decoder, one table per stack shared by its layers; pre-norm RMSNorm blocks without
biases, as in T5. Any scheme of the decoder-only Transformer can be chosen instead.

T5 itself (``seqlab.interop.hf.t5``) also needs: one embedding for both sides
(``share_embeddings``, T5's ``shared``), unscaled attention logits (``scale_attention=False``)
and, before a tied output layer, the decoder output scaled by 1/sqrt(D) (``scale_tied_head``):

    logits = W_emb (D^-1/2 Norm(Decoder(...)))

The decoder state (``init_state``) carries the encoder memory and one key/value cache per
decoder block, so the shared beam search (``seqlab.decoding``) drives it unchanged: ``select``
copies the chosen rows of the memory and of every cache. ``forward`` runs the teacher-forced
decoder in one pass; it equals unrolling ``step`` (the contract suite checks it).

Shapes: B batch, S source length, T target length, D ``d_model``, V target vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from seqlab.contracts import EncoderDecoder
from seqlab.errors import ConfigError, DataError
from seqlab.layers.block import TransformerBlock
from seqlab.layers.feedforward import Activation
from seqlab.layers.norms import NormKind
from seqlab.models.transformer import (POSITION_SCHEMES, BlockConfig, attention_positions, block_attention, block_norm,
                                       build_feedforward, gpt2_init, input_positions, token_embedding_std)
from seqlab.registry import register

EncDecPositions = Literal["t5", "learned", "sinusoidal", "rope", "rope_interleaved", "alibi"]


@dataclass(frozen=True, kw_only=True)
class TransformerEncDecConfig(BlockConfig):
    """Transformer encoder-decoder for the seq2seq task.

    Attributes:
        src_vocab_size: source token ids, padding 0 included (from the task).
        tgt_vocab_size: target token ids, PAD, BOS and EOS included (from the task).
        n_layers: blocks in the encoder, and as many in the decoder.
        positions: t5 (relative position buckets, 32 of them up to distance 128), learned,
            sinusoidal, rope, rope_interleaved or alibi.
        max_len: the longest source or target (learned positions' table).
        norm: rmsnorm (T5) or layernorm.
        activation: feed-forward activation (T5: relu; T5 v1.1: geglu_tanh).
        bias: biases in the projections (T5 has none).
        tie_embeddings: the output layer shares the target embedding's weights.
        share_embeddings: the encoder and the decoder read one embedding table (T5's
            ``shared``); needs src_vocab_size == tgt_vocab_size.
        scale_tied_head: multiply the decoder output by d_model^-1/2 before the tied output
            layer (T5 with a tied head; T5 v1.1 has an untied head and no factor); needs
            tie_embeddings.
        relative_buckets: t5 positions: buckets of key-minus-query offsets, half for each
            direction in the encoder (T5's relative_attention_num_buckets).
        relative_max_distance: t5 positions: offsets at or beyond it share the last bucket
            (T5's relative_attention_max_distance).
    """

    src_vocab_size: int
    tgt_vocab_size: int
    n_layers: int = 2
    positions: EncDecPositions = "t5"
    max_len: int = 512
    norm: NormKind = "rmsnorm"
    activation: Activation = "relu"
    bias: bool = False
    tie_embeddings: bool = True
    share_embeddings: bool = False
    scale_tied_head: bool = False
    relative_buckets: int = 32
    relative_max_distance: int = 128

    size_fields: ClassVar[tuple[str, ...]] = ("src_vocab_size", "tgt_vocab_size")
    position_schemes: ClassVar[tuple[str, ...]] = ("t5", *POSITION_SCHEMES)

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ConfigError(f"{name}.share_embeddings needs one vocabulary, got src_vocab_size="
                              f"{self.src_vocab_size} and tgt_vocab_size={self.tgt_vocab_size}")
        if self.scale_tied_head and not self.tie_embeddings:
            raise ConfigError(f"{name}.scale_tied_head scales the input of a tied output layer; "
                              "set tie_embeddings=True or scale_tied_head=False")
        if self.relative_buckets < 4 or self.relative_max_distance <= self.relative_buckets // 2:
            raise ConfigError(f"{name}: t5 positions need relative_buckets >= 4 and relative_max_distance > "
                              f"relative_buckets / 2, got {self.relative_buckets} and {self.relative_max_distance}")


class TransformerStack(nn.Module):
    """Embeddings, positions and blocks of one side (encoder or decoder), and its final norm."""

    def __init__(self, config: TransformerEncDecConfig, vocab_size: int, *, decoder: bool):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, config.d_model)
        self.input_positions = input_positions(config)
        self.dropout = nn.Dropout(config.dropout)
        shared = attention_positions(config, causal=decoder)
        norm = block_norm(config)
        attention = partial(block_attention, config)
        self.blocks = nn.ModuleList(
            TransformerBlock(attention(causal=decoder, positions=shared), build_feedforward(config), norm,
                             cross_attention=attention(causal=False, cross=True) if decoder else None,
                             norm_position=config.norm_position, dropout=config.dropout,
                             checkpoint=config.gradient_checkpointing)
            for _ in range(config.n_layers))
        self.final_norm = norm() if config.norm_position == "pre" else nn.Identity()

    def embed(self, ids: Tensor, offset: int) -> Tensor:
        x = self.embedding(ids)                                                      # (B, L, D)
        if self.input_positions is not None:
            x = self.input_positions(x, offset)
        return self.dropout(x)


@register("transformer-encdec", task="seq2seq", config=TransformerEncDecConfig)
class TransformerEncoderDecoder(EncoderDecoder):
    """Transformer encoder-decoder, T5-style relative positions by default."""

    # Attention stacks want a gentler start than the recurrent models' 3e-3 after 20 steps.
    train_defaults: ClassVar[dict[str, Any]] = {"lr": 1e-3, "warmup_steps": 200}

    def __init__(self, config: TransformerEncDecConfig):
        super().__init__()
        self.config = config
        self.src_vocab_size, self.tgt_vocab_size = config.src_vocab_size, config.tgt_vocab_size
        self.encoder = TransformerStack(config, config.src_vocab_size, decoder=False)
        self.decoder = TransformerStack(config, config.tgt_vocab_size, decoder=True)
        self.head = nn.Linear(config.d_model, config.tgt_vocab_size, bias=False)
        gpt2_init(self, 2 * config.n_layers, token_embedding_std(config))
        for stack in (self.encoder, self.decoder):
            for block in stack.blocks:
                if hasattr(block.attention.positions, "embedding"):
                    nn.init.normal_(block.attention.positions.embedding.weight, std=0.02)
        if config.share_embeddings:
            self.decoder.embedding.weight = self.encoder.embedding.weight
        if config.tie_embeddings:
            self.head.weight = self.decoder.embedding.weight
        # T5 rescales what enters a tied head (its embedding rows are O(1), not O(D^-1/2)).
        self.head_input_scale = config.d_model ** -0.5 if config.scale_tied_head else 1.0

    def encode(self, src: Tensor, src_mask: Tensor) -> dict[str, Tensor]:
        """The encoder's outputs: ``{"memory": (B, S, D), "memory_mask": (B, S)}``."""
        if src.shape[1] > self.config.max_len and self.config.positions == "learned":
            raise DataError(f"a source of {src.shape[1]} tokens does not fit the learned position table "
                            f"(max_len={self.config.max_len}); raise max_len or shorten the sources")
        x = self.encoder.embed(src, 0)
        for block in self.encoder.blocks:
            x = block(x, key_padding_mask=src_mask)
        return {"memory": self.encoder.final_norm(x), "memory_mask": src_mask}

    def init_state(self, batch_size: int, memory: dict[str, Tensor]) -> dict[str, Any]:
        caches = tuple(block.attention.make_cache(batch_size, 64) for block in self.decoder.blocks)
        return {**memory, "caches": caches}

    def _decode(self, tgt: Tensor, memory: Tensor, memory_mask: Tensor, caches: tuple | None) -> Tensor:
        """(B, T) target ids after the cached ones -> (B, T, V) logits (caches extended in place)."""
        offset = 0 if caches is None else caches[0].length
        x = self.decoder.embed(tgt, offset)
        for index, block in enumerate(self.decoder.blocks):
            x = block(x, memory=memory, memory_padding_mask=memory_mask,
                      cache=None if caches is None else caches[index])
        return self.head(self.decoder.final_norm(x) * self.head_input_scale)

    def step(self, token: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """(B,) target ids -> (B, V) logits; the state's caches are extended in place."""
        logits = self._decode(token[:, None], state["memory"], state["memory_mask"], state["caches"])
        return logits[:, 0], state

    def select(self, state: dict[str, Any], rows: Tensor) -> dict[str, Any]:
        """A new state of batch rows ``rows``: the memory's rows and copies of the caches' rows."""
        return {"memory": state["memory"].index_select(0, rows), "memory_mask": state["memory_mask"].index_select(0, rows),
                "caches": tuple(cache.selected(rows) for cache in state["caches"])}

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V) in one pass of the decoder."""
        memory = self.encode(src, src_mask)
        return self._decode(tgt_in, memory["memory"], memory["memory_mask"], None)

    @torch.no_grad()
    def attention_weights(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """(B, T, S) cross-attention of the last decoder block, averaged over its heads."""
        memory = self.encode(src, src_mask)
        x = self.decoder.embed(tgt_in, 0)
        for block in self.decoder.blocks[:-1]:
            x = block(x, memory=memory["memory"], memory_padding_mask=src_mask)
        last = self.decoder.blocks[-1]
        if last.norm_position == "pre":
            x = x + last.attention(last.attention_norm(x))
            queries = last.cross_attention_norm(x)
        else:
            queries = last.attention_norm(x + last.attention(x))
        weights = last.cross_attention.cross_attention_weights(queries, memory["memory"], src_mask)
        return weights.mean(dim=1)
