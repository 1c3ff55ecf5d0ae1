"""Many-to-one and many-to-many heads over recurrent encoders, and their pooling."""

import pytest
import torch

from seqlab.errors import ConfigError
from seqlab.layers.pooling import Pooling
from seqlab.models.recurrent_heads import ManyToMany, ManyToOne, RecurrentHeadConfig

MASK = torch.tensor([[True, True, True, True], [True, True, False, False]])


def test_last_and_mean_pooling_respect_the_mask():
    states = torch.randn(2, 4, 3)
    torch.testing.assert_close(Pooling("last", 3)(states, MASK), torch.stack([states[0, 3], states[1, 1]]))
    torch.testing.assert_close(Pooling("mean", 3)(states, MASK),
                               torch.stack([states[0].mean(0), states[1, :2].mean(0)]))


@pytest.mark.parametrize("kind", ["last", "mean", "attention"])
def test_pooling_ignores_padding(kind):
    torch.manual_seed(0)
    pooling = Pooling(kind, 3)
    states = torch.randn(2, 4, 3)
    changed = states.clone()
    changed[1, 2:] = 100.0
    torch.testing.assert_close(pooling(changed, MASK), pooling(states, MASK))


def test_attention_pooling_is_a_convex_combination():
    torch.manual_seed(0)
    states = torch.randn(2, 4, 3)
    pooled = Pooling("attention", 3)(states, MASK)
    low, high = states[1, :2].min(0).values, states[1, :2].max(0).values
    assert torch.all(pooled[1] >= low - 1e-6) and torch.all(pooled[1] <= high + 1e-6)


def train(model, batches, steps=150, lr=1e-2):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        loss = model.loss(*batches(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("pooling", ["last", "mean", "attention"])
def test_many_to_one_learns_which_token_came_first(pooling):
    # The label is the first token: "last" pooling must carry it through the whole sequence.
    torch.manual_seed(0)
    model = ManyToOne(RecurrentHeadConfig(n_outputs=4, vocab_size=4, d_model=16, pooling=pooling))

    def batch(seed):
        tokens = torch.randint(0, 4, (32, 6), generator=torch.Generator().manual_seed(seed))
        return tokens, tokens[:, 0], torch.ones(32, 6, dtype=torch.bool)

    train(model, batch)
    tokens, labels, mask = batch(10_000)
    assert (model.predict(tokens, mask) == labels).float().mean() > 0.95


def test_many_to_many_tags_every_position_and_masks_padding():
    torch.manual_seed(0)
    config = RecurrentHeadConfig(n_outputs=3, vocab_size=6, d_model=16, bidirectional=True)
    model = ManyToMany(config)

    def batch(seed):
        generator = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, 6, (32, 7), generator=generator)
        lengths = torch.randint(1, 8, (32,), generator=generator)
        mask = torch.arange(7) < lengths[:, None]
        return tokens, tokens % 3, mask

    train(model, batch)
    tokens, tags, mask = batch(10_000)
    assert (model.decode(tokens, mask)[mask] == tags[mask]).float().mean() > 0.95
    changed = tags.clone()
    changed[~mask] = (changed[~mask] + 1) % 3
    torch.testing.assert_close(model.loss(tokens, changed, mask), model.loss(tokens, tags, mask))


def test_real_valued_inputs_and_bad_configs():
    model = ManyToOne(RecurrentHeadConfig(n_outputs=1, n_features=2, d_model=8))
    assert model(torch.randn(5, 9, 2)).shape == (5, 1)
    with pytest.raises(ConfigError, match="exactly one"):
        RecurrentHeadConfig(n_outputs=1)
    with pytest.raises(ConfigError, match="exactly one"):
        RecurrentHeadConfig(n_outputs=1, vocab_size=3, n_features=2)


def test_bidirectional_last_pooling_is_each_directions_final_state():
    torch.manual_seed(0)
    model = ManyToOne(RecurrentHeadConfig(n_outputs=2, vocab_size=9, d_model=6, n_layers=2, bidirectional=True))
    tokens, lengths = torch.randint(0, 9, (3, 7)), torch.tensor([7, 2, 5])
    mask = torch.arange(7) < lengths[:, None]
    _, (final, _) = model.recurrent(model.embedding(tokens), lengths=lengths)      # (layers x 2, B, H)
    summary = torch.cat([final[-2], final[-1]], dim=-1)                          # the top layer, both ways
    torch.testing.assert_close(model.pool(model.encode(tokens, mask), mask), summary)


@pytest.mark.parametrize("cell", ["lstm", "jordan"])
def test_one_direction_runs_unpacked_and_equals_the_packed_run(cell):
    torch.manual_seed(0)
    model = ManyToMany(RecurrentHeadConfig(n_outputs=3, vocab_size=9, cell=cell, d_model=6, n_layers=2))
    tokens, lengths = torch.randint(0, 9, (3, 7)), torch.tensor([7, 2, 5])
    mask = torch.arange(7) < lengths[:, None]
    packed, _ = model.recurrent(model.embedding(tokens), lengths=lengths)
    torch.testing.assert_close(model.encode(tokens, mask), packed, rtol=1e-5, atol=1e-6)


def test_the_encoder_parts_are_named_as_in_the_language_models():
    model = ManyToOne(RecurrentHeadConfig(n_outputs=2, vocab_size=5, d_model=4))
    names = {name.split(".")[0] for name in model.state_dict()}
    assert names == {"embedding", "recurrent", "head"}
    assert model.encoder.recurrent is model.recurrent                  # the former layout still reads
