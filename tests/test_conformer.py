"""The Conformer block and its relative-position attention (seqlab.layers.conformer,
seqlab.layers.relative_attention): fast paths against explicit references, padding
invariance, causality, and chunked streaming against the whole sequence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import chunks
from seqlab.errors import ConfigError, DataError
from seqlab.layers.conformer import ConformerBlock, ConvolutionModule, lengths_to_mask
from seqlab.layers.positions import sinusoidal_table
from seqlab.layers.relative_attention import (RelativePositionAttention, relative_attention_ref,
                                              relative_shift, relative_sinusoids)

D, H = 8, 2


def make_attention(causal: bool, seed: int = 0) -> RelativePositionAttention:
    torch.manual_seed(seed)
    attention = RelativePositionAttention(D, H, causal=causal).double().eval()
    with torch.no_grad():                                # u, v large enough to matter
        attention.content_bias.normal_()
        attention.position_bias.normal_()
    return attention


def make_block(causal: bool, kernel: int = 3, seed: int = 0, dtype=torch.float64) -> ConformerBlock:
    torch.manual_seed(seed)
    block = ConformerBlock(D, H, kernel, ff_mult=2, dropout=0.1, causal=causal).to(dtype).eval()
    with torch.no_grad():                                # non-trivial norms and biases
        for name, parameter in block.named_parameters():
            if "norm" in name or name.endswith("_bias"):
                parameter.add_(0.3 * torch.randn_like(parameter))
    return block


# ---- relative positions -------------------------------------------------------------------------

def test_relative_sinusoids_match_the_formula_for_both_signs():
    distances = torch.arange(-6, 7)
    encoding = relative_sinusoids(distances, 6, torch.float64)
    for row, d in enumerate(distances.tolist()):
        for i in range(3):
            angle = d / 10000 ** (2 * i / 6)
            assert encoding[row, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-12)
            assert encoding[row, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-12)
    torch.testing.assert_close(encoding[6:], sinusoidal_table(7, 6))


@settings(max_examples=25, deadline=None)
@given(query_length=st.integers(1, 6), past=st.integers(0, 6), seed=st.integers(0, 10_000))
def test_relative_shift_puts_each_distance_under_its_key(query_length, past, seed):
    """Scores given as a function of the distance land at (i, j) with distance a_i - b_j."""
    key_length = past + query_length
    generator = torch.Generator().manual_seed(seed)
    d_max = past + query_length - 1
    by_distance = torch.randn(2, query_length, query_length + key_length - 1, generator=generator)
    shifted = relative_shift(by_distance, key_length)
    for i in range(query_length):
        for j in range(key_length):
            distance = past + i - j
            torch.testing.assert_close(shifted[:, i, j], by_distance[:, i, d_max - distance], rtol=0, atol=0)


def test_relative_shift_refuses_a_wrong_number_of_distances():
    with pytest.raises(DataError, match="distances"):
        relative_shift(torch.zeros(3, 5), 4)


@settings(max_examples=15, deadline=None)
@given(causal=st.booleans(), lengths=st.lists(st.integers(1, 7), min_size=1, max_size=3))
def test_relative_attention_equals_its_reference(causal, lengths):
    attention = make_attention(causal)
    x = torch.randn(len(lengths), max(lengths), D, dtype=torch.float64)
    mask = lengths_to_mask(torch.tensor(lengths), max(lengths))
    torch.testing.assert_close(attention(x, mask), relative_attention_ref(attention, x, mask),
                               rtol=1e-10, atol=1e-12)


def test_relative_attention_gradients_equal_the_reference():
    attention = make_attention(causal=False)
    x = torch.randn(2, 5, D, dtype=torch.float64, requires_grad=True)
    mask = lengths_to_mask(torch.tensor([5, 3]), 5)
    weights = torch.randn(2, 5, D, dtype=torch.float64) * mask[..., None]
    grads = []
    for fn in (attention, lambda x, m: relative_attention_ref(attention, x, m)):
        params = [x, *attention.parameters()]
        grads.append(torch.autograd.grad((fn(x, mask) * weights).sum(), params))
    for fast, ref in zip(*grads):
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)


def test_relative_attention_depends_on_distance_and_on_u_and_v():
    """The reference is not blind to what the fast path adds: dropping u, v or W_R changes it."""
    attention = make_attention(causal=False)
    x = torch.randn(1, 5, D, dtype=torch.float64)
    full = relative_attention_ref(attention, x)
    for parameter in (attention.content_bias, attention.position_bias, attention.position_proj.weight):
        saved = parameter.detach().clone()
        with torch.no_grad():
            parameter.zero_()
        assert (relative_attention_ref(attention, x) - full).abs().max() > 1e-3
        with torch.no_grad():
            parameter.copy_(saved)


@settings(max_examples=10, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=8))
def test_cached_causal_attention_equals_the_whole_sequence(sizes):
    attention = make_attention(causal=True)
    x = torch.randn(2, 9, D, dtype=torch.float64)
    cache = attention.make_cache(2, max_len=2)                          # grows on the way
    pieces = [attention(x[:, start:end], cache=cache) for start, end in chunks(sizes, 9)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), relative_attention_ref(attention, x),
                               rtol=1e-10, atol=1e-12)


# ---- the block ----------------------------------------------------------------------------------

def conformer_block_ref(block: ConformerBlock, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Gulati et al. 2020, eqs. 1-3 and Figs. 2-4, written out with the block's parameters."""
    def layer_norm(norm, h):
        return F.layer_norm(h, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    def feedforward(norm, ff, h):
        return F.linear(F.silu(F.linear(layer_norm(norm, h), ff.up.weight, ff.up.bias)), ff.down.weight, ff.down.bias)

    conv = block.conv
    kernel = conv.depthwise.weight.shape[-1]
    x = x + 0.5 * feedforward(block.ff1_norm, block.ff1, x)
    x = x + relative_attention_ref(block.attention, layer_norm(block.attention_norm, x), mask)
    a, b = F.linear(layer_norm(conv.input_norm, x), conv.pointwise_in.weight, conv.pointwise_in.bias).chunk(2, -1)
    gated = (a * torch.sigmoid(b)) * mask[..., None]                    # padded frames are zeros
    left, right = (kernel - 1, 0) if block.causal else (kernel // 2, kernel // 2)
    convolved = F.conv1d(F.pad(gated.transpose(1, 2), (left, right)), conv.depthwise.weight, conv.depthwise.bias,
                         groups=gated.shape[-1]).transpose(1, 2)
    hidden = F.silu(layer_norm(conv.depthwise_norm, convolved))
    x = x + F.linear(hidden, conv.pointwise_out.weight, conv.pointwise_out.bias)
    x = x + 0.5 * feedforward(block.ff2_norm, block.ff2, x)
    return layer_norm(block.final_norm, x)


@pytest.mark.parametrize("causal,kernel", [(False, 3), (False, 5), (True, 3), (True, 4)])
def test_block_equals_the_papers_equations(causal, kernel):
    block = make_block(causal, kernel)
    x = torch.randn(3, 7, D, dtype=torch.float64)
    mask = lengths_to_mask(torch.tensor([7, 4, 1]), 7)
    real = mask[..., None]
    torch.testing.assert_close(block(x, mask) * real, conformer_block_ref(block, x, mask) * real,
                               rtol=1e-10, atol=1e-12)


@settings(max_examples=12, deadline=None)
@given(causal=st.booleans(), length=st.integers(1, 6), extra=st.integers(1, 5), seed=st.integers(0, 1000))
def test_padding_never_changes_real_frames(causal, length, extra, seed):
    block = make_block(causal, kernel=5 if not causal else 4)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, length, D, dtype=torch.float64, generator=generator)
    alone = block(x, torch.ones(1, length, dtype=torch.bool))
    garbage = 100 * torch.randn(1, extra, D, dtype=torch.float64, generator=generator)
    other = torch.randn(1, length + extra, D, dtype=torch.float64, generator=generator)
    batch = torch.cat([torch.cat([x, garbage], dim=1), other])
    padded = block(batch, lengths_to_mask(torch.tensor([length, length + extra]), length + extra))
    torch.testing.assert_close(padded[:1, :length], alone, rtol=1e-10, atol=1e-12)


def test_causal_block_never_reads_the_future():
    block = make_block(causal=True, kernel=4)
    x = torch.randn(1, 8, D, dtype=torch.float64)
    changed = x.clone()
    changed[:, 5:] += torch.randn(1, 3, D, dtype=torch.float64)
    before, after = block(x), block(changed)
    torch.testing.assert_close(after[:, :5], before[:, :5], rtol=0, atol=1e-13)
    assert (after[:, 5:] - before[:, 5:]).abs().max() > 1e-3


@settings(max_examples=12, deadline=None)
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=12), seed=st.integers(0, 1000))
def test_block_chunk_by_chunk_equals_the_whole_sequence(sizes, seed):
    block = make_block(causal=True, kernel=4, seed=seed % 3, dtype=torch.float32)
    x = torch.randn(2, 13, D, generator=torch.Generator().manual_seed(seed))
    cache = block.init_cache(2)
    pieces = [block.forward_chunk(x[:, start:end], cache)[0] for start, end in chunks(sizes, 13)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), block(x), rtol=1e-5, atol=1e-5)


def test_one_frame_chunks_equal_the_whole_sequence():
    block = make_block(causal=True, kernel=3, dtype=torch.float32)
    x = torch.randn(1, 10, D)
    cache = block.init_cache(1)
    steps = [block.forward_chunk(x[:, t:t + 1], cache)[0] for t in range(10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), block(x), rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_parameter():
    block = make_block(causal=False, dtype=torch.float32).train()
    x = torch.randn(2, 6, D, requires_grad=True)
    mask = lengths_to_mask(torch.tensor([6, 3]), 6)
    (block(x, mask) * mask[..., None]).pow(2).sum().backward()
    assert x.grad.abs().sum() > 0
    for name, parameter in block.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_bad_configurations_are_refused():
    with pytest.raises(ConfigError, match="odd"):
        ConformerBlock(D, H, conv_kernel=4, ff_mult=2, dropout=0.0, causal=False)
    with pytest.raises(ConfigError, match="divide"):
        ConformerBlock(D, 3, conv_kernel=3, ff_mult=2, dropout=0.0)
    with pytest.raises(ConfigError, match="causal=True"):
        ConformerBlock(D, H, conv_kernel=3, ff_mult=2, dropout=0.0).init_cache(1)
    with pytest.raises(ConfigError, match="causal=True"):
        ConvolutionModule(D, 3, 0.0, causal=False).init_state(1)
