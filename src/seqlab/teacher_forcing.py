"""Teacher forcing and scheduled sampling for encoder-decoders (Bengio et al. 2015).

Under teacher forcing the decoder reads the gold previous token y_{t-1}; at test time it reads
its own. Scheduled sampling closes that gap during training: at each decoder step the input is
the gold token with probability eps_i and a token sampled from the model's own next-token
distribution otherwise, where eps_i decays with the training step i (sec. 2.4 of the paper):

- linear:          eps_i = max(eps_min, k - c i)
- exponential:     eps_i = max(eps_min, k^i)                (k < 1)
- inverse sigmoid: eps_i = max(eps_min, k / (k + exp(i / k)))   (k >= 1)

The sampling probability ``1 - eps_i`` is what the training log records.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from seqlab.contracts import EncoderDecoder
from seqlab.errors import ConfigError

Decay = Literal["none", "linear", "exponential", "inverse_sigmoid"]
DECAYS = ("none", "linear", "exponential", "inverse_sigmoid")


def check_decay(decay: str, k: float, c: float, minimum: float) -> None:
    """ConfigError unless the schedule's constants make sense for ``decay``."""
    if decay not in DECAYS:
        raise ConfigError(f"unknown scheduled-sampling decay {decay!r}; choose one of {', '.join(DECAYS)}")
    if not 0.0 <= minimum <= 1.0:
        raise ConfigError(f"the least teacher-forcing probability must be in [0, 1], got {minimum}")
    if decay == "linear" and not (0 < k <= 1 and c >= 0):
        raise ConfigError(f"linear decay needs 0 < k <= 1 and c >= 0, got k={k}, c={c}")
    if decay == "exponential" and not 0 < k < 1:
        raise ConfigError(f"exponential decay needs 0 < k < 1, got k={k}")
    if decay == "inverse_sigmoid" and not k >= 1:
        raise ConfigError(f"inverse-sigmoid decay needs k >= 1, got k={k}")


def teacher_forcing_probability(decay: Decay, step: int, *, k: float, c: float = 0.0, minimum: float = 0.0) -> float:
    """eps_i, the probability that the decoder reads the gold token at training step ``step``."""
    if decay == "none":
        return 1.0
    if decay == "linear":
        eps = k - c * step
    elif decay == "exponential":
        eps = k ** step
    else:
        eps = k / (k + math.exp(min(step / k, 700.0)))              # exp(700) is near float's top
    return max(minimum, eps)


def scheduled_sampling_logits(model: EncoderDecoder, src: Tensor, src_mask: Tensor, tgt_in: Tensor,
                              teacher_forcing: float) -> Tensor:
    """Next-token logits of ``tgt_in`` where each decoder input after BOS is the gold token with
    probability ``teacher_forcing`` and otherwise a token drawn from the model's distribution at
    the step before (no gradient flows through the draw).

    Args:
        src, src_mask, tgt_in: as in ``EncoderDecoder.forward``.
        teacher_forcing: eps in [0, 1]; 1 is plain teacher forcing (the parallel view).
    Returns:
        (B, T, V) logits.
    """
    if teacher_forcing >= 1.0:
        return model(src, src_mask, tgt_in)
    state = model.init_state(src.shape[0], model.encode(src, src_mask))
    token, all_logits = tgt_in[:, 0], []
    for t in range(tgt_in.shape[1]):
        logits, state = model.step(token, state)
        all_logits.append(logits)
        if t + 1 < tgt_in.shape[1]:
            drawn = torch.multinomial(torch.softmax(logits.detach().float(), dim=-1), 1).squeeze(-1)   # (B,)
            gold = torch.rand(drawn.shape, device=drawn.device) < teacher_forcing
            token = torch.where(gold, tgt_in[:, t + 1], drawn)
    return torch.stack(all_logits, dim=1)
