"""Checkpoints and run directories: what belongs together is checked on load, a crash at any
stage of a save leaves a loadable run, and nothing seqlab did not write is ever touched."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from seqlab import registry
from seqlab.checkpoint import TRAINER_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint
from seqlab.errors import CheckpointError, ConfigError
from seqlab.rundir import POINTER_FILE, RunDirectory

from helpers import tiny_lstm, tiny_task

STAGES = ("write", "rename", "pointer", "switch", "prune")


@pytest.fixture(scope="module")
def task():
    return tiny_task(characters=4000)


@pytest.fixture
def run(tmp_path, task):
    model = tiny_lstm(task)
    save_checkpoint(tmp_path / "run", model, task)
    return tmp_path / "run", model


def checkpoint_dir(run_dir, which="best"):
    return run_dir / json.loads((run_dir / POINTER_FILE).read_text())[which]


def test_a_run_holds_a_pointer_and_one_checkpoint(run):
    run_dir, model = run
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "metrics.jsonl", POINTER_FILE]
    loaded = load_checkpoint(run_dir)
    assert loaded.task_name == "lm" and loaded.info["step"] == 0
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    assert load_checkpoint(checkpoint_dir(run_dir)).directory == loaded.directory   # a checkpoint directly


def test_last_and_best_are_kept_and_the_rest_pruned(run, task):
    run_dir, model = run
    directory = RunDirectory(run_dir)
    info = {"task": task.spec(), "train": {}, "history": []}
    directory.save(model, task.artifacts(), {**info, "step": 10}, best=True)
    directory.save(model, task.artifacts(), {**info, "step": 20}, best=False)
    directory.save(model, task.artifacts(), {**info, "step": 30}, best=False)
    assert load_checkpoint(run_dir).info["step"] == 10
    assert load_checkpoint(run_dir, which="last").info["step"] == 30
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-0000010", "step-0000030"]


def test_the_users_files_survive_training_and_overwriting(tmp_path, task):
    # seqlab.fit(..., out_dir=precious) used to delete every file there.
    import seqlab

    precious = tmp_path / "precious"
    (precious / "notes").mkdir(parents=True)
    (precious / "eval.json").write_text("mine")
    (precious / "notes" / "a.txt").write_text("also mine")
    seqlab.fit(tiny_lstm(task), task, out_dir=precious, steps=2, eval_every=1, batch_size=4, progress=False,
               device="cpu")
    with pytest.raises(ConfigError, match="--resume"):
        seqlab.fit(tiny_lstm(task), task, out_dir=precious, steps=2, progress=False, device="cpu")
    seqlab.fit(tiny_lstm(task), task, out_dir=precious, overwrite=True, steps=3, eval_every=3, batch_size=4,
               progress=False, device="cpu")
    assert (precious / "eval.json").read_text() == "mine"
    assert (precious / "notes" / "a.txt").read_text() == "also mine"
    assert load_checkpoint(precious).info["step"] == 3


@pytest.mark.parametrize("name", ["checkpoints", "metrics.jsonl", POINTER_FILE])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_holding_a_file_with_seqlabs_name_is_refused(tmp_path, name, overwrite):
    (tmp_path / name).write_text('{"experiment": "the user\'s"}')
    (tmp_path / "checkpoints-of-mine").mkdir()
    with pytest.raises(ConfigError, match="seqlab did not write"):
        RunDirectory(tmp_path).prepare(resume=False, overwrite=overwrite)
    assert (tmp_path / name).read_text() == '{"experiment": "the user\'s"}'


def test_a_foreign_run_json_protects_a_checkpoints_directory_beside_it(tmp_path):
    # A run.json seqlab did not write used to count as a run "with no checkpoint yet", and the
    # user's checkpoints/step-0000001 beside it was pruned.
    (tmp_path / "checkpoints" / "step-0000001").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-0000001" / "data.txt").write_text("precious")
    (tmp_path / POINTER_FILE).write_text('{"experiment": "my notes"}')
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="seqlab did not write"):
            RunDirectory(tmp_path).prepare(resume=False, overwrite=overwrite)
    assert (tmp_path / "checkpoints" / "step-0000001" / "data.txt").read_text() == "precious"


def test_overwriting_starts_afresh_and_never_mixes_two_runs(tmp_path, task):
    # A failed --overwrite used to keep the old run's checkpoints beside the new run's log.
    import seqlab

    run = tmp_path / "run"
    seqlab.fit(tiny_lstm(task), task, out_dir=run, steps=4, eval_every=2, log_every=1, progress=False, device="cpu")
    RunDirectory(run).prepare(resume=False, overwrite=True)       # the new run starts; it saves nothing yet
    assert json.loads((run / POINTER_FILE).read_text())["last"] is None
    assert (run / "metrics.jsonl").read_text() == "" and not any((run / "checkpoints").iterdir())
    with pytest.raises(CheckpointError, match="no checkpoint yet"):
        load_checkpoint(run)


def test_output_directory_rules(run, tmp_path):
    run_dir, _ = run
    RunDirectory(tmp_path / "new").check(resume=False, overwrite=False)
    with pytest.raises(ConfigError, match="--resume"):
        RunDirectory(run_dir).check(resume=False, overwrite=False)
    RunDirectory(run_dir).check(resume=False, overwrite=True)
    with pytest.raises(CheckpointError, match="no seqlab run"):
        RunDirectory(tmp_path / "new").check(resume=True, overwrite=False)
    with pytest.raises(CheckpointError, match=TRAINER_FILE):
        RunDirectory(run_dir).check(resume=True, overwrite=False)    # saved without a training state
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        RunDirectory(tmp_path / "file").check(resume=False, overwrite=False)


def test_an_unwritable_directory_is_refused_before_training(tmp_path):
    (tmp_path / "a-file").write_text("x")                 # no directory can be made below a file, even as root
    with pytest.raises(ConfigError, match="cannot write"):
        RunDirectory(tmp_path / "a-file" / "run").check(resume=False, overwrite=False)


@pytest.mark.parametrize("stage", STAGES)
def test_a_crash_at_any_stage_of_a_save_leaves_a_loadable_run(tmp_path, stage, task):
    # The second save of a run is killed (os._exit: no cleanup runs) right after `stage`; the run
    # must load (the old checkpoint before the switch, the new one after), and the next start
    # removes what the crash left.
    run_dir = tmp_path / "run"
    save_checkpoint(run_dir, tiny_lstm(task), task)
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        import torch
        from seqlab import rundir
        from helpers import tiny_lstm, tiny_task

        def crash(name):
            if name == {stage!r}:
                os._exit(9)

        rundir._stage = crash
        task = tiny_task(characters=4000)
        model = tiny_lstm(task, seed=1)
        rundir.RunDirectory({str(run_dir)!r}).save(model, task.artifacts(),
            {{"task": task.spec(), "train": {{}}, "step": 7, "history": []}})
    """)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 9, completed.stderr[-2000:]
    step = load_checkpoint(run_dir).info["step"]
    assert step == (7 if STAGES.index(stage) >= STAGES.index("switch") else 0)
    RunDirectory(run_dir).clean()                                     # what every start runs
    leftovers = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert leftovers == [f"step-{step:07d}"]
    assert not (run_dir / f"{POINTER_FILE}.partial").exists()
    assert load_checkpoint(run_dir).info["step"] == step


def test_flipped_bytes_in_the_weights_are_caught_by_the_checksum(run):
    # A flipped byte inside a tensor still parses and used to evaluate silently to garbage.
    run_dir, _ = run
    weights = checkpoint_dir(run_dir) / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(run_dir)


def test_corrupt_weights_are_reported(run):
    run_dir, _ = run
    weights = checkpoint_dir(run_dir) / WEIGHTS_FILE
    info_path = checkpoint_dir(run_dir) / "config.json"
    info = json.loads(info_path.read_text())
    del info["weights_sha256"]                          # the parse error, not the checksum, must catch it
    info_path.write_text(json.dumps(info))
    weights.write_bytes(b"\x07" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(run_dir)


def edit_config(run_dir, change):
    path = checkpoint_dir(run_dir) / "config.json"
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))


@pytest.mark.parametrize("change, message", [
    (lambda info: info.pop("task"), "has no 'task'"),
    (lambda info: info.pop("train"), "has no 'train'"),
    (lambda info: info.update(config=None), "'config' must be a dict"),
    (lambda info: info["config"].update(d_model="big"), "d_model must be int"),
    (lambda info: info["config"].update(d_model=16), "does not fit its config"),
    (lambda info: info.update(model="no-such-model"), "unknown model 'no-such-model'"),
    (lambda info: info["task"].update(task="no-such-task"), "unknown task 'no-such-task'"),
    (lambda info: info.update(step="ten"), "'step' must be a int"),
])
def test_a_config_json_that_does_not_fit_is_named(run, change, message):
    run_dir, _ = run
    edit_config(run_dir, change)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(run_dir)


def test_a_tokenizer_of_another_size_is_refused(run):
    from seqlab.data.tokenizers import train_tokenizer

    run_dir, _ = run
    train_tokenizer("char", "only a few letters").save(checkpoint_dir(run_dir) / "tokenizer.json")
    with pytest.raises(CheckpointError, match="vocab_size"):
        load_checkpoint(run_dir)


def test_invalid_json_and_missing_files_are_reported(run):
    run_dir, _ = run
    (checkpoint_dir(run_dir) / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="missing tokenizer.json"):
        load_checkpoint(run_dir)
    (checkpoint_dir(run_dir) / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(run_dir)
    (run_dir / POINTER_FILE).write_text(json.dumps({"seqlab_run": 1, "last": "checkpoints/gone", "best": None}))
    with pytest.raises(CheckpointError, match="names a last checkpoint that does not exist"):
        load_checkpoint(run_dir, which="last")
    RunDirectory(run_dir).prepare(resume=False, overwrite=True)      # such a run can still be replaced


def test_weights_that_are_not_finite_are_never_saved(tmp_path, task):
    model = tiny_lstm(task)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="not finite"):
        save_checkpoint(tmp_path / "run", model, task)
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_a_vocabulary_size_mismatch_is_refused_when_building(task):
    from seqlab.registry import build_for_task

    model = build_for_task("lstm", task.model_defaults(), {"vocab_size": task.vocab_size - 1}, task="lm")
    with pytest.raises(ConfigError, match="vocab_size"):
        task.check_model(model)


def test_registry_round_trip_of_every_config_through_json(task):
    model = registry.build("lstm", "lm", vocab_size=7, d_model=12)
    config = json.loads(json.dumps(registry.config_to_dict(model.config)))
    assert registry.make_config(type(model.config), config) == model.config
