"""Mamba-2: the chunked SSD against the recurrence and the quadratic masked form (lengths that
are and are not multiples of the chunk size, gradients too), parity with Hugging Face's
``Mamba2ForCausalLM`` pure-PyTorch path, and the mixer's recurrent view."""

import pytest
import torch
import transformers
from hypothesis import given, settings, strategies as st
from torch.nn import functional as F

from seqlab import registry
from seqlab.errors import ConfigError
from seqlab.ops.ssd import ssd_chunked, ssd_quadratic, ssd_ref
from seqlab.training import parameter_groups


def ssd_inputs(batch=2, length=20, heads=4, width=3, groups=2, size=5, dtype=torch.float64, seed=0, initial=True):
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    inputs = {"x": draw(batch, length, heads, width), "dt": F.softplus(draw(batch, length, heads) - 1),
              "A": -torch.exp(draw(heads)), "B": draw(batch, length, groups, size),
              "C": draw(batch, length, groups, size), "D": draw(heads)}
    if initial:
        inputs["initial_state"] = draw(batch, heads, width, size)
    return inputs


@settings(max_examples=40, deadline=None)
@given(length=st.integers(1, 40), chunk_size=st.integers(1, 16), groups=st.sampled_from([1, 2, 4]),
       initial=st.booleans(), seed=st.integers(0, 99))
def test_chunked_ssd_equals_the_recurrence_and_the_quadratic_form(length, chunk_size, groups, initial, seed):
    inputs = ssd_inputs(length=length, groups=groups, seed=seed, initial=initial)
    y_ref, state_ref = ssd_ref(**inputs)
    for y, state in (ssd_chunked(**inputs, chunk_size=chunk_size), ssd_quadratic(**inputs)):
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(state, state_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("length, chunk_size", [(32, 8), (29, 8), (5, 8)])
def test_chunked_ssd_gradients_equal_the_recurrence_in_float32(length, chunk_size):
    inputs = ssd_inputs(length=length, dtype=torch.float32)
    leaves = {name: tensor.clone().requires_grad_() for name, tensor in inputs.items()}
    leaves_ref = {name: tensor.clone().requires_grad_() for name, tensor in inputs.items()}
    y, state = ssd_chunked(**leaves, chunk_size=chunk_size)
    y_ref, state_ref = ssd_ref(**leaves_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    weights_y, weights_state = torch.randn_like(y), torch.randn_like(state)
    ((y * weights_y).sum() + (state * weights_state).sum()).backward()
    ((y_ref * weights_y).sum() + (state_ref * weights_state).sum()).backward()
    for name in inputs:
        torch.testing.assert_close(leaves[name].grad, leaves_ref[name].grad, rtol=1e-5, atol=1e-4, msg=name)


def test_long_sequence_with_strong_decay_stays_finite():
    # cumulative log-decays reach -10^5: a form dividing by exp(cum_s) would overflow
    inputs = ssd_inputs(batch=1, length=4096, heads=2, width=2, groups=1, size=3, dtype=torch.float32)
    inputs["dt"] = inputs["dt"] * 10
    y, state = ssd_chunked(**inputs)
    y_ref, state_ref = ssd_ref(**inputs)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, state_ref, rtol=1e-5, atol=1e-5)


def test_wrong_group_count_is_a_config_error():
    inputs = ssd_inputs(heads=4, groups=3)
    with pytest.raises(ConfigError, match="G dividing H=4"):
        ssd_chunked(**inputs)


VOCAB, WIDTH, LAYERS, STATE, HEAD_DIM, GROUPS = 37, 32, 2, 16, 8, 2


def tiny_mamba2() -> torch.nn.Module:
    torch.manual_seed(0)
    model = registry.build("mamba2", "lm", vocab_size=VOCAB, d_model=WIDTH, n_layers=LAYERS, d_state=STATE,
                           head_dim=HEAD_DIM, n_groups=GROUPS, chunk_size=16)
    with torch.no_grad():          # move every gain and skip off its initial value, so that each one counts
        for name, parameter in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D")):
                parameter.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("length", [40, 48])
def test_logits_equal_hugging_face_mamba2(length):
    model = tiny_mamba2()
    config = transformers.Mamba2Config(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS,
                                       state_size=STATE, num_heads=2 * WIDTH // HEAD_DIM, head_dim=HEAD_DIM,
                                       n_groups=GROUPS, expand=2, conv_kernel=4, chunk_size=16, use_bias=False,
                                       use_conv_bias=True, layer_norm_epsilon=1e-5, tie_word_embeddings=True)
    reference = transformers.Mamba2ForCausalLM(config).eval()
    missing, unexpected = reference.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    tokens = torch.randint(0, VOCAB, (3, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(tokens).logits
        torch.testing.assert_close(model(tokens), expected, rtol=1e-4, atol=1e-4)
        state, logits = model.init_state(3), []
        for t in range(length):
            step_logits, state = model.step(tokens[:, t], state)
            logits.append(step_logits)
    torch.testing.assert_close(torch.stack(logits, dim=1), expected, rtol=1e-4, atol=1e-4)


def test_mamba2_initialisation_and_no_decay():
    model = tiny_mamba2()
    mixer = model.backbone.layers[0].mixer
    A = -torch.exp(mixer.A_log)
    assert A.shape == (2 * WIDTH // HEAD_DIM,) and ((-16 <= A) & (A <= -1)).all()
    dt = F.softplus(mixer.dt_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    decay, no_decay = (set(map(id, group)) for group in parameter_groups(model))
    assert {id(mixer.A_log), id(mixer.D), id(mixer.dt_bias)} <= no_decay
    assert {id(mixer.in_proj.weight), id(mixer.out_proj.weight)} <= decay


@pytest.mark.parametrize("overrides, message", [
    ({"head_dim": 5}, "head_dim"), ({"n_groups": 3}, "n_groups"), ({"d_state": 0}, "d_state"),
])
def test_bad_mamba2_config_is_a_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        registry.build("mamba2", "lm", vocab_size=VOCAB, d_model=WIDTH, **overrides)


def test_bf16_autocast_keeps_the_ssd_within_tolerance_of_fp32():
    # The SSD computes in float32 under autocast; bf16 inputs cost only their own rounding:
    # within 2% of the output's scale (and the rounding does show).
    inputs = ssd_inputs(length=100, dtype=torch.float32, initial=False)
    y, _ = ssd_chunked(**inputs, chunk_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_low, state_low = ssd_chunked(**{name: t.to(torch.bfloat16) for name, t in inputs.items()}, chunk_size=16)
    assert y_low.dtype == torch.float32 and state_low.dtype == torch.float32
    torch.testing.assert_close(y_low, y, rtol=0, atol=0.02 * y.abs().max().item())
    assert not torch.equal(y_low, y)
