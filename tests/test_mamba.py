"""Mamba: parity with Hugging Face's ``MambaForCausalLM`` (its pure-PyTorch path) and with
``mambapy``, weights copied from a tiny random seqlab model; the paper's initialisation; A_log
and D spared by weight decay; a recurrent state of constant size."""

import math

import pytest
import torch
import transformers
from mambapy import mamba as mambapy_mamba

from seqlab import registry
from seqlab.training import parameter_groups

VOCAB, WIDTH, LAYERS, STATE = 37, 32, 2, 8


def tiny_mamba(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = registry.build("mamba", "lm", vocab_size=VOCAB, d_model=WIDTH, n_layers=LAYERS, d_state=STATE, **overrides)
    with torch.no_grad():          # move every gain and skip off its initial value, so that each one counts
        for name, parameter in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D")):
                parameter.uniform_(0.5, 1.5)
            if name.endswith("A_log"):
                parameter.add_(0.3 * torch.randn_like(parameter))
    return model.eval()


def random_tokens(batch: int = 3, length: int = 45) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def test_logits_equal_hugging_face_mamba():
    model = tiny_mamba()
    config = transformers.MambaConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS,
                                      state_size=STATE, expand=2, conv_kernel=4, time_step_rank=math.ceil(WIDTH / 16),
                                      use_bias=False, use_conv_bias=True, layer_norm_epsilon=1e-5,
                                      tie_word_embeddings=True, use_mambapy=False)
    reference = transformers.MambaForCausalLM(config).eval()
    missing, unexpected = reference.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}          # tied: the same tensor
    tokens = random_tokens()
    with torch.no_grad():
        expected = reference(tokens).logits
        torch.testing.assert_close(model(tokens), expected, rtol=1e-4, atol=1e-4)
        # and the recurrent view against HF's cached decoding of the same tokens
        state, logits = model.init_state(3), []
        for t in range(tokens.shape[1]):
            step_logits, state = model.step(tokens[:, t], state)
            logits.append(step_logits)
    torch.testing.assert_close(torch.stack(logits, dim=1), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("length", [32, 45])
def test_layers_equal_mambapy(length):
    model = tiny_mamba()
    reference = mambapy_mamba.Mamba(mambapy_mamba.MambaConfig(d_model=WIDTH, n_layers=LAYERS, d_state=STATE, expand_factor=2,
                                                  d_conv=4, rms_norm_eps=1e-5)).eval()
    reference.layers.load_state_dict(model.backbone.layers.state_dict(), strict=True)
    x = torch.randn(2, length, WIDTH, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hidden = x
        for layer in model.backbone.layers:
            hidden, _ = layer(hidden)
        torch.testing.assert_close(hidden, reference(x), rtol=1e-4, atol=1e-4)


def test_initialisation_follows_the_paper():
    torch.manual_seed(0)
    model = registry.build("mamba", "lm", vocab_size=VOCAB, d_model=64, n_layers=2, d_state=STATE)
    mixer = model.backbone.layers[0].mixer
    A = -torch.exp(mixer.A_log)
    torch.testing.assert_close(A, -torch.arange(1.0, STATE + 1).expand(128, -1))        # S4D-real
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    # log-uniform: log dt is spread over [log 1e-3, log 1e-1], its mean near the middle
    assert abs(torch.log(dt).mean().item() - math.log(1e-2)) < 0.5
    assert torch.log(dt).std().item() > 0.9             # uniform over a width of 4.6: std 1.33
    torch.testing.assert_close(mixer.D, torch.ones(128))


def test_a_log_and_d_are_not_decayed_and_matrices_are():
    model = tiny_mamba()
    decay, no_decay = (set(map(id, group)) for group in parameter_groups(model))
    mixer = model.backbone.layers[0].mixer
    assert {id(mixer.A_log), id(mixer.D), id(mixer.dt_proj.bias)} <= no_decay
    assert {id(mixer.in_proj.weight), id(mixer.x_proj.weight), id(mixer.out_proj.weight)} <= decay
    assert mixer.A_log.dim() == 2                        # a matrix: only its mark keeps it out of decay


def test_recurrent_state_has_constant_size():
    model = tiny_mamba()
    state = model.init_state(2)
    shapes = [tuple(tensor.shape) for layer in state for tensor in layer]
    with torch.no_grad():
        for t in range(50):
            _, state = model.step(torch.full((2,), t % VOCAB), state)
    assert [tuple(tensor.shape) for layer in state for tensor in layer] == shapes
    assert shapes[:2] == [(2, 2 * WIDTH, 3), (2, 2 * WIDTH, STATE)]      # (window of K-1, SSM state)
