"""Llama (Touvron et al. 2023) <-> seqlab's ``llama``: RoPE in the half-rotation layout (HF's
``rotate_half``), RMSNorm, a SwiGLU feed-forward, grouped-query attention, a tied or untied
output layer, optional biases.

HF Llama attends to every earlier position; seqlab's rotary models attend to the ``max_len``
most recent ones (a sliding window), so the import sets ``max_len`` to the checkpoint's
``max_position_embeddings``: the two agree on every sequence the model was trained for.
"""

from __future__ import annotations

from typing import Any

from seqlab.errors import ConfigError
from seqlab.interop.hf.architecture import Architecture, HFConfig, check_exportable
from seqlab.interop.hf.mapping import Rule

BLOCK = "model.layers.{i}."
TABLE = (
    Rule("model.embed_tokens.weight", "token_embedding.weight"),
    *(Rule(BLOCK + f"self_attn.{p}_proj.{kind}", f"blocks.{{i}}.attention.{p}_proj.{kind}")
      for p in "qkv" for kind in ("weight", "bias")),
    Rule(BLOCK + "self_attn.o_proj.weight", "blocks.{i}.attention.out_proj.weight"),
    Rule(BLOCK + "self_attn.o_proj.bias", "blocks.{i}.attention.out_proj.bias"),
    *(Rule(BLOCK + f"mlp.{hf}_proj.{kind}", f"blocks.{{i}}.feedforward.{ours}.{kind}")
      for hf, ours in (("gate", "gate"), ("up", "up"), ("down", "down")) for kind in ("weight", "bias")),
    Rule(BLOCK + "input_layernorm.weight", "blocks.{i}.attention_norm.weight"),
    Rule(BLOCK + "post_attention_layernorm.weight", "blocks.{i}.feedforward_norm.weight"),
    Rule("model.norm.weight", "final_norm.weight"),
    Rule("lm_head.weight", "head.weight"),                        # untied heads only
)


def rope_base(hf: HFConfig) -> float:
    """theta of RoPE, refusing any scaling (linear, dynamic, yarn, llama3, ...)."""
    parameters = hf.values.get("rope_parameters") or {}
    scaling = hf.values.get("rope_scaling") or {}
    for key, source in (("rope_parameters", parameters), ("rope_scaling", scaling)):
        if not isinstance(source, dict):
            raise ConfigError(f"{hf.model_type} config.json: {key} is {source!r}, expected an object")
        kind = source.get("rope_type", source.get("type", "default"))
        if kind != "default":
            raise ConfigError(f"{hf.model_type} config.json asks for rope scaling {kind!r}, which seqlab does not "
                              "implement (supported: no scaling, rope_type 'default')")
    return float(parameters.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: HFConfig) -> dict[str, Any]:
    """LlamaConfig -> a ``llama`` config."""
    hf.require("hidden_act", ("silu",), "silu")
    hf.require("pretraining_tp", (1,), 1)
    attention_bias = hf.get("attention_bias", False, kind=bool)
    hf.require("mlp_bias", (attention_bias,), False)
    d_model, n_heads = hf.get("hidden_size", kind=int), hf.get("num_attention_heads", kind=int)
    head_dim = hf.get("head_dim", d_model // n_heads, kind=int)
    if head_dim * n_heads != d_model:
        raise ConfigError(f"{hf.model_type} config.json sets head_dim={head_dim} with {n_heads} heads and "
                          f"hidden_size={d_model}; seqlab needs head_dim x heads = hidden_size")
    return {
        "vocab_size": hf.get("vocab_size", kind=int), "d_model": d_model,
        "n_layers": hf.get("num_hidden_layers", kind=int), "n_heads": n_heads,
        "n_kv_heads": hf.get("num_key_value_heads", n_heads, kind=int), "d_ff": hf.get("intermediate_size", kind=int),
        "max_len": hf.get("max_position_embeddings", 2048, kind=int), "rope_base": rope_base(hf),
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6, kind=(int, float))), "bias": attention_bias,
        "tie_embeddings": hf.get("tie_word_embeddings", False, kind=bool),
        "positions": "rope", "norm": "rmsnorm", "activation": "swiglu", "norm_position": "pre",
    }


def config_to_hf(config: Any) -> dict[str, Any]:
    """A ``llama`` (or Llama-shaped ``transformer``) config -> LlamaConfig values."""
    check_exportable(config, "Llama", grouped_query=True, positions="rope", norm="rmsnorm", norm_position="pre",
                     activation="swiglu", n_experts=0, scale_attention=True)
    return {
        "vocab_size": config.vocab_size, "hidden_size": config.d_model, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads or config.n_heads,
        "intermediate_size": config.hidden_width, "max_position_embeddings": config.max_len,
        "rope_theta": config.rope_base, "rms_norm_eps": config.norm_eps if config.norm_eps is not None else 1e-6,
        "attention_bias": config.bias, "mlp_bias": config.bias, "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu", "head_dim": config.d_model // config.n_heads,
    }


LLAMA = Architecture(
    model_type="llama", hf_class="LlamaForCausalLM", model="llama", task="lm", table=TABLE,
    config_from_hf=config_from_hf, config_to_hf=config_to_hf, exports_from=("llama", "transformer"),
    base_prefix="model.", ignored=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"lm_head\.weight"),
)
