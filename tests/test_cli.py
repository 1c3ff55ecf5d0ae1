"""The command line: the happy path end to end, and one clear line with exit code 2 on bad input."""

import dataclasses
import json

import pytest

from seqlab.checkpoint import load_checkpoint
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


def test_resume_continues_the_schedule_and_extend_lengthens_it(trained_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    fails_cleanly(capsys, ["train", "--out", str(copy), "--resume", "--no-progress"], "has finished its 5 steps")
    fails_cleanly(capsys, ["train", "--out", str(copy), "--resume", "--steps", "8", "--no-progress"],
                  "--resume continues the run as it was trained (5 steps); it cannot change --steps")
    fails_cleanly(capsys, ["train", "--out", str(copy), "--resume", "--extend", "--steps", "3", "--no-progress"],
                  "--extend needs --steps above the 5 steps")
    fails_cleanly(capsys, ["train", "--out", str(copy), "--resume", "--lr", "0.1", "--no-progress"],
                  "it cannot change --lr; start a new run")
    fails_cleanly(capsys, ["train", "--out", str(copy), "--resume", "--weight-decay", "0.5", "--no-progress"],
                  "it cannot change --weight-decay")
    assert main(["train", "--out", str(copy), "--resume", "--extend", "--steps", "8", "--no-progress"]) == 0
    assert "schedule extended from 5 to 8 steps" in capsys.readouterr().out
    assert load_checkpoint(copy, which="last").info["step"] == 8


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


def test_training_beside_the_users_files_leaves_them_alone(text_file, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    argv = ["train", "lstm", "--data", str(text_file), *TINY, "--steps", "2", "--eval-every", "1"]
    assert main([*argv, "--out", str(tmp_path / "mine")]) == 0
    assert main([*argv, "--out", str(tmp_path / "mine"), "--overwrite"]) == 0
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_refuses_to_overwrite_a_run_without_a_flag(trained_run, capsys):
    fails_cleanly(capsys, ["train", "lstm", "--out", str(trained_run), *TINY], "--resume")


@pytest.mark.parametrize("damage, message", [
    ("missing", "missing model.safetensors"),
    ("corrupt", "sha256"),
    ("unknown", "unknown model 'gpt9'"),
])
def test_broken_checkpoints(trained_run, tmp_path, capsys, damage, message):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    checkpoint = run / json.loads((run / "run.json").read_text())["best"]
    if damage == "missing":
        (checkpoint / "model.safetensors").unlink()
    elif damage == "corrupt":
        (checkpoint / "model.safetensors").write_bytes(b"garbage" * 50)
    else:
        info = json.loads((checkpoint / "config.json").read_text())
        info["model"] = "gpt9"
        (checkpoint / "config.json").write_text(json.dumps(info))
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
    assert "## Samples" in markdown and "test bpc" in markdown and "wall s" in markdown
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_reproduce_lists_and_rejects_unknown(capsys):
    assert main(["reproduce", "--list"]) == 0
    assert "adding-problem" in capsys.readouterr().out
    fails_cleanly(capsys, ["reproduce", "adding-problm"], "unknown experiment 'adding-problm'")


@pytest.mark.parametrize("model, extra", [("elman", []), ("jordan", []), ("gru", []),
                                          ("transformer", ["--set", "positions=rope"])])
def test_train_with_truncated_bptt(text_file, tmp_path, model, extra, capsys):
    # A RoPE Transformer carries a sliding cache of max_len (= the context) keys per layer.
    out = tmp_path / model
    assert main(["train", model, "--data", str(text_file), *TINY, *extra, "--steps", "3", "--tbptt",
                 "--grad-clip-value", "0.5", "--out", str(out)]) == 0
    saved = load_checkpoint(out).info
    assert saved["model"] == model and saved["train"]["tbptt"] is True
    assert saved["train"]["grad_clip_value"] == 0.5 and saved["step"] == 3


def test_init_from_a_language_model_into_a_classifier(trained_run, tmp_path, capsys):
    # Pre-training then fine-tuning: the LM's embedding and LSTM load, the classifier's head is new.
    data = tmp_path / "data.tsv"
    data.write_text("".join(f"{'yes' if i % 3 == 0 else 'no'}\tThe value {i} is {'red' if i % 3 == 0 else 'blue'}\n"
                            for i in range(60)))
    argv = ["train", "lstm", "--task", "classify", "--data", str(data), "--tokenizer", "char", "--set", "d_model=16",
            "--steps", "2", "--eval-every", "2", "--no-progress", "--init-from", str(trained_run)]
    fails_cleanly(capsys, [*argv, "--out", str(tmp_path / "other-tokenizer")], "the two runs' tokenizers differ")
    assert main([*argv, "--tokenizer-from", str(trained_run), "--out", str(tmp_path / "fine-tuned")]) == 0
    out = capsys.readouterr().out
    assert "loaded  embedding.weight" in out and "loaded  recurrent.module.weight_hh_l0" in out
    assert "new     head.weight" in out or "skipped head.weight" in out
    lm = load_checkpoint(trained_run).model.state_dict()
    classifier = load_checkpoint(tmp_path / "fine-tuned").model.state_dict()
    assert classifier["embedding.weight"].shape == lm["embedding.weight"].shape


@pytest.mark.parametrize("command", ["train", "compare"])
def test_every_tasks_flags_build_and_document_their_defaults(command, capsys):
    # A task option named like a training flag (seed, steps, out) would break its parser.
    from seqlab.tasks.base import get_task, task_names

    for task in task_names():
        with pytest.raises(SystemExit) as exit_status:
            main([command, "--task", task, "--help"])
        assert exit_status.value.code == 0
        help_text = capsys.readouterr().out
        section = help_text.split(f"options of the {task} task:")[1].split("\n\n")[0]
        fields = dataclasses.fields(get_task(task).Options)
        for field in fields:
            assert "--" + field.name.replace("_", "-") in section
        # Every one of the task's flags says its default (or that it is required).
        assert section.count("(default") + section.count("(required") == len(fields), section


def test_help_and_version_do_not_load_torch():
    import subprocess
    import sys

    for argv in (["--help"], ["--version"]):
        code = ("import sys\nfrom seqlab.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
                "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')" % (argv,))
        completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert completed.stdout.strip().splitlines()[-1] == "torch not loaded", completed.stdout + completed.stderr


def test_models_lists_one_models_fields_with_their_documentation(capsys):
    assert main(["models", "lstm", "--task", "lm"]) == 0
    out = capsys.readouterr().out
    assert "--set d_model=...  (256)  embedding and hidden size." in out
    assert "--set vocab_size=...  (from the data)" in out
    fails_cleanly(capsys, ["models", "hmm"], "exists for several tasks")


def test_version(capsys):
    import seqlab

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"seqlab {seqlab.__version__}"


def test_training_writes_the_metrics_log_as_it_goes(trained_run):
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["step"] == 5 and "valid_loss" in rows[-1]


def test_predict_finds_the_run_among_its_flags(trained_run, capsys):
    # A flag's value used to be taken for the run ("run directory '5' does not exist").
    assert main(["predict", "--max-new", "5", "--seed", "1", str(trained_run), "--text", "The "]) == 0
    flags_first = capsys.readouterr().out
    assert main(["generate", str(trained_run), "--prompt", "The ", "--max-new", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out == flags_first and flags_first.startswith("The ")
