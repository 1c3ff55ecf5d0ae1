"""PatchTST: RevIN and its inverse, the patches against a loop, equivariance to affine maps of a
series, equal forecasts to Hugging Face's PatchTSTForPrediction with copied weights, the pinball
loss against its definition, and training through the forecasting task's windows."""

import pytest
import torch
import transformers
from transformers.models.patchtst.modeling_patchtst import PatchTSTStdScaler

from seqlab.data.series import Panel, Series
from seqlab.errors import ConfigError
from seqlab.forecast.patchtst import PatchTST, PatchTSTConfig, patchify
from seqlab.forecast.revin import RevIN
from seqlab.training import TrainConfig, Trainer
from test_nbeats import panel_of_sines, pinball_by_hand, sines_task


def test_denormalise_inverts_normalise():
    generator = torch.Generator().manual_seed(0)
    revin = RevIN().double()
    with torch.no_grad():
        revin.weight.fill_(1.7)
        revin.bias.fill_(-0.3)
    x = torch.randn(5, 24, generator=generator, dtype=torch.float64) * 40 + 300
    z, mean, std = revin.normalise(x)
    torch.testing.assert_close(revin.denormalise(z, mean, std), x, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(z.mean(1), torch.full((5,), -0.3, dtype=torch.float64), rtol=0, atol=1e-12)
    expected_std = 1.7 * x.std(1, unbiased=False) / torch.sqrt(x.var(1, unbiased=False) + 1e-5)
    torch.testing.assert_close(z.std(1, unbiased=False), expected_std, rtol=1e-12, atol=0)
    # The inverse broadcasts each window's statistics over any trailing shape, e.g. (B, Q, H).
    y = torch.randn(5, 3, 4, generator=generator, dtype=torch.float64)
    back = revin.denormalise(y, mean, std)
    torch.testing.assert_close(back[2, 1], (y[2, 1] + 0.3) / 1.7 * std[2] + mean[2])


def test_revin_without_affine_is_hugging_faces_std_scaler():
    x = torch.randn(4, 30, generator=torch.Generator().manual_seed(1)) * 3 + 7
    z, mean, std = RevIN(affine=False).normalise(x)
    config = transformers.PatchTSTConfig(scaling="std")
    scaled, loc, scale = PatchTSTStdScaler(config)(x[:, :, None], torch.ones_like(x[:, :, None]))
    for ours, theirs in ((z, scaled), (mean, loc), (std, scale)):
        torch.testing.assert_close(ours, theirs[..., 0], rtol=1e-6, atol=1e-6)


def patches_by_loop(x: list[float], patch_len: int, stride: int, padding: str) -> list[list[float]]:
    """The patches as the paper defines them, one start after another."""
    if padding == "end":
        x = x + [x[-1]] * stride
    else:
        x = x[(len(x) - patch_len) % stride:]
    patches, start = [], 0
    while start + patch_len <= len(x):
        patches.append(x[start: start + patch_len])
        start += stride
    return patches


@pytest.mark.parametrize("padding", ["end", "none"])
@pytest.mark.parametrize("context,patch_len,stride", [(12, 4, 2), (13, 4, 3), (10, 4, 4), (7, 7, 3), (9, 3, 1)])
def test_patches_match_a_loop(context, patch_len, stride, padding):
    x = torch.randn(3, context, generator=torch.Generator().manual_seed(context))
    patches = patchify(x, patch_len, stride, padding)
    expected = torch.tensor([patches_by_loop(row, patch_len, stride, padding) for row in x.tolist()])
    assert torch.equal(patches, expected)
    config = PatchTSTConfig(horizon=2, context=context, patch_len=patch_len, stride=stride, padding=padding)
    assert patches.shape == (3, config.n_patches, patch_len)
    if padding == "end":            # every value is read, the last one in the last patch
        assert patches[:, -1, :].eq(x[:, -1:]).any(1).all()


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Every gain, bias and running statistic moved off its initial value, so that each counts."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("running_mean", "norm.weight", "norm.bias", "revin.weight", "revin.bias")):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return model


@pytest.mark.parametrize("norm", ["batchnorm", "layernorm"])
def test_forecasts_follow_positive_affine_maps_of_the_series(norm):
    config = PatchTSTConfig(horizon=5, context=20, patch_len=6, stride=3, d_model=16, n_heads=4, n_layers=2,
                            d_ff=32, norm=norm, revin_eps=1e-12, levels=(0.1, 0.5, 0.9))
    torch.manual_seed(3)
    model = randomised(PatchTST(config)).double()
    panel = panel_of_sines(n_series=4, length=26)
    for a, b in ((1000.0, -5.0), (0.01, 300.0)):
        moved = Panel(tuple(Series(s.id, a * s.values + b) for s in panel), season=8)
        original, transformed = model.predict(panel, 5, (0.1, 0.9)), model.predict(moved, 5, (0.1, 0.9))
        torch.testing.assert_close(transformed.mean, a * original.mean + b, rtol=1e-10, atol=0)
        for q in (0.1, 0.9):
            torch.testing.assert_close(transformed.quantiles[q], a * original.quantiles[q] + b, rtol=1e-10, atol=0)
    assert model.training                                   # predict restores the mode it found


# Hugging Face PatchTSTForPrediction's names -> ours (layer i), for the modules both have.
HF_NAMES = {"model.encoder.embedder.input_embedding": "patch_embedding",
            "model.encoder.positional_encoder.position_enc": "positions", "head.projection": "head"}
HF_LAYER_NAMES = {"self_attn.q_proj": "attention.q_proj", "self_attn.k_proj": "attention.k_proj",
                  "self_attn.v_proj": "attention.v_proj", "self_attn.out_proj": "attention.out_proj",
                  "norm_sublayer1": "attention_norm", "norm_sublayer3": "feedforward_norm",
                  "ff.0": "feedforward.up", "ff.3": "feedforward.down"}


def hugging_face_names(model: PatchTST) -> dict[str, str]:
    """Our state's keys -> Hugging Face's, for every tensor both have."""
    prefixes = dict(HF_NAMES)
    for layer in range(model.config.n_layers):
        prefixes |= {f"model.encoder.layers.{layer}.{theirs}": f"blocks.{layer}.{ours}"
                     for theirs, ours in HF_LAYER_NAMES.items()}
    return {key: theirs + key[len(ours):] for key in model.state_dict() for theirs, ours in prefixes.items()
            if key == ours or key.startswith(ours + ".")}


def hugging_face_state(model: PatchTST) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face's names. HF has no RevIN affine (its scaler is the plain
    standardisation), so gamma and beta are folded into the patch embedding (W_p (gamma z + beta)
    + b = (gamma W_p) z + (b + beta W_p 1)) and the head ((W h + c - beta) / gamma)."""
    ours = model.state_dict()
    state = {theirs: ours[key].clone() for key, theirs in hugging_face_names(model).items()}
    gamma, beta = model.revin.weight.detach(), model.revin.bias.detach()
    embedding = model.patch_embedding.weight.detach()
    state["model.encoder.embedder.input_embedding.weight"] = gamma * embedding
    state["model.encoder.embedder.input_embedding.bias"] = model.patch_embedding.bias.detach() + beta * embedding.sum(1)
    state["head.projection.weight"] = model.head.weight.detach() / gamma
    state["head.projection.bias"] = (model.head.bias.detach() - beta) / gamma
    return state


@pytest.mark.parametrize("norm,norm_position", [("batchnorm", "post"), ("batchnorm", "pre"), ("layernorm", "pre"),
                                                ("layernorm", "post")])
def test_forecasts_equal_hugging_face_patchtst(norm, norm_position):
    config = PatchTSTConfig(horizon=5, context=20, patch_len=4, stride=3, padding="none", d_model=16, n_heads=4,
                            n_layers=2, d_ff=32, norm=norm, norm_position=norm_position, dropout=0.0, levels=(0.5,))
    torch.manual_seed(0)
    model = randomised(PatchTST(config))
    reference = transformers.PatchTSTForPrediction(transformers.PatchTSTConfig(
        num_input_channels=1, context_length=20, patch_length=4, patch_stride=3, prediction_length=5,
        num_hidden_layers=2, d_model=16, num_attention_heads=4, ffn_dim=32, norm_type=norm,
        pre_norm=norm_position == "pre", activation_function="gelu", positional_encoding_type="random",
        pooling_type=None, scaling="std", norm_eps=1e-5, attn_implementation="eager"))
    x = torch.randn(6, 20, generator=torch.Generator().manual_seed(2)) * 30 + 100
    target = torch.randn(6, 5, generator=torch.Generator().manual_seed(3)) * 30 + 100
    # float32 to 1e-5 (the project's standard); then float64, where the gradients of a loss of the
    # forecasts must agree too, for every weight copied as it is (not the folded ones).
    for dtype, rtol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        model, reference, x, target = model.to(dtype), reference.to(dtype), x.to(dtype), target.to(dtype)
        reference.load_state_dict(hugging_face_state(model))      # strict; folded in this dtype
        for mode in ("eval", "train"):           # BatchNorm: running statistics, then the batch's
            model.train(mode == "train")
            reference.train(mode == "train")
            model.zero_grad()
            reference.zero_grad()
            expected = reference(past_values=x[:, :, None]).prediction_outputs[:, :, 0]     # (B, H)
            ours = model(x)[:, 0]
            torch.testing.assert_close(ours, expected, rtol=rtol, atol=rtol * expected.abs().max().item())
            if dtype == torch.float64:
                ((ours - target) ** 2).mean().backward()
                ((expected - target) ** 2).mean().backward()
                parameters, theirs = dict(model.named_parameters()), dict(reference.named_parameters())
                for key, their_key in hugging_face_names(model).items():
                    if key in parameters and not key.startswith(("patch_embedding", "head")):
                        torch.testing.assert_close(parameters[key].grad, theirs[their_key].grad, rtol=1e-8,
                                                   atol=1e-10)
        if norm == "batchnorm":                  # the training forward moved the running statistics alike
            theirs = reference.state_dict()
            for key, value in hugging_face_state(model).items():
                if "running" in key:
                    torch.testing.assert_close(value, theirs[key], rtol=rtol, atol=0.0)


def test_the_loss_is_the_mean_pinball_loss_on_the_revin_scale():
    torch.manual_seed(2)
    levels = (0.1, 0.5, 0.9)
    model = PatchTST(PatchTSTConfig(horizon=3, context=8, patch_len=4, stride=2, d_model=8, n_heads=2, n_layers=1,
                                    d_ff=8, dropout=0.0, levels=levels)).eval()
    context, target = torch.rand(4, 8) * 5 + 1, torch.rand(4, 3) * 3
    sigma = lambda window: (window.double().var(unbiased=False) + 1e-5).sqrt().item()  # noqa: E731
    expected = pinball_by_hand(context, target, model(context), levels, sigma)
    assert model.loss(context, target).item() == pytest.approx(expected, rel=1e-5)


def test_training_on_the_task_windows_learns_the_seasonal_pattern(tmp_path):
    task = sines_task(tmp_path)
    torch.manual_seed(0)
    model = PatchTST(PatchTSTConfig(horizon=8, context=32, patch_len=8, stride=4, d_model=32, n_heads=4, n_layers=2,
                                    d_ff=64, dropout=0.0))
    before = task.evaluate(model, "valid")["mase"]
    config = TrainConfig(steps=200, batch_size=64, lr=1e-3, warmup_steps=20, weight_decay=0.0, eval_every=200,
                         seed=0, progress=False, device="cpu")
    Trainer(model, task, config).fit()
    after = task.evaluate(model, "test")
    assert after["mase"] < before / 5
    assert after["owa"] < 1.0                        # better than Naive2 on the held-out horizon
    assert 0.8 <= after["coverage"] <= 1.0           # the 95% interval covers about what it should


@pytest.mark.parametrize("overrides,message", [
    ({"context": 12, "patch_len": 16}, r"context \(12\) is shorter than a patch \(patch_len 16\)"),
    ({"stride": 9, "patch_len": 8}, r"stride \(9\) must be at most patch_len \(8\)"),
    ({"d_model": 30, "n_heads": 4}, r"n_heads \(4\) must divide d_model \(30\)"),
    ({"padding": "start"}, "padding must be one of end, none"),
    ({"norm": "rmsnorm"}, "norm must be one of batchnorm, layernorm"),
    ({"n_layers": 0}, "n_layers must be >= 1"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"revin_eps": 0.0}, "revin_eps must be positive"),
    ({"levels": (0.1, 0.9)}, r"levels must be increasing levels in \(0, 1\) including 0.5"),
])
def test_bad_configs_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=f"PatchTSTConfig.{message}"):
        PatchTSTConfig(**overrides)


def test_bad_requests():
    model = PatchTST(PatchTSTConfig(horizon=4, context=8, patch_len=4, stride=2, d_model=8, n_heads=2, n_layers=1))
    panel = panel_of_sines(n_series=2, length=12)
    with pytest.raises(ConfigError, match="forecasts 4 values; 5 were asked"):
        model.predict(panel, 5)
    with pytest.raises(ConfigError, match="learnt quantiles from 0.025 to 0.975"):
        model.predict(panel, 4, (0.01,))
    short = Panel((Series("short", torch.arange(3.0, dtype=torch.float64) + 10),), season=1)
    assert torch.isfinite(model.predict(short, 4).mean).all()          # padded on the left with its first value
