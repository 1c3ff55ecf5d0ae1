"""Gradient diagnostics for recurrent models: how far back does the loss reach?

``gradient_flow`` measures || dLoss / dh_t || for every time step t of the first
``Recurrent`` layer's outputs (the top layer of its stack), averaged over the batch. When the
loss sits at the end of the sequence, as in the adding problem, the gradient at an early t
has only the recurrence to travel through: a product of Jacobians dh_{k+1}/dh_k, which for an
Elman network with W_hh of spectral radius below one shrinks geometrically (Bengio et al.
1994; Pascanu et al. 2013), while the LSTM's additive cell path keeps it (Hochreiter and
Schmidhuber 1997). ``spectral_radius`` reports max |eigenvalue| of each layer's recurrent
matrix: W_hh for Elman and Jordan, its candidate block (W_hg for the LSTM, W_hn for the GRU)
for the gated cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.layers.recurrent import Recurrent


@dataclass
class GradientFlow:
    """Per-step gradient norms (T,) and the spectral radius of each recurrent matrix."""

    norms: Tensor
    spectral_radius: list[float]


def recurrent_layer(model: nn.Module) -> Recurrent:
    """The first ``Recurrent`` stack inside ``model``."""
    for module in model.modules():
        if isinstance(module, Recurrent):
            return module
    raise ConfigError(f"{type(model).__name__} has no recurrent layer to diagnose")


def recurrent_matrices(layer: Recurrent) -> list[Tensor]:
    """The square recurrent matrix of each layer and direction (see the module docstring)."""
    hidden = layer.hidden_size
    if layer.fused:
        weights = [w for name, w in layer.module.named_parameters() if name.startswith("weight_hh")]
    else:
        weights = [cell.weight_hh for cell in layer.cells]
    block = {"elman": 0, "jordan": 0, "lstm": 2, "gru": 2}[layer.kind]    # the candidate rows
    return [w.detach()[block * hidden:(block + 1) * hidden] for w in weights]


def gradient_flow(model: nn.Module, batch: Any, loss_fn: Callable[[nn.Module, Any], Tensor]) -> GradientFlow:
    """|| dLoss / dh_t || at every step t of the model's recurrent stack, and spectral radii.

    h_t is the top layer's forward state at step t, and the gradient is the total one: through
    the output at t and through every later step. A fused torch kernel hides its steps, so the
    layer is swapped, for this measurement only, for the same weights on our unrolled cells.

    Args:
        model: contains a ``seqlab.layers.recurrent.Recurrent`` stack.
        batch: what ``loss_fn`` takes.
        loss_fn: ``(model, batch) -> scalar loss``, e.g. a task's ``loss``.
    Returns:
        the batch-averaged gradient norm per step (T,), and the spectral radius of every
        recurrent matrix. The model's parameters and their gradients are left as they were.
    """
    layer = recurrent_layer(model)
    parent, attribute = _parent_of(model, layer)
    probe = layer.unfused()
    probe.record = []
    setattr(parent, attribute, probe)
    saved = [p.grad for p in model.parameters()]
    try:
        loss_fn(model, batch).backward()
    finally:
        setattr(parent, attribute, layer)
        for parameter, grad in zip(model.parameters(), saved):
            parameter.grad = grad
    norms = torch.stack([h.grad.norm(dim=-1).mean(dim=0) for h in probe.record])   # (T,)
    radii = [torch.linalg.eigvals(w.double()).abs().max().item() for w in recurrent_matrices(layer)]
    return GradientFlow(norms.detach().cpu(), radii)


def _parent_of(model: nn.Module, child: nn.Module) -> tuple[nn.Module, str]:
    for name, module in model.named_modules():
        for attribute, candidate in module.named_children():
            if candidate is child:
                return module, attribute
    raise ConfigError("the recurrent layer must be a submodule of the model")


def plot_gradient_flow(flows: dict[str, GradientFlow], path: str | Path, title: str = "") -> Path:
    """One line per label: gradient norm against time step, log scale; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label, flow in flows.items():
        radius = ", ".join(f"{r:.2f}" for r in flow.spectral_radius)
        axis.semilogy(flow.norms.clamp_min(1e-30).numpy(), label=f"{label} (spectral radius {radius})")
    axis.set_xlabel("time step t")
    axis.set_ylabel("|| dLoss / dh_t ||")
    axis.set_title(title or "Gradient flow back through time")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
