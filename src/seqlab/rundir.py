"""A run directory: seqlab's checkpoints and logs, beside anything else the user keeps there.

    RUN/run.json                     the pointer: {"last": "checkpoints/step-0000400",
                                     "best": "checkpoints/step-0000200", ...}
    RUN/checkpoints/step-0000400/    one checkpoint each (``seqlab.checkpoint``)
    RUN/metrics.jsonl                one JSON row per logged step and per evaluation

Only these names are seqlab's. Everything else in the directory is the user's, and seqlab never
deletes, moves or replaces it. ``last`` is what ``--resume`` continues; ``best`` (the lowest
validation loss so far) is what ``eval`` and ``predict`` read.

Saving a checkpoint goes through five stages; a crash at any instant leaves ``run.json``
naming complete checkpoints only:

    1. "write"    fill checkpoints/.partial-step-0000400-PID/ and flush it  -> run.json: old
    2. "rename"   rename it to checkpoints/step-0000400, flush checkpoints/  -> run.json: old
    3. "pointer"  write run.json.partial, flush it                           -> run.json: old
    4. "switch"   os.replace it onto run.json, flush RUN/ (atomic)           -> run.json: new
    5. "prune"    remove the checkpoints run.json no longer names            -> run.json: new

What a crash leaves (a partial directory, a renamed checkpoint nothing names, a partial
pointer) is removed by ``clean``, which every training start runs. ``_stage`` is called after
each stage, so tests can crash the save there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from seqlab.checkpoint import CONFIG_FILE, TRAINER_FILE, fsync, json_ready, write_checkpoint
from seqlab.errors import CheckpointError, ConfigError

POINTER_FILE = "run.json"
CHECKPOINTS = "checkpoints"
METRICS_FILE = "metrics.jsonl"
FORMAT = 1
_CHECKPOINT_NAME = re.compile(r"step-\d{7}(-\d+)?")


def _stage(name: str) -> None:
    """Called after each stage of a save; a no-op that fault-injection tests replace."""


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """The checkpoint directory that ``path`` means: a run directory's ``which`` ("best" or
    "last") checkpoint, or ``path`` itself when it is one checkpoint directory.

    Raises:
        CheckpointError: the path does not exist, is a file, or holds no seqlab checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"run directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a file, not a run directory; give the directory --out named")
    run = RunDirectory(path)
    pointer = run.read_pointer()
    if pointer is not None:
        if pointer[which] is None:
            raise CheckpointError(f"the run in {str(path)!r} has no checkpoint yet: it stopped before its "
                                  "first evaluation")
        return run.path / pointer[which]
    if (path / CONFIG_FILE).is_file():
        return path
    raise CheckpointError(f"{str(path)!r} holds no seqlab run (no {POINTER_FILE}) nor a checkpoint "
                          f"(no {CONFIG_FILE})")


class RunDirectory:
    """The seqlab files of one run directory (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.pointer_path = self.path / POINTER_FILE
        self.checkpoints = self.path / CHECKPOINTS
        self.metrics_path = self.path / METRICS_FILE

    def read_pointer(self, *, verify: bool = True) -> dict[str, Any] | None:
        """run.json, checked; None when there is none. A run that has started but saved no
        checkpoint yet has ``last`` and ``best`` None. ``verify`` also checks that the
        checkpoints it names exist.

        Raises:
            ConfigError: a run.json that seqlab did not write (it is the user's).
            CheckpointError: seqlab's run.json is unreadable or names a checkpoint that is not there.
        """
        if not self.pointer_path.is_file():
            return None
        try:
            pointer = json.loads(self.pointer_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pointer = None
        if not isinstance(pointer, dict) or pointer.get("seqlab_run") != FORMAT:
            raise ConfigError(f"{str(self.path)!r} holds a {POINTER_FILE} that seqlab did not write; it is left "
                              "alone: choose another --out")
        for which in ("last", "best"):
            name = pointer.setdefault(which, None)
            if verify and name is not None and not (isinstance(name, str) and (self.path / name / CONFIG_FILE).is_file()):
                raise CheckpointError(f"{POINTER_FILE} in {str(self.path)!r} names a {which} checkpoint that "
                                      f"does not exist ({name!r}); --overwrite starts the run afresh")
        return pointer

    def has_checkpoint(self) -> bool:
        pointer = self.read_pointer(verify=False)
        return pointer is not None and pointer["last"] is not None

    # ---- starting ------------------------------------------------------------------------

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """``check``, then claim seqlab's names for a new run, and remove what a crashed save
        left. A new run (``overwrite`` included) starts with no checkpoint and an empty log: the
        old run's checkpoints are removed then, so nothing of two runs is ever mixed."""
        self.check(resume=resume, overwrite=overwrite)
        if not resume:
            self._write_pointer({"seqlab_run": FORMAT, "last": None, "best": None, "step": None})
            self.restart_log()
        self.clean()

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Check that a run may start (or resume) here, before any work is done; create the
        directory if needed, and nothing else.

        Rules: a new run goes into a missing directory or an existing one that holds no seqlab
        run (the user's files stay untouched beside it), unless a file there has one of
        seqlab's names; an existing run needs ``resume`` or ``overwrite``; resuming needs a run
        whose last checkpoint has a training state.

        Raises:
            ConfigError: a rule is broken, or the directory cannot be written.
            CheckpointError: the run to resume is broken.
        """
        where = str(self.path)
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--out {where!r} is a file; give a directory")
        pointer = self.read_pointer(verify=resume)          # a foreign run.json: ConfigError
        if resume:
            if pointer is None or pointer["last"] is None:
                raise CheckpointError(f"cannot resume: {where!r} holds no seqlab run with a checkpoint")
            if not (self.path / pointer["last"] / TRAINER_FILE).is_file():
                raise CheckpointError(f"cannot resume: the last checkpoint of {where!r} has no {TRAINER_FILE} "
                                      "(models that fit themselves are not resumed; train a new run)")
        elif pointer is not None and pointer["last"] is not None and not overwrite:
            raise ConfigError(f"{where!r} already holds a seqlab run; pass --resume to continue it or "
                              "--overwrite to replace it")
        elif (self.path / CONFIG_FILE).is_file() and pointer is None:
            raise ConfigError(f"{where!r} holds a checkpoint of an older seqlab (config.json at its top); "
                              "choose another --out")
        elif pointer is None:
            foreign = [name for name in (CHECKPOINTS, METRICS_FILE) if (self.path / name).exists()]
            if foreign:
                raise ConfigError(f"{where!r} holds a {foreign[0]!r} that seqlab did not write; "
                                  "choose another --out")
        self._check_writable()

    def _check_writable(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".seqlab-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise ConfigError(f"cannot write to {str(self.path)!r} ({error.strerror}); choose another --out") from None

    def clean(self) -> None:
        """Remove what an interrupted save left: partial checkpoint directories, a partial
        pointer, and checkpoints that run.json does not name. Touches nothing else."""
        partial_pointer = self.path / f"{POINTER_FILE}.partial"
        if partial_pointer.exists():
            partial_pointer.unlink()
        if not self.checkpoints.is_dir():
            return
        pointer = self.read_pointer(verify=False) or {}
        named = {Path(pointer[which]).name for which in ("last", "best") if pointer.get(which)}
        for child in self.checkpoints.iterdir():
            ours = child.name.startswith(".partial-") or _CHECKPOINT_NAME.fullmatch(child.name)
            if child.is_dir() and ours and child.name not in named:
                shutil.rmtree(child)

    # ---- saving --------------------------------------------------------------------------

    def save(self, model: nn.Module, artifacts: dict[str, Any], info: dict[str, Any],
             trainer_state: dict[str, Any] | None = None, *, best: bool = True) -> Path:
        """Save a checkpoint at ``info["step"]`` and make it the last one (and the best one when
        ``best``), in the five stages of the module docstring. Returns its directory."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        name = self._free_name(info["step"])
        partial = self.checkpoints / f".partial-{name}-{os.getpid()}"
        try:
            write_checkpoint(partial, model, artifacts, info, trainer_state)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        _stage("write")
        partial.rename(self.checkpoints / name)
        fsync(self.checkpoints)
        _stage("rename")
        previous = self.read_pointer(verify=False) or {}
        relative = f"{CHECKPOINTS}/{name}"
        self._write_pointer({"seqlab_run": FORMAT, "last": relative,
                             "best": relative if best or not previous.get("best") else previous["best"],
                             "step": info["step"]})
        self.clean()
        _stage("prune")
        return self.checkpoints / name

    def _write_pointer(self, pointer: dict[str, Any]) -> None:
        """Stages "pointer" and "switch": write run.json aside, then replace it atomically."""
        partial = self.path / f"{POINTER_FILE}.partial"
        partial.write_text(json.dumps(pointer, indent=2) + "\n")
        fsync(partial)
        _stage("pointer")
        os.replace(partial, self.pointer_path)
        fsync(self.path)
        _stage("switch")

    def _free_name(self, step: int) -> str:
        name, suffix = f"step-{step:07d}", 1
        while (self.checkpoints / name).exists():
            suffix += 1
            name = f"step-{step:07d}-{suffix}"
        return name

    # ---- the metrics log -----------------------------------------------------------------

    def log(self, row: dict[str, Any]) -> None:
        """Append one row to metrics.jsonl (flushed, so a crash loses at most this row)."""
        with open(self.metrics_path, "a", encoding="utf-8") as file:
            file.write(json.dumps(json_ready(row), allow_nan=False) + "\n")

    def restart_log(self, up_to_step: int | None = None) -> None:
        """Keep the rows of steps up to ``up_to_step`` (None: none), when a run resumes from or
        overwrites an earlier state; rewritten aside and switched atomically."""
        kept = []
        if up_to_step is not None and self.metrics_path.is_file():
            for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue               # a line cut by a crash
                if isinstance(row, dict) and row.get("step", 0) <= up_to_step:
                    kept.append(line)
        partial = self.path / f"{METRICS_FILE}.partial"
        partial.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(partial, self.metrics_path)
