"""Self-attention with Transformer-XL's relative positional encoding, as the Conformer uses it.

Dai et al. 2019 ("Transformer-XL", sec. 3.3, eq. 2 and appendix B) split the score of query i
(absolute position a_i) and key j (position b_j) into a content and a position part; with
``R_d`` the sinusoidal encoding (Vaswani et al. 2017, sec. 3.5) of the distance d = a_i - b_j,
``W_R`` a per-layer projection without bias, and u, v learned (H, E) biases:

    score(i, j) = (q_i + u) . k_j  +  (q_i + v) . (W_R R_{a_i - b_j}),     per head, / sqrt(E)

    out = softmax(score + M) V,     M = -inf at hidden keys (future ones when causal, padding).

Gulati et al. 2020 ("Conformer", sec. 2.1) use this in every block. The distance may be
negative (a bidirectional encoder sees later keys); ``R_{-d}`` is ``R_d`` with its sine columns
negated, sin(-d w) = -sin(d w).

Computing ``(q_i + v) . W_R R_{a_i - b_j}`` for every (i, j) by gathering a (T, S, E) tensor of
encodings (:func:`relative_attention_ref`, the specification) costs T S E memory. The fast path
(:class:`RelativePositionAttention`) multiplies the queries by the T + S - 1 distinct distances
once, (B, H, T, T + S - 1), and moves each row into place with Transformer-XL's relative
shift (:func:`relative_shift`). Positions are absolute frame indices, so a layer reading a
stream chunk by chunk with a key/value cache (``seqlab.layers.kv_cache``) computes the numbers
of one pass over the whole stream.

Shapes: B batch, H heads, T queries, S keys, E head dim, D = H E model width,
P = T + S - 1 distances.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError, DataError
from seqlab.layers.attention import attention_ref, visible_keys
from seqlab.layers.kv_cache import KeyValueCache
from seqlab.layers.positions import sinusoidal_table


def relative_sinusoids(distances: Tensor, d_model: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The sinusoidal encoding of (possibly negative) distances: (..., ) long -> (..., D).

    ``PE[d, 2i] = sin(d / 10000^(2i/D))``, ``PE[d, 2i+1] = cos(d / 10000^(2i/D))`` for any
    integer d, from :func:`~seqlab.layers.positions.sinusoidal_table` at |d| with the sines of
    negative d negated.
    """
    magnitude = distances.abs()
    length = int(magnitude.max()) + 1 if magnitude.numel() else 1
    table = sinusoidal_table(length, d_model, torch.float64, distances.device)         # (|d|max+1, D)
    encoding = table[magnitude]                                                      # (..., D)
    sign = torch.ones_like(encoding)
    sign[..., 0::2] = torch.where(distances < 0, -1.0, 1.0).to(torch.float64)[..., None]
    return (encoding * sign).to(dtype)


def relative_shift(position_scores: Tensor, key_length: int) -> Tensor:
    """Transformer-XL's relative shift: scores against distances -> scores against keys.

    Row i of ``position_scores`` holds query i's score against the P = T + S - 1 distances in
    descending order, column p for distance ``d_max - p`` (``d_max = a_{T-1} - b_0``, the
    largest). Query i and key j are ``a_i - b_j = d_max - (T - 1 - i + j)`` apart, so

        out[i, j] = position_scores[i, T - 1 - i + j]:

    each row is read from a window that starts one column further left than the row above.
    Padding one zero column in front, viewing the (T, P + 1) block as (P + 1, T), dropping the
    first row and viewing back as (T, P) lines the windows up in the first S columns (Dai et
    al. 2019, appendix B).

    Args:
        position_scores: (..., T, P) with P = T + S - 1.
        key_length: S.
    Returns:
        (..., T, S).
    """
    *leading, query_length, n_distances = position_scores.shape
    if n_distances != query_length + key_length - 1:
        raise DataError(f"relative_shift needs T + S - 1 = {query_length + key_length - 1} distances, "
                        f"got {n_distances}")
    padded = F.pad(position_scores, (1, 0))                                          # (..., T, P+1)
    padded = padded.reshape(*leading, n_distances + 1, query_length)                 # (..., P+1, T)
    shifted = padded[..., 1:, :].reshape(*leading, query_length, n_distances)        # (..., T, P)
    return shifted[..., :key_length]


class RelativePositionAttention(nn.Module):
    """Multi-head self-attention with relative positions (module docstring), fast path.

    Args:
        d_model: D.
        n_heads: H; must divide D.
        causal: a query sees only keys at or before its own position.
        dropout: on the attention weights, in training only.
    """

    def __init__(self, d_model: int, n_heads: int, *, causal: bool, dropout: float = 0.0):
        super().__init__()
        if n_heads < 1 or d_model % n_heads:
            raise ConfigError(f"n_heads={n_heads} must be positive and divide d_model={d_model}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.causal, self.dropout = causal, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.position_proj = nn.Linear(d_model, d_model, bias=False)                  # W_R
        self.content_bias = nn.Parameter(torch.randn(n_heads, self.head_dim) * 0.02)  # u
        self.position_bias = nn.Parameter(torch.randn(n_heads, self.head_dim) * 0.02)  # v

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, causal={self.causal}, dropout={self.dropout}"

    def make_cache(self, batch: int, max_len: int = 64) -> KeyValueCache:
        """An empty key/value cache for streaming (grows beyond ``max_len`` as needed)."""
        weight = self.q_proj.weight
        return KeyValueCache(batch, self.n_heads, max_len, self.head_dim, weight.dtype, weight.device)

    def heads(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, H, T, E)."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)

    def merge(self, y: Tensor) -> Tensor:
        """(B, H, T, E) head outputs -> (B, T, D) through ``out_proj``."""
        batch, _, length, _ = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(batch, length, self.d_model))

    def position_keys(self, distances: Tensor, dtype: torch.dtype) -> Tensor:
        """``W_R R_d`` per head: (...,) distances -> (H, ..., E)."""
        encoded = self.position_proj(relative_sinusoids(distances, self.d_model, dtype))   # (..., D)
        encoded = encoded.view(*distances.shape, self.n_heads, self.head_dim)
        return encoded.movedim(-2, 0)                                                   # (H, ..., E)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None,
                cache: KeyValueCache | None = None) -> Tensor:
        """Attend from the T frames of ``x`` to themselves and to the cached ones.

        Args:
            x: (B, T, D).
            key_padding_mask: (B, S) bool, true at real keys (S = cached + T).
            cache: the keys/values of the frames before ``x`` (absolute positions 0 ..
                cache.length - 1); ``x`` is appended to it in place.
        Returns:
            (B, T, D). A query that sees no key gets a zero attention output.
        """
        batch, query_length, _ = x.shape
        q, k, v = self.heads(self.q_proj(x)), self.heads(self.k_proj(x)), self.heads(self.v_proj(x))
        offset = 0
        if cache is not None:
            offset = cache.length
            k, v = cache.append(k, v)                                                   # (B, H, S, E)
        key_length = k.shape[2]
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != (batch, key_length):
            raise DataError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, expected "
                            f"(B, S) = ({batch}, {key_length}), true at real keys")
        distances = torch.arange(offset + query_length - 1, offset - key_length, -1, device=x.device)  # (P,)
        position_keys = self.position_keys(distances, q.dtype)                           # (H, P, E)
        position_scores = (q + self.position_bias[:, None]) @ position_keys.transpose(-1, -2)  # (B, H, T, P)
        bias = relative_shift(position_scores, key_length) / math.sqrt(self.head_dim)   # (B, H, T, S)
        query_positions = torch.arange(offset, offset + query_length, device=x.device)
        visible = visible_keys(query_positions, torch.arange(key_length, device=x.device), causal=self.causal,
                               key_padding_mask=key_padding_mask)
        has_key = None
        if visible is not None:
            has_key = visible.any(dim=-1, keepdim=True)                                  # (B|1, 1, T, 1)
            bias = bias.masked_fill(~(visible | ~has_key), float("-inf"))               # open empty rows
        y = F.scaled_dot_product_attention(q + self.content_bias[:, None], k, v, attn_mask=bias,
                                           dropout_p=self.dropout if self.training else 0.0)
        if has_key is not None:
            y = y.masked_fill(~has_key, 0.0)
        return self.merge(y)


def relative_attention_ref(attention: RelativePositionAttention, x: Tensor,
                           key_padding_mask: Tensor | None = None) -> Tensor:
    """The specification of :class:`RelativePositionAttention` over a whole sequence (no cache,
    no dropout): every (query, key) pair's encoding gathered explicitly, and the softmax of
    :func:`~seqlab.layers.attention.attention_ref` with the position term as its bias.

    Args:
        attention: the layer whose parameters are used.
        x: (B, T, D).
        key_padding_mask: (B, T) bool, true at real frames.
    Returns:
        (B, T, D).
    """
    length = x.shape[1]
    q, k, v = (attention.heads(proj(x)) for proj in (attention.q_proj, attention.k_proj, attention.v_proj))
    positions = torch.arange(length, device=x.device)
    distances = positions[:, None] - positions[None, :]                                 # (T, S): a_i - b_j
    position_keys = attention.position_keys(distances, q.dtype)                         # (H, T, S, E)
    position_term = torch.einsum("bhte,htse->bhts", q + attention.position_bias[:, None], position_keys)
    y = attention_ref(q + attention.content_bias[:, None], k, v, causal=attention.causal,
                      key_padding_mask=key_padding_mask,
                      bias=position_term / math.sqrt(attention.head_dim))               # (B, H, T, E)
    return attention.merge(y)
