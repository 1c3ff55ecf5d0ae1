"""Hugging Face BERT (``BertForMaskedLM``) <-> seqlab's ``bert``: a tiny random transformers
model, imported, gives its logits (plain, padded, with token types); exported, transformers reads
it back to the same logits; options seqlab does not implement are refused by name."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import transformers

from seqlab import registry
from seqlab.errors import CheckpointError, ConfigError, DataError
from seqlab.interop import hf
from seqlab.interop.hf.architecture import HFConfig
from seqlab.interop.hf.bert import config_from_hf
from seqlab.tasks.mlm import IGNORED, MaskedLanguageModeling, model_mask_id

VOCAB, MASK_ID, LENGTH = 70, 4, 20
TOLERANCE = {"rtol": 0.0, "atol": 1e-4}          # float32 logits


def hf_config(**changes) -> transformers.BertConfig:
    values = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64, type_vocab_size=2, mask_token_id=MASK_ID)
    return transformers.BertConfig(**{**values, **changes})


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter moved off its initial value (LayerNorm gains off 1, biases off 0), so a
    tensor mapped to the wrong place changes the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A random transformers BertForMaskedLM, saved; and the seqlab model read from it."""
    torch.manual_seed(0)
    model = randomised(transformers.BertForMaskedLM(hf_config()), seed=1)
    directory = tmp_path_factory.mktemp("bert") / "hf"
    model.save_pretrained(directory)
    return model, directory, hf.load_model(directory)


def batch(seed: int, rows: int = 3) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, LENGTH), generator=torch.Generator().manual_seed(seed))


def test_import_gives_transformers_logits(reference):
    model, _, loaded = reference
    ours = loaded.model
    assert loaded.architecture.model_type == "bert" and ours.config.positions == "learned"
    assert ours.mask_id == MASK_ID and ours.encoder.embedding.num_embeddings == VOCAB  # [MASK] in the vocabulary
    assert ours.config.norm_eps == 1e-12 and ours.transform_norm.eps == 1e-12
    ids = batch(2)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), model(ids).logits, **TOLERANCE)


def test_the_norms_epsilon_is_read(tmp_path):
    """BERT's 1e-12 barely moves the logits; an epsilon that does shows it is read, not assumed."""
    torch.manual_seed(0)
    model = randomised(transformers.BertForMaskedLM(hf_config(layer_norm_eps=0.5)), seed=3)
    model.save_pretrained(tmp_path)
    ids = batch(4)
    with torch.no_grad():
        torch.testing.assert_close(hf.load_model(tmp_path).model(ids), model(ids).logits, **TOLERANCE)


def test_padded_batch_and_token_types_match_transformers(reference):
    model, _, loaded = reference
    ids = batch(3, rows=4)
    lengths = torch.tensor([LENGTH, 13, 7, 1])
    attention_mask = (torch.arange(LENGTH)[None, :] < lengths[:, None]).long()          # 1 real, 0 padding
    token_types = (torch.arange(LENGTH)[None, :] >= lengths[:, None] // 2).long() * attention_mask
    real = attention_mask.bool()
    with torch.no_grad():
        expected = model(ids, attention_mask=attention_mask).logits
        torch.testing.assert_close(loaded.model(ids, attention_mask.bool())[real], expected[real], **TOLERANCE)
        expected = model(ids, attention_mask=attention_mask, token_type_ids=token_types).logits
        ours = loaded.model(ids, attention_mask.bool(), token_type_ids=token_types)
        torch.testing.assert_close(ours[real], expected[real], **TOLERANCE)
        # The types matter: type 1 changes the logits (the comparison above is not vacuous).
        assert (ours[real] - loaded.model(ids, attention_mask.bool())[real]).abs().max() > 1e-2


def test_export_reads_back_in_transformers(reference, tmp_path):
    model, _, loaded = reference
    out = hf.save_model(loaded.model, tmp_path / "out")
    back, info = transformers.BertForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids = batch(4)
    token_types = torch.randint(0, 2, ids.shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(ids, token_type_ids=token_types).logits,
                                   model(ids, token_type_ids=token_types).logits, **TOLERANCE)
    assert json.loads((out / "config.json").read_text())["mask_token_id"] == MASK_ID


def test_pretraining_checkpoint_drops_pooler_and_next_sentence_head(tmp_path):
    torch.manual_seed(0)
    model = randomised(transformers.BertForPreTraining(hf_config()), seed=6)
    model.save_pretrained(tmp_path)
    ids = batch(7)
    with torch.no_grad():
        torch.testing.assert_close(hf.load_model(tmp_path).model(ids), model(ids).prediction_logits, **TOLERANCE)


@pytest.mark.parametrize(("key", "value"), [("position_embedding_type", "relative_key"), ("hidden_act", "gelu_new"),
                                            ("is_decoder", True), ("add_cross_attention", True),
                                            ("tie_word_embeddings", False)])
def test_unsupported_options_are_refused_by_name(reference, tmp_path, key, value):
    _, directory, _ = reference
    for path in directory.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(ConfigError, match=f"{key}={value!r}"):
        hf.load_model(tmp_path)


def test_mask_id_from_config_or_google_s_103():
    values = {"vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
              "intermediate_size": 64}
    assert config_from_hf(HFConfig(values, "bert"))["mask_id"] == 103
    assert config_from_hf(HFConfig({**values, "mask_token_id": 7}, "bert"))["mask_id"] == 7
    with pytest.raises(ConfigError, match="add mask_token_id"):
        config_from_hf(HFConfig({**values, "vocab_size": 50}, "bert"))
    with pytest.raises(ConfigError, match="mask_token_id=120"):
        config_from_hf(HFConfig({**values, "mask_token_id": 120}, "bert"))


def seqlab_bert(**changes) -> torch.nn.Module:
    """A seqlab-trained-style bert: [MASK] an extra row (mask_id none), torch's LayerNorm eps."""
    values = {"vocab_size": 30, "d_model": 16, "n_layers": 2, "n_heads": 2, "positions": "learned", "max_len": 32,
              "n_token_types": 2, "dropout": 0.0}
    torch.manual_seed(8)
    return randomised(registry.build("bert", "mlm", **{**values, **changes}), seed=9)


def test_extra_mask_row_exports_as_one_more_id(tmp_path):
    ours = seqlab_bert()
    assert ours.mask_id == 30 and ours.encoder.embedding.num_embeddings == 31
    out = hf.save_model(ours, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 31 and config["mask_token_id"] == 30 and config["layer_norm_eps"] == 1e-5
    back = transformers.BertForMaskedLM.from_pretrained(out).eval()
    ids = torch.randint(0, 31, (2, 12), generator=torch.Generator().manual_seed(10))
    ids[:, 3] = 30                                                                    # [MASK]
    with torch.no_grad():
        expected = ours(ids)
        torch.testing.assert_close(back(ids).logits, expected, **TOLERANCE)
        again = hf.load_model(out).model                        # now a vocabulary of 31 holding [MASK]
        assert again.mask_id == 30 and again.config.vocab_size == 31
        torch.testing.assert_close(again(ids), expected, **TOLERANCE)


@pytest.mark.parametrize(("changes", "named"), [({"positions": "rope"}, "positions='learned'"),
                                                ({"n_token_types": 0}, "n_token_types=0"),
                                                ({"norm_position": "pre"}, "norm_position='post'"),
                                                ({"activation": "relu"}, "activation='gelu'")])
def test_export_refuses_what_bert_cannot_express(tmp_path, changes, named):
    with pytest.raises(ConfigError, match=named):
        hf.save_model(seqlab_bert(**changes), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_only_the_masked_language_model_exports(tmp_path):
    classifier = registry.build("bert", "classify", vocab_size=30, n_classes=3, d_model=16, n_layers=1, n_heads=2,
                                positions="learned", n_token_types=2)
    with pytest.raises(ConfigError, match="only a bert for the mlm task"):
        hf.save_model(classifier, tmp_path / "out")


def test_bare_encoder_checkpoint_lacks_the_head(reference, tmp_path):
    model, _, _ = reference
    model.bert.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="cls.predictions"):
        hf.load_model(tmp_path)


def test_mlm_task_uses_the_model_s_own_mask_id(reference):
    _, _, loaded = reference
    task = MaskedLanguageModeling.__new__(MaskedLanguageModeling)
    task.tokenizer = SimpleNamespace(vocab_size=VOCAB)        # the loss reads only the vocabulary size
    assert model_mask_id(loaded.model, VOCAB) == MASK_ID and model_mask_id(torch.nn.Linear(1, 1), VOCAB) == VOCAB
    ids = batch(11, rows=2)
    targets = torch.full_like(ids, IGNORED)
    targets[:, 5] = ids[:, 5]
    drawn = ids.clone()
    drawn[:, 5] = VOCAB                                          # the task draws [MASK] as V
    given = ids.clone()
    given[:, 5] = MASK_ID
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(loaded.model(given)[:, 5], ids[:, 5])
        torch.testing.assert_close(task.loss(loaded.model, (drawn, targets)), expected, rtol=1e-6, atol=1e-7)


def test_token_types_without_a_table_are_refused():
    ours = seqlab_bert(n_token_types=0)
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(DataError, match="n_token_types=0"):
        ours(ids, token_type_ids=torch.zeros_like(ids))
