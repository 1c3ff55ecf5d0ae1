"""Runs on disk: train into a directory, evaluate it, generate from it.

These are the library functions behind ``seqlab train``, ``eval`` and ``generate``; the CLI
only parses arguments and prints what they return.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from seqlab import checkpoint, registry
from seqlab.compare import TaskOptions
from seqlab.errors import ConfigError, DataError
from seqlab.tasks.lm import LanguageModeling
from seqlab.training import TrainConfig, Trainer, TrainResult, fit

TASKS = ("lm",)


def train_run(
    model_name: str | None,
    out_dir: str | Path,
    task: TaskOptions | None = None,
    model_overrides: dict[str, Any] | None = None,
    train_options: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> tuple[TrainResult, dict[str, float]]:
    """Train ``model_name`` into ``out_dir`` and return the result and the last validation row.

    With ``resume`` the model, task and training options come from the run in ``out_dir``;
    ``train_options`` given here override the saved ones (e.g. more ``steps``). Models with a
    closed-form fit take no training options beyond ``progress``.
    """
    checkpoint.check_output_directory(out_dir, resume=resume, overwrite=overwrite)
    given = dict(train_options or {})
    if resume:
        loaded = checkpoint.load_checkpoint(out_dir)
        saved = loaded.info
        if model_name is not None and model_name != saved["model"]:
            raise ConfigError(f"{out_dir} holds a {saved['model']!r} run, not {model_name!r}")
        if model_overrides:
            raise ConfigError("a resumed run keeps its model config; drop --set or start a new run")
        lm_task = LanguageModeling.from_spec(saved["task"], loaded.tokenizer)
        model = loaded.model
        options = {**saved["train"], **given}
    else:
        if model_name is None:
            raise ConfigError("name the model to train, e.g. `seqlab train lstm --out DIR`")
        lm_task = (task or TaskOptions()).build()
        torch.manual_seed(given.get("seed", 0))    # the same initial weights on every rank and rerun
        model = registry.build_for_task(model_name, lm_task.model_defaults(), model_overrides or {}, task="lm")
        options = {**model.train_defaults, **given}
    if callable(getattr(model, "fit", None)):
        ignored = sorted(set(given) - {"progress"})
        if ignored:
            raise ConfigError(f"{model.registry_name} is fitted in closed form; drop --{ignored[0].replace('_', '-')}")
        result = fit(model, lm_task, out_dir)
    else:
        config = registry.make_config(TrainConfig, options)
        result = Trainer(model, lm_task, config, out_dir).fit(resume=resume)
    return result, (result.history[-1] if result.history else {})


def evaluate_run(directory: str | Path, data: str | None = None, split: str = "test") -> dict[str, float]:
    """Metrics of a saved run on its corpus's ``split``, or on the whole text file ``data``."""
    loaded = checkpoint.load_checkpoint(directory, device=_device())
    task = LanguageModeling.from_spec(loaded.info["task"], loaded.tokenizer)
    if data is None:
        return task.evaluate(loaded.model, split)
    from seqlab.data.corpora import read_text

    return task.evaluate_text(loaded.model, read_text(data))


def generate_from_run(
    directory: str | Path, prompt: str, max_new_tokens: int = 200, *, temperature: float = 1.0,
    top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
) -> str:
    """The text a saved model writes after ``prompt`` (prompt not included)."""
    loaded = checkpoint.load_checkpoint(directory, device=_device())
    if not prompt:
        raise DataError("the prompt is empty; give at least one character with --prompt")
    try:
        ids = loaded.tokenizer.encode(prompt, unknown="error")
    except DataError as error:
        raise DataError(f"prompt rejected: {error}") from None
    tokens = torch.tensor([ids], device=_device())
    generated = loaded.model.generate(tokens, max_new_tokens, temperature=temperature, top_k=top_k,
                                      top_p=top_p, seed=seed)
    return loaded.tokenizer.decode(generated[0, len(ids):].tolist())


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
