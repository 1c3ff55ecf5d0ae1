"""Tagging from the command line: train, tag, eval and compare on a small generated treebank,
and one clear line with exit code 2 on bad input."""

import json
import random

import pytest

from seqlab.cli import main

from helpers import TINY, fails_cleanly

WORDS = {
    "DET": ["the", "a", "every", "this"],
    "ADJ": ["big", "small", "red", "quiet", "old"],
    "NOUN": ["cat", "dog", "house", "river", "idea", "garden"],
    "VERB": ["sees", "likes", "finds", "keeps"],
    "ADP": ["in", "near", "under"],
    "PUNCT": ["."],
}


def generated_sentence(rng: random.Random) -> list[tuple[str, str]]:
    """DET (ADJ) NOUN VERB DET NOUN (ADP DET NOUN) ."""
    tags = ["DET"] + (["ADJ"] if rng.random() < 0.5 else []) + ["NOUN", "VERB", "DET", "NOUN"]
    tags += ["ADP", "DET", "NOUN"] if rng.random() < 0.5 else []
    return [(rng.choice(WORDS[tag]), tag) for tag in tags + ["PUNCT"]]


def conllu_text(sentences: list[list[tuple[str, str]]]) -> str:
    blocks = []
    for index, sentence in enumerate(sentences, start=1):
        lines = [f"# sent_id = {index}"]
        lines += [f"{i}\t{word}\t{word}\t{tag}\t{tag}\t_\t0\tdep\t_\t_" for i, (word, tag) in enumerate(sentence, 1)]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n\n"


@pytest.fixture(scope="module")
def treebank(tmp_path_factory):
    directory = tmp_path_factory.mktemp("treebank")
    rng = random.Random(0)
    for split, count in (("train", 300), ("dev", 40), ("test", 40)):
        (directory / f"toy-ud-{split}.conllu").write_text(conllu_text([generated_sentence(rng) for _ in range(count)]))
    return directory


@pytest.fixture(scope="module")
def tagger_run(treebank, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "hmm"
    assert main(["train", "hmm", "--task", "tag", "--data", str(treebank), "--out", str(out), "--no-progress"]) == 0
    return out


def test_train_tag_eval(treebank, tagger_run, tmp_path, capsys, monkeypatch):
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("the big dog sees a cat .\nevery zebra likes this river .\n\n")
    assert main(["tag", str(tagger_run), "--input", str(sentences)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "the/DET big/ADJ dog/NOUN sees/VERB a/DET cat/NOUN ./PUNCT"
    assert lines[1].startswith("every/DET zebra/NOUN likes/VERB")      # an unseen word, from its context
    assert len(lines) == 2                                             # trailing blank lines are no input
    # One output line per input line: a blank line inside is an error naming it, not skipped
    # (which would misalign the outputs with the inputs).
    sentences.write_text("the big dog sees a cat .\n\nevery zebra likes this river .\n")
    assert main(["tag", str(tagger_run), "--input", str(sentences)]) == 2
    assert capsys.readouterr().err == "seqlab: error: input line 2 has no words; give one sentence per line\n"

    import io
    monkeypatch.setattr("sys.stdin", io.StringIO("a red house keeps the idea .\n"))
    assert main(["tag", str(tagger_run)]) == 0
    assert capsys.readouterr().out.split()[2] == "house/NOUN"

    assert main(["eval", str(tagger_run)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] > 0.95 and metrics["tokens"] > 200 and "confusions" in metrics

    # One treebank file (not a directory of three) is evaluated whole.
    assert main(["eval", str(tagger_run), "--data", str(treebank / "toy-ud-test.conllu")]) == 0
    whole_file = json.loads(capsys.readouterr().out)
    for timing in (metrics, whole_file):
        del timing["tokens_per_second"]
    assert whole_file == metrics


def test_compare_taggers_writes_the_report(treebank, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["compare", "--task", "tag", "--data", str(treebank), "--models", "hmm", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| hmm |" in printed and "test acc %" in printed
    markdown = (out / "report.md").read_text()
    assert "Most frequent confusions" in markdown and "A tagged test sentence" in markdown
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_tagging_errors(treebank, tagger_run, tmp_path, capsys):
    fails_cleanly(capsys, ["train", "hmm", "--task", "tag", "--out", str(tmp_path / "x")], "--task tag needs --data")
    fails_cleanly(capsys, ["train", "hmmm", "--task", "tag", "--data", str(treebank), "--out", str(tmp_path / "y")],
                  "unknown model 'hmmm' (did you mean 'hmm'?)")
    fails_cleanly(capsys, ["generate", str(tagger_run), "--prompt", "a"], "`seqlab generate` needs a 'lm' run")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    fails_cleanly(capsys, ["tag", str(tagger_run), "--input", str(empty)], "is empty")

    broken = tmp_path / "broken"
    broken.mkdir()
    for path in treebank.iterdir():
        (broken / path.name).write_text(path.read_text())
    train = broken / "toy-ud-train.conllu"
    train.write_text(train.read_text().replace("1\tthe\tthe\tDET\tDET", "1\tthe\tthe\tDET", 1))
    fails_cleanly(capsys, ["train", "hmm", "--task", "tag", "--data", str(broken), "--out", str(tmp_path / "z")],
                  "toy-ud-train.conllu:")


def test_tagging_a_language_model_run_fails_cleanly(tmp_path, capsys):
    from seqlab.data.corpora import builtin_corpus

    text = tmp_path / "text.txt"
    text.write_text(builtin_corpus().text[:5000])
    run = tmp_path / "lm"
    assert main(["train", "lstm", "--data", str(text), *TINY, "--steps", "1", "--out", str(run)]) == 0
    sentences = tmp_path / "s.txt"
    sentences.write_text("a b\n")
    fails_cleanly(capsys, ["tag", str(run), "--input", str(sentences)], "`seqlab tag` needs a 'tag' run")
