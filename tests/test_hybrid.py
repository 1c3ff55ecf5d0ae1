"""The Jamba-style hybrid: layers follow the pattern, experts every k layers, the experts'
auxiliary losses reach training, and only the attention layers' state grows."""

import pytest
import torch

from seqlab import registry
from seqlab.contracts import auxiliary_loss
from seqlab.errors import ConfigError
from seqlab.layers.kv_cache import KeyValueCache
from seqlab.layers.mamba import MambaMixer
from seqlab.layers.moe import MixtureOfExperts
from seqlab.models.hybrid import AttentionMixer


def build(**overrides):
    torch.manual_seed(0)
    return registry.build("hybrid", "lm", **{"vocab_size": 13, "d_model": 16, "n_heads": 2, "d_state": 4, **overrides})


def test_layers_follow_the_pattern_repeated_and_experts_every_k_layers():
    model = build(pattern="mmmammma", n_layers=10, moe_every=2)
    kinds = "".join("a" if isinstance(layer.mixer, AttentionMixer) else "m" for layer in model.backbone.layers)
    assert kinds == "mmmammmamm"
    assert all(isinstance(layer.mixer, (AttentionMixer, MambaMixer)) for layer in model.backbone.layers)
    experts = [isinstance(layer.feedforward, MixtureOfExperts) for layer in model.backbone.layers]
    assert experts == [i % 2 == 1 for i in range(10)]
    assert not any(isinstance(layer.feedforward, MixtureOfExperts) for layer in build(moe_every=0).backbone.layers)
    assert all(layer.feedforward is None for layer in build(feedforward=False).backbone.layers)


def test_expert_losses_reach_the_training_loss():
    model = build(moe_every=1).train()
    model(torch.randint(0, 13, (2, 9)))
    loss = auxiliary_loss(model)
    assert loss is not None and loss.item() > 0
    assert auxiliary_loss(model) is None                   # collected once, then cleared


def test_only_attention_states_grow_with_the_context():
    model = build(pattern="ma", n_layers=2).eval()
    state = model.init_state(1)
    with torch.no_grad():
        for t in range(20):
            _, state = model.step(torch.tensor([t % 13]), state)
    mamba_state, cache = state
    assert isinstance(cache, KeyValueCache) and cache.length == 20
    assert [tuple(t.shape) for t in mamba_state] == [(1, 32, 3), (1, 32, 4)]


@pytest.mark.parametrize("overrides, message", [
    ({"pattern": "mxa"}, "pattern must be"), ({"pattern": ""}, "pattern must be"),
    ({"n_heads": 3}, "n_heads"), ({"moe_every": -1}, "moe_every"), ({"positions": "alibi"}, "positions"),
    ({"experts_top_k": 5}, "experts_top_k"),
])
def test_bad_hybrid_config_is_a_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build(**overrides)
