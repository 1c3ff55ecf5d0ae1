"""The Trainer: one loop for every neural model and task.

Each optimizer step draws one global batch of ``batch_size`` sequences, splits it across the
DDP processes and then into ``grad_accum`` micro-batches, and averages their gradients; so the
step taken does not depend on how many processes or micro-batches computed it. Then:

- the global gradient norm is measured and, with ``grad_clip``, clipped to it (Pascanu et al.
  2013); the pre-clip norm is logged at every step;
- AdamW (Loshchilov and Hutter 2019) steps with the learning rate of a linear warm-up followed
  by a cosine decay to ``min_lr_ratio * lr`` (Loshchilov and Hutter 2017);
- every ``eval_every`` steps the validation loss is measured, the checkpoint is written
  atomically, and training stops early after ``patience`` evaluations without improvement.

A NaN or infinite loss or gradient stops training with ``TrainingError``; the last checkpoint,
written before the bad step, is left as it was. With ``budget_seconds`` training stops when
the training time runs out, and the schedule anneals by whichever of steps or time is closer
to its end, so a time-limited run still decays its learning rate. Resuming restores the
weights, the optimizer, the step and every random number generator, so 10 + resume + 10 steps
give the same weights as 20.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from seqlab import checkpoint, distributed
from seqlab.errors import CheckpointError, ConfigError, TrainingError


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train.

    Attributes:
        steps: optimizer steps (the schedule's length).
        batch_size: sequences per optimizer step, over all processes and micro-batches.
        lr: peak learning rate.
        min_lr_ratio: the cosine decay ends at ``lr * min_lr_ratio``.
        warmup_steps: steps of linear warm-up from ``lr / warmup_steps`` to ``lr``.
        weight_decay: AdamW decoupled weight decay, applied to matrices only (not to biases
            and normalisation gains).
        betas: AdamW moment decay rates.
        grad_clip: clip the global gradient norm to this value; None measures without clipping.
        grad_clip_value: also clamp every gradient element to [-value, value] (after the norm
            is measured; Mikolov 2012); None leaves elements alone.
        tbptt: truncated backpropagation through time (Williams and Peng 1990): the batch is
            ``batch_size`` contiguous streams read window after window, and the model's state
            is carried from one window to the next, detached, so gradients stop at the window
            edge while the state remembers beyond it. Needs a model with ``forward_from``
            (every CausalLM) and a task with ``stream_batch``; one process only.
        precision: "bf16" runs forward and loss under bfloat16 autocast; weights stay fp32.
        grad_accum: micro-batches per step; must divide the per-process batch.
        eval_every: steps between validation evaluations (and checkpoints).
        eval_batches: validation batches per evaluation; None reads the whole split.
        eval_every_seconds: also evaluate whenever this much training time has passed since
            the last evaluation (for time-budgeted runs, whose step rate is not known ahead).
        patience: stop after this many evaluations without a better validation loss.
        target_loss: stop as soon as the validation loss is at or below this value.
        budget_seconds: stop when this much training time has passed.
        seed: seeds the batch sampler and the model's random layers (dropout).
        device: "auto" (CUDA when present), "cpu" or "cuda[:i]".
        progress: show a progress bar.
    """

    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float | None = 1.0
    grad_clip_value: float | None = None
    precision: Literal["fp32", "bf16"] = "fp32"
    grad_accum: int = 1
    tbptt: bool = False
    eval_every: int = 200
    eval_batches: int | None = 20
    eval_every_seconds: float | None = None
    patience: int | None = None
    target_loss: float | None = None
    budget_seconds: float | None = None
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "grad_accum", "eval_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")
        if self.budget_seconds is not None and not self.budget_seconds > 0:
            raise ConfigError(f"budget must be > 0 seconds, got {self.budget_seconds}")
        for name in ("grad_clip", "grad_clip_value", "patience", "eval_batches", "eval_every_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0 or None, got {value}")


@dataclass
class TrainResult:
    """What a training run did: its history, throughput and why it stopped."""

    history: list[dict[str, float]] = field(default_factory=list)   # one row per evaluation
    steps: int = 0
    train_seconds: float = 0.0
    tokens_seen: int = 0
    clipped_steps: int = 0
    stopped_by: str = "steps"         # "steps", "budget", "patience", "target" or "stop_at"
    best_valid_loss: float = math.inf

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / self.train_seconds if self.train_seconds > 0 else 0.0


def learning_rate(config: TrainConfig, step: int, progress: float | None = None) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio``.

    ``progress`` in [0, 1], when given, is how far the decay has gone (for time budgets);
    otherwise it is ``(step - warmup) / (steps - warmup)``.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if progress is None:
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.lr * (config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine)


class Trainer:
    """Trains ``model`` on ``task`` and, with ``out_dir``, keeps an atomic checkpoint there.

    The task supplies ``train_batch(batch_size, generator)``, ``loss(model, batch)``,
    ``evaluate(model, split, ...)`` and ``spec()``, and holds the ``tokenizer``.
    """

    def __init__(self, model: nn.Module, task: Any, config: TrainConfig, out_dir: str | Path | None = None):
        self.config = config
        self.task = task
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.group = distributed.join(config.device)
        self.model = model.to(self.group.device)
        per_process, remainder = divmod(config.batch_size, self.group.world_size * config.grad_accum)
        if remainder or per_process == 0:
            raise ConfigError(
                f"batch_size {config.batch_size} must be a multiple of processes x grad_accum "
                f"({self.group.world_size} x {config.grad_accum})"
            )
        self.micro_batch_size = per_process
        decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=config.betas,
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed + self.group.rank)
        self.result = TrainResult()
        self.step = 0
        self._evals_without_improvement = 0
        self._last: dict[str, float] = {}
        self._carried: list[Any] = [None] * config.grad_accum     # truncated-BPTT states
        if config.tbptt and self.group.world_size > 1:
            raise ConfigError("tbptt runs in one process; launch without torchrun or drop --tbptt")

    def fit(self, *, resume: bool = False, stop_at: int | None = None) -> TrainResult:
        """Train to ``config.steps`` (or ``stop_at``, checkpointing there), and return the result."""
        if resume:
            self._restore()
        trained = self.model
        if self.group.world_size > 1:
            trained = DistributedDataParallel(self.model)
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        end = min(self.config.steps, stop_at) if stop_at is not None else self.config.steps
        budget = self.config.budget_seconds
        by_time = budget is not None and end - self.step > 10 * budget   # more steps than can fit
        bar = self._progress_bar(end, by_time)
        self.model.train()
        try:
            while self.step < end:
                if self._budget_spent():
                    self.result.stopped_by = "budget"
                    break
                started = time.perf_counter()
                lr = learning_rate(self.config, self.step, self._time_progress())
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss, n_tokens = self._accumulate_gradients(trained)
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    parameters, self.config.grad_clip if self.config.grad_clip else math.inf
                )
                if self.config.grad_clip_value is not None:
                    torch.nn.utils.clip_grad_value_(parameters, self.config.grad_clip_value)
                loss_value, norm_value = loss.item(), grad_norm.item()
                if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
                    raise TrainingError(
                        f"loss became {loss_value} (gradient norm {norm_value}) at step {self.step + 1}; "
                        "lower the learning rate or use --grad-clip; the last good checkpoint is kept"
                    )
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.result.clipped_steps += bool(self.config.grad_clip and norm_value > self.config.grad_clip)
                self.result.tokens_seen += n_tokens
                step_seconds = time.perf_counter() - started
                self.result.train_seconds += step_seconds
                self._last = {"train_loss": loss_value, "grad_norm": norm_value, "lr": lr}
                if by_time:   # advance by this step's seconds, stopping at the budget
                    bar.update(min(self.result.train_seconds, budget)
                               - min(self.result.train_seconds - step_seconds, budget))
                else:
                    bar.update(1)
                if self.step % 10 == 0 or self.step == end:
                    bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{self.result.tokens_per_second:,.0f}",
                                    refresh=False)
                if self._evaluation_due(end):
                    stop = self._evaluate_and_checkpoint()
                    if stop:
                        self.result.stopped_by = stop
                        break
            else:
                self.result.stopped_by = "stop_at" if end < self.config.steps else "steps"
            if self.result.stopped_by == "budget" and self._needs_final_evaluation():
                self._evaluate_and_checkpoint()
        finally:
            bar.close()
            self.group.close()
        self.result.steps = self.step
        return self.result

    def _progress_bar(self, end: int, by_time: bool) -> tqdm:
        """Counts steps, or training seconds when a time budget will end the run first."""
        budget = self.config.budget_seconds
        return tqdm(
            total=budget if by_time else end,
            initial=min(self.result.train_seconds, budget) if by_time else self.step,
            unit="s" if by_time else "step",
            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}{postfix}]" if by_time else None,
            desc=getattr(self.model, "registry_name", "train"),
            disable=not (self.config.progress and self.group.is_main),
            mininterval=0.5, dynamic_ncols=True,
        )

    def _accumulate_gradients(self, trained: nn.Module) -> tuple[Tensor, int]:
        """Forward and backward over this process's micro-batches; the mean loss and token count."""
        if self.config.tbptt:
            global_batch = self.task.stream_batch(self.config.batch_size, self.step)
            if self.step % self.task.stream_windows(self.config.batch_size) == 0:
                self._carried = [None] * self.config.grad_accum       # the streams start again
        else:
            global_batch = self.task.train_batch(self.config.batch_size, self.generator)
        rank_rows = slice(self.group.rank * self.config.batch_size // self.group.world_size,
                          (self.group.rank + 1) * self.config.batch_size // self.group.world_size)
        local = [part[rank_rows] for part in global_batch]
        total = torch.zeros((), device=self.group.device)
        for index in range(self.config.grad_accum):
            rows = slice(index * self.micro_batch_size, (index + 1) * self.micro_batch_size)
            micro = [part[rows].to(self.group.device, non_blocking=True) for part in local]
            last = index == self.config.grad_accum - 1
            sync = contextlib.nullcontext() if last or not isinstance(trained, DistributedDataParallel) \
                else trained.no_sync()
            with sync, self._autocast():
                if self.config.tbptt:
                    loss, state = self.task.stream_loss(trained, micro, self._carried[index])
                    self._carried[index] = _detach(state)
                else:
                    loss = self.task.loss(trained, micro)
                loss = loss / self.config.grad_accum
            loss.backward()
            total += loss.detach()
        count = getattr(self.task, "batch_tokens", None)     # tasks with padding count real tokens
        return total, count(global_batch) if count else global_batch[-1].numel()

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.group.device.type, dtype=torch.bfloat16,
                              enabled=self.config.precision == "bf16")

    def _evaluate_and_checkpoint(self) -> str | None:
        """Evaluate on the validation split, log, checkpoint; why to stop, if training should."""
        metrics = self.task.evaluate(self.model, "valid", batch_size=self.micro_batch_size * self.config.grad_accum,
                                     max_batches=self.config.eval_batches)
        self.model.train()
        row = {"step": self.step, "train_seconds": self.result.train_seconds, **self._last,
               **_validation_row(metrics)}
        self.result.history.append(row)
        if metrics["loss"] < self.result.best_valid_loss:
            self.result.best_valid_loss = metrics["loss"]
            self._evals_without_improvement = 0
        else:
            self._evals_without_improvement += 1
        self._save()
        if self.config.target_loss is not None and metrics["loss"] <= self.config.target_loss:
            return "target"
        if self.config.patience is not None and self._evals_without_improvement >= self.config.patience:
            return "patience"
        return None

    def _evaluation_due(self, end: int) -> bool:
        if self.step % self.config.eval_every == 0 or self.step == end:
            return True
        interval = self.config.eval_every_seconds
        last = self.result.history[-1]["train_seconds"] if self.result.history else 0.0
        return interval is not None and self.result.train_seconds - last >= interval

    def _needs_final_evaluation(self) -> bool:
        return not self.result.history or self.result.history[-1]["step"] != self.step

    def _budget_spent(self) -> bool:
        budget = self.config.budget_seconds
        return budget is not None and self.result.train_seconds >= budget

    def _time_progress(self) -> float | None:
        """How far a time budget has gone, as a decay fraction, when it runs ahead of the steps."""
        budget = self.config.budget_seconds
        if budget is None or self.step < self.config.warmup_steps:
            return None
        by_steps = (self.step - self.config.warmup_steps) / max(1, self.config.steps - self.config.warmup_steps)
        return max(by_steps, self.result.train_seconds / budget)

    def _save(self) -> None:
        if self.out_dir is None:
            return
        if self.group.is_main:
            checkpoint.save_checkpoint(
                self.out_dir, self.model, self.task.tokenizer,
                info={"task": self.task.spec(), "train": dataclasses.asdict(self.config),
                      "step": self.step, "history": self.result.history},
                trainer_state=self._trainer_state(),
            )
        self.group.barrier()

    def _trainer_state(self) -> dict[str, Any]:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "train_seconds": self.result.train_seconds,
            "tokens_seen": self.result.tokens_seen,
            "clipped_steps": self.result.clipped_steps,
            "best_valid_loss": self.result.best_valid_loss,
            "evals_without_improvement": self._evals_without_improvement,
            "sampler_rng": self.generator.get_state(),
            "carried_state": self._carried,
            "torch_rng": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def _restore(self) -> None:
        """Load weights, optimizer, counters and RNG states from ``out_dir``."""
        if self.out_dir is None:
            raise ConfigError("resume needs an output directory holding the run")
        checkpoint.check_output_directory(self.out_dir, resume=True, overwrite=False)
        loaded = checkpoint.load_checkpoint(self.out_dir, device="cpu", with_trainer_state=True)
        if loaded.info["model"] != getattr(self.model, "registry_name", None):
            raise CheckpointError(f"{self.out_dir} holds a {loaded.info['model']!r} run, not this model")
        self.model.load_state_dict(loaded.model.state_dict())
        state = loaded.trainer_state
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.result.train_seconds = float(state["train_seconds"])
        self.result.tokens_seen = int(state["tokens_seen"])
        self.result.clipped_steps = int(state["clipped_steps"])
        self.result.best_valid_loss = float(state["best_valid_loss"])
        self.result.history = list(loaded.info.get("history", []))
        self._evals_without_improvement = int(state["evals_without_improvement"])
        self.generator.set_state(state["sampler_rng"])
        self._carried = list(state.get("carried_state", self._carried))
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self._last = self.result.history[-1] if self.result.history else {}


def _validation_row(metrics: dict[str, float]) -> dict[str, float]:
    """A task's validation metrics as history columns: ``loss`` becomes ``valid_loss``."""
    return {f"valid_{name}": value for name, value in metrics.items()}


def _detach(state: Any) -> Any:
    """The state with every tensor cut from the graph (the truncation of truncated BPTT)."""
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(_detach(part) for part in state)
    return state


def fit(model: nn.Module, task: Any, out_dir: str | Path | None = None, **options: Any) -> TrainResult:
    """Train ``model`` on ``task`` however it trains, and say how it went.

    Models with a closed-form or EM fit (n-gram, HMM, ...) define ``fit(task, **options)`` and
    are timed and evaluated here; every other model goes through the one ``Trainer`` with
    ``TrainConfig(**options)``. Either way a checkpoint is written to ``out_dir`` when given.
    """
    own_fit = getattr(model, "fit", None)
    if not callable(own_fit):
        from seqlab.registry import make_config

        return Trainer(model, task, make_config(TrainConfig, options), out_dir).fit()
    started = time.perf_counter()
    own_fit(task, **options)
    seconds = time.perf_counter() - started
    metrics = task.evaluate(model, "valid")
    row = {"step": 0, "train_seconds": seconds, **_validation_row(metrics)}
    if out_dir is not None:
        checkpoint.save_checkpoint(out_dir, model, task.tokenizer,
                                   info={"task": task.spec(), "train": options, "step": 0, "history": [row]})
    return TrainResult(history=[row], train_seconds=seconds, tokens_seen=task.train_tokens,
                       best_valid_loss=metrics["loss"])
