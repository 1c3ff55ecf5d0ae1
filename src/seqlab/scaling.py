"""How a causal language model's costs grow with the sequence length: the measurement behind
the claim that state space models are linear where attention is quadratic.

- ``training_cost``: one forward and backward pass over a (B, T) batch: its wall time, the bytes
  autograd keeps for the backward pass (every tensor saved by any operation, counted once per
  storage, through ``torch.autograd.graph.saved_tensors_hooks``: exact, and independent of the
  machine's load), and on a GPU the allocator's peak.
- ``generation_cost``: after reading a context of T tokens, the time per generated token and
  the bytes of the state the model carries (an SSM's constant state, an LSTM's (h, c), a
  Transformer's key/value cache, a Hyena's stored inputs).
- ``fitted_slope``: the least-squares slope of log(cost) against log(T): about 1 for a linear
  model, 2 for a quadratic one. Fixed costs (kernel launches, Python) flatten it at short T, so
  a reading over lengths where the model's own work dominates is the telling one.

``benchmarks/scaling.py`` runs these over attention, Mamba, Mamba-2, Hyena and an LSTM.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from seqlab.contracts import CausalLM, device_of
from seqlab.errors import ConfigError
from seqlab.layers.kv_cache import KeyValueCache


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_tokens(model: CausalLM, batch: int, length: int, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.vocab_size, (batch, length), generator=generator).to(device_of(model))


def training_cost(model: CausalLM, length: int, batch: int = 1, repeats: int = 3) -> dict[str, float]:
    """Forward and backward over (batch, length) random tokens (cross-entropy on every position).

    Returns:
        ``seconds`` (the median of ``repeats`` passes after one warm-up), ``saved_bytes`` (what
        autograd keeps for the backward pass) and, on a GPU, ``peak_bytes`` (the allocator's
        peak above what was allocated before the pass).
    """
    device = device_of(model)
    tokens = random_tokens(model, batch, length + 1)
    model.train()

    def one_pass() -> None:
        logits = model(tokens[:, :-1])
        F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten()).backward()
        model.zero_grad(set_to_none=True)
        _synchronize(device)

    saved: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        one_pass()                                                       # the warm-up, counted
    parameters = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    result = {"saved_bytes": float(sum(size for pointer, size in saved.items() if pointer not in parameters))}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        one_pass()
        result["peak_bytes"] = float(torch.cuda.max_memory_allocated(device) - before)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        one_pass()
        seconds.append(time.perf_counter() - started)
    result["seconds"] = statistics.median(seconds)
    return result


def state_bytes(state: Any) -> int:
    """The bytes a recurrent state holds: its tensors', and for a key/value cache the keys and
    values of the positions it holds (not its spare capacity)."""
    if isinstance(state, Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, KeyValueCache):
        keys = state.key_buffer
        held = state.length if state.window is None else min(state.length, state.window)
        return 2 * keys[:, :, :held].numel() * keys.element_size()
    if isinstance(state, (tuple, list)):
        return sum(state_bytes(part) for part in state)
    if isinstance(state, dict):
        return sum(state_bytes(part) for part in state.values())
    return 0


@torch.no_grad()
def generation_cost(model: CausalLM, context: int, new_tokens: int = 32, piece: int = 1024) -> dict[str, float]:
    """Read ``context`` random tokens (in pieces of ``piece``), then step ``new_tokens`` more.

    Returns:
        ``seconds_per_token`` of the steps and ``state_bytes`` of the state after the context.
    """
    if context < 1 or new_tokens < 1:
        raise ConfigError(f"need a context and new tokens >= 1, got {context} and {new_tokens}")
    model.eval()
    device = device_of(model)
    tokens = random_tokens(model, 1, context + new_tokens)
    state = model.init_state(1)
    for begin in range(0, context, piece):
        _, state = model.forward_from(tokens[:, begin:min(begin + piece, context)], state)
    held = state_bytes(state)
    _synchronize(device)
    started = time.perf_counter()
    for t in range(context, context + new_tokens):
        _, state = model.step(tokens[:, t], state)
    _synchronize(device)
    return {"seconds_per_token": (time.perf_counter() - started) / new_tokens, "state_bytes": float(held)}


def fitted_slope(lengths: Sequence[int], values: Sequence[float]) -> float:
    """The least-squares slope of log(value) on log(length)."""
    if len(lengths) != len(values) or len(lengths) < 2 or min(values) <= 0:
        raise ConfigError("a slope needs two or more lengths with positive values")
    xs, ys = [math.log(n) for n in lengths], [math.log(v) for v in values]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    return (sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
            / sum((x - mean_x) ** 2 for x in xs))


def plot_scaling(series: dict[str, dict[int, float]], path: str | Path, ylabel: str, title: str = "") -> Path:
    """A log-log plot of one cost against the length, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for name, points in series.items():
        lengths = sorted(points)
        axes.plot(lengths, [points[n] for n in lengths], marker="o", label=name)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("sequence length T")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path



def scaling_section(model: CausalLM, lengths: Sequence[int], new_tokens: int = 8) -> tuple[str, dict[str, float]]:
    """A trained model's costs at each length, as a report section and metrics: training
    seconds and saved MiB per forward-backward pass, generation ms per token and state KiB
    after that context. What would run past the model's ``max_context`` is n/a. The metric
    ``time_slope`` is the fitted slope of training time over the lengths it could read."""
    limit = model.max_context or math.inf
    lines = [f"{'T':>7} {'train s':>9} {'saved MiB':>10} {'ms/token':>9} {'state KiB':>10}"]
    readable, seconds = [], []
    for length in lengths:
        cells = [f"{length:7,}"]
        if length <= limit:
            train = training_cost(model, length, repeats=1)
            readable.append(length)
            seconds.append(train["seconds"])
            cells += [f"{train['seconds']:9.3f}", f"{train['saved_bytes'] / 2**20:10.1f}"]
        else:
            cells += [f"{'n/a':>9}", f"{'n/a':>10}"]
        if length + new_tokens <= limit:
            generate = generation_cost(model, length, new_tokens)
            cells += [f"{generate['seconds_per_token'] * 1e3:9.2f}", f"{generate['state_bytes'] / 2**10:10.0f}"]
        else:
            cells += [f"{'n/a':>9}", f"{'n/a':>10}"]
        lines.append(" ".join(cells))
    if model.max_context is not None:
        lines.append(f"n/a: past the model's max_context of {model.max_context} positions")
    model.eval()
    metrics = {}
    if len(readable) >= 2:
        metrics["time_slope"] = fitted_slope(readable, seconds)
        lines.append(f"fitted slope of log time on log T: {metrics['time_slope']:.2f} (1: linear, 2: quadratic)")
    return "\n".join(lines), metrics
