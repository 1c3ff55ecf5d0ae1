"""The recognisers' front end (seqlab.speech.frontend): utterance and running normalisation
against float64 loops, chunked running normalisation against the whole, and SpecAugment."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqlab.speech.frontend import RunningNormaliser, normalise_utterance, running_normalise, spec_augment


# ---------------------------------------------------------------------------- normalisation


def padded_batch(lengths: list[int], n_channels: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (B, T, F) features whose padding holds large garbage, and their lengths."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(len(lengths), max(lengths), n_channels, generator=generator) * 3 + 2
    lengths_tensor = torch.tensor(lengths)
    padding = torch.arange(max(lengths))[None, :] >= lengths_tensor[:, None]
    features[padding] = 1e6
    return features, lengths_tensor


def test_normalise_utterance_matches_float64_per_utterance() -> None:
    features, lengths = padded_batch([7, 3, 12, 1])
    result = normalise_utterance(features, lengths)
    for row, length in enumerate(lengths.tolist()):
        real = features[row, :length].double().numpy()
        expected = (real - real.mean(0)) / np.sqrt(np.maximum(real.var(0), 1e-5))
        torch.testing.assert_close(result[row, :length].double(), torch.from_numpy(expected), rtol=1e-5, atol=1e-5)
        assert (result[row, length:] == 0).all()
    # More padding (any content) leaves the real frames as they were.
    wider = torch.cat([features, torch.full((4, 6, 5), -7.0)], dim=1)
    torch.testing.assert_close(normalise_utterance(wider, lengths)[:, :12], result, rtol=1e-6, atol=1e-6)


def running_normalise_loop(features: np.ndarray, length: int, floor: float = 1e-5) -> np.ndarray:
    """Float64 reference: frame t standardised with the mean and variance of frames 0..t."""
    out = np.zeros_like(features, dtype=np.float64)
    for t in range(length):
        seen = features[: t + 1].astype(np.float64)
        out[t] = (features[t] - seen.mean(0)) / np.sqrt(np.maximum(seen.var(0), floor))
    return out


def test_running_normalise_matches_loop_and_first_frame_is_zero() -> None:
    features, lengths = padded_batch([9, 4, 15])
    result = running_normalise(features, lengths)
    for row, length in enumerate(lengths.tolist()):
        expected = running_normalise_loop(features[row].numpy(), length)
        torch.testing.assert_close(result[row].double(), torch.from_numpy(expected), rtol=1e-5, atol=1e-5)
    assert (result[:, 0] == 0).all()
    # Causal: a frame's value does not depend on later frames.
    torch.testing.assert_close(running_normalise(features[:, :4], lengths.clamp(max=4)), result[:, :4], rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(chunk_sizes=st.lists(st.integers(0, 7), min_size=1, max_size=20), seed=st.integers(0, 2**16))
def test_running_normaliser_chunked_equals_whole(chunk_sizes: list[int], seed: int) -> None:
    features, lengths = padded_batch([30, 30], n_channels=4, seed=seed)
    # Full-precision float64 values, so that the running sums round and their order matters.
    generator = torch.Generator().manual_seed(seed)
    features = features.double() + torch.rand(features.shape, dtype=torch.float64, generator=generator)
    whole = running_normalise(features, lengths)
    normaliser, outputs, position = RunningNormaliser(), [], 0
    for size in chunk_sizes * 10:
        outputs.append(normaliser.push(features[:, position:position + size]))
        position += size
        if position >= 30:
            break
    joined = torch.cat(outputs, dim=1)
    assert torch.equal(joined, whole[:, :joined.shape[1]])
    single = RunningNormaliser()
    assert torch.equal(torch.cat([single.push(features[0, :11]), single.push(features[0, 11:])]), whole[0])


# ------------------------------------------------------------------------------ SpecAugment


def test_spec_augment_masks_within_bounds_and_spares_padding() -> None:
    lengths = [100, 40, 73, 20]
    features, lengths_tensor = padded_batch(lengths, n_channels=40, seed=3)
    features = features.abs() + 1.0                                           # no zeros before masking
    augmented = spec_augment(features, lengths_tensor, torch.Generator().manual_seed(0))
    changed = augmented != features
    assert (augmented[changed] == 0).all()
    masked_any = False
    for row, length in enumerate(lengths):
        real = changed[row, :length]
        masked_frames = real.all(dim=1).sum().item()
        masked_channels = real.all(dim=0).sum().item()
        assert masked_frames <= 2 * max(1, int(0.05 * length))
        assert masked_channels <= 2 * (40 // 5)
        # Every changed entry lies in a fully masked frame or a fully masked channel.
        assert (real == (real.all(dim=1, keepdim=True) | real.all(dim=0, keepdim=True))).all()
        assert not changed[row, length:].any()
        masked_any |= masked_frames > 0 and masked_channels > 0
    assert masked_any
    assert torch.equal(augmented, spec_augment(features, lengths_tensor, torch.Generator().manual_seed(0)))
    assert not torch.equal(augmented, spec_augment(features, lengths_tensor, torch.Generator().manual_seed(1)))
