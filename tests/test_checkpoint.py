import json

import pytest
import torch

from seqlab import registry
from seqlab.checkpoint import (
    REQUIRED_FILES, WEIGHTS_FILE, check_output_directory, load_checkpoint, save_checkpoint,
)
from seqlab.data.tokenizers import train_tokenizer
from seqlab.errors import CheckpointError, ConfigError


@pytest.fixture
def saved(tmp_path):
    tokenizer = train_tokenizer("char", "hello world")
    torch.manual_seed(0)
    model = registry.build("lstm", vocab_size=tokenizer.vocab_size, d_model=8, n_layers=1)
    save_checkpoint(tmp_path / "run", model, tokenizer, info={"note": "first"})
    return tmp_path / "run", model, tokenizer


def test_a_failed_save_leaves_the_previous_checkpoint_whole(saved, monkeypatch):
    directory, model, tokenizer = saved
    with torch.no_grad():
        next(model.parameters()).add_(1.0)

    def crash(path):
        raise OSError("disk full")

    monkeypatch.setattr(tokenizer, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(directory, model, tokenizer, info={"note": "second"})
    loaded = load_checkpoint(directory)
    assert loaded.info["note"] == "first"
    assert not torch.equal(next(loaded.model.parameters()), next(model.parameters()))
    assert sorted(p.name for p in directory.parent.iterdir()) == ["run"]     # no staging left over


def test_a_second_save_replaces_the_first(saved):
    directory, model, tokenizer = saved
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_checkpoint(directory, model, tokenizer, info={"note": "second"})
    loaded = load_checkpoint(directory)
    assert loaded.info["note"] == "second"
    assert torch.equal(next(loaded.model.parameters()), next(model.parameters()))
    assert sorted(p.name for p in directory.parent.iterdir()) == ["run"]


@pytest.mark.parametrize("missing", REQUIRED_FILES)
def test_a_missing_file_is_named(saved, missing):
    directory = saved[0]
    (directory / missing).unlink()
    with pytest.raises(CheckpointError, match=f"missing {missing}"):
        load_checkpoint(directory)


def test_corrupt_weights_are_reported(saved):
    directory = saved[0]
    data = (directory / WEIGHTS_FILE).read_bytes()
    (directory / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(directory)
    (directory / WEIGHTS_FILE).write_bytes(b"\x07" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(directory)


def test_weights_that_do_not_fit_the_config_are_reported(saved):
    directory = saved[0]
    info = json.loads((directory / "config.json").read_text())
    info["config"]["d_model"] = 16
    (directory / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(directory)


def test_a_config_naming_an_unknown_model_is_reported(saved):
    directory = saved[0]
    info = json.loads((directory / "config.json").read_text())
    info["model"] = "no-such-model"
    (directory / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="unknown model 'no-such-model'"):
        load_checkpoint(directory)


def test_invalid_config_json_is_reported(saved):
    directory = saved[0]
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(directory)


def test_output_directory_rules(saved, tmp_path):
    run = saved[0]
    check_output_directory(tmp_path / "new", resume=False, overwrite=False)
    (tmp_path / "empty").mkdir()
    check_output_directory(tmp_path / "empty", resume=False, overwrite=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a seqlab run"):
        check_output_directory(other, resume=False, overwrite=True)
    with pytest.raises(ConfigError, match="--resume"):
        check_output_directory(run, resume=False, overwrite=False)
    check_output_directory(run, resume=False, overwrite=True)
    with pytest.raises(CheckpointError, match="not a seqlab run"):
        check_output_directory(other, resume=True, overwrite=False)
