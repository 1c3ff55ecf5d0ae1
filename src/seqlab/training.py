"""The Trainer: one loop for every neural model and every task.

Each optimizer step draws one global batch of ``batch_size`` sequences from the task, splits it
across the DDP processes and then into ``grad_accum`` micro-batches, and averages their
gradients; so the step taken does not depend on how many processes or micro-batches computed
it. Then:

- the global gradient norm is measured and, with ``grad_clip``, clipped to it (Pascanu et al.
  2013); the pre-clip norm is logged;
- AdamW (Loshchilov and Hutter 2019; torch's fused kernel) steps with the learning rate of a
  linear warm-up followed by a cosine decay to ``min_lr_ratio * lr`` (Loshchilov and Hutter
  2017) over ``steps``; the schedule is part of the run, so a resumed run continues the same
  curve;
- every ``eval_every`` steps the validation metrics are measured and, when the validation loss
  and every weight are finite, a checkpoint is written atomically (``seqlab.rundir``): the last
  one, and the best one by validation loss; training stops early after ``patience``
  evaluations without improvement, or at ``target_loss``.

The loss is the task's (``task.loss(model, batch)``, plus any auxiliary loss the model's modules
leave, ``tasks.base.with_auxiliary_loss``), computed inside one module so that under
DDP whatever the task calls on the model (``model.loss``, ``forward_from``) runs through the
wrapper. Under DDP every decision (stop, evaluate, save, the learning rate of a time budget) is
taken once, by the first process, and shared: the processes never disagree about the time.

A NaN or infinite loss, gradient or validation loss stops training with ``TrainingError`` that
names the step of the checkpoint kept. With ``budget_seconds`` (wall time, evaluations and
saves included) training stops when what is left would not cover its closing evaluation, and
the schedule anneals by whichever of steps or time is closer to its end, so a time-limited run
still decays its learning rate. Resuming restores the weights, the optimizer, the step, every
random number generator and the metrics log, so 10 + resume + 10 steps give the weights of 20.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from seqlab import distributed, registry
from seqlab.budget import Budget
from seqlab.checkpoint import load_checkpoint, not_finite
from seqlab.contracts import model_statistics
from seqlab.errors import CheckpointError, ConfigError, TrainingError
from seqlab.progress import StepBar
from seqlab.rundir import RunDirectory
from seqlab.tasks.base import with_auxiliary_loss
from seqlab.train_config import TrainConfig, TrainResult, learning_rate, time_progress

__all__ = ["TrainConfig", "TrainResult", "Trainer", "fit", "learning_rate", "parameter_groups"]


def parameter_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The trainable parameters with weight decay (matrices) and without (biases, gains, and any
    parameter a model marks with ``parameter.no_weight_decay = True``, e.g. an SSM's A)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            plain = parameter.dim() >= 2 and not getattr(parameter, "no_weight_decay", False)
            (decay if plain else no_decay).append(parameter)
    return decay, no_decay


class TaskLoss(nn.Module):
    """The task's loss of a model as one module: what DDP wraps, so that everything the task
    calls on the model during the loss runs through DDP's forward."""

    def __init__(self, task: Any, model: nn.Module):
        super().__init__()
        self.task = task
        self.model = model

    def forward(self, batch: Any, state: Any = None, stream: bool = False) -> Any:
        if stream:
            loss, state = self.task.stream_loss(self.model, batch, state)
            return with_auxiliary_loss(loss, self.model), state
        return with_auxiliary_loss(self.task.loss(self.model, batch), self.model)


class Trainer:
    """Trains ``model`` on ``task``; with ``out_dir``, keeps the run's checkpoints and log there.

    ``budget``: the clock the run's ``budget_seconds`` counts on, when the caller started it
    earlier (before loading data); ``reserve_evaluations``: how many more evaluations the caller
    will run after training within the budget (compare's test evaluation).
    """

    def __init__(self, model: nn.Module, task: Any, config: TrainConfig, out_dir: str | Path | None = None,
                 *, budget: Budget | None = None, reserve_evaluations: int = 0):
        self.config = config
        self.task = task
        self.run = RunDirectory(out_dir) if out_dir is not None else None
        self.group = distributed.join(config.device)
        self.model = model.to(self.group.device)
        per_process, remainder = divmod(config.batch_size, self.group.world_size * config.grad_accum)
        if remainder or per_process == 0:
            raise ConfigError(f"batch_size {config.batch_size} must be a multiple of processes x grad_accum "
                              f"({self.group.world_size} x {config.grad_accum})")
        if config.tbptt and not hasattr(task, "stream_batch"):
            raise ConfigError(f"--tbptt needs a task with contiguous streams (lm); the {task.name} task has none")
        if config.tbptt and getattr(model, "max_context", None) is not None:
            raise ConfigError(f"--tbptt carries the state along the whole stream, but this model reads at most "
                              f"{model.max_context} positions (learned positions); train without --tbptt, "
                              "or use positions=rope, alibi or sinusoidal (a sliding window)")
        if config.tbptt and self.group.world_size > 1:
            raise ConfigError("tbptt runs in one process; launch without torchrun or drop --tbptt")
        self.micro_batch_size = per_process
        decay, no_decay = parameter_groups(model)
        # The fused kernel updates every parameter in one pass: on a CPU it takes a quarter of
        # the default multi-tensor step's time (benchmarks/transformer.py), for the same update.
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=config.betas, fused=self.group.device.type in ("cpu", "cuda"))
        self.generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed + self.group.rank)
        self.budget = budget
        self.reserve_evaluations = reserve_evaluations
        self.result = TrainResult()
        self.step = 0
        self._saved_step: int | None = None
        self._evals_without_improvement = 0
        self._closing_seconds = 0.0          # one evaluation and save, as measured (shared under DDP)
        self._evaluation_seconds = 0.0       # all evaluations and saves of this fit (shared)
        self._started_at = (0, 0.0)          # (step, train_seconds) when this fit began
        self._rng_by_rank: list[dict[str, Any]] = []
        self._last: dict[str, float] = {}
        self._carried: list[Any] = [None] * config.grad_accum     # truncated-BPTT states

    def fit(self, *, resume: bool = False, overwrite: bool = False, stop_at: int | None = None) -> TrainResult:
        """Train to ``config.steps`` (or ``stop_at``, checkpointing there), and return the result."""
        try:
            self._start(resume, overwrite)
            result = self._train(stop_at)
        except BaseException:
            self.group.close(clean=False)
            raise
        self.group.close(clean=True)
        return result

    def _start(self, resume: bool, overwrite: bool) -> None:
        if self.run is not None:
            self.group.decide_on_main(lambda: self.run.prepare(resume=resume, overwrite=overwrite))
        elif resume:
            raise ConfigError("resume needs the output directory holding the run")
        if resume:
            self._restore()
        if self.budget is None:
            self.budget = Budget(self.config.budget_seconds, spent=self.result.train_seconds)
        if self.budget.seconds is not None and self._closing_seconds == 0.0:
            # Time one evaluation before the first step, so that the budget reserves it from
            # the start (a save adds about a quarter to it).
            self._closing_seconds = 1.25 * self.group.decide_on_main(self._time_an_evaluation)
        # What the clock says now (data loading, the timing above), on the first process's clock.
        self.result.train_seconds = self.group.sum_and_main_clock(0.0, self.budget.elapsed())[1]
        self._started_at = (self.step, self.result.train_seconds)
        if self.budget.seconds is not None:
            if resume and self._out_of_time():
                raise ConfigError(f"the run has used its {self.budget.seconds:g} s budget "
                                  f"({self.result.train_seconds:.1f} s); to train further, resume with "
                                  "--extend and a larger --budget")

    def _train(self, stop_at: int | None) -> TrainResult:
        loss_module = TaskLoss(self.task, self.model)
        trained = self.group.wrap(loss_module)
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        end = min(self.config.steps, stop_at) if stop_at is not None else self.config.steps
        bar = StepBar(self.config, self.step, end, self.result.train_seconds,
                      desc=getattr(self.model, "registry_name", "train"), enabled=self.group.is_main)
        self.model.train()
        with bar:
            while self.step < end:
                if self._out_of_time():
                    self.result.stopped_by = "budget"
                    break
                step_started = time.perf_counter()
                lr = learning_rate(self.config, self.step,
                                   time_progress(self.config, self.step, self.result.train_seconds))
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                scheduled = getattr(self.task, "training_schedule", lambda step: {})(self.step)
                loss, n_tokens = self._accumulate_gradients(trained)
                grad_norm = torch.nn.utils.clip_grad_norm_(parameters, self.config.grad_clip or math.inf)
                if self.config.grad_clip_value is not None:
                    torch.nn.utils.clip_grad_value_(parameters, self.config.grad_clip_value)
                loss_value, elapsed = self.group.sum_and_main_clock(loss.item(), self.budget.elapsed())
                norm_value = grad_norm.item()
                if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
                    raise TrainingError(f"loss became {loss_value} (gradient norm {norm_value}) at step "
                                        f"{self.step + 1}; {self._kept()}; lower the learning rate or clip "
                                        "gradients with --grad-clip")
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.result.clipped_steps += bool(self.config.grad_clip and norm_value > self.config.grad_clip)
                self.result.tokens_seen += n_tokens
                self.result.train_seconds = elapsed
                self.result.step_seconds += time.perf_counter() - step_started
                self.result.statistics = model_statistics(self.model)   # before any evaluation's forward
                self._last = {"train_loss": loss_value, "grad_norm": norm_value, "lr": lr, **scheduled,
                              **self.result.statistics}
                bar.advance(self.step, elapsed, loss_value, self.result.tokens_per_second)
                if self.step % self.config.log_every == 0:
                    self._log({"step": self.step, "train_seconds": elapsed, **self._last})
                if self._evaluation_due(end):
                    stop = self._evaluate_and_checkpoint()
                    if stop:
                        self.result.stopped_by = stop
                        break
            else:
                self.result.stopped_by = "stop_at" if end < self.config.steps else "steps"
            if self.result.stopped_by == "budget" and self._needs_final_evaluation():
                self._evaluate_and_checkpoint()
        self.result.steps = self.step
        return self.result

    # ---- one step ------------------------------------------------------------------------

    def _accumulate_gradients(self, trained: nn.Module) -> tuple[Tensor, int]:
        """Forward and backward over this process's micro-batches; this process's share of the
        batch's mean loss, and the batch's token count."""
        if self.config.tbptt:
            global_batch = self.task.stream_batch(self.config.batch_size, self.step)
            if self.step % self.task.stream_windows(self.config.batch_size) == 0:
                self._carried = [None] * self.config.grad_accum       # the streams start again
        else:
            global_batch = self.task.train_batch(self.config.batch_size, self.generator)
        rows = slice(self.group.rank * self.config.batch_size // self.group.world_size,
                     (self.group.rank + 1) * self.config.batch_size // self.group.world_size)
        local = [part[rows] for part in global_batch]
        # Each micro-batch's mean loss is weighted by its share of the items the loss averages
        # over (words, sequences), times the process count that DDP's gradient mean divides by:
        # the step equals the one over the whole batch, however it is split.
        items = getattr(self.task, "loss_items", lambda batch: len(batch[0]))      # plain tasks: rows
        total_items = items(global_batch)
        contribution = torch.zeros((), device=self.group.device)
        for index in range(self.config.grad_accum):
            micro_rows = slice(index * self.micro_batch_size, (index + 1) * self.micro_batch_size)
            micro = [part[micro_rows].to(self.group.device, non_blocking=True) for part in local]
            weight = items(micro) / total_items
            last = index == self.config.grad_accum - 1
            sync = trained.no_sync() if isinstance(trained, DistributedDataParallel) and not last \
                else contextlib.nullcontext()
            with sync, self._autocast():
                if self.config.tbptt:
                    loss, state = trained(micro, self._carried[index], stream=True)
                    self._carried[index] = _detach(state)
                else:
                    loss = trained(micro)
                loss = loss * weight
            (loss * self.group.world_size).backward()
            contribution += loss.detach()
        count = getattr(self.task, "batch_tokens", lambda batch: batch[-1].numel())   # plain tasks: targets
        return contribution, count(global_batch)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.group.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16")

    # ---- evaluation, decisions and checkpoints -------------------------------------------

    def _evaluate_and_checkpoint(self) -> str | None:
        """Evaluate, log and checkpoint on the first process and share its decision with the
        others; return why to stop (``"target"``, ``"patience"``) or None."""
        self._rng_by_rank = self.group.gather(_rng_state())    # each process's dropout stream
        row, stop, error, self._closing_seconds = self.group.decide_on_main(self._evaluate_and_save)
        self._evaluation_seconds += self._closing_seconds
        self.result.train_seconds = self.group.sum_and_main_clock(0.0, self.budget.elapsed())[1]
        if error:
            raise TrainingError(error)
        if not self.group.is_main:
            self._record(row)
        return stop

    def _time_an_evaluation(self) -> float:
        started = self.budget.clock()
        self.task.evaluate(self.model, "valid", max_batches=self.config.eval_batches)
        self.model.train()
        return self.budget.clock() - started

    def _evaluate_and_save(self) -> tuple[dict[str, Any], str | None, str | None, float]:
        """On the first process: the history row, the stop decision, an error message for a
        validation loss or weights that are not finite (nothing is saved then), and the seconds
        this evaluation and save took (what the budget keeps in reserve for the last one)."""
        started = self.budget.clock()
        metrics = self.task.evaluate(self.model, "valid", max_batches=self.config.eval_batches)
        self.model.train()
        row = {"step": self.step, "train_seconds": self.budget.elapsed(), **self._last,
               **{f"valid_{name}": value for name, value in metrics.items()}}
        if not math.isfinite(metrics["loss"]) or not_finite(self.model):
            return row, None, (f"validation loss became {metrics['loss']} at step {self.step} (or the weights are "
                               f"not finite); {self._kept()}; lower the learning rate or clip gradients"), 0.0
        best = self._record(row)
        if self.run is not None:
            self.run.save(self.model, self.task.artifacts(), self._info(), self._trainer_state(), best=best)
        self._log(row)
        stop = None
        if self.config.target_loss is not None and metrics["loss"] <= self.config.target_loss:
            stop = "target"
        elif self.config.patience is not None and self._evals_without_improvement >= self.config.patience:
            stop = "patience"
        return row, stop, None, self.budget.clock() - started

    def _record(self, row: dict[str, Any]) -> bool:
        """Add an evaluation to the history; whether it is the best so far."""
        self.result.history.append(row)
        self._saved_step = self.step
        best = row["valid_loss"] < self.result.best_valid_loss
        if best:
            self.result.best_valid_loss = row["valid_loss"]
            self._evals_without_improvement = 0
        else:
            self._evals_without_improvement += 1
        return best

    def _kept(self) -> str:
        if self.run is None:
            return "nothing was saved (no output directory)"
        if self._saved_step is None:
            return f"no checkpoint was written to {str(self.run.path)!r} yet"
        return f"the last good checkpoint, step {self._saved_step}, is kept in {str(self.run.path)!r}"

    def _info(self) -> dict[str, Any]:
        return {"task": self.task.spec(), "train": dataclasses.asdict(self.config), "step": self.step,
                "history": list(self.result.history), "trains": "trainer"}

    def _log(self, row: dict[str, Any]) -> None:
        if self.run is not None and self.group.is_main:
            self.run.log(row)

    def _evaluation_due(self, end: int) -> bool:
        if self.step % self.config.eval_every == 0 or self.step == end:
            return True
        interval = self.config.eval_every_seconds
        last = self.result.history[-1]["train_seconds"] if self.result.history else 0.0
        return interval is not None and self.result.train_seconds - last >= interval

    def _needs_final_evaluation(self) -> bool:
        return not self.result.history or self.result.history[-1]["step"] != self.step

    def _out_of_time(self) -> bool:
        """Whether the time left (on the first process's clock, so every process agrees) would
        not cover one more step, the closing evaluation and checkpoint, and the evaluations the
        caller reserved."""
        if self.budget.seconds is None:
            return False
        steps = self.step - self._started_at[0]
        stepping = self.result.train_seconds - self._started_at[1] - self._evaluation_seconds
        next_step = max(stepping, 0.0) / steps if steps else 0.0
        closing = self._closing_seconds * (1 + self.reserve_evaluations)
        return self.result.train_seconds + next_step + closing >= self.budget.seconds

    # ---- resuming ------------------------------------------------------------------------

    def _trainer_state(self) -> dict[str, Any]:
        state = {
            "optimizer": self.optimizer.state_dict(), "step": self.step,
            "train_seconds": self.result.train_seconds, "tokens_seen": self.result.tokens_seen,
            "clipped_steps": self.result.clipped_steps, "best_valid_loss": self.result.best_valid_loss,
            "step_seconds": self.result.step_seconds,
            "evals_without_improvement": self._evals_without_improvement,
            "sampler_rng": self.generator.get_state(), "carried_state": self._carried,
            "closing_seconds": self._closing_seconds,
            "torch_rng": self._rng_by_rank[0]["torch"], "rng_by_rank": self._rng_by_rank,
        }
        return state

    def _restore(self) -> None:
        """Load weights, optimizer, counters, RNG states and the log from the run's last checkpoint."""
        loaded = load_checkpoint(self.run.path, device="cpu", with_trainer_state=True, which="last")
        if loaded.info["model"] != getattr(self.model, "registry_name", None):
            raise CheckpointError(f"{self.run.path} holds a {loaded.info['model']!r} run, not this model")
        state = loaded.trainer_state
        if int(state["step"]) > self.config.steps:
            raise ConfigError(f"the run has done {int(state['step'])} steps, more than its schedule's "
                              f"{self.config.steps}; extend the schedule to train further")
        self.model.load_state_dict(loaded.model.state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = self._saved_step = int(state["step"])
        self.result.train_seconds = float(state["train_seconds"])
        self.result.tokens_seen = int(state["tokens_seen"])
        self.result.clipped_steps = int(state["clipped_steps"])
        self.result.step_seconds = float(state.get("step_seconds", 0.0))
        self.result.best_valid_loss = float(state["best_valid_loss"])
        self.result.history = list(loaded.info.get("history", []))
        self._evals_without_improvement = int(state["evals_without_improvement"])
        self.generator.set_state(state["sampler_rng"])
        self._carried = [_to_device(part, self.group.device) for part in state.get("carried_state", self._carried)]
        self._closing_seconds = float(state.get("closing_seconds", 0.0))
        by_rank = state.get("rng_by_rank") or [{"torch": state["torch_rng"]}]
        if len(by_rank) != self.group.world_size:
            raise ConfigError(f"the run was trained by {len(by_rank)} process(es); resume it with as many (each "
                              "one's random stream, e.g. for dropout, is part of the run)")
        torch.set_rng_state(by_rank[self.group.rank]["torch"])
        if by_rank[self.group.rank].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(by_rank[self.group.rank]["cuda"])
        self._last = {key: self.result.history[-1][key] for key in ("train_loss", "grad_norm", "lr")
                      if self.result.history and key in self.result.history[-1]}
        if self.group.is_main:
            self.run.restart_log(up_to_step=self.step)


def _rng_state() -> dict[str, Any]:
    """This process's random number generator states (CPU, and CUDA when present)."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _to_device(state: Any, device: torch.device) -> Any:
    """A carried state (tensors in tuples and lists) moved to ``device``."""
    if isinstance(state, Tensor):
        return state.to(device)
    if isinstance(state, (tuple, list)):
        return type(state)(_to_device(part, device) for part in state)
    return state


def _detach(state: Any) -> Any:
    """The state with every tensor cut from the graph (the truncation of truncated BPTT)."""
    if isinstance(state, (tuple, list)):
        return type(state)(_detach(part) for part in state)
    return state.detach() if hasattr(state, "detach") else state   # a tensor, a key/value cache


def fit(model: nn.Module, task: Any, out_dir: str | Path | None = None, *, overwrite: bool = False,
        budget: Budget | None = None, **options: Any) -> TrainResult:
    """Train ``model`` on ``task`` however its registry entry says it trains, and say how it went.

    A model that fits itself (``trains="fit"``: counts, EM, L-BFGS) is fitted with
    ``fit(task, progress=..., deadline=...)``, timed and evaluated here; it takes no training
    options but ``progress`` and ``budget_seconds``. Every other model goes through the one
    ``Trainer`` with ``TrainConfig(**options)``. Either way a checkpoint is written to
    ``out_dir`` when given (a directory holding a run needs ``overwrite``).

    Raises:
        ConfigError: an option the model's way of training does not take.
    """
    if registry.trains_by(model) == "trainer":
        config = registry.make_config(TrainConfig, options)
        return Trainer(model, task, config, out_dir, budget=budget).fit(overwrite=overwrite)
    name = getattr(model, "registry_name", type(model).__name__)
    ignored = sorted(set(options) - {"progress", "budget_seconds"})
    if ignored:
        raise ConfigError(f"{name} fits itself and takes no training option {ignored[0]!r}; set its config "
                          f"instead (`seqlab models {name}` lists it)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"{name} fits itself in one process; run it without torchrun")
    run = RunDirectory(out_dir) if out_dir is not None else None
    if run is not None:
        run.prepare(resume=False, overwrite=overwrite)
    budget = budget or Budget(options.get("budget_seconds"))
    started = time.monotonic()
    model.fit(task, progress=bool(options.get("progress", False)), deadline=budget.deadline)
    seconds = time.monotonic() - started
    metrics = task.evaluate(model, "valid")
    row = {"step": 0, "train_seconds": seconds, **{f"valid_{name}": value for name, value in metrics.items()}}
    if not math.isfinite(metrics["loss"]):
        raise TrainingError(f"{name} fitted to a validation loss of {metrics['loss']}; nothing was saved")
    if run is not None:
        run.save(model, task.artifacts(), {"task": task.spec(), "train": dict(options), "step": 0,
                                           "history": [row], "trains": "fit"})
        run.log(row)
    return TrainResult(history=[row], train_seconds=seconds, tokens_seen=task.train_tokens,
                       best_valid_loss=metrics["loss"], stopped_by="fit")
