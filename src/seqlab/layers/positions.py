"""Position schemes for Transformer blocks: sinusoidal, learned, rotary (RoPE) and ALiBi.

Self-attention is blind to order, so every Transformer adds positions somewhere. The schemes
here differ in *where* they act, and that decides how an attention block uses them:

* **On the input** (``SinusoidalPositions``, ``LearnedPositions``): ``x + P[p]`` before the
  first block, ``forward(x, offset) -> x``. Absolute positions.
* **On queries and keys** (``RotaryPositions``): each pair of head features is rotated by an
  angle proportional to the position, ``forward(q, k, offset) -> (q, k)``, applied after the
  q/k projections and before the keys go into the cache. The score ``q_m . k_n`` then depends
  on the positions only through ``m - n``.
* **On the scores** (``ALiBi``): a per-head bias linear in the distance is added to
  ``Q K^T / sqrt(E)`` before the softmax, ``bias(T, S, offset) -> (H, T, S)``.

Each is a small ``nn.Module`` that a block receives (``Attention(positions=RotaryPositions(E))``)
rather than a string it branches on. Every one takes ``offset``, the number of positions already
in the key/value cache, so that the T new positions are the absolute positions
``offset .. offset + T - 1`` and cached decoding gives the same numbers as a full recompute.

The math:

* Sinusoidal (Vaswani et al. 2017, "Attention is all you need", sec. 3.5)::

      PE[p, 2i] = sin(p / 10000^(2i / D)),   PE[p, 2i + 1] = cos(p / 10000^(2i / D)).

* Learned (Gehring et al. 2017; GPT, BERT): a trainable table ``P`` of ``max_len`` rows.
* Rotary (Su et al. 2021, "RoFormer", eq. 13-15): with ``theta_i = base^(-2i / E)``, the pair
  ``(x_a, x_b)`` belonging to frequency i is rotated at position p by the angle ``p theta_i``::

      [x_a']   [cos p theta_i   -sin p theta_i] [x_a]
      [x_b'] = [sin p theta_i    cos p theta_i] [x_b],

  so ``<R_m q, R_n k> = <q, R_{n-m} k>``. Two layouts pair the features differently: ``"half"``
  pairs ``(i, i + E/2)`` (GPT-NeoX, HF Llama's ``rotate_half``), ``"interleaved"`` pairs
  ``(2i, 2i + 1)`` (the paper, GPT-J). They are the same rotation up to a permutation of the
  head features, but weights trained with one layout are wrong under the other.
* ALiBi (Press, Smith and Lewis 2021, "Train short, test long", sec. 3): head h adds
  ``-m_h (i - j)`` to the score of query position i on key position j <= i, with slopes
  ``m_h = 2^(-8 h / H)``, h = 1..H, for H a power of two (see :func:`alibi_slopes` otherwise).

Shapes: B batch, H heads, T new positions, S key positions (S = offset + T with a cache),
E head dim, D model width.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError, DataError

RotaryLayout = Literal["half", "interleaved"]


def _check_offset(offset: int) -> None:
    if offset < 0:
        raise DataError(f"position offset {offset} is negative; pass the number of cached positions (>= 0)")


def sinusoidal_table(length: int, d_model: int, dtype: torch.dtype = torch.float64,
                     device: torch.device | str | None = None) -> Tensor:
    """The (length, D) table ``PE[p, 2i] = sin(p / 10000^(2i/D))``, ``PE[p, 2i+1] = cos(...)``.

    Computed in float64 and cast to ``dtype``. An odd D keeps the last sine column.
    """
    positions = torch.arange(length, dtype=torch.float64, device=device)[:, None]        # (P, 1)
    even = torch.arange(0, d_model, 2, dtype=torch.float64, device=device)               # 2i
    angles = positions / 10000.0 ** (even / d_model)                                     # (P, ceil(D/2))
    table = torch.empty(length, d_model, dtype=torch.float64, device=device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return table.to(dtype)


class SinusoidalPositions(nn.Module):
    """Adds the fixed sinusoidal encoding of positions ``offset .. offset + T - 1`` to ``x``.

    Any length works: the table is a non-persistent float32 buffer (it follows ``.to(dtype)``),
    computed in float64 and recomputed, at least doubled, when a longer one is asked for;
    checkpoints do not depend on it.

    ``embedding_scale`` multiplies ``x`` first: Vaswani et al. (sec. 3.4) scale the token
    embeddings by sqrt(D), so that embeddings initialised at N(0, 1/D) and the table (entries in
    [-1, 1]) have comparable sizes; without it, small embeddings drown in the positions.

    Args:
        d_model: D, the model width.
        max_len: rows to precompute; None starts small and grows on demand.
        embedding_scale: the factor on ``x``.
    """

    def __init__(self, d_model: int, max_len: int | None = None, embedding_scale: float = 1.0):
        super().__init__()
        if d_model < 1:
            raise ConfigError(f"d_model must be positive, got {d_model}")
        self.d_model = d_model
        self.embedding_scale = embedding_scale
        self.register_buffer("table", sinusoidal_table(max_len or 0, d_model, torch.float32),
                             persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """Args: x (B, T, D); offset, the number of earlier positions. Returns (B, T, D)."""
        _check_offset(offset)
        end = offset + x.shape[1]
        if end > self.table.shape[0] or self.table.device != x.device:
            length = max(end, 2 * self.table.shape[0])
            self.table = sinusoidal_table(length, self.d_model, self.table.dtype, x.device)
        return x * self.embedding_scale + self.table[offset:end].to(x.dtype)


class LearnedPositions(nn.Module):
    """Adds a trainable embedding of positions ``offset .. offset + T - 1`` to ``x``.

    Args:
        d_model: D, the model width.
        max_len: rows of the table; a position at or beyond it raises :class:`DataError`.
    """

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        if max_len < 1:
            raise ConfigError(f"max_len must be positive for learned positions, got {max_len}")
        self.max_len = max_len
        self.embedding = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """Args: x (B, T, D); offset, the number of earlier positions. Returns (B, T, D)."""
        _check_offset(offset)
        end = offset + x.shape[1]
        if end > self.max_len:
            raise DataError(
                f"a sequence of length {end} (positions 0..{end - 1}) does not fit the learned "
                f"position table of size max_len={self.max_len}; raise max_len, shorten the "
                f"sequences, or use a scheme without a table (sinusoidal, rotary, alibi)")
        positions = torch.arange(offset, end, device=x.device)
        return x + self.embedding(positions).to(x.dtype)                              # (T, D) broadcast


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class RotaryPositions(nn.Module):
    """Rotary position embedding (RoFormer): rotates q and k by position-dependent angles.

    Angles and their cos/sin are computed in float32 (float64 for float64 inputs) from ``base``,
    kept in a plain attribute rather than a buffer, so ``model.half()`` cannot round the
    frequencies; the rotated tensors are cast back to the input dtype.

    Args:
        head_dim: E, even.
        base: theta_i = base^(-2i / E).
        layout: ``"half"`` pairs features (i, i + E/2), ``"interleaved"`` pairs (2i, 2i + 1).
    """

    def __init__(self, head_dim: int, base: float = 10000.0, layout: RotaryLayout = "half"):
        super().__init__()
        if head_dim < 2 or head_dim % 2:
            raise ConfigError(f"head_dim must be even and positive for rotary positions, got {head_dim}")
        if layout not in ("half", "interleaved"):
            raise ConfigError(f"layout must be 'half' or 'interleaved', got {layout!r}")
        if base <= 0:
            raise ConfigError(f"base must be positive, got {base}")
        self.head_dim = head_dim
        self.base = float(base)
        self.layout = layout

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}, layout={self.layout!r}"

    def _rotate(self, x: Tensor, offset: int) -> Tensor:
        if x.shape[-1] != self.head_dim:
            raise DataError(f"rotary positions expect head dim {self.head_dim}, got a tensor of shape "
                            f"{tuple(x.shape)}; pass (B, H, T, E) queries and keys")
        work = _work_dtype(x)
        cos, sin = self._cos_sin(offset, x.shape[-2], work, x.device)                    # (T, E/2) each
        xw = x.to(work)
        if self.layout == "half":
            first, second = xw.chunk(2, dim=-1)                                          # (..., T, E/2)
            rotated = torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)
        else:
            first, second = xw[..., 0::2], xw[..., 1::2]                                 # (..., T, E/2)
            rotated = torch.stack([first * cos - second * sin, second * cos + first * sin], dim=-1)
            rotated = rotated.flatten(-2)                                                # (..., T, E)
        return rotated.to(x.dtype)

    def _cos_sin(self, offset: int, length: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """cos and sin of the angles ``p theta_i`` at positions ``offset .. offset + length - 1``,
        (length, E/2) each, from a table kept for the largest position seen so far (at least
        doubled when it grows). Each row is computed as a lone one would be, ``p * theta_i`` in
        ``dtype``, so the table changes no value; it only spares a decoding step the cos and sin."""
        end = offset + length
        table = getattr(self, "_table", None)
        if table is None or table[0].shape[0] < end or table[0].dtype != dtype or table[0].device != device:
            size = max(end, 2 * table[0].shape[0] if table is not None else 64)
            with torch.inference_mode(False), torch.no_grad():      # a plain tensor, usable in training later
                positions = torch.arange(size, dtype=dtype, device=device)
                inv_freq = self.base ** (-torch.arange(0, self.head_dim, 2, dtype=dtype, device=device)
                                         / self.head_dim)
                angles = positions[:, None] * inv_freq                                   # (P, E/2)
                self._table = table = (torch.cos(angles), torch.sin(angles))
        return table[0][offset:end], table[1][offset:end]

    def forward(self, q: Tensor, k: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
        """Rotate queries and keys at positions ``offset .. offset + T - 1``.

        Args:
            q: (B, Hq, T, E) queries.
            k: (B, Hk, T, E) keys of the new positions (Hk may differ from Hq, e.g. GQA).
            offset: the number of cached positions; cached keys are already rotated.
        Returns:
            the rotated (q, k), same shapes and dtypes.
        """
        _check_offset(offset)
        return self._rotate(q, offset), self._rotate(k, offset)


def rotary_ref(x: Tensor, positions: Sequence[int] | Tensor, base: float = 10000.0,
               layout: RotaryLayout = "half") -> Tensor:
    """The specification of RoPE: an explicit 2x2 rotation per position and frequency, by loops.

    Args:
        x: (..., T, E) features, E even.
        positions: (T,) absolute positions of the T rows.
        base: theta_i = base^(-2i / E).
        layout: which features form pair i: (i, i + E/2) for ``"half"``, (2i, 2i + 1) otherwise.
    Returns:
        (..., T, E) rotated features, computed in x's dtype.
    """
    head_dim = x.shape[-1]
    out = x.clone()
    for t, position in enumerate(torch.as_tensor(positions).tolist()):
        for i in range(head_dim // 2):
            a, b = (i, i + head_dim // 2) if layout == "half" else (2 * i, 2 * i + 1)
            angle = position * base ** (-2 * i / head_dim)
            rotation = torch.tensor([[math.cos(angle), -math.sin(angle)],
                                     [math.sin(angle), math.cos(angle)]], dtype=x.dtype, device=x.device)
            pair = torch.stack([x[..., t, a], x[..., t, b]], dim=-1)                     # (..., 2)
            turned = pair @ rotation.T
            out[..., t, a], out[..., t, b] = turned[..., 0], turned[..., 1]
    return out


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi head slopes, the rule of the authors' reference code.

    For n a power of two: 2^(-8/n), 2^(-16/n), ..., 2^(-8) (start 2^(-8/n), ratio 2^(-8/n)).
    Otherwise, with c the largest power of two below n: the c slopes for c heads, then every
    other slope of the 2c-head sequence, ``slopes(c) + slopes(2c)[0::2][:n - c]``.
    """
    if n_heads < 1:
        raise ConfigError(f"n_heads must be positive for ALiBi, got {n_heads}")
    if n_heads & (n_heads - 1) == 0:
        return [2.0 ** (-8.0 * h / n_heads) for h in range(1, n_heads + 1)]
    closest = 2 ** math.floor(math.log2(n_heads))
    return alibi_slopes(closest) + alibi_slopes(2 * closest)[0::2][: n_heads - closest]


class ScoreBias(nn.Module, abc.ABC):
    """A position scheme that acts on the scores: ``bias_at(query_positions, key_positions)``
    gives the (H, T, S) bias an attention layer adds to ``Q K^T / sqrt(E)`` (ALiBi, T5's
    relative buckets). ``n_heads`` is H."""

    n_heads: int

    @abc.abstractmethod
    def bias_at(self, query_positions: Tensor, key_positions: Tensor) -> Tensor:
        """(T,) and (S,) long absolute positions -> the (H, T, S) bias."""


class ALiBi(ScoreBias):
    """Attention with Linear Biases: a per-head additive score bias, linear in the distance.

    Args:
        n_heads: H; the slopes are a (H,) float32 buffer, recomputed on construction.
    """

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.register_buffer("slopes", torch.tensor(alibi_slopes(n_heads), dtype=torch.float32),
                             persistent=False)

    def bias(self, query_length: int, key_length: int, offset: int = 0) -> Tensor:
        """The bias to add to the (B, H, T, S) scores, before the softmax and with the causal mask.

        Query i (absolute position offset + i) and key j get ``-slope_h * (offset + i - j)`` when
        j <= offset + i. Future keys (j > offset + i) get 0: finite, but not a mask — the block
        must still mask them.

        Args:
            query_length: T, the new positions.
            key_length: S, the key positions 0 .. S - 1; S = offset + T with a cache.
            offset: the number of cached positions.
        Returns:
            (H, T, S) bias in the slopes' dtype and device.
        """
        _check_offset(offset)
        device = self.slopes.device
        return self.bias_at(torch.arange(offset, offset + query_length, device=device),
                            torch.arange(key_length, device=device))

    def bias_at(self, query_positions: Tensor, key_positions: Tensor) -> Tensor:
        """The bias between queries and keys at the given absolute positions (any order, e.g.
        the slots of a ring-buffer cache): ``-slope_h * max(0, query_position - key_position)``.

        Args:
            query_positions: (T,) long.
            key_positions: (S,) long.
        Returns:
            (H, T, S) bias in the slopes' dtype, on the slopes' device.
        """
        device = self.slopes.device
        distance = (query_positions.to(device)[:, None] - key_positions.to(device)[None, :]).clamp(min=0)
        return -self.slopes[:, None, None] * distance.to(self.slopes.dtype)             # (H, T, S)


def relative_position_bucket(relative_position: Tensor, bidirectional: bool, n_buckets: int = 32,
                             max_distance: int = 128) -> Tensor:
    """T5's bucket of each key-minus-query offset (Raffel et al. 2020, sec. 2.1).

    Bidirectional: half the buckets for keys before the query, half for keys after (offset > 0
    adds ``n_buckets / 2``). Causal: every bucket for keys at or before the query (later keys
    share bucket 0, and the causal mask hides them). Within a direction of ``b`` buckets, a
    distance n < b/2 has its own bucket; larger distances share buckets spaced
    logarithmically up to ``max_distance``, beyond which all share the last:

        bucket(n) = n                                              if n < b/2
                  = min(b - 1, b/2 + floor(log(n / (b/2)) / log(max_distance / (b/2)) * (b/2)))  else

    Args:
        relative_position: key position minus query position, any shape, long.
    Returns:
        bucket ids in [0, n_buckets), same shape.
    """
    bucket = torch.zeros_like(relative_position)
    if bidirectional:
        n_buckets //= 2
        bucket = bucket + (relative_position > 0).long() * n_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    exact = n_buckets // 2
    small = distance < exact
    logarithmic = exact + (torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                           * (n_buckets - exact)).long()
    logarithmic = logarithmic.clamp(max=n_buckets - 1)
    return bucket + torch.where(small, distance, logarithmic)


class RelativePositionBias(ScoreBias):
    """T5's learned relative position bias: one scalar per (bucket, head), added to the scores.

    T5 computes it in the first layer of each stack and shares it with the others; passing one
    instance to every attention layer of a stack does the same.

    Args:
        n_heads: H.
        bidirectional: encoder (True) or causal decoder (False) bucketing.
        n_buckets, max_distance: as :func:`relative_position_bucket` (T5: 32 and 128).
    """

    def __init__(self, n_heads: int, bidirectional: bool, n_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        if n_buckets < 4 or max_distance <= n_buckets // 2:
            raise ConfigError(f"need n_buckets >= 4 and max_distance > n_buckets / 2, got {n_buckets}, {max_distance}")
        self.n_heads, self.bidirectional = n_heads, bidirectional
        self.n_buckets, self.max_distance = n_buckets, max_distance
        self.embedding = nn.Embedding(n_buckets, n_heads)

    def extra_repr(self) -> str:
        return (f"n_heads={self.n_heads}, bidirectional={self.bidirectional}, n_buckets={self.n_buckets}, "
                f"max_distance={self.max_distance}")

    def bias_at(self, query_positions: Tensor, key_positions: Tensor) -> Tensor:
        """(H, T, S): the learned scalar of the bucket of ``key - query``, per head."""
        device = self.embedding.weight.device
        relative = key_positions.to(device)[None, :] - query_positions.to(device)[:, None]   # (T, S)
        buckets = relative_position_bucket(relative, self.bidirectional, self.n_buckets, self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1)                                     # (H, T, S)
