"""Normalisation layers of a Transformer block: LayerNorm and RMSNorm.

LayerNorm (Ba, Kiros and Hinton 2016) centres and rescales each feature vector:

    y = (x - mean(x)) / sqrt(var(x) + eps) * g + b,

with the mean and (biased) variance taken over the last dimension of size D. It is torch's
``nn.LayerNorm``; ``bias=False`` drops ``b`` (as in OLMo, PaLM and nanoGPT's option).

RMSNorm (Zhang and Sennrich 2019, "Root Mean Square Layer Normalization", eq. 4) drops the
centring and the bias and rescales by the root mean square alone:

    y = x / sqrt(mean(x^2) + eps) * g,        mean over the last dimension.

Inputs in a lower precision (bf16, fp16) are normalised in float32 and cast back before the
gain is applied, as Hugging Face's ``LlamaRMSNorm`` does, so a Llama checkpoint gives the
same numbers here; the sum of D squares in bf16 would lose most of its bits.

Shapes: any leading dimensions ``(*, D)``; the output has the shape of the input.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError

NormKind = Literal["layernorm", "rmsnorm"]
NORM_KINDS: tuple[str, ...] = get_args(NormKind)

# Defaults of the reference implementations: torch's LayerNorm and HF Llama's RMSNorm.
DEFAULT_EPS: dict[str, float] = {"layernorm": 1e-5, "rmsnorm": 1e-6}


class RMSNorm(nn.Module):
    """Root-mean-square normalisation with a learned gain ``weight`` (g), initialised to ones.

    Args:
        d_model: D, the size of the normalised last dimension.
        eps: added to mean(x^2) under the square root, so a zero vector maps to zero.
    """

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model <= 0:
            raise ConfigError(f"RMSNorm d_model must be a positive integer, got {d_model!r}")
        if not eps > 0:
            raise ConfigError(f"RMSNorm eps must be positive, got {eps!r}")
        self.d_model = d_model
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` over its last dimension.

        Args:
            x: (*, D) inputs of any floating dtype.
        Returns:
            (*, D) ``weight * (x / sqrt(mean(x^2) + eps))``; the normalised term is computed in
            float32 (float64 inputs stay float64) and cast to ``x.dtype`` before the gain, whose
            dtype then decides the result's by the usual promotion (HF Llama's order).
        """
        input_dtype = x.dtype
        compute_dtype = torch.float64 if input_dtype == torch.float64 else torch.float32
        x = x.to(compute_dtype)
        mean_square = x.pow(2).mean(dim=-1, keepdim=True)                  # (*, 1)
        normalised = x * torch.rsqrt(mean_square + self.eps)                # (*, D)
        return self.weight * normalised.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}"


def make_norm(kind: NormKind, d_model: int, eps: float | None = None, bias: bool = True) -> nn.Module:
    """Build the normalisation layer named by ``kind``.

    Args:
        kind: ``"layernorm"`` (torch's ``nn.LayerNorm``, gain and optional bias) or
            ``"rmsnorm"`` (:class:`RMSNorm`, gain only).
        d_model: D, the size of the normalised last dimension.
        eps: the stabiliser under the square root; None takes the kind's usual default
            (1e-5 for LayerNorm as in torch and GPT-2, 1e-6 for RMSNorm as in Llama).
        bias: LayerNorm only: whether it has the additive ``bias`` parameter. RMSNorm has no
            bias, so ``bias=True`` is ignored there and ``bias=False`` changes nothing.
    Returns:
        The module; it maps (*, D) to (*, D).
    Raises:
        ConfigError: ``kind`` is not one of ``NORM_KINDS``.
    """
    if kind not in NORM_KINDS:
        raise ConfigError(f"unknown norm kind {kind!r}; choose one of {', '.join(NORM_KINDS)}")
    if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model <= 0:
        raise ConfigError(f"norm d_model must be a positive integer, got {d_model!r}")
    eps = DEFAULT_EPS[kind] if eps is None else eps
    if kind == "layernorm":
        if not eps > 0:
            raise ConfigError(f"LayerNorm eps must be positive, got {eps!r}")
        return nn.LayerNorm(d_model, eps=eps, bias=bias)
    return RMSNorm(d_model, eps=eps)
