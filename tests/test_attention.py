"""MultiHeadAttention against attention_ref, cached decoding against full recompute, the cache."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from seqlab.errors import ConfigError, DataError
from seqlab.layers.attention import KeyValueCache, MultiHeadAttention, attention_ref
from seqlab.layers.positions import ALiBi, RelativePositionBias, RotaryPositions

D_MODEL, N_HEADS = 16, 4
HEAD_DIM = D_MODEL // N_HEADS
TOL = dict(rtol=1e-10, atol=1e-10)


def make_positions(kind: str | None, causal: bool = True):
    if kind == "rope":
        return RotaryPositions(HEAD_DIM)
    if kind == "alibi":
        return ALiBi(N_HEADS)
    if kind == "t5":
        torch.manual_seed(3)
        bias = RelativePositionBias(N_HEADS, bidirectional=not causal, n_buckets=8, max_distance=16)
        torch.nn.init.normal_(bias.embedding.weight)
        return bias
    return None


def make_layer(kind: str | None = None, n_kv_heads: int | None = None, causal: bool = True,
               cross: bool = False, seed: int = 0) -> MultiHeadAttention:
    torch.manual_seed(seed)
    layer = MultiHeadAttention(D_MODEL, N_HEADS, n_kv_heads, causal=causal,
                               positions=make_positions(kind, causal), cross=cross)
    return layer.double().eval()


def reference_forward(layer: MultiHeadAttention, x: Tensor, memory: Tensor | None = None,
                      key_padding_mask: Tensor | None = None) -> Tensor:
    """The layer's projections around attention_ref, without a cache."""
    batch, length, _ = x.shape
    source = x if memory is None else memory

    def heads(z: Tensor, n: int) -> Tensor:
        return z.view(batch, z.shape[1], n, HEAD_DIM).transpose(1, 2)

    q = heads(layer.q_proj(x), layer.n_heads)
    k = heads(layer.k_proj(source), layer.n_kv_heads)
    v = heads(layer.v_proj(source), layer.n_kv_heads)
    bias = None
    if isinstance(layer.positions, RotaryPositions):
        q, k = layer.positions(q, k, 0)
    elif isinstance(layer.positions, (ALiBi, RelativePositionBias)):
        bias = layer.positions.bias_at(torch.arange(length), torch.arange(k.shape[2]))
    y = attention_ref(q, k, v, causal=layer.causal, key_padding_mask=key_padding_mask, bias=bias)
    return layer.out_proj(y.transpose(1, 2).reshape(batch, length, -1))


def inputs(batch: int = 2, length: int = 7, seed: int = 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, D_MODEL, generator=generator, dtype=torch.float64)


# --- the reference itself -------------------------------------------------------------------


def test_attention_ref_closed_form_single_key_and_uniform_scores():
    q = torch.zeros(1, 1, 2, 2, dtype=torch.float64)                 # zero queries: uniform weights
    k = torch.randn(1, 1, 3, 2, dtype=torch.float64)
    v = torch.arange(6, dtype=torch.float64).view(1, 1, 3, 2)
    out = attention_ref(q, k, v, causal=True)                        # T=2, S=3: offset 1
    expected = torch.stack([v[0, 0, :2].mean(0), v[0, 0, :3].mean(0)])[None, None]
    torch.testing.assert_close(out, expected, **TOL)


def test_attention_ref_row_without_visible_key_is_zero_not_nan():
    q, k, v = (torch.randn(1, 2, 3, 4, dtype=torch.float64) for _ in range(3))
    padding = torch.tensor([[False, True, True]])                    # key 0 is padding
    out = attention_ref(q, k, v, causal=True, key_padding_mask=padding)
    assert not out.isnan().any()
    torch.testing.assert_close(out[:, :, 0], torch.zeros(1, 2, 4, dtype=torch.float64), **TOL)
    torch.testing.assert_close(out[:, :, 1], v[:, :, 1], **TOL)     # query 1 sees key 1 only


# --- fast path equals the reference ---------------------------------------------------------


@pytest.mark.parametrize("kind", [None, "rope", "alibi", "t5"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
def test_sdpa_path_equals_reference(kind, causal, n_kv_heads):
    layer = make_layer(kind, n_kv_heads, causal)
    x = inputs()
    torch.testing.assert_close(layer(x), reference_forward(layer, x), **TOL)


@pytest.mark.parametrize("kind", [None, "rope", "alibi", "t5"])
@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_path_equals_reference_with_key_padding(kind, causal):
    layer = make_layer(kind, 2, causal)
    x = inputs(batch=3, length=6)
    real = torch.tensor([[True] * 6, [True] * 4 + [False] * 2, [False] * 2 + [True] * 4])
    out = layer(x, key_padding_mask=real)
    assert not out.isnan().any()
    torch.testing.assert_close(out, reference_forward(layer, x, key_padding_mask=real), **TOL)


def test_padding_changes_the_output():
    """Guards the test above against a mask that is silently ignored."""
    layer = make_layer(None, causal=False)
    x = inputs(batch=1, length=5)
    real = torch.tensor([[True, True, True, False, False]])
    assert not torch.allclose(layer(x, key_padding_mask=real), layer(x))


# --- causality and padding properties -------------------------------------------------------


@pytest.mark.parametrize("kind", [None, "rope", "alibi", "t5"])
def test_causal_no_future_leakage(kind):
    layer = make_layer(kind, 2)
    x = inputs(length=8)
    changed = x.clone()
    changed[:, 5:] = torch.randn_like(changed[:, 5:])
    before, after = layer(x), layer(changed)
    torch.testing.assert_close(after[:, :5], before[:, :5], **TOL)
    assert not torch.allclose(after[:, 5:], before[:, 5:])


def test_cross_attention_ignores_padded_memory():
    layer = make_layer(None, 2, causal=False, cross=True)
    x, memory = inputs(length=4), inputs(length=6, seed=2)
    real = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    out = layer(x, memory, key_padding_mask=real)
    torch.testing.assert_close(out, reference_forward(layer, x, memory, real), **TOL)
    changed = memory.clone()
    changed[1, 3:] = 100 * torch.randn_like(changed[1, 3:])
    torch.testing.assert_close(layer(x, changed, key_padding_mask=real), out, **TOL)
    changed[1, :3] += 1.0                                            # real positions do matter
    assert not torch.allclose(layer(x, changed, key_padding_mask=real)[1], out[1])


# --- cached decoding equals a full pass -----------------------------------------------------


@pytest.mark.parametrize("kind", [None, "rope", "alibi", "t5"])
@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("n_kv_heads", [None, 1])
def test_cached_decoding_equals_full_pass(kind, chunk, n_kv_heads):
    layer = make_layer(kind, n_kv_heads)
    x = inputs(length=8)
    full = layer(x)
    cache = layer.make_cache(batch=2, max_len=3)                    # grows twice on the way
    pieces = [layer(x[:, start: start + chunk], cache=cache) for start in range(0, 8, chunk)]
    assert cache.length == 8
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, **TOL)


def test_cached_decoding_with_key_padding_over_all_keys():
    layer = make_layer("rope", 2)
    x = inputs(length=6)
    real = torch.tensor([[True] * 6, [False] * 2 + [True] * 4])     # left padding
    full = layer(x, key_padding_mask=real)
    cache = layer.make_cache(batch=2, max_len=8)
    pieces = [layer(x[:, :3], key_padding_mask=real[:, :3], cache=cache)]
    pieces += [layer(x[:, t: t + 1], key_padding_mask=real[:, : t + 1], cache=cache) for t in range(3, 6)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, **TOL)


# --- the cache ------------------------------------------------------------------------------


def test_cache_appends_in_place_within_capacity():
    cache = KeyValueCache(2, 3, 5, 4, torch.float64)
    pointers = (cache.key_buffer.data_ptr(), cache.value_buffer.data_ptr())
    written = []
    for length in (2, 1, 2):
        k = torch.randn(2, 3, length, 4, dtype=torch.float64)
        written.append(k)
        keys, values = cache.append(k, -k)
        assert keys.data_ptr() == pointers[0] and values.data_ptr() == pointers[1]
    assert (cache.key_buffer.data_ptr(), cache.value_buffer.data_ptr()) == pointers
    assert cache.length == 5 and cache.capacity == 5
    torch.testing.assert_close(cache.keys(), torch.cat(written, dim=2), rtol=0, atol=0)
    torch.testing.assert_close(cache.values(), -torch.cat(written, dim=2), rtol=0, atol=0)


def test_cache_grows_by_doubling_and_keeps_contents():
    cache = KeyValueCache(1, 2, 3, 4, torch.float64)
    written = [torch.randn(1, 2, 3, 4, dtype=torch.float64)]
    cache.append(written[0], written[0])
    pointer = cache.key_buffer.data_ptr()
    written.append(torch.randn(1, 2, 1, 4, dtype=torch.float64))
    keys, _ = cache.append(written[1], written[1])
    assert cache.capacity == 6 and cache.length == 4 and cache.key_buffer.data_ptr() != pointer
    written.append(torch.randn(1, 2, 10, 4, dtype=torch.float64))  # more than doubling: exact fit
    keys, values = cache.append(written[2], written[2])
    assert cache.capacity == 14 and keys.shape == (1, 2, 14, 4)
    torch.testing.assert_close(keys, torch.cat(written, dim=2), rtol=0, atol=0)
    torch.testing.assert_close(values, torch.cat(written, dim=2), rtol=0, atol=0)


def test_cache_rejects_wrong_shapes_and_dtypes():
    cache = KeyValueCache(2, 2, 4, 4, torch.float64)
    with pytest.raises(DataError, match="expected"):
        wrong_heads = torch.zeros(2, 3, 1, 4, dtype=torch.float64)
        cache.append(wrong_heads, wrong_heads)
    with pytest.raises(DataError, match="float32"):
        cache.append(torch.zeros(2, 2, 1, 4), torch.zeros(2, 2, 1, 4))


@pytest.mark.parametrize("kind", [None, "rope", "alibi", "t5"])
def test_select_then_continue_equals_continue_then_select(kind):
    layer = make_layer(kind, 2)
    x = inputs(batch=3, length=6)
    rows = torch.tensor([2, 0, 2, 1])                               # reorder and repeat, as beams do
    selected = layer.make_cache(batch=3, max_len=4)
    layer(x[:, :4], cache=selected)
    selected.select(rows)
    late = layer(x[rows, 4:], cache=selected)
    assert selected.batch_size == 4 and selected.length == 6
    reference = layer.make_cache(batch=3, max_len=4)
    layer(x[:, :4], cache=reference)
    torch.testing.assert_close(late, layer(x[:, 4:], cache=reference)[rows], **TOL)
    torch.testing.assert_close(selected.keys(), reference.keys()[rows], **TOL)


# --- configuration errors -------------------------------------------------------------------


@pytest.mark.parametrize("d_model, n_heads, n_kv_heads, match", [
    (16, 3, None, "n_heads=3"),
    (16, 0, None, "n_heads=0"),
    (16, 4, 3, "n_kv_heads=3"),
    (16, 4, 0, "n_kv_heads=0"),
])
def test_bad_head_counts_raise_config_error(d_model, n_heads, n_kv_heads, match):
    with pytest.raises(ConfigError, match=match) as info:
        MultiHeadAttention(d_model, n_heads, n_kv_heads, causal=True)
    assert "\n" not in str(info.value)


def test_bad_positions_and_cross_settings_raise_config_error():
    with pytest.raises(ConfigError, match="head_dim"):
        MultiHeadAttention(16, 4, causal=True, positions=RotaryPositions(8))
    with pytest.raises(ConfigError, match="ALiBi has 8 heads, the attention has n_heads=4"):
        MultiHeadAttention(16, 4, causal=True, positions=ALiBi(8))
    with pytest.raises(ConfigError, match="never causal"):
        MultiHeadAttention(16, 4, causal=True, cross=True)
    with pytest.raises(ConfigError, match="no positions"):
        MultiHeadAttention(16, 4, causal=False, cross=True, positions=ALiBi(4))


def test_projections_without_gradients_read_the_current_weights():
    """Without gradients (generation) q, k and v are three products rather than one over the
    stacked weights: each call reads the weights as they are, changed in place or replaced."""
    torch.manual_seed(0)
    layer = MultiHeadAttention(16, 4, 2, causal=True)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        before = layer(x)
        layer.k_proj.weight.data.mul_(2.0)                  # through .data: no new version
        after = layer(x)
        layer.v_proj.weight = torch.nn.Parameter(torch.randn_like(layer.v_proj.weight))
        replaced = layer(x)
    assert not torch.allclose(before, after)
    assert not torch.allclose(after, replaced)
    q, k, v = (torch.nn.functional.linear(x, p.weight, p.bias).view(2, 5, -1, 4).transpose(1, 2)
               for p in (layer.q_proj, layer.k_proj, layer.v_proj))
    expected = layer.out_proj(attention_ref(q, k, v, causal=True).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(replaced, expected, atol=1e-6, rtol=0)


def test_a_decoding_step_without_a_mask_equals_the_reference():
    """One new query over a cache (the no-mask fast path), plain and sliding-window."""
    torch.manual_seed(1)
    for window in (None, 6):
        layer = MultiHeadAttention(16, 4, 2, causal=True, window=window, positions=RotaryPositions(4)).eval()
        x = torch.randn(1, 9, 16)
        cache = layer.make_cache(1, 4)
        with torch.no_grad():
            stepped = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(9)], dim=1)
            whole = layer(x)
        torch.testing.assert_close(stepped, whole, atol=1e-5, rtol=0)
