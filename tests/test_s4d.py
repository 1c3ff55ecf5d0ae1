"""The time-invariant SSM: its convolutional view against the recurrence (with and without a
starting state, gradients too), and the property that defines it: a shifted input gives the
shifted output, which a selective SSM does not."""

import pytest
import torch

from seqlab import registry
from seqlab.layers.s4d import S4DMixer, lti_ssm


def recurrence(u, log_decay, input_weight, C, D, state):
    """h_t = exp(Delta A) h_{t-1} + Delta B u_t, y_t = sum_n C h_t + D u_t, a step at a time."""
    outputs = []
    for t in range(u.shape[1]):
        state = torch.exp(log_decay) * state + input_weight * u[:, t, :, None]
        outputs.append((C * state).sum(-1) + D * u[:, t])
    return torch.stack(outputs, dim=1), state


def lti_inputs(length, seed=0):
    generator = torch.Generator().manual_seed(seed)
    channels, size = 3, 4

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    return (draw(2, length, channels), -torch.exp(draw(channels, size)), draw(channels, size),
            draw(channels, size), draw(channels), draw(2, channels, size))


@pytest.mark.parametrize("length", [1, 7, 64])
@pytest.mark.parametrize("with_state", [False, True])
def test_convolutional_view_equals_the_recurrence(length, with_state):
    u, log_decay, input_weight, C, D, state = lti_inputs(length)
    start = state if with_state else torch.zeros_like(state)
    y_ref, final_ref = recurrence(u, log_decay, input_weight, C, D, start)
    y, final = lti_ssm(u, log_decay, input_weight, C, D, state if with_state else None)
    # float32 inside (FFT and powers), so float32 tolerances
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final.double(), final_ref, rtol=1e-5, atol=1e-5)


def test_gradients_equal_the_recurrence():
    leaves = [t.float().requires_grad_() for t in lti_inputs(20)]
    leaves_ref = [t.float().requires_grad_() for t in lti_inputs(20)]
    y, final = lti_ssm(*leaves)
    y_ref, final_ref = recurrence(*leaves_ref)
    weights = torch.randn_like(y), torch.randn_like(final)
    ((y * weights[0]).sum() + (final * weights[1]).sum()).backward()
    ((y_ref * weights[0]).sum() + (final_ref * weights[1]).sum()).backward()
    for index, (leaf, leaf_ref) in enumerate(zip(leaves, leaves_ref)):
        torch.testing.assert_close(leaf.grad, leaf_ref.grad, rtol=1e-4, atol=1e-4, msg=f"input {index}")


def impulses(width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random impulse at t = 3 and at t = 10, in sequences of 40 steps."""
    impulse = torch.randn(width, generator=torch.Generator().manual_seed(2))
    early, late = torch.zeros(1, 40, width), torch.zeros(1, 40, width)
    early[0, 3], late[0, 10] = impulse, impulse
    return early, late


def test_the_lti_ssm_answers_a_shifted_impulse_with_the_shifted_response():
    torch.manual_seed(0)
    mixer = S4DMixer(8, d_state=4)                                    # inner width 16
    log_decay, input_weight = mixer.discretised()
    with torch.no_grad():
        early, late = (lti_ssm(x, log_decay, input_weight, mixer.C, mixer.D)[0] for x in impulses(16))
    torch.testing.assert_close(early[:, 3:33], late[:, 10:40], rtol=1e-5, atol=1e-6)
    assert early[:, 3:33].abs().max() > 1e-2                         # a response to compare


def test_the_selective_ssm_does_not():
    # Mamba's mixer over a nonzero background: its step sizes, B and C depend on the tokens, so
    # the response to the same impulse depends on what came before it.
    torch.manual_seed(0)
    mixer = registry.build("mamba", "lm", vocab_size=5, d_model=8, n_layers=1).backbone.layers[0].mixer
    background = torch.randn(1, 40, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        early, late = (mixer(background + x)[0] - mixer(background)[0] for x in impulses(8))
    assert not torch.allclose(early[:, 3:20], late[:, 10:27], rtol=1e-2, atol=1e-3)
