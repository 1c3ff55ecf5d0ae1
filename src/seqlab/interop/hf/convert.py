"""Hugging Face model directories <-> seqlab models, in memory.

:func:`load_model` reads a directory (config.json, safetensors weights, one file or sharded,
generation_config.json) into a seqlab model of the matching architecture, in the weights'
stored dtype unless another is asked for; :func:`save_model` writes a seqlab model back in that
layout, loadable by ``transformers``' ``from_pretrained``. Runs (``seqlab import-hf`` and
``export-hf``) are built on these in ``seqlab.interop.hf.runs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seqlab import registry
from seqlab.errors import CheckpointError, ConfigError, SeqlabError
from seqlab.interop.hf import files, mapping
from seqlab.interop.hf.architecture import Architecture, HFConfig
from seqlab.interop.hf.bert import BERT
from seqlab.interop.hf.gpt2 import GPT2
from seqlab.interop.hf.llama import LLAMA
from seqlab.interop.hf.mamba import MAMBA, MAMBA2
from seqlab.interop.hf.t5 import T5

ARCHITECTURES: dict[str, Architecture] = {arch.model_type: arch for arch in (GPT2, LLAMA, BERT, T5, MAMBA, MAMBA2)}
SPECIAL_TOKENS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    """What :func:`load_model` returns.

    Attributes:
        model: the seqlab model, in eval mode.
        architecture: the HF architecture it was read as.
        hf_config: config.json as read.
        special_tokens: bos/eos/pad/decoder-start ids, from generation_config.json or else
            config.json (an eos may be a list of ids); absent ones are left out.
    """

    model: nn.Module
    architecture: Architecture
    hf_config: dict[str, Any]
    special_tokens: dict[str, Any] = field(default_factory=dict)


def architecture_of(config: dict[str, Any], where: str) -> Architecture:
    """The architecture of a config.json, by its ``model_type``.

    Raises:
        ConfigError: no model_type, or one seqlab does not read (naming those it does).
    """
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ConfigError(f"{where} holds a {model_type!r} model; seqlab reads {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A dtype by name (float32, float16, bfloat16) or as itself; None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def build_model(architecture: Architecture, hf_config: dict[str, Any],
                tensor_names: frozenset[str] = frozenset(), *, device: str | torch.device = "cpu") -> nn.Module:
    """The seqlab model a config.json (and the names of its checkpoint's tensors) describe,
    with fresh weights; on the ``meta`` device, with shapes but no storage (see
    :func:`materialise`)."""
    values = architecture.config_from_hf(HFConfig(hf_config, architecture.model_type, tensor_names))
    entry = registry.get(architecture.model, architecture.task)
    try:
        config = registry.make_config(entry.config_class, values)
    except SeqlabError as error:
        raise ConfigError(f"{architecture.model_type} config.json does not make a valid seqlab "
                          f"{architecture.model}: {error}") from None
    with torch.device(device):
        return entry.model_class(config)


def materialise(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Give a model built on the meta device real, uninitialised CPU storage, its floating
    tensors in ``dtype``: a checkpoint's weights are then written once, with no random
    initialisation to compute and no float32 copy of a half-precision model in memory. Tied
    parameters stay one tensor, and a parameter keeps its attributes (``no_weight_decay``).
    (``Module.to_empty`` would untie them.)"""
    made: dict[int, torch.Tensor] = {}

    def real(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in made:
            empty = torch.empty(tensor.shape, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
            if isinstance(tensor, nn.Parameter):
                empty = nn.Parameter(empty, requires_grad=tensor.requires_grad)
                empty.__dict__.update(tensor.__dict__)
            made[id(tensor)] = empty
        return made[id(tensor)]

    for module in model.modules():
        for slot in (module._parameters, module._buffers):
            for name, tensor in slot.items():
                if tensor is not None:
                    slot[name] = real(tensor)
    return model


def _with_prefix(architecture: Architecture, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A bare backbone's tensors (``h.0...`` rather than ``transformer.h.0...``) under the
    head class's names."""
    prefix = architecture.base_prefix
    if not prefix or any(name.startswith(prefix) for name in tensors):
        return tensors
    outside = {rule.hf for rule in architecture.table if not rule.hf.startswith(prefix)}
    return {name if name in outside else prefix + name: tensor for name, tensor in tensors.items()}


def load_model(directory: str | Path, *, dtype: str | torch.dtype | None = None,
               config_updates: dict[str, Any] | None = None) -> LoadedModel:
    """Read an HF model directory into a seqlab model.

    Args:
        directory: config.json, and model.safetensors or a sharded index with its shards.
        dtype: float32, float16 or bfloat16 to cast to; None keeps the stored dtype.
        config_updates: config.json values to add or replace (what the tokenizer knows, such
            as BERT's ``mask_token_id``).
    Raises:
        CheckpointError: a missing or unreadable file, weights that do not match the config.
        ConfigError: an architecture or an option seqlab does not implement.
    """
    where = repr(str(directory))
    hf_config = files.read_config(directory)
    architecture = architecture_of(hf_config, where)
    dtype = resolve_dtype(dtype)
    hf_config = {**hf_config, **(config_updates or {})}
    try:
        tensors = _with_prefix(architecture, files.read_weights(directory))
    except CheckpointError:
        build_model(architecture, hf_config)        # a config seqlab cannot read says so first
        raise
    model = build_model(architecture, hf_config, frozenset(tensors), device="meta")
    state = mapping.to_seqlab(architecture.table, tensors, model, architecture.n_layers(model.config),
                              architecture.ignored, where=f"the checkpoint in {where}")
    materialise(model, dtype or files.stored_dtype(tensors))
    mapping.load_into(model, state)             # every tensor: to_seqlab checked that nothing is left out
    generation = files.read_generation_config(directory)
    special = {key: generation.get(key, hf_config.get(key)) for key in SPECIAL_TOKENS}
    return LoadedModel(model.eval(), architecture, hf_config,
                       {key: value for key, value in special.items() if value is not None})


def export_architecture(model: nn.Module) -> tuple[Architecture, dict[str, Any]]:
    """The HF architecture that expresses ``model``, and its config.json values.

    Raises:
        ConfigError: no architecture does (naming why each candidate does not fit).
    """
    name = getattr(model, "registry_name", type(model).__name__)
    reasons = []
    for architecture in ARCHITECTURES.values():
        if name not in (architecture.exports_from or (architecture.model,)):
            continue
        try:
            return architecture, architecture.config_to_hf(model.config)
        except ConfigError as error:
            reasons.append(f"not {architecture.model_type}: {error}")
    if not reasons:
        supported = sorted({n for a in ARCHITECTURES.values() for n in (a.exports_from or (a.model,))})
        raise ConfigError(f"a {name} model has no Hugging Face form; seqlab exports {', '.join(supported)}")
    raise ConfigError(f"this {name} model has no Hugging Face form ({'; '.join(reasons)})")


def save_model(model: nn.Module, directory: str | Path, *, dtype: str | torch.dtype | None = None,
               special_tokens: dict[str, Any] | None = None, extra_files: dict[str, str] | None = None,
               max_shard_bytes: int | None = None) -> Path:
    """Write ``model`` as an HF model directory (new, or empty).

    Args:
        dtype: cast the weights to it; None keeps the model's.
        special_tokens: bos/eos/pad/decoder-start ids, written to config.json and
            generation_config.json.
        extra_files: more files by name, as text (tokenizer.json).
        max_shard_bytes: shard the weights (with an index) at this size; None: one file.
    Raises:
        ConfigError: the model has no HF form, or the directory is not empty.
    """
    architecture, values = export_architecture(model)
    tensors = mapping.to_hf(architecture.table, model, architecture.n_layers(model.config))
    dtype = resolve_dtype(dtype)
    if dtype is not None:
        tensors = {name: t.to(dtype) if t.is_floating_point() else t for name, t in tensors.items()}
    stored = files.stored_dtype(tensors)
    special = {key: value for key, value in (special_tokens or {}).items() if value is not None}
    unset = dict.fromkeys(SPECIAL_TOKENS[:3])          # None rather than transformers' defaults (GPT-2's 50256)
    config = {**unset, **values, **special, "model_type": architecture.model_type,
              "architectures": [architecture.hf_class],
              "dtype": str(stored).removeprefix("torch.")}
    generation = {key: config[key] for key in SPECIAL_TOKENS if config.get(key) is not None} or None
    return files.write_directory(directory, config, tensors, generation=generation, extra_files=extra_files,
                                 max_shard_bytes=max_shard_bytes)

