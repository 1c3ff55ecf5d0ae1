"""Bad input, one table: each case is one clear line on stderr and exit code 2 (a SeqlabError in
the library), never a traceback, never a number that is not one."""

import io
import json
import shutil

import pytest
import torch

from seqlab.cli import main
from seqlab.data.corpora import builtin_corpus

from helpers import TINY, fails_cleanly
from test_tagging_cli import conllu_text, generated_sentence

TAG_TINY = ["--set", "word_dim=8", "--set", "character_dim=4", "--set", "character_features=4", "--set", "hidden=8",
            "--no-progress"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A text file, a trained language model run, a treebank and a trained tagger run."""
    import random

    root = tmp_path_factory.mktemp("bad-inputs")
    text = root / "text.txt"
    text.write_text(builtin_corpus().text[:20_000])
    assert main(["train", "lstm", "--data", str(text), *TINY, "--steps", "2", "--eval-every", "2",
                 "--out", str(root / "lm")]) == 0
    treebank = root / "treebank"
    treebank.mkdir()
    rng = random.Random(0)
    for split, count in (("train", 40), ("dev", 8), ("test", 8)):
        (treebank / f"toy-ud-{split}.conllu").write_text(conllu_text([generated_sentence(rng) for _ in range(count)]))
    assert main(["train", "bilstm", "--task", "tag", "--data", str(treebank), *TAG_TINY, "--steps", "2",
                 "--eval-every", "2", "--out", str(root / "tagger")]) == 0
    assert main(["train", "transformer", "--data", str(text), *TINY, "--steps", "2", "--eval-every", "2",
                 "--out", str(root / "gpt")]) == 0
    (root / "a-file").write_text("not a directory")
    (root / "other.txt").write_text("ΑΒΓΔ ΕΖΗΘ ΙΚΛΜ " * 40)     # letters the run never saw
    return root


def checkpoint_of(run):
    return run / json.loads((run / "run.json").read_text())["best"]


def edit(run, change):
    """A copy of ``run`` whose best checkpoint's config.json is changed by ``change``."""
    copy = run.parent / f"{run.name}-edited-{abs(hash(change.__code__.co_code)) % 10**8}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy)
    path = checkpoint_of(copy) / "config.json"
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))
    return copy


TRAIN = ["train", "lstm", "--data", "{root}/text.txt", *TINY, "--steps", "2", "--out", "{root}/new-run"]
TRANSFORMER = ["train", "transformer", "--data", "{root}/text.txt", *TINY, "--steps", "2", "--out", "{root}/new-tf"]

CASES = {
    "vocab_size below the tokenizer's": ([*TRAIN, "--set", "vocab_size=5"], "vocab_size is 5 but"),
    "an impossible allocation": ([*TRAIN, "--set", "d_model=100000000"], "needs more memory"),
    "lr nan": ([*TRAIN, "--lr", "nan"], "lr must be a finite number"),
    "grad clip nan": ([*TRAIN, "--grad-clip", "nan"], "grad_clip must be a finite number"),
    "negative weight decay": ([*TRAIN, "--weight-decay", "-1"], "weight_decay must be >= 0"),
    "weight decay nan": ([*TRAIN, "--weight-decay", "nan"], "weight_decay must be a finite number"),
    "an unknown device": ([*TRAIN, "--device", "tpu"], "unknown device 'tpu'"),
    "tbptt without streams": (["train", "bilstm", "--task", "tag", "--data", "{root}/treebank", *TAG_TINY,
                               "--tbptt", "--out", "{root}/tbptt"], "--tbptt needs a task with contiguous streams"),
    "an unwritable --out": (["train", "lstm", *TINY, "--out", "{root}/a-file/run"], "cannot write"),
    "an --out that is a file": (["train", "lstm", *TINY, "--out", "{root}/a-file"], "is a file"),
    "compare --out naming a file": (["compare", "--models", "lstm", "--out", "{root}/a-file"], "is a file"),
    "compare --steps 0": (["compare", "--models", "lstm", "--steps", "0", "--out", "{root}/c"], "steps must be >= 1"),
    "an unknown task": (["train", "lstm", "--task", "summarise", "--out", "{root}/x"], "unknown task 'summarise'"),
    "eval of a file": (["eval", "{root}/text.txt"], "is a file, not a run directory"),
    "eval of nothing": (["eval", "{root}/nothing"], "does not exist"),
    "eval --data outside the vocabulary": (["eval", "{root}/lm", "--data", "{root}/other.txt"],
                                           "outside the run's vocabulary"),
    "resume of a run that finished": (["train", "--resume", "--out", "{root}/lm"], "has finished its 2 steps"),
    "heads that do not divide the width": ([*TRANSFORMER, "--set", "n_heads=3"], "n_heads (3) must divide d_model (16)"),
    "kv heads that do not divide the heads": ([*TRANSFORMER, "--set", "n_kv_heads=3"],
                                              "n_kv_heads (3) must divide n_heads (4)"),
    "a context longer than the position table": ([*TRANSFORMER, "--set", "max_len=8"],
                                                 "reads at most 8 positions (max_len) but the task's context is 16"),
    "tbptt with learned positions": ([*TRANSFORMER, "--tbptt"], "reads at most 16 positions (learned positions)"),
    "a prompt longer than the context": (["generate", "{root}/gpt", "--prompt", "x" * 40],
                                         "the prompt has 40 tokens but the model reads at most 16"),
    "an MoE top-k above the experts": ([*TRANSFORMER, "--set", "n_experts=2", "--set", "experts_top_k=3"],
                                       "experts_top_k (3) must be between 1 and n_experts (2)"),
    "init-from a run that shares nothing": (["train", "lstm", "--data", "{root}/text.txt", *TINY,
                                             "--init-from", "{root}/tagger", "--out", "{root}/init"],
                                            "no parameter of"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_command_lines(files, capsys, case):
    argv, message = CASES[case]
    fails_cleanly(capsys, [arg.format(root=files) for arg in argv], message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(files, capsys):
    fails_cleanly(capsys, [arg.format(root=files) for arg in TRAIN] + ["--device", "cuda"], "no CUDA device")


CONFIG_EDITS = {
    "no task": (lambda info: info.pop("task"), "has no 'task'"),
    "no train": (lambda info: info.pop("train"), "has no 'train'"),
    "config null": (lambda info: info.update(config=None), "'config' must be a dict"),
    "a string for a number": (lambda info: info["config"].update(d_model="sixteen"), "d_model must be int"),
    "an unknown task": (lambda info: info["task"].update(task="summarise"), "unknown task 'summarise'"),
}


@pytest.mark.parametrize("case", CONFIG_EDITS)
def test_edited_config_json(files, capsys, case):
    change, message = CONFIG_EDITS[case]
    fails_cleanly(capsys, ["eval", str(edit(files / "lm", change))], message)


def test_a_training_state_missing_keys(files, tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", "lstm", "--data", str(files / "text.txt"), *TINY, "--steps", "4", "--eval-every", "2",
          "--out", str(run)])
    last = run / json.loads((run / "run.json").read_text())["last"]
    state = torch.load(last / "trainer.pt", weights_only=True)
    del state["optimizer"]
    torch.save(state, last / "trainer.pt")
    # The run stopped at its end; extend it, so that the training state is read.
    fails_cleanly(capsys, ["train", "--resume", "--extend", "--steps", "6", "--out", str(run)], "lacks 'optimizer'")


def test_non_utf8_standard_input_is_refused_like_a_file(files, tmp_path, capsys, monkeypatch):
    bad = "café".encode("latin-1") + b"\n"
    (tmp_path / "bad.txt").write_bytes(bad)
    fails_cleanly(capsys, ["tag", str(files / "tagger"), "--input", str(tmp_path / "bad.txt")], "is not UTF-8")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(bad), encoding="utf-8"))
    fails_cleanly(capsys, ["tag", str(files / "tagger")], "standard input is not UTF-8")


def test_eval_warns_when_some_of_the_text_is_outside_the_vocabulary(files, tmp_path, capsys):
    mixed = tmp_path / "mixed.txt"
    mixed.write_text(builtin_corpus().text[:2000] + "ΑΒΓΔ" * 10)
    assert main(["eval", str(files / "lm"), "--data", str(mixed)]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("seqlab: warning: ") and "outside the run's vocabulary" in captured.err
    json.loads(captured.out)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_eval_never_prints_nan_or_infinity(files, capsys, monkeypatch, bad):
    from seqlab.tasks.lm import LanguageModeling

    original = LanguageModeling.evaluate
    monkeypatch.setattr(LanguageModeling, "evaluate",
                        lambda self, *args, **kwargs: {**original(self, *args, **kwargs), "perplexity": bad})
    fails_cleanly(capsys, ["eval", str(files / "lm")], f"evaluation gave perplexity = {bad}")
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("call, message", [
    (lambda: __import__("seqlab").LanguageModeling("some text"), "needs a Corpus"),
    (lambda: __import__("seqlab").TrainConfig(lr=float("nan")), "lr must be a finite number"),
    (lambda: __import__("seqlab").TrainConfig(weight_decay=-0.5), "weight_decay must be >= 0"),
])
def test_the_library_raises_config_errors(call, message):
    from seqlab.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        call()
