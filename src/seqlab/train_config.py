"""How to train (``TrainConfig``), what a run did (``TrainResult``) and the learning-rate
schedule, apart from the Trainer so that the command line can read them cheaply."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

from seqlab.errors import ConfigError

DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train.

    Attributes:
        steps: optimizer steps: the length of the learning-rate schedule, part of the run.
        batch_size: sequences per optimizer step, over all processes and micro-batches.
        lr: peak learning rate.
        min_lr_ratio: the cosine decay ends at lr * min_lr_ratio.
        warmup_steps: steps of linear warm-up from lr / warmup_steps to lr.
        weight_decay: AdamW decoupled weight decay, on matrices only (not biases and gains).
        betas: AdamW moment decay rates.
        grad_clip: clip the global gradient norm to this value (none: measure, do not clip).
        grad_clip_value: also clamp every gradient element to [-value, value] (Mikolov 2012).
        tbptt: truncated backpropagation through time (Williams and Peng 1990): the batch is
            batch_size contiguous streams read window after window, the model's state carried
            over, detached; needs a task with streams (lm) and one process.
        precision: fp32, or bf16 autocast for forward and loss (weights stay fp32).
        grad_accum: micro-batches per step; must divide the per-process batch.
        eval_every: steps between validation evaluations (and checkpoints).
        eval_batches: validation batches per evaluation (none: the whole split).
        eval_every_seconds: also evaluate whenever this much time has passed since the last.
        patience: stop after this many evaluations without a better validation loss.
        target_loss: stop as soon as the validation loss is at or below this value.
        budget_seconds: wall-time limit of the run, evaluations and checkpoints included.
        log_every: steps between rows of the training log (metrics.jsonl).
        seed: seeds the batch sampler and the model's random layers (dropout).
        device: auto (CUDA when present), cpu, cuda or cuda:N.
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
    tbptt: bool = False
    precision: Literal["fp32", "bf16"] = "fp32"
    grad_accum: int = 1
    eval_every: int = 200
    eval_batches: int | None = 20
    eval_every_seconds: float | None = None
    patience: int | None = None
    target_loss: float | None = None
    budget_seconds: float | None = None
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        floats = {"lr": self.lr, "min_lr_ratio": self.min_lr_ratio, "weight_decay": self.weight_decay,
                  "grad_clip": self.grad_clip, "grad_clip_value": self.grad_clip_value,
                  "eval_every_seconds": self.eval_every_seconds, "target_loss": self.target_loss,
                  "budget_seconds": self.budget_seconds, "beta1": self.betas[0], "beta2": self.betas[1]}
        for name, value in floats.items():
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ConfigError(f"betas must lie in [0, 1), got {self.betas}")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")
        if self.budget_seconds is not None and not self.budget_seconds > 0:
            raise ConfigError(f"budget must be > 0 seconds, got {self.budget_seconds}")
        for name in ("grad_clip", "grad_clip_value", "patience", "eval_batches", "eval_every_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0 or none, got {value}")
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(f"unknown device {self.device!r}; use auto, cpu, cuda or cuda:N")


@dataclass
class TrainResult:
    """What a training run did: its history, throughput and why it stopped."""

    history: list[dict[str, float]] = field(default_factory=list)   # one row per evaluation
    steps: int = 0
    train_seconds: float = 0.0        # wall time, evaluations and checkpoints included
    step_seconds: float = 0.0         # the time spent in optimizer steps alone
    tokens_seen: int = 0
    clipped_steps: int = 0
    stopped_by: str = "steps"         # "steps", "budget", "patience", "target", "stop_at" or "fit"
    best_valid_loss: float = math.inf
    statistics: dict[str, float] = field(default_factory=dict)   # the model's, at the last step (experts' load)

    @property
    def tokens_per_second(self) -> float:
        """Training throughput: tokens over the time spent in steps (the fitting time for a
        model that fits itself)."""
        seconds = self.step_seconds or self.train_seconds
        return self.tokens_seen / seconds if seconds > 0 else 0.0


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


def time_progress(config: TrainConfig, step: int, seconds: float) -> float | None:
    """How far the schedule has gone at ``step`` after ``seconds`` of a time budget: the larger
    of the step and time fractions (None without a budget, and during warm-up), so that a
    time-limited run still decays its learning rate."""
    if config.budget_seconds is None or step < config.warmup_steps:
        return None
    by_steps = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return max(by_steps, seconds / config.budget_seconds)
