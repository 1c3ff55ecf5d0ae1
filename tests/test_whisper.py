"""Tests of the Whisper-style recogniser (seqlab.speech.whisper) against independent references:
unrolled steps, each utterance decoded alone, hand-computed cross-entropy, brute-force
enumeration of every target sequence, and a greedy loop over the parallel forward."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqlab import registry
from seqlab.contracts import EncoderDecoder
from seqlab.decoding import beam_search, decode_greedy
from seqlab.errors import ConfigError, DataError
from seqlab.fields import make_config
from seqlab.speech.recogniser import BOS, EOS, FIRST_SYMBOL, Recogniser
from seqlab.speech.whisper import ConvStem, WhisperConfig, WhisperRecogniser, frame_mask

N_MELS = 5


def tiny_model(vocab_size: int = 7, seed: int = 0, *, peaked: bool = False, **overrides) -> WhisperRecogniser:
    """A small model in eval mode; ``peaked`` spreads the tied embedding so that next-token
    distributions are far from uniform (no near-ties between sequences)."""
    torch.manual_seed(seed)
    values = dict(vocab_size=vocab_size, n_mels=N_MELS, d_model=16, n_heads=2, n_encoder_layers=2,
                  n_decoder_layers=2, d_ff=32, dropout=0.0, max_target_len=8)
    model = WhisperRecogniser(make_config(WhisperConfig, {**values, **overrides}))
    if peaked:
        torch.nn.init.normal_(model.embedding.weight, std=1.0)
    return model.eval()


def padded_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, F) frames whose padding is large garbage (it must never matter), and (B,) lengths."""
    generator = torch.Generator().manual_seed(seed)
    features = 100.0 * torch.randn(len(lengths), max(lengths), N_MELS, generator=generator)
    for row, length in enumerate(lengths):
        features[row, :length] = torch.randn(length, N_MELS, generator=generator)
    return features, torch.tensor(lengths)


def test_classes_and_registry():
    assert WhisperRecogniser.__mro__[1:3] == (EncoderDecoder, Recogniser)
    model = registry.build("whisper-tiny", task="asr", vocab_size=14, n_mels=40)
    assert isinstance(model, WhisperRecogniser) and isinstance(model, Recogniser)
    assert (model.config.vocab_size, model.config.n_mels, model.vocab_size) == (14, 40, 14)


@pytest.mark.parametrize("field, value", [("vocab_size", 3), ("n_heads", 3), ("dropout", 1.0), ("max_target_len", 1)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ConfigError, match=field):
        WhisperConfig(**{"vocab_size": 10, "n_mels": 4, field: value})


def test_stem_output_lengths_are_exact():
    stem = ConvStem(N_MELS, 8)
    for frames in range(1, 12):
        outputs, mask = stem(torch.randn(1, frames, N_MELS), torch.ones(1, frames, dtype=torch.bool))
        assert outputs.shape[1] == int(ConvStem.output_lengths(torch.tensor([frames]))) == math.ceil(frames / 2)
        assert bool(mask.all())


def test_teacher_forcing_equals_unrolled_step():
    model = tiny_model(peaked=True)
    features, lengths = padded_batch([11, 6, 3])
    mask = frame_mask(features, lengths)
    tgt_in = torch.tensor([[BOS, 3, 4, 5, 6, EOS], [BOS, 6, 5, EOS, 0, 0], [BOS, 4, 4, 4, 3, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(features, mask, tgt_in), EncoderDecoder.forward(model, features, mask, tgt_in),
                                   rtol=1e-5, atol=1e-5)


@settings(max_examples=8, deadline=None)
@given(lengths=st.lists(st.integers(1, 9), min_size=2, max_size=4), seed=st.integers(0, 100))
def test_padding_never_changes_a_row(lengths, seed):
    model = tiny_model(seed=seed, peaked=True)
    features, frame_lengths = padded_batch(lengths, seed)
    targets = torch.tensor([[3, 5, 4], [6, 0, 0]] * len(lengths))[: len(lengths)]
    target_lengths = torch.tensor([3, 1] * len(lengths))[: len(lengths)]
    tgt_in, _, _ = model.teacher_forcing(targets, target_lengths)
    with torch.no_grad():
        memory = model.encode(features, frame_mask(features, frame_lengths))
        logits = model(features, frame_mask(features, frame_lengths), tgt_in)
        nll = model.nll(features, frame_lengths, targets, target_lengths)
        for row, length in enumerate(lengths):
            alone = features[row:row + 1, :length]
            alone_mask = torch.ones(1, length, dtype=torch.bool)
            alone_memory = model.encode(alone, alone_mask)
            real = math.ceil(length / 2)
            assert int(memory["memory_mask"][row].sum()) == real
            torch.testing.assert_close(memory["memory"][row, :real], alone_memory["memory"][0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(logits[row], model(alone, alone_mask, tgt_in[row:row + 1])[0],
                                       rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(nll[row], model.nll(alone, torch.tensor([length]), targets[row:row + 1],
                                                           target_lengths[row:row + 1])[0], rtol=1e-5, atol=1e-5)


def test_nll_equals_hand_computed_cross_entropy():
    model = tiny_model(peaked=True)
    features, lengths = padded_batch([9, 4])
    targets = torch.tensor([[3, 6, 4], [5, 0, 0]])
    target_lengths = torch.tensor([3, 1])
    sequences = [[3, 6, 4], [5]]
    nll = model.nll(features, lengths, targets, target_lengths)
    with torch.no_grad():
        for row, symbols in enumerate(sequences):
            mask = torch.ones(1, int(lengths[row]), dtype=torch.bool)
            frames = model.frontend(features[row:row + 1, : int(lengths[row])], lengths[row:row + 1])
            logits = model(frames, mask, torch.tensor([[BOS, *symbols]]))[0]
            expected = 0.0
            for position, target in enumerate([*symbols, EOS]):
                expected -= float(logits[position, target] - torch.logsumexp(logits[position], dim=0))
            assert nll[row].item() == pytest.approx(expected, rel=1e-5)


def test_nll_rejects_bad_transcripts():
    model = tiny_model()
    features, lengths = padded_batch([6])
    with pytest.raises(DataError, match="outside the transcript symbols"):
        model.nll(features, lengths, torch.tensor([[3, EOS]]), torch.tensor([2]))
    with pytest.raises(DataError, match="max_target_len=8"):
        model.nll(features, lengths, torch.full((1, 8), 3), torch.tensor([8]))
    with pytest.raises(DataError, match="utterance 0 has length 7"):
        model.nll(features, torch.tensor([7]), torch.tensor([[3]]), torch.tensor([1]))


def brute_force_ranking(model: WhisperRecogniser, features: torch.Tensor, vocab_size: int,
                        max_length: int) -> list[tuple[float, list[int]]]:
    """Every target sequence (ending at its first EOS, or ``max_length`` ids without EOS)
    scored by the parallel forward, best first."""
    mask = torch.ones(features.shape[:2], dtype=torch.bool)
    scored = []
    for length in range(1, max_length + 1):
        for sequence in itertools.product(range(vocab_size), repeat=length):
            if EOS in sequence[:-1] or (length < max_length and sequence[-1] != EOS):
                continue
            logits = model(features, mask, torch.tensor([[BOS, *sequence[:-1]]]))[0].double()
            log_prob = float(logits.log_softmax(dim=-1).gather(1, torch.tensor(sequence)[:, None]).sum())
            scored.append((log_prob, list(sequence)))
    return sorted(scored, key=lambda item: item[0], reverse=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_full_width_beam_search_equals_brute_force(seed):
    vocab_size, max_length, n_best = 5, 3, 10
    model = tiny_model(vocab_size, seed, peaked=True)
    features, lengths = padded_batch([7, 4], seed)
    decoded = beam_search(model, features, frame_mask(features, lengths), beam_size=vocab_size ** max_length,
                          max_length=max_length, n_best=n_best)
    with torch.no_grad():
        for row, length in enumerate(lengths.tolist()):
            expected = brute_force_ranking(model, features[row:row + 1, :length], vocab_size, max_length)[:n_best]
            hypotheses = decoded.hypotheses[row]
            assert [hypothesis.tokens for hypothesis in hypotheses] == [tokens for _, tokens in expected]
            torch.testing.assert_close(torch.tensor([hypothesis.log_prob for hypothesis in hypotheses]),
                                       torch.tensor([log_prob for log_prob, _ in expected]), rtol=1e-5, atol=1e-5)


def greedy_by_forward(model: WhisperRecogniser, features: torch.Tensor, length: int, max_length: int) -> list[int]:
    """The reference greedy decoder: re-run the parallel forward on the growing prefix."""
    mask = torch.ones(1, length, dtype=torch.bool)
    prefix = [BOS]
    with torch.no_grad():
        while len(prefix) <= max_length:
            prefix.append(int(model(features[None, :length], mask, torch.tensor([prefix]))[0, -1].argmax()))
            if prefix[-1] == EOS:
                break
    return prefix[1:]


def test_greedy_equals_width_one_beam_and_the_forward_reference():
    model = tiny_model(9, seed=3, peaked=True)
    features, lengths = padded_batch([10, 7, 3, 5], seed=3)
    mask = frame_mask(features, lengths)
    greedy = decode_greedy(model, features, mask, max_length=8).sequences
    assert beam_search(model, features, mask, beam_size=1, max_length=8).sequences == greedy
    assert greedy == [greedy_by_forward(model, features[row], length, 8) for row, length in enumerate(lengths.tolist())]


def test_transcribe_drops_eos_and_reserved_ids():
    model = tiny_model(6, seed=5, peaked=True)
    features, lengths = padded_batch([9, 8, 7, 6, 5, 4, 3, 2], seed=5)
    raw = decode_greedy(model, features, frame_mask(features, lengths), max_length=8).sequences
    assert any(token < FIRST_SYMBOL and token != EOS for sequence in raw for token in sequence)  # the test bites
    for beam_size in (1, 3):
        transcripts = model.transcribe(features, lengths, beam_size=beam_size)
        assert all(token >= FIRST_SYMBOL for transcript in transcripts for token in transcript)
    expected = [[token for token in (s[: s.index(EOS)] if EOS in s else s) if token >= FIRST_SYMBOL] for s in raw]
    assert model.transcribe(features, lengths) == expected


def test_transcribe_refuses_shallow_fusion():
    model = tiny_model()
    features, lengths = padded_batch([4])
    with pytest.raises(ConfigError, match="only for CTC models"):
        model.transcribe(features, lengths, beam_size=2, lm_weight=0.5)


def test_decoding_checks_feature_sources():
    model = tiny_model()
    features, lengths = padded_batch([5, 3])
    mask = frame_mask(features, lengths)
    with pytest.raises(DataError, match="float feature frames"):
        beam_search(model, features.long(), mask, beam_size=2, max_length=3)
    with pytest.raises(DataError, match="3-D"):
        decode_greedy(model, features[:, :, 0], mask, max_length=3)
    with pytest.raises(DataError, match="src_mask must be"):
        decode_greedy(model, features, mask[:, :-1], max_length=3)
    with pytest.raises(DataError, match="not left-aligned"):
        decode_greedy(model, features, mask.flip(1), max_length=3)


def test_training_steps_overfit_a_tiny_batch():
    model = tiny_model(8, seed=0).train()
    features, lengths = padded_batch([12, 8, 5])
    targets = torch.tensor([[3, 4, 5, 6], [7, 3, 0, 0], [5, 5, 5, 0]])
    target_lengths = torch.tensor([4, 2, 3])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = model.nll(features, lengths, targets, target_lengths).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    model.eval()
    assert losses[-1] < 0.05 * losses[0]
    assert model.transcribe(features, lengths) == [[3, 4, 5, 6], [7, 3], [5, 5, 5]]


def test_hybrid_ctc_adds_its_loss_in_training_only():
    from seqlab.contracts import auxiliary_loss
    from seqlab.speech.ctc import ctc_nll

    model = tiny_model(spec_freq_masks=0, spec_time_masks=0)          # training mode without randomness
    features, lengths = padded_batch([9, 4])
    targets, target_lengths = torch.tensor([[3, 6, 4], [5, 0, 0]]), torch.tensor([3, 1])
    model.nll(features, lengths, targets, target_lengths)
    assert auxiliary_loss(model) is None
    model.train()
    model.nll(features, lengths, targets, target_lengths)
    extra = auxiliary_loss(model)
    memory = model.encode(model.frontend(features, lengths), torch.arange(9)[None, :] < lengths[:, None])
    log_probs = model.ctc_output(memory["memory"]).log_softmax(-1)
    expected = model.config.ctc_weight * ctc_nll(log_probs, memory["memory_mask"].sum(1), torch.tensor(
        [[1, 4, 2], [3, 0, 0]]), target_lengths).sum() / 4
    torch.testing.assert_close(extra, expected)
    assert auxiliary_loss(model) is None                              # read once
