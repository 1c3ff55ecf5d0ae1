"""Sentence-per-line language modelling: KenLM's perplexity through `seqlab train` and `seqlab eval`,
the stream and its characters against a line-by-line construction, sentence windows, the loss
and metrics leaving out <s>, spec round trips, and the option errors."""

import json
import random

import kenlm
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.nn import functional as F

from seqlab import registry
from seqlab.classical.arpa import fit_sentences, write_arpa
from seqlab.classical.markov import MarkovChain, MarkovConfig
from seqlab.cli import main
from seqlab.data.batching import sentence_windows
from seqlab.data.corpora import Corpus, load_corpus
from seqlab.data.sentences import encode_sentences, parse_split, sentence_lines
from seqlab.data.tokenizers import train_tokenizer
from seqlab.errors import ConfigError, DataError
from seqlab.tasks.lm import LanguageModeling

from helpers import fails_cleanly

WORDS = "the a cat dog sat on mat ran fast slow big small".split()


def sentences(rng: random.Random, count: int, longest: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, longest))) for _ in range(count)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """train / valid / test files: words seen once, one-word sentences, and test words never seen."""
    rng = random.Random(0)
    texts = {
        "train": sentences(rng, 60, 9) + ["hapax", "once upon  a\ttime", "cat", "dog ran"],
        "valid": sentences(rng, 5, 6),
        "test": sentences(rng, 20, 8) + ["unseen words here", "the zebra sat", "dog", "cat cat cat"],
    }
    directory = tmp_path_factory.mktemp("sentences")
    for name, lines in texts.items():
        (directory / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return directory, texts


def kenlm_perplexity(arpa, lines: list[str]) -> tuple[float, int]:
    """KenLM's perplexity over ``lines``, and the tokens it counts (words and one </s> each)."""
    model = kenlm.Model(str(arpa))
    total = sum(model.score(line, bos=True, eos=True) for line in lines)
    tokens = sum(len(line.split()) + 1 for line in lines)
    return 10 ** (-total / tokens), tokens


def train_and_evaluate(capsys, train, valid, test, out, *settings: str) -> dict:
    """`seqlab train ngram --sentences --split none ...` then `seqlab eval RUN --data test`."""
    argv = ["train", "ngram", "--task", "lm", "--tokenizer", "word", "--sentences", "--split", "none",
            "--data", str(train), "--valid-data", str(valid), "--out", str(out), "--no-progress"]
    for setting in settings:
        argv += ["--set", setting]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(test)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("estimator", ["modified_kneser_ney", "kneser_ney", "absolute", "add_k"])
def test_eval_gives_kenlms_perplexity(estimator, files, tmp_path, capsys):
    directory, texts = files
    metrics = train_and_evaluate(capsys, directory / "train.txt", directory / "valid.txt", directory / "test.txt",
                                 tmp_path / "run", "order=3", f"estimator={estimator}")
    model, vocabulary = fit_sentences(texts["train"], order=3, estimator=estimator)
    write_arpa(model, vocabulary, tmp_path / "reference.arpa")
    perplexity, tokens = kenlm_perplexity(tmp_path / "reference.arpa", texts["test"])
    assert metrics["tokens"] == tokens
    assert metrics["perplexity"] == pytest.approx(perplexity, rel=1e-4)


def test_tinyshakespeare_eval_gives_kenlms_perplexity(shared_data, tmp_path, capsys):
    lines = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").split("\n")
    parts = {"train": lines[:5000], "test": lines[5000:5500], "valid": lines[5500:5600]}
    for name, part in parts.items():                 # blank lines (between speeches) included
        (tmp_path / f"{name}.txt").write_text("\n".join(part) + "\n")
    metrics = train_and_evaluate(capsys, tmp_path / "train.txt", tmp_path / "valid.txt", tmp_path / "test.txt",
                                 tmp_path / "run", "order=4")
    model, vocabulary = fit_sentences([line for line in parts["train"] if line.strip()], order=4)
    write_arpa(model, vocabulary, tmp_path / "reference.arpa")
    perplexity, tokens = kenlm_perplexity(tmp_path / "reference.arpa", [l for l in parts["test"] if l.strip()])
    assert metrics["tokens"] == tokens
    assert metrics["perplexity"] == pytest.approx(perplexity, rel=1e-4)


@pytest.fixture(scope="module")
def task(files) -> LanguageModeling:
    directory, _ = files
    return LanguageModeling(load_corpus(directory / "train.txt"), "word", context=16, split="none",
                            sentences=True, valid_corpus=load_corpus(directory / "valid.txt"))


def ngram(task, **config):
    return registry.build_for_task("ngram", task.model_defaults(), config, task="lm").fit(task)


def test_the_tasks_ngram_model_is_fit_sentences_model(task, files):
    # The word ids are the ARPA vocabulary's, <s> last: the tables are the same, entry for entry.
    expected, vocabulary = fit_sentences(files[1]["train"], order=3)
    assert task.tokenizer.vocab == [*vocabulary.words, "<s>"]
    assert task.model_defaults()["sentence_start_id"] == vocabulary.start_id
    model = ngram(task, order=3)
    for ours, theirs in zip(model.tables, expected.tables):
        assert torch.equal(ours.keys, theirs.keys)
        torch.testing.assert_close(ours.log_prob, theirs.log_prob, rtol=0, atol=0)
        torch.testing.assert_close(ours.log_backoff, theirs.log_backoff, rtol=0, atol=0)


@pytest.mark.parametrize("context", [128, 5, 4])
def test_ngram_evaluation_scores_each_sentence_from_its_own_start(files, context):
    # Windows of 5 or 4 tokens split every long sentence; an order-3 model still sees its 2
    # previous tokens, so every context gives the sum of the sentences' own log-probabilities.
    directory, texts = files
    task = LanguageModeling(load_corpus(directory / "train.txt"), "word", context=context, split="none",
                            sentences=True, valid_corpus=load_corpus(directory / "test.txt"))
    model = ngram(task, order=3)
    tokenizer = task.tokenizer
    start, end = tokenizer.marker_ids
    total = 0.0
    for line in texts["test"]:
        ids = torch.tensor([[start, *tokenizer.encode(line), end]])
        total -= model.log_prob(ids).item()
    metrics = task.evaluate(model, "test", batch_size=3)
    assert metrics["tokens"] == sum(len(line.split()) + 1 for line in texts["test"])
    assert metrics["loss"] * metrics["tokens"] == pytest.approx(total, rel=1e-6)
    assert metrics["characters"] == sum(len(line) + 1 for line in texts["test"])


def test_neural_evaluation_leaves_out_start_targets_and_padding(task):
    torch.manual_seed(0)
    model = registry.build("lstm", task, d_model=16, n_layers=1).eval()
    one = task.evaluate(model, "train", batch_size=1)
    packed = task.evaluate(model, "train", batch_size=7)
    assert one["tokens"] == packed["tokens"] == int((task.splits["train"].ids != task.start_id).sum())
    assert packed["loss"] == pytest.approx(one["loss"], rel=1e-5)


def test_the_training_loss_is_the_mean_over_targets_that_are_not_start(task):
    torch.manual_seed(0)
    model = registry.build("lstm", task, d_model=16, n_layers=1)
    inputs, targets = task.train_batch(6, torch.Generator().manual_seed(1))
    scored = targets != task.start_id
    assert not scored.all()                          # the windows do hold <s> targets
    expected = F.cross_entropy(model(inputs)[scored], targets[scored])
    torch.testing.assert_close(task.loss(model, (inputs, targets)), expected, rtol=1e-6, atol=1e-6)
    assert task.loss_items((inputs, targets)) == int(scored.sum())


def test_a_neural_sentence_run_trains_and_evaluates_from_the_cli(files, tmp_path, capsys):
    directory, texts = files
    assert main(["train", "lstm", "--tokenizer", "word", "--sentences", "--data", str(directory / "train.txt"),
                 "--split", "80/10/10", "--context", "8", "--set", "d_model=16", "--set", "n_layers=1",
                 "--steps", "2", "--eval-every", "2", "--no-progress", "--out", str(tmp_path / "lstm")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "lstm"), "--data", str(directory / "valid.txt")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["tokens"] == sum(len(line.split()) + 1 for line in texts["valid"])
    assert main(["generate", str(tmp_path / "lstm"), "--prompt", "the cat", "--max-new", "3", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("the cat")


def test_a_spec_rebuilds_the_task_and_eval_data_is_read_as_sentences(task, files, tmp_path):
    spec = json.loads(json.dumps(task.spec()))
    assert spec["sentences"] is True and spec["split"] == "none" and spec["valid_data"].endswith("valid.txt")
    rebuilt = LanguageModeling.from_spec(spec, task.artifacts())
    assert rebuilt.model_defaults() == task.model_defaults()
    for name, block in task.splits.items():
        assert torch.equal(rebuilt.splits[name].ids, block.ids)
    other = tmp_path / "other.txt"
    other.write_text("the cat sat\n\n  dog  \n")
    evaluated = LanguageModeling.from_spec(spec, task.artifacts(), data=str(other))
    start, end = task.tokenizer.marker_ids
    index = task.tokenizer.vocab.index
    assert evaluated.splits["test"].ids.tolist() == [start, index("the"), index("cat"), index("sat"), end,
                                                     start, index("dog"), end]
    predicting = LanguageModeling.from_spec(spec, task.artifacts(), with_data=False)
    assert predicting.model_defaults() == task.model_defaults() and not predicting.splits


def test_sentence_splits_are_by_lines(files):
    directory, texts = files
    task = LanguageModeling(load_corpus(directory / "train.txt"), "word", context=8, split="80/10/10",
                            sentences=True)
    start = task.start_id
    counts = {name: int((block.ids == start).sum()) for name, block in task.splits.items()}
    assert counts == {"train": 51, "valid": 6, "test": 7} and sum(counts.values()) == len(texts["train"])
    assert task.spec()["split"] == pytest.approx([0.8, 0.1, 0.1])


# ---- the stream ------------------------------------------------------------------------------

line_text = st.lists(st.tuples(st.sampled_from([" ", "  ", "\t", " \r"]), st.sampled_from(["a", "bb", "zz", "c"])),
                     max_size=5).map(lambda pairs: "".join(space + word for space, word in pairs))


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(line_text, max_size=8), trailing=st.sampled_from(["", " ", "\r"]))
def test_the_stream_equals_one_built_line_by_line(lines, trailing):
    tokenizer = train_tokenizer("word", "a bb a c", markers=True)
    start, end = tokenizer.marker_ids
    kept = sentence_lines("\n".join(line + trailing for line in lines))
    assert kept == [line + trailing for line in lines if line.split()]
    ids, char_lengths = encode_sentences(tokenizer, kept)
    expected_ids, expected_lengths = [], []
    for line in kept:
        words = line.split()
        expected_ids += [start, *tokenizer.encode(line), end]
        owned, position = [], 0
        for word in words:                              # a word owns the text up to its end
            stop = line.index(word, position) + len(word)
            owned.append(stop - position)
            position = stop
        expected_lengths += [0, *owned, len(line) - position + 1]
    assert ids.tolist() == expected_ids
    assert char_lengths.tolist() == expected_lengths


def test_literal_markers_are_refused_naming_the_line():
    with pytest.raises(DataError, match=r"line 3 of train.txt holds the word '<s>'"):
        sentence_lines("a b\n\nc <s> d\n", "train.txt")
    assert sentence_lines("a<s>b </s>x\n") == ["a<s>b </s>x"]         # words that only contain them
    tokenizer = train_tokenizer("word", "a b", markers=True)
    with pytest.raises(DataError, match="sentence 2 holds the word '</s>'"):
        encode_sentences(tokenizer, ["a", "b </s>"])
    with pytest.raises(ConfigError, match="word tokenizer with <s> and </s>"):
        encode_sentences(train_tokenizer("word", "a b"), ["a"])


@settings(max_examples=80, deadline=None)
@given(lengths=st.lists(st.integers(0, 12), min_size=1, max_size=10), context=st.integers(1, 9),
       batch=st.integers(1, 4))
def test_sentence_windows_score_every_token_but_start_once_from_its_sentence(lengths, context, batch):
    start = 0
    ids = torch.tensor([i for n in lengths for i in [start, *range(1, n + 1), 99]])
    sentence_start = torch.cummax(torch.where(ids == start, torch.arange(len(ids)), 0), 0).values
    seen = []
    for inputs, targets, target_index in sentence_windows(ids, start, batch, context):
        assert inputs.shape == targets.shape == target_index.shape and inputs.shape[1] <= context
        scored = targets != start
        assert torch.equal(targets[scored], ids[target_index[scored]])
        assert torch.equal(inputs[scored], ids[target_index[scored] - 1])
        rows, columns = scored.nonzero(as_tuple=True)
        window_start = target_index[rows, columns] - columns - 1
        position = target_index[rows, columns]
        # The window holds the target's whole sentence before it, or context // 2 tokens of it.
        assert ((window_start <= sentence_start[position]) | (position - window_start > context // 2)).all()
        seen += position.tolist()
    assert sorted(seen) == (ids != start).nonzero().squeeze(1).tolist()


# ---- the Markov chain ------------------------------------------------------------------------


def test_a_sentence_markov_chain_counts_each_sentence_apart():
    # Sentences "a b" and "b": <s> = 3, </s> = 0 (any id will do), a = 1, b = 2.
    chain = MarkovChain(MarkovConfig(vocab_size=4, order=1, add_k=0.0, sentence_start_id=3))
    chain.fit_stream(torch.tensor([3, 1, 2, 0, 3, 2, 0]))
    with torch.no_grad():
        probs = chain(torch.tensor([[3, 1, 2, 0]])).softmax(-1)[0]                 # (T, V)
    expected = torch.tensor([[0, 0.5, 0.5, 0],            # after <s>: a or b
                             [0, 0, 1, 0],                # after a: b
                             [1, 0, 0, 0],                # after b: </s>
                             [0.4, 0.2, 0.4, 0]])         # </s> never followed: order 0 (a, b, b, </s>, </s>)
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-6)
    assert chain.transition_matrix()[:, 3].eq(0).all()


# ---- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("split, fractions", [("90/5/5", (0.9, 0.05, 0.05)), ("0.8,0.1,0.1", (0.8, 0.1, 0.1)),
                                              ((0.7, 0.2, 0.1), (0.7, 0.2, 0.1)), ("None", None)])
def test_splits_parse(split, fractions):
    assert parse_split(split) == (fractions if fractions is None else pytest.approx(fractions))


@pytest.mark.parametrize("split", ["90/5", "90/5/5/0", "a/b/c", "50/30/30", "0/50/50", "", (0.5, 0.5, 0.5)])
def test_malformed_splits_are_refused(split):
    with pytest.raises(ConfigError, match="split must be 'none' or three positive shares"):
        parse_split(split)


@pytest.mark.parametrize("flags, message", [
    (["--split", "none"], "LanguageModelingOptions.split 'none' trains on the whole file"),
    (["--valid-data", "{tmp}/valid.txt"], "LanguageModelingOptions.valid_data is read only with split 'none'"),
    (["--split", "90/10"], "LanguageModelingOptions.split must be 'none' or three positive shares"),
    (["--sentences"], "LanguageModelingOptions.sentences needs tokenizer 'word', got 'char'"),
    (["--sentences", "--tokenizer", "bpe"], "sentences needs tokenizer 'word', got 'bpe'"),
    (["--split", "none", "--valid-data", "{tmp}/empty.txt"], "empty.txt' is empty"),
    (["--split", "none", "--valid-data", "{tmp}/missing.txt"], "missing.txt' does not exist"),
])
def test_bad_data_options_fail_with_one_line(flags, message, files, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n \n")
    argv = ["train", "ngram", "--data", str(files[0] / "train.txt"), "--out", str(tmp_path / "run"),
            *[flag.format(tmp=tmp_path) for flag in flags]]
    fails_cleanly(capsys, argv, message)


def test_the_python_api_refuses_the_same_combinations():
    corpus = Corpus("t", "a b\nc d\n" * 50, None)
    with pytest.raises(ConfigError, match="split 'none' trains on the whole file"):
        LanguageModeling(corpus, "word", context=4, split="none")
    with pytest.raises(ConfigError, match="valid_data is read only with split 'none'"):
        LanguageModeling(corpus, "word", context=4, valid_corpus=corpus)
    with pytest.raises(ConfigError, match="sentences needs tokenizer 'word'"):
        LanguageModeling(corpus, "unigram", context=4, sentences=True)
    with pytest.raises(ConfigError, match="word tokenizer with <s> and </s>"):
        LanguageModeling(corpus, train_tokenizer("word", corpus.text), context=4, sentences=True)
