"""Trainer overhead: LSTM LM training tokens/s through seqlab's Trainer against a bare loop.

Both train the same model (same config, same initial weights) on the same windows of the
built-in corpus with the same batch, AdamW and gradient clipping. The Trainer adds what it
adds in real use: the schedule, loss checks, logging, the progress bar and one final
evaluation (a single validation batch). Runs alternate, and each side's median is used.

    python benchmarks/trainer_overhead.py [--quick]

Target (issue 2): trainer_vs_bare >= 0.97.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from seqlab import registry
from seqlab.data.batching import random_windows
from seqlab.data.corpora import builtin_corpus
from seqlab.tasks.lm import LanguageModeling
from seqlab.training import TrainConfig, Trainer

BATCH, CONTEXT, LR = 32, 128, 3e-3
MODEL = {"d_model": 256, "n_layers": 2, "dropout": 0.1}


def fresh_model(task: LanguageModeling):
    torch.manual_seed(0)
    return registry.build_for_task("lstm", task.model_defaults(), MODEL, task="lm")


def bare_loop(task: LanguageModeling, steps: int) -> float:
    """The 20-line loop: tokens per second."""
    model = fresh_model(task).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.99), weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    ids = task.splits["train"].ids
    started = time.perf_counter()
    for _ in range(steps):
        inputs, targets = random_windows(ids, BATCH, CONTEXT, generator)
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss.item()
    return steps * BATCH * CONTEXT / (time.perf_counter() - started)


def time_trainer(model, task: LanguageModeling, steps: int, progress: bool = True) -> float:
    """Train ``model`` through the Trainer, timed from outside the call: tokens per second."""
    config = TrainConfig(steps=steps, batch_size=BATCH, lr=LR, grad_clip=1.0, eval_every=steps,
                         eval_batches=1, device="cpu", progress=progress)
    trainer = Trainer(model, task, config)
    started = time.perf_counter()
    trainer.fit()
    return steps * BATCH * task.context / (time.perf_counter() - started)


def trainer_loop(task: LanguageModeling, steps: int) -> float:
    """The same model, data and batch as ``bare_loop``, through the Trainer."""
    return time_trainer(fresh_model(task), task, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (< 1 minute)")
    args = parser.parse_args()
    steps, repeats = (15, 2) if args.quick else (60, 3)
    task = LanguageModeling(builtin_corpus(), "char", CONTEXT)
    bare_loop(task, 3)                                           # warm up allocators and kernels
    bare, trainer = [], []
    for _ in range(repeats):
        bare.append(bare_loop(task, steps))
        trainer.append(trainer_loop(task, steps))
    ratio = statistics.median(trainer) / statistics.median(bare)
    print(f"\nLSTM LM, d_model {MODEL['d_model']}, {MODEL['n_layers']} layers, batch {BATCH} x {CONTEXT}, "
          f"{steps} steps x {repeats} repeats, {torch.get_num_threads()} threads")
    print(f"| loop    | tokens/s (median) | runs |")
    print(f"|---------|------------------:|------|")
    print(f"| bare    | {statistics.median(bare):17,.0f} | {', '.join(f'{x:,.0f}' for x in bare)} |")
    print(f"| Trainer | {statistics.median(trainer):17,.0f} | {', '.join(f'{x:,.0f}' for x in trainer)} |")
    print(f"RESULT trainer_vs_bare={ratio:.3f}")


if __name__ == "__main__":
    main()
