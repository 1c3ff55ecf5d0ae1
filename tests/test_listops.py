"""The ListOps generator: hand-worked values, an independent evaluator, bounds, determinism."""

import hashlib
import os
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqlab.data import listops
from seqlab.data.listops import ListOpsGenerator, evaluate, generate_splits, parse, to_text
from seqlab.errors import ConfigError, DataError

SMALL = dict(max_depth=6, max_args=5, min_length=10, max_length=60)


@pytest.mark.parametrize("text, value", [
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),                 # Nangia and Bowman's example
    ("[MIN 3 8 1 ]", 1),
    ("[MED 1 9 4 ]", 4),                            # odd count: the middle value
    ("[MED 1 2 ]", 1),                              # even count: (1 + 2) / 2 rounded down
    ("[MED 8 [MAX 1 9 ] 0 4 ]", 6),                 # 0 4 8 9: (4 + 8) / 2
    ("[SM 7 8 9 ]", 4),                             # 24 mod 10
    ("[SM [SM 5 5 ] [MAX 0 0 ] ]", 0),
    ("[MIN [MAX 1 2 ] [SM 5 9 ] [MED 7 7 3 ] ]", 2),
    ("7", 7),
])
def test_hand_worked_values(text, value):
    assert evaluate(parse(text)) == value
    assert to_text(parse(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=2, max_size=12))
def test_median_is_lras_int_of_numpy_median(values):
    assert listops.apply("MED", values) == int(np.median(values))


def stack_evaluate(text: str) -> int:
    """An independent evaluator: one left-to-right pass with a stack of open operators."""
    stack: list[tuple[str, list[int]]] = []
    result = None
    for token in text.split():
        if token.startswith("["):
            stack.append((token[1:], []))
            continue
        if token == "]":
            operator, values = stack.pop()
            value = {"MAX": max, "MIN": min, "SM": lambda v: sum(v) % 10,
                     "MED": lambda v: int(np.floor(np.median(v)))}[operator](values)
        else:
            value = int(token)
        if stack:
            stack[-1][1].append(value)
        else:
            result = value
    assert not stack
    return result


def test_labels_agree_with_an_independent_stack_evaluator():
    examples = generate_splits({"train": 300}, seed=3, **SMALL)["train"]
    for text, label in examples:
        assert stack_evaluate(text) == label == evaluate(parse(text))


@pytest.mark.parametrize("bounds", [
    SMALL,
    dict(max_depth=2, max_args=10, min_length=4, max_length=12),
    dict(max_depth=3, max_args=2, min_length=6, max_length=10),
    dict(max_depth=10, max_args=10, min_length=100, max_length=300),
])
def test_every_example_keeps_the_bounds(bounds):
    splits = generate_splits({"train": 150, "test": 50}, seed=1, **bounds)
    texts = [text for examples in splits.values() for text, _ in examples]
    assert len(set(texts)) == len(texts)                                    # distinct across splits
    for text in texts:
        expression = parse(text)
        assert bounds["min_length"] <= len(text.split()) <= bounds["max_length"]
        assert listops.depth(expression) <= bounds["max_depth"]
        for operator in _operators(expression):
            assert 2 <= len(operator[1]) <= bounds["max_args"]


def _operators(expression):
    if isinstance(expression, int):
        return []
    return [expression] + [o for argument in expression[1] for o in _operators(argument)]


def test_brackets_nest_at_most_max_depth_minus_one_deep():
    for text, _ in generate_splits({"train": 200}, seed=0, max_depth=4, max_args=4, min_length=8, max_length=40)["train"]:
        level = deepest = 0
        for token in text.split():
            level += token.startswith("[")
            level -= token == "]"
            deepest = max(deepest, level)
        assert deepest <= 3


def test_every_class_and_operator_appears():
    examples = generate_splits({"train": 400}, seed=0, **SMALL)["train"]
    assert set(label for _, label in examples) == set(range(10))
    tokens = Counter(token for text, _ in examples for token in text.split())
    assert {"[MAX", "[MIN", "[MED", "[SM", "]", *map(str, range(10))} == set(tokens)


def test_same_seed_same_data_other_seed_other_data():
    first = generate_splits({"train": 50, "valid": 10}, seed=7, **SMALL)
    assert generate_splits({"train": 50, "valid": 10}, seed=7, **SMALL) == first
    assert generate_splits({"train": 50, "valid": 10}, seed=8, **SMALL) != first


def test_the_data_of_a_seed_is_fixed():
    # Recorded once; a change here changes every dataset drawn from a seed.
    assert generate_splits({"train": 2}, seed=0, **SMALL)["train"] == [
        ("[MIN 8 5 [MAX 7 3 8 ] 6 0 ]", 0),
        ("[MED 3 [MED 2 [MAX [MAX 6 6 [MIN 0 7 8 ] 9 8 ] [SM 9 5 3 7 ] 2 8 ] 8 ] 8 ]", 8),
    ]


def test_the_data_of_a_seed_is_fixed_across_processes_and_hash_seeds():
    # A digest of seed 0's data: the same on every machine (random.Random(seed) only; no set order).
    code = ("import hashlib; from seqlab.data.listops import generate_splits; "
            "s = generate_splits({'train': 20}, seed=0, max_depth=6, max_args=5, min_length=10, max_length=60); "
            "print(hashlib.sha256(repr(s).encode()).hexdigest())")
    here = hashlib.sha256(repr(generate_splits({"train": 20}, seed=0, **SMALL)).encode()).hexdigest()
    for hash_seed in ("1", "2"):
        there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               env={**os.environ, "PYTHONHASHSEED": hash_seed}).stdout.strip()
        assert there == here


def lra_tree(rng: random.Random, depth: int, max_depth: int, max_args: int):
    """LRA's generator as written (lra_benchmarks/data/listops.py): no shortcuts."""
    if depth < max_depth and rng.random() <= listops.OPERATOR_PROBABILITY:
        arguments = tuple(lra_tree(rng, depth + 1, max_depth, max_args) for _ in range(rng.randint(2, max_args)))
        return rng.choice(listops.OPERATORS), arguments
    return rng.randrange(10)


def test_shortcuts_leave_lras_distribution_unchanged():
    # Drawing LRA's way (any root, whole trees, then rejection) and ours must agree in law:
    # compare the mean length, the mean depth and the share of each label, within 4 standard errors.
    bounds = dict(max_depth=5, max_args=4, min_length=10, max_length=40)
    rng, theirs = random.Random(0), []
    while len(theirs) < 3000:
        tree = lra_tree(rng, 1, bounds["max_depth"], bounds["max_args"])
        if bounds["min_length"] <= len(listops.tokens(tree)) <= bounds["max_length"]:
            theirs.append(tree)
    ours = [parse(text) for text, _ in ListOpsGenerator(0, **bounds).examples(3000)]
    for statistic in (lambda t: len(listops.tokens(t)), listops.depth,
                      *(lambda t, k=k: float(evaluate(t) == k) for k in (0, 5, 9))):
        a, b = np.array([statistic(t) for t in theirs], float), np.array([statistic(t) for t in ours], float)
        error = np.sqrt(a.var() / len(a) + b.var() / len(b))
        assert abs(a.mean() - b.mean()) < 4 * error + 1e-9


def test_lra_lengths_are_possible():
    examples = ListOpsGenerator(0, max_depth=10, max_args=10, min_length=1501, max_length=2000).examples(3)
    assert all(1501 <= len(text.split()) <= 2000 for text, _ in examples)


@pytest.mark.parametrize("bounds, message", [
    (dict(max_depth=1), "max_depth"),
    (dict(max_args=1), "max_args"),
    (dict(min_length=3, max_length=10), "min_length"),
    (dict(min_length=20, max_length=10), "min_length"),
    (dict(max_depth=2, max_args=3, min_length=6, max_length=10), "exceeds the 5 tokens"),
])
def test_impossible_bounds_are_config_errors(bounds, message):
    with pytest.raises(ConfigError, match=message):
        ListOpsGenerator(0, **{**SMALL, **bounds})


def test_too_few_distinct_expressions_is_a_config_error():
    # Depth 2, two arguments: 4 operators x 100 digit pairs = 400 distinct expressions.
    generator = ListOpsGenerator(0, max_depth=2, max_args=2, min_length=4, max_length=4)
    assert len(generator.examples(390)) == 390
    with pytest.raises(ConfigError, match="distinct"):
        generator.examples(20)
    with pytest.raises(ConfigError, match="at least one"):
        generate_splits({"train": 0})


@pytest.mark.parametrize("text, message", [
    ("[MAX 1 ]", "needs two or more"),
    ("[MAX 1 2", "before \\[MAX is closed"),
    ("[FOO 1 2 ]", "not a digit"),
    ("12", "not a digit"),
    ("[MIN 1 2 ] 3", "after its expression"),
    ("", "ends inside"),
])
def test_malformed_text_is_a_data_error(text, message):
    with pytest.raises(DataError, match=message):
        parse(text)
