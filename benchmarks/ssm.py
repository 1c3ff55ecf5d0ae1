"""Mamba's training speed and memory on a CPU, against mambapy (the pure-PyTorch Mamba with a
parallel scan), and Mamba-2 against Mamba.

Three language models of the same shape, d_model 128, 2 layers, d_state 16 (Mamba-2: its
defaults, state 64 and heads of 32), vocabulary 256, trained on batches of 8 x 512 random
tokens by one plain loop (forward, cross-entropy, backward, AdamW step):

* **mambapy**: ``mambapy.lm.LM`` with seqlab's weights copied in, so the outputs are checked equal
  before anything is timed;
* **mamba**: seqlab's ``mamba`` (the chunked selective scan, ``seqlab.ops.scan``);
* **mamba2**: seqlab's ``mamba2`` (the chunked SSD, ``seqlab.ops.ssd``).

Tokens/s are medians over alternating rounds (on a shared machine, back-to-back runs meet
different loads). Peak memory is each model's own: a fresh process per model records its peak
resident set size after building the model and before training, then after two training
steps; the difference is what training added (activations, gradients, optimiser state). On a
GPU, ``torch.cuda.max_memory_allocated`` is used instead.

    python benchmarks/ssm.py [--rounds 3] [--steps 4]

Targets (issue 13): mamba_vs_mambapy >= 2; mamba_memory_vs_mambapy <= 1.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

from seqlab import registry

SHAPE = {"d_model": 128, "n_layers": 2}
MAMBA = {**SHAPE, "d_state": 16}
VOCAB, BATCH, LENGTH = 256, 8, 512
MODELS = ("mambapy", "mamba", "mamba2")


class MambapyLM(nn.Module):
    """mambapy's Mamba layers between an embedding and a tied head, as its ``lm.LM`` (whose module
    imports its Mamba-2 and with it einops, which mambapy does not declare)."""

    def __init__(self):
        super().__init__()
        from mambapy.mamba import Mamba, MambaConfig, RMSNorm

        self.embedding = nn.Embedding(VOCAB, SHAPE["d_model"])
        self.mamba = Mamba(MambaConfig(d_model=SHAPE["d_model"], n_layers=SHAPE["n_layers"], d_state=MAMBA["d_state"],
                                       rms_norm_eps=1e-5))
        self.norm_f = RMSNorm(SHAPE["d_model"], 1e-5)
        self.lm_head = nn.Linear(SHAPE["d_model"], VOCAB, bias=False)
        self.lm_head.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm_f(self.mamba(self.embedding(tokens))))


def build(name: str) -> nn.Module:
    """The model ``name``, with seqlab's Mamba weights in mambapy's."""
    torch.manual_seed(0)
    if name == "mamba2":
        return registry.build("mamba2", "lm", vocab_size=VOCAB, **SHAPE)
    ours = registry.build("mamba", "lm", vocab_size=VOCAB, **MAMBA)
    if name == "mamba":
        return ours
    peer = MambapyLM()
    renamed = {"backbone.embeddings.": "embedding.", "backbone.layers.": "mamba.layers.", "backbone.norm_f.": "norm_f."}
    state = {}
    for key, value in ours.state_dict().items():
        for old, new in renamed.items():
            key = key.replace(old, new)
        state[key] = value
    peer.load_state_dict(state, strict=True)
    return peer


def logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    output = model(tokens)
    return output if isinstance(output, torch.Tensor) else output[0]


def outputs_agree() -> float:
    """The largest |logit| difference between seqlab's Mamba and mambapy on one batch."""
    tokens = torch.randint(0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (logits(build("mamba").eval(), tokens) - logits(build("mambapy").eval(), tokens)).abs().max().item()


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, generator: torch.Generator,
                device: torch.device) -> None:
    for _ in range(steps):
        tokens = torch.randint(0, VOCAB, (BATCH, LENGTH + 1), generator=generator).to(device)
        loss = F.cross_entropy(logits(model, tokens[:, :-1]).flatten(0, 1).float(), tokens[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()


def training_rates(device: torch.device, rounds: int, steps: int) -> dict[str, float]:
    """Median training tokens/s of each model over ``rounds`` alternating rounds."""
    models = {name: build(name).to(device).train() for name in MODELS}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-3) for name, model in models.items()}
    generator = torch.Generator().manual_seed(0)
    for name in MODELS:                                          # warm-up: allocator, kernels
        train_steps(models[name], optimizers[name], 1, generator, device)
    rates: dict[str, list[float]] = {name: [] for name in MODELS}
    for _ in range(rounds):
        for name in MODELS:
            started = time.perf_counter()
            train_steps(models[name], optimizers[name], steps, generator, device)
            rates[name].append(steps * BATCH * LENGTH / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in rates.items()}


def peak_memory_here(name: str, device: torch.device) -> float:
    """In this process: bytes that two training steps of ``name`` added to the peak."""
    model = build(name).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        train_steps(model, optimizer, 2, generator, device)
        return torch.cuda.max_memory_allocated() - before
    before = peak_resident_bytes()
    train_steps(model, optimizer, 2, generator, device)
    return peak_resident_bytes() - before


def peak_resident_bytes() -> int:
    """This process's peak resident set size: Linux's VmHWM, which starts afresh in a new
    program (``ru_maxrss`` would carry the parent's peak through fork and exec)."""
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def peak_memory(name: str, device: torch.device) -> float:
    """``peak_memory_here`` in a fresh process, so no model sees another's peak."""
    command = [sys.executable, __file__, "--memory-of", name, "--device", str(device)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)["bytes"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="training steps per model per round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--memory-of", choices=MODELS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.memory_of:
        print(json.dumps({"bytes": peak_memory_here(args.memory_of, device)}))
        return 0
    difference = outputs_agree()
    print(f"{device}, {torch.get_num_threads()} threads; d_model {SHAPE['d_model']}, {SHAPE['n_layers']} layers, "
          f"batch {BATCH} x {LENGTH}; max |logit difference| mamba vs mambapy {difference:.1e}")
    if difference > 1e-4:
        print(f"outputs differ by {difference:.1e}: the comparison is void")
        return 1
    rates = training_rates(device, args.rounds, args.steps)
    memory = {name: peak_memory(name, device) for name in MODELS}
    print(f"{'model':8} {'tokens/s':>9} {'peak MiB':>9}")
    for name in MODELS:
        print(f"{name:8} {rates[name]:9,.0f} {memory[name] / 2**20:9.0f}")
    speed, memory_ratio = rates["mamba"] / rates["mambapy"], memory["mamba"] / memory["mambapy"]
    checks = {"mamba_vs_mambapy >= 2": speed >= 2, "mamba_memory_vs_mambapy <= 1": memory_ratio <= 1}
    print("targets: " + ", ".join(f"{name} {'held' if ok else 'MISSED'}" for name, ok in checks.items()))
    print(f"RESULT mamba_vs_mambapy={speed:.2f} mamba_memory_vs_mambapy={memory_ratio:.2f} "
          f"mamba2_vs_mamba={rates['mamba2'] / rates['mamba']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
