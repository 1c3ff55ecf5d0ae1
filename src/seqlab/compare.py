"""Train several models on one task under one time budget, and report what each achieved.

Every model gets the same split, tokenizer, context and training time. Each runs in a fresh
process, so its peak memory is its own: on CPU the growth of the process's peak resident set
over its size before the model was built, on CUDA the peak of allocated device memory. Per
model the report gives parameters, test bits per character and perplexity, training and
generation tokens per second, peak memory and a sample; ``curves.png`` plots validation loss
against training time.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from seqlab import registry
from seqlab.data.corpora import load_corpus
from seqlab.contracts import device_of
from seqlab.errors import ConfigError, DataError
from seqlab.report import RenderedReport
from seqlab.tasks.lm import LanguageModeling
from seqlab.training import TrainConfig, Trainer, TrainResult, fit

SAMPLE_CHARACTERS = 200
SAMPLE_PROMPT = "The "


@dataclass(frozen=True, kw_only=True)
class TaskOptions:
    """The shared task: corpus path (None: built-in), tokenizer kind, context and vocabulary."""

    data: str | None = None
    tokenizer: str = "char"
    context: int = 128
    vocab_size: int | None = None

    def build(self) -> LanguageModeling:
        return LanguageModeling(load_corpus(self.data), self.tokenizer, self.context,
                                vocab_size=self.vocab_size)


@dataclass
class ModelResult:
    """One row of the report."""

    name: str
    parameters: int
    test: dict[str, float]
    train_tokens_per_second: float
    generate_tokens_per_second: float
    peak_memory_mb: float
    steps: int
    train_seconds: float
    sample: str
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Report(RenderedReport):
    """The comparison: the task it ran and one result per model (rendered by ``seqlab.report``)."""

    task: dict[str, Any]
    budget_seconds: float
    results: list[ModelResult]

    title = "seqlab compare"
    columns = ("model", "params", "test bpc", "test ppl", "train tok/s", "gen tok/s", "peak MB", "steps")
    curve_label = "validation loss (nats/token)"

    def rows(self) -> list[tuple[str, ...]]:
        """One tuple of formatted cells per model, best test bits per character first."""
        ordered = sorted(self.results, key=lambda result: result.test["bpc"])
        return [
            (r.name, f"{r.parameters:,}", f"{r.test['bpc']:.3f}", f"{r.test['perplexity']:.2f}",
             f"{r.train_tokens_per_second:,.0f}", f"{r.generate_tokens_per_second:,.0f}",
             f"{r.peak_memory_mb:,.0f}", f"{r.steps:,}")
            for r in ordered
        ]

    def task_line(self) -> str:
        task = self.task
        tokens = ", ".join(f"{split} {count:,}" for split, count in task["tokens"].items())
        return (f"corpus `{task['corpus']}`, tokenizer `{task['tokenizer']}` (vocabulary "
                f"{task['vocab_size']}), context {task['context']}, tokens: {tokens}; "
                f"{self.budget_seconds:.0f} s of training per model")

    def sections(self) -> dict[str, list[tuple[str, str]]]:
        return {"Samples": [(result.name, result.sample) for result in self.results]}


def default_models() -> list[str]:
    """Every registered language model that a bare ``seqlab compare`` includes."""
    return [entry.name for entry in registry.entries("lm") if entry.in_default_compare]


def compare(
    models: list[str] | None = None,
    task: TaskOptions | None = None,
    budget_seconds: float = 90.0,
    train_options: dict[str, Any] | None = None,
    model_options: dict[str, dict[str, Any]] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> Report:
    """Train each model on ``task`` for an equal share of ``budget_seconds``, and report.

    Args:
        models: registry names; None takes ``default_models()``.
        task: the shared task; None is the built-in corpus at character level.
        budget_seconds: total training time, shared equally among the models that train
            (those fitted in closed form take none).
        train_options: ``TrainConfig`` values for every model (the budget is set here).
        model_options: config overrides per model name.
        out_dir: where to write the report; None writes nothing.
    """
    models = default_models() if models is None else models
    if not models:
        raise ConfigError("no models to compare; name at least one with --models")
    for name in models:
        registry.get(name, "lm")     # ConfigError naming the language models when unknown
    if not budget_seconds > 0:
        raise ConfigError(f"budget must be > 0 seconds, got {budget_seconds}")
    task = task or TaskOptions()
    lm_task = task.build()   # fail here, once, on bad data, before starting any process
    model_options = model_options or {}
    # Models fitted in closed form (n-gram, Markov, HMM) take no share of the training budget.
    trained = [name for name in models if not callable(getattr(registry.get(name, "lm").model_class, "fit", None))]
    per_model = budget_seconds / max(1, len(trained))
    results = [run_in_fresh_process(run_one, name, task, per_model, train_options or {},
                                    model_options.get(name, {}), progress)
               for name in models]
    report = Report(
        task={"corpus": lm_task.corpus.name, "tokenizer": task.tokenizer, "context": task.context,
              "vocab_size": lm_task.vocab_size,
              "tokens": {split: len(block.ids) for split, block in lm_task.splits.items()}},
        budget_seconds=per_model,
        results=results,
    )
    if out_dir is not None:
        report.write(out_dir)
    return report


def run_one(
    name: str, task_options: TaskOptions, budget_seconds: float, train_options: dict[str, Any],
    overrides: dict[str, Any], progress: bool,
) -> ModelResult:
    """Train, evaluate and sample one model; runs in its own process (see ``compare``)."""
    task = task_options.build()
    memory = PeakMemory(train_options)      # from before the model is built: its weights count
    model = registry.build_for_task(name, task.model_defaults(), overrides, task="lm")
    result = train_within_budget(model, task, budget_seconds, train_options, progress)
    test = task.evaluate(model, "test", batch_size=32)
    sample, generate_rate = _sample(model, task)
    return ModelResult(
        name=name, parameters=registry.parameter_count(model), test=test,
        train_tokens_per_second=result.tokens_per_second, generate_tokens_per_second=generate_rate,
        peak_memory_mb=memory.peak_mb(), steps=result.steps, train_seconds=result.train_seconds,
        sample=sample, history=result.history,
    )


def run_in_fresh_process(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a new (spawned) process, so its peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def train_within_budget(model: torch.nn.Module, task: Any, budget_seconds: float,
                        train_options: dict[str, Any], progress: bool) -> TrainResult:
    """Fit ``model`` in closed form if it has its own ``fit``, else train it with the Trainer
    for ``budget_seconds``, evaluating about 15 times whatever the step rate (so every
    learning curve has the same detail)."""
    if callable(getattr(model, "fit", None)):
        return fit(model, task)
    options = {"steps": 1_000_000, "warmup_steps": 20, "eval_every": 1_000_000,
               "eval_every_seconds": budget_seconds / 15, "eval_batches": 10, "progress": progress,
               **getattr(model, "train_defaults", {}), **train_options, "budget_seconds": budget_seconds}
    return Trainer(model, task, registry.make_config(TrainConfig, options)).fit()


class PeakMemory:
    """Peak memory of this process from now on: on CUDA the peak of allocated device memory,
    on CPU the growth of the peak resident set over the resident size now."""

    def __init__(self, train_options: dict[str, Any]):
        self.on_cuda = torch.cuda.is_available() and train_options.get("device", "auto") != "cpu"
        if self.on_cuda:
            torch.cuda.reset_peak_memory_stats()
        self.baseline_mb = _resident_mb()

    def peak_mb(self) -> float:
        if self.on_cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        return _peak_resident_mb() - self.baseline_mb


def _sample(model: torch.nn.Module, task: LanguageModeling) -> tuple[str, float]:
    """A continuation of ``SAMPLE_PROMPT`` (or, if the vocabulary lacks it, of the test split's
    first tokens), and the generation speed in tokens/s."""
    tokenizer = task.tokenizer
    try:
        prompt_ids = tokenizer.encode(SAMPLE_PROMPT, unknown="error")
    except DataError:
        prompt_ids = task.splits["test"].ids[: min(16, task.context // 2)].tolist()
    prompt = torch.tensor([prompt_ids], device=device_of(model))
    started = time.perf_counter()
    generated = model.generate(prompt, SAMPLE_CHARACTERS, temperature=0.8, seed=0)
    seconds = time.perf_counter() - started
    text = tokenizer.decode(prompt_ids) + tokenizer.decode(generated[0, prompt.shape[1]:].tolist())
    return text[:SAMPLE_CHARACTERS], SAMPLE_CHARACTERS / seconds


def _resident_mb() -> float:
    """Current resident set size of this process (its peak so far where /proc is absent)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except OSError:
        return _peak_resident_mb()
    return pages * resource.getpagesize() / 2**20


def _peak_resident_mb() -> float:
    """Peak resident set size of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
