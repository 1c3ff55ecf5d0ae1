"""Memory of the RNN transducer loss: the full (B, T, U+1, V) joint against the sliced joint.

Both compute ``rnnt_nll`` of ``log_softmax(joint(encoder_out, predictor_out))`` for a small tanh
joint network (``seqlab.speech.transducer_loss``):

* **full**: the joint's hidden layer (B, T, U+1, D) and log-probabilities (B, T, U+1, V) are
  built at once, and autograd keeps them for the backward pass;
* **sliced**: ``rnnt_nll_from_joint`` builds them ``time_chunk`` frames at a time inside
  ``torch.utils.checkpoint``, keeps only the gathered (B, T, U+1) lattice inputs, and recomputes
  each slice in the backward pass.

Memory is what autograd saves for backward (``saved_tensor_bytes``: unique storages of the saved
tensors, inputs and parameters left out); it is deterministic. The sliced path's transient peak,
one slice's (B, time_chunk, U+1, D + V) activations while it is computed or recomputed, is not
saved and so not in the table. The time is the median of a few
forward + backward passes on one thread. The two paths' losses and gradients are checked equal.

    python benchmarks/transducer_memory.py [--quick]

--quick runs B=4, T=200, U=20, V=30, D=64 (as the test); the default a larger B=8, T=400, U=40,
V=128, D=128. The last line is ``RESULT joint_memory_full_mb=... joint_memory_sliced_mb=...
ratio=...`` (full over sliced, for time_chunk 16).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from seqlab.speech.transducer_loss import rnnt_nll, rnnt_nll_from_joint, saved_tensor_bytes

CHUNKS = (4, 16, 64)
RESULT_CHUNK = 16


class TanhJoint(nn.Module):
    """logits = W tanh(A enc + B pred), broadcasting enc (B, t, 1, D) with pred (B, 1, U+1, D)."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.encoder_proj = nn.Linear(dim, dim)
        self.predictor_proj = nn.Linear(dim, dim, bias=False)
        self.output = nn.Linear(dim, vocab_size)

    def forward(self, encoder_out: torch.Tensor, predictor_out: torch.Tensor) -> torch.Tensor:
        return self.output(torch.tanh(self.encoder_proj(encoder_out) + self.predictor_proj(predictor_out)))


def measure(batch_size: int, frames: int, labels: int, vocab_size: int, dim: int, repeats: int) -> list[dict]:
    """One row per path: saved megabytes, median seconds per forward + backward, and the largest
    difference from the full path in the loss and each gradient, relative to its largest entry."""
    torch.manual_seed(0)
    joint = TanhJoint(dim, vocab_size)
    encoder_out = torch.randn(batch_size, frames, dim, requires_grad=True)
    predictor_out = torch.randn(batch_size, labels + 1, dim, requires_grad=True)
    lengths = torch.randint(frames // 2, frames + 1, (batch_size,))
    target_lengths = torch.randint(labels // 2, labels + 1, (batch_size,))
    targets = torch.randint(1, vocab_size, (batch_size, labels))
    targets[torch.arange(labels) >= target_lengths[:, None]] = 0
    inputs = (encoder_out, predictor_out, *joint.parameters())

    def full() -> torch.Tensor:
        log_probs = joint(encoder_out[:, :, None], predictor_out[:, None]).log_softmax(-1)    # (B, T, U+1, V)
        return rnnt_nll(log_probs, lengths, targets, target_lengths).sum()

    def sliced(chunk: int):
        return lambda: rnnt_nll_from_joint(encoder_out, predictor_out, joint, lengths, targets, target_lengths,
                                           time_chunk=chunk).sum()

    paths = {"full": full, **{f"sliced, time_chunk={chunk}": sliced(chunk) for chunk in CHUNKS}}
    reference = None
    rows = []
    for name, compute in paths.items():
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            loss = compute()
            gradients = torch.autograd.grad(loss, inputs)
            seconds.append(time.perf_counter() - start)
        if reference is None:
            reference = (loss, gradients)
        difference = max(float((new - old).abs().max() / old.abs().max())
                         for new, old in zip((loss.detach(), *gradients), (reference[0].detach(), *reference[1])))
        rows.append({"path": name, "saved_mb": saved_tensor_bytes(compute, inputs) / 2**20,
                     "seconds": statistics.median(seconds), "relative_difference": difference})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B=4, T=200, U=20, V=30, D=64 (a few seconds)")
    parser.add_argument("--repeats", type=int, default=3, help="forward + backward passes timed per path")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    shape = dict(batch_size=4, frames=200, labels=20, vocab_size=30, dim=64) if arguments.quick else \
        dict(batch_size=8, frames=400, labels=40, vocab_size=128, dim=128)
    print("shape: " + ", ".join(f"{key}={value}" for key, value in shape.items()))
    rows = measure(**shape, repeats=arguments.repeats)
    print(f"{'path':<24} {'saved MB':>10} {'s / step':>10} {'rel diff':>10}")
    for row in rows:
        print(f"{row['path']:<24} {row['saved_mb']:>10.2f} {row['seconds']:>10.3f} {row['relative_difference']:>10.1e}")
    full_mb = rows[0]["saved_mb"]
    sliced_mb = next(row["saved_mb"] for row in rows if row["path"].endswith(f"={RESULT_CHUNK}"))
    print(f"RESULT joint_memory_full_mb={full_mb:.2f} joint_memory_sliced_mb={sliced_mb:.2f} "
          f"ratio={full_mb / sliced_mb:.1f}")


if __name__ == "__main__":
    main()
