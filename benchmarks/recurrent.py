"""Recurrent LMs: seqlab's LSTM and GRU language models through the Trainer against the same
torch modules (nn.Embedding, nn.LSTM / nn.GRU, nn.Linear) in a bare loop; and our unrolled
reference cells against torch's fused kernels (reported, no target).

Both sides train the same sizes on the same windows of the built-in corpus with the same batch,
AdamW and clipping; runs alternate and each side's median counts.

    python benchmarks/recurrent.py [--quick]

Targets (issue 4): lstm_vs_bare >= 0.97, gru_vs_bare >= 0.97.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

from seqlab import registry
from seqlab.data.batching import random_windows
from seqlab.data.corpora import builtin_corpus
from seqlab.layers.recurrent import Recurrent
from seqlab.tasks.lm import LanguageModeling
from trainer_overhead import time_trainer   # this folder: the Trainer timed the same way

BATCH, CONTEXT, WIDTH, LAYERS, LR = 32, 128, 256, 2, 3e-3


class BareLM(nn.Module):
    """What a user would write by hand: embedding, torch's recurrent module, output layer."""

    def __init__(self, cell: str, vocab_size: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, WIDTH)
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](WIDTH, WIDTH, LAYERS, batch_first=True)
        self.head = nn.Linear(WIDTH, vocab_size)
        self.head.weight = self.embedding.weight

    def forward(self, tokens):
        return self.head(self.rnn(self.embedding(tokens))[0])


def bare_loop(cell: str, task: LanguageModeling, steps: int) -> float:
    torch.manual_seed(0)
    model = BareLM(cell, task.vocab_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.99), weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for _ in range(steps):
        inputs, targets = random_windows(task.splits["train"].ids, BATCH, CONTEXT, generator)
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss.item()
    return steps * BATCH * CONTEXT / (time.perf_counter() - started)


def seqlab_loop(cell: str, task: LanguageModeling, steps: int) -> float:
    torch.manual_seed(0)
    model = registry.build_for_task(cell, task.model_defaults(), {"d_model": WIDTH, "n_layers": LAYERS}, task="lm")
    return time_trainer(model, task, steps, progress=False)


def layer_tokens_per_second(cell: str, fused: bool, repeats: int) -> float:
    """Forward and backward of one recurrent layer over (BATCH, CONTEXT, WIDTH) inputs."""
    torch.manual_seed(0)
    layer = Recurrent(cell, WIDTH, WIDTH, 1, fused=fused)
    x = torch.randn(BATCH, CONTEXT, WIDTH)
    layer(x)[0].sum().backward()                                  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        layer(x)[0].sum().backward()
    return repeats * BATCH * CONTEXT / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (< 1 minute)")
    args = parser.parse_args()
    steps, repeats = (8, 1) if args.quick else (40, 3)
    task = LanguageModeling(builtin_corpus(), "char", CONTEXT)
    print(f"{WIDTH} wide, {LAYERS} layers, batch {BATCH} x {CONTEXT}, {steps} steps x {repeats} repeats, "
          f"{torch.get_num_threads()} threads\n")
    print("| model | bare tokens/s | seqlab tokens/s | seqlab / bare |")
    print("|---|---:|---:|---:|")
    ratios = {}
    for cell in ("lstm", "gru"):
        bare_loop(cell, task, 2)
        bare, ours = [], []
        for _ in range(repeats):
            bare.append(bare_loop(cell, task, steps))
            ours.append(seqlab_loop(cell, task, steps))
        ratios[cell] = statistics.median(ours) / statistics.median(bare)
        print(f"| {cell} | {statistics.median(bare):,.0f} | {statistics.median(ours):,.0f} | {ratios[cell]:.3f} |")
    print("\n| cell | fused tokens/s | reference cell tokens/s | reference / fused |")
    print("|---|---:|---:|---:|")
    for cell in ("lstm", "gru"):
        fused = layer_tokens_per_second(cell, True, 3 * repeats)
        reference = layer_tokens_per_second(cell, False, repeats)
        print(f"| {cell} | {fused:,.0f} | {reference:,.0f} | {reference / fused:.2f} |")
    print(f"RESULT lstm_vs_bare={ratios['lstm']:.3f} gru_vs_bare={ratios['gru']:.3f}")


if __name__ == "__main__":
    main()
