"""Tests for seqlab.decoding, on tiny causal LMs defined here with closed-form behaviour."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from seqlab.contracts import CausalLM
from seqlab.decoding import filter_logits, generate, sample_next
from seqlab.errors import ConfigError, DataError

# --------------------------------------------------------------------------- toy models


class BigramLM(CausalLM):
    """logits(next | prefix) = table[last token]; the state is the last token.

    Records every ``prefill`` / ``step`` call with the module's training flag, and refuses
    ``forward`` while ``forbid_forward`` is set, to check that generation never recomputes.
    """

    def __init__(self, table: Tensor):
        super().__init__()
        self.vocab_size = table.shape[0]
        self.register_buffer("table", table)                                 # (V, V)
        self.calls: list[tuple[str, bool]] = []
        self.forbid_forward = False

    def forward(self, tokens: Tensor) -> Tensor:
        assert not self.forbid_forward, "generate recomputed the prefix with forward"
        return self.table[tokens]                                             # (B, T, V)

    def init_state(self, batch_size: int) -> Tensor:
        return torch.zeros(batch_size, dtype=torch.long, device=self.table.device)

    def step(self, token: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        self.calls.append(("step", self.training))
        return self.table[token], token

    def prefill(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        self.calls.append(("prefill", self.training))
        return self.table[tokens[:, -1]], tokens[:, -1]


def chain_table(next_of: list[int]) -> Tensor:
    """A bigram table whose greedy successor of token i is next_of[i], by a margin of 20 nats."""
    table = torch.full((len(next_of), len(next_of)), -10.0)
    table[torch.arange(len(next_of)), torch.tensor(next_of)] = 10.0
    return table


class WindowLM(CausalLM):
    """An absolute-position toy: the state is (tokens read since init, last token).

    With ``count`` tokens read and last token ``x``, the logits are 10 * one_hot((x + count) % V),
    so a greedy continuation reveals how many tokens the state holds. Like a Transformer with
    learned positions, it refuses to read more than ``max_context`` tokens. Every prefill's
    tokens are recorded.
    """

    def __init__(self, max_context: int = 4, vocab_size: int = 10):
        super().__init__()
        self.vocab_size = vocab_size
        self.max_context = max_context
        self.prefills: list[list[list[int]]] = []

    def _logits(self, count: Tensor, last: Tensor) -> Tensor:
        hot = nn.functional.one_hot((last + count) % self.vocab_size, self.vocab_size)
        return 10.0 * hot.float()

    def forward(self, tokens: Tensor) -> Tensor:
        assert tokens.shape[1] <= self.max_context
        counts = torch.arange(1, tokens.shape[1] + 1).expand_as(tokens)
        return self._logits(counts, tokens)

    def init_state(self, batch_size: int) -> tuple[Tensor, Tensor]:
        zeros = torch.zeros(batch_size, dtype=torch.long)
        return zeros, zeros

    def step(self, token: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        count = state[0] + 1
        assert int(count.max()) <= self.max_context, "stepped past max_context"
        return self._logits(count, token), (count, token)

    def prefill(self, tokens: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        self.prefills.append(tokens.tolist())
        return super().prefill(tokens)


class GRULM(CausalLM):
    """A small GRU LM whose forward (nn.GRU over the sequence) is the full-recompute oracle."""

    def __init__(self, vocab_size: int = 11, hidden: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)
        with torch.no_grad():
            self.head.weight.mul_(8.0)  # peaked enough that greedy has no near-ties

    def forward(self, tokens: Tensor) -> Tensor:
        hidden, _ = self.gru(self.embedding(tokens))                          # (B, T, H)
        return self.head(hidden)                                              # (B, T, V)

    def init_state(self, batch_size: int) -> Tensor:
        return self.embedding.weight.new_zeros(1, batch_size, self.gru.hidden_size)

    def step(self, token: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        hidden, state = self.gru(self.embedding(token[:, None]), state)       # (B, 1, H)
        return self.head(hidden[:, 0]), state


def nucleus_size_brute_force(probs: list[float], top_p: float) -> int:
    """The size of the smallest subset of tokens whose probability mass is >= top_p."""
    for size in range(1, len(probs) + 1):
        if any(sum(subset) >= top_p for subset in itertools.combinations(probs, size)):
            return size
    return len(probs)


# --------------------------------------------------------------------------- filter_logits


def test_temperature_divides_logits() -> None:
    logits = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(filter_logits(logits, temperature=2.5), logits / 2.5, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("k", [1, 2, 5, 7, 9])
def test_top_k_keeps_exactly_the_k_largest(k: int) -> None:
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(k))
    filtered = filter_logits(logits, temperature=0.5, top_k=k)
    for row, filtered_row in zip(logits.tolist(), filtered):
        largest = sorted(range(7), key=lambda i: row[i], reverse=True)[: min(k, 7)]
        expected = torch.full((7,), float("-inf"))
        expected[largest] = torch.tensor(row)[largest] / 0.5
        torch.testing.assert_close(filtered_row, expected, rtol=1e-6, atol=0.0)


def test_top_k_on_ties_keeps_exactly_k() -> None:
    filtered = filter_logits(torch.zeros(2, 6), top_k=3)
    assert torch.isfinite(filtered).sum(dim=-1).tolist() == [3, 3]


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.lists(st.floats(-6, 6), min_size=8, max_size=8), min_size=1, max_size=3),
    top_p=st.floats(0, 1, exclude_min=True),
)
def test_top_p_keeps_the_minimal_nucleus(rows: list[list[float]], top_p: float) -> None:
    logits = torch.tensor(rows)
    filtered = filter_logits(logits, top_p=top_p)
    probs = logits.double().softmax(dim=-1)
    for row_probs, row_filtered, row_logits in zip(probs, filtered, logits):
        prefix_mass = row_probs.sort(descending=True).values.cumsum(0)
        assume(bool((prefix_mass - top_p).abs().min() > 1e-5))  # float32 vs float64 at the boundary
        kept = torch.isfinite(row_filtered)
        assert int(kept.sum()) == nucleus_size_brute_force(row_probs.tolist(), top_p)
        assert float(row_probs[kept].sum()) >= top_p
        if not kept.all():  # the nucleus is the most probable tokens
            assert float(row_probs[kept].min()) >= float(row_probs[~kept].max())
        torch.testing.assert_close(row_filtered[kept], row_logits[kept], rtol=0.0, atol=0.0)


def test_top_p_always_keeps_the_most_probable_token() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 5.0, 5.0]])
    kept = torch.isfinite(filter_logits(logits, top_p=1e-9))
    assert kept.sum(dim=-1).tolist() == [1, 1]
    assert bool(kept[0, 1])
    assert torch.isfinite(filter_logits(logits, top_p=1.0)).all()


def test_top_p_stops_as_soon_as_the_mass_reaches_top_p() -> None:
    # four tokens of exactly 1/4: two reach 0.5 exactly, so the nucleus is two, not three
    assert torch.isfinite(filter_logits(torch.zeros(1, 4), top_p=0.5)).sum().item() == 2


def test_top_p_applies_to_the_top_k_renormalised_distribution() -> None:
    # p = (0.4, 0.3, 0.2, 0.1): nucleus 0.5 is two tokens; after top-2, (4/7, 3/7) needs only one.
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_k=2, top_p=0.5)).tolist() == [[True, False, False, False]]


# --------------------------------------------------------------------------- sample_next


def test_temperature_zero_and_top_k_one_are_argmax() -> None:
    logits = torch.randn(64, 13, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sample_next(logits, temperature=0.0, top_k=3, top_p=0.5), logits.argmax(-1))
    generator = torch.Generator().manual_seed(2)
    assert torch.equal(sample_next(logits, top_k=1, generator=generator), logits.argmax(-1))


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "expected_weights"),
    [
        # weights are exp(logits / T) over the kept tokens; logits = (2, 1, 0.5, 0, -1)
        (1.0, None, None, [2.0, 1.0, 0.5, 0.0, -1.0]),
        (0.5, None, None, [4.0, 2.0, 1.0, 0.0, -2.0]),
        (2.0, None, None, [1.0, 0.5, 0.25, 0.0, -0.5]),
        (1.0, 2, None, [2.0, 1.0, None, None, None]),
        # p = (.563, .207, .126, .076, .028): cumulative mass reaches 0.8 at the third token
        (1.0, None, 0.8, [2.0, 1.0, 0.5, None, None]),
    ],
)
def test_sampling_frequencies_match_the_filtered_softmax(
    temperature: float, top_k: int | None, top_p: float | None, expected_weights: list[float | None]
) -> None:
    n_draws = 20_000
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0]).expand(n_draws, 5)
    draws = sample_next(
        logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=torch.Generator().manual_seed(0)
    )
    frequencies = torch.bincount(draws, minlength=5).double() / n_draws
    scores = torch.tensor([float("-inf") if w is None else w for w in expected_weights], dtype=torch.float64)
    expected = scores.softmax(dim=-1)
    assert float((frequencies - expected).abs().max()) < 0.02
    assert bool((frequencies[expected == 0] == 0).all())


# --------------------------------------------------------------------------- generate


def test_greedy_generate_follows_the_argmax_path() -> None:
    table = torch.randn(7, 7, generator=torch.Generator().manual_seed(3))
    prompt = torch.tensor([[4, 2], [1, 5]])
    expected = prompt.tolist()
    for row in expected:
        for _ in range(6):
            row.append(int(table[row[-1]].argmax()))
    model = BigramLM(table)
    model.forbid_forward = True
    assert generate(model, prompt, 6, temperature=0.0).tolist() == expected
    assert generate(model, prompt, 6, top_k=1, seed=5).tolist() == expected
    # the recurrent view only: one prefill, then one step per token after the first
    assert [name for name, _ in model.calls] == ["prefill"] + ["step"] * 5 + ["prefill"] + ["step"] * 5


def test_greedy_generate_equals_full_recompute() -> None:
    model = GRULM()
    prompt = torch.tensor([[1, 2, 3], [7, 0, 9]])
    tokens = prompt
    with torch.no_grad():
        for _ in range(10):
            next_ids = model(tokens)[:, -1].argmax(dim=-1)
            tokens = torch.cat([tokens, next_ids[:, None]], dim=1)
    assert torch.equal(generate(model, prompt, 10, temperature=0.0), tokens)


def test_generate_equals_stepping_by_hand() -> None:
    model = GRULM(seed=1)
    prompt = torch.tensor([[3, 1], [4, 1], [5, 9]])
    options = {"temperature": 0.8, "top_k": 6, "top_p": 0.9}
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        logits, state = model.prefill(prompt)
        tokens = prompt
        for _ in range(12):
            next_ids = sample_next(logits, generator=generator, **options)
            tokens = torch.cat([tokens, next_ids[:, None]], dim=1)
            logits, state = model.step(next_ids, state)
    assert torch.equal(generate(model, prompt, 12, seed=11, **options), tokens)


def test_same_seed_same_output_different_seed_different_output() -> None:
    model = BigramLM(torch.zeros(50, 50))  # uniform: 50 ** 30 possible continuations per row
    prompt = torch.zeros(2, 1, dtype=torch.long)
    first = generate(model, prompt, 30, seed=123)
    assert torch.equal(first, generate(model, prompt, 30, seed=123))
    assert not torch.equal(first, generate(model, prompt, 30, seed=124))


def test_generate_stops_when_every_row_has_produced_eos() -> None:
    #            0->3 1->2 2->0 3->4 4->5 5->0
    model = BigramLM(chain_table([3, 2, 0, 4, 5, 0]))
    prompt = torch.tensor([[1], [3]])
    # row 0 ends first and is padded with eos (not continued with 3) until row 1 ends
    assert generate(model, prompt, 10, temperature=0.0, eos_id=0).tolist() == [[1, 2, 0, 0], [3, 4, 5, 0]]
    # an eos inside the prompt does not count; without eos_id the budget is used up
    assert generate(model, torch.tensor([[0, 3]]), 10, temperature=0.0, eos_id=0).tolist() == [[0, 3, 4, 5, 0]]
    assert generate(model, prompt, 5, temperature=0.0).shape == (2, 6)
    # several eos ids (Llama 3 has two): a row ends at any; finished rows take pad_id when given
    assert generate(model, prompt, 10, temperature=0.0, eos_id=[2, 5]).tolist() == [[1, 2, 2], [3, 4, 5]]
    assert generate(model, prompt, 10, temperature=0.0, eos_id=[5, 2], pad_id=1).tolist() == [[1, 2, 1], [3, 4, 5]]


def test_sliding_window_reprefills_from_the_last_half_context() -> None:
    model = WindowLM(max_context=4)
    # By hand, next = (last + tokens in state) % 10. Row 0: prefill [0] -> 1; steps give 3, 6, 0
    # (state full at 4); re-prefill [6, 0] -> 2; steps give 5, 9; re-prefill [5, 9] -> 1.
    output = generate(model, torch.tensor([[0], [5]]), 8, temperature=0.0)
    assert output.tolist() == [[0, 1, 3, 6, 0, 2, 5, 9, 1], [5, 6, 8, 1, 5, 7, 0, 4, 6]]
    assert model.prefills == [[[0], [5]], [[6, 0], [1, 5]], [[5, 9], [0, 4]]]


def test_long_prompt_is_cropped_to_max_context() -> None:
    model = WindowLM(max_context=4)
    prompt = torch.tensor([[1, 2, 3, 4, 5, 6]])
    # prefill [3, 4, 5, 6] -> (6 + 4) % 10 = 0; re-prefill [6, 0] -> 2; step -> (2 + 3) % 10 = 5
    assert generate(model, prompt, 3, temperature=0.0).tolist() == [[1, 2, 3, 4, 5, 6, 0, 2, 5]]
    assert model.prefills == [[[3, 4, 5, 6]], [[6, 0]]]


@settings(max_examples=60, deadline=None)
@given(
    max_context=st.integers(1, 6),
    prompt_length=st.integers(1, 9),
    max_new_tokens=st.integers(0, 14),
    seed=st.integers(0, 2**16),
)
def test_generate_never_reads_past_max_context(
    max_context: int, prompt_length: int, max_new_tokens: int, seed: int
) -> None:
    model = WindowLM(max_context=max_context)  # its step asserts it never holds more than max_context
    prompt = torch.randint(0, 10, (2, prompt_length), generator=torch.Generator().manual_seed(seed))
    output = generate(model, prompt, max_new_tokens, seed=seed)
    assert output.shape == (2, prompt_length + max_new_tokens)
    assert torch.equal(output[:, :prompt_length], prompt)
    assert len(model.prefills[0][0]) == min(prompt_length, max_context)
    assert all(len(window[0]) == max(1, max_context // 2) for window in model.prefills[1:])


@pytest.mark.parametrize("was_training", [True, False])
def test_generate_runs_in_eval_mode_and_restores_the_mode(was_training: bool) -> None:
    model = BigramLM(torch.zeros(5, 5))
    model.train(was_training)
    generate(model, torch.tensor([[1]]), 4, seed=0)
    assert model.calls and not any(training for _, training in model.calls)
    assert model.training is was_training


def test_zero_new_tokens_and_integer_dtypes() -> None:
    model = BigramLM(torch.zeros(5, 5))
    prompt = torch.tensor([[1, 2]], dtype=torch.int32)
    assert generate(model, prompt, 0).tolist() == [[1, 2]]
    assert generate(model, prompt, 3, seed=0).dtype == torch.long


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": -0.5},
        {"temperature": float("nan")},
        {"top_k": 0},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"max_new_tokens": -1},
        {"eos_id": 5},
        {"eos_id": [1, 7]},
        {"eos_id": 1, "pad_id": 9},
    ],
)
def test_generate_rejects_bad_options(options: dict) -> None:
    model = BigramLM(torch.zeros(5, 5))
    arguments = {"max_new_tokens": 3} | options
    with pytest.raises(ConfigError):
        generate(model, torch.tensor([[1]]), **arguments)


@pytest.mark.parametrize("options", [{"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 2.0}])
def test_sampling_functions_reject_bad_options(options: dict) -> None:
    with pytest.raises(ConfigError):
        sample_next(torch.zeros(1, 3), **options)
    with pytest.raises(ConfigError):
        filter_logits(torch.zeros(1, 3), **options)
    with pytest.raises(ConfigError):
        filter_logits(torch.zeros(1, 3), temperature=0.0)


@pytest.mark.parametrize(
    "prompt",
    [
        torch.tensor([1, 2]),                          # 1-D
        torch.tensor([[[1, 2]]]),                      # 3-D
        torch.zeros(1, 0, dtype=torch.long),           # no tokens
        torch.zeros(0, 3, dtype=torch.long),           # no rows
        torch.tensor([[1, -1]]),                       # below the vocabulary
        torch.tensor([[1, 5]]),                        # vocab_size itself
        torch.tensor([[1.0, 2.0]]),                    # not ids
    ],
)
def test_generate_rejects_bad_prompts(prompt: Tensor) -> None:
    with pytest.raises(DataError):
        generate(BigramLM(torch.zeros(5, 5)), prompt, 3)
