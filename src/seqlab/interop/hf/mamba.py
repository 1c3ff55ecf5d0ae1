"""Mamba (Gu and Dao 2023) <-> seqlab's ``mamba`` and Mamba-2 (Dao and Gu 2024) <-> seqlab's
``mamba2``: Hugging Face's ``MambaForCausalLM`` and ``Mamba2ForCausalLM``.

seqlab's mixer stacks (``seqlab.models.mixer_stack``) keep the reference implementation's
parameter names, which are also Hugging Face's, so both tables map each tensor to its namesake;
they are still written out row by row, so that a renamed tensor on either side fails loudly.

What the configs say, and what seqlab refuses:

- Both: the activation (``hidden_act``) of the convolution and of the gate must be SiLU
  (``silu``, or its other name ``swish``).
  ``residual_in_fp32`` is accepted: it keeps the residual stream in float32 when the model runs
  in a lower precision, and changes nothing in float32; seqlab adds residuals in the model's
  dtype (and exports ``residual_in_fp32=False``, which is what it computes).
- Mamba-2: the gated norm must normalise *after* gating, y = g * RMSNorm(x * SiLU(z)) per
  group, as HF's ``MambaRMSNormGated`` and seqlab's ``GroupRMSNorm`` do (``norm_before_gate``
  false; mamba_ssm configs carry the key, HF's config class no longer does); ``rms_norm`` must
  be true; ``time_step_limit`` must be (0, inf), i.e. no clamp on the step sizes; and
  ``num_heads`` must equal expand x hidden_size / head_dim.
- Initialisation only, and ignored: ``time_step_floor``, ``time_step_scale``,
  ``time_step_init_scheme``, ``rescale_prenorm_residual``, ``initializer_range``;
  ``time_step_min`` / ``time_step_max`` become ``dt_min`` / ``dt_max``. Implementation choices
  (``use_mambapy``, ``use_associative_scan``, ``use_cache``) compute the same function.

Mamba-2's ``chunk_size`` changes the order of the floating-point work, not the function; it is
carried over both ways so that the two implementations chunk alike.
"""

from __future__ import annotations

import math
from typing import Any

from seqlab.errors import ConfigError
from seqlab.interop.hf.architecture import Architecture, HFConfig
from seqlab.interop.hf.mapping import Rule
from seqlab.models.mixer_stack import MixerLMConfig

MIXER = "backbone.layers.{i}.mixer."


def mixer_stack_table(*mixer_tensors: str) -> tuple[Rule, ...]:
    """The rows of a mixer stack: seqlab's names are HF's, so each row maps a name to itself.
    A bias row applies only to a model with that bias, ``lm_head`` only to an untied head."""
    names = ("backbone.embeddings.weight", "backbone.layers.{i}.norm.weight",
             *(MIXER + name for name in mixer_tensors), "backbone.norm_f.weight", "lm_head.weight")
    return tuple(Rule(name, name) for name in names)


MAMBA_TABLE = mixer_stack_table("in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "x_proj.weight",
                                "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight", "out_proj.bias")
MAMBA2_TABLE = mixer_stack_table("in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log",
                                 "D", "norm.weight", "out_proj.weight", "out_proj.bias")


def _stack_from_hf(hf: HFConfig, tie_default: bool) -> dict[str, Any]:
    """The fields both families share: sizes, norm epsilon, biases, head tying, dt range."""
    hf.require("hidden_act", ("silu", "swish"), "silu")        # transformers spells SiLU both ways
    return {
        "residual_in_fp32": hf.get("residual_in_fp32", True, kind=bool),
        "vocab_size": hf.get("vocab_size", kind=int), "d_model": hf.get("hidden_size", kind=int),
        "n_layers": hf.get("num_hidden_layers", kind=int), "d_state": hf.get("state_size", kind=int),
        "expand": hf.get("expand", 2, kind=int), "d_conv": hf.get("conv_kernel", 4, kind=int),
        "bias": hf.get("use_bias", False, kind=bool), "conv_bias": hf.get("use_conv_bias", True, kind=bool),
        "norm_eps": float(hf.get("layer_norm_epsilon", 1e-5, kind=(int, float))),
        "tie_embeddings": hf.get("tie_word_embeddings", tie_default, kind=bool),
        "dt_min": float(hf.get("time_step_min", 1e-3, kind=(int, float))),
        "dt_max": float(hf.get("time_step_max", 1e-1, kind=(int, float))),
    }


def _stack_to_hf(config: Any) -> dict[str, Any]:
    """The shared fields of a seqlab ``mamba`` / ``mamba2`` config as config.json values.

    Raises:
        ConfigError: a classifier (the registry names both tasks' models alike); HF's classes
            here are language models.
    """
    if not isinstance(config, MixerLMConfig):
        raise ConfigError(f"a {type(config).__name__} model is not a language model; Hugging Face's Mamba "
                          "classes are (MambaForCausalLM, Mamba2ForCausalLM), so only the lm task exports")
    return {
        "vocab_size": config.vocab_size, "hidden_size": config.d_model, "num_hidden_layers": config.n_layers,
        "state_size": config.d_state, "expand": config.expand, "conv_kernel": config.d_conv,
        "use_bias": config.bias, "use_conv_bias": config.conv_bias, "layer_norm_epsilon": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings, "time_step_min": config.dt_min,
        "time_step_max": config.dt_max, "hidden_act": "silu", "residual_in_fp32": config.residual_in_fp32,
    }


def mamba_config_from_hf(hf: HFConfig) -> dict[str, Any]:
    """MambaConfig -> a ``mamba`` config; ``time_step_rank`` "auto" is ceil(hidden_size / 16)."""
    values = _stack_from_hf(hf, tie_default=True)
    rank = hf.get("time_step_rank", "auto", kind=(int, str))
    if isinstance(rank, str):
        if rank != "auto":
            raise ConfigError(f"mamba config.json: 'time_step_rank' is {rank!r}, expected an int or 'auto'")
        rank = math.ceil(values["d_model"] / 16)
    return {**values, "dt_rank": rank}


def mamba_config_to_hf(config: Any) -> dict[str, Any]:
    """A ``mamba`` config -> MambaConfig values."""
    rank = config.dt_rank if config.dt_rank is not None else math.ceil(config.d_model / 16)
    return {**_stack_to_hf(config), "time_step_rank": rank}


def _time_step_limit(hf: HFConfig) -> None:
    """Refuse a clamp on Mamba-2's step sizes: seqlab implements only (0, inf)."""
    limit = hf.values.get("time_step_limit")
    if limit is None:
        return
    try:   # infinity is JSON's ``Infinity``, or transformers 5's {"__float__": "Infinity"}
        low, high = (float(bound["__float__"] if isinstance(bound, dict) else bound) for bound in limit)
    except (TypeError, ValueError, KeyError):
        raise ConfigError(f"mamba2 config.json: 'time_step_limit' is {limit!r}, expected [low, high]") from None
    if low != 0.0 or high != math.inf:
        raise ConfigError(f"mamba2 config.json sets time_step_limit={limit!r}, which seqlab does not implement "
                          "(supported: [0.0, Infinity], no clamp on the step sizes); the model would compute "
                          "something else")


def mamba2_config_from_hf(hf: HFConfig) -> dict[str, Any]:
    """Mamba2Config -> a ``mamba2`` config (refusing what seqlab's mixer does not compute)."""
    hf.require("norm_before_gate", (False,), False)
    hf.require("rms_norm", (True,), True)
    _time_step_limit(hf)
    values = _stack_from_hf(hf, tie_default=False)
    head_dim, n_heads = hf.get("head_dim", 64, kind=int), hf.get("num_heads", 128, kind=int)
    inner = values["expand"] * values["d_model"]
    if n_heads * head_dim != inner:
        raise ConfigError(f"mamba2 config.json sets num_heads={n_heads} and head_dim={head_dim}, but expand x "
                          f"hidden_size is {inner}; num_heads x head_dim must equal it")
    return {**values, "head_dim": head_dim, "n_groups": hf.get("n_groups", 8, kind=int),
            "chunk_size": hf.get("chunk_size", 256, kind=int)}


def mamba2_config_to_hf(config: Any) -> dict[str, Any]:
    """A ``mamba2`` config -> Mamba2Config values."""
    return {**_stack_to_hf(config), "num_heads": config.expand * config.d_model // config.head_dim,
            "head_dim": config.head_dim, "n_groups": config.n_groups, "chunk_size": config.chunk_size,
            "time_step_rank": math.ceil(config.d_model / 16)}


MAMBA = Architecture(
    model_type="mamba", hf_class="MambaForCausalLM", model="mamba", task="lm", table=MAMBA_TABLE,
    config_from_hf=mamba_config_from_hf, config_to_hf=mamba_config_to_hf, base_prefix="backbone.",
    ignored=(r"lm_head\.weight",),
)
MAMBA2 = Architecture(
    model_type="mamba2", hf_class="Mamba2ForCausalLM", model="mamba2", task="lm", table=MAMBA2_TABLE,
    config_from_hf=mamba2_config_from_hf, config_to_hf=mamba2_config_to_hf, base_prefix="backbone.",
    ignored=(r"lm_head\.weight",),
)
