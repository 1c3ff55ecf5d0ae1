"""The classification task (ListOps and TSV data) and the recurrent classifiers registered for it."""

import dataclasses
import json
import random
from collections import Counter

import pytest
import torch
from torch.nn import functional as F

from seqlab import registry
from seqlab.contracts import Classifier
from seqlab.data.corpora import Corpus
from seqlab.errors import ConfigError, DataError
from seqlab.fields import field_docs
from seqlab.tasks.base import get_task
from seqlab.tasks.classification import Classification, ClassificationOptions, macro_f1
from seqlab.tasks.lm import LanguageModeling
from seqlab.training import TrainConfig, Trainer

TINY_LISTOPS = {"listops_train": 64, "listops_valid": 16, "listops_test": 16, "listops_min_length": 8,
                "listops_max_length": 40, "listops_max_depth": 4, "listops_max_args": 4}
WORDS = "the a dog bird sat ran on under mat tree big small red".split()


def listops_task(**options):
    return Classification.from_options(Classification.options({**TINY_LISTOPS, **options}))


def contains_cat(n: int, seed: int) -> list[str]:
    """label<TAB>text lines whose label says whether the text has the word "cat"."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 10))]
        if rng.random() < 0.5:
            words[rng.randrange(len(words))] = "cat"
        lines.append(f"{'yes' if 'cat' in words else 'no'}\t{' '.join(words)}")
    return lines


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def tsv_task(tmp_path, n=200, **options):
    path = write(tmp_path / "cats.tsv", contains_cat(n, 0))
    return Classification.from_options(ClassificationOptions(data=str(path), **options))


def tiny_model(task, name="lstm", **config):
    torch.manual_seed(0)
    return registry.build_for_task(name, task.model_defaults(), {"d_model": 16, **config}, task="classify")


def train(model, task, steps, batch_size=8, **options):
    config = TrainConfig(steps=steps, batch_size=batch_size, device="cpu", progress=False, eval_every=steps,
                         warmup_steps=min(10, steps), **options)
    return Trainer(model, task, config).fit()


# ---- the task end to end ----------------------------------------------------------------------

def test_listops_end_to_end():
    task = listops_task()
    assert get_task("classify") is Classification
    assert task.model_defaults() == {"vocab_size": 16, "n_classes": 10}
    model = tiny_model(task)
    result = train(model, task, steps=3)
    assert {"valid_loss", "valid_accuracy", "valid_macro_f1"} <= set(result.history[-1])
    metrics = task.evaluate(model, "test")
    assert set(metrics) == {"loss", "accuracy", "macro_f1", "majority_accuracy", "sequences",
                            "tokens_per_second", "sequences_per_second"}
    assert metrics["sequences"] == 16 and 0 <= metrics["accuracy"] <= 1
    label, probability = task.predict(model, ["[MAX 2 9 [MIN 4 7 ] 0 ]"])[0].split("\t")
    assert label in task.labels.names and 0 < float(probability) <= 1
    shown = task.showcase(model)
    assert "gold" in next(iter(shown.sections.values()))
    assert "ListOps" in task.describe() and "majority class" in task.describe()


def test_tsv_file_is_shuffled_and_split_by_fractions(tmp_path):
    task = tsv_task(tmp_path, n=200, split_fractions=(0.7, 0.1, 0.2), data_seed=3)
    assert [len(task.splits[s]) for s in ("train", "valid", "test")] == [140, 20, 40]
    assert task.labels.names == ["no", "yes"]
    again = tsv_task(tmp_path, n=200, split_fractions=(0.7, 0.1, 0.2), data_seed=3)
    assert task.splits == again.splits
    other = tsv_task(tmp_path, n=200, split_fractions=(0.7, 0.1, 0.2), data_seed=4)
    assert other.splits["train"] != task.splits["train"]
    lines = set(contains_cat(200, 0))
    assert all(f"{e.label}\t{e.text}" in lines for split in task.splits.values() for e in split)
    model = tiny_model(task)
    train(model, task, steps=2)
    assert task.evaluate(model, "valid")["sequences"] == 20


def test_directory_of_splits_and_tokenizer_from_training_alone(tmp_path):
    write(tmp_path / "train.tsv", ["a\tx y", "b\ty z", "a\tx x"])
    write(tmp_path / "dev.tsv", ["b\tz w"])
    write(tmp_path / "test.tsv", ["a\tnever seen words"])
    task = Classification.from_options(ClassificationOptions(data=str(tmp_path), tokenizer="word"))
    assert task.tokenizer.vocab_size == 4                                # <unk>, x, y, z
    assert task._encoded["test"].ids.tolist() == [0, 0, 0]               # all <unk>
    char = Classification.from_options(ClassificationOptions(data=str(tmp_path), tokenizer="char", max_length=2))
    assert char.tokenizer.vocab_size == 6                                # <unk>, "\n", " ", x, y, z
    assert char._encoded["train"].lengths.tolist() == [2, 2, 2]
    (tmp_path / "dev.tsv").rename(tmp_path / "sst_valid.tsv")
    assert len(Classification.from_options(ClassificationOptions(data=str(tmp_path))).splits["valid"]) == 1


def test_batches_are_padded_with_zeros_and_masked():
    task = listops_task()
    tokens, mask, labels = task.train_batch(6, torch.Generator().manual_seed(0))
    lengths = mask.sum(dim=1)
    assert tokens.shape == mask.shape == (6, int(lengths.max())) and labels.shape == (6,)
    assert mask.dtype == torch.bool and bool((tokens[~mask] == 0).all()) and bool((tokens[mask] > 0).all())
    assert torch.equal(mask, torch.arange(tokens.shape[1]) < lengths[:, None])             # left-aligned
    assert task.batch_tokens((tokens, mask, labels)) == int(lengths.sum())
    rows = [task.splits["train"][i] for i in range(3)]
    encoded = task.encode([e.text for e in rows])
    first, first_mask, _ = encoded.batch(torch.tensor([0]))
    assert first[0, :int(first_mask.sum())].tolist() == task.tokenizer.encode(rows[0].text)


def test_evaluate_by_hand_restores_the_mode_and_limits_batches():
    task = listops_task()
    model = tiny_model(task, pooling="mean")
    model.train()
    metrics = task.evaluate(model, "valid", details=True, batch_size=5)
    assert model.training
    model.eval()
    encoded = task._encoded["valid"]
    tokens, mask, labels = encoded.batch(torch.arange(len(encoded)))
    with torch.no_grad():
        logits = model(tokens, mask)
    predicted = model.predict(tokens, mask)
    assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert metrics["accuracy"] == pytest.approx((predicted == labels).float().mean().item())
    counts = Counter(example.label for example in task.splits["train"])
    majority = task.labels.majority
    assert counts[task.labels.names[majority]] == max(counts.values())
    assert metrics["majority_accuracy"] == pytest.approx((labels == majority).float().mean().item())
    names = task.labels.names
    errors = Counter((names[g], names[p]) for g, p in zip(labels.tolist(), predicted.tolist()) if g != p)
    assert all(errors[gold, guess] == count for gold, guess, count in metrics["confusions"])
    assert [count for _, _, count in metrics["confusions"]] == sorted(errors.values(), reverse=True)[:5]
    assert not model.training and task.evaluate(model, "valid")["sequences"] == 16 and not model.training
    assert task.evaluate(model, "valid", max_batches=2, batch_size=3)["sequences"] == 6
    with pytest.raises(ConfigError, match="unknown or empty split"):
        task.evaluate(model, "dev")


def test_macro_f1_by_hand():
    # gold 0 0 0 1 1 2, predicted 0 0 1 1 2 2: F1 = 0.8, 0.5, 2/3 for classes 0, 1, 2; class 3 absent.
    gold, predicted = torch.tensor([0, 0, 0, 1, 1, 2]), torch.tensor([0, 0, 1, 1, 2, 2])
    matrix = torch.bincount(gold * 4 + predicted, minlength=16).reshape(4, 4)
    assert macro_f1(matrix) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert macro_f1(torch.eye(3, dtype=torch.long) * 5) == 1.0


def test_spec_and_artifacts_round_trip(tmp_path):
    task = tsv_task(tmp_path)
    model = tiny_model(task)
    train(model, task, steps=3)
    saved = tmp_path / "checkpoint"
    saved.mkdir()
    for name, artifact in task.artifacts().items():
        artifact.save(saved / f"{name}.json")
    spec = json.loads(json.dumps(task.spec()))
    artifacts = Classification.load_artifacts(saved)
    rebuilt = Classification.from_spec(spec, artifacts)
    assert rebuilt.model_defaults() == task.model_defaults() and rebuilt.splits == task.splits
    rebuilt.check_model(model)
    assert rebuilt.evaluate(model, "test") | {"tokens_per_second": 0, "sequences_per_second": 0} == \
        task.evaluate(model, "test") | {"tokens_per_second": 0, "sequences_per_second": 0}
    bare = Classification.from_spec(spec, artifacts, with_data=False)
    texts = ["the cat sat", "a dog ran on the mat", "cat cat"]
    assert bare.predict(model, texts) == task.predict(model, texts)
    other = write(tmp_path / "other.tsv", ["yes\tthe cat", "no\tthe dog", "no\tnew words here"])
    elsewhere = Classification.from_spec(spec, artifacts, data=str(other))
    assert list(elsewhere.splits) == ["test"] and elsewhere.evaluate(model, "test")["sequences"] == 3
    write(other, ["maybe\tthe cat"])
    with pytest.raises(DataError, match="other.tsv:1: label 'maybe' does not occur in the training data"):
        Classification.from_spec(spec, artifacts, data=str(other))
    listops = listops_task()
    assert Classification.from_spec(json.loads(json.dumps(listops.spec())), listops.artifacts()).splits == listops.splits


def test_an_lstm_learns_whether_a_text_contains_a_word(tmp_path):
    task = tsv_task(tmp_path, n=600)
    model = tiny_model(task, d_model=32)
    train(model, task, steps=150, batch_size=32, lr=1e-2)
    metrics = task.evaluate(model, "test")
    assert metrics["accuracy"] > 0.9 and metrics["macro_f1"] > 0.9
    assert metrics["majority_accuracy"] < 0.7


# ---- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("lines, message", [
    (["yes\tthe cat", "no the dog"], "bad.tsv:2 has no tab"),
    (["yes\tthe cat", "", "\tthe dog"], "bad.tsv:3 has an empty label"),
    (["yes\tthe cat", "no\t  "], "bad.tsv:2 has an empty text"),
    ([], "has no examples"),
    (["", ""], "has no examples"),
    (["yes\ta", "yes\tb", "yes\tc", "yes\td", "yes\te", "yes\tf", "yes\tg", "yes\th", "yes\ti", "yes\tj"],
     "one label"),
    (["yes\ta", "no\tb"], "too few to split"),
])
def test_bad_tsv_files_are_data_errors(tmp_path, lines, message):
    path = write(tmp_path / "bad.tsv", lines)
    with pytest.raises(DataError, match=message):
        Classification.from_options(ClassificationOptions(data=str(path)))


def test_bad_directories_and_paths_are_data_errors(tmp_path):
    write(tmp_path / "train.tsv", ["a\tx y", "b\ty z"])
    write(tmp_path / "test.tsv", ["a\tx"])
    with pytest.raises(DataError, match="has no valid file"):
        Classification.from_options(ClassificationOptions(data=str(tmp_path)))
    write(tmp_path / "dev.tsv", ["c\tx"])
    with pytest.raises(DataError, match=r"dev.tsv:1: label 'c' does not occur in the training data"):
        Classification.from_options(ClassificationOptions(data=str(tmp_path)))
    write(tmp_path / "dev.tsv", ["a\tx"])
    write(tmp_path / "valid.tsv", ["a\tx"])
    with pytest.raises(DataError, match="2 candidates for the valid file"):
        Classification.from_options(ClassificationOptions(data=str(tmp_path)))
    (tmp_path / "valid.tsv").unlink()
    write(tmp_path / "test.tsv", [])
    with pytest.raises(DataError, match="test.tsv has no examples"):
        Classification.from_options(ClassificationOptions(data=str(tmp_path)))
    (tmp_path / "test.tsv").write_bytes(b"a\t\xff\xfe\n")
    with pytest.raises(DataError, match="cannot read"):
        Classification.from_options(ClassificationOptions(data=str(tmp_path)))
    with pytest.raises(DataError, match="is not listops, a TSV file or a directory"):
        Classification.from_options(ClassificationOptions(data=str(tmp_path / "absent.tsv")))


def test_predicting_an_empty_line_is_a_data_error():
    task = listops_task()
    with pytest.raises(DataError, match="input line 2 is empty"):
        task.predict(tiny_model(task), ["[MAX 1 2 ]", "  "])


@pytest.mark.parametrize("options, message", [
    ({"tokenizer": "char"}, "tokenizer is for TSV data"),
    ({"max_length": 50}, "max_length is for TSV data"),
    ({"vocab_size": 8}, "vocab_size is for TSV data"),
    ({"tokenizer_from": "tokenizer.json"}, "tokenizer_from is for TSV data"),
    ({"listops_train": 0}, "listops_train must be >= 1"),
    ({"listops_min_length": 2}, "listops_min_length"),
    ({"listops_max_depth": 1}, "listops_max_depth"),
    ({"split_fractions": (0.5, 0.5, 0.5)}, "split_fractions must be three positive fractions"),
    ({"data": "x.tsv", "max_length": 0}, "max_length must be >= 1"),
])
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        Classification.options(options)


def test_every_option_and_config_field_is_documented():
    for config_class in (ClassificationOptions, *(e.config_class for e in registry.entries("classify"))):
        fields = {f.name for f in dataclasses.fields(config_class)}
        assert set(field_docs(config_class)) == fields, config_class.__name__


# ---- the classifiers ----------------------------------------------------------------------------

CLASSIFIERS = [entry.name for entry in registry.entries("classify")]


def test_registered_classifiers():
    assert {"lstm", "gru", "elman"} <= set(CLASSIFIERS)
    for name in CLASSIFIERS:
        model = registry.build(name, task="classify", **Classification.example_model_defaults())
        assert isinstance(model, Classifier)
        tokens, mask = torch.randint(0, 16, (3, 5)), torch.ones(3, 5, dtype=torch.bool)
        assert model(tokens, mask).shape == (3, 10) and model.predict(tokens, mask).shape == (3,)
        assert model.loss(tokens, torch.tensor([0, 1, 2]), mask).shape == ()
    task = listops_task()
    with pytest.raises(ConfigError, match="vocab_size"):
        task.check_model(registry.build("lstm", task="classify", vocab_size=17, n_classes=10))


@pytest.mark.parametrize("name", ["lstm", "gru", "elman"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("pooling", ["last", "mean", "attention"])
def test_padding_does_not_change_a_sequences_logits(name, bidirectional, pooling):
    torch.manual_seed(0)
    model = registry.build(name, task="classify", vocab_size=12, n_classes=4, d_model=8, n_layers=2,
                           bidirectional=bidirectional, pooling=pooling).eval()
    lengths = torch.tensor([7, 3, 1, 5])
    mask = torch.arange(9) < lengths[:, None]
    tokens = torch.randint(1, 12, (4, 9)) * mask
    batched = model(tokens, mask)
    for row, length in enumerate(lengths.tolist()):
        alone = model(tokens[row:row + 1, :length], mask[row:row + 1, :length])
        torch.testing.assert_close(batched[row:row + 1], alone, rtol=1e-5, atol=1e-6)
    noisy = torch.where(mask, tokens, torch.randint(1, 12, tokens.shape))        # other tokens as padding
    torch.testing.assert_close(model(noisy, mask), batched, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru", "elman"])
def test_a_language_models_weights_load_into_a_classifier(cell):
    torch.manual_seed(0)
    language_model = registry.build(cell, task="lm", vocab_size=20, d_model=16, n_layers=2)
    classifier = registry.build(cell, task="classify", vocab_size=20, n_classes=3, d_model=16, n_layers=2)
    target = classifier.state_dict()
    matching = {name: tensor for name, tensor in language_model.state_dict().items()
                if name in target and target[name].shape == tensor.shape}
    encoder = {name for name in target if name.startswith(("embedding.", "recurrent."))}
    assert encoder and encoder <= set(matching)
    assert not any(name.startswith(("head.", "pooling.")) for name in matching)
    classifier.load_state_dict(matching, strict=False)
    tokens = torch.randint(0, 20, (2, 6))
    with torch.no_grad():
        states, _ = language_model.recurrent(language_model.embedding(tokens))
        torch.testing.assert_close(classifier.encode(tokens), states)


def test_fine_tuning_reads_tokens_with_the_language_models_tokenizer(tmp_path):
    # Pre-train on text, then classify with the language model's tokenizer, so that its embedding
    # rows mean the same tokens and load by name and shape (seqlab train --init-from RUN).
    text = "\n".join(line.split("\t")[1] for line in contains_cat(300, 1))
    lm_task = LanguageModeling(Corpus("cats", text, None), "word", context=8)
    lm_task.tokenizer.save(tmp_path / "tokenizer.json")
    task = tsv_task(tmp_path, tokenizer_from=str(tmp_path / "tokenizer.json"))
    assert task.tokenizer.to_json() == lm_task.tokenizer.to_json()
    sizes = {"d_model": 16, "n_layers": 1}
    language_model = registry.build_for_task("lstm", lm_task.model_defaults(), sizes, task="lm")
    classifier = registry.build_for_task("lstm", task.model_defaults(), sizes, task="classify")
    target = classifier.state_dict()
    loaded = {name for name, tensor in language_model.state_dict().items()
              if name in target and target[name].shape == tensor.shape}
    assert {"embedding.weight", "recurrent.module.weight_hh_l0"} <= loaded
    with pytest.raises(ConfigError, match="tokenizer_from brings its own vocabulary"):
        ClassificationOptions(data="x.tsv", tokenizer_from="tokenizer.json", vocab_size=10)


@pytest.mark.parametrize("command", ["train lstm", "compare"])
def test_the_command_line_offers_every_option(command, capsys):
    from seqlab.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([*command.split(), "--task", "classify", "--help"])
    shown = capsys.readouterr().out
    assert exit_.value.code == 0
    assert all(f"--{f.name.replace('_', '-')}" in shown for f in dataclasses.fields(ClassificationOptions))
