"""Hugging Face model directories <-> seqlab runs (``seqlab import-hf``, ``seqlab export-hf``).

An imported run is a run directory of one checkpoint, like any trained one: its model, the
directory's tokenizer (``tokenizer.json``, read through HF ``tokenizers``) as the task's
artifact, and a task spec carrying the special tokens (BOS, EOS, and whether the tokenizer
puts BOS before a text) and the embedding size. So ``seqlab eval``, ``generate``, ``compare``
(``--init-from MODEL=RUN``) and ``train --init-from RUN`` read it as they read any run.
Causal language models import as runs of the ``lm`` task and BERT as one of ``mlm``. T5
imports as a run of ``seq2seq`` with its own id scheme (``seqlab.tasks.seq2seq.IdScheme``, in
the spec's ``vocabulary``): its one tokenizer serves both sides, ids unshifted, PAD and the
decoder's start from the checkpoint (0), EOS (1) after every target and, when the tokenizer's
post-processor appends it (T5's does), after every source; the task's most output tokens are
``context``. Such a run has no data of its own: ``seqlab eval RUN --data pairs.tsv``.

Export writes a run's best checkpoint as an HF directory, with its tokenizer in HF's format
(BPE and Unigram; a char or word tokenizer has no HF form and is refused, unless the weights
alone are asked for) and its special tokens in config.json and generation_config.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tokenizers as hf_tokenizers
import torch

from seqlab.checkpoint import load_checkpoint, save_checkpoint
from seqlab.errors import CheckpointError, ConfigError
from seqlab.interop.hf.convert import (
    ARCHITECTURES, architecture_of, export_architecture, load_model, save_model,
)
from seqlab.interop.hf.files import TOKENIZER_FILE, read_config
from seqlab.interop.hf.tokenizer import read_tokenizer, tokenizer_json
from seqlab.tasks.base import get_task

RUN_TASKS = ("lm", "mlm", "seq2seq")
MASK = "[MASK]"
DEFAULT_CONTEXT = 256
EXPORTED_SPECIALS = {"bos_id": "bos_token_id", "eos_id": "eos_token_id", "pad_id": "pad_token_id"}
T5_SPECIALS = {"pad_token_id": 0, "eos_token_id": 1}       # when a T5 checkpoint does not say


def _adds_bos(tokenizer: Any, bos_id: int | None) -> bool:
    """Whether the tokenizer's own post-processor puts BOS before a text (Llama's does)."""
    backend = getattr(tokenizer, "backend", None)
    if bos_id is None or backend is None:
        return False
    with_special = backend.encode("a", add_special_tokens=True).ids
    plain = backend.encode("a", add_special_tokens=False).ids
    return bool(with_special) and with_special[0] == bos_id and with_special[1:] == plain


def _appends_eos(tokenizer: Any, eos_id: int) -> bool:
    """Whether the tokenizer's own post-processor puts EOS after a text (T5's does)."""
    backend = getattr(tokenizer, "backend", None)
    if backend is None:
        return False
    with_special = backend.encode("a", add_special_tokens=True).ids
    plain = backend.encode("a", add_special_tokens=False).ids
    return with_special == [*plain, eos_id]


def import_run(directory: str | Path, out: str | Path, *, dtype: str | torch.dtype | None = None,
               context: int | None = None, overwrite: bool = False) -> Path:
    """Import an HF model directory as a seqlab run at ``out``; returns the checkpoint directory.

    Args:
        dtype: cast the weights (float32, float16, bfloat16); None keeps the stored dtype.
        context: the task's window in tokens (evaluation, fine-tuning), for T5 the most tokens
            a decoding writes; None: 256, or the model's position table if shorter.
        overwrite: replace a run seqlab wrote at ``out``.
    Raises:
        CheckpointError, ConfigError: as ``load_model``; no tokenizer.json.
    """
    architecture = architecture_of(read_config(directory), repr(str(directory)))
    if architecture.task not in RUN_TASKS:
        runs = ", ".join(arch.model_type for arch in ARCHITECTURES.values() if arch.task in RUN_TASKS)
        raise ConfigError(f"a {architecture.model_type} checkpoint is read as a model, not as a run: seqlab's "
                          f"{architecture.task} task has no run for it; use seqlab.interop.hf.load_model "
                          f"(runs are made of: {runs})")
    if not (Path(directory) / TOKENIZER_FILE).is_file():
        raise CheckpointError(f"{str(Path(directory))!r} has no {TOKENIZER_FILE}, which a run needs: save it with "
                              "transformers' tokenizer.save_pretrained, or read the weights alone with "
                              "seqlab.interop.hf.load_model")
    tokenizer = read_tokenizer(directory)
    if architecture.task == "seq2seq":
        return _import_seq2seq(directory, out, tokenizer, dtype=dtype, context=context, overwrite=overwrite)
    backend = getattr(tokenizer, "backend", None)
    mask = backend.token_to_id(MASK) if architecture.task == "mlm" and backend is not None else None
    loaded = load_model(directory, dtype=dtype, config_updates=None if mask is None else {"mask_token_id": mask})
    model, special = loaded.model, loaded.special_tokens
    limit = getattr(model.config, "max_len", None)
    context = context or min(DEFAULT_CONTEXT, limit or DEFAULT_CONTEXT)
    bos = special.get("bos_token_id")
    spec = {"task": architecture.task, "data": None, "context": context, "sentences": False, "valid_data": None,
            "tokenizer": tokenizer.kind, "model_vocab_size": model.config.vocab_size,
            "special_tokens": {"bos_id": bos, "eos_id": special.get("eos_token_id"),
                               "pad_id": special.get("pad_token_id"), "add_bos": _adds_bos(tokenizer, bos)}}
    task = get_task(architecture.task).from_spec(spec, {"tokenizer": tokenizer}, with_data=False)
    task.check_model(model)
    return save_checkpoint(out, model, task, overwrite=overwrite)


def _import_seq2seq(directory: str | Path, out: str | Path, tokenizer: Any, *, dtype: str | torch.dtype | None,
                    context: int | None, overwrite: bool) -> Path:
    """A T5 directory as a ``seq2seq`` run over its one tokenizer, with T5's id scheme."""
    loaded = load_model(directory, dtype=dtype)
    model, special = loaded.model, {**T5_SPECIALS, **loaded.special_tokens}
    eos, pad = special["eos_token_id"], special["pad_token_id"]
    if not isinstance(eos, int):
        raise ConfigError(f"{str(directory)!r} sets eos_token_id={eos!r}; a seq2seq run ends its targets at one id")
    limit = getattr(model.config, "max_len", None)
    vocabulary = {"pad_id": pad, "bos_id": special.get("decoder_start_token_id", pad), "eos_id": eos,
                  "source_shift": 0, "target_shift": 0,
                  "source_eos_id": eos if _appends_eos(tokenizer, eos) else None,
                  "src_vocab_size": model.config.src_vocab_size, "tgt_vocab_size": model.config.tgt_vocab_size}
    spec = {"task": "seq2seq", "data": None, "vocabulary": vocabulary,
            "max_output_length": context or min(DEFAULT_CONTEXT, limit or DEFAULT_CONTEXT)}
    task = get_task("seq2seq").from_spec(spec, {"source_tokenizer": tokenizer, "target_tokenizer": tokenizer},
                                         with_data=False)
    task.check_model(model)
    return save_checkpoint(out, model, task, overwrite=overwrite)


def export_run(run: str | Path, out: str | Path, *, dtype: str | torch.dtype | None = None,
               max_shard_bytes: int | None = None, with_tokenizer: bool = True) -> Path:
    """Write the best checkpoint of ``run`` as an HF model directory at ``out`` (new or empty).

    Args:
        dtype: cast the weights; None keeps the run's.
        max_shard_bytes: shard the weights at this size, with an index; None: one file.
        with_tokenizer: write the run's tokenizer as tokenizer.json (refused for char and word
            tokenizers, which have no HF form, and for a seq2seq run with a tokenizer per side);
            False writes the weights and config alone.
    Raises:
        CheckpointError: the run is unusable. ConfigError: the model or tokenizer has no HF form.
    """
    loaded = load_checkpoint(run)
    if loaded.task_name == "seq2seq":
        special, extra = _seq2seq_export(loaded, with_tokenizer)
        return save_model(loaded.model, out, dtype=dtype, special_tokens=special, extra_files=extra,
                          max_shard_bytes=max_shard_bytes)
    tokenizer = loaded.artifacts.get("tokenizer")
    ours = loaded.info["task"].get("special_tokens") or {}
    special = {theirs: ours.get(name) for name, theirs in EXPORTED_SPECIALS.items()}
    extra = {}
    if with_tokenizer and tokenizer is not None:
        extra = hf_tokenizer_files(tokenizer, special, getattr(loaded.model, "mask_id", None))
    return save_model(loaded.model, out, dtype=dtype, special_tokens=special, extra_files=extra,
                      max_shard_bytes=max_shard_bytes)


def _seq2seq_export(loaded: Any, with_tokenizer: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """A seq2seq run's special ids as HF names (the decoder starts from BOS) and, when asked,
    its tokenizer files: only a run whose two sides share one tokenizer with unshifted ids
    (an imported T5) has them.

    Raises:
        ConfigError: a tokenizer was asked for a run with a tokenizer per side or shifted ids.
    """
    export_architecture(loaded.model)                # a model with no HF form says so before the tokenizer
    task = loaded.task(with_data=False)
    ids = task.ids
    special = {"pad_token_id": ids.pad_id, "eos_token_id": ids.eos_id, "decoder_start_token_id": ids.bos_id}
    if not with_tokenizer:
        return special, {}
    source, target = task.source_tokenizer, task.target_tokenizer
    if ids.source_shift or ids.target_shift or source.to_json() != target.to_json():
        raise ConfigError(f"this seq2seq run reads its sides with two tokenizers (model ids shifted: source "
                          f"+{ids.source_shift}, target +{ids.target_shift}), which one Hugging Face tokenizer "
                          "cannot express; export it with --without-tokenizer")
    return special, hf_tokenizer_files(target, special, None)


def hf_tokenizer_files(tokenizer: Any, special: dict[str, Any], mask_id: int | None) -> dict[str, str]:
    """tokenizer.json and the tokenizer_config.json that lets ``AutoTokenizer`` read it, naming
    the special tokens. A BERT trained here has ``[MASK]`` as one id past the tokenizer's
    (``seqlab.tasks.mlm``); the export adds it to the vocabulary at that id."""
    backend = hf_tokenizers.Tokenizer.from_str(tokenizer_json(tokenizer))
    if mask_id is not None and backend.token_to_id(MASK) is None:
        backend.add_special_tokens([MASK])
        if backend.token_to_id(MASK) != mask_id:
            raise ConfigError(f"cannot give [MASK] the model's id {mask_id} in the tokenizer; export without it")
    names = {"bos_token_id": "bos_token", "eos_token_id": "eos_token", "pad_token_id": "pad_token"}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    for key, name in names.items():
        if isinstance(special.get(key), int):
            config[name] = backend.id_to_token(special[key])
    if backend.token_to_id(MASK) is not None:
        config["mask_token"] = MASK
    unknown = getattr(tokenizer, "unk_token", None)
    if unknown is not None and backend.token_to_id(unknown) is not None:
        config["unk_token"] = unknown
    return {"tokenizer.json": backend.to_str(), "tokenizer_config.json": json.dumps(config, indent=2) + "\n"}
