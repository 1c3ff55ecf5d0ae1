"""BERT (Devlin et al. 2019), ``BertForMaskedLM`` <-> seqlab's ``bert`` for the ``mlm`` task:
learned absolute positions, token-type embeddings, post-LayerNorm blocks with an embedding
LayerNorm, exact (erf) GELU, biases everywhere, and the prediction head (dense, GELU,
LayerNorm, then the output layer tied to the word embeddings, with a bias of its own).

Every LayerNorm uses ``layer_norm_eps`` (1e-12 in BERT); seqlab's ``norm_eps`` sets them all,
the head's too. HF's attention mask (1 real, 0 padding) is seqlab's key padding mask (true at
real tokens).

``[MASK]``. HF BERT's vocabulary holds ``[MASK]`` (103 in Google's vocabularies), so an import
has ``mask_id`` set and exactly ``vocab_size`` embedding rows. config.json does not name it:
the import takes ``mask_token_id`` from config.json when present, and Google's 103 otherwise
(a vocabulary smaller than that must name it). The id changes no logit, only which id the mlm
task writes for a masked position. A seqlab-trained model (``mask_id`` none) has one row more
than its tokenizer's ids, its ``[MASK]``: it exports as a BERT of ``vocab_size + 1`` ids with
``mask_token_id`` = vocab_size, and reads back as one whose vocabulary holds ``[MASK]``.

Not carried: the pooler and the next-sentence head of ``BertForPreTraining`` checkpoints
(ignored on import); the decoder's weight and bias, which HF ties to the word embeddings and
to ``cls.predictions.bias`` (an untied decoder is refused).
"""

from __future__ import annotations

from typing import Any

from seqlab.errors import ConfigError
from seqlab.interop.hf.architecture import Architecture, HFConfig, check_exportable
from seqlab.interop.hf.mapping import Rule
from seqlab.models.bert import BertMLMConfig

GOOGLE_MASK_ID = 103            # [MASK] in every vocabulary Google released with BERT
DEFAULT_LAYER_NORM_EPS = 1e-5   # torch's, which seqlab's LayerNorm uses when norm_eps is none

EMBEDDINGS = "bert.embeddings."
BLOCK = "bert.encoder.layer.{i}."
OURS = "encoder.blocks.{i}."
HEAD = "cls.predictions."


def _pair(hf: str, ours: str) -> tuple[Rule, Rule]:
    """The weight and the bias of one layer."""
    return Rule(hf + ".weight", ours + ".weight"), Rule(hf + ".bias", ours + ".bias")


TABLE = (
    Rule(EMBEDDINGS + "word_embeddings.weight", "encoder.embedding.weight"),
    Rule(EMBEDDINGS + "position_embeddings.weight", "encoder.input_positions.embedding.weight"),
    Rule(EMBEDDINGS + "token_type_embeddings.weight", "encoder.token_type_embedding.weight"),
    *_pair(EMBEDDINGS + "LayerNorm", "encoder.embedding_norm"),
    *_pair(BLOCK + "attention.self.query", OURS + "attention.q_proj"),
    *_pair(BLOCK + "attention.self.key", OURS + "attention.k_proj"),
    *_pair(BLOCK + "attention.self.value", OURS + "attention.v_proj"),
    *_pair(BLOCK + "attention.output.dense", OURS + "attention.out_proj"),
    *_pair(BLOCK + "attention.output.LayerNorm", OURS + "attention_norm"),
    *_pair(BLOCK + "intermediate.dense", OURS + "feedforward.up"),
    *_pair(BLOCK + "output.dense", OURS + "feedforward.down"),
    *_pair(BLOCK + "output.LayerNorm", OURS + "feedforward_norm"),
    *_pair(HEAD + "transform.dense", "transform"),
    *_pair(HEAD + "transform.LayerNorm", "transform_norm"),
    Rule(HEAD + "bias", "output_bias"),
)

IGNORED = (
    r"bert\.embeddings\.(position_ids|token_type_ids)",     # buffers
    r"bert\.pooler\..*", r"cls\.seq_relationship\..*",       # BertForPreTraining's next-sentence head
    r"cls\.predictions\.decoder\.(weight|bias)",             # tied copies of word_embeddings and bias
)


def config_from_hf(hf: HFConfig) -> dict[str, Any]:
    """BertConfig -> a ``bert`` mlm config."""
    hf.require("position_embedding_type", ("absolute",), "absolute")
    hf.require("hidden_act", ("gelu",), "gelu")
    hf.require("is_decoder", (False,), False)
    hf.require("add_cross_attention", (False,), False)
    hf.require("tie_word_embeddings", (True,), True)
    vocab_size = hf.get("vocab_size", kind=int)
    mask_id = hf.get("mask_token_id", GOOGLE_MASK_ID, kind=int)
    if "mask_token_id" not in hf.values and mask_id >= vocab_size:
        raise ConfigError(f"{hf.model_type} config.json does not name its [MASK] id and its {vocab_size} ids do "
                          f"not reach Google's [MASK]={GOOGLE_MASK_ID}; add mask_token_id to config.json")
    if not 0 <= mask_id < vocab_size:
        raise ConfigError(f"{hf.model_type} config.json sets mask_token_id={mask_id}, outside its {vocab_size} ids")
    return {
        "vocab_size": vocab_size, "mask_id": mask_id, "d_model": hf.get("hidden_size", kind=int),
        "n_layers": hf.get("num_hidden_layers", kind=int), "n_heads": hf.get("num_attention_heads", kind=int),
        "d_ff": hf.get("intermediate_size", kind=int), "max_len": hf.get("max_position_embeddings", 512, kind=int),
        "n_token_types": hf.get("type_vocab_size", 2, kind=int),
        "norm_eps": float(hf.get("layer_norm_eps", 1e-12, kind=(int, float))),
        "dropout": float(hf.get("hidden_dropout_prob", 0.1, kind=(int, float))),
        "positions": "learned", "norm": "layernorm", "norm_position": "post", "activation": "gelu", "bias": True,
    }


def config_to_hf(config: Any) -> dict[str, Any]:
    """A ``bert`` mlm config -> BertConfig values (refusing what BERT cannot express)."""
    if not isinstance(config, BertMLMConfig):
        raise ConfigError("only a bert for the mlm task has a BertForMaskedLM form; this one is "
                          f"{type(config).__name__}")
    check_exportable(config, "BERT", positions="learned", norm="layernorm", norm_position="post", activation="gelu",
                     bias=True, scale_attention=True)
    if config.n_token_types < 1:
        raise ConfigError("BERT always adds a token-type embedding; this model has none (n_token_types=0): "
                          "train it with n_token_types >= 1 to export it")
    own_mask = config.mask_id is not None
    return {
        "vocab_size": config.vocab_size + (0 if own_mask else 1),
        "mask_token_id": config.mask_id if own_mask else config.vocab_size,
        "hidden_size": config.d_model, "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
        "intermediate_size": config.hidden_width, "hidden_act": "gelu", "max_position_embeddings": config.max_len,
        "type_vocab_size": config.n_token_types,
        "layer_norm_eps": config.norm_eps if config.norm_eps is not None else DEFAULT_LAYER_NORM_EPS,
        "hidden_dropout_prob": config.dropout, "attention_probs_dropout_prob": config.dropout,
        "position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False,
        "tie_word_embeddings": True,
    }


BERT = Architecture(
    model_type="bert", hf_class="BertForMaskedLM", model="bert", task="mlm", table=TABLE,
    config_from_hf=config_from_hf, config_to_hf=config_to_hf, base_prefix="bert.", ignored=IGNORED,
)
