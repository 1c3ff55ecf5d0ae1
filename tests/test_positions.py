"""Position schemes: closed forms by hand, RoPE against its loop reference and its identities,
ALiBi slopes against the authors' rule, and offsets (cached decoding) against full sequences."""

import math

import pytest
import torch

from seqlab.errors import ConfigError, DataError
from seqlab.layers.positions import (
    ALiBi, LearnedPositions, RotaryPositions, SinusoidalPositions, alibi_slopes, rotary_ref,
)

B, H, T, E, D = 2, 3, 9, 8, 6


# --- sinusoidal -------------------------------------------------------------------------------

def test_sinusoidal_equals_the_formula_by_hand():
    positions = SinusoidalPositions(D)
    x = torch.zeros(1, 40, D, dtype=torch.float64)
    table = positions(x)[0]                                                  # (40, D)
    for p, i in [(0, 0), (1, 0), (5, 1), (17, 2), (39, 2)]:
        angle = p / 10000 ** (2 * i / D)
        assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-7)
        assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-7)


def test_sinusoidal_offset_equals_slice_of_full_and_grows_past_max_len():
    torch.manual_seed(0)
    positions = SinusoidalPositions(D, max_len=4)
    x = torch.randn(B, T, D, dtype=torch.float64)
    full = positions(x)
    torch.testing.assert_close(positions(x[:, 3:], offset=3), full[:, 3:], rtol=0, atol=0)
    torch.testing.assert_close(full - x, SinusoidalPositions(D)(torch.zeros(B, T, D)).double(),
                               rtol=0, atol=1e-12)


# --- learned ----------------------------------------------------------------------------------

def test_learned_offset_equals_slice_of_full():
    torch.manual_seed(0)
    positions = LearnedPositions(D, max_len=T).double()
    x = torch.randn(B, T, D, dtype=torch.float64)
    torch.testing.assert_close(positions(x[:, 4:], offset=4), positions(x)[:, 4:], rtol=0, atol=0)
    torch.testing.assert_close(positions(x) - x, positions.embedding.weight[None].expand(B, -1, -1),
                               rtol=0, atol=1e-12)


def test_learned_position_beyond_table_raises_a_helpful_data_error():
    positions = LearnedPositions(D, max_len=8)
    positions(torch.zeros(1, 3, D), offset=5)                                # positions 5..7 fit
    with pytest.raises(DataError, match=r"length 9 .*max_len=8.*raise max_len"):
        positions(torch.zeros(1, 3, D), offset=6)
    with pytest.raises(DataError, match="length 12"):
        positions(torch.zeros(1, 12, D))


# --- rotary -----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rotary_equals_the_loop_reference(layout):
    torch.manual_seed(0)
    rope = RotaryPositions(E, base=500.0, layout=layout)
    q = torch.randn(B, H, T, E, dtype=torch.float64)
    k = torch.randn(B, 1, T, E, dtype=torch.float64)                         # GQA: one kv head
    rq, rk = rope(q, k, offset=5)
    positions = range(5, 5 + T)
    torch.testing.assert_close(rq, rotary_ref(q, positions, 500.0, layout), rtol=0, atol=1e-12)
    torch.testing.assert_close(rk, rotary_ref(k, positions, 500.0, layout), rtol=0, atol=1e-12)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rotary_score_depends_only_on_relative_position(layout):
    torch.manual_seed(0)
    rope = RotaryPositions(E, layout=layout)
    q_vec, k_vec = torch.randn(2, E, dtype=torch.float64)

    def score(m: int, n: int) -> torch.Tensor:
        rq, _ = rope(q_vec[None, None, None], q_vec[None, None, None], offset=m)
        _, rk = rope(k_vec[None, None, None], k_vec[None, None, None], offset=n)
        return (rq * rk).sum()

    for m, n, shift in [(3, 1, 7), (0, 5, 100), (12, 12, 1000)]:
        torch.testing.assert_close(score(m + shift, n + shift), score(m, n), rtol=0, atol=1e-10)
    assert not torch.allclose(score(3, 1), score(3, 2))                      # positions do matter


def test_half_and_interleaved_are_the_same_rotation_up_to_a_permutation():
    torch.manual_seed(0)
    x = torch.randn(B, H, T, E, dtype=torch.float64)
    to_half = torch.cat([torch.arange(0, E, 2), torch.arange(1, E, 2)])     # half index <- interleaved
    half, _ = RotaryPositions(E, layout="half")(x[..., to_half], x, offset=2)
    interleaved, _ = RotaryPositions(E, layout="interleaved")(x, x, offset=2)
    torch.testing.assert_close(half, interleaved[..., to_half], rtol=0, atol=1e-12)
    assert not torch.allclose(RotaryPositions(E, layout="half")(x, x, offset=2)[0], interleaved)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rotary_offset_equals_slice_of_full_and_preserves_norms(layout):
    torch.manual_seed(0)
    rope = RotaryPositions(E, layout=layout)
    q = torch.randn(B, H, T, E, dtype=torch.float64)
    k = torch.randn(B, H, T, E, dtype=torch.float64)
    full_q, full_k = rope(q, k)
    part_q, part_k = rope(q[:, :, 4:], k[:, :, 4:], offset=4)
    torch.testing.assert_close(part_q, full_q[:, :, 4:], rtol=0, atol=1e-12)
    torch.testing.assert_close(part_k, full_k[:, :, 4:], rtol=0, atol=1e-12)
    torch.testing.assert_close(full_q.norm(dim=-1), q.norm(dim=-1), rtol=1e-12, atol=0)
    assert not torch.allclose(full_q[:, :, 1:], q[:, :, 1:])                 # it does rotate


def test_rotary_keeps_low_precision_dtypes_and_stays_close():
    torch.manual_seed(0)
    rope = RotaryPositions(E)
    q = torch.randn(B, H, T, E, dtype=torch.float64)
    exact, _ = rope(q, q, offset=1000)
    low, _ = rope(q.bfloat16(), q.bfloat16(), offset=1000)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.double(), exact, rtol=2e-2, atol=2e-2)


def test_rotary_rejects_odd_head_dim_and_unknown_layout():
    with pytest.raises(ConfigError, match="head_dim must be even.*7"):
        RotaryPositions(7)
    with pytest.raises(ConfigError, match="layout"):
        RotaryPositions(8, layout="neox")  # type: ignore[arg-type]


# --- ALiBi ------------------------------------------------------------------------------------

def test_alibi_slopes_for_a_power_of_two_are_exact_halvings():
    assert alibi_slopes(8) == [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]
    assert ALiBi(8).slopes.tolist() == [2.0 ** -k for k in range(1, 9)]


@pytest.mark.parametrize("n_heads, closest", [(12, 8), (6, 4)])
def test_alibi_slopes_otherwise_follow_the_authors_rule(n_heads, closest):
    own = [2.0 ** (-8 / closest * k) for k in range(1, closest + 1)]
    doubled = [2.0 ** (-8 / (2 * closest) * k) for k in range(1, 2 * closest + 1)]
    expected = own + doubled[0::2][: n_heads - closest]
    if n_heads == 12:
        assert expected[8:] == [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5]
    else:
        assert expected == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]
    torch.testing.assert_close(torch.tensor(alibi_slopes(n_heads), dtype=torch.float64),
                               torch.tensor(expected, dtype=torch.float64), rtol=1e-15, atol=0)


def test_alibi_bias_is_minus_slope_times_distance_on_the_causal_part():
    alibi = ALiBi(4)
    bias = alibi.bias(5, 5)                                                  # (H, T, S)
    assert bias.shape == (4, 5, 5)
    for h, slope in enumerate(alibi_slopes(4)):
        for i in range(5):
            for j in range(i + 1):
                assert bias[h, i, j].item() == pytest.approx(-slope * (i - j), rel=1e-6)
    assert torch.isfinite(bias).all()


def test_alibi_bias_with_offset_equals_rows_of_the_full_bias():
    alibi = ALiBi(6)
    full = alibi.bias(10, 10)
    torch.testing.assert_close(alibi.bias(3, 10, offset=7), full[:, 7:], rtol=0, atol=0)
    torch.testing.assert_close(alibi.bias(1, 10, offset=9), full[:, 9:], rtol=0, atol=0)


# --- T5's relative position buckets -----------------------------------------------------------


def test_t5_buckets_by_hand():
    # 32 buckets, max distance 128. Bidirectional: 16 per direction, exact below 8, then
    # 8 + floor(log(n / 8) / log(16) * 8): n=16 -> 10, n=200 -> min(15, 17) = 15; later keys + 16.
    from seqlab.layers.positions import relative_position_bucket

    offsets = torch.tensor([0, -1, 1, -7, -8, -16, -127, -200, 200, 16])
    expected = torch.tensor([0, 1, 17, 7, 8, 10, 15, 15, 31, 26])
    assert torch.equal(relative_position_bucket(offsets, bidirectional=True), expected)
    # Causal: all 32 buckets look back (exact below 16); later keys fall in bucket 0.
    # n=32 -> 16 + floor(log(2) / log(8) * 16) = 16 + 5 = 21.
    causal = relative_position_bucket(torch.tensor([0, -1, -15, -16, -32, -1000, 5]), bidirectional=False)
    assert causal.tolist() == [0, 1, 15, 16, 21, 31, 0]


def test_relative_position_bias_depends_only_on_the_offset():
    from seqlab.layers.positions import RelativePositionBias

    torch.manual_seed(0)
    bias = RelativePositionBias(3, bidirectional=True)
    near = bias.bias_at(torch.arange(5), torch.arange(5))
    far = bias.bias_at(torch.arange(5) + 40, torch.arange(5) + 40)
    torch.testing.assert_close(near, far, rtol=0, atol=0)
    assert near.shape == (3, 5, 5)
    assert not torch.equal(near[:, 0, 1], near[:, 1, 0])               # direction matters


def test_sinusoidal_scales_the_embeddings_as_vaswani_et_al():
    # x * sqrt(D) + PE (sec. 3.4); the models initialise such embeddings at N(0, 1/D), so tokens
    # and positions have comparable sizes.
    from seqlab import registry
    from seqlab.layers.positions import SinusoidalPositions, sinusoidal_table

    x = torch.randn(2, 5, 16)
    scaled = SinusoidalPositions(16, embedding_scale=4.0)
    torch.testing.assert_close(scaled(x, 3), 4.0 * x + sinusoidal_table(8, 16, torch.float32)[3:8])
    model = registry.build("transformer", None, vocab_size=500, d_model=64, positions="sinusoidal")
    assert abs(model.token_embedding.weight.std().item() - 64 ** -0.5) < 0.01
    assert abs(registry.build("transformer", None, vocab_size=500, d_model=64).token_embedding.weight.std().item()
               - 0.02) < 0.002


def test_rotary_table_growth_changes_no_value():
    """The cos/sin table kept between calls gives bit-identical rotations whether it was built
    for a short or a long sequence first."""
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 300, 8), torch.randn(1, 2, 300, 8)
    short_first = RotaryPositions(8, base=500.0)
    short_first(q[:, :, :3], k[:, :, :3], 0)
    long_first = RotaryPositions(8, base=500.0)
    long_first(q, k, 0)
    for offset, length in ((0, 300), (250, 50), (7, 1)):
        a = short_first(q[:, :, :length], k[:, :, :length], offset)
        b = long_first(q[:, :, :length], k[:, :, :length], offset)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    expected = rotary_ref(q[0, 0, :5].double(), list(range(250, 255)), base=500.0)
    got = long_first(q[:, :, :5].double(), k[:, :, :5].double(), 250)[0][0, 0]
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_a_rotary_table_built_in_inference_mode_serves_training():
    rope = RotaryPositions(8)
    q, k = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    with torch.inference_mode():
        rope(q, k, 0)
    q.requires_grad_()
    rotated, _ = rope(q, k, 0)
    rotated.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
