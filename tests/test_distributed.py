"""DDP through torchrun: two CPU processes take the same steps as one on the whole batch."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from seqlab.data.corpora import builtin_corpus

TRAIN_ARGS = ["lstm", "--context", "16", "--set", "d_model=32", "--set", "dropout=0", "--steps", "6",
              "--batch-size", "8", "--eval-every", "3", "--device", "cpu", "--no-progress"]


def run(command, tmp_path):
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]


@pytest.mark.slow
def test_two_process_ddp_equals_single_process(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(builtin_corpus().text[:20_000])
    common = TRAIN_ARGS + ["--data", str(data)]
    run([sys.executable, "-m", "seqlab.cli", "train", *common, "--out", str(tmp_path / "single")], tmp_path)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "seqlab.cli", "train", *common, "--out", str(tmp_path / "ddp")], tmp_path)
    single = load_file(tmp_path / "single" / "model.safetensors")
    ddp = load_file(tmp_path / "ddp" / "model.safetensors")
    assert single.keys() == ddp.keys()
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-5, atol=1e-5)
    for run_name in ("single", "ddp"):
        assert json.loads((tmp_path / run_name / "config.json").read_text())["step"] == 6
