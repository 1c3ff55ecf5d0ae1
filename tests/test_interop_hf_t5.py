"""T5 interop: a tiny random ``transformers.T5ForConditionalGeneration``, written by
transformers, read by ``seqlab.interop.hf.load_model``, must give the same logits and the same
greedy generation; written back by ``save_model``, transformers must read the same model.

Relative positions: 8 buckets up to distance 16, so sources of 25 and targets of 30-32 tokens
reach the logarithmic buckets in both directions (encoder) and in the causal decoder.
"""

import json

import pytest
import torch
import transformers

from seqlab import registry
from seqlab.decoding import decode_greedy
from seqlab.errors import ConfigError
from seqlab.interop.hf import load_model, save_model
from seqlab.layers.positions import relative_position_bucket

VOCAB, SOURCE_LENGTH, TARGET_LENGTH, NEW_TOKENS = 64, 25, 30, 32
START, EOS = 0, 1                  # T5: the decoder starts at the pad id 0; EOS is 1
# (feed_forward_proj, head): "tied" is T5's scaled tied head, "untied" T5 v1.1's lm_head as its
# hub config.json has it (tie_word_embeddings false), "tied-unscaled" what transformers 5
# writes for a v1.1-style model whose head stayed tied (scale_decoder_outputs false).
VARIANTS = [("relu", "tied"), ("gated-gelu", "untied"), ("gated-silu", "tied-unscaled")]


def t5_config(feed_forward_proj: str, head: str, initializer_factor: float) -> transformers.T5Config:
    return transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
        feed_forward_proj=feed_forward_proj, tie_word_embeddings=head == "tied",
        decoder_start_token_id=START, eos_token_id=EOS, pad_token_id=0, initializer_factor=initializer_factor)


def write_reference(directory, feed_forward_proj: str, head: str, initializer_factor: float = 1.0, seed: int = 0):
    """A random T5 saved by transformers into ``directory`` (in eval mode, returned)."""
    torch.manual_seed(seed)
    reference = transformers.T5ForConditionalGeneration(t5_config(feed_forward_proj, head, initializer_factor)).eval()
    if head == "untied":
        reference.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32) * initializer_factor)
    reference.save_pretrained(directory)
    if head == "untied":       # transformers 5 writes true for every T5; v1.1 checkpoints say false
        config = json.loads((directory / "config.json").read_text())
        config["tie_word_embeddings"] = False
        config.pop("scale_decoder_outputs", None)
        (directory / "config.json").write_text(json.dumps(config))
    return reference


def batch(seed: int = 1):
    """Source ids (B, S) with right padding (rows of 25, 18 and 5 real tokens) and targets (B, T)."""
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(2, VOCAB, (3, SOURCE_LENGTH), generator=generator)
    lengths = torch.tensor([SOURCE_LENGTH, 18, 5])
    src_mask = torch.arange(SOURCE_LENGTH)[None, :] < lengths[:, None]          # true at real tokens
    src = src.masked_fill(~src_mask, 0)
    tgt_in = torch.randint(2, VOCAB, (3, TARGET_LENGTH), generator=generator)
    tgt_in[:, 0] = START
    return src, src_mask, tgt_in


def reference_logits(reference, src, src_mask, tgt_in):
    with torch.no_grad():
        return reference(input_ids=src, attention_mask=src_mask.long(), decoder_input_ids=tgt_in).logits


@pytest.mark.parametrize("n_buckets,max_distance", [(8, 16), (32, 128), (6, 20)])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_bucket_equals_transformers(n_buckets, max_distance, bidirectional):
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(-200, 201)[:, None] + torch.zeros(1, 3, dtype=torch.long)   # any shape
    theirs = T5Attention._relative_position_bucket(relative, bidirectional=bidirectional, num_buckets=n_buckets,
                                                   max_distance=max_distance)
    ours = relative_position_bucket(relative, bidirectional, n_buckets, max_distance)
    assert torch.equal(ours, theirs)
    # Every bucket is reached, the logarithmic ones included (bidirectional: all but "after, distance 0").
    assert len(set(ours.flatten().tolist())) == n_buckets - bidirectional


@pytest.mark.parametrize("feed_forward_proj,head", VARIANTS)
def test_logits_equal_transformers_both_ways(tmp_path, feed_forward_proj, head):
    reference = write_reference(tmp_path / "hf", feed_forward_proj, head)
    loaded = load_model(tmp_path / "hf")
    model = loaded.model
    assert model.config.tie_embeddings == (head != "untied")
    assert model.config.scale_tied_head == (head == "tied")
    assert loaded.special_tokens["decoder_start_token_id"] == START

    src, src_mask, tgt_in = batch()
    expected = reference_logits(reference, src, src_mask, tgt_in)
    with torch.no_grad():
        got = model(src, src_mask, tgt_in)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    # Unpadded sources too (no mask at all in the encoder).
    full = torch.ones_like(src_mask)
    with torch.no_grad():
        got_full = model(src, full, tgt_in)
    torch.testing.assert_close(got_full, reference_logits(reference, src, full, tgt_in), rtol=0, atol=1e-4)

    save_model(model, tmp_path / "back", special_tokens=loaded.special_tokens)
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    torch.testing.assert_close(reference_logits(back, src, src_mask, tgt_in), expected, rtol=0, atol=1e-4)
    assert back.config.scale_decoder_outputs == (head == "tied")
    assert (back.lm_head.weight is back.shared.weight) == (head != "untied")


@pytest.mark.parametrize("feed_forward_proj,head", VARIANTS[:2])
def test_greedy_generation_equals_transformers(tmp_path, feed_forward_proj, head):
    # A larger weight scale makes the logits' top-2 margins far above float noise.
    reference = write_reference(tmp_path, feed_forward_proj, head, initializer_factor=4.0, seed=2)
    model = load_model(tmp_path).model
    src, src_mask, _ = batch(seed=3)
    theirs = reference.generate(src, attention_mask=src_mask.long(), max_new_tokens=NEW_TOKENS,
                                min_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1)
    assert theirs.shape == (3, NEW_TOKENS + 1) and bool((theirs[:, 0] == START).all())
    logits = reference_logits(reference, src, src_mask, theirs[:, :-1])
    top2 = logits.topk(2, dim=-1).values
    assert float((top2[..., 0] - top2[..., 1]).min()) > 1e-3      # no step is a float-noise tie

    ours = decode_greedy(model, src, src_mask, max_length=NEW_TOKENS, bos_id=START, eos_id=EOS)
    assert ours.sequences == theirs[:, 1:].tolist()

    save_model(model, tmp_path / "back")              # T5's own ids, written without being asked
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    assert (back.config.pad_token_id, back.config.eos_token_id, back.config.decoder_start_token_id) == (0, 1, 0)
    again = back.generate(src, attention_mask=src_mask.long(), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                          do_sample=False, num_beams=1)
    assert torch.equal(again, theirs)


def write_config(directory, **changes):
    directory.mkdir()
    values = {**t5_config("relu", "tied", 1.0).to_dict(), **changes}
    (directory / "config.json").write_text(json.dumps(values))
    return directory


@pytest.mark.parametrize("changes,named", [
    ({"feed_forward_proj": "gated-foo"}, "feed_forward_proj"),
    ({"num_decoder_layers": 3}, "num_decoder_layers"),
    ({"d_kv": 16}, "d_kv"),
    ({"is_encoder_decoder": False}, "is_encoder_decoder"),
    ({"tie_word_embeddings": False, "scale_decoder_outputs": True}, "scale_decoder_outputs"),
])
def test_refuses_what_seqlab_does_not_implement(tmp_path, changes, named):
    with pytest.raises(ConfigError, match=named):
        load_model(write_config(tmp_path / "hf", **changes))


def test_tied_config_with_a_separate_head_loads_the_head(tmp_path):
    """transformers 5 writes tie_word_embeddings=true even for a head it untied in memory, and
    stores that head: it must load as the head, not the embedding."""
    torch.manual_seed(0)
    reference = transformers.T5ForConditionalGeneration(t5_config("gated-gelu", "untied", 1.0)).eval()
    reference.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32))
    reference.save_pretrained(tmp_path)
    model = load_model(tmp_path).model
    assert not model.config.tie_embeddings
    src = torch.randint(2, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    tgt = torch.randint(2, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(src, dtype=torch.bool)
    with torch.no_grad():
        expected = reference(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
        torch.testing.assert_close(model(src, mask, tgt), expected, atol=1e-4, rtol=0)


def test_model_options_and_export_refusals(tmp_path):
    sizes = {"d_model": 16, "n_heads": 2, "n_layers": 1}
    with pytest.raises(ConfigError, match="share_embeddings"):
        registry.build("transformer-encdec", "seq2seq", src_vocab_size=7, tgt_vocab_size=5, share_embeddings=True,
                       **sizes)
    with pytest.raises(ConfigError, match="scale_tied_head"):
        registry.build("transformer-encdec", "seq2seq", src_vocab_size=7, tgt_vocab_size=7, tie_embeddings=False,
                       scale_tied_head=True, **sizes)
    shared = registry.build("transformer-encdec", "seq2seq", src_vocab_size=7, tgt_vocab_size=7,
                            share_embeddings=True, **sizes)
    assert shared.decoder.embedding.weight is shared.encoder.embedding.weight is shared.head.weight
    # Scaled attention logits (the default), or two embedding tables, have no T5 form.
    scaled = registry.build("transformer-encdec", "seq2seq", src_vocab_size=7, tgt_vocab_size=7, **sizes)
    with pytest.raises(ConfigError, match="scale_attention"):
        save_model(scaled, tmp_path / "scaled")
    two_tables = registry.build("transformer-encdec", "seq2seq", src_vocab_size=7, tgt_vocab_size=7,
                                scale_attention=False, **sizes)
    with pytest.raises(ConfigError, match="share_embeddings"):
        save_model(two_tables, tmp_path / "two_tables")
    unscaled = registry.build("transformer-encdec", "seq2seq", src_vocab_size=7, tgt_vocab_size=7,
                              share_embeddings=True, scale_attention=False, activation="geglu", **sizes)
    with pytest.raises(ConfigError, match="geglu"):
        save_model(unscaled, tmp_path / "geglu")
