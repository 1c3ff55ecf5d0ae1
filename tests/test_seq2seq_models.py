"""The recurrent encoder-decoders beyond the shared contract (tests/test_contracts.py): the
attention scores against their equations, each model's defining wiring, and its errors."""

import pytest
import torch

from seqlab.errors import ConfigError
from seqlab.layers.recurrent import reverse_padded
from seqlab.layers.rnn_attention import SCORE_KINDS, RecurrentAttention, attention_ref
from seqlab.models.seq2seq import (Bahdanau, BahdanauConfig, Cho, ChoConfig, Luong, LuongConfig, Sutskever,
                                   SutskeverConfig)

SIZES = dict(src_vocab_size=9, tgt_vocab_size=8, d_model=6)


def source_batch():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    return torch.randint(1, 9, (3, 5)) * mask, mask


@pytest.mark.parametrize("kind", SCORE_KINDS)
def test_attention_equals_its_equations(kind):
    torch.manual_seed(1)
    key_size = 5 if kind == "dot" else 7
    module = RecurrentAttention(kind, 5, key_size, 4).double()
    query, states = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 6, key_size, dtype=torch.float64)
    mask = torch.arange(6) < torch.tensor([6, 2, 1])[:, None]
    context, weights = module(query, module.keys(states), states, mask)
    expected_context, expected_weights = attention_ref(kind, query, states, mask, module)
    torch.testing.assert_close(weights, expected_weights, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(context, expected_context, rtol=1e-12, atol=1e-12)
    assert torch.all(weights[~mask] == 0)


def test_dot_attention_needs_equal_widths():
    with pytest.raises(ConfigError, match="dot attention"):
        RecurrentAttention("dot", 4, 8)
    with pytest.raises(ConfigError, match="unknown attention score"):
        RecurrentAttention("cosine", 4, 4)


def test_sutskever_reads_the_source_reversed_when_asked():
    src, mask = source_batch()
    torch.manual_seed(2)
    reversing = Sutskever(SutskeverConfig(**SIZES, reverse_source=True)).eval()
    plain = Sutskever(SutskeverConfig(**SIZES, reverse_source=False)).eval()
    plain.load_state_dict(reversing.state_dict())
    lengths = mask.sum(dim=1)
    flipped = reverse_padded(src[..., None], lengths)[..., 0]               # each row reversed within its length
    for got, expected in zip(reversing.encode(src, mask)["final"], plain.encode(flipped, mask)["final"]):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_cho_feeds_the_same_summary_to_every_step():
    src, mask = source_batch()
    model = Cho(ChoConfig(**SIZES)).eval()
    state = model.init_state(3, model.encode(src, mask))
    _, after = model.step(torch.full((3,), 1), state)
    assert torch.equal(after["context"], state["context"])
    # The summary is all the decoder knows of the source: a different source changes it.
    other = model.init_state(3, model.encode(src.roll(1, dims=0), mask.roll(1, dims=0)))
    assert not torch.allclose(other["context"], state["context"])


@pytest.mark.parametrize("model_class, config", [(Bahdanau, BahdanauConfig), (Luong, LuongConfig)])
def test_attention_models_record_each_steps_weights(model_class, config):
    src, mask = source_batch()
    model = model_class(config(**SIZES)).eval()
    tgt_in = torch.tensor([[1, 4, 5], [1, 6, 0], [1, 3, 3]])
    weights = model.attention_weights(src, mask, tgt_in)
    state = model.init_state(3, model.encode(src, mask))
    for t in range(3):
        _, state = model.step(tgt_in[:, t], state)
        torch.testing.assert_close(state["attention"], weights[:, t], rtol=0, atol=0)


def test_bahdanau_attends_from_the_previous_state_and_luong_from_the_current():
    src, mask = source_batch()
    bahdanau = Bahdanau(BahdanauConfig(**SIZES)).eval()
    state = bahdanau.init_state(3, bahdanau.encode(src, mask))
    # Bahdanau's first weights depend on s_0 only, not on the token read.
    _, first = bahdanau.step(torch.full((3,), 4), state)
    _, other = bahdanau.step(torch.full((3,), 5), state)
    torch.testing.assert_close(first["attention"], other["attention"], rtol=0, atol=0)
    luong = Luong(LuongConfig(**SIZES)).eval()
    state = luong.init_state(3, luong.encode(src, mask))
    _, first = luong.step(torch.full((3,), 4), state)
    _, other = luong.step(torch.full((3,), 5), state)
    assert not torch.allclose(first["attention"][:2], other["attention"][:2])


def test_luong_input_feeding_feeds_the_attentional_state():
    src, mask = source_batch()
    model = Luong(LuongConfig(**SIZES)).eval()
    state = model.init_state(3, model.encode(src, mask))
    assert torch.equal(state["feed"], torch.zeros(3, 6))
    _, after = model.step(torch.full((3,), 4), state)
    assert not torch.equal(after["feed"], state["feed"])
    without = Luong(LuongConfig(**SIZES, input_feeding=False))
    assert without.decoder.input_size == 6 and model.decoder.input_size == 12


@pytest.mark.parametrize("field, value", [("tgt_vocab_size", 3), ("d_model", 0), ("dropout", 1.0)])
def test_configs_refuse_impossible_sizes(field, value):
    with pytest.raises(ConfigError, match=field):
        SutskeverConfig(**{**SIZES, field: value})
    with pytest.raises(ConfigError, match="score"):
        LuongConfig(**SIZES, score="cosine")
