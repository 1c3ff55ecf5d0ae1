"""Hugging Face Mamba and Mamba-2 <-> seqlab: tiny random ``MambaForCausalLM`` and
``Mamba2ForCausalLM`` models, saved by transformers, read by ``seqlab.interop.hf.load_model``;
logits equal in float32, greedy generation token for token, written back by ``save_model`` and
read by transformers with equal logits; options seqlab does not implement refused by name;
bfloat16 checkpoints kept in bfloat16 unless a dtype is asked for.

Greedy generation compares argmaxes, which float noise (~1e-5 here) could flip at a near tie.
The weights are scaled up: the output layer (the embedding, when tied) x16, so that the logits
spread over tens of units, and each mixer's output projection x800, so that the mixers rather
than the input embedding's echo through the residual choose the next token (at HF's initial
scales a tied model only repeats its last input). Each test then asserts that every step of the
reference's greedy path has a top-2 logit margin above 1e-3 (the smallest here is 8.5e-3, the
float noise ~1e-5), so that a differing token can only come from a difference in the model, and
that the continuations are not a repeated token.
"""

import json
import shutil

import pytest
import torch
import transformers

from seqlab import registry
from seqlab.errors import ConfigError
from seqlab.interop import hf

VOCAB, WIDTH, LAYERS, LENGTH, NEW_TOKENS = 61, 32, 2, 40, 32
HEAD_SCALE, MIXER_SCALE, MIN_MARGIN = 16.0, 800.0, 1e-3


def hf_config(family: str, tied: bool) -> transformers.PretrainedConfig:
    """A tiny config; the tied variant has no projection biases, the untied one has them and no
    convolution bias, so that every row of the tables is exercised. No eos: HF's
    ``min_new_tokens`` would forbid it where seqlab's greedy decoding may pick it."""
    common = {"vocab_size": VOCAB, "hidden_size": WIDTH, "num_hidden_layers": LAYERS, "tie_word_embeddings": tied,
              "use_bias": not tied, "use_conv_bias": tied, "bos_token_id": None, "eos_token_id": None,
              "pad_token_id": None}
    if family == "mamba":
        return transformers.MambaConfig(state_size=8, use_mambapy=False, **common)
    return transformers.Mamba2Config(state_size=16, num_heads=2 * WIDTH // 16, head_dim=16, n_groups=1 if tied else 2,
                                     chunk_size=16, **common)


def reference_model(family: str, tied: bool) -> torch.nn.Module:
    """The HF model, with its gains, skips and biases moved off their initial values (ones and
    zeros) so that each one counts, and its output layer and mixer outputs scaled up."""
    torch.manual_seed(0)
    model_class = transformers.MambaForCausalLM if family == "mamba" else transformers.Mamba2ForCausalLM
    model = model_class(hf_config(family, tied)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D")):
                parameter.uniform_(0.5, 1.5)
            elif name.endswith(("proj.bias", "conv1d.bias")) and "dt_proj" not in name:
                parameter.normal_(0.0, 0.1)
            elif name.endswith("out_proj.weight"):
                parameter.mul_(MIXER_SCALE)
        model.lm_head.weight.mul_(HEAD_SCALE)
    return model


def random_tokens(batch: int = 3, length: int = LENGTH) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


CASES = [("mamba", True), ("mamba", False), ("mamba2", True), ("mamba2", False)]


@pytest.mark.parametrize("family, tied", CASES)
def test_hf_model_imports_with_equal_logits_and_generation_and_exports_back(family, tied, tmp_path):
    reference = reference_model(family, tied)
    reference.save_pretrained(tmp_path / "hf")
    loaded = hf.load_model(tmp_path / "hf")
    model = loaded.model
    assert loaded.architecture.model == family and model.config.tie_embeddings == tied
    assert (model.lm_head.weight is model.backbone.embeddings.weight) == tied
    tokens = random_tokens()
    with torch.no_grad():
        expected = reference(tokens).logits
        torch.testing.assert_close(model(tokens), expected, rtol=1e-4, atol=1e-4)

    generated = reference.generate(tokens, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS,
                                   output_scores=True, return_dict_in_generate=True)
    top2 = torch.stack(generated.scores, dim=1).topk(2, dim=-1).values                  # (B, NEW, 2)
    assert (top2[..., 0] - top2[..., 1]).min() > MIN_MARGIN, "a near tie: the comparison would test float noise"
    assert all(len(set(row.tolist())) >= 8 for row in generated.sequences[:, LENGTH:])
    assert torch.equal(model.generate(tokens, NEW_TOKENS, temperature=0), generated.sequences)

    hf.save_model(model, tmp_path / "back")
    written = json.loads((tmp_path / "back" / "config.json").read_text())
    assert written["architectures"] == [type(reference).__name__]
    reread = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert type(reread) is type(reference)
    with torch.no_grad():
        torch.testing.assert_close(reread(tokens).logits, expected, rtol=1e-4, atol=1e-4)


def test_bare_backbone_checkpoint_imports_with_its_prefix_restored(tmp_path):
    reference = reference_model("mamba2", tied=True)
    reference.backbone.save_pretrained(tmp_path / "hf")               # embeddings.weight, layers.0...
    model = hf.load_model(tmp_path / "hf").model
    tokens = random_tokens()
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference(tokens).logits, rtol=1e-4, atol=1e-4)


def edited_checkpoint(tmp_path, family: str, **changes) -> str:
    """A saved tiny checkpoint whose config.json has ``changes`` applied (None deletes a key)."""
    source = tmp_path / "source"
    if not source.exists():
        reference_model(family, tied=True).save_pretrained(source)
    target = tmp_path / "edited"
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    for key, value in changes.items():
        config[key] = value
    (target / "config.json").write_text(json.dumps(config))
    return str(target)


@pytest.mark.parametrize("family, changes, message", [
    ("mamba", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ("mamba2", {"hidden_act": "relu"}, "hidden_act='relu'"),
    ("mamba2", {"norm_before_gate": True}, "norm_before_gate=True"),
    ("mamba2", {"rms_norm": False}, "rms_norm=False"),
    ("mamba2", {"time_step_limit": [0.0, 0.5]}, "time_step_limit"),
    ("mamba2", {"num_heads": 8}, "num_heads=8"),
    ("mamba", {"time_step_rank": "half"}, "time_step_rank"),
])
def test_unsupported_options_are_refused_by_name(family, changes, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        hf.load_model(edited_checkpoint(tmp_path, family, **changes))


@pytest.mark.parametrize("family, changes", [
    ("mamba2", {"time_step_limit": [0.0, float("inf")], "norm_before_gate": False, "rms_norm": True}),
    ("mamba", {"time_step_rank": "auto", "residual_in_fp32": False}),
])
def test_the_supported_spellings_of_those_options_load(family, changes, tmp_path):
    # mamba_ssm-era configs write infinity as JSON's Infinity; transformers 5 as {"__float__": ...}
    model = hf.load_model(edited_checkpoint(tmp_path, family, **changes)).model
    assert model.backbone.layers[0].mixer.out_proj.in_features == 2 * WIDTH


@pytest.mark.parametrize("family", ["mamba", "mamba2"])
def test_a_classifier_does_not_export(family, tmp_path):
    classifier = registry.build(family, "classify", vocab_size=VOCAB, n_classes=3, d_model=WIDTH, n_layers=1)
    with pytest.raises(ConfigError, match="not a language model"):
        hf.save_model(classifier, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family", ["mamba", "mamba2"])
def test_bfloat16_checkpoint_stays_bfloat16_unless_a_dtype_is_asked_for(family, tmp_path):
    reference = reference_model(family, tied=False).to(torch.bfloat16)
    reference.save_pretrained(tmp_path / "hf")
    stored = {name: tensor for name, tensor in reference.state_dict().items()}

    model = hf.load_model(tmp_path / "hf").model
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, stored[name]), name

    upcast = hf.load_model(tmp_path / "hf", dtype="float32").model
    assert {parameter.dtype for parameter in upcast.parameters()} == {torch.float32}
    reference = reference.float()                    # the same bf16-rounded values, computed in float32
    tokens = random_tokens()
    with torch.no_grad():
        torch.testing.assert_close(upcast(tokens), reference(tokens).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["mamba", "mamba2"])
def test_bfloat16_logits_are_as_close_to_float32_as_transformers_own(family, tmp_path):
    """Computed in bf16 (float32 residual stream, as the checkpoint's residual_in_fp32 asks),
    seqlab's logits stay as close to the float32 ones as transformers' bf16 logits do."""
    reference = reference_model(family, tied=False).to(torch.bfloat16)
    reference.save_pretrained(tmp_path / "hf")
    model = hf.load_model(tmp_path / "hf").model
    assert model.config.residual_in_fp32
    tokens = random_tokens()
    with torch.no_grad():
        theirs = reference(tokens).logits.float()
        ours = model(tokens).float()
        exact = reference.float()(tokens).logits
    assert torch.isfinite(ours).all()
    assert (ours - exact).abs().max() <= 2 * (theirs - exact).abs().max()


@pytest.mark.parametrize("family", ["mamba", "mamba2"])
def test_right_padded_rows_score_their_real_tokens_as_transformers(family, tmp_path):
    """Right padding, as batches of unequal texts are scored: each row's real positions equal
    transformers' with its attention mask, whatever fills the padding."""
    reference = reference_model(family, tied=True)
    reference.save_pretrained(tmp_path / "hf")
    model = hf.load_model(tmp_path / "hf").model
    tokens = random_tokens()
    real = torch.arange(LENGTH)[None, :] < torch.tensor([LENGTH, 23, 6])[:, None]
    padded = torch.where(real, tokens, torch.randint(0, VOCAB, tokens.shape, generator=torch.Generator().manual_seed(9)))
    with torch.no_grad():
        expected = reference(tokens, attention_mask=real.long()).logits
        torch.testing.assert_close(model(padded)[real], expected[real], rtol=1e-4, atol=1e-4)
