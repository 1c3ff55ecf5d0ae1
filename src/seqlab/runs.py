"""Runs on disk: train into a directory, evaluate it, generate or tag with it.

These are the library functions behind ``seqlab train``, ``eval``, ``generate`` and ``tag``;
the CLI only parses arguments and prints what they return. A run's task (language modelling
or tagging) is recorded in its config.json and rebuilt from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from seqlab import checkpoint, registry
from seqlab.checkpoint import Checkpoint, task_name
from seqlab.compare import TaskOptions
from seqlab.compare_tagging import TaggingOptions
from seqlab.errors import ConfigError, DataError
from seqlab.tasks.lm import LanguageModeling
from seqlab.tasks.tagging import Tagging
from seqlab.training import TrainConfig, Trainer, TrainResult, fit


def train_run(
    model_name: str | None,
    out_dir: str | Path,
    task: TaskOptions | TaggingOptions | None = None,
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
        run_task = task_of(loaded)
        model = loaded.model
        options = {**saved["train"], **given}
    else:
        if model_name is None:
            raise ConfigError("name the model to train, e.g. `seqlab train lstm --out DIR`")
        run_task = (task or TaskOptions()).build()
        torch.manual_seed(given.get("seed", 0))    # the same initial weights on every rank and rerun
        model = registry.build_for_task(model_name, run_task.model_defaults(), model_overrides or {},
                                        task=run_task.name)
        options = {**getattr(model, "train_defaults", {}), **given}
    if callable(getattr(model, "fit", None)):
        ignored = sorted(set(given) - {"progress"})
        if ignored:
            raise ConfigError(f"{model.registry_name} is fitted in closed form; drop --{ignored[0].replace('_', '-')}")
        result = fit(model, run_task, out_dir)
    else:
        config = registry.make_config(TrainConfig, options)
        result = Trainer(model, run_task, config, out_dir).fit(resume=resume)
    return result, (result.history[-1] if result.history else {})


def task_of(loaded: Checkpoint, data: str | None = None, with_data: bool = True) -> LanguageModeling | Tagging:
    """The task a saved run was trained on (over other ``data`` when given)."""
    spec = loaded.info["task"]
    if task_name(loaded.info) == "tag":
        return Tagging.from_spec(spec, loaded.tokenizer, data, with_data=with_data)
    return LanguageModeling.from_spec(spec, loaded.tokenizer, data)


def evaluate_run(directory: str | Path, data: str | None = None, split: str = "test") -> dict[str, Any]:
    """Metrics of a saved run on its data's ``split``; for a language model ``data`` may be a
    whole text file to evaluate on, for a tagger another treebank directory."""
    loaded = checkpoint.load_checkpoint(directory, device=_device())
    if task_name(loaded.info) == "tag":
        task = task_of(loaded, data)
        return {**task.evaluate(loaded.model, split), "confusions": task.confusions(loaded.model, split)}
    task = task_of(loaded)
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
    if task_name(loaded.info) != "lm":
        raise ConfigError(f"{directory} holds a {task_name(loaded.info)!r} run; only language models generate")
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


def tag_with_run(directory: str | Path, sentences: list[list[str]]) -> list[list[str]]:
    """The tags a saved tagger gives each word of each sentence."""
    loaded = checkpoint.load_checkpoint(directory, device=_device())
    if task_name(loaded.info) != "tag":
        raise ConfigError(f"{directory} holds a {task_name(loaded.info)!r} run, not a tagger; "
                          "train one with `seqlab train MODEL --task tag --data DIR`")
    return task_of(loaded, with_data=False).predict(loaded.model, sentences)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
