"""Tests of the audio front end (seqlab.data.audio) against librosa, float64 loops and closed forms."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqlab.data.audio import (FeatureConfig, StreamingLogMel, hz_to_mel, load_audio, log_mel, mel_filterbank,
                               mel_to_hz, read_wav, resample)
from seqlab.errors import ConfigError, DataError

FSDD = Path(__file__).parents[1].parent / "shared" / "data" / "fsdd"


def write_wav(path: Path, frames: bytes, *, sample_rate: int = 8000, width: int = 2, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(sample_rate)
        writer.writeframes(frames)
    return path


def float_wav_bytes(values: np.ndarray, sample_rate: int = 8000) -> bytes:
    """A RIFF/WAVE file with IEEE-float (format code 3) samples, which ``wave`` refuses."""
    data = values.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sample_rate, 4 * sample_rate, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def librosa_log_mel(y: np.ndarray, config: FeatureConfig, *, center: bool) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=y, sr=config.sample_rate, n_fft=config.n_fft, hop_length=config.hop_length,
        win_length=config.win_length, window="hann", center=center, pad_mode="constant", power=2.0,
        n_mels=config.n_mels, fmin=config.f_min, fmax=config.f_max, dtype=np.float64)
    return np.log(np.maximum(mel, config.log_floor)).T                                # (T, F)


# ---------------------------------------------------------------------------------- reading

# Extreme and middle integer codes of each width, with the float each must read as.
PCM_CASES = {
    1: (np.array([0, 1, 128, 200, 255], dtype=np.uint8), lambda v: (v.astype(np.float64) - 128) / 128),
    2: (np.array([-32768, -1, 0, 1234, 32767], dtype="<i2"), lambda v: v / 2.0**15),
    4: (np.array([-2**31, -5, 0, 7, 2**31 - 1], dtype="<i4"), lambda v: v / 2.0**31),
}


@pytest.mark.parametrize("width", [1, 2, 4])
def test_read_wav_scales_integer_pcm(tmp_path: Path, width: int) -> None:
    codes, expected = PCM_CASES[width]
    path = write_wav(tmp_path / f"pcm{width}.wav", codes.tobytes(), width=width, sample_rate=16000)
    samples, rate = read_wav(path)
    assert rate == 16000 and samples.dtype == torch.float32
    torch.testing.assert_close(samples, torch.tensor(expected(codes), dtype=torch.float32), rtol=0, atol=0)
    assert samples.abs().max() <= 1.0


def test_read_wav_24_bit(tmp_path: Path) -> None:
    codes = [-2**23, -1, 0, 1, 2**23 - 1, 1_000_000]
    raw = b"".join(code.to_bytes(3, "little", signed=True) for code in codes)
    samples, _ = read_wav(write_wav(tmp_path / "pcm24.wav", raw, width=3))
    torch.testing.assert_close(samples, torch.tensor(codes, dtype=torch.float64).div(2**23).float(), rtol=0, atol=0)


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist"), ("text", "not a readable WAV"), ("truncated", "header is truncated"),
    ("header_only", "not a readable WAV"), ("stereo", "has 2 channels"), ("empty", "0-length"),
    ("float", "IEEE float"),
])
def test_read_wav_bad_inputs_name_the_file(tmp_path: Path, case: str, expected: str) -> None:
    path = tmp_path / f"bad_{case}.wav"
    if case == "text":
        path.write_text("this is not audio\n")
    elif case == "truncated":
        path.write_bytes(b"RIFF")
    elif case == "header_only":
        path.write_bytes(b"RIFF\x10\x00\x00\x00WAVE")
    elif case == "stereo":
        write_wav(path, np.zeros(20, dtype="<i2").tobytes(), channels=2)
    elif case == "empty":
        write_wav(path, b"")
    elif case == "float":
        path.write_bytes(float_wav_bytes(np.zeros(10)))
    with pytest.raises(DataError) as caught:
        read_wav(path)
    message = str(caught.value)
    assert path.name in message and expected in message and "\n" not in message
    if case == "stereo":
        assert "mono" in message and "sox" in message


# ------------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("from_rate, to_rate", [(8000, 16000), (16000, 8000), (22050, 16000), (44100, 16000),
                                                (48000, 16000), (16000, 48000), (8000, 22050)])
def test_resample_keeps_a_tone(from_rate: int, to_rate: int) -> None:
    """A 300 Hz tone resampled equals the same tone sampled at the new rate (away from the ends)."""
    seconds, tone_hz = 0.5, 300.0
    source = torch.sin(2 * torch.pi * tone_hz * torch.arange(int(seconds * from_rate), dtype=torch.float64) / from_rate)
    result = resample(source, from_rate, to_rate)
    assert result.shape == (int(np.ceil(source.shape[0] * to_rate / from_rate)),) and result.dtype == torch.float64
    expected = torch.sin(2 * torch.pi * tone_hz * torch.arange(result.shape[0], dtype=torch.float64) / to_rate)
    margin = result.shape[0] // 10
    torch.testing.assert_close(result[margin:-margin], expected[margin:-margin], rtol=0, atol=2e-3)


def test_resample_same_rate_is_identity() -> None:
    samples = torch.randn(100)
    assert resample(samples, 8000, 8000) is samples


@pytest.mark.parametrize("from_rate, to_rate, expected", [
    (7919, 16000, "reduced ratio 16000/7919"), (2000, 16000, "[4000, 192000]"), (8000, 400_000, "[4000, 192000]"),
    (8000.5, 16000, "whole numbers"),
])
def test_resample_refuses_rates_it_cannot_handle(from_rate: float, to_rate: int, expected: str) -> None:
    with pytest.raises(DataError, match="clip_7.wav") as caught:
        resample(torch.zeros(10), from_rate, to_rate, name="clip_7.wav")
    assert expected in str(caught.value)


def test_load_audio_names_the_file_with_an_odd_rate(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "prime_rate.wav", np.zeros(50, dtype="<i2").tobytes(), sample_rate=7919)
    with pytest.raises(DataError, match="prime_rate.wav"):
        load_audio(path, 16000)
    ok = write_wav(tmp_path / "ok.wav", np.zeros(80, dtype="<i2").tobytes(), sample_rate=8000)
    assert load_audio(ok, 16000).shape == (160,)


# --------------------------------------------------------------------------------- mel scale


def test_mel_conversions_match_librosa_and_invert() -> None:
    hz = torch.tensor([0.0, 50.0, 440.0, 999.0, 1000.0, 1001.0, 3000.0, 7999.0, 22050.0], dtype=torch.float64)
    torch.testing.assert_close(hz_to_mel(hz), torch.from_numpy(librosa.hz_to_mel(hz.numpy())), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mel_to_hz(hz_to_mel(hz)), hz, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("sample_rate, n_fft, n_mels, f_min, f_max", [
    (8000, 200, 40, 0.0, None), (8000, 200, 80, 0.0, None), (16000, 400, 40, 0.0, None),
    (16000, 400, 80, 20.0, 7600.0), (22050, 1024, 128, 60.0, 8000.0), (8000, 256, 23, 100.0, 3800.0),
    (8000, 201, 40, 0.0, None), (22050, 551, 64, 0.0, None),            # odd n_fft: bins at k sr / n_fft
])
def test_mel_filterbank_matches_librosa(sample_rate: int, n_fft: int, n_mels: int, f_min: float,
                                        f_max: float | None) -> None:
    ours = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, dtype=torch.float64)
    reference = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max,
                                    dtype=np.float64)
    assert ours.shape == (n_mels, n_fft // 2 + 1)
    torch.testing.assert_close(ours, torch.from_numpy(reference), rtol=1e-6, atol=1e-8)
    float32 = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max)
    torch.testing.assert_close(float32.double(), torch.from_numpy(reference), rtol=0, atol=1e-5)


def test_bad_feature_configs_name_the_field() -> None:
    with pytest.raises(ConfigError, match="hop_length"):
        FeatureConfig(hop_length=0)
    with pytest.raises(ConfigError, match="win_length"):
        FeatureConfig(win_length=300)
    with pytest.raises(ConfigError, match="f_max"):
        FeatureConfig(f_max=5000.0)


# ---------------------------------------------------------------------------------- log-mel

CONFIGS = [
    FeatureConfig(),
    FeatureConfig(sample_rate=16000, n_fft=400, hop_length=160, n_mels=80),
    FeatureConfig(sample_rate=16000, n_fft=512, hop_length=160, win_length=400, n_mels=40, f_min=20.0, f_max=7600.0),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("center", [True, False])
def test_log_mel_matches_librosa(config: FeatureConfig, center: bool) -> None:
    rng = np.random.default_rng(config.n_fft)
    n_samples = 2 * config.sample_rate // 5 + 37
    # Noise with a quiet stretch, so that some energies fall under the log floor.
    y = rng.standard_normal(n_samples) * 0.1 * np.where(np.arange(n_samples) < n_samples // 2, 1.0, 1e-5)
    reference = torch.from_numpy(librosa_log_mel(y, config, center=center))
    ours = log_mel(torch.from_numpy(y), config, center=center)
    assert ours.shape == (config.n_frames(n_samples, center=center), config.n_mels) == reference.shape
    assert (ours == np.log(config.log_floor)).any()
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-9)
    torch.testing.assert_close(log_mel(torch.from_numpy(y).float(), config, center=center).double(), reference,
                               rtol=0, atol=1e-5)


def test_log_mel_batches_and_counts_frames() -> None:
    config = FeatureConfig()
    batch = torch.randn(3, 1000, dtype=torch.float64)
    joined = log_mel(batch, config)
    for row in range(3):
        torch.testing.assert_close(joined[row], log_mel(batch[row], config), rtol=0, atol=0)
    for n_samples in (1, 79, 80, 199, 200, 201, 1000):
        assert log_mel(torch.randn(n_samples), config).shape[0] == 1 + n_samples // 80
        assert log_mel(torch.randn(n_samples), config, center=False).shape[0] == max(0, 1 + (n_samples - 200) // 80)


@settings(max_examples=25, deadline=None)
@given(n_samples=st.integers(0, 1500), chunk_sizes=st.lists(st.integers(0, 300), min_size=1, max_size=30),
       seed=st.integers(0, 2**16))
def test_streaming_log_mel_equals_whole_recording(n_samples: int, chunk_sizes: list[int], seed: int) -> None:
    config = FeatureConfig()
    recording = torch.randn(n_samples, generator=torch.Generator().manual_seed(seed))
    stream, outputs, position, turn = StreamingLogMel(config), [], 0, 0
    while position < n_samples:
        # Cycle the drawn sizes, with single samples in between.
        size = chunk_sizes[turn % len(chunk_sizes)] if turn % 3 else 1
        outputs.append(stream.push(recording[position:position + size]))
        position, turn = position + size, turn + 1
    outputs.append(stream.push(recording[:0]))
    whole = log_mel(recording, config, center=False)
    assert torch.equal(torch.cat(outputs), whole)


# -------------------------------------------------------------------------------- real data


def test_real_recording_resamples_and_matches_librosa() -> None:
    path = FSDD / "recordings" / "7_jackson_32.wav"
    if not path.is_file():
        pytest.skip(f"the Free Spoken Digit Dataset is absent ({path})")
    samples, rate = read_wav(path)
    assert rate == 8000 and samples.ndim == 1 and samples.abs().max() <= 1.0
    upsampled = load_audio(path, 16000)
    assert upsampled.shape == (2 * samples.shape[0],)
    back = resample(upsampled, 16000, 8000)
    correlation = np.corrcoef(back.numpy(), samples.numpy())[0, 1]
    assert correlation > 0.99
    config = FeatureConfig(sample_rate=16000, n_fft=400, hop_length=160, n_mels=80)
    reference = librosa_log_mel(upsampled.double().numpy(), config, center=True)
    torch.testing.assert_close(log_mel(upsampled.double(), config), torch.from_numpy(reference), rtol=0, atol=1e-9)
    torch.testing.assert_close(log_mel(upsampled, config).double(), torch.from_numpy(reference), rtol=0, atol=1e-5)
