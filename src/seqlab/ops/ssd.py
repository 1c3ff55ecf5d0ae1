"""State space duality (Dao and Gu 2024, "Transformers are SSMs", sections 3-6): the SSM of
Mamba-2, whose A is a scalar times the identity per head, computed three ways.

Per head h (of width P, with the B and C of its group g(h), state size N):

    h_t = exp(Delta_t A_h) h_{t-1} + Delta_t x_t B_t^T          (P, N)
    y_t = h_t C_t + D_h x_t                                    (P,)

Because the decay is one scalar per head and step, the map x -> y is a masked, attention-like
matrix (the paper's eq. 4-6, the "1-semiseparable" matrix):

    y_t = sum_{s <= t} (C_t . B_s) exp(cum_t - cum_s) Delta_s x_s,      cum_t = sum_{r <= t} Delta_r A_h.

- ``ssd_ref``: the recurrence, one ``ssd_step`` per time step (the specification).
- ``ssd_quadratic``: the masked matrix form over the whole sequence, O(T^2) (the "attention" view).
- ``ssd_chunked``: the paper's chunked algorithm (section 6, Listing 1): the quadratic form within
  each chunk of ``chunk_size`` steps (matrix products), the state passed from chunk to chunk by
  the linear recurrence, and each chunk's outputs from its starting state. O(T chunk_size)
  work in matrix multiplications. The last chunk is simply shorter; nothing is padded.

All three take an ``initial_state`` and return ``(y, final_state)``; exponents are always of
cum_t - cum_s with s <= t (never positive), so nothing overflows at any length. They compute in
float32 (float64 inputs stay float64), with autocast off.

Shapes: B batch, T time, H heads, P head width, G groups (dividing H), N state size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqlab.errors import ConfigError
from seqlab.ops.scan import full_precision

DEFAULT_CHUNK_SIZE = 64


def ssd_step(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, state: Tensor
             ) -> tuple[Tensor, Tensor]:
    """One step.

    Args:
        x: (B, H, P).  dt: (B, H) positive steps.  A: (H,) negative.
        B, C: (B, G, N).  D: (H,) or None.  state: (B, H, P, N).
    Returns:
        y (B, H, P) and the new state (B, H, P, N).
    """
    heads_per_group = x.shape[1] // B.shape[1]
    B, C = B.repeat_interleave(heads_per_group, dim=1), C.repeat_interleave(heads_per_group, dim=1)   # (B, H, N)
    decay = torch.exp(dt * A)                                                     # (B, H)
    state = decay[..., None, None] * state + (dt[..., None] * x)[..., None] * B[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", state, C)
    return (y if D is None else y + D[:, None] * x), state


def _prepared(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
              initial_state: Tensor | None) -> tuple[Tensor, ...]:
    """Check the shapes; cast to the compute dtype; zeros for a missing initial state."""
    if x.dim() != 4:
        raise ConfigError(f"SSD: x must be (B, T, H, P), got {tuple(x.shape)}")
    batch, length, heads, width = x.shape
    if dt.shape != (batch, length, heads):
        raise ConfigError(f"SSD: dt must be (B, T, H) = {(batch, length, heads)}, got {tuple(dt.shape)}")
    if A.shape != (heads,) or (D is not None and D.shape != (heads,)):
        raise ConfigError(f"SSD: A and D must be (H,) = ({heads},), got {tuple(A.shape)} and "
                          f"{None if D is None else tuple(D.shape)}")
    if B.dim() != 4 or B.shape[:2] != (batch, length) or C.shape != B.shape or heads % B.shape[2]:
        raise ConfigError(f"SSD: B and C must be (B, T, G, N) with G dividing H={heads}, got "
                          f"{tuple(B.shape)} and {tuple(C.shape)}")
    size = B.shape[3]
    if initial_state is not None and initial_state.shape != (batch, heads, width, size):
        raise ConfigError(f"SSD: initial_state must be (B, H, P, N) = {(batch, heads, width, size)}, "
                          f"got {tuple(initial_state.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if initial_state is None:
        initial_state = x.new_zeros(batch, heads, width, size, dtype=dtype)
    cast = [t.to(dtype) for t in (x, dt, A, B, C)]
    return (*cast, None if D is None else D.to(dtype), initial_state.to(dtype))


@full_precision
def ssd_ref(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
            initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The recurrence, by a loop over time.

    Args:
        x: (B, T, H, P).  dt: (B, T, H).  A: (H,).  B, C: (B, T, G, N).  D: (H,) or None.
        initial_state: (B, H, P, N); None is zeros.
    Returns:
        y (B, T, H, P) and the final state (B, H, P, N).
    """
    x, dt, A, B, C, D, state = _prepared(x, dt, A, B, C, D, initial_state)
    outputs = []
    for t in range(x.shape[1]):
        y, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], D, state)
        outputs.append(y)
    return torch.stack(outputs, dim=1), state


def segment_sums(log_decay: Tensor) -> Tensor:
    """gaps[..., t, s] = sum_{s < r <= t} log_decay[..., r] for s <= t, and -inf above the
    diagonal (so exp(gaps) is the causal decay matrix). Each entry sums its own terms (a cumsum
    down the columns of the masked matrix), not cum_t - cum_s: that difference of two large
    sums would cost float32 its digits once a chunk's log-decay reaches the hundreds.

    Args:
        log_decay: (..., L).
    Returns:
        (..., L, L).
    """
    length = log_decay.shape[-1]
    lower = torch.ones(length, length, dtype=torch.bool, device=log_decay.device).tril()
    terms = log_decay[..., :, None].expand(*log_decay.shape, length).masked_fill(~lower.tril(-1), 0.0)
    return terms.cumsum(dim=-2).masked_fill(~lower, -torch.inf)


def _segment(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, start: Tensor) -> tuple[Tensor, Tensor]:
    """The masked quadratic form over one segment of L steps, from the state ``start``: its
    outputs without the D term (B, L, H, P) and its final state (B, H, P, N)."""
    heads_per_group = x.shape[2] // B.shape[2]
    B, C = B.repeat_interleave(heads_per_group, dim=2), C.repeat_interleave(heads_per_group, dim=2)   # (B, L, H, N)
    log_decay = (dt * A).transpose(1, 2)                                           # (B, H, L)
    gaps = segment_sums(log_decay)                                                 # (B, H, L, L)
    weights = torch.einsum("bthn,bshn->bhts", C, B) * torch.exp(gaps)
    inputs = x * dt[..., None]                                                     # (B, L, H, P)
    within = torch.einsum("bhts,bshp->bthp", weights, inputs)
    from_start = torch.exp(torch.cumsum(log_decay, dim=-1)).transpose(1, 2)       # (B, L, H)
    to_end = torch.exp(gaps[..., -1, :]).transpose(1, 2)                           # (B, L, H)
    final = (from_start[:, -1, :, None, None] * start
             + torch.einsum("bshp,bshn->bhpn", inputs * to_end[..., None], B))
    return within + torch.einsum("bthn,bhpn->bthp", C, start) * from_start[..., None], final


@full_precision
def ssd_quadratic(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                  initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The masked matrix form over the whole sequence (arguments as ``ssd_ref``): O(T^2)."""
    x, dt, A, B, C, D, state = _prepared(x, dt, A, B, C, D, initial_state)
    y, state = _segment(x, dt, A, B, C, state)
    return (y if D is None else y + D[:, None] * x), state


@full_precision
def ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                initial_state: Tensor | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
                ) -> tuple[Tensor, Tensor]:
    """The chunked algorithm (arguments as ``ssd_ref``; ``chunk_size`` steps per chunk)."""
    if chunk_size < 1:
        raise ConfigError(f"SSD: chunk_size must be >= 1, got {chunk_size}")
    x, dt, A, B, C, D, state = _prepared(x, dt, A, B, C, D, initial_state)
    outputs = []
    # split, not a slice per chunk: a slice's backward writes into a zero tensor of the whole
    # length, which would make the backward pass quadratic in T.
    for pieces in zip(*(tensor.split(chunk_size, dim=1) for tensor in (x, dt, B, C))):
        y, state = _segment(*pieces[:2], A, *pieces[2:], state)
        outputs.append(y)
    y = torch.cat(outputs, dim=1)
    return (y if D is None else y + D[:, None] * x), state
