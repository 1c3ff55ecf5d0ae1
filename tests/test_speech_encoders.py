"""Speech encoders (seqlab.speech.encoders): the stem's length arithmetic and causality, padding
invariance and gradients of every encoder, and streaming equal to the whole recording."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import chunks
from seqlab.errors import ConfigError, DataError
from seqlab.speech.encoders import BiLSTMEncoder, ConformerEncoder, ConvSubsampling, LSTMEncoder
from seqlab.speech.recogniser import SpeechEncoder, StreamingEncoder

N_MELS, D = 9, 8


def build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    encoders = {
        "bilstm1": lambda: BiLSTMEncoder(N_MELS, D, n_layers=2, dropout=0.1, subsample=1),
        "bilstm2": lambda: BiLSTMEncoder(N_MELS, D, n_layers=1, dropout=0.1, subsample=2),
        "bilstm4": lambda: BiLSTMEncoder(N_MELS, D, n_layers=1, dropout=0.1, subsample=4),
        "lstm": lambda: LSTMEncoder(N_MELS, D, n_layers=2, dropout=0.1, stem_channels=4),
        "conformer": lambda: ConformerEncoder(N_MELS, D, n_heads=2, n_layers=2, conv_kernel=3, ff_mult=2,
                                              dropout=0.1),
        "causal-conformer": lambda: ConformerEncoder(N_MELS, D, n_heads=2, n_layers=2, conv_kernel=4,
                                                     ff_mult=2, dropout=0.1, causal=True, stem_channels=4),
    }
    return encoders[name]().eval()


ENCODERS = ["bilstm1", "bilstm2", "bilstm4", "lstm", "conformer", "causal-conformer"]
STREAMING = ["lstm", "causal-conformer"]


# ---- the stem -----------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_stem_output_lengths_equal_what_the_convolutions_produce(causal):
    stem = ConvSubsampling(N_MELS, D, channels=2, causal=causal).eval()
    first = 7 if not causal else 1
    lengths = torch.arange(first, 60)
    predicted = stem.output_lengths(lengths)
    for length, expected in zip(lengths.tolist(), predicted.tolist()):
        out, out_length = stem(torch.randn(1, length, N_MELS), torch.tensor([length]))
        assert out.shape == (1, expected, D) and out_length.item() == expected
        if causal:
            assert expected == -(-length // 4)                         # ceil(L / 4)
        else:
            assert expected == ((length - 1) // 2 - 1) // 2            # two valid 3-wide stride-2 convs


def test_stem_refuses_too_short_utterances_and_too_few_mels():
    stem = ConvSubsampling(N_MELS, D)
    with pytest.raises(DataError, match="utterance 1 has 6 frames"):
        stem(torch.randn(2, 10, N_MELS), torch.tensor([10, 6]))
    with pytest.raises(ConfigError, match="n_mels"):
        ConvSubsampling(6, D)


def test_causal_stem_output_t_reads_input_frames_up_to_4t_only():
    stem = ConvSubsampling(N_MELS, D, causal=True).eval()
    x = torch.randn(1, 24, N_MELS)
    base, _ = stem(x, torch.tensor([24]))
    for frame in (0, 5, 8, 13, 20):
        changed = x.clone()
        changed[:, frame] += 1.0
        out, _ = stem(changed, torch.tensor([24]))
        first_reader = -(-frame // 4)                                    # smallest t with 4t >= frame
        torch.testing.assert_close(out[:, :first_reader], base[:, :first_reader], rtol=0, atol=0)
        assert (out[:, first_reader] - base[:, first_reader]).abs().max() > 0


@settings(max_examples=20, deadline=None)
@given(length=st.integers(1, 30), sizes=st.lists(st.integers(0, 7), min_size=1, max_size=10))
def test_causal_stem_in_chunks_equals_the_whole(length, sizes):
    stem = ConvSubsampling(N_MELS, D, channels=3, causal=True).eval()
    x = torch.randn(2, length, N_MELS)
    whole, _ = stem(x, torch.tensor([length, length]))
    state, pieces = stem.init_stream(2), []
    for start, end in chunks(sizes, length):
        out, state = stem.forward_chunk(x[:, start:end], state)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-6, atol=1e-6)


# ---- every encoder ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ENCODERS)
def test_shapes_and_protocols(name):
    encoder = build(name)
    lengths = torch.tensor([23, 17, 9])
    out, out_lengths = encoder(torch.randn(3, 23, N_MELS), lengths)
    assert isinstance(encoder, SpeechEncoder)
    assert out.shape == (3, int(encoder.output_lengths(lengths).max()), encoder.output_dim)
    torch.testing.assert_close(out_lengths, encoder.output_lengths(lengths))
    assert encoder.streaming == (name in STREAMING)
    if encoder.streaming:
        assert isinstance(encoder, StreamingEncoder)


@pytest.mark.parametrize("name", ENCODERS)
def test_padding_and_other_rows_never_change_a_rows_outputs(name):
    encoder = build(name).double()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 13, N_MELS, dtype=torch.float64, generator=generator)
    alone, alone_lengths = encoder(x, torch.tensor([13]))
    for extra, other_length in ((1, 14), (6, 8), (11, 24)):
        garbage = 50 * torch.randn(1, extra, N_MELS, dtype=torch.float64, generator=generator)
        other = torch.randn(1, 13 + extra, N_MELS, dtype=torch.float64, generator=generator)
        batch = torch.cat([torch.cat([x, garbage], dim=1), other])
        out, out_lengths = encoder(batch, torch.tensor([13, other_length]))
        real = int(alone_lengths[0])
        assert int(out_lengths[0]) == real
        torch.testing.assert_close(out[:1, :real], alone, rtol=1e-10, atol=1e-12)
        if out.shape[1] > real:
            assert out[0, real:].abs().max() == 0                               # padding is zeroed


@pytest.mark.parametrize("name", ENCODERS)
def test_gradients_reach_the_inputs_and_every_parameter(name):
    encoder = build(name).train()
    x = torch.randn(2, 21, N_MELS, requires_grad=True)
    out, _ = encoder(x, torch.tensor([21, 12]))
    out.pow(2).sum().backward()
    assert x.grad[0].abs().sum() > 0 and x.grad[1, 12:].abs().max() == 0       # padding gets nothing
    for parameter_name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, parameter_name


@pytest.mark.parametrize("name", STREAMING)
@settings(max_examples=8, deadline=None)
@given(length=st.integers(1, 40), sizes=st.lists(st.integers(1, 9), min_size=1, max_size=12))
def test_streaming_in_chunks_equals_the_whole_recording(name, length, sizes):
    encoder = build(name)
    features = torch.randn(1, length, N_MELS)
    whole, _ = encoder(features, torch.tensor([length]))
    state, pieces = encoder.init_stream(1), []
    with torch.no_grad():
        for start, end in chunks(sizes, length):
            out, state = encoder.forward_chunk(features[:, start:end], state)
            pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", STREAMING)
def test_streaming_frame_by_frame_equals_the_whole_recording(name):
    encoder = build(name)
    features = torch.randn(1, 19, N_MELS)
    whole, _ = encoder(features, torch.tensor([19]))
    state, pieces = encoder.init_stream(1), []
    for t in range(19):
        out, state = encoder.forward_chunk(features[:, t:t + 1], state)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-5, atol=1e-5)


def test_bilstm_stacks_frames_into_ceil_length_over_s():
    encoder = build("bilstm4")
    out, out_lengths = encoder(torch.randn(2, 10, N_MELS), torch.tensor([10, 5]))
    assert out.shape == (2, 3, D) and out_lengths.tolist() == [3, 2]


def test_bad_configurations_and_inputs_are_refused():
    with pytest.raises(ConfigError, match="subsample"):
        BiLSTMEncoder(N_MELS, D, 1, 0.0, subsample=3)
    with pytest.raises(ConfigError, match="even"):
        BiLSTMEncoder(N_MELS, 7, 1, 0.0)
    with pytest.raises(ConfigError, match="causal=True"):
        build("conformer").init_stream(1)
    with pytest.raises(DataError, match=f"expected \\(B, T, {N_MELS}\\)"):
        build("lstm")(torch.randn(1, 10, N_MELS + 1), torch.tensor([10]))
    with pytest.raises(DataError, match="batch size of init_stream"):
        encoder = build("lstm")
        encoder.forward_chunk(torch.randn(2, 3, N_MELS), encoder.init_stream(1))
    with pytest.raises(DataError, match="lengths"):
        build("bilstm1")(torch.randn(2, 10, N_MELS), torch.tensor([10, 11]))
