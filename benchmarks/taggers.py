"""The neural taggers on UD English EWT (UPOS): accuracy after a fixed CPU training budget.

Each model ("bilstm", "bilstm-crf") is built for the task and trained by the Trainer with its
own ``train_defaults`` and ``--budget`` seconds of training time, then tagged on the test split.
The table gives parameters, optimizer steps, training seconds, training and tagging tokens/s,
test accuracy and the accuracy on test words unseen in training. The load average is printed
before and after, since a loaded machine trains fewer steps in the same budget.

    python benchmarks/taggers.py [--budget 540 | --steps 4900] [--threads 2]
                                 [--models bilstm,bilstm-crf] [--set key=value ...] [--quick]

``--steps`` bounds the run by optimizer steps instead of time, so that a busy machine changes
how long it takes, not what it reaches (the time budget counts evaluations too, since 0.2).

Target: bilstm-crf >= 0.95 test accuracy within 10 minutes of a 2-core CPU. Measured with
``--steps 5000`` (2 threads, a shared 2-core machine at load average about 2 with this run,
2026-11-30):

| model | params | steps | train s | train tok/s | valid acc (part) | test acc | unseen acc | tag tok/s |
|---|---|---|---|---|---|---|---|---|
| bilstm | 2,493,609 | 5,000 | 489 | 5,475 | 0.9508 | 0.9513 | 0.7893 | 37,835 |
| bilstm-crf | 2,493,932 | 5,000 | 433 | 6,147 | 0.9520 | 0.9529 | 0.7923 | 49,778 |

With ``--budget 540`` instead (the default) the steps reached depend on the machine's load:
4,883 and 5,230 steps gave 0.9517 and 0.9513 on 2026-11-24; since 0.2 the budget counts the
evaluations too.

"valid acc (part)" is the Trainer's last check, on the first 640 validation sentences. The
accuracy follows the throughput: two runs side by side (1 thread each, about 2,900 steps) gave
0.9478 with the character BiLSTM and 0.9453 with the character CNN (``--set
character_encoder=cnn``). On a machine loaded by other work, 2 threads can collapse (921 tok/s
seen at load average 4); ``--threads 1`` then trains faster.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from seqlab import registry
from seqlab.tasks.tagging import Tagging
from seqlab.training import TrainConfig, Trainer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ud_english_ewt"


def parse_settings(pairs: list[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        settings[key] = value
    return settings


def run(name: str, task: Tagging, budget: float | None, steps: int | None, model_options: dict,
        train_options: dict, progress: bool) -> dict:
    torch.manual_seed(0)
    model = registry.build_for_task(name, task.model_defaults(), model_options, task="tag")
    bound = ({"budget_seconds": budget, "eval_every_seconds": budget / 6} if steps is None else
             {"steps": steps, "budget_seconds": None, "eval_every_seconds": None, "eval_every": max(1, steps // 6)})
    options = {**model.train_defaults, **bound, "progress": progress, "device": "cpu", **train_options}
    result = Trainer(model, task, registry.make_config(TrainConfig, options)).fit()
    test = task.evaluate(model, "test")
    return {"model": name, "parameters": registry.parameter_count(model), "steps": result.steps,
            "train_seconds": result.train_seconds, "train_tokens_per_second": result.tokens_per_second,
            "valid_accuracy": result.history[-1]["valid_accuracy"], "accuracy": test["accuracy"],
            "unseen_accuracy": test["unseen_accuracy"], "tag_tokens_per_second": test["tokens_per_second"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=540.0, help="training seconds per model")
    parser.add_argument("--steps", type=int, help="train this many steps instead of for --budget seconds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="bilstm,bilstm-crf")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a model config value (e.g. hidden=200) for every model")
    parser.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                        help="a TrainConfig value (e.g. lr=0.003) for every model")
    parser.add_argument("--quick", action="store_true", help="30 s per model")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budget = 30.0 if args.quick else args.budget
    task = Tagging.from_data(args.data)
    print(f"EWT: {len(task.splits['train'])} training sentences, {task.train_tokens} words; "
          f"{args.threads} threads; " + (f"{args.steps} steps" if args.steps else f"budget {budget:.0f} s")
          + f"; load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for name in args.models.split(","):
        started = time.perf_counter()
        rows.append(run(name, task, budget, args.steps, parse_settings(args.set), parse_settings(args.train),
                        args.progress))
        print(f"{name}: {time.perf_counter() - started:.0f} s wall, load average {os.getloadavg()[0]:.2f}",
              flush=True)
    header = ("model", "params", "steps", "train s", "train tok/s", "valid acc (part)", "test acc", "unseen acc",
              "tag tok/s")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print(f"| {row['model']} | {row['parameters']:,} | {row['steps']:,} | {row['train_seconds']:.0f} | "
              f"{row['train_tokens_per_second']:,.0f} | {row['valid_accuracy']:.4f} | {row['accuracy']:.4f} | "
              f"{row['unseen_accuracy']:.4f} | {row['tag_tokens_per_second']:,.0f} |")
    accuracy = {row["model"]: row["accuracy"] for row in rows}
    print("RESULT " + " ".join(f"{name.replace('-', '_')}_accuracy={value:.4f}" for name, value in accuracy.items()))


if __name__ == "__main__":
    main()
