"""Tests for greedy decoding, sampling and beam search over encoder-decoders (seqlab.decoding).

Toy encoder-decoders defined here: two small random GRUs (one with attention and a batch-first
state, one with a layer-major (L, B, H) state) and a hand-built table model with closed-form
answers. The oracle is brute-force enumeration of every target sequence with ``step``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from seqlab import registry
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqlab.contracts import EncoderDecoder
from seqlab.decoding import (
    Decoded,
    beam_search,
    decode_greedy,
    decode_sample,
    normalised_score,
    strip_eos,
)
from seqlab.errors import ConfigError, DataError

BOS, EOS = 1, 2
PENALTIES = [("none", 1.0), ("average", 1.0), ("average", 0.6), ("gnmt", 0.6)]

# --------------------------------------------------------------------------- toy models


class AttentionGRU(EncoderDecoder):
    """A GRU-cell encoder that carries its state over padding, and a GRU-cell decoder that
    starts from the encoder's final state and attends (dot product, masked) to its outputs.

    The state is batch-first: hidden (B, H), memory (B, S, H), memory_mask (B, S). Every
    ``step`` records the module's training flag.
    """

    def __init__(self, seed: int, src_vocab_size: int = 7, tgt_vocab_size: int = 5, hidden: int = 8):
        super().__init__()
        torch.manual_seed(seed)
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        self.src_embedding = nn.Embedding(src_vocab_size, hidden)
        self.encoder = nn.GRUCell(hidden, hidden)
        self.tgt_embedding = nn.Embedding(tgt_vocab_size, hidden)
        self.decoder = nn.GRUCell(hidden, hidden)
        self.head = nn.Linear(2 * hidden, tgt_vocab_size)
        with torch.no_grad():
            self.head.weight.mul_(3.0)  # peaked enough to make lengths matter, not so much that one path wins
        self.step_modes: list[bool] = []

    def encode(self, src: Tensor, src_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        embedded = self.src_embedding(src)                                    # (B, S, H)
        hidden = embedded.new_zeros(src.shape[0], self.encoder.hidden_size)
        outputs = []
        for t in range(src.shape[1]):
            hidden = torch.where(src_mask[:, t, None], self.encoder(embedded[:, t], hidden), hidden)
            outputs.append(hidden)
        return torch.stack(outputs, dim=1), src_mask, hidden

    def init_state(self, batch_size: int, memory: tuple[Tensor, Tensor, Tensor]) -> dict[str, Any]:
        outputs, mask, final = memory
        return {"hidden": final, "memory": outputs, "memory_mask": mask}

    def step(self, token: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        self.step_modes.append(self.training)
        hidden = self.decoder(self.tgt_embedding(token), state["hidden"])    # (B, H)
        scores = torch.einsum("bsh,bh->bs", state["memory"], hidden)
        weights = scores.masked_fill(~state["memory_mask"], float("-inf")).softmax(dim=-1)
        context = torch.einsum("bs,bsh->bh", weights, state["memory"])       # (B, H)
        logits = self.head(torch.cat([hidden, context], dim=-1))             # (B, V)
        return logits, state | {"hidden": hidden}


class StackedGRU(EncoderDecoder):
    """A two-layer nn.GRU encoder over packed sequences; a two-layer nn.GRU decoder that
    starts from the encoder's final states and adds the masked mean of the encoder outputs to
    every input. Its state holds a layer-major (L, B, H) hidden and a tuple."""

    layer_major = ("hidden",)

    def __init__(self, seed: int, src_vocab_size: int = 7, tgt_vocab_size: int = 5, hidden: int = 8):
        super().__init__()
        torch.manual_seed(seed)
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        self.src_embedding = nn.Embedding(src_vocab_size, hidden)
        self.encoder = nn.GRU(hidden, hidden, num_layers=2, batch_first=True)
        self.tgt_embedding = nn.Embedding(tgt_vocab_size, hidden)
        self.decoder = nn.GRU(hidden, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, tgt_vocab_size)
        with torch.no_grad():
            self.head.weight.mul_(3.0)

    def encode(self, src: Tensor, src_mask: Tensor) -> tuple[Tensor, Tensor]:
        lengths = src_mask.sum(dim=1).cpu()
        packed = pack_padded_sequence(self.src_embedding(src), lengths, batch_first=True, enforce_sorted=False)
        packed_outputs, final = self.encoder(packed)                           # final (L, B, H)
        outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True)    # (B, S', H)
        mean = outputs.sum(dim=1) / lengths.to(outputs)[:, None]              # padding is zero
        return final, mean

    def init_state(self, batch_size: int, memory: tuple[Tensor, Tensor]) -> dict[str, Any]:
        final, mean = memory
        return {"hidden": final, "context": (mean,)}

    def step(self, token: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        inputs = self.tgt_embedding(token) + state["context"][0]              # (B, H)
        outputs, hidden = self.decoder(inputs[:, None], state["hidden"])      # (B, 1, H), (L, B, H)
        return self.head(outputs[:, 0]), state | {"hidden": hidden}


class TableSeq2Seq(EncoderDecoder):
    """p(next | previous target token) = probabilities[previous], whatever the source."""

    def __init__(self, probabilities: list[list[float]]):
        super().__init__()
        self.src_vocab_size = 3
        self.tgt_vocab_size = len(probabilities)
        self.register_buffer("log_table", torch.tensor(probabilities).log())   # (V, V), -inf allowed
        self.n_steps = 0

    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor:
        return src_mask.sum(dim=1)

    def init_state(self, batch_size: int, memory: Tensor) -> dict[str, Any]:
        return {"length": memory}

    def step(self, token: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        self.n_steps += 1
        return self.log_table[token], state


#                 PAD  BOS  EOS  a     b
GREEDY_TRAP = [
    [0.0, 0.0, 1 / 3, 1 / 3, 1 / 3],   # PAD
    [0.0, 0.0, 0.10, 0.50, 0.40],      # BOS: a is likelier than b ...
    [0.0, 0.0, 1 / 3, 1 / 3, 1 / 3],   # EOS
    [0.0, 0.0, 0.25, 0.40, 0.35],      # a: ... but nothing is likely after a
    [0.0, 0.0, 0.90, 0.05, 0.05],      # b: while b is almost surely followed by EOS
]
SHORT_CHAIN = [row[:] for row in GREEDY_TRAP]
SHORT_CHAIN[BOS] = [0.0, 0.0, 0.10, 0.30, 0.60]  # greedy: b, then EOS


# --------------------------------------------------------------------------- helpers


def random_sources(seed: int, lengths: list[int], vocab_size: int = 7) -> tuple[Tensor, Tensor]:
    """Left-aligned sources of the given lengths, padded with 0."""
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(1, vocab_size, (len(lengths), max(lengths)), generator=generator)
    src_mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    return src.masked_fill(~src_mask, 0), src_mask


def row(src: Tensor, src_mask: Tensor, index: int) -> tuple[Tensor, Tensor]:
    """Source ``index`` alone, without padding."""
    length = int(src_mask[index].sum())
    return src[index : index + 1, :length], src_mask[index : index + 1, :length]


@torch.no_grad()
def brute_force(
    model: EncoderDecoder, src: Tensor, src_mask: Tensor, max_length: int, length_penalty: str, alpha: float
) -> list[tuple[float, float, list[int]]]:
    """(score, log_prob, tokens) of every target sequence of one source, best first: every
    sequence of <= max_length tokens ending at its first EOS, and every sequence of
    max_length tokens without EOS, scored by the chain of ``step`` log-softmaxes from BOS."""
    model.eval()
    results = []

    def expand(prefix: list[int], token: int, state: dict[str, Any], log_prob: float) -> None:
        logits, state = model.step(torch.tensor([token]), state)
        log_probs = logits[0].float().log_softmax(dim=-1).tolist()
        for next_token, next_log_prob in enumerate(log_probs):
            tokens, total = prefix + [next_token], log_prob + next_log_prob
            if next_token == EOS or len(tokens) == max_length:
                score = normalised_score(total, len(tokens), length_penalty=length_penalty, alpha=alpha)
                results.append((score, total, tokens))
            else:  # a step consumes its state: each continuation reads its own copy
                expand(tokens, next_token, model.select(state, torch.zeros(1, dtype=torch.long)), total)

    expand([], BOS, model.init_state(1, model.encode(src, src_mask)), 0.0)
    return sorted(results, key=lambda result: result[0], reverse=True)


@torch.no_grad()
def teacher_forced_log_prob(model: EncoderDecoder, src: Tensor, src_mask: Tensor, tokens: list[int]) -> float:
    """log p(tokens | source) by the parallel view, ``forward``."""
    tgt_in = torch.tensor([[BOS] + tokens[:-1]])
    log_probs = model(src, src_mask, tgt_in).float().log_softmax(dim=-1)    # (1, T, V)
    return float(log_probs[0].gather(-1, torch.tensor(tokens)[:, None]).sum())


def assert_close_floats(actual: list[float], expected: list[float]) -> None:
    torch.testing.assert_close(
        torch.tensor(actual, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64), rtol=0.0, atol=1e-5
    )


def tiny_transformer(seed: int) -> EncoderDecoder:
    """seqlab's Transformer encoder-decoder (T5 positions, key/value caches in its state), small."""
    torch.manual_seed(seed)
    model = registry.build("transformer-encdec", None, src_vocab_size=7, tgt_vocab_size=5, d_model=16, n_layers=1,
                           n_heads=2, tie_embeddings=False)
    with torch.no_grad():                # GPT-2's N(0, 0.02) would make every path alike
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.5 if name.startswith("head") else 0.3)
    return model


MODELS = [pytest.param(AttentionGRU, id="attention-gru"), pytest.param(StackedGRU, id="layer-major-gru"),
          pytest.param(tiny_transformer, id="transformer-encdec")]


# --------------------------------------------------------------------------- helpers of the API


def test_strip_eos_and_normalised_score() -> None:
    assert strip_eos([3, 4, 2, 3, 2]) == [3, 4]
    assert strip_eos([3, 4]) == [3, 4]
    assert strip_eos([2]) == []
    assert strip_eos([5, 0], eos_id=0) == [5]
    assert normalised_score(-6.0, 3) == -6.0
    assert normalised_score(-6.0, 3, length_penalty="average") == -2.0
    assert normalised_score(-6.0, 4, length_penalty="average", alpha=0.5) == -3.0
    assert normalised_score(-6.0, 1, length_penalty="gnmt", alpha=0.6) == -6.0   # ((5 + 1) / 6) ** a = 1
    assert math.isclose(normalised_score(-6.0, 7, length_penalty="gnmt", alpha=1.0), -3.0)


# --------------------------------------------------------------------------- greedy and sampling


def test_greedy_on_a_table_model_stops_at_eos() -> None:
    model = TableSeq2Seq(SHORT_CHAIN)
    src, src_mask = torch.ones(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.bool)
    decoded = decode_greedy(model, src, src_mask, max_length=10)
    assert decoded.sequences == [[4, 2], [4, 2]]
    assert_close_floats(decoded.log_probs, [math.log(0.6 * 0.9)] * 2)
    assert decoded.scores == decoded.log_probs
    assert model.n_steps == 2  # stopped once every row had produced EOS
    # without EOS in reach the budget is used up
    assert decode_greedy(TableSeq2Seq(GREEDY_TRAP), src, src_mask, max_length=3).sequences == [[3, 3, 3]] * 2


@pytest.mark.parametrize("model_class", MODELS)
def test_greedy_follows_the_argmax_and_scores_its_sequence(model_class: type[EncoderDecoder]) -> None:
    model = model_class(seed=0)
    src, src_mask = random_sources(1, [3, 5, 1, 4, 2])
    decoded = decode_greedy(model, src, src_mask, max_length=6)
    for index, sequence in enumerate(decoded.sequences):
        assert EOS not in sequence[:-1] and (sequence[-1] == EOS or len(sequence) == 6)
        with torch.no_grad():  # each token is the argmax after the ones before it
            logits = model(*row(src, src_mask, index), torch.tensor([[BOS] + sequence[:-1]]))[0]
        assert logits.argmax(dim=-1).tolist() == sequence
        log_prob = teacher_forced_log_prob(model, *row(src, src_mask, index), sequence)
        assert_close_floats([decoded.log_probs[index]], [log_prob])


@pytest.mark.parametrize("model_class", MODELS)
def test_sampling_is_seeded_and_top_k_one_is_greedy(model_class: type[EncoderDecoder]) -> None:
    model = model_class(seed=1)
    src, src_mask = random_sources(2, [4, 2, 5, 3] * 4)
    first = decode_sample(model, src, src_mask, max_length=8, seed=7)
    assert first == decode_sample(model, src, src_mask, max_length=8, seed=7)
    assert first.sequences != decode_sample(model, src, src_mask, max_length=8, seed=8).sequences
    for index, sequence in enumerate(first.sequences):  # log_prob is untempered, of the sample
        log_prob = teacher_forced_log_prob(model, *row(src, src_mask, index), sequence)
        assert_close_floats([first.log_probs[index]], [log_prob])
    greedy = decode_greedy(model, src, src_mask, max_length=8)
    assert decode_sample(model, src, src_mask, max_length=8, top_k=1, temperature=2.0, seed=3) == greedy


# --------------------------------------------------------------------------- beam search


@pytest.mark.parametrize("model_class", MODELS)
@pytest.mark.parametrize(("length_penalty", "alpha"), PENALTIES)
def test_beam_of_one_is_greedy(model_class: type[EncoderDecoder], length_penalty: str, alpha: float) -> None:
    model = model_class(seed=2)
    src, src_mask = random_sources(3, [3, 5, 1, 4, 2, 5])
    greedy = decode_greedy(model, src, src_mask, max_length=6)
    beam = beam_search(model, src, src_mask, beam_size=1, max_length=6, length_penalty=length_penalty, alpha=alpha)
    assert beam.sequences == greedy.sequences
    assert_close_floats(beam.log_probs, greedy.log_probs)
    expected_scores = [
        normalised_score(log_prob, len(tokens), length_penalty=length_penalty, alpha=alpha)
        for log_prob, tokens in zip(greedy.log_probs, greedy.sequences)
    ]
    assert_close_floats(beam.scores, expected_scores)


@pytest.mark.parametrize("model_class", MODELS)
@pytest.mark.parametrize(("length_penalty", "alpha"), PENALTIES)
def test_a_beam_as_wide_as_the_search_space_is_exact(
    model_class: type[EncoderDecoder], length_penalty: str, alpha: float
) -> None:
    model, max_length, n_best = model_class(seed=5), 4, 5
    src, src_mask = random_sources(4, [2, 5, 3, 1, 4])  # greedy misses the optimum in 28 of these 40 cases
    beam_size = model.tgt_vocab_size**max_length  # more than the extensions at any step
    decoded = beam_search(
        model, src, src_mask, beam_size=beam_size, max_length=max_length,
        length_penalty=length_penalty, alpha=alpha, n_best=n_best,
    )
    for index, hypotheses in enumerate(decoded.hypotheses):
        expected = brute_force(model, *row(src, src_mask, index), max_length, length_penalty, alpha)
        assert_close_floats([h.score for h in hypotheses], [score for score, _, _ in expected[:n_best]])
        assert_close_floats([h.log_prob for h in hypotheses], [log_prob for _, log_prob, _ in expected[:n_best]])
        if expected[0][0] - expected[1][0] > 1e-4:  # no near-tie: the argmax itself must match
            assert hypotheses[0].tokens == expected[0][2]


def test_a_narrow_beam_escapes_the_greedy_trap() -> None:
    model = TableSeq2Seq(GREEDY_TRAP)
    src, src_mask = torch.ones(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool)
    greedy = decode_greedy(model, src, src_mask, max_length=3)
    assert greedy.sequences == [[3, 3, 3]]
    assert_close_floats(greedy.log_probs, [math.log(0.5 * 0.4 * 0.4)])
    # By hand: step 1 keeps a (.5) and b (.4); step 2's two best are bE (.36) and aa (.2), so bE
    # finishes; the best live score, log .2, is below log .36, so the search stops exactly.
    beam = beam_search(model, src, src_mask, beam_size=2, max_length=3)
    assert beam.sequences == [[4, 2]]
    assert_close_floats(beam.log_probs, [math.log(0.4 * 0.9)])
    assert model.n_steps == 3 + 2  # greedy's three steps, then beam search stopped after two
    for length_penalty, alpha in PENALTIES:
        beam = beam_search(model, src, src_mask, beam_size=2, max_length=3, length_penalty=length_penalty, alpha=alpha)
        greedy_score = normalised_score(greedy.log_probs[0], 3, length_penalty=length_penalty, alpha=alpha)
        assert beam.scores[0] > greedy_score
        best_score, _, best_tokens = brute_force(model, src, src_mask, 3, length_penalty, alpha)[0]
        assert beam.sequences == [best_tokens]
        assert_close_floats(beam.scores, [best_score])


@pytest.mark.parametrize("model_class", MODELS)
def test_n_best_hypotheses_are_distinct_sorted_and_scored(model_class: type[EncoderDecoder]) -> None:
    model = model_class(seed=4)
    src, src_mask = random_sources(5, [3, 5, 2])
    for length_penalty, alpha in PENALTIES:
        decoded = beam_search(
            model, src, src_mask, beam_size=5, max_length=6, length_penalty=length_penalty, alpha=alpha, n_best=4
        )
        for index, hypotheses in enumerate(decoded.hypotheses):
            assert len(hypotheses) == 4
            assert len({tuple(h.tokens) for h in hypotheses}) == 4
            assert [h.score for h in hypotheses] == sorted((h.score for h in hypotheses), reverse=True)
            assert hypotheses[0].tokens == decoded.sequences[index]
            for h in hypotheses:
                assert EOS not in h.tokens[:-1] and (h.tokens[-1] == EOS or len(h.tokens) == 6)
                log_prob = teacher_forced_log_prob(model, *row(src, src_mask, index), h.tokens)
                score = normalised_score(h.log_prob, len(h.tokens), length_penalty=length_penalty, alpha=alpha)
                assert_close_floats([h.log_prob, h.score], [log_prob, score])


def test_n_best_returns_fewer_when_fewer_sequences_exist() -> None:
    model = TableSeq2Seq(GREEDY_TRAP)  # three tokens have probability > 0 after BOS
    src, src_mask = torch.ones(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool)
    decoded = beam_search(model, src, src_mask, beam_size=5, max_length=1, n_best=5)
    assert [h.tokens for h in decoded.hypotheses[0]] == [[3], [4], [2]]


@pytest.mark.parametrize("model_class", MODELS)
def test_padding_and_batch_neighbours_do_not_change_a_row(model_class: type[EncoderDecoder]) -> None:
    model = model_class(seed=5)
    src, src_mask = random_sources(6, [3, 5, 1, 4, 2])

    decoders = {
        "greedy": lambda s, m: decode_greedy(model, s, m, max_length=7),
        "beam none": lambda s, m: beam_search(model, s, m, beam_size=3, max_length=7, n_best=2),
        "beam gnmt": lambda s, m: beam_search(
            model, s, m, beam_size=3, max_length=7, length_penalty="gnmt", alpha=0.6, n_best=2
        ),
    }
    for name, decode in decoders.items():
        batch: Decoded = decode(src, src_mask)
        for index in range(src.shape[0]):
            alone: Decoded = decode(*row(src, src_mask, index))
            assert [h.tokens for h in batch.hypotheses[index]] == [h.tokens for h in alone.hypotheses[0]], name
            assert_close_floats([h.score for h in batch.hypotheses[index]], [h.score for h in alone.hypotheses[0]])


@pytest.mark.parametrize("was_training", [True, False])
def test_decoding_runs_in_eval_mode_and_restores_the_mode(was_training: bool) -> None:
    model = AttentionGRU(seed=6)
    src, src_mask = random_sources(7, [2, 3])
    for decode in (
        lambda: decode_greedy(model, src, src_mask, max_length=4),
        lambda: decode_sample(model, src, src_mask, max_length=4, seed=0),
        lambda: beam_search(model, src, src_mask, beam_size=3, max_length=4),
    ):
        model.train(was_training)
        model.step_modes.clear()
        decode()
        assert model.step_modes and not any(model.step_modes)
        assert model.training is was_training


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "options",
    [
        {"beam_size": 0},
        {"max_length": 0},
        {"length_penalty": "wu"},
        {"alpha": -0.1},
        {"alpha": float("inf")},
        {"alpha": float("nan")},
        {"n_best": 4},
        {"n_best": 0},
        {"eos_id": 5},
        {"bos_id": -1},
    ],
)
def test_beam_search_rejects_bad_options(options: dict) -> None:
    src, src_mask = random_sources(0, [2])
    with pytest.raises(ConfigError):
        beam_search(AttentionGRU(seed=0), src, src_mask, **({"beam_size": 3, "max_length": 4} | options))


@pytest.mark.parametrize("options", [{"max_length": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"eos_id": 9}])
def test_sampling_rejects_bad_options(options: dict) -> None:
    src, src_mask = random_sources(0, [2])
    with pytest.raises(ConfigError):
        decode_sample(AttentionGRU(seed=0), src, src_mask, **({"max_length": 4} | options))


@pytest.mark.parametrize(
    ("src", "src_mask"),
    [
        (torch.tensor([1, 2]), torch.tensor([True, True])),                         # 1-D
        (torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3, dtype=torch.bool)),  # no rows
        (torch.tensor([[1.0, 2.0]]), torch.tensor([[True, True]])),                 # not ids
        (torch.tensor([[1, 7]]), torch.tensor([[True, True]])),                     # outside the vocabulary
        (torch.tensor([[1, 2]]), torch.tensor([[True, True, False]])),              # shape mismatch
        (torch.tensor([[1, 2]]), torch.tensor([[1, 1]])),                           # mask not bool
        (torch.tensor([[1, 2], [0, 0]]), torch.tensor([[True, True], [False, False]])),  # an empty row
        (torch.tensor([[0, 2]]), torch.tensor([[False, True]])),                    # not left-aligned
    ],
)
def test_decoders_reject_bad_sources(src: Tensor, src_mask: Tensor) -> None:
    model = AttentionGRU(seed=0)
    with pytest.raises(DataError):
        decode_greedy(model, src, src_mask, max_length=3)
    with pytest.raises(DataError):
        beam_search(model, src, src_mask, beam_size=2, max_length=3)
