"""Synthetic tasks that isolate one ability: remembering across long gaps.

- The adding problem (Hochreiter and Schmidhuber 1997, experiment 4; in the form of Le et al.
  2015): inputs (B, T, 2) hold a random value u_t ~ U(0, 1) and a marker m_t, with exactly one
  marker in each half of the sequence; the target is the sum of the two marked values. Always
  answering 1 (the mean) scores MSE = Var(u1 + u2) = 2/12 = 0.167, so a model below that has
  carried information from the markers to the end.
- The copy-memory task (Hochreiter and Schmidhuber 1997; Arjovsky et al. 2016): ten symbols
  from {1..8}, then ``gap`` blanks (0) with a delimiter (9) at the last of them, then ten more
  blanks; the target is blanks everywhere except the last ten positions, which repeat the ten
  symbols. Predicting blanks and then uniformly random symbols scores the baseline
  cross-entropy 10 ln 8 / (gap + 20).

Each task draws training batches from a generator and holds fixed validation and test sets.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seqlab.contracts import device_of
from seqlab.errors import ConfigError


@torch.no_grad()
def predict_in_batches(model: nn.Module, inputs: Tensor, batch_size: int) -> Tensor:
    """``model(inputs)`` in eval mode, ``batch_size`` rows at a time, as fp32 on the CPU; the
    model's mode is restored afterwards."""
    device = device_of(model)
    was_training = model.training
    model.eval()
    outputs = torch.cat([model(part.to(device)).float().cpu() for part in inputs.split(batch_size)])
    model.train(was_training)
    return outputs


class AddingProblem:
    """Regress the sum of two marked values in a sequence of ``length``."""

    name = "adding"
    baseline_mse = 1.0 / 6.0

    def __init__(self, length: int, eval_size: int = 1000, seed: int = 0):
        if length < 2:
            raise ConfigError(f"the adding problem needs length >= 2, got {length}")
        self.length = length
        self.eval_sets = {split: self.sample(eval_size, torch.Generator().manual_seed(seed + i + 1))
                          for i, split in enumerate(("valid", "test"))}

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(n, T, 2) inputs and (n,) targets."""
        half = self.length // 2
        values = torch.rand(n, self.length, generator=generator)
        first = torch.randint(0, half, (n,), generator=generator)
        second = torch.randint(half, self.length, (n,), generator=generator)
        markers = torch.zeros(n, self.length)
        rows = torch.arange(n)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        return torch.stack([values, markers], dim=-1), (values * markers).sum(dim=1)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return self.sample(batch_size, generator)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        inputs, targets = batch
        return F.mse_loss(model(inputs).squeeze(-1).float(), targets)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "valid", batch_size: int = 500,
                 max_batches: int | None = None) -> dict[str, float]:
        """Mean squared error on the fixed ``split`` set (``loss`` and ``mse`` alike)."""
        inputs, targets = self.eval_sets["valid" if split == "valid" else "test"]
        predictions = predict_in_batches(model, inputs, batch_size).squeeze(-1)
        mse = F.mse_loss(predictions, targets).item()
        return {"loss": mse, "mse": mse}

    def spec(self) -> dict[str, Any]:
        return {"task": self.name, "length": self.length}


class CopyMemory:
    """Reproduce ten symbols after a gap of ``gap`` blanks."""

    name = "copy"
    n_symbols, n_copied = 10, 10                 # ids: 0 blank, 1..8 symbols, 9 delimiter

    def __init__(self, gap: int, eval_size: int = 500, seed: int = 0):
        if gap < 1:
            raise ConfigError(f"the copy task needs gap >= 1, got {gap}")
        self.gap = gap
        self.baseline_loss = self.n_copied * math.log(8) / (gap + 2 * self.n_copied)
        self.eval_sets = {split: self.sample(eval_size, torch.Generator().manual_seed(seed + i + 1))
                          for i, split in enumerate(("valid", "test"))}

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(n, gap + 20) input ids and target ids."""
        copied = torch.randint(1, 9, (n, self.n_copied), generator=generator)
        inputs = torch.zeros(n, self.gap + 2 * self.n_copied, dtype=torch.long)
        inputs[:, : self.n_copied] = copied
        inputs[:, self.n_copied + self.gap - 1] = 9
        targets = torch.zeros_like(inputs)
        targets[:, -self.n_copied:] = copied
        return inputs, targets

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return self.sample(batch_size, generator)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        inputs, targets = batch
        return F.cross_entropy(model(inputs).flatten(0, 1).float(), targets.flatten())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "valid", batch_size: int = 250,
                 max_batches: int | None = None) -> dict[str, float]:
        """Cross-entropy per position, and the accuracy on the ten copied symbols."""
        inputs, targets = self.eval_sets["valid" if split == "valid" else "test"]
        logits = predict_in_batches(model, inputs, batch_size)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten()).item()
        copied = logits[:, -self.n_copied:].argmax(-1) == targets[:, -self.n_copied:]
        return {"loss": loss, "copy_accuracy": copied.float().mean().item()}

    def spec(self) -> dict[str, Any]:
        return {"task": self.name, "gap": self.gap}
