"""Multi-head attention (Vaswani et al. 2017), as the Transformer blocks use it.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(E) + bias + M) V,

with M = -inf at the keys a query may not see: future keys (causal), keys further back than a
sliding ``window``, padding. :func:`attention_ref` is the specification, by an explicit
softmax; :class:`MultiHeadAttention` computes the same numbers through torch's
``scaled_dot_product_attention`` (fused flash / memory-efficient kernels where the hardware has
them), with grouped-query heads, key padding, RoPE or ALiBi passed in as modules,
cross-attention, and a key/value cache (``seqlab.layers.kv_cache``) for stepping.

Shapes: B batch, H query heads, Hkv key/value heads (H a multiple of Hkv), T queries, S keys,
E head dim, D model width. Queries are aligned to the END of the keys: with a cache of
``offset = S - T`` positions, query i is at absolute position offset + i.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError, DataError
from seqlab.layers.kv_cache import KeyValueCache, SlidingKeyValueCache
from seqlab.layers.positions import RotaryPositions, ScoreBias

__all__ = ["KeyValueCache", "MultiHeadAttention", "SlidingKeyValueCache", "attention_ref", "attention_weights_ref",
           "visible_keys"]


def visible_keys(query_positions: Tensor, key_positions: Tensor, *, causal: bool,
                 window: int | None = None, key_padding_mask: Tensor | None = None) -> Tensor | None:
    """Boolean (B or 1, 1, T, S) mask, true where query i may see key j; None when all may.

    Key j (absolute position ``key_positions[j]``; -1 marks an empty cache slot) is visible to
    query i (position ``query_positions[i]``) iff it is not empty, not in the future (causal),
    at most ``window - 1`` positions back (a sliding window) and not padding.

    Args:
        query_positions: (T,) long. key_positions: (S,) long.
        key_padding_mask: (B, S) bool, true at real keys.
    """
    visible = None
    if causal or window is not None:
        distance = query_positions[:, None] - key_positions[None, :]                  # (T, S)
        visible = key_positions[None, :] >= 0
        if causal:
            visible = visible & (distance >= 0)
        if window is not None:
            visible = visible & (distance < window)
        visible = visible[None, None]                                                 # (1, 1, T, S)
    if key_padding_mask is not None:
        real = key_padding_mask.to(device=key_positions.device, dtype=torch.bool)[:, None, None, :]
        visible = real if visible is None else visible & real                         # (B, 1, T, S)
    return visible


def _check_padding(key_padding_mask: Tensor | None, batch: int, key_length: int) -> None:
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (batch, key_length):
        raise DataError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, expected "
                        f"(B, S) = ({batch}, {key_length}), true at real keys")


def attention_ref(q: Tensor, k: Tensor, v: Tensor, *, causal: bool,
                  key_padding_mask: Tensor | None = None, bias: Tensor | None = None,
                  offset: int | None = None, window: int | None = None, scale: float | None = None) -> Tensor:
    """The specification of multi-head attention, by an explicit softmax.

        out = softmax(Q K^T / sqrt(E) + bias + M) V,   M = 0 where visible, -inf elsewhere.

    Grouped-query attention (Ainslie et al. 2023): query head h uses key/value head
    ``h // (H / Hkv)``. With ``causal``, query i may see key j iff ``j <= offset + i``, with
    ``offset = S - T`` by default (queries aligned to the end of the keys, as in cached
    decoding); with ``window``, also only if ``j > offset + i - window`` (sliding-window
    attention, Beltagy et al. 2020). With ``key_padding_mask``, only real keys are visible.

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
        window: the most recent keys a query sees, itself included; None: all.
        scale: the factor on Q K^T; None is 1 / sqrt(E) (T5 uses 1: unscaled logits).
    Returns:
        (B, H, T, E) attention outputs in q's dtype.
    """
    weights = attention_weights_ref(q, k, causal=causal, key_padding_mask=key_padding_mask, bias=bias,
                                    offset=offset, window=window, scale=scale)        # (B, H, T, S)
    group = q.shape[1] // k.shape[1]
    return weights @ v.repeat_interleave(group, dim=1)                                # (B, H, T, E)


def attention_weights_ref(q: Tensor, k: Tensor, *, causal: bool, key_padding_mask: Tensor | None = None,
                          bias: Tensor | None = None, offset: int | None = None,
                          window: int | None = None, scale: float | None = None) -> Tensor:
    """The (B, H, T, S) attention distributions of :func:`attention_ref` (same arguments, no
    values): ``softmax(scale Q K^T + bias + M)``, all-zero rows where a query sees no key."""
    batch, n_heads, query_length, head_dim = q.shape
    n_kv_heads, key_length = k.shape[1], k.shape[2]
    if n_heads % n_kv_heads:
        raise DataError(f"{n_heads} query heads are not a multiple of {n_kv_heads} key/value heads")
    _check_padding(key_padding_mask, batch, key_length)
    k = k.repeat_interleave(n_heads // n_kv_heads, dim=1)                            # (B, H, S, E): head h uses h // group
    scale = 1 / math.sqrt(head_dim) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale                                          # (B, H, T, S)
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    offset = key_length - query_length if offset is None else offset
    query_positions = torch.arange(query_length, device=q.device) + offset
    visible = visible_keys(query_positions, torch.arange(key_length, device=q.device), causal=causal,
                           window=window, key_padding_mask=key_padding_mask)
    if visible is None:
        return torch.softmax(scores, dim=-1)
    scores = scores.masked_fill(~visible, float("-inf"))
    has_key = visible.any(dim=-1, keepdim=True)                                       # (B|1, 1, T, 1)
    weights = torch.softmax(scores.masked_fill(~has_key, 0.0), dim=-1)
    return weights.masked_fill(~has_key, 0.0)                                         # empty rows -> 0


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017, sec. 3.2.2) with grouped-query heads.

    Self-attention (``cross=False``) projects q, k, v from ``x``; with ``positions`` a
    :class:`RotaryPositions`, q and k are rotated at positions ``offset .. offset + T - 1``
    (offset = cache length before appending) before the keys enter the cache; with an
    :class:`~seqlab.layers.positions.ScoreBias` (ALiBi, T5's buckets), its bias is added to the scores. Cross-attention (``cross=True``) takes
    keys and values from ``memory``; it is never causal and has no positions.

    Computes what :func:`attention_ref` specifies through ``scaled_dot_product_attention``:
    ``is_causal=True`` when causal with T == S and no other mask; otherwise a boolean mask, or
    one additive float mask (ALiBi bias + -inf at hidden keys), built from the absolute
    positions of the queries and of the keys (so a ring-buffer cache's slot order is free). Key/value heads are shared by
    groups of ``n_heads / n_kv_heads`` query heads via ``enable_gqa``. A query that sees no key
    (all its visible keys are padding) gets a zero attention output before ``out_proj``.

    Args:
        d_model: D.
        n_heads: H, query heads; must divide D. E = D / H.
        n_kv_heads: Hkv, key/value heads; must divide H. None means H (plain multi-head);
            1 is multi-query attention.
        causal: mask future keys (self-attention only).
        positions: None, a RotaryPositions(E), or a ScoreBias of H heads (ALiBi, T5's
            RelativePositionBias), which may also serve bidirectional and encoder layers.
        dropout: on the attention weights, in training only.
        bias: whether the four projections have biases.
        cross: cross-attention over ``memory``.
        window: W, sliding-window attention: a query sees the W most recent positions (itself
            included) and :meth:`make_cache` builds a ring buffer of W slots. None: all.
        scale: the factor on the scores Q K^T; None is 1 / sqrt(E) (Vaswani et al.), T5 uses 1.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, *, causal: bool,
                 positions: nn.Module | None = None, dropout: float = 0.0, bias: bool = True,
                 cross: bool = False, window: int | None = None, scale: float | None = None):
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
        if isinstance(positions, ScoreBias) and positions.n_heads != n_heads:
            raise ConfigError(f"{type(positions).__name__} has {positions.n_heads} heads, "
                              f"the attention has n_heads={n_heads}")
        if window is not None and (window < 1 or cross or not causal):
            raise ConfigError(f"window={window} needs causal self-attention and a positive size")
        if positions is not None and not isinstance(positions, (RotaryPositions, ScoreBias)):
            raise ConfigError(f"positions must be None, RotaryPositions or a ScoreBias (ALiBi, RelativePositionBias), "
                              f"got {type(positions).__name__}")
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, head_dim
        self.causal, self.cross, self.dropout, self.window = causal, cross, dropout, window
        self.scale = scale
        self.positions = positions
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.out_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"causal={self.causal}, cross={self.cross}, dropout={self.dropout}, window={self.window}")

    def make_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None,
                   device: torch.device | str | None = None) -> KeyValueCache:
        """An empty cache shaped for this layer (dtype/device of q_proj by default): a
        :class:`SlidingKeyValueCache` of ``window`` slots for a windowed layer, else a
        :class:`KeyValueCache` of initial capacity ``max_len``."""
        weight = self.q_proj.weight
        if self.window is not None:
            return SlidingKeyValueCache(batch, self.n_kv_heads, self.window, self.head_dim,
                                        dtype or weight.dtype, device or weight.device)
        return KeyValueCache(batch, self.n_kv_heads, max_len, self.head_dim,
                             dtype or weight.dtype, device or weight.device)

    def _heads(self, x: Tensor, n_heads: int) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, n_heads, self.head_dim).transpose(1, 2)           # (B, h, T, E)

    def cross_attention_weights(self, x: Tensor, memory: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """For inspection: the (B, H, T, S) weights this cross-attention layer puts on ``memory``
        (by :func:`attention_weights_ref`, an explicit softmax)."""
        if not self.cross:
            raise ConfigError("cross_attention_weights is for a layer built with cross=True")
        q = self._heads(self.q_proj(x), self.n_heads)
        k = self._heads(self.k_proj(memory), self.n_kv_heads)
        return attention_weights_ref(q, k, causal=False, key_padding_mask=key_padding_mask, scale=self.scale)

    def _project_self(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, H, T, E), k and v (B, Hkv, T, E) of ``x`` in one matmul, the three projections'
        weights stacked: one product of width (H + 2 Hkv) E, and one gradient into ``x``. Without
        gradients (generation) the three products are taken apart: stacking would copy the three
        matrices at every decoding step, which costs more than it saves."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        if torch.is_grad_enabled():
            weight = torch.cat([layer.weight for layer in projections])
            bias = None if self.q_proj.bias is None else torch.cat([layer.bias for layer in projections])
            q, k, v = F.linear(x, weight, bias).split([layer.out_features for layer in projections], dim=-1)
        else:
            q, k, v = (layer(x) for layer in projections)
        return self._heads(q, self.n_heads), self._heads(k, self.n_kv_heads), self._heads(v, self.n_kv_heads)

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
        if self.cross:
            if memory is None:
                raise DataError("cross-attention needs memory (B, S, D); got None")
            if cache is not None:
                raise DataError("cross-attention takes no cache; pass the memory at every step")
            offset = 0
            q = self._heads(self.q_proj(x), self.n_heads)                               # (B, H, T, E)
            k = self._heads(self.k_proj(memory), self.n_kv_heads)                       # (B, Hkv, S, E)
            v = self._heads(self.v_proj(memory), self.n_kv_heads)
        else:
            if memory is not None:
                raise DataError("self-attention takes no memory; build with cross=True to attend to it")
            offset = cache.length if cache is not None else 0
            q, k, v = self._project_self(x)
        if isinstance(self.positions, RotaryPositions):
            q, k = self.positions(q, k, offset)
        if cache is not None:
            if cache.window != self.window:
                raise DataError(f"the cache's window is {cache.window}, the layer's {self.window}; "
                                "build the cache with the layer's make_cache")
            if key_padding_mask is not None and cache.window is not None:
                raise DataError("key padding cannot follow a sliding-window cache's slots; "
                                "pad on the right, where causal attention never looks")
            k, v = cache.append(k, v)                                                   # (B, Hkv, S, E)
        key_length = k.shape[2]
        _check_padding(key_padding_mask, batch, key_length)
        causal = self.causal and not self.cross
        dropout = self.dropout if self.training else 0.0
        gqa = self.n_kv_heads != self.n_heads
        score_bias = isinstance(self.positions, ScoreBias)
        if (causal and not score_bias and key_padding_mask is None and offset == 0 and query_length == key_length
                and (self.window is None or query_length <= self.window)):
            # Plain causal attention over the whole sequence: no mask tensor to build.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, enable_gqa=gqa,
                                               scale=self.scale)
            return self._merge(y)
        if (causal and not score_bias and key_padding_mask is None and query_length == 1
                and (self.window is None or key_length <= self.window)):
            # One decoding step: the cache holds distinct earlier positions and the new one, at
            # most a window of them, so every key is visible and no mask is needed.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, enable_gqa=gqa, scale=self.scale)
            return self._merge(y)
        key_positions = (cache.key_positions() if cache is not None
                         else torch.arange(key_length, device=x.device))                # (S,)
        query_positions = torch.arange(offset, offset + query_length, device=x.device)
        visible = visible_keys(query_positions, key_positions, causal=causal, window=self.window,
                               key_padding_mask=key_padding_mask)
        has_key = None
        if key_padding_mask is not None:
            # An all-hidden row would make the softmax NaN; open it, then zero its output.
            has_key = visible.any(dim=-1, keepdim=True)                                 # (B, 1, T, 1)
            visible = visible | ~has_key
        mask = visible
        if score_bias:
            bias = self.positions.bias_at(query_positions, key_positions).to(q.dtype)   # (H, T, S)
            mask = bias[None] if visible is None else bias.masked_fill(~visible, float("-inf"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=gqa,
                                           scale=self.scale)
        if has_key is not None:
            y = y.masked_fill(~has_key, 0.0)
        return self._merge(y)

    def _merge(self, y: Tensor) -> Tensor:
        """(B, H, T, E) head outputs -> (B, T, D) through ``out_proj``."""
        batch, _, query_length, _ = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(batch, query_length, self.n_heads * self.head_dim))
