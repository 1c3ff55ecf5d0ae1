"""Key/value caches: the recurrent state of an attention layer.

A causal attention layer that reads a sequence in pieces (a prompt, then one token per step)
keeps the keys and values of every position it has read, so that a new query attends to them
without recomputing them. Two caches, one interface:

* :class:`KeyValueCache` holds every position, in preallocated buffers that grow by doubling:
  a step writes its own T positions in place and copies nothing else.
* :class:`SlidingKeyValueCache` holds the last ``window`` positions in a ring buffer (Beltagy et
  al. 2020; Mistral's rolling cache): position p lives in slot ``p mod capacity``, so a step
  overwrites the oldest slot in place and the memory stays constant however long generation
  runs. The slots are not in position order; each slot's absolute position is kept beside it
  (-1 while empty) and the attention layer builds its mask and position bias from those, so
  the order of the slots never matters (RoPE keys are rotated before they are stored).

Both expose ``length`` (positions read so far: the absolute position of the next query),
``append(k, v) -> (keys, values)``, ``key_positions()`` (the absolute position of every key
returned, (S,) long, -1 at an empty slot), ``select(rows)`` (beam search) and ``detach()``
(truncated BPTT). They are written in place: the state passed to a model's ``step`` is
consumed by it, as in Hugging Face's caches. Gradients flow through an append into the
attention of the same call; cut them with ``detach()`` before the buffers are written again.

Shapes: B batch, Hkv key/value heads, T new positions, S keys returned, E head dim.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from seqlab.errors import ConfigError, DataError


class KeyValueCache:
    """Keys and values of every position read so far, in preallocated (B, Hkv, capacity, E) buffers.

    :meth:`append` writes the new positions into the buffers in place and returns views of the
    filled part, so a decoding step copies only its own T positions, not the whole cache. When
    an append would pass the capacity (initially ``max_len``), the buffers are reallocated to
    ``max(2 * capacity, length + T)`` positions and the filled part is copied once; the views
    returned earlier stay valid but no longer alias the buffers.

    Args:
        batch: B, rows of the batch.
        n_kv_heads: Hkv, key/value heads.
        max_len: initial capacity in positions (>= 1).
        head_dim: E.
        dtype, device: of the buffers; appended keys and values must match the dtype.
    """

    window: int | None = None

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        if min(batch, n_kv_heads, max_len, head_dim) < 1:
            raise ConfigError(f"{type(self).__name__} sizes must be positive, got batch={batch}, "
                              f"n_kv_heads={n_kv_heads}, max_len={max_len}, head_dim={head_dim}")
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.key_buffer = torch.zeros(shape, dtype=dtype, device=device)             # (B, Hkv, L, E)
        self.value_buffer = torch.zeros(shape, dtype=dtype, device=device)
        self._length = 0

    @property
    def length(self) -> int:
        """The number of positions read so far: the absolute position of the next query."""
        return self._length

    @property
    def capacity(self) -> int:
        """Positions the buffers hold before the next reallocation."""
        return self.key_buffer.shape[2]

    @property
    def batch_size(self) -> int:
        return self.key_buffer.shape[0]

    def keys(self) -> Tensor:
        """(B, Hkv, S, E) view of the filled keys."""
        return self.key_buffer[:, :, : self._length]

    def values(self) -> Tensor:
        """(B, Hkv, S, E) view of the filled values."""
        return self.value_buffer[:, :, : self._length]

    def key_positions(self) -> Tensor:
        """(S,) absolute position of each key that :meth:`keys` returns: 0 .. length - 1."""
        return torch.arange(self._length, device=self.key_buffer.device)

    def _check(self, k: Tensor, v: Tensor) -> None:
        batch, n_kv_heads, _, head_dim = self.key_buffer.shape
        for name, tensor in (("keys", k), ("values", v)):
            if (tensor.dim() != 4 or tensor.shape[0] != batch or tensor.shape[1] != n_kv_heads
                    or tensor.shape[3] != head_dim):
                raise DataError(f"appended {name} have shape {tuple(tensor.shape)}, expected "
                                f"(B, Hkv, T, E) = ({batch}, {n_kv_heads}, T, {head_dim})")
            if tensor.dtype != self.key_buffer.dtype:
                raise DataError(f"appended {name} are {tensor.dtype}, the cache holds "
                                f"{self.key_buffer.dtype}; build the cache with the model's dtype")
        if k.shape[2] != v.shape[2]:
            raise DataError(f"appended keys have {k.shape[2]} positions but values {v.shape[2]}")

    def _reallocate(self, capacity: int, slots: Tensor, new_slots: Tensor) -> None:
        """Copy the buffers' ``slots`` into new buffers of ``capacity`` positions at ``new_slots``."""
        batch, n_kv_heads, _, head_dim = self.key_buffer.shape
        for name in ("key_buffer", "value_buffer"):
            old = getattr(self, name)
            new = old.new_zeros(batch, n_kv_heads, capacity, head_dim)
            new[:, :, new_slots] = old[:, :, slots]
            setattr(self, name, new)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the keys and values of T new positions after the filled ones.

        Args:
            k: (B, Hkv, T, E) new keys (already rotated, for RoPE).
            v: (B, Hkv, T, E) new values.
        Returns:
            (keys, values), (B, Hkv, S + T, E) views of the filled part of the buffers.
        """
        self._check(k, v)
        end = self._length + k.shape[2]
        if end > self.capacity:
            filled = torch.arange(self._length, device=self.key_buffer.device)
            self._reallocate(max(2 * self.capacity, end), filled, filled)
        self.key_buffer[:, :, self._length: end] = k
        self.value_buffer[:, :, self._length: end] = v
        self._length = end
        return self.keys(), self.values()

    def select(self, rows: Tensor) -> None:
        """Keep (and reorder, or repeat) batch rows in place, e.g. the surviving beams.

        Args:
            rows: (N,) long indices into the batch; the cache then has N rows, and the same
                length and capacity. This copies the buffers once.
        """
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.key_buffer.device)
        self.key_buffer = self.key_buffer[rows]
        self.value_buffer = self.value_buffer[rows]

    def selected(self, rows: Tensor) -> KeyValueCache:
        """A new cache of batch rows ``rows`` (see :meth:`select`); this one is unchanged."""
        new = copy.copy(self)
        new.select(rows)
        return new

    def detach(self) -> KeyValueCache:
        """Cut the buffers from the autograd graph (truncated BPTT between windows); returns self."""
        self.key_buffer = self.key_buffer.detach()
        self.value_buffer = self.value_buffer.detach()
        return self


class SlidingKeyValueCache(KeyValueCache):
    """The last ``window`` positions, in a ring buffer; see the module docstring.

    An append of T positions first makes sure the ring holds ``window + T - 1`` slots (growing
    once, for a long prompt): then the T new keys never overwrite a key that one of the T new
    queries still sees (query p sees positions p - window + 1 .. p). Decoding one token at a
    time needs ``window`` slots and never reallocates.

    Args:
        batch, n_kv_heads, head_dim, dtype, device: as :class:`KeyValueCache`.
        window: W, the most recent positions a query attends to (itself included).
    """

    def __init__(self, batch: int, n_kv_heads: int, window: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__(batch, n_kv_heads, window, head_dim, dtype, device)
        self.window = window
        self.slot_positions = torch.full((window,), -1, dtype=torch.long, device=self.key_buffer.device)

    def _slots_in_use(self) -> int:
        """Until the ring first wraps, position p is in slot p: the first ``length`` slots are
        the filled ones, and a query need not look at the empty rest."""
        return min(self._length, self.capacity)

    def keys(self) -> Tensor:
        """(B, Hkv, S, E) the slots in use, in slot order (see :meth:`key_positions`)."""
        return self.key_buffer[:, :, :self._slots_in_use()]

    def values(self) -> Tensor:
        return self.value_buffer[:, :, :self._slots_in_use()]

    def key_positions(self) -> Tensor:
        """(S,) absolute position held by each slot in use; -1 where a slot is still empty."""
        return self.slot_positions[:self._slots_in_use()]

    def select(self, rows: Tensor) -> None:
        super().select(rows)
        self.slot_positions = self.slot_positions.clone()      # never shared with a copy

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write T new positions into the ring (oldest slots first) and return every slot.

        Returns:
            (keys, values), (B, Hkv, S, E), the slots in use, in slot order.
        """
        self._check(k, v)
        new_length = k.shape[2]
        needed = self.window + new_length - 1
        if needed > self.capacity:
            kept = (self.slot_positions >= 0).nonzero().squeeze(1)                     # filled slots
            self._reallocate(needed, kept, self.slot_positions[kept] % needed)
            positions = self.slot_positions[kept]
            self.slot_positions = torch.full((needed,), -1, dtype=torch.long, device=positions.device)
            self.slot_positions[positions % needed] = positions
        positions = torch.arange(self._length, self._length + new_length, device=self.key_buffer.device)
        slots = positions % self.capacity                                                # (T,)
        self.key_buffer[:, :, slots] = k
        self.value_buffer[:, :, slots] = v
        self.slot_positions[slots] = positions
        self._length += new_length
        return self.keys(), self.values()
