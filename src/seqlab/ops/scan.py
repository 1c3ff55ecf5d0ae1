"""The selective scan of Mamba (Gu and Dao 2023, Algorithm 2 and eq. 2a-2b, with the zero-order
hold of A and the Euler step of B that their kernel uses):

    h_t = exp(Delta_t A) * h_{t-1} + Delta_t B_t x_t          (per channel d and state n)
    y_t = C_t . h_t + D x_t

over channels d < Dn with a diagonal A (Dn, N), input-dependent step sizes Delta (B, T, Dn) and
input-dependent B, C (B, T, N) shared by the channels. With Delta constant over time and B, C
fixed it is the linear time-invariant diagonal SSM of S4D (Gu et al. 2022).

- ``selective_scan_ref``: the loop over time, one ``selective_scan_step`` at a time. The
  specification, and what a recurrent step runs.
- ``selective_scan``: the same numbers by chunks of ``chunk_size`` steps. Within a chunk every
  state comes from a log-depth (Hillis and Steele 1986) scan of the linear recurrence, whose
  composed decays are products of factors in (0, 1], so nothing can overflow at any length;
  across chunks the last state carries over, in a loop of T / chunk_size iterations. The last
  chunk is simply shorter: nothing is padded. Its backward pass is written out (the adjoint
  recurrence g_t = C_t dy_t + exp(Delta_{t+1} A) g_{t+1} runs backwards through the same chunks)
  and recomputes each chunk's states from the state saved at the chunk's start, so training
  keeps O(B T Dn) activations and (B, T / chunk_size, Dn, N) states instead of the (B, T, Dn, N)
  tensor of every state that autograd through the loop would hold.

Both return ``(y, final_state)`` and accept an ``initial_state``: running a sequence in pieces,
each piece starting from the last one's final state, gives the numbers of one pass. Both compute
in float32 (float64 inputs stay float64), with autocast off: under bf16 autocast the scan is not
where the precision is lost.

Shapes: B batch, T time, Dn channels, N state size.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch
from torch import Tensor

from seqlab.errors import ConfigError

CHUNK_BYTES = 2 * 2**20      # the automatic chunk's states: about a cache's worth
MAX_CHUNK_SIZE = 64


def automatic_chunk_size(batch: int, channels: int, size: int, element_bytes: int = 4) -> int:
    """The power of two (1 to ``MAX_CHUNK_SIZE``) of steps whose states fill about
    ``CHUNK_BYTES``: the scan is bound by memory traffic, and a chunk that stays in cache is
    several times faster than one that does not (at batch 32, Di 256, N 16 on this CPU, 4
    steps take two thirds of the time of 16), while a longer chunk means fewer Python steps."""
    steps = CHUNK_BYTES // max(batch * channels * size * element_bytes, 1)
    return max(1, min(MAX_CHUNK_SIZE, 1 << max(int(steps).bit_length() - 1, 0)))


def full_precision(scan: Callable) -> Callable:
    """Run ``scan(x, ...)`` with autocast off on ``x``'s device: a scan computes in float32
    (its exponentials and long sums would lose most of their bits in bf16)."""

    @functools.wraps(scan)
    def wrapper(x: Tensor, *args, **kwargs):
        device_type = x.device.type
        off = torch.autocast(device_type, enabled=False) if device_type in ("cpu", "cuda") else contextlib.nullcontext()
        with off:
            return scan(x, *args, **kwargs)

    return wrapper


def selective_scan_step(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                        state: Tensor) -> tuple[Tensor, Tensor]:
    """One step of the recurrence.

    Args:
        x, delta: (B, Dn) the input and the (positive) step size.
        A: (Dn, N) the diagonal state matrix (negative entries for a stable system).
        B, C: (B, N).
        D: (Dn,) the skip connection, or None.
        state: (B, Dn, N) h_{t-1}.
    Returns:
        y_t (B, Dn) and h_t (B, Dn, N).
    """
    state = torch.exp(delta[:, :, None] * A) * state + (delta * x)[:, :, None] * B[:, None, :]
    y = (state * C[:, None, :]).sum(dim=-1)
    return (y if D is None else y + D * x), state


@full_precision
def selective_scan_ref(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                       initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The selective scan by a loop over time (the specification).

    Args:
        x, delta: (B, T, Dn).
        A: (Dn, N).
        B, C: (B, T, N).
        D: (Dn,) or None.
        initial_state: (B, Dn, N) h_{-1}; None is zeros.
    Returns:
        y (B, T, Dn) and the final state h_{T-1} (B, Dn, N), in the compute dtype.
    """
    x, delta, A, B, C, D, state = _prepared(x, delta, A, B, C, D, initial_state)
    outputs = []
    for t in range(x.shape[1]):
        y, state = selective_scan_step(x[:, t], delta[:, t], A, B[:, t], C[:, t], D, state)
        outputs.append(y)
    return torch.stack(outputs, dim=1), state


def linear_scan_(decay: Tensor, states: Tensor, initial: Tensor, reverse: bool = False) -> Tensor:
    """Every state of the linear recurrence

        h_t = decay_t * h_{t-1} + inputs_t,  h_{-1} = initial       (reverse: h_t = decay_t * h_{t+1}
                                                                     + inputs_t, h_L = initial)

    in place, by Blelloch's work-efficient scan (Blelloch 1990, "Prefix sums and their
    applications", sec. 1.4) of the pairs (decay, input) under (a, x) . (a', x') = (a a', a' x + x'):
    an up-sweep combines neighbours at strides 2, 4, ..., L (after it, position i holds the
    recurrence over its own segment, from just after i - lowbit(i + 1), and ``decay`` that
    segment's product), and a down-sweep completes every position from the finished prefix
    before its segment. 2 log2(L) steps and O(L) work, no loop over time; for decays in [0, 1]
    every product stays there, so nothing overflows at any length. A length that is not a power
    of two is extended at the end with decay 1 and input 0, which changes none of the first L
    states (and, scanning in reverse, passes ``initial`` through unchanged).

    Not differentiable by autograd (it writes over its arguments): ``selective_scan`` runs it
    inside its own forward and backward passes.

    Args:
        decay: (B, L, ...) the factors; overwritten.
        states: (B, L, ...) the inputs; overwritten with the states.
        initial: (B, ...) the state before the first step (after the last, in reverse).
        reverse: run the recurrence from the last position to the first.
    Returns:
        (B, L, ...) the states: ``states`` itself when L is a power of two.
    """
    length = states.shape[1]
    first = -1 if reverse else 0
    states[:, first] += decay[:, first] * initial
    size = 1 << (length - 1).bit_length()
    if size != length:
        pad = (states.shape[0], size - length, *states.shape[2:])
        decay = torch.cat([decay, decay.new_ones(pad)], dim=1)
        states = torch.cat([states, states.new_zeros(pad)], dim=1)
    # Each update reads elements it does not write (disjoint strided views).
    half = 1
    while half < size:                                                    # up-sweep
        stride = 2 * half
        later, earlier = ((slice(0, None, stride), slice(half, None, stride)) if reverse else
                          (slice(stride - 1, None, stride), slice(half - 1, None, stride)))
        states[:, later] += decay[:, later] * states[:, earlier]
        if stride < size:
            decay[:, later] *= decay[:, earlier]
        half = stride
    half = size // 4
    while half >= 1:                                                      # down-sweep
        stride = 2 * half
        count = size // stride - 1
        later, earlier = ((slice(half, size - stride, stride), slice(stride, None, stride)) if reverse else
                          (slice(stride + half - 1, None, stride), slice(stride - 1, size - stride, stride)))
        states[:, later] += decay[:, later] * states[:, earlier][:, :count]
        half //= 2
    return states[:, :length]


def _prepared(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
              initial_state: Tensor | None) -> tuple[Tensor, ...]:
    """Check the shapes; cast to the compute dtype; zeros for a missing initial state."""
    if x.dim() != 3 or delta.shape != x.shape:
        raise ConfigError(f"selective scan: x and delta must both be (B, T, Dn), got {tuple(x.shape)} "
                          f"and {tuple(delta.shape)}")
    batch, length, channels = x.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise ConfigError(f"selective scan: A must be (Dn={channels}, N), got {tuple(A.shape)}")
    size = A.shape[1]
    for name, tensor in (("B", B), ("C", C)):
        if tensor.shape != (batch, length, size):
            raise ConfigError(f"selective scan: {name} must be (B, T, N) = {(batch, length, size)}, "
                              f"got {tuple(tensor.shape)}")
    if D is not None and D.shape != (channels,):
        raise ConfigError(f"selective scan: D must be (Dn,) = ({channels},), got {tuple(D.shape)}")
    if initial_state is not None and initial_state.shape != (batch, channels, size):
        raise ConfigError(f"selective scan: initial_state must be (B, Dn, N) = {(batch, channels, size)}, "
                          f"got {tuple(initial_state.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if initial_state is None:
        initial_state = x.new_zeros(batch, channels, size, dtype=dtype)
    cast = [t.to(dtype) for t in (x, delta, A, B, C)]
    return (*cast, None if D is None else D.to(dtype), initial_state.to(dtype))


# The fast path keeps states as (B, L, N, Dn): channels innermost, so that the sums over the
# state index are sums of contiguous rows (several times faster on a CPU than (B, L, Dn, N)).

def _chunk_states(delta: Tensor, x: Tensor, A_t: Tensor, B: Tensor, start: Tensor) -> tuple[Tensor, Tensor]:
    """The decays exp(Delta A) of one chunk and its states, both (B, L, N, Dn); ``A_t`` is A
    transposed (N, Dn), ``start`` the state before the chunk (B, N, Dn)."""
    decay = torch.exp(delta[:, :, None, :] * A_t)
    inputs = (delta * x)[:, :, None, :] * B[..., None]
    return decay, linear_scan_(decay.clone(), inputs, start)


def _read_out(C: Tensor, states: Tensor) -> Tensor:
    """sum_n C[b, l, n] states[b, l, n, d] -> (B, L, Dn)."""
    return (C[:, :, None, :] @ states).squeeze(2)


class _ChunkedSelectiveScan(torch.autograd.Function):
    """``selective_scan`` with its backward pass written out (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                initial_state: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
        A_t = A.t()
        outputs, starts = [], []
        state = initial_state.transpose(1, 2)                                          # (B, N, Dn)
        for begin in range(0, x.shape[1], chunk_size):
            part = slice(begin, begin + chunk_size)
            starts.append(state)
            _, states = _chunk_states(delta[:, part], x[:, part], A_t, B[:, part], state)
            outputs.append(_read_out(C[:, part], states))
            state = states[:, -1]
        y = torch.cat(outputs, dim=1)
        if D is not None:
            y = y + D * x
        ctx.save_for_backward(x, delta, A, B, C, D, torch.stack(starts, dim=1))
        ctx.chunk_size = chunk_size
        return y, state.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_y: Tensor, grad_final: Tensor) -> tuple[Tensor | None, ...]:
        return (*_scan_backward(*ctx.saved_tensors, ctx.chunk_size, grad_y, grad_final), None)


@full_precision         # the backward pass may run inside the caller's autocast region
def _scan_backward(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, starts: Tensor,
                   chunk_size: int, grad_y: Tensor | None, grad_final: Tensor | None) -> tuple[Tensor | None, ...]:
    """The gradients of ``selective_scan``'s inputs, chunk by chunk from the last."""
    n_chunks = -(-x.shape[1] // chunk_size)
    A_t = A.t()
    grad_y = torch.zeros_like(x) if grad_y is None else grad_y
    # carry is exp(Delta_{t+1} A) g_{t+1} for the chunk's last step t: what reaches h_t from
    # after the chunk (the final state's gradient, for the last chunk).
    carry = torch.zeros_like(starts[:, 0]) if grad_final is None else grad_final.transpose(1, 2)
    grad_x, grad_delta = torch.empty_like(x), torch.empty_like(delta)
    grad_B, grad_C = torch.empty_like(B), torch.empty_like(C)
    grad_A_t = torch.zeros_like(A_t)
    for index in reversed(range(n_chunks)):
        part = slice(index * chunk_size, (index + 1) * chunk_size)
        start = starts[:, index]
        x_c, delta_c, B_c, C_c, dy = x[:, part], delta[:, part], B[:, part], C[:, part], grad_y[:, part]
        decay, states = _chunk_states(delta_c, x_c, A_t, B_c, start)                 # (B, L, N, Dn)
        previous = torch.cat([start[:, None], states[:, :-1]], dim=1)              # h_{t-1}
        # The adjoint recurrence, backwards in time: g_t = C_t dy_t + decay_{t+1} g_{t+1}.
        next_decay = torch.cat([decay[:, 1:], torch.ones_like(decay[:, :1])], dim=1)
        adjoint = linear_scan_(next_decay, C_c[..., None] * dy[:, :, None, :], carry, reverse=True)
        carry = decay[:, 0] * adjoint[:, 0]
        grad_log_decay = adjoint * previous * decay                                # d/d(Delta A)
        grad_A_t += (grad_log_decay * delta_c[:, :, None, :]).sum(dim=(0, 1))
        adjoint_B = _read_out(B_c, adjoint)                                        # sum_n B g
        grad_delta[:, part] = adjoint_B * x_c + (grad_log_decay * A_t).sum(dim=2)
        grad_x[:, part] = adjoint_B * delta_c
        grad_B[:, part] = (adjoint * (delta_c * x_c)[:, :, None, :]).sum(dim=-1)
        grad_C[:, part] = (states * dy[:, :, None, :]).sum(dim=-1)
    grad_D = None
    if D is not None:
        grad_x += grad_y * D
        grad_D = (grad_y * x).sum(dim=(0, 1))
    return grad_x, grad_delta, grad_A_t.t(), grad_B, grad_C, grad_D, carry.transpose(1, 2)


@full_precision
def selective_scan(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   initial_state: Tensor | None = None, chunk_size: int | None = None
                   ) -> tuple[Tensor, Tensor]:
    """The selective scan by chunks: the numbers of ``selective_scan_ref`` (same arguments).

    Args:
        chunk_size: steps per chunk (None: ``automatic_chunk_size``); memory in the backward
            pass is O(B chunk_size Dn N).
    Returns:
        y (B, T, Dn) and the final state (B, Dn, N), in the compute dtype.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"selective scan: chunk_size must be >= 1, got {chunk_size}")
    prepared = _prepared(x, delta, A, B, C, D, initial_state)
    if chunk_size is None:
        chunk_size = automatic_chunk_size(x.shape[0], x.shape[2], A.shape[1], prepared[0].element_size())
    return _ChunkedSelectiveScan.apply(*prepared, chunk_size)
