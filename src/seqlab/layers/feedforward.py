"""The position-wise feed-forward network of a Transformer block.

Plain (Vaswani et al. 2017, eq. 2, with the activation as a choice):

    FFN(x) = W_down act(W_up x + b_up) + b_down,

act one of ReLU, exact GELU  x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))  (Hendrycks and Gimpel
2016; BERT), or its tanh approximation  0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
(GPT-2; torch's ``approximate="tanh"``, HF's ``gelu_new``).

Gated (Shazeer 2020, "GLU Variants Improve Transformer", eqs. 5-6, biases optional here):

    FFN_SwiGLU(x) = W_down (SiLU(W_gate x) * (W_up x)),      SiLU(z) = z sigmoid(z),
    FFN_GEGLU(x)  = W_down (GELU(W_gate x) * (W_up x)),

where Shazeer's W is ``gate`` (the activated branch) and V is ``up`` (the linear branch).
``"geglu"`` uses the exact GELU, as the paper defines it; ``"geglu_tanh"`` uses the tanh
approximation, which is what T5 v1.1 / mT5 (``gated-gelu`` = ``gelu_new``) and Gemma use.

Parameter names, chosen so that checkpoints map one to one:

    ``up``    d_model -> d_hidden: plain W_1; gated V.  HF Llama ``up_proj``, T5 ``wi_1``,
              (plain) GPT-2 ``c_fc`` (a Conv1D: transpose), BERT ``intermediate.dense``.
    ``gate``  d_model -> d_hidden, gated variants only: W, the branch the activation is applied
              to.  HF Llama ``gate_proj``, T5 ``wi_0``.
    ``down``  d_hidden -> d_model: W_2.  HF Llama ``down_proj``, T5 ``wo``, GPT-2 ``c_proj``,
              BERT ``output.dense``.

Dropout (``nn.Dropout``, active only in training) is applied once, to the hidden vector just
before ``down``: after the activation in the plain network, after the product in the gated
ones (as T5's ``T5DenseGatedActDense`` does). The output itself is not dropped: residual
dropout belongs to the block that adds the output to its input.

A gated network has three d_model x d_hidden matrices where a plain one has two; to match a
plain network's parameter count pick d_hidden = 2/3 of the plain width (Shazeer 2020, Llama).

Shapes: any leading dimensions; (*, d_model) -> (*, d_model).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError

Activation = Literal["gelu", "gelu_tanh", "relu", "silu", "swiglu", "geglu", "geglu_tanh"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
GATED_ACTIVATIONS: frozenset[str] = frozenset({"swiglu", "geglu", "geglu_tanh"})


def _activation_fn(activation: str) -> Callable[[Tensor], Tensor]:
    """The elementwise nonlinearity of ``activation`` as a torch function."""
    if activation in ("gelu", "geglu"):
        return F.gelu
    if activation in ("gelu_tanh", "geglu_tanh"):
        return lambda z: F.gelu(z, approximate="tanh")
    if activation == "relu":
        return F.relu
    return F.silu  # silu (Swish), swiglu


class FeedForward(nn.Module):
    """Position-wise feed-forward network, plain or gated; see the module docstring for the math.

    Args:
        d_model: width of the input and the output.
        d_hidden: width of the hidden layer (of each branch, for gated variants).
        activation: ``"relu"``, ``"gelu"`` (exact, erf), ``"gelu_tanh"`` (tanh approximation)
            for the plain network; ``"swiglu"``, ``"geglu"`` (exact GELU), ``"geglu_tanh"``
            (tanh GELU, T5 v1.1) for the gated one.
        dropout: probability of zeroing a hidden unit in training, applied just before ``down``.
        bias: whether ``up``, ``gate`` and ``down`` have biases (Llama and T5 v1.1 have none).
    Raises:
        ConfigError: unknown activation, non-positive sizes, dropout outside [0, 1).
    """

    def __init__(self, d_model: int, d_hidden: int, activation: Activation, dropout: float = 0.0,
                 bias: bool = True):
        super().__init__()
        for name, value in (("d_model", d_model), ("d_hidden", d_hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"FeedForward {name} must be a positive integer, got {value!r}")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown FeedForward activation {activation!r}; "
                              f"choose one of {', '.join(ACTIVATIONS)}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ConfigError(f"FeedForward dropout must be in [0, 1), got {dropout!r}")
        self.d_model = d_model
        self.d_hidden = d_hidden
        self.activation = activation
        self.gated = activation in GATED_ACTIVATIONS
        self.up = nn.Linear(d_model, d_hidden, bias=bias)
        self.gate = nn.Linear(d_model, d_hidden, bias=bias) if self.gated else None
        self.down = nn.Linear(d_hidden, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()    # no call when off
        self._act = _activation_fn(activation)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Apply the network to every position independently.

        Args:
            x: (*, d_model) inputs.
            mask: ignored (every position is independent); accepted so that a block calls any
                feed-forward, a mixture of experts included, the same way.
        Returns:
            (*, d_model) outputs.
        """
        if self.gate is not None:
            hidden = self._act(self.gate(x)) * self.up(x)                      # (*, d_hidden)
        else:
            hidden = self._act(self.up(x))                                     # (*, d_hidden)
        return self.down(self.dropout(hidden))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


def _linear_ref(x: Tensor, layer: nn.Linear) -> Tensor:
    """x W^T + b, written out."""
    y = x @ layer.weight.T
    return y if layer.bias is None else y + layer.bias


def _activation_ref(activation: str, z: Tensor) -> Tensor:
    """The nonlinearity from its formula, not from torch's fused kernels."""
    if activation in ("gelu", "geglu"):
        return 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))
    if activation in ("gelu_tanh", "geglu_tanh"):
        return 0.5 * z * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))
    if activation == "relu":
        return torch.where(z > 0, z, torch.zeros_like(z))
    return z * torch.sigmoid(z)  # swiglu: SiLU


def feedforward_ref(x: Tensor, module: FeedForward) -> Tensor:
    """The specification of :class:`FeedForward`: its equations with explicit matmuls.

    Computes the dropout-free map (what the module computes in eval mode), reading the weights
    of ``module``.

    Args:
        x: (*, d_model) inputs.
        module: the network whose parameters are used.
    Returns:
        (*, d_model) ``W_down act(W_up x + b_up) + b_down`` or, gated,
        ``W_down (act(W_gate x + b_gate) * (W_up x + b_up)) + b_down``.
    """
    up = _linear_ref(x, module.up)                                             # (*, d_hidden)
    if module.gate is not None:
        hidden = _activation_ref(module.activation, _linear_ref(x, module.gate)) * up
    else:
        hidden = _activation_ref(module.activation, up)
    return _linear_ref(hidden, module.down)                                    # (*, d_model)
