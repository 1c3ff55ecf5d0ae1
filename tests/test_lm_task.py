import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from seqlab.data.batching import random_windows, sequential_windows
from seqlab.data.corpora import Corpus, builtin_corpus, load_corpus
from seqlab.errors import ConfigError, DataError
from seqlab.metrics.language import bits_per_character, language_metrics
from seqlab.tasks.lm import LanguageModeling

from helpers import tiny_lstm


def test_builtin_corpus_is_cpython_help_text():
    corpus = load_corpus()
    assert corpus.name == "pydoc-topics" and corpus.source is None
    assert 400_000 < len(corpus.text) < 600_000
    assert "assignment statement" in corpus.text.lower()


def test_splits_are_contiguous_blocks_in_order():
    text = builtin_corpus().text[:10_000] * 3                    # held-out characters all seen in training
    task = LanguageModeling(Corpus("t", text, None), "char", context=8, split=(0.8, 0.1, 0.1))
    decoded = {name: task.tokenizer.decode(block.ids.tolist()) for name, block in task.splits.items()}
    assert decoded["train"] + decoded["valid"] + decoded["test"] == text
    assert len(decoded["train"]) == 24_000 and len(decoded["valid"]) == 3_000


def test_tokenizer_is_trained_on_the_training_block_only():
    text = "ab" * 500 + "xyz" * 100
    task = LanguageModeling(Corpus("t", text, None), "char", context=4, split=(0.7, 0.15, 0.15))
    assert task.vocab_size == 3                                   # <unk>, a, b
    assert (task.splits["test"].ids == task.tokenizer.unk_id).all()


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 60), context=st.integers(1, 9), batch=st.integers(1, 5))
def test_sequential_windows_predict_every_token_but_the_first_once(n, context, batch):
    ids = torch.arange(n) * 7
    seen = []
    for inputs, targets, target_index in sequential_windows(ids, batch, context):
        assert inputs.shape == targets.shape and inputs.shape[1] <= context
        assert torch.equal(targets, ids[target_index])
        assert torch.equal(inputs, ids[target_index - 1])
        seen += target_index.flatten().tolist()
    assert sorted(seen) == list(range(1, n))


def test_random_windows_are_shifted_pairs():
    ids = torch.arange(100)
    inputs, targets = random_windows(ids, 6, 10, torch.Generator().manual_seed(0))
    assert inputs.shape == (6, 10)
    assert torch.equal(targets, inputs + 1)


def test_bits_per_character_under_a_subword_tokenizer_counts_characters():
    text = builtin_corpus().text[:40_000]
    task = LanguageModeling(Corpus("t", text, None), "bpe", context=32, vocab_size=300)
    model = tiny_lstm(task)
    metrics = task.evaluate(model, "valid")
    block = task.splits["valid"]
    # Every token but the first is predicted, so the characters counted are the block's minus
    # those of its first token.
    assert metrics["characters"] == block.char_lengths.sum().item() - block.char_lengths[0].item()
    assert metrics["tokens"] == len(block.ids) - 1
    assert metrics["bpc"] == pytest.approx(metrics["loss"] * metrics["tokens"] / metrics["characters"] / math.log(2))
    assert metrics["characters"] > 1.2 * metrics["tokens"]       # subwords span several characters


def test_evaluation_matches_a_direct_computation():
    text = builtin_corpus().text[:20_000]
    task = LanguageModeling(Corpus("t", text, None), "char", context=16)
    model = tiny_lstm(task).eval()
    ids = task.splits["test"].ids
    n_windows = (len(ids) - 1) // 16
    with torch.no_grad():
        total = 0.0
        for w in range(n_windows + 1):
            window = ids[w * 16: min((w + 1) * 16 + 1, len(ids))]
            if len(window) > 1:
                total += -model.log_prob(window[None]).item()
    metrics = task.evaluate(model, "test", batch_size=7)
    assert metrics["loss"] == pytest.approx(total / (len(ids) - 1), rel=1e-5)
    assert metrics["bpc"] == pytest.approx(total / (len(ids) - 1) / math.log(2), rel=1e-5)


def test_metrics():
    metrics = language_metrics(total_nll=10 * math.log(4), n_tokens=10, n_characters=20)
    assert metrics["perplexity"] == pytest.approx(4.0)
    assert metrics["bpc"] == pytest.approx(1.0)
    assert bits_per_character(math.log(2), 1) == pytest.approx(1.0)


def test_bad_task_options():
    corpus = Corpus("t", "abc" * 100, None)
    with pytest.raises(DataError, match="needs at least 65"):
        LanguageModeling(corpus, "char", context=64)
    with pytest.raises(ConfigError, match="split"):
        LanguageModeling(corpus, "char", context=4, split=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="split must be 'none' or three positive shares"):
        LanguageModeling(corpus, "char", context=4, split="90/10")
    with pytest.raises(ConfigError, match="context"):
        LanguageModeling(corpus, "char", context=0)
    with pytest.raises(ConfigError, match="unknown split"):
        LanguageModeling(corpus, "char", context=4).evaluate(None, "dev")


def test_split_none_trains_on_the_whole_file_and_tests_on_the_validation_text(tmp_path, capsys):
    import json

    from seqlab.cli import main

    text = builtin_corpus().text[:3_000]
    valid = builtin_corpus().text[3_000:3_400]
    task = LanguageModeling(Corpus("t", text, None), "char", context=8, split="none",
                            valid_corpus=Corpus("v", valid, None))
    assert task.tokenizer.decode(task.splits["train"].ids.tolist()) == text
    assert task.tokenizer.decode(task.splits["valid"].ids.tolist()) == valid
    assert task.splits["test"] is task.splits["valid"]
    (tmp_path / "train.txt").write_text(text)
    (tmp_path / "valid.txt").write_text(valid)
    argv = ["train", "ngram", "--data", str(tmp_path / "train.txt"), "--split", "none", "--valid-data",
            str(tmp_path / "valid.txt"), "--set", "order=3", "--context", "16", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run")]) == 0                   # the test split: the validation text
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["characters"] == len(valid) - 1
    from seqlab.checkpoint import load_checkpoint

    rebuilt = load_checkpoint(tmp_path / "run").task()
    assert rebuilt.split_fractions is None and rebuilt.train_tokens == len(text)
    assert rebuilt.spec()["valid_data"].endswith("valid.txt")


def test_a_split_string_divides_characters_as_the_fractions_do():
    text = builtin_corpus().text[:10_000] * 3
    by_string = LanguageModeling(Corpus("t", text, None), "char", context=8, split="80/10/10")
    by_tuple = LanguageModeling(Corpus("t", text, None), "char", context=8, split=(0.8, 0.1, 0.1))
    for name in ("train", "valid", "test"):
        assert torch.equal(by_string.splits[name].ids, by_tuple.splits[name].ids)
