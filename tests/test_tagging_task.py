"""The tagging task: CoNLL-U reading and its errors, vocabulary, batches, metrics."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqlab.data.conll import TaggedSentence, find_conllu_files, read_conllu
from seqlab.errors import DataError
from seqlab.metrics.tagging import confusion_matrix, confusion_summary
from seqlab.tasks.tagging import MAX_WORD_CHARACTERS, PAD, UNK, Tagging, TaggingVocabulary

CONLLU = """# sent_id = 1
# text = I can't go.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tcan't\t_\t_\t_\t_\t_\t_\t_\t_
2\tca\tcan\tAUX\tMD\t_\t3\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
4\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_
4.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t4:conj\t_
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = 2
1\tGo\tgo\tVERB\tVB\t_\t0\troot\t_\t_
2\t!\t!\tPUNCT\t.\t_\t1\tpunct\t_\t_
"""


def line(*fields):
    return "\t".join(fields)


def test_an_empty_node_before_the_first_word_is_accepted(tmp_path):
    # CoNLL-U allows empty-node IDs 0.N (UD English GUM has them); they used to be refused.
    path = tmp_path / "x-ud-test.conllu"
    path.write_text("\n".join([line("0.1", "_", "_", "_", "_", "_", "_", "_", "0:root", "_"),
                               line("1", "Hi", "hi", "INTJ", "UH", "_", "0", "root", "0:root", "_"),
                               line("1.1", "_", "_", "_", "_", "_", "_", "_", "1:dep", "_")]) + "\n\n")
    assert read_conllu(path) == [TaggedSentence(("Hi",), ("INTJ",))]


@pytest.mark.parametrize("bad_id", ["0", "01", "1.0", "0-1", "2-", "1.01", ".1"])
def test_ids_the_specification_does_not_allow_are_refused(tmp_path, bad_id):
    path = tmp_path / "x-ud-test.conllu"
    path.write_text(line(bad_id, "Hi", "hi", "INTJ", "UH", "_", "0", "root", "_", "_") + "\n\n")
    with pytest.raises(DataError, match="is not a CoNLL-U token ID"):
        read_conllu(path)


def test_read_conllu_skips_multiword_tokens_and_empty_nodes(tmp_path):
    path = tmp_path / "x-ud-train.conllu"
    path.write_text(CONLLU)
    upos = read_conllu(path)
    assert upos == [TaggedSentence(("I", "ca", "n't", "go", "."), ("PRON", "AUX", "PART", "VERB", "PUNCT")),
                    TaggedSentence(("Go", "!"), ("VERB", "PUNCT"))]
    assert read_conllu(path, "xpos")[0].tags == ("PRP", "MD", "RB", "VB", ".")


@pytest.mark.parametrize("bad_line, message", [
    (line("1", "The", "the", "DET"), "needs 10 tab-separated fields, found 4"),
    (line("x", "The", "the", "DET", "DT", "_", "0", "root", "_", "_"), "'x' is not a CoNLL-U token ID"),
    (line("1", "The", "the", "_", "DT", "_", "0", "root", "_", "_"), "word 'The' has no UPOS tag"),
    (line("1", "", "the", "DET", "DT", "_", "0", "root", "_", "_"), "the word form is empty"),
])
def test_malformed_lines_name_the_line(tmp_path, bad_line, message):
    path = tmp_path / "bad.conllu"
    path.write_text(CONLLU + "\n" + bad_line + "\n")
    with pytest.raises(DataError, match=message) as error:
        read_conllu(path)
    assert f"{path}:15:" in str(error.value)


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_conllu(tmp_path / "missing.conllu")
    (tmp_path / "empty.conllu").write_text("# only a comment\n\n")
    with pytest.raises(DataError, match="holds no sentences"):
        read_conllu(tmp_path / "empty.conllu")
    (tmp_path / "x-ud-train.conllu").write_text(CONLLU)
    with pytest.raises(DataError, match=r"needs exactly one \*dev.conllu file, found 0"):
        find_conllu_files(tmp_path)
    with pytest.raises(DataError, match="is not a directory"):
        find_conllu_files(tmp_path / "x-ud-train.conllu")


def sentence(text: str) -> TaggedSentence:
    """'the/D cat/N' -> words and tags."""
    words, tags = zip(*(pair.split("/") for pair in text.split()))
    return TaggedSentence(words, tags)


@pytest.fixture
def task():
    train = [sentence("the/D cat/N sat/V"), sentence("a/D dog/N ran/V far/A"), sentence("the/D dog/N")]
    valid = [sentence("a/D cat/N")]
    test = [sentence("the/D bird/N flew/V"), sentence("a/D cat/N ran/V")]
    return Tagging({"train": train, "valid": valid, "test": test})


class Oracle(torch.nn.Module):
    """Tags from a dict of word -> tag id, with a fixed guess for other words."""

    def __init__(self, task, table, guess):
        super().__init__()
        self.table, self.guess = table, guess

    def tag(self, batch):
        return torch.tensor([[self.table.get(word, self.guess) for word in words] + [0] * (batch.mask.shape[1] - len(words))
                             for words in batch.words])

    def loss(self, batch):
        """A made-up loss: 0.25 per word, so the mean per word is 0.25 however it is batched."""
        return torch.tensor(0.25)


def test_vocabulary_comes_from_training_only(task):
    vocabulary = task.vocabulary
    assert vocabulary.words[:2] == ["<pad>", "<unk>"] and "bird" not in vocabulary.words
    assert set(vocabulary.tags) == {"D", "N", "V", "A"}
    assert task.model_defaults() == {"n_words": 2 + 7, "n_characters": 2 + len(set("thecatsadogranfr")),
                                     "n_tags": 4}
    batch = task.batch(task.splits["test"])
    assert batch.word_ids.shape == (2, 3) and batch.mask.tolist() == [[True] * 3] * 2
    assert batch.word_ids[0, 1] == UNK and batch.word_ids[0, 2] == UNK and batch.word_ids[1, 1] != UNK
    assert task.unseen_words("test") == 2


def test_padding_and_characters(task):
    batch = task.batch([["the", "cat"], ["dog"], ["x" * 30 + "abc"]])
    assert batch.mask.tolist() == [[True, True], [True, False], [True, False]]
    assert batch.word_ids[1, 1] == PAD and batch.tags is None
    assert batch.character_ids.shape == (3, 2, MAX_WORD_CHARACTERS)
    long_word = batch.character_ids[2, 0].tolist()
    assert long_word[-3:] == task.vocabulary.character_ids("abc")     # the suffix survives truncation
    assert (batch.character_ids[1, 1] == PAD).all()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 2), min_size=1, max_size=6))
def test_any_subset_batches_like_encoding_it_alone(rows):
    task = Tagging({"train": [sentence("the/D cat/N sat/V"), sentence("a/D dog/N"), sentence("go/V")]})
    chosen = [task.splits["train"][i] for i in rows]
    from_split = task.encode(task.splits["train"]).batch(torch.tensor(rows))
    alone = task.batch(chosen)
    for name in ("word_ids", "character_ids", "mask", "tags"):
        assert torch.equal(getattr(from_split, name), getattr(alone, name)), name


def test_train_batch_is_reproducible(task):
    first = task.train_batch(4, torch.Generator().manual_seed(3))
    second = task.train_batch(4, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert task.batch_tokens(first) == int(first[-1].sum()) < first[-1].numel() + 1


def test_evaluate_counts_seen_and_unseen_words(task):
    ids = {tag: i for i, tag in enumerate(task.tag_names)}
    # Right on the/a/cat/ran, wrong on everything else: test words the a cat ran right, bird flew wrong.
    oracle = Oracle(task, {"the": ids["D"], "a": ids["D"], "cat": ids["N"], "ran": ids["V"]}, guess=ids["A"])
    metrics = task.evaluate(oracle, "test")
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["unseen_accuracy"] == 0.0 and metrics["unseen_tokens"] == 2
    assert metrics["loss"] == pytest.approx(0.25)           # the tagger's own loss per word
    assert task.evaluate(oracle, "test", details=True)["confusions"] == [("N", "A", 1), ("V", "A", 1)]
    assert task.tag_sentences(oracle, [["the", "zebra"]]) == [["D", "A"]]
    assert task.predict(oracle, ["the zebra"]) == ["the/D zebra/A"]


def test_confusion_summary_orders_errors():
    gold = torch.tensor([0, 0, 1, 1, 1, 2])
    predicted = torch.tensor([0, 1, 2, 2, 0, 2])
    matrix = confusion_matrix(gold, predicted, 3)
    assert matrix.tolist() == [[1, 1, 0], [1, 0, 2], [0, 0, 1]]
    assert confusion_summary(matrix, ["a", "b", "c"], top=2) == [("b", "c", 2), ("a", "b", 1)]


def test_bad_sentences(task):
    with pytest.raises(DataError, match="sentence 2 is empty"):
        task.batch([["a"], []])
    with pytest.raises(DataError, match="tag 'Z' does not occur in the training data"):
        Tagging({"train": task.splits["train"], "test": [sentence("the/Z")]}, vocabulary=task.vocabulary)
    with pytest.raises(DataError, match="has 2 words but 1 tags"):
        Tagging({"train": [TaggedSentence(("a", "b"), ("D",))]})


def test_vocabulary_round_trip(task, tmp_path):
    task.vocabulary.save(tmp_path / "v.json")
    loaded = TaggingVocabulary.load(tmp_path / "v.json")
    assert (loaded.words, loaded.characters, loaded.tags) == (task.vocabulary.words, task.vocabulary.characters,
                                                              task.vocabulary.tags)
    (tmp_path / "bad.json").write_text('{"kind": "something else"}')
    with pytest.raises(DataError, match="not a seqlab tagging vocabulary"):
        TaggingVocabulary.load(tmp_path / "bad.json")


def test_ud_english_ewt(shared_data):
    files = find_conllu_files(shared_data / "ud_english_ewt")
    test = read_conllu(files["test"])
    assert len(test) == 2077 and sum(map(len, test)) == 25094
    assert {tag for s in test for tag in s.tags} <= {"ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN",
                                                      "NUM", "PART", "PRON", "PROPN", "PUNCT", "SCONJ", "SYM",
                                                      "VERB", "X"}
