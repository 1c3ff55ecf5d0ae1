"""Causal multi-head self-attention with a key/value cache (Vaswani et al. 2017).

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_head) + M) V,

with M = -inf above the diagonal so that position t sees positions <= t. The product runs in
torch's ``scaled_dot_product_attention`` (fused flash / memory-efficient kernels where the
hardware has them). The cache holds the keys and values of every position read so far: it is
the Transformer's recurrent state, growing by one entry per step.

The general layer is :class:`MultiHeadAttention`: grouped-query heads, key padding, RoPE or
ALiBi, cross-attention and a preallocated :class:`KeyValueCache`, checked against the plain
:func:`attention_ref`. ``CausalSelfAttention`` and ``KVCache`` are the original minimal layer and
its tuple cache, kept for ``models/transformer.py``.

Shapes: B batch, T new positions, S cached positions, D model width, H heads, E = D / H.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError, DataError
from seqlab.layers.positions import ALiBi, RotaryPositions

KVCache = tuple[Tensor, Tensor]  # keys, values: (B, H, S, E) each


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; ``forward(x, cache)`` returns the output and new cache."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """Attend from the T new positions of ``x`` to the cached ones and to themselves.

        Args:
            x: (B, T, D) inputs at the new positions.
            cache: keys and values of the S earlier positions, or None when S = 0.
        Returns:
            (B, T, D) outputs, and the cache extended to S + T positions.
        """
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=-1)                           # (B, T, D) each
        q, k, v = (z.view(batch, length, self.n_heads, -1).transpose(1, 2) for z in (q, k, v))  # (B, H, T, E)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)                                # (B, H, S + T, E)
            v = torch.cat([cache[1], v], dim=2)
        cached = k.shape[2] - length
        dropout = self.dropout if self.training else 0.0
        if cached == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            # Query i sits at absolute position cached + i and may see keys 0 .. cached + i.
            key_position = torch.arange(k.shape[2], device=x.device)
            query_position = torch.arange(length, device=x.device)[:, None] + cached
            visible = key_position[None, :] <= query_position                  # (T, S + T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(batch, length, width)                    # (B, T, D)
        return self.out_dropout(self.out(y)), (k, v)


# ---------------------------------------------------------------------------------------------
# General multi-head attention: grouped-query heads, padding, RoPE / ALiBi, cross-attention, and
# a preallocated key/value cache. ``attention_ref`` is the specification; ``MultiHeadAttention``
# computes the same numbers through ``scaled_dot_product_attention``.
#
# Shapes: B batch, H query heads, Hkv key/value heads (H a multiple of Hkv), T queries, S keys,
# E head dim, D model width. Queries are aligned to the END of the keys: with a cache of
# ``offset = S - T`` positions, query i is at absolute position offset + i.
# ---------------------------------------------------------------------------------------------


def _visible_keys(query_length: int, key_length: int, causal: bool, offset: int,
                  key_padding_mask: Tensor | None, device: torch.device) -> Tensor | None:
    """Boolean (B or 1, 1, T, S) mask, true where query i may see key j; None when all may."""
    visible = None
    if causal:
        key_position = torch.arange(key_length, device=device)
        query_position = torch.arange(query_length, device=device)[:, None] + offset
        visible = (key_position[None, :] <= query_position)[None, None]                # (1, 1, T, S)
    if key_padding_mask is not None:
        real = key_padding_mask.to(device=device, dtype=torch.bool)[:, None, None, :]  # (B, 1, 1, S)
        visible = real if visible is None else visible & real                          # (B, 1, T, S)
    return visible


def _check_padding(key_padding_mask: Tensor | None, batch: int, key_length: int) -> None:
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (batch, key_length):
        raise DataError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, expected "
                        f"(B, S) = ({batch}, {key_length}), true at real keys")


def attention_ref(q: Tensor, k: Tensor, v: Tensor, *, causal: bool,
                  key_padding_mask: Tensor | None = None, bias: Tensor | None = None,
                  offset: int | None = None) -> Tensor:
    """The specification of multi-head attention, by an explicit softmax.

        out = softmax(Q K^T / sqrt(E) + bias + M) V,   M = 0 where visible, -inf elsewhere.

    Grouped-query attention (Ainslie et al. 2023): query head h uses key/value head
    ``h // (H / Hkv)``. With ``causal``, query i may see key j iff ``j <= offset + i``, with
    ``offset = S - T`` by default (queries aligned to the end of the keys, as in cached
    decoding). With ``key_padding_mask``, only real keys are visible.

    A query row that sees no key at all (e.g. a left-padded position whose visible keys are all
    padding) gets an all-zero output row, not NaN; :class:`MultiHeadAttention` does the same.

    Args:
        q: (B, H, T, E) queries.
        k: (B, Hkv, S, E) keys, H a multiple of Hkv.
        v: (B, Hkv, S, E) values.
        causal: mask future keys as above.
        key_padding_mask: (B, S) bool, true at real keys.
        bias: (H, T, S) or anything broadcastable to (B, H, T, S), added to the scores
            (e.g. :meth:`ALiBi.bias`); it is not a mask.
        offset: absolute position of query 0 for the causal mask; None means S - T.
    Returns:
        (B, H, T, E) attention outputs in q's dtype.
    """
    batch, n_heads, query_length, head_dim = q.shape
    n_kv_heads, key_length = k.shape[1], k.shape[2]
    if n_heads % n_kv_heads:
        raise DataError(f"{n_heads} query heads are not a multiple of {n_kv_heads} key/value heads")
    _check_padding(key_padding_mask, batch, key_length)
    group = n_heads // n_kv_heads
    kv_head = torch.arange(n_heads, device=q.device) // group                        # (H,)
    k, v = k[:, kv_head], v[:, kv_head]                                               # (B, H, S, E)
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)                           # (B, H, T, S)
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    offset = key_length - query_length if offset is None else offset
    visible = _visible_keys(query_length, key_length, causal, offset, key_padding_mask, q.device)
    if visible is None:
        return torch.softmax(scores, dim=-1) @ v
    scores = scores.masked_fill(~visible, float("-inf"))
    has_key = visible.any(dim=-1, keepdim=True)                                       # (B|1, 1, T, 1)
    weights = torch.softmax(scores.masked_fill(~has_key, 0.0), dim=-1)
    weights = weights.masked_fill(~has_key, 0.0)                                      # empty rows -> 0
    return weights @ v                                                                # (B, H, T, E)


class KeyValueCache:
    """Keys and values of the positions read so far, in preallocated (B, Hkv, capacity, E) buffers.

    :meth:`append` writes the new positions into the buffers in place and returns views of the
    filled part, so a decoding step copies only its own T positions, not the whole cache. When
    an append would pass the capacity (initially ``max_len``), the buffers are reallocated to
    ``max(2 * capacity, length + T)`` positions and the filled part is copied once; the views
    returned earlier stay valid but no longer alias the buffers.

    The cache is for inference: buffers are written in place, so backpropagating through two
    appends fails with torch's in-place modification error. Train with full sequences.

    Args:
        batch: B, rows of the batch.
        n_kv_heads: Hkv, key/value heads.
        max_len: initial capacity in positions (>= 1).
        head_dim: E.
        dtype, device: of the buffers; appended keys and values must match the dtype.
    """

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        if min(batch, n_kv_heads, max_len, head_dim) < 1:
            raise ConfigError(f"KeyValueCache sizes must be positive, got batch={batch}, "
                              f"n_kv_heads={n_kv_heads}, max_len={max_len}, head_dim={head_dim}")
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.key_buffer = torch.zeros(shape, dtype=dtype, device=device)             # (B, Hkv, L, E)
        self.value_buffer = torch.zeros(shape, dtype=dtype, device=device)
        self._length = 0

    @property
    def length(self) -> int:
        """The number of positions filled so far (S)."""
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

    def _grow(self, needed: int) -> None:
        capacity = max(2 * self.capacity, needed)
        batch, n_kv_heads, _, head_dim = self.key_buffer.shape
        for name in ("key_buffer", "value_buffer"):
            old = getattr(self, name)
            new = old.new_zeros(batch, n_kv_heads, capacity, head_dim)
            new[:, :, : self._length] = old[:, :, : self._length]
            setattr(self, name, new)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the keys and values of T new positions after the filled ones.

        Args:
            k: (B, Hkv, T, E) new keys (already rotated, for RoPE).
            v: (B, Hkv, T, E) new values.
        Returns:
            (keys, values), (B, Hkv, S + T, E) views of the filled part of the buffers.
        """
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
        end = self._length + k.shape[2]
        if end > self.capacity:
            self._grow(end)
        self.key_buffer[:, :, self._length: end] = k
        self.value_buffer[:, :, self._length: end] = v
        self._length = end
        return self.keys(), self.values()

    def select(self, rows: Tensor) -> None:
        """Keep (and reorder, or repeat) batch rows in place, e.g. the surviving beams.

        Args:
            rows: (N,) long indices into the batch; the cache then has N rows and the same
                length and capacity. This copies the filled part once.
        """
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.key_buffer.device)
        for name in ("key_buffer", "value_buffer"):
            old = getattr(self, name)
            new = old.new_zeros(rows.shape[0], *old.shape[1:])
            new[:, :, : self._length] = old[rows, :, : self._length]
            setattr(self, name, new)


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017, sec. 3.2.2) with grouped-query heads.

    Self-attention (``cross=False``) projects q, k, v from ``x``; with ``positions`` a
    :class:`RotaryPositions`, q and k are rotated at positions ``offset .. offset + T - 1``
    (offset = cache length before appending) before the keys enter the cache; with an
    :class:`ALiBi`, its bias is added to the scores. Cross-attention (``cross=True``) takes
    keys and values from ``memory``; it is never causal and has no positions.

    Computes what :func:`attention_ref` specifies through ``scaled_dot_product_attention``:
    ``is_causal=True`` when causal with T == S and no other mask; otherwise a boolean mask, or
    one additive float mask (ALiBi bias + -inf at hidden keys). Key/value heads are shared by
    groups of ``n_heads / n_kv_heads`` query heads via ``enable_gqa``. A query that sees no key
    (all its visible keys are padding) gets a zero attention output before ``out_proj``.

    Args:
        d_model: D.
        n_heads: H, query heads; must divide D. E = D / H.
        n_kv_heads: Hkv, key/value heads; must divide H. None means H (plain multi-head);
            1 is multi-query attention.
        causal: mask future keys (self-attention only).
        positions: None, a RotaryPositions(E) or an ALiBi(H).
        dropout: on the attention weights, in training only.
        bias: whether the four projections have biases.
        cross: cross-attention over ``memory``.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, *, causal: bool,
                 positions: nn.Module | None = None, dropout: float = 0.0, bias: bool = True,
                 cross: bool = False):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads < 1 or d_model % n_heads:
            raise ConfigError(f"n_heads={n_heads} must be positive and divide d_model={d_model}")
        if n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ConfigError(f"n_kv_heads={n_kv_heads} must be positive and divide n_heads={n_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        head_dim = d_model // n_heads
        if cross and causal:
            raise ConfigError("cross-attention is never causal; pass causal=False with cross=True")
        if cross and positions is not None:
            raise ConfigError("cross-attention takes no positions; pass positions=None with cross=True")
        if isinstance(positions, RotaryPositions) and positions.head_dim != head_dim:
            raise ConfigError(f"rotary positions have head_dim={positions.head_dim}, "
                              f"the attention has head_dim={head_dim} (d_model / n_heads)")
        if isinstance(positions, ALiBi) and positions.slopes.shape[0] != n_heads:
            raise ConfigError(f"ALiBi has {positions.slopes.shape[0]} slopes, "
                              f"the attention has n_heads={n_heads}")
        if positions is not None and not isinstance(positions, (RotaryPositions, ALiBi)):
            raise ConfigError(f"positions must be None, RotaryPositions or ALiBi, "
                              f"got {type(positions).__name__}")
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, head_dim
        self.causal, self.cross, self.dropout = causal, cross, dropout
        self.positions = positions
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.out_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"causal={self.causal}, cross={self.cross}, dropout={self.dropout}")

    def make_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None,
                   device: torch.device | str | None = None) -> KeyValueCache:
        """An empty :class:`KeyValueCache` shaped for this layer (dtype/device of q_proj by default)."""
        weight = self.q_proj.weight
        return KeyValueCache(batch, self.n_kv_heads, max_len, self.head_dim,
                             dtype or weight.dtype, device or weight.device)

    def _heads(self, x: Tensor, n_heads: int) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, n_heads, self.head_dim).transpose(1, 2)           # (B, h, T, E)

    def forward(self, x: Tensor, memory: Tensor | None = None,
                key_padding_mask: Tensor | None = None,
                cache: KeyValueCache | None = None) -> Tensor:
        """Attend from the T positions of ``x`` to the keys.

        Args:
            x: (B, T, D) queries' inputs (and keys'/values' in self-attention).
            memory: (B, S, D) encoder outputs; required with ``cross=True``, refused otherwise.
            key_padding_mask: (B, S) bool, true at real keys. With a cache, S counts every key
                after this step's append (cached + new), i.e. ``cache.length + T``.
            cache: self-attention only; the new keys/values are appended to it and the queries
                attend to all of its keys (causal mask aligned to the end).
        Returns:
            (B, T, D) outputs.
        """
        batch, query_length, _ = x.shape
        q = self._heads(self.q_proj(x), self.n_heads)                                   # (B, H, T, E)
        if self.cross:
            if memory is None:
                raise DataError("cross-attention needs memory (B, S, D); got None")
            if cache is not None:
                raise DataError("cross-attention takes no cache; pass the memory at every step")
            source, offset = memory, 0
        else:
            if memory is not None:
                raise DataError("self-attention takes no memory; build with cross=True to attend to it")
            source, offset = x, (cache.length if cache is not None else 0)
        k = self._heads(self.k_proj(source), self.n_kv_heads)                           # (B, Hkv, S_new, E)
        v = self._heads(self.v_proj(source), self.n_kv_heads)
        if isinstance(self.positions, RotaryPositions):
            q, k = self.positions(q, k, offset)
        if cache is not None:
            k, v = cache.append(k, v)                                                   # (B, Hkv, S, E)
        key_length = k.shape[2]
        _check_padding(key_padding_mask, batch, key_length)

        bias = None
        if isinstance(self.positions, ALiBi):
            bias = self.positions.bias(query_length, key_length, offset).to(q.dtype)   # (H, T, S)
        causal = self.causal and not self.cross
        dropout = self.dropout if self.training else 0.0
        gqa = self.n_kv_heads != self.n_heads
        if causal and bias is None and key_padding_mask is None and query_length == key_length:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True,
                                               enable_gqa=gqa)
        else:
            visible = _visible_keys(query_length, key_length, causal, key_length - query_length,
                                    key_padding_mask, x.device)
            has_key = None
            if key_padding_mask is not None:
                # An all-hidden row would make the softmax NaN; open it, then zero its output.
                has_key = visible.any(dim=-1, keepdim=True)                             # (B, 1, T, 1)
                visible = visible | ~has_key
            mask = visible
            if bias is not None:
                mask = bias[None] if visible is None else bias.masked_fill(~visible, float("-inf"))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                               enable_gqa=gqa)                          # (B, H, T, E)
            if has_key is not None:
                y = y.masked_fill(~has_key, 0.0)
        y = y.transpose(1, 2).reshape(batch, query_length, self.n_heads * self.head_dim)  # (B, T, D)
        return self.out_proj(y)
