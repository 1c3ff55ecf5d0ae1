"""T5 (Raffel et al. 2020), ``T5ForConditionalGeneration`` <-> seqlab's ``transformer-encdec``
for the ``seq2seq`` task: one embedding table for encoder, decoder (and a tied output layer),
pre-norm RMSNorm blocks without biases, unscaled attention logits, and relative position
buckets (sec. 2.1): a learned scalar per head and bucket, held by block 0 of each stack and
shared by the stack's blocks, bidirectional in the encoder, causal in the decoder; none in the
cross-attention.

The feed-forward is ``feed_forward_proj``: ``relu`` (T5), ``gated-gelu`` (T5 v1.1, mT5, Flan-T5:
tanh GELU on ``wi_0`` times ``wi_1``, seqlab's ``geglu_tanh``), ``gated-silu`` (``swiglu``), or
plain ``gelu``, ``gelu_new``, ``silu``.

The head. T5 with a tied head multiplies the decoder output by d_model^-1/2 before it
(``scale_tied_head``); T5 v1.1 has an untied ``lm_head`` and no factor. transformers 5 writes
``tie_word_embeddings: true`` for every T5 and says whether it scales in
``scale_decoder_outputs``; earlier versions derive the factor from ``tie_word_embeddings``. The
import reads both: the head is tied iff ``tie_word_embeddings`` (default true) and scaled iff
``scale_decoder_outputs`` (default: tied). A checkpoint whose config says tied but which holds
an ``lm_head.weight`` (transformers 5 writes one for a model whose head was untied in memory)
is refused by name rather than read with the wrong head.

Not carried: ``num_decoder_layers`` other than ``num_layers``, ``d_kv x num_heads`` other than
``d_model`` (seqlab's heads split d_model), other activations; each is refused by name.
"""

from __future__ import annotations

from typing import Any

from seqlab.errors import ConfigError
from seqlab.interop.hf.architecture import Architecture, HFConfig, check_exportable
from seqlab.interop.hf.mapping import Rule

FEED_FORWARDS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "silu": "silu",
                 "gated-gelu": "geglu_tanh", "gated-gelu_new": "geglu_tanh", "gated-silu": "swiglu"}
EXPORTED_FEED_FORWARDS = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu",
                          "geglu_tanh": "gated-gelu", "swiglu": "gated-silu"}


def attention_rules(hf: str, ours: str) -> tuple[Rule, ...]:
    """T5Attention ``q, k, v, o`` -> seqlab's ``q_proj, k_proj, v_proj, out_proj``."""
    names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}
    return tuple(Rule(f"{hf}.{theirs}.weight", f"{ours}.{mine}.weight") for theirs, mine in names.items())


def feedforward_rules(hf: str, ours: str) -> tuple[Rule, ...]:
    """DenseReluDense (``wi``, ``wo``) or its gated form (``wi_0``, ``wi_1``, ``wo``)."""
    return (Rule(f"{hf}.wi.weight", f"{ours}.up.weight", unless=f"{ours}.gate.weight"),
            Rule(f"{hf}.wi_0.weight", f"{ours}.gate.weight"),
            Rule(f"{hf}.wi_1.weight", f"{ours}.up.weight", when=f"{ours}.gate.weight"),
            Rule(f"{hf}.wo.weight", f"{ours}.down.weight"))


ENCODER, ENCODER_OURS = "encoder.block.{i}.layer.", "encoder.blocks.{i}."
DECODER, DECODER_OURS = "decoder.block.{i}.layer.", "decoder.blocks.{i}."
TABLE = (
    Rule("shared.weight", "encoder.embedding.weight"),
    Rule("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
         "encoder.blocks.0.attention.positions.embedding.weight"),
    *attention_rules(ENCODER + "0.SelfAttention", ENCODER_OURS + "attention"),
    Rule(ENCODER + "0.layer_norm.weight", ENCODER_OURS + "attention_norm.weight"),
    *feedforward_rules(ENCODER + "1.DenseReluDense", ENCODER_OURS + "feedforward"),
    Rule(ENCODER + "1.layer_norm.weight", ENCODER_OURS + "feedforward_norm.weight"),
    Rule("encoder.final_layer_norm.weight", "encoder.final_norm.weight"),
    Rule("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
         "decoder.blocks.0.attention.positions.embedding.weight"),
    *attention_rules(DECODER + "0.SelfAttention", DECODER_OURS + "attention"),
    Rule(DECODER + "0.layer_norm.weight", DECODER_OURS + "attention_norm.weight"),
    *attention_rules(DECODER + "1.EncDecAttention", DECODER_OURS + "cross_attention"),
    Rule(DECODER + "1.layer_norm.weight", DECODER_OURS + "cross_attention_norm.weight"),
    *feedforward_rules(DECODER + "2.DenseReluDense", DECODER_OURS + "feedforward"),
    Rule(DECODER + "2.layer_norm.weight", DECODER_OURS + "feedforward_norm.weight"),
    Rule("decoder.final_layer_norm.weight", "decoder.final_norm.weight"),
    Rule("lm_head.weight", "head.weight"),                        # untied heads only
)
IGNORED = (
    r"(encoder|decoder)\.embed_tokens\.weight",                   # copies of shared.weight
    r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",  # unused (old checkpoints)
)


def config_from_hf(hf: HFConfig) -> dict[str, Any]:
    """T5Config -> a ``transformer-encdec`` config."""
    hf.require("is_encoder_decoder", (True,), True)
    hf.require("is_decoder", (False,), False)
    proj = hf.require("feed_forward_proj", tuple(FEED_FORWARDS), "relu")
    n_layers = hf.get("num_layers", kind=int)
    n_decoder_layers = hf.get("num_decoder_layers", n_layers, kind=int)
    if n_decoder_layers != n_layers:
        raise ConfigError(f"{hf.model_type} config.json sets num_decoder_layers={n_decoder_layers} with "
                          f"num_layers={n_layers}; seqlab's decoder has as many blocks as its encoder")
    d_model, n_heads = hf.get("d_model", kind=int), hf.get("num_heads", kind=int)
    d_kv = hf.get("d_kv", kind=int)
    if d_kv * n_heads != d_model:
        raise ConfigError(f"{hf.model_type} config.json sets d_kv={d_kv} with num_heads={n_heads} and "
                          f"d_model={d_model}; seqlab needs d_kv x num_heads = d_model")
    said_tied = hf.get("tie_word_embeddings", True, kind=bool)
    tied = said_tied and "lm_head.weight" not in hf.tensor_names     # transformers 5 saves an untied head so
    scaled = hf.get("scale_decoder_outputs", said_tied, kind=bool)
    if scaled and not tied:
        raise ConfigError(f"{hf.model_type} config.json sets scale_decoder_outputs=True with an untied head "
                          "(tie_word_embeddings=False), which seqlab does not implement")
    vocab_size = hf.get("vocab_size", kind=int)
    return {
        "src_vocab_size": vocab_size, "tgt_vocab_size": vocab_size, "share_embeddings": True,
        "tie_embeddings": tied, "scale_tied_head": scaled,
        "d_model": d_model, "n_layers": n_layers, "n_heads": n_heads, "d_ff": hf.get("d_ff", kind=int),
        "activation": FEED_FORWARDS[proj],
        "norm_eps": float(hf.get("layer_norm_epsilon", 1e-6, kind=(int, float))),
        "relative_buckets": hf.get("relative_attention_num_buckets", 32, kind=int),
        "relative_max_distance": hf.get("relative_attention_max_distance", 128, kind=int),
        "max_len": hf.get("n_positions", 512, kind=int),
        "dropout": float(hf.get("dropout_rate", 0.1, kind=(int, float))),
        "positions": "t5", "norm": "rmsnorm", "norm_position": "pre", "bias": False, "scale_attention": False,
    }


def config_to_hf(config: Any) -> dict[str, Any]:
    """A T5-shaped ``transformer-encdec`` config -> T5Config values."""
    check_exportable(config, "T5", positions="t5", norm="rmsnorm", norm_position="pre", bias=False,
                     scale_attention=False, share_embeddings=True)
    if config.activation not in EXPORTED_FEED_FORWARDS:
        raise ConfigError(f"T5 has no {config.activation!r} feed-forward; it takes "
                          f"{', '.join(EXPORTED_FEED_FORWARDS)}")
    return {
        "vocab_size": config.src_vocab_size, "d_model": config.d_model, "d_kv": config.d_model // config.n_heads,
        "d_ff": config.hidden_width, "num_layers": config.n_layers, "num_decoder_layers": config.n_layers,
        "num_heads": config.n_heads, "relative_attention_num_buckets": config.relative_buckets,
        "relative_attention_max_distance": config.relative_max_distance, "n_positions": config.max_len,
        "dropout_rate": config.dropout, "layer_norm_epsilon": config.norm_eps if config.norm_eps is not None else 1e-6,
        "feed_forward_proj": EXPORTED_FEED_FORWARDS[config.activation],
        "tie_word_embeddings": config.tie_embeddings, "scale_decoder_outputs": config.scale_tied_head,
        "is_encoder_decoder": True,
        # T5's own ids (a caller's special tokens replace them): decoding starts from PAD, ends at EOS.
        "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
    }


T5 = Architecture(
    model_type="t5", hf_class="T5ForConditionalGeneration", model="transformer-encdec", task="seq2seq",
    table=TABLE, config_from_hf=config_from_hf, config_to_hf=config_to_hf, ignored=IGNORED,
)
