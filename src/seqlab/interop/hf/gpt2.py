"""GPT-2 (Radford et al. 2019) <-> seqlab's ``gpt``: learned positions, pre-LayerNorm,
tanh-approximate GELU (``gelu_new``), biases everywhere, a tied output layer by default.

GPT-2 stores its projections as ``Conv1D`` weights of shape (in, out), the transpose of
``nn.Linear``'s, and its query, key and value projections as one fused ``c_attn``; the table
transposes them and splits the fused one into seqlab's ``q_proj``, ``k_proj``, ``v_proj``.
"""

from __future__ import annotations

from typing import Any

from seqlab.errors import ConfigError
from seqlab.interop.hf.architecture import Architecture, HFConfig, check_exportable
from seqlab.interop.hf.mapping import Rule

ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
EXPORTED_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}

BLOCK = "transformer.h.{i}."
TABLE = (
    Rule("transformer.wte.weight", "token_embedding.weight"),
    Rule("transformer.wpe.weight", "input_positions.embedding.weight"),
    Rule(BLOCK + "ln_1.weight", "blocks.{i}.attention_norm.weight"),
    Rule(BLOCK + "ln_1.bias", "blocks.{i}.attention_norm.bias"),
    Rule(BLOCK + "attn.c_attn.weight", tuple(f"blocks.{{i}}.attention.{p}_proj.weight" for p in "qkv"), transpose=True),
    Rule(BLOCK + "attn.c_attn.bias", tuple(f"blocks.{{i}}.attention.{p}_proj.bias" for p in "qkv")),
    Rule(BLOCK + "attn.c_proj.weight", "blocks.{i}.attention.out_proj.weight", transpose=True),
    Rule(BLOCK + "attn.c_proj.bias", "blocks.{i}.attention.out_proj.bias"),
    Rule(BLOCK + "ln_2.weight", "blocks.{i}.feedforward_norm.weight"),
    Rule(BLOCK + "ln_2.bias", "blocks.{i}.feedforward_norm.bias"),
    Rule(BLOCK + "mlp.c_fc.weight", "blocks.{i}.feedforward.up.weight", transpose=True),
    Rule(BLOCK + "mlp.c_fc.bias", "blocks.{i}.feedforward.up.bias"),
    Rule(BLOCK + "mlp.c_proj.weight", "blocks.{i}.feedforward.down.weight", transpose=True),
    Rule(BLOCK + "mlp.c_proj.bias", "blocks.{i}.feedforward.down.bias"),
    Rule("transformer.ln_f.weight", "final_norm.weight"),
    Rule("transformer.ln_f.bias", "final_norm.bias"),
    Rule("lm_head.weight", "head.weight"),                        # untied heads only
)


def config_from_hf(hf: HFConfig) -> dict[str, Any]:
    """GPT2Config -> a ``gpt`` config."""
    hf.require("scale_attn_weights", (True,), True)
    hf.require("scale_attn_by_inverse_layer_idx", (False,), False)
    hf.require("add_cross_attention", (False,), False)
    activation = hf.require("activation_function", tuple(ACTIVATIONS), "gelu_new")
    return {
        "vocab_size": hf.get("vocab_size", kind=int), "max_len": hf.get("n_positions", kind=int),
        "d_model": hf.get("n_embd", kind=int), "n_layers": hf.get("n_layer", kind=int),
        "n_heads": hf.get("n_head", kind=int), "d_ff": hf.get("n_inner", None, kind=int),
        "activation": ACTIVATIONS[activation],
        "norm_eps": float(hf.get("layer_norm_epsilon", 1e-5, kind=(int, float))),
        "tie_embeddings": hf.get("tie_word_embeddings", True, kind=bool),
        "dropout": float(hf.get("resid_pdrop", 0.0, kind=(int, float))),
        "positions": "learned", "norm": "layernorm", "norm_position": "pre", "bias": True,
    }


def config_to_hf(config: Any) -> dict[str, Any]:
    """A ``gpt`` (or GPT-shaped ``transformer``) config -> GPT2Config values."""
    check_exportable(config, "GPT-2", positions="learned", norm="layernorm", norm_position="pre", bias=True,
                     n_experts=0, scale_attention=True)
    if config.activation not in EXPORTED_ACTIVATIONS:
        raise ConfigError(f"GPT-2 has no {config.activation!r} feed-forward; it takes {', '.join(EXPORTED_ACTIVATIONS)}")
    return {
        "vocab_size": config.vocab_size, "n_positions": config.max_len, "n_embd": config.d_model,
        "n_layer": config.n_layers, "n_head": config.n_heads, "n_inner": config.hidden_width,
        "activation_function": EXPORTED_ACTIVATIONS[config.activation],
        "layer_norm_epsilon": config.norm_eps if config.norm_eps is not None else 1e-5,
        "tie_word_embeddings": config.tie_embeddings, "resid_pdrop": config.dropout, "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout, "scale_attn_weights": True,
    }


GPT2 = Architecture(
    model_type="gpt2", hf_class="GPT2LMHeadModel", model="gpt", task="lm", table=TABLE,
    config_from_hf=config_from_hf, config_to_hf=config_to_hf, exports_from=("gpt", "transformer"),
    base_prefix="transformer.", ignored=(r"transformer\.h\.\d+\.attn\.(masked_)?bias", r"lm_head\.weight"),
)
