"""The length-scaling measurements: slopes of exact power laws, the bytes a state holds, and
what autograd saves growing with the length."""

import pytest
import torch

from seqlab import registry
from seqlab.errors import ConfigError
from seqlab.layers.kv_cache import KeyValueCache
from seqlab.compare import check_scaling_lengths
from seqlab.scaling import fitted_slope, generation_cost, scaling_section, state_bytes, training_cost


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_slope_of_an_exact_power_law(power):
    lengths = [256, 1024, 4096, 16384]
    assert fitted_slope(lengths, [3.0 * n ** power for n in lengths]) == pytest.approx(power, abs=1e-12)


def test_slope_needs_two_positive_points():
    with pytest.raises(ConfigError):
        fitted_slope([10], [1.0])
    with pytest.raises(ConfigError):
        fitted_slope([10, 20], [1.0, 0.0])


def test_state_bytes_count_held_cache_positions_not_capacity():
    cache = KeyValueCache(batch=2, n_kv_heads=3, max_len=64, head_dim=4)
    cache.append(torch.zeros(2, 3, 5, 4), torch.zeros(2, 3, 5, 4))
    assert state_bytes(cache) == 2 * (2 * 3 * 5 * 4) * 4                      # keys and values, float32
    assert state_bytes((torch.zeros(3, 7), [torch.zeros(2, dtype=torch.float64)], cache)) == 84 + 16 + 960


def test_saved_bytes_grow_linearly_for_mamba_and_its_state_does_not():
    torch.manual_seed(0)
    model = registry.build("mamba", "lm", vocab_size=17, d_model=16, n_layers=1, d_state=4)
    short, long = training_cost(model, 64, repeats=1), training_cost(model, 256, repeats=1)
    assert long["saved_bytes"] / short["saved_bytes"] == pytest.approx(4.0, rel=0.1)
    assert generation_cost(model, 8, new_tokens=2)["state_bytes"] == generation_cost(model, 40, new_tokens=2)[
        "state_bytes"] == 4 * (32 * 3 + 32 * 4)                              # window of 3 and the SSM state


def test_scaling_section_marks_what_a_finite_context_cannot_read():
    torch.manual_seed(0)
    model = registry.build("transformer", "lm", vocab_size=17, d_model=16, n_layers=1, n_heads=2, max_len=40)
    text, metrics = scaling_section(model, [8, 16, 36, 64])
    rows = text.splitlines()
    assert rows[3].split()[:3] != ["36", "n/a", "n/a"] and rows[3].split()[3:] == ["n/a", "n/a"]   # trains, cannot step 8 more
    assert rows[4].split() == ["64", "n/a", "n/a", "n/a", "n/a"]
    assert "max_context of 40" in text and "time_slope" in metrics


@pytest.mark.parametrize("lengths, task, message", [
    ([64], "lm", "two or more lengths"), ([1, 64], "lm", "at least 2"), ([64, 128], "classify", "--task lm"),
])
def test_bad_scaling_lengths_are_config_errors(lengths, task, message):
    with pytest.raises(ConfigError, match=message):
        check_scaling_lengths(lengths, task)
