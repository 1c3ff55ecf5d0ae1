"""HF checkpoint directories: bad input refused with one-line SeqlabErrors naming the culprit,
and the layouts that must load (sharded by seqlab or by transformers, fp16/bf16, bare backbones)."""

import copy
import json
import shutil

import pytest
import safetensors.torch
import torch
import transformers

from seqlab.errors import CheckpointError, ConfigError, SeqlabError
from seqlab.interop.hf import ARCHITECTURES, load_model, save_model

VOCAB = 61


def gpt2_config(**overrides):
    values = dict(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0,
                  tie_word_embeddings=True)
    return transformers.GPT2Config(**{**values, **overrides})


def llama_config(**overrides):
    values = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    return transformers.LlamaConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny random GPT-2 (tied head) and Llama (untied), saved by transformers, with the
    original modules: {"gpt2": (directory, model), "llama": (directory, model)}."""
    torch.manual_seed(0)
    made = {}
    for name, model in (("gpt2", transformers.GPT2LMHeadModel(gpt2_config())),
                        ("llama", transformers.LlamaForCausalLM(llama_config()))):
        directory = tmp_path_factory.mktemp(name)
        model.eval().save_pretrained(directory)
        made[name] = (directory, model)
    return made


@pytest.fixture
def tokens():
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))


def copy_of(checkpoints, name, tmp_path):
    return shutil.copytree(checkpoints[name][0], tmp_path / name)


def edit_json(path, **changes):
    values = json.loads(path.read_text())
    values.update(changes)
    path.write_text(json.dumps(values))


def refused(error_class, match, directory, **options):
    """load_model(directory) raises ``error_class`` matching ``match``, as one line."""
    with pytest.raises(error_class, match=match) as raised:
        load_model(directory, **options)
    assert isinstance(raised.value, SeqlabError) and "\n" not in str(raised.value)
    return str(raised.value)


def assert_same_logits(loaded, reference, tokens, atol=1e-5):
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(tokens), reference(tokens).logits, rtol=1e-4, atol=atol)


# Missing or refused files


def test_a_directory_without_config_json(checkpoints, tmp_path):
    directory = copy_of(checkpoints, "gpt2", tmp_path)
    (directory / "config.json").unlink()
    refused(CheckpointError, "has no config.json", directory)
    refused(CheckpointError, "is not a directory", tmp_path / "absent")


def test_a_config_json_that_is_not_json(checkpoints, tmp_path):
    directory = copy_of(checkpoints, "gpt2", tmp_path)
    (directory / "config.json").write_text('{"model_type": "gpt2",')
    refused(CheckpointError, "config.json.*not valid JSON", directory)


def test_a_directory_without_weights(checkpoints, tmp_path):
    directory = copy_of(checkpoints, "gpt2", tmp_path)
    (directory / "model.safetensors").unlink()
    refused(CheckpointError, "has no weights: expected model.safetensors", directory)


def test_pickled_pytorch_weights_are_refused_saying_why(checkpoints, tmp_path):
    directory = copy_of(checkpoints, "gpt2", tmp_path)
    torch.save(checkpoints["gpt2"][1].state_dict(), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    refused(CheckpointError, r"pickled PyTorch weights \(pytorch_model.bin\).*convert them to model.safetensors",
            directory)


def test_a_damaged_safetensors_file(checkpoints, tmp_path):
    directory = copy_of(checkpoints, "gpt2", tmp_path)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    refused(CheckpointError, "not a readable safetensors file", directory)


# Configs seqlab does not implement


def test_an_unsupported_model_type_names_the_supported_ones(checkpoints, tmp_path):
    directory = copy_of(checkpoints, "gpt2", tmp_path)
    edit_json(directory / "config.json", model_type="bloom")
    message = refused(ConfigError, "'bloom'", directory)
    assert all(model_type in message for model_type in ARCHITECTURES)
    assert {"gpt2", "llama"} <= set(ARCHITECTURES)


@pytest.mark.parametrize("key", ["rope_scaling", "rope_parameters"])
def test_llama_rope_scaling_is_refused_by_name(checkpoints, tmp_path, key):
    directory = copy_of(checkpoints, "llama", tmp_path)
    scaling = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 10000.0}
    edit_json(directory / "config.json", **{key: scaling})
    refused(ConfigError, "rope scaling 'yarn'", directory)


def test_llama_default_rope_parameters_load(checkpoints, tmp_path, tokens):
    directory = copy_of(checkpoints, "llama", tmp_path)
    edit_json(directory / "config.json", rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
              rope_scaling=None)
    assert_same_logits(load_model(directory), checkpoints["llama"][1], tokens)


# Weights that do not match the config


@pytest.mark.parametrize(("name", "change", "tensor"), [
    ("gpt2", {"vocab_size": VOCAB + 1}, "transformer.wte.weight"),
    ("gpt2", {"n_inner": 64}, "transformer.h.0.mlp.c_fc.weight"),
    ("gpt2", {"n_positions": 32}, "transformer.wpe.weight"),
    ("llama", {"intermediate_size": 40}, "model.layers.0.mlp.gate_proj.weight"),
    ("llama", {"num_key_value_heads": 4}, "model.layers.0.self_attn.k_proj.weight"),
    ("llama", {"vocab_size": VOCAB - 1}, "model.embed_tokens.weight"),
])
def test_a_tensor_whose_shape_disagrees_with_config_json(checkpoints, tmp_path, name, change, tensor):
    directory = copy_of(checkpoints, name, tmp_path)
    edit_json(directory / "config.json", **change)
    refused(CheckpointError, f"tensor '{tensor}' has shape .* but config.json implies", directory)


def test_more_layers_in_config_than_in_the_weights_names_the_missing_tensor(checkpoints, tmp_path):
    directory = copy_of(checkpoints, "gpt2", tmp_path)
    edit_json(directory / "config.json", n_layer=3)
    refused(CheckpointError, r"has no tensor 'transformer\.h\.2\.", directory)


def test_a_missing_tensor_is_named(checkpoints, tmp_path):
    directory = copy_of(checkpoints, "llama", tmp_path)
    tensors = safetensors.torch.load_file(directory / "model.safetensors")
    del tensors["model.layers.1.post_attention_layernorm.weight"]
    safetensors.torch.save_file(tensors, directory / "model.safetensors")
    refused(CheckpointError, "has no tensor 'model.layers.1.post_attention_layernorm.weight'", directory)


def test_an_unexpected_tensor_is_refused(checkpoints, tmp_path):
    directory = copy_of(checkpoints, "gpt2", tmp_path)
    tensors = safetensors.torch.load_file(directory / "model.safetensors")
    tensors["transformer.h.0.attn.q_norm.weight"] = torch.ones(32)
    safetensors.torch.save_file(tensors, directory / "model.safetensors")
    refused(CheckpointError, r"tensors that its config.json does not account for \(transformer.h.0.attn.q_norm",
            directory)


# Sharded checkpoints


def test_save_model_shards_and_load_model_reads_them_back(checkpoints, tmp_path, tokens):
    original = load_model(checkpoints["llama"][0])
    max_shard_bytes = 20_000
    directory = save_model(original.model, tmp_path / "sharded", max_shard_bytes=max_shard_bytes)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    shards = sorted(path.name for path in directory.glob("model-*.safetensors"))
    assert len(shards) >= 3 and not (directory / "model.safetensors").exists()
    assert sorted(set(index["weight_map"].values())) == shards
    for shard in shards:
        stored = safetensors.torch.load_file(directory / shard)
        assert len(stored) == 1 or sum(t.numel() * t.element_size() for t in stored.values()) <= max_shard_bytes
    assert index["metadata"]["total_size"] == sum(p.numel() * p.element_size() for p in original.model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(load_model(directory).model(tokens), original.model(tokens), rtol=0, atol=0)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    assert_same_logits(original, reloaded, tokens)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_transformers_sharded_save_loads(checkpoints, tmp_path, tokens, name):
    reference = checkpoints[name][1]
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) >= 2
    assert_same_logits(load_model(tmp_path / "sharded"), reference, tokens)


def test_an_index_naming_a_missing_shard(checkpoints, tmp_path):
    original = load_model(checkpoints["gpt2"][0])
    directory = save_model(original.model, tmp_path / "sharded", max_shard_bytes=20_000)
    missing = sorted(directory.glob("model-*.safetensors"))[1]
    missing.unlink()
    refused(CheckpointError, f"names shard '{missing.name}', which is not in the directory", directory)


def test_an_index_listing_a_tensor_that_no_shard_holds(checkpoints, tmp_path):
    original = load_model(checkpoints["gpt2"][0])
    directory = save_model(original.model, tmp_path / "sharded", max_shard_bytes=20_000)
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"]["transformer.h.0.attn.extra.weight"] = shard
    index_path.write_text(json.dumps(index))
    refused(CheckpointError, f"lists 'transformer.h.0.attn.extra.weight' in '{shard}', but that shard does not "
            "hold it", directory)


def test_an_index_that_misplaces_a_tensor(checkpoints, tmp_path):
    original = load_model(checkpoints["gpt2"][0])
    directory = save_model(original.model, tmp_path / "sharded", max_shard_bytes=20_000)
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first, last = sorted(set(index["weight_map"].values()))[0], sorted(set(index["weight_map"].values()))[-1]
    moved = next(name for name, shard in index["weight_map"].items() if shard == first)
    index["weight_map"][moved] = last
    index_path.write_text(json.dumps(index))
    refused(CheckpointError, f"'{moved}'", directory)


# Dtypes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_half_precision_checkpoints_load_in_their_dtype_or_cast(checkpoints, tmp_path, tokens, name, dtype):
    half = copy.deepcopy(checkpoints[name][1]).to(dtype)
    half.save_pretrained(tmp_path / "half")
    stored = {key: value.float() for key, value in half.state_dict().items()}
    as_stored = load_model(tmp_path / "half")
    assert {p.dtype for p in as_stored.model.parameters()} == {dtype}
    as_float = load_model(tmp_path / "half", dtype="float32")
    assert {p.dtype for p in as_float.model.parameters()} == {torch.float32}
    embedding = "transformer.wte.weight" if name == "gpt2" else "model.embed_tokens.weight"
    assert torch.equal(as_float.model.token_embedding.weight, stored[embedding])   # the stored values, cast exactly
    reference = type(checkpoints[name][1])(checkpoints[name][1].config).eval()
    reference.load_state_dict(stored)                                            # the half weights, in float32
    if name == "gpt2":
        reference.tie_weights()
    assert_same_logits(as_float, reference, tokens)


# Writing


def test_save_model_refuses_a_non_empty_directory_and_changes_nothing(checkpoints, tmp_path):
    model = load_model(checkpoints["gpt2"][0]).model
    target = tmp_path / "existing"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    (target / "config.json").write_text("{}")
    before = sorted((path.name, path.read_bytes()) for path in target.iterdir())
    with pytest.raises(ConfigError, match="exists and is not empty") as raised:
        save_model(model, target)
    assert "\n" not in str(raised.value)
    assert sorted((path.name, path.read_bytes()) for path in target.iterdir()) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["existing"]      # no staging directory left
    (tmp_path / "empty").mkdir()
    save_model(model, tmp_path / "empty")                                         # an empty one is fine
    assert (tmp_path / "empty" / "model.safetensors").is_file()


# Bare backbones (no head class)


def test_a_bare_gpt2_backbone_loads_with_its_tied_head(tmp_path, tokens):
    torch.manual_seed(2)
    backbone = transformers.GPT2Model(gpt2_config()).eval()
    backbone.save_pretrained(tmp_path / "bare")
    assert not any(name.startswith("transformer.") for name in
                   safetensors.torch.load_file(tmp_path / "bare" / "model.safetensors"))
    reference = transformers.GPT2LMHeadModel(gpt2_config()).eval()
    reference.transformer.load_state_dict(backbone.state_dict())
    reference.tie_weights()
    assert_same_logits(load_model(tmp_path / "bare"), reference, tokens)


def test_a_bare_llama_backbone_loads_tied_and_is_refused_untied(tmp_path, tokens):
    torch.manual_seed(3)
    backbone = transformers.LlamaModel(llama_config(tie_word_embeddings=True)).eval()
    backbone.save_pretrained(tmp_path / "tied")
    reference = transformers.LlamaForCausalLM(llama_config(tie_word_embeddings=True)).eval()
    reference.model.load_state_dict(backbone.state_dict())
    reference.tie_weights()
    assert_same_logits(load_model(tmp_path / "tied"), reference, tokens)
    transformers.LlamaModel(llama_config()).save_pretrained(tmp_path / "untied")
    refused(CheckpointError, "has no tensor 'lm_head.weight'", tmp_path / "untied")
