"""The command line: the happy path end to end, and one clear line with exit code 2 on bad input."""

import json

import pytest

from seqlab.cli import main
from seqlab.data.corpora import builtin_corpus

from helpers import TINY, fails_cleanly


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text(builtin_corpus().text[:20_000])
    return path


@pytest.fixture(scope="module")
def trained_run(text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lstm"
    assert main(["train", "lstm", "--data", str(text_file), *TINY, "--steps", "5", "--eval-every", "5",
                 "--out", str(out)]) == 0
    return out


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "lstm" in out and "transformer" in out


def test_train_eval_generate(trained_run, capsys):
    assert main(["eval", str(trained_run)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0 < metrics["bpc"] < 8 and metrics["perplexity"] > 1
    assert main(["generate", str(trained_run), "--prompt", "The ", "--max-new", "30", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert main(["generate", str(trained_run), "--prompt", "The ", "--max-new", "30", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first and first.startswith("The ") and len(first) >= 30


def test_eval_on_another_file(trained_run, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    assert main(["eval", str(trained_run), "--data", str(other)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["characters"] == len(other.read_text()) - 1


def test_resume_extends_a_run(trained_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    assert main(["train", "--out", str(copy), "--resume", "--steps", "8", "--no-progress"]) == 0
    assert json.loads((copy / "config.json").read_text())["step"] == 8


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks binary"),
    ("café".encode("latin-1") * 10, "is not UTF-8"),
    (b"too short for the context", "needs at least"),
])
def test_bad_data_files(tmp_path, capsys, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    fails_cleanly(capsys, ["train", "lstm", "--data", str(path), "--out", str(tmp_path / "o"), *TINY], message)


@pytest.mark.parametrize("argv, message", [
    (["train", "lstmm", "--out", "{tmp}/o"], "unknown model 'lstmm' (did you mean 'lstm'?)"),
    (["train", "lstm", "--set", "hidden=3", "--out", "{tmp}/o"], "unknown key 'hidden'"),
    (["train", "lstm", "--set", "d_model=big", "--out", "{tmp}/o"], "LSTMConfig.d_model must be int"),
    (["train", "lstm", "--set", "oops", "--out", "{tmp}/o"], "KEY=VALUE"),
    (["train", "lstm", "--budget", "0", "--out", "{tmp}/o"], "budget must be > 0"),
    (["train", "lstm", "--budget", "-5", "--out", "{tmp}/o"], "budget must be > 0"),
    (["compare", "--budget", "0", "--out", "{tmp}/o"], "budget must be > 0"),
    (["compare", "--models", "lstm,nope", "--out", "{tmp}/o"], "unknown model 'nope'"),
])
def test_bad_options(tmp_path, capsys, argv, message):
    fails_cleanly(capsys, [arg.format(tmp=tmp_path) for arg in argv], message)


def test_refuses_to_overwrite_a_directory_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    fails_cleanly(capsys, ["train", "lstm", "--out", str(tmp_path / "mine"), *TINY], "not a seqlab run")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_refuses_to_overwrite_a_run_without_a_flag(trained_run, capsys):
    fails_cleanly(capsys, ["train", "lstm", "--out", str(trained_run), *TINY], "--resume")


@pytest.mark.parametrize("damage, message", [
    ("missing", "missing model.safetensors"),
    ("corrupt", "corrupt"),
    ("unknown", "unknown model 'gpt9'"),
])
def test_broken_checkpoints(trained_run, tmp_path, capsys, damage, message):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    if damage == "missing":
        (run / "model.safetensors").unlink()
    elif damage == "corrupt":
        (run / "model.safetensors").write_bytes(b"garbage" * 50)
    else:
        info = json.loads((run / "config.json").read_text())
        info["model"] = "gpt9"
        (run / "config.json").write_text(json.dumps(info))
    fails_cleanly(capsys, ["eval", str(run)], message)
    fails_cleanly(capsys, ["generate", str(run), "--prompt", "a"], message)


def test_missing_checkpoint_directory(tmp_path, capsys):
    fails_cleanly(capsys, ["eval", str(tmp_path / "nothing")], "does not exist")


def test_prompt_outside_the_vocabulary(trained_run, capsys):
    fails_cleanly(capsys, ["generate", str(trained_run), "--prompt", "naïve ☃"], "prompt rejected: text contains 'ï'")


def test_compare_writes_the_report(text_file, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["compare", "--models", "lstm,transformer", "--data", str(text_file), "--context", "16",
            "--budget", "4", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| lstm |" in printed and "| transformer |" in printed
    for name in ("report.md", "report.html", "curves.png"):
        assert (out / name).stat().st_size > 100
    markdown = (out / "report.md").read_text()
    assert "## Samples" in markdown and "test bpc" in markdown
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_reproduce_lists_and_rejects_unknown(capsys):
    assert main(["reproduce", "--list"]) == 0
    assert "adding-problem" in capsys.readouterr().out
    fails_cleanly(capsys, ["reproduce", "adding-problm"], "unknown experiment 'adding-problm'")


@pytest.mark.parametrize("model", ["elman", "jordan", "gru"])
def test_train_recurrent_models_with_truncated_bptt(text_file, tmp_path, model, capsys):
    out = tmp_path / model
    assert main(["train", model, "--data", str(text_file), *TINY, "--steps", "3", "--tbptt",
                 "--grad-clip-value", "0.5", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == model and saved["train"]["tbptt"] is True
    assert saved["train"]["grad_clip_value"] == 0.5 and saved["step"] == 3
