"""GPT-2 and Llama through seqlab.interop.hf: logits equal to transformers' on tiny random models,
greedy generation token-identical to transformers' generate, export back to transformers."""

from __future__ import annotations

import pytest
import torch
import transformers

from seqlab import registry
from seqlab.errors import ConfigError
from seqlab.interop import hf

VOCAB = 61
NEW_TOKENS = 32
MARGIN = 1e-3


def gpt2_reference(tie: bool = True, activation: str = "gelu_new", eps: float = 1e-5) -> transformers.PreTrainedModel:
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=96, n_embd=32, n_layer=2, n_head=4,
                                     activation_function=activation, tie_word_embeddings=tie, initializer_range=0.2,
                                     layer_norm_epsilon=eps, bos_token_id=None, eos_token_id=None)
    return transformers.GPT2LMHeadModel(config).eval()


def llama_reference(tie: bool = False, bias: bool = False, kv_heads: int = 2,
                    eps: float = 1e-5) -> transformers.PreTrainedModel:
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=96,
                                      rope_theta=500.0, rms_norm_eps=eps, attention_bias=bias, mlp_bias=bias,
                                      tie_word_embeddings=tie, initializer_range=0.2, bos_token_id=None,
                                      eos_token_id=None, pad_token_id=None)
    return transformers.LlamaForCausalLM(config).eval()


REFERENCES = {
    "gpt2 tied": lambda: gpt2_reference(),
    "gpt2 untied exact gelu": lambda: gpt2_reference(tie=False, activation="gelu"),
    "gpt2 norm eps 0.5": lambda: gpt2_reference(eps=0.5),            # an eps that changes the logits
    "llama gqa untied": lambda: llama_reference(),
    "llama tied biases": lambda: llama_reference(tie=True, bias=True),
    "llama multi-query": lambda: llama_reference(kv_heads=1),
    "llama norm eps 0.5": lambda: llama_reference(eps=0.5),
}


@pytest.fixture(params=sorted(REFERENCES))
def imported(request, tmp_path):
    torch.manual_seed(0)
    reference = REFERENCES[request.param]()
    reference.save_pretrained(tmp_path / "hf")
    return reference, hf.load_model(tmp_path / "hf")


def test_logits_equal_transformers(imported):
    reference, loaded = imported
    tokens = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(tokens).logits
        got = loaded.model(tokens)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_padded_rows_score_their_real_tokens_as_transformers(imported):
    """Right padding (what causal training and scoring use): each row's real positions equal
    transformers' with its attention mask, whatever fills the padding."""
    reference, loaded = imported
    generator = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, VOCAB, (3, 24), generator=generator)
    lengths = torch.tensor([24, 17, 5])
    real = torch.arange(24)[None, :] < lengths[:, None]
    padded = torch.where(real, tokens, torch.randint(0, VOCAB, tokens.shape, generator=generator))
    with torch.no_grad():
        expected = reference(tokens, attention_mask=real.long()).logits
        got = loaded.model(padded)
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers(imported):
    reference, loaded = imported
    prompt = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                                      do_sample=False, num_beams=1, output_scores=True,
                                      return_dict_in_generate=True, pad_token_id=0)
    got = loaded.model.generate(prompt, NEW_TOKENS, temperature=0.0)
    scores = torch.stack(expected.scores, dim=1)                                  # (B, N, V)
    top2 = scores.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1] > MARGIN).long().cumprod(dim=1).bool()    # before the first near-tie
    assert clear.sum(dim=1).min() >= NEW_TOKENS - 4, "the tiny model has too many near-ties to test"
    new_expected, new_got = expected.sequences[:, prompt.shape[1]:], got[:, prompt.shape[1]:]
    assert new_got.shape == (2, NEW_TOKENS)
    assert torch.equal(new_got[clear], new_expected[clear])


def test_export_back_to_transformers(imported, tmp_path):
    reference, loaded = imported
    hf.save_model(loaded.model, tmp_path / "back")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert type(again) is type(reference)
    tokens = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(again(tokens).logits, reference(tokens).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, overrides, hf_class", [
    ("gpt", {}, "GPT2LMHeadModel"),
    ("llama", {}, "LlamaForCausalLM"),
    ("transformer", {"activation": "gelu_tanh", "norm_eps": 1e-6}, "GPT2LMHeadModel"),
    ("transformer", {"positions": "rope", "norm": "rmsnorm", "activation": "swiglu", "bias": False,
                     "n_kv_heads": 2}, "LlamaForCausalLM"),
])
def test_seqlab_models_export_to_transformers(tmp_path, name, overrides, hf_class):
    """A model built (or trained) in seqlab, exported: transformers reads the same function."""
    torch.manual_seed(5)
    model = registry.build(name, vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, max_len=64, **overrides).eval()
    with torch.no_grad():
        for parameter in model.parameters():                  # norms and biases away from their init
            parameter.add_(0.1 * torch.randn_like(parameter))
    hf.save_model(model, tmp_path / "out")
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(reference).__name__ == hf_class
    tokens = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference(tokens).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("overrides, named", [
    ({"positions": "alibi"}, "positions"),
    ({"n_experts": 4}, "n_experts"),
    ({"scale_attention": False}, "scale_attention"),
])
def test_models_without_an_hf_form_are_refused_by_name(tmp_path, overrides, named):
    model = registry.build("transformer", vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=4, **overrides)
    with pytest.raises(ConfigError, match=named):
        hf.save_model(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_gpt2_options_are_refused_by_name(tmp_path):
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                     scale_attn_by_inverse_layer_idx=True)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "hf")
    with pytest.raises(ConfigError, match="scale_attn_by_inverse_layer_idx"):
        hf.load_model(tmp_path / "hf")


def test_imports_keep_tied_weights_tied_and_parameter_marks(tmp_path):
    """The model is built without storage and filled once: a tied head stays the embedding's
    tensor, and Mamba's A and D keep the mark that spares them weight decay."""
    gpt2_reference().save_pretrained(tmp_path / "gpt2")
    model = hf.load_model(tmp_path / "gpt2").model
    assert model.head.weight is model.token_embedding.weight
    assert all(p.device.type == "cpu" and p.is_contiguous() for p in model.parameters())
    config = transformers.MambaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, state_size=4)
    transformers.MambaForCausalLM(config).save_pretrained(tmp_path / "mamba")
    mixer = hf.load_model(tmp_path / "mamba").model.backbone.layers[0].mixer
    assert mixer.A_log.no_weight_decay and mixer.D.no_weight_decay
