from dataclasses import dataclass
from typing import Literal

import pytest

from seqlab import registry
from seqlab.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Example:
    size: int
    rate: float = 0.5
    flag: bool = False
    kind: Literal["a", "b"] = "a"
    limit: float | None = None
    widths: tuple[int, ...] = (1, 2)


def test_strings_are_converted_to_field_types():
    config = registry.make_config(Example, {"size": "3", "rate": "1e-3", "flag": "yes", "kind": "b",
                                            "limit": "none", "widths": "4,5,6"})
    assert config == Example(size=3, rate=1e-3, flag=True, kind="b", limit=None, widths=(4, 5, 6))
    assert registry.make_config(Example, {"size": 2, "rate": 1, "limit": "2.5"}).limit == 2.5


@pytest.mark.parametrize("values, message", [
    ({"size": 1, "colour": "red"}, "unknown key 'colour' for Example; allowed keys: size, rate"),
    ({"size": "three"}, "Example.size must be int, got 'three'"),
    ({"size": 2.5}, "Example.size must be int"),
    ({"size": True}, "Example.size must be int"),
    ({"size": 1, "flag": "maybe"}, "Example.flag must be bool"),
    ({"size": 1, "kind": "c"}, "Example.kind must be one of 'a', 'b'"),
    ({"size": 1, "limit": "x"}, "Example.limit must be float or None"),
    ({}, "needs a value for 'size'"),
])
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        registry.make_config(Example, values)


def test_build_and_unknown_names():
    model = registry.build("lstm", "lm", vocab_size=7, d_model=12, n_layers=3)
    assert model.config.n_layers == 3 and model.recurrent.module.num_layers == 3 and model.head.out_features == 7
    with pytest.raises(ConfigError, match=r"unknown model 'transfomer' \(did you mean 'transformer'\?\)"):
        registry.build("transfomer", vocab_size=7)
    with pytest.raises(ConfigError, match="d_model"):
        registry.build("lstm", "lm", vocab_size=7, d_model=0)
    with pytest.raises(ConfigError, match="n_heads"):
        registry.build("transformer", vocab_size=7, d_model=10, n_heads=4)


def test_build_for_task_fills_only_fields_the_model_has():
    defaults = {"vocab_size": 9, "max_len": 33}
    lstm = registry.build_for_task("lstm", defaults, {"d_model": 8}, task="lm")
    transformer = registry.build_for_task("transformer", defaults, {"d_model": 8, "n_heads": 2})
    assert lstm.config.vocab_size == 9 and lstm.config.d_model == 8
    assert transformer.config.max_len == 33 and transformer.max_context == 33


def test_parameter_count_counts_tied_weights_once():
    model = registry.build("lstm", "lm", vocab_size=10, d_model=4, n_layers=1, tie_weights=True)
    untied = registry.build("lstm", "lm", vocab_size=10, d_model=4, n_layers=1, tie_weights=False)
    assert registry.parameter_count(untied) - registry.parameter_count(model) == 10 * 4


def test_names_are_unique_per_task():
    assert registry.get("hmm", "lm").task == "lm" and registry.get("hmm", "tag").task == "tag"
    assert registry.get("hmm", "lm").model_class is not registry.get("hmm", "tag").model_class
    with pytest.raises(ConfigError, match=r"model name 'hmm' exists for several tasks \(.*lm.*tag.*\); choose one"):
        registry.get("hmm")
    with pytest.raises(ConfigError, match="unknown model 'lstm'.*; known models for task 'tag': .*crf.*hmm"):
        registry.get("lstm", "tag")
    assert registry.get("ngram").task == "lm"        # a name only one task uses needs no task


def test_every_entry_declares_how_it_trains_and_matches_its_class():
    for entry in registry.entries():
        assert entry.trains in ("trainer", "fit")
        assert (entry.trains == "fit") == callable(getattr(entry.model_class, "fit", None)), entry.name


def test_a_mismatched_declaration_is_refused_at_registration():
    from dataclasses import dataclass

    import torch

    @dataclass(frozen=True)
    class Config:
        size: int = 1

    with pytest.raises(TypeError, match="trains='fit' but lacks a fit method"):
        registry.register("no-fit", task="lm", config=Config, trains="fit")(type("NoFit", (torch.nn.Module,), {}))
    with pytest.raises(TypeError, match="trains='trainer' but defines a fit method"):
        registry.register("has-fit", task="lm", config=Config)(
            type("HasFit", (torch.nn.Module,), {"fit": lambda self, task: self}))


def test_every_model_names_a_registered_task():
    from seqlab.tasks.base import task_names

    assert {entry.task for entry in registry.entries()} <= set(task_names())


def test_build_with_a_task_instance_takes_its_data_sizes():
    from helpers import tiny_task

    task = tiny_task(characters=3000)
    model = registry.build("lstm", task, d_model=8)
    assert model.config.vocab_size == task.vocab_size and model.config.d_model == 8


def test_an_impossible_allocation_is_a_config_error():
    with pytest.raises(ConfigError, match="needs more memory than this machine has"):
        registry.build("lstm", "lm", vocab_size=10, d_model=10_000_000)


def test_every_config_field_of_every_model_is_documented():
    # `seqlab models NAME` prints each field's entry from the config's Attributes section.
    import dataclasses

    from seqlab.fields import field_docs

    for entry in registry.entries():
        fields = {field.name for field in dataclasses.fields(entry.config_class)}
        assert set(field_docs(entry.config_class)) == fields, (entry.task, entry.name)
