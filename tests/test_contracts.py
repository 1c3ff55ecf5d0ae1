"""The causal-LM contract, checked for every registered language model.

A model registered with task "lm" is tested here the moment it is registered: the recurrent
view reproduces the parallel view, no position sees the future, log_prob is a normalised
distribution, rows of a batch do not interact, and a checkpoint round trip changes nothing.
"""

import itertools

import pytest
import torch
from hypothesis import given, settings, strategies as st

from seqlab import registry
from seqlab.checkpoint import load_checkpoint, save_checkpoint
from seqlab.contracts import CausalLM
from seqlab.data.corpora import Corpus
from seqlab.data.tokenizers import train_tokenizer
from seqlab.tasks.lm import LanguageModeling

VOCAB = 11
LM_NAMES = [entry.name for entry in registry.entries("lm")]


def task_with_vocabulary(vocab_size: int) -> LanguageModeling:
    """A character task whose vocabulary is ``<unk>`` and ``vocab_size - 1`` letters."""
    letters = "abcdefghijklmnopqrstuvwxyz"[: vocab_size - 1]
    generator = torch.Generator().manual_seed(vocab_size)
    # A text with structure (each letter tends to follow the one before) for fitted models.
    index = torch.randint(0, 3, (3000,), generator=generator).cumsum(0) % len(letters)
    text = "".join(letters[i] for i in index.tolist())
    task = LanguageModeling(Corpus("letters", text, None), "char", context=16)
    assert task.vocab_size == vocab_size
    return task


def make(name: str, vocab_size: int = VOCAB) -> CausalLM:
    """The model for a small task; models with a closed-form fit are fitted to it first."""
    torch.manual_seed(0)
    task = task_with_vocabulary(vocab_size)
    model = registry.build_for_task(name, {**task.model_defaults(), "max_len": 64}, {}, task="lm")
    if callable(getattr(model, "fit", None)):
        model.fit(task)
    return model.eval()


def relative_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """Equal to ``rtol`` relative to the scale of ``expected`` (fp32 recurrences reorder sums)."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


def random_tokens(batch: int, length: int, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_registry_has_language_models():
    assert {"lstm", "transformer"} <= set(LM_NAMES)


@pytest.mark.parametrize("name", LM_NAMES)
def test_step_reproduces_forward(name):
    model = make(name)
    tokens = random_tokens(3, 24)
    with torch.no_grad():
        parallel = model(tokens)                                                # (B, T, V)
        state = model.init_state(3)
        stepped = []
        for t in range(tokens.shape[1]):
            logits, state = model.step(tokens[:, t], state)
            stepped.append(logits)
    assert parallel.shape == (3, 24, VOCAB)
    relative_close(torch.stack(stepped, dim=1), parallel)


@pytest.mark.parametrize("name", LM_NAMES)
def test_prefill_then_step_reproduces_forward(name):
    model = make(name)
    tokens = random_tokens(2, 20, seed=1)
    with torch.no_grad():
        parallel = model(tokens)
        logits, state = model.prefill(tokens[:, :12])
        relative_close(logits, parallel[:, 11])
        for t in range(12, 20):
            logits, state = model.step(tokens[:, t], state)
            relative_close(logits, parallel[:, t])


@pytest.mark.parametrize("name", LM_NAMES)
@settings(max_examples=15, deadline=None)
@given(position=st.integers(0, 14), seed=st.integers(0, 10_000))
def test_no_future_leakage(name, position, seed):
    model = make(name)
    tokens = random_tokens(2, 16, seed=seed)
    changed = tokens.clone()
    changed[:, position + 1:] = (changed[:, position + 1:] + 1 + seed % (VOCAB - 1)) % VOCAB
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    torch.testing.assert_close(after[:, :position + 1], before[:, :position + 1], rtol=0, atol=0)
    if position < 14:
        assert not torch.equal(after[:, position + 1:], before[:, position + 1:])


@pytest.mark.parametrize("name", LM_NAMES)
def test_log_prob_is_a_distribution_over_continuations(name):
    # Brute force: summing p(a, b | prefix) over every pair of next tokens gives exactly one.
    vocab = 5
    model = make(name, vocab_size=vocab)
    prefix = [3, 1, 4]
    continuations = torch.tensor([prefix + [a, b] for a, b in itertools.product(range(vocab), repeat=2)])
    with torch.no_grad():
        log_p = model.log_prob(continuations) - model.log_prob(continuations[:, :len(prefix)])
    total = torch.logsumexp(log_p.double(), dim=0).exp()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-5)
    with torch.no_grad():
        next_probs = torch.softmax(model(continuations[:4]), dim=-1)
    torch.testing.assert_close(next_probs.sum(-1), torch.ones(4, len(prefix) + 2), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", LM_NAMES)
def test_log_prob_matches_forward_by_hand(name):
    model = make(name)
    tokens = random_tokens(2, 10, seed=3)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(tokens), dim=-1)
        by_hand = sum(log_probs[:, t, tokens[:, t + 1]].diagonal() for t in range(9))
        relative_close(model.log_prob(tokens), by_hand)


@pytest.mark.parametrize("name", LM_NAMES)
def test_batch_rows_are_independent(name):
    model = make(name)
    tokens = random_tokens(4, 12, seed=4)
    with torch.no_grad():
        together = model(tokens)
        alone = torch.cat([model(tokens[i:i + 1]) for i in range(4)])
    relative_close(together, alone)


@pytest.mark.parametrize("name", LM_NAMES)
def test_greedy_generation_equals_full_recompute(name):
    # Cached decoding (prefill + step) picks the same tokens as re-running forward each time.
    model = make(name)
    prompt = random_tokens(2, 5, seed=5)
    generated = model.generate(prompt, 12, temperature=0.0)
    recomputed = prompt
    with torch.no_grad():
        for _ in range(12):
            next_token = model(recomputed)[:, -1].argmax(-1, keepdim=True)
            recomputed = torch.cat([recomputed, next_token], dim=1)
    assert torch.equal(generated, recomputed)


@pytest.mark.parametrize("name", LM_NAMES)
def test_checkpoint_round_trip_gives_identical_outputs(name, tmp_path):
    tokenizer = train_tokenizer("char", "abcdefghij")
    model = make(name, vocab_size=tokenizer.vocab_size)
    assert tokenizer.vocab_size == VOCAB
    save_checkpoint(tmp_path / "run", model, tokenizer, info={})
    loaded = load_checkpoint(tmp_path / "run")
    tokens = random_tokens(2, 16, seed=6, vocab=tokenizer.vocab_size)
    assert type(loaded.model) is type(model)
    assert loaded.model.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(tokens), model(tokens))
    assert loaded.tokenizer.encode("jihgfedcba") == tokenizer.encode("jihgfedcba")


@pytest.mark.parametrize("name", LM_NAMES)
def test_generation_runs_past_a_finite_context(name):
    model = make(name)
    limit = model.max_context or 64
    generated = model.generate(random_tokens(1, 3, seed=7), 2 * limit, seed=0)
    assert generated.shape == (1, 3 + 2 * limit)
    assert int(generated.min()) >= 0 and int(generated.max()) < VOCAB


def test_a_model_must_define_step_or_forward_from():
    with pytest.raises(TypeError, match="must define step or forward_from"):
        class Neither(CausalLM):
            def init_state(self, batch_size):
                return None
