"""Audio front end of the speech task: WAV files in, log-mel frames out.

Reading. ``read_wav`` decodes mono integer PCM (8-bit unsigned, 16/24/32-bit signed) with the
standard library's ``wave`` and scales it to [-1, 1): ``x / 2**(bits - 1)`` (8-bit samples are
first shifted by -128). ``resample`` converts between rates by polyphase filtering
(``scipy.signal.resample_poly``) with the reduced factors ``up = to / g``, ``down = from / g``,
``g = gcd(from, to)``. Anything unusable is a one-line ``DataError`` naming the file.

Mel scale (Slaney 1998, Auditory Toolbox; librosa's default, ``htk=False``): linear below
1 kHz, logarithmic above::

    mel(f) = 3 f / 200                                 f < 1000 Hz
    mel(f) = 15 + 27 ln(f / 1000) / ln(6.4)            f >= 1000 Hz
    f(m)   = 200 m / 3           (m < 15),     f(m) = 1000 exp(ln(6.4) (m - 15) / 27)

``n_mels + 2`` edges f_0 < ... < f_{M+1} lie evenly on the mel scale between ``f_min`` and
``f_max``; filter m is the triangle rising from f_{m-1} to 1 at f_m and falling to f_{m+1},
sampled at the FFT bin frequencies ``k sr / n_fft``, and scaled by ``2 / (f_{m+1} - f_{m-1})``
so that every triangle has unit area in Hz (Slaney normalisation).

STFT framing. Frame t covers samples ``[t hop, t hop + n_fft)``, weighted by a periodic Hann
window of ``win_length`` samples centred in the frame. With ``center=True`` the signal is first
padded with ``n_fft // 2`` zeros on each side (librosa 0.11's default ``pad_mode="constant"``),
so a recording of N samples gives ``1 + N // hop`` frames and frame t is centred on sample
``t hop``; with ``center=False`` it gives ``1 + (N - n_fft) // hop`` frames (0 when N < n_fft),
and every frame depends only on samples already heard, which is what streaming needs. The
feature is ``log(max(filterbank @ |STFT|^2, log_floor))``.

Normalising the frames and SpecAugment belong to the models: ``seqlab.speech.frontend``.
"""

from __future__ import annotations

import math
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.signal
import torch
from torch import Tensor

from seqlab.errors import ConfigError, DataError

MIN_SAMPLE_RATE = 4_000
MAX_SAMPLE_RATE = 192_000
MAX_RESAMPLE_FACTOR = 1000   # beyond this the polyphase filter gets too long to be practical

# ---------------------------------------------------------------------------------- reading


def read_wav(path: str | Path) -> tuple[Tensor, int]:
    """Read a mono integer-PCM WAV file.

    Args:
        path: the file.
    Returns:
        ``(samples, sample_rate)``: (N,) float32 samples in [-1, 1) and the rate in Hz.
    Raises:
        DataError: the file is missing or unreadable, not a WAV, not integer PCM (float or
            compressed), not mono, or holds no samples.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file; check the path")
    try:
        with wave.open(str(path), "rb") as reader:
            n_channels, sample_width = reader.getnchannels(), reader.getsampwidth()
            sample_rate, n_frames = reader.getframerate(), reader.getnframes()
            raw = reader.readframes(n_frames)
    except (wave.Error, EOFError) as error:   # EOFError: the header ends early
        message = str(error) or "its header is truncated"
        if message.startswith("unknown format"):
            code = message.rsplit(":", 1)[-1].strip()
            kind = {"3": "IEEE float", "65534": "WAVE_FORMAT_EXTENSIBLE"}.get(code, "compressed")
            raise DataError(f"{path} is a {kind} WAV (format code {code}), not integer PCM; convert "
                            f"it, e.g. sox in.wav -e signed-integer -b 16 out.wav") from None
        raise DataError(f"{path} is not a readable WAV file ({message}); give a RIFF/WAVE PCM "
                        "recording") from None
    except OSError as error:
        raise DataError(f"cannot read {path} ({error.strerror or error}); check the file") from None
    if n_channels != 1:
        raise DataError(f"{path} has {n_channels} channels; seqlab reads mono recordings: mix it "
                        "down, e.g. sox in.wav -c 1 out.wav")
    if sample_width not in (1, 2, 3, 4):
        raise DataError(f"{path} has {8 * sample_width}-bit samples; seqlab reads 8, 16, 24 or "
                        "32-bit PCM: convert it, e.g. sox in.wav -b 16 out.wav")
    n_samples = len(raw) // sample_width
    if n_samples == 0:
        raise DataError(f"{path} is a 0-length recording (no samples); remove it or record again")
    raw = raw[: n_samples * sample_width]
    if sample_width == 3:
        # Little-endian 24-bit: each sample into the top 3 bytes of an int32, so 2**31 is full scale.
        padded = np.zeros((n_samples, 4), dtype=np.uint8)
        padded[:, 1:] = np.frombuffer(raw, dtype=np.uint8).reshape(n_samples, 3)
        values = padded.view("<i4")[:, 0] / 2.0**31
    else:   # 8-bit WAV is unsigned, centred on 128
        codes = np.frombuffer(raw, dtype={1: np.uint8, 2: "<i2", 4: "<i4"}[sample_width]).astype(np.float64)
        values = (codes - (128.0 if sample_width == 1 else 0.0)) / 2.0 ** (8 * sample_width - 1)
    return torch.from_numpy(values.astype(np.float32)), sample_rate


def resample(samples: Tensor, from_rate: int, to_rate: int, *, name: str = "") -> Tensor:
    """Resample by polyphase filtering with the reduced factors (module docstring).

    Args:
        samples: (N,) or (B, N) samples; the dtype is kept (computed in float64).
        from_rate, to_rate: rates in Hz, whole numbers in [4000, 192000].
        name: the recording's name for error messages (e.g. its file).
    Returns:
        (M,) or (B, M) samples, ``M = ceil(N * to_rate / from_rate)``; ``samples`` itself when
        the rates are equal.
    Raises:
        DataError: a rate outside the range, not whole, or a ratio whose reduced factors exceed
            1000 (e.g. 7919 Hz, a prime).
    """
    problem = ""
    if any(rate != int(rate) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE for rate in (from_rate, to_rate)):
        problem = f"rates must be whole numbers of Hz in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}]"
    elif from_rate == to_rate:
        return samples
    else:
        common = math.gcd(int(from_rate), int(to_rate))
        up, down = int(to_rate) // common, int(from_rate) // common
        if max(up, down) > MAX_RESAMPLE_FACTOR:
            problem = f"the reduced ratio {up}/{down} needs factors over {MAX_RESAMPLE_FACTOR}"
    if problem:
        raise DataError(f"{name + ': ' if name else ''}cannot resample from {from_rate} Hz to {to_rate} Hz: "
                        f"{problem}; convert the file to a standard rate, e.g. sox in.wav -r 16000 out.wav")
    values = scipy.signal.resample_poly(samples.detach().cpu().double().numpy(), up, down, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(values)).to(samples.dtype)


def load_audio(path: str | Path, sample_rate: int) -> Tensor:
    """Read a mono WAV file and resample it to ``sample_rate``.

    Args:
        path: the file. sample_rate: the rate wanted, in Hz.
    Returns:
        (N,) float32 samples at ``sample_rate``.
    Raises:
        DataError: as ``read_wav`` and ``resample``, naming the file.
    """
    samples, file_rate = read_wav(path)
    return resample(samples, file_rate, sample_rate, name=str(path))


# ---------------------------------------------------------------------------- log-mel frames


def hz_to_mel(frequencies: Tensor) -> Tensor:
    """Slaney mel of frequencies in Hz (module docstring): linear below 1 kHz, log above."""
    linear = frequencies * 3.0 / 200.0
    logarithmic = 15.0 + torch.log(frequencies.clamp(min=1000.0) / 1000.0) * (27.0 / math.log(6.4))
    return torch.where(frequencies >= 1000.0, logarithmic, linear)


def mel_to_hz(mels: Tensor) -> Tensor:
    """Frequencies in Hz of Slaney mels, the inverse of ``hz_to_mel``."""
    linear = mels * 200.0 / 3.0
    logarithmic = 1000.0 * torch.exp((mels.clamp(min=15.0) - 15.0) * (math.log(6.4) / 27.0))
    return torch.where(mels >= 15.0, logarithmic, linear)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Slaney-normalised triangular mel filters, equal to ``librosa.filters.mel`` (defaults).

    Args:
        sample_rate: in Hz. n_fft: the FFT size. n_mels: the number of filters.
        f_min, f_max: the lowest and highest edge in Hz; ``f_max`` defaults to sample_rate / 2.
        dtype: of the result (computed in float64).
    Returns:
        (n_mels, n_fft // 2 + 1) weights; ``filterbank @ power_spectrum`` gives mel energies.
    Raises:
        ConfigError: a size below 1 or edges outside 0 <= f_min < f_max <= sample_rate / 2.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if n_fft < 2 or n_mels < 1:
        raise ConfigError(f"mel filterbank needs n_fft >= 2 and n_mels >= 1, got {n_fft} and {n_mels}")
    if not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ConfigError(f"mel filterbank needs 0 <= f_min < f_max <= sample_rate / 2 = "
                          f"{sample_rate / 2}, got f_min={f_min}, f_max={f_max}")
    bin_hz = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * (sample_rate / n_fft)   # (K,) k sr / n_fft
    edge_mels = torch.linspace(float(hz_to_mel(torch.tensor(float(f_min), dtype=torch.float64))),
                               float(hz_to_mel(torch.tensor(float(f_max), dtype=torch.float64))),
                               n_mels + 2, dtype=torch.float64)
    edges = mel_to_hz(edge_mels)                                                       # (M+2,)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]        # (M, 1)
    rising = (bin_hz - lower) / (centre - lower)                                       # (M, K)
    falling = (upper - bin_hz) / (upper - centre)
    triangles = torch.minimum(rising, falling).clamp(min=0.0)
    return (triangles * (2.0 / (upper - lower))).to(dtype)


@dataclass(frozen=True, kw_only=True)
class FeatureConfig:
    """How recordings become log-mel frames (defaults: 8 kHz, 25 ms windows, 10 ms hop).

    Attributes:
        sample_rate: Hz; recordings are resampled to it.
        n_fft: FFT size (and frame length) in samples; 200 = 25 ms at 8 kHz.
        hop_length: samples between frame starts; 80 = 10 ms at 8 kHz.
        win_length: Hann window length, centred in the frame; None means n_fft.
        n_mels: mel channels F.
        f_min, f_max: filterbank edges in Hz; f_max None means sample_rate / 2.
        log_floor: mel energies are clamped to at least this before the log. A full-scale tone
            gives ~30 at the defaults, so 1e-6 (about 75 dB below) only bites on near-silence,
            and digital silence becomes log(1e-6) = -13.8 instead of -inf.
    """

    sample_rate: int = 8000
    n_fft: int = 200
    hop_length: int = 80
    win_length: int | None = None
    n_mels: int = 40
    f_min: float = 0.0
    f_max: float | None = None
    log_floor: float = 1e-6

    def __post_init__(self) -> None:
        for field_name, value in (("sample_rate", self.sample_rate), ("n_fft", self.n_fft),
                                  ("hop_length", self.hop_length), ("n_mels", self.n_mels)):
            if value < 1:
                raise ConfigError(f"FeatureConfig.{field_name} must be >= 1, got {value}")
        if self.win_length is not None and not 1 <= self.win_length <= self.n_fft:
            raise ConfigError(f"FeatureConfig.win_length must be in [1, n_fft={self.n_fft}], got {self.win_length}")
        if self.log_floor <= 0:
            raise ConfigError(f"FeatureConfig.log_floor must be > 0, got {self.log_floor}")
        mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max)  # checks edges

    @property
    def window_length(self) -> int:
        """The Hann window's length in samples (``win_length``, or ``n_fft`` when None)."""
        return self.n_fft if self.win_length is None else self.win_length

    def n_frames(self, n_samples: int, *, center: bool = True) -> int:
        """Frames from ``n_samples``: ``1 + N // hop`` centred, ``1 + (N - n_fft) // hop`` not."""
        if center:
            return 1 + n_samples // self.hop_length
        return 0 if n_samples < self.n_fft else 1 + (n_samples - self.n_fft) // self.hop_length


def log_mel(samples: Tensor, config: FeatureConfig, *, center: bool = True) -> Tensor:
    """Log-mel frames: ``log(max(filterbank @ |STFT|^2, log_floor))`` (module docstring).

    Args:
        samples: (N,) or (B, N) float32 or float64 samples; the dtype is kept.
        config: the framing and filterbank.
        center: pad ``n_fft // 2`` zeros on each side (``1 + N // hop`` frames, librosa's default);
            False frames causally (``1 + (N - n_fft) // hop`` frames, 0 when N < n_fft).
    Returns:
        (..., frames, n_mels) features.
    """
    batch_shape, n_samples = samples.shape[:-1], samples.shape[-1]
    n_frames = config.n_frames(n_samples, center=center)
    filterbank = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.f_min,
                                config.f_max, dtype=samples.dtype).to(samples.device)  # (F, K)
    if n_frames == 0:
        return samples.new_zeros(*batch_shape, 0, config.n_mels)
    window = torch.hann_window(config.window_length, periodic=True, dtype=samples.dtype,
                               device=samples.device)
    spectrum = torch.stft(samples.reshape(math.prod(batch_shape), n_samples), config.n_fft,
                          config.hop_length, config.window_length, window, center=center,
                          pad_mode="constant", return_complex=True)                 # (B, K, T)
    power = spectrum.abs().square().transpose(1, 2).reshape(-1, 1, filterbank.shape[1])  # (B*T, 1, K)
    # One matrix-vector product per frame: a single GEMM over all frames blocks its rows in a way
    # that depends on their number, changing the last bits, and StreamingLogMel must be exact.
    mel = torch.bmm(power, filterbank.T.expand(power.shape[0], -1, -1))              # (B*T, 1, F)
    return mel.clamp(min=config.log_floor).log().reshape(*batch_shape, n_frames, config.n_mels)


class StreamingLogMel:
    """Causal log-mel extraction from a recording fed in chunks.

    ``push`` emits every frame whose ``n_fft`` samples have all arrived and keeps the rest, so
    the frames of any chunking, joined, equal ``log_mel(whole, config, center=False)`` exactly.
    A frame is emitted with its last sample: no look-ahead beyond the frame itself.
    """

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self.pending = torch.zeros(0)

    def reset(self) -> None:
        """Forget the pending samples, to start a new recording."""
        self.pending = torch.zeros(0)

    def push(self, samples: Tensor) -> Tensor:
        """Feed (n,) new samples (n may be 0); returns the (frames, n_mels) completed frames."""
        buffer = torch.cat([self.pending.to(samples), samples])
        n_frames = self.config.n_frames(buffer.shape[0], center=False)
        used = 0 if n_frames == 0 else (n_frames - 1) * self.config.hop_length + self.config.n_fft
        frames = log_mel(buffer[:used], self.config, center=False)
        self.pending = buffer[n_frames * self.config.hop_length:]
        return frames
