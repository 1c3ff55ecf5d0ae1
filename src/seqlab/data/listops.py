"""ListOps: nested operations on lists of digits, whose value depends on the whole hierarchy.

ListOps was built by Nangia and Bowman (2018) to test whether models parse; the Long Range Arena
(Tay et al. 2021) made it a benchmark of sequences up to 2,000 tokens long. An expression is a
digit 0-9 or an operator applied to two or more expressions:

- ``MAX``, ``MIN``: the largest, the smallest argument;
- ``MED``: the median; with an even number of arguments the mean of the two middle ones rounded
  down, as LRA computes it (``int(np.median(arguments))``): ``[MED 2 5 ]`` is 3;
- ``SM``: the sum modulo 10.

It is written as space-separated tokens in LRA's style, an operator opening with its bracket:
``[MAX 2 9 [MIN 4 7 ] 0 ]``, whose value, 9, is the label: ten classes. :func:`evaluate` is the
plain recursive definition, the specification of every label.

Generation follows LRA's generator (``lra_benchmarks/data/listops.py``):

- a tree is drawn top-down: an operator takes 2 to ``max_args`` arguments (uniformly) and is
  one of the four (uniformly); each argument is another operator with probability 0.25 (LRA's
  ``VALUE_P``), else a uniform digit; at depth ``max_depth`` it is always a digit. Depth counts
  the levels of the tree, the outermost operator at 1 and digits included, as LRA's
  ``max_depth`` does: brackets nest at most ``max_depth - 1`` deep.
- lengths come from rejection: trees are drawn until one has between ``min_length`` and
  ``max_length`` tokens (bounds included). LRA keeps 500 < length < 2000 with ``max_depth`` 10
  and ``max_args`` 10, i.e. ``min_length=501, max_length=1999`` here. The draw is a growing
  (supercritical) branching process cut off by the length bounds, so accepted lengths spread
  almost evenly over the window.
- expressions are distinct across all splits (LRA collects them in a set), so no test
  expression occurs in training.

Two shortcuts leave the accepted distribution as it is and make drawing several times faster:
the root is always an operator (a bare digit, one token, is below any allowed ``min_length``),
and a tree is abandoned as soon as the tokens it has committed to exceed ``max_length``; its
digits and operators are drawn only once its shape is accepted. Every draw comes from one
``random.Random(seed)``, so a seed gives the same examples on every machine.
"""

from __future__ import annotations

import random
from typing import Mapping, Sequence, Union

from seqlab.errors import ConfigError, DataError

OPERATORS = ("MAX", "MIN", "MED", "SM")
OPERATOR_PROBABILITY = 0.25          # LRA's VALUE_P: an argument is an operator this often
END = "]"
N_CLASSES = 10

Expression = Union[int, tuple[str, tuple["Expression", ...]]]   # a digit, or (operator, arguments)
Shape = Union[int, list]             # while drawing: digits are 0, an operator a list of arguments


def apply(operator: str, values: Sequence[int]) -> int:
    """The value of ``operator`` on the argument values (see the module docstring)."""
    if operator == "MAX":
        return max(values)
    if operator == "MIN":
        return min(values)
    if operator == "MED":
        ordered = sorted(values)
        middle = len(ordered) // 2
        return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) // 2
    if operator == "SM":
        return sum(values) % 10
    raise DataError(f"unknown ListOps operator {operator!r}; the operators are {', '.join(OPERATORS)}")


def evaluate(expression: Expression) -> int:
    """The value of ``expression``, by the recursive definition: the specification of labels."""
    if isinstance(expression, int):
        return expression
    operator, arguments = expression
    return apply(operator, [evaluate(argument) for argument in arguments])


def tokens(expression: Expression) -> list[str]:
    """``expression`` as LRA tokens: ``[MAX``, digits, ``]``."""
    written: list[str] = []
    _write(expression, written)
    return written


def _write(expression: Expression, written: list[str]) -> None:
    if isinstance(expression, int):
        written.append(str(expression))
        return
    operator, arguments = expression
    written.append("[" + operator)
    for argument in arguments:
        _write(argument, written)
    written.append(END)


def to_text(expression: Expression) -> str:
    """``expression`` as space-separated LRA tokens, e.g. ``[MAX 2 9 [MIN 4 7 ] 0 ]``."""
    return " ".join(tokens(expression))


def parse(text: str) -> Expression:
    """The expression written in ``text`` (the inverse of :func:`to_text`).

    Raises:
        DataError: an unknown token, an operator with fewer than two arguments, an unbalanced
            bracket or text after the expression, naming the token's position.
    """
    words = text.split()
    expression, end = _parse_at(words, 0)
    if end != len(words):
        raise DataError(f"ListOps text has {len(words) - end} token(s) after its expression, from token {end + 1}")
    return expression


def _parse_at(words: list[str], position: int) -> tuple[Expression, int]:
    """The expression starting at ``words[position]`` and the position after it."""
    if position >= len(words):
        raise DataError("ListOps text ends inside an expression; a bracket is missing")
    word = words[position]
    if len(word) == 1 and word.isdigit():
        return int(word), position + 1
    if not (word.startswith("[") and word[1:] in OPERATORS):
        raise DataError(f"token {position + 1} of the ListOps text is {word!r}, not a digit or one of "
                        f"{', '.join('[' + operator for operator in OPERATORS)}")
    arguments, position = [], position + 1
    while position < len(words) and words[position] != END:
        argument, position = _parse_at(words, position)
        arguments.append(argument)
    if position >= len(words):
        raise DataError(f"ListOps text ends before {word} is closed by {END}")
    if len(arguments) < 2:
        raise DataError(f"{word} at token {position - len(arguments)} has {len(arguments)} argument(s); it needs two or more")
    return (word[1:], tuple(arguments)), position + 1


def depth(expression: Expression) -> int:
    """Levels of the tree: 1 for a digit, one more than the deepest argument for an operator."""
    if isinstance(expression, int):
        return 1
    return 1 + max(depth(argument) for argument in expression[1])


def longest_length(max_depth: int, max_args: int) -> int:
    """The most tokens an expression within these bounds can have (every operator full)."""
    length = 1
    for _ in range(max_depth - 1):
        length = 2 + max_args * length
    return length


def check_bounds(max_depth: int, max_args: int, min_length: int, max_length: int, prefix: str = "") -> None:
    """Raise ConfigError, naming the value (``prefix`` + its name), unless the bounds allow an
    expression: ``max_depth`` >= 2, ``max_args`` >= 2, 4 <= ``min_length`` <= ``max_length``,
    and ``min_length`` no more than the longest expression of that depth and width."""
    if max_depth < 2:
        raise ConfigError(f"{prefix}max_depth must be >= 2 (an operator over digits), got {max_depth}")
    if max_args < 2:
        raise ConfigError(f"{prefix}max_args must be >= 2, got {max_args}")
    if not 4 <= min_length <= max_length:
        raise ConfigError(f"{prefix}min_length and {prefix}max_length must satisfy 4 <= min <= max (the "
                          f"shortest expression, [MAX 1 2 ], has 4 tokens), got {min_length} and {max_length}")
    longest = longest_length(max_depth, max_args)
    if min_length > longest:
        raise ConfigError(f"{prefix}min_length {min_length} exceeds the {longest} tokens of the longest expression "
                          f"of depth {max_depth} with {max_args} arguments; raise {prefix}max_depth or {prefix}max_args")


class ListOpsGenerator:
    """Draws distinct ListOps expressions within bounds, deterministically from ``seed``.

    Args:
        seed: seeds the one ``random.Random`` every draw comes from.
        max_depth: levels of the tree, digits included (LRA: 10).
        max_args: the most arguments of an operator (LRA: 10).
        min_length, max_length: tokens per expression, both included (LRA: 501 and 1999).
    """

    def __init__(self, seed: int = 0, *, max_depth: int = 10, max_args: int = 10, min_length: int = 100,
                 max_length: int = 300):
        check_bounds(max_depth, max_args, min_length, max_length)
        self.max_depth, self.max_args = max_depth, max_args
        self.min_length, self.max_length = min_length, max_length
        self._random = random.Random(seed).random
        self._seen: set[str] = set()

    def examples(self, n: int) -> list[tuple[str, int]]:
        """``n`` new (text, label) pairs, none equal to any drawn before by this generator.

        Raises:
            ConfigError: the bounds leave too few distinct expressions (or accept too rarely) to
                find ``n`` within ``100 * n + 10,000`` draws.
        """
        found: list[tuple[str, int]] = []
        draws, limit = 0, 100 * n + 10_000
        while len(found) < n:
            draws += 1
            if draws > limit:
                raise ConfigError(
                    f"found only {len(found)} of {n} distinct ListOps expressions of {self.min_length}-"
                    f"{self.max_length} tokens in {limit:,} draws; widen the length bounds or raise max_depth or max_args")
            shape = self._shape()
            if shape is None:
                continue
            expression = self._fill(shape)
            text = to_text(expression)
            if text not in self._seen:
                self._seen.add(text)
                found.append((text, evaluate(expression)))
        return found

    def _shape(self) -> Shape | None:
        """The argument structure of one tree of accepted length, or None (rejected)."""
        random_, span, max_depth = self._random, self.max_args - 1, self.max_depth
        length = 1                           # tokens committed to: every pending argument counts one

        def operator(level: int) -> list:
            nonlocal length
            n = 2 + int(random_() * span)
            length += n + 1                  # this node's one token becomes its bracket, n arguments and "]"
            if length > self.max_length:
                raise _TooLong
            if level + 1 == max_depth:
                return [0] * n
            return [operator(level + 1) if random_() < OPERATOR_PROBABILITY else 0 for _ in range(n)]

        try:
            shape = operator(1)
        except _TooLong:
            return None
        return shape if length >= self.min_length else None

    def _fill(self, shape: Shape) -> Expression:
        """Draw the operators and digits of an accepted shape."""
        if isinstance(shape, int):
            return int(self._random() * 10)
        operator = OPERATORS[int(self._random() * len(OPERATORS))]
        return operator, tuple(self._fill(argument) for argument in shape)


class _TooLong(Exception):
    """A tree outgrew ``max_length`` while being drawn."""


def generate_splits(sizes: Mapping[str, int], *, seed: int = 0, max_depth: int = 10, max_args: int = 10,
                    min_length: int = 100, max_length: int = 300) -> dict[str, list[tuple[str, int]]]:
    """Distinct (text, label) examples for each split, ``sizes[split]`` of them, drawn in the
    order of ``sizes`` from one generator (see :class:`ListOpsGenerator` for the bounds)."""
    for split, size in sizes.items():
        if size < 1:
            raise ConfigError(f"the ListOps {split} split needs at least one example, got {size}")
    generator = ListOpsGenerator(seed, max_depth=max_depth, max_args=max_args, min_length=min_length,
                                 max_length=max_length)
    return {split: generator.examples(size) for split, size in sizes.items()}

