"""Length scaling: training time and memory, and generation latency and state, against the
sequence length, for attention, Mamba, Mamba-2, Hyena and an LSTM of equal width and depth.

Each model is a 2-layer language model of width 128 over 256 token ids, at batch 1 (attention:
full causal attention, 4 heads with RoPE, in the same pre-norm residual stack as the SSMs and,
like them, without a feed-forward sublayer; Mamba: state 16; Mamba-2: state 64, heads of 32;
Hyena: order 2; LSTM: torch's fused cell):

* training: one forward and backward pass at T in {256, 1k, 4k, 16k}: median wall time, and the
  bytes autograd saves for the backward pass (``seqlab.scaling.training_cost``); the fitted
  slope of log time on log T per model, over all lengths and over the last two;
* generation: after a context of T tokens, the time per generated token and the bytes of the
  state (``seqlab.scaling.generation_cost``): constant for the SSMs and the LSTM, growing for
  attention's key/value cache and Hyena's stored inputs.

Log-log plots go to ``--out``. On this CPU, attention runs torch's fused (flash-style) kernel,
whose memory is linear in T: its quadratic cost shows in time, not in saved bytes.

    python benchmarks/scaling.py [--lengths 256 1024 4096 16384] [--out runs/benchmarks/scaling]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from seqlab import registry
from seqlab.scaling import fitted_slope, generation_cost, plot_scaling, training_cost

VOCAB = 256
SHAPE = {"d_model": 128, "n_layers": 2}
MODELS = {
    # causal attention with RoPE in the same residual stack as the SSMs, no feed-forward (Mamba's
    # block has none either), with a key/value cache that holds exactly the positions read
    "attention": ("hybrid", {"pattern": "a", "positions": "rope", "n_heads": 4, "feedforward": False}),
    "mamba": ("mamba", {}),
    "mamba2": ("mamba2", {}),
    "hyena": ("hyena", {}),
    "lstm": ("lstm", {}),
}


def build(label: str, device: torch.device) -> torch.nn.Module:
    name, overrides = MODELS[label]
    torch.manual_seed(0)
    return registry.build(name, "lm", vocab_size=VOCAB, **SHAPE, **overrides).to(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/scaling"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    lengths = sorted(args.lengths)
    print(f"{device}, {torch.get_num_threads()} threads; width {SHAPE['d_model']}, {SHAPE['n_layers']} layers, "
          f"batch 1; lengths {', '.join(map(str, lengths))}")
    train: dict[str, dict[int, dict[str, float]]] = {}
    generate: dict[str, dict[int, dict[str, float]]] = {}
    for label in MODELS:
        model = build(label, device)
        train[label] = {n: training_cost(model, n) for n in lengths}
        generate[label] = {n: generation_cost(model, n) for n in lengths}
        print(f"  {label}: done", flush=True)

    header = " ".join(f"{n:>10,}" for n in lengths)
    print(f"\nforward + backward seconds       {header}   slope  slope(last 2)")
    slopes = {}
    for label, rows in train.items():
        times = [rows[n]["seconds"] for n in lengths]
        slopes[label] = fitted_slope(lengths, times)
        last_two = fitted_slope(lengths[-2:], times[-2:])
        print(f"{label:32} " + " ".join(f"{t:10.3f}" for t in times) + f"   {slopes[label]:5.2f}  {last_two:5.2f}")
    print(f"\nsaved for backward, MiB          {header}   slope")
    for label, rows in train.items():
        saved = [rows[n]["saved_bytes"] / 2**20 for n in lengths]
        print(f"{label:32} " + " ".join(f"{m:10.1f}" for m in saved) + f"   {fitted_slope(lengths, saved):5.2f}")
    if device.type == "cuda":
        print(f"\nGPU peak during the pass, MiB    {header}")
        for label, rows in train.items():
            print(f"{label:32} " + " ".join(f"{rows[n]['peak_bytes'] / 2**20:10.1f}" for n in lengths))
    print(f"\ngeneration ms per token after T  {header}")
    for label, rows in generate.items():
        print(f"{label:32} " + " ".join(f"{rows[n]['seconds_per_token'] * 1e3:10.2f}" for n in lengths))
    print(f"\nstate KiB after T tokens         {header}")
    for label, rows in generate.items():
        print(f"{label:32} " + " ".join(f"{rows[n]['state_bytes'] / 2**10:10.0f}" for n in lengths))

    plots = [plot_scaling({label: {n: rows[n]["seconds"] for n in lengths} for label, rows in train.items()},
                          args.out / "training_time.png", "forward + backward seconds", "Training time against length"),
             plot_scaling({label: {n: rows[n]["saved_bytes"] for n in lengths} for label, rows in train.items()},
                          args.out / "training_memory.png", "bytes saved for backward", "Activation memory"),
             plot_scaling({label: {n: rows[n]["seconds_per_token"] for n in lengths} for label, rows in generate.items()},
                          args.out / "generation_latency.png", "seconds per token", "Generation latency"),
             plot_scaling({label: {n: max(rows[n]["state_bytes"], 1.0) for n in lengths}
                           for label, rows in generate.items()},
                          args.out / "generation_state.png", "state bytes", "Generation state")]
    print("\nplots: " + ", ".join(map(str, plots)))
    print("RESULT " + " ".join(f"slope_{label}={slopes[label]:.2f}" for label in MODELS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
