"""The neural taggers (seqlab.models.taggers): losses against brute force, padding, learning,
the CRF's sequence-level decision, checkpoints and config checks."""

import itertools
import random

import pytest
import torch
from hypothesis import given, settings, strategies as st

from seqlab import registry
from seqlab.checkpoint import load_checkpoint, save_checkpoint
from seqlab.data.conll import TaggedSentence
from seqlab.errors import ConfigError
from seqlab.models import taggers  # noqa: F401  (registers bilstm and bilstm-crf)
from seqlab.tasks.tagging import Tagging
from seqlab.training import TrainConfig, Trainer

MODELS = ("bilstm", "bilstm-crf")
TINY = {"word_dim": 12, "character_dim": 8, "character_features": 8, "hidden": 16}


def context_sentences(n: int, seed: int) -> list[TaggedSentence]:
    """Tags that need context: "run" and "walk" are NOUN after "the", VERB after "to"."""
    rng = random.Random(seed)
    tag_of = {"the": "DET", "to": "PART", "cat": "NOUN", "dog": "NOUN", "big": "ADJ", "and": "CCONJ"}
    sentences = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(2, 8)):
            word = rng.choice([*tag_of, "run", "walk"])
            if word in ("run", "walk"):
                tags.append("NOUN" if words and words[-1] == "the" else "VERB")
            else:
                tags.append(tag_of[word])
            words.append(word)
        sentences.append(TaggedSentence(tuple(words), tuple(tags)))
    return sentences


def context_task() -> Tagging:
    return Tagging({"train": context_sentences(200, 0), "valid": context_sentences(20, 1),
                    "test": context_sentences(20, 2)})


def tiny_tagger(name: str, task: Tagging, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return registry.build_for_task(name, task.model_defaults(), {**TINY, **overrides}, task="tag")


def train(model, task: Tagging, steps: int, **options) -> None:
    values = {**model.train_defaults, "steps": steps, "budget_seconds": None, "batch_size": 16, "lr": 1e-2,
              "warmup_steps": 10, "eval_every": steps, "eval_every_seconds": None, "progress": False,
              "device": "cpu", **options}
    Trainer(model, task, registry.make_config(TrainConfig, values)).fit()
    model.eval()


def test_crf_loss_is_the_negative_log_likelihood_per_word_by_brute_force():
    task = context_task()
    model = tiny_tagger("bilstm-crf", task).eval()
    # Unequal lengths, so that padding is in play; 6 tags, so at most 6^4 paths each.
    sentences = [next(s for s in task.splits["train"] if len(s) == n) for n in (4, 2, 3)]
    batch = task.batch(sentences)
    emissions = model.encoder(batch).double()
    crf = model.output.crf
    start, transitions, end = (p.detach().double() for p in (crf.start_scores, crf.transition_scores,
                                                              crf.end_scores))

    def path_scores(row: int, paths: torch.Tensor) -> torch.Tensor:
        """score(y) of every path (P, L) of sentence ``row``, term by term as the CRF defines it."""
        positions = torch.arange(paths.shape[1])
        return (start[paths[:, 0]] + emissions[row, positions, paths].sum(1)
                + transitions[paths[:, :-1], paths[:, 1:]].sum(1) + end[paths[:, -1]])

    log_likelihood = 0.0
    for row, sentence in enumerate(sentences):
        paths = torch.tensor(list(itertools.product(range(len(task.tag_names)), repeat=len(sentence))))
        gold = batch.tags[row, :len(sentence)][None]
        log_likelihood += path_scores(row, gold)[0] - torch.logsumexp(path_scores(row, paths), dim=0)
    words = sum(map(len, sentences))
    torch.testing.assert_close(model.loss(batch).double(), -log_likelihood / words, rtol=1e-5, atol=1e-6)


def test_softmax_loss_is_the_cross_entropy_per_word():
    task = context_task()
    model = tiny_tagger("bilstm", task).eval()
    batch = task.batch(task.splits["train"][:4])
    scores = model.encoder(batch)
    expected = torch.nn.functional.cross_entropy(scores[batch.mask], batch.tags[batch.mask])
    torch.testing.assert_close(model.loss(batch), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("character_encoder", ["lstm", "cnn"])
def test_padding_changes_neither_tags_nor_loss(name, character_encoder):
    task = Tagging({"train": context_sentences(50, 0) + [TaggedSentence(("extraordinarily",), ("ADV",))]})
    model = tiny_tagger(name, task, character_encoder=character_encoder).eval()
    short = TaggedSentence(("the", "run", "and", "cat"), ("DET", "NOUN", "CCONJ", "NOUN"))
    longer = TaggedSentence(("to", "walk", "extraordinarily", "big", "dog", "the", "cat"),
                            ("PART", "VERB", "ADV", "ADJ", "NOUN", "DET", "NOUN"))
    alone, padded = task.batch([short]), task.batch([short, longer])
    assert padded.character_ids.shape[2] > alone.character_ids.shape[2]     # characters padded too
    torch.testing.assert_close(model.encoder(padded)[0, :4], model.encoder(alone)[0], rtol=1e-5, atol=1e-6)
    assert model.tag(padded)[0, :4].tolist() == model.tag(alone)[0].tolist()
    nll_padded = model.output.negative_log_likelihood(model.encoder(padded), padded.tags, padded.mask)
    torch.testing.assert_close(nll_padded[0], model.loss(alone) * len(short), rtol=1e-5, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(lengths=st.lists(st.integers(1, 7), min_size=1, max_size=4), seed=st.integers(0, 10_000),
       name=st.sampled_from(MODELS), character_encoder=st.sampled_from(["lstm", "cnn"]))
def test_the_tagger_never_reads_padding(lengths, seed, name, character_encoder):
    """Garbage word and character ids at padded positions change no score, tag or loss."""
    task = Tagging({"train": context_sentences(30, 0)})
    model = tiny_tagger(name, task, character_encoder=character_encoder).eval()
    rng = random.Random(seed)
    sentences = [context_sentences(1, rng.randrange(10**6))[0] for _ in lengths]
    sentences = [TaggedSentence(s.words[:n] or ("the",), s.tags[:n] or ("DET",)) for s, n in zip(sentences, lengths)]
    clean = task.batch(sentences)
    generator = torch.Generator().manual_seed(seed)
    dirty = task.batch(sentences)
    padding = ~dirty.mask
    dirty.word_ids[padding] = torch.randint(1, task.model_defaults()["n_words"], (int(padding.sum()),),
                                            generator=generator)
    dirty.character_ids[padding] = torch.randint(1, task.model_defaults()["n_characters"],
                                                 (int(padding.sum()), dirty.character_ids.shape[2]),
                                                 generator=generator)
    dirty.tags[padding] = torch.randint(0, len(task.tag_names), (int(padding.sum()),), generator=generator)
    mask = clean.mask
    torch.testing.assert_close(model.encoder(dirty)[mask], model.encoder(clean)[mask], rtol=1e-5, atol=1e-6)
    assert torch.equal(model.tag(dirty)[mask], model.tag(clean)[mask])
    torch.testing.assert_close(model.loss(dirty), model.loss(clean), rtol=1e-5, atol=1e-6)


def test_word_dropout_counts_training_words_and_drops_rare_ones_most():
    sentences = [TaggedSentence(("the", "cat"), ("DET", "NOUN"))] * 9 + \
        [TaggedSentence(("the", "dog"), ("DET", "NOUN"))]
    task = Tagging({"train": sentences})
    model = tiny_tagger("bilstm", task, word_dropout_alpha=0.5)
    batch = task.batch(sentences)
    model.eval().loss(batch)
    assert int(model.encoder.sentences_seen) == 0                    # evaluation counts nothing
    model.train().loss(batch)
    the, cat, dog = task.vocabulary.word_ids(["the", "cat", "dog"])
    counts = model.encoder.word_counts
    assert (int(counts[the]), int(counts[cat]), int(counts[dog]), int(model.encoder.sentences_seen)) == (10, 9, 1, 10)
    probability = model.encoder.dropout_probability(torch.tensor([[the, cat, dog]]))[0]
    per_thousand = torch.tensor([10.0, 9.0, 1.0]) * 1000 / 10
    torch.testing.assert_close(probability, 0.5 / (0.5 + per_thousand), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_learns_a_context_dependent_tagging_to_full_training_accuracy(name):
    task = context_task()
    model = tiny_tagger(name, task, dropout=0.0, word_dropout_alpha=0.0)
    before = task.evaluate(model, "train")["accuracy"]
    train(model, task, steps=150)
    assert before < 0.6
    assert task.evaluate(model, "train")["accuracy"] == 1.0
    assert task.evaluate(model, "test")["accuracy"] == 1.0


def test_the_crf_decodes_the_most_probable_sequence_where_the_softmax_cannot():
    """Every word is "x"; the tags are "A B" (40%), "C D" (30%) or "C E" (30%). Each position's
    most probable tag gives "C B", a sequence that never occurs; Viterbi gives "A B"."""
    patterns = [("A", "B")] * 4 + [("C", "D")] * 3 + [("C", "E")] * 3
    sentences = [TaggedSentence(("x", "x"), tags) for tags in patterns * 5]
    task = Tagging({"train": sentences, "valid": sentences})
    decoded = {}
    for name in MODELS:
        model = tiny_tagger(name, task, dropout=0.0, word_dropout_alpha=0.0)
        train(model, task, steps=150, batch_size=50, lr=2e-2)
        decoded[name] = task.tag_sentences(model, [["x", "x"]])[0]
    assert decoded == {"bilstm": ["C", "B"], "bilstm-crf": ["A", "B"]}


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_round_trip_gives_identical_tags(name, tmp_path):
    task = context_task()
    model = tiny_tagger(name, task, character_encoder="cnn").eval()
    save_checkpoint(tmp_path / "run", model, task)
    loaded = load_checkpoint(tmp_path / "run")
    assert loaded.info["model"] == name and type(loaded.model) is type(model)
    assert loaded.artifacts["vocabulary"].words == task.vocabulary.words
    batch = task.batch(task.splits["valid"])
    assert torch.equal(loaded.model.eval().tag(batch), model.tag(batch))
    torch.testing.assert_close(loaded.model.loss(batch), model.loss(batch), rtol=0, atol=0)


@pytest.mark.parametrize("bad, field", [
    ({"hidden": 0}, "hidden"),
    ({"n_layers": 0}, "n_layers"),
    ({"dropout": 1.0}, "dropout"),
    ({"word_dropout_alpha": -0.1}, "word_dropout_alpha"),
    ({"character_width": 4}, "character_width"),
    ({"character_features": 7}, "character_features"),
    ({"character_encoder": "gru"}, "character_encoder"),
    ({"n_words": 2}, "n_words"),
])
def test_bad_config_values_raise_config_error_naming_the_field(bad, field):
    values = {"n_words": 10, "n_characters": 10, "n_tags": 3, **bad}
    for name in MODELS:
        with pytest.raises(ConfigError, match=field):
            registry.build(name, task="tag", **values)
