"""Small tasks and models shared by the tests."""

import torch

from seqlab import registry
from seqlab.cli import main
from seqlab.data.corpora import Corpus, builtin_corpus
from seqlab.tasks.lm import LanguageModeling


def tiny_task(characters: int = 20_000, context: int = 16, tokenizer: str = "char") -> LanguageModeling:
    text = builtin_corpus().text[:characters]
    return LanguageModeling(Corpus("tiny", text, None), tokenizer, context)


def tiny_lstm(task: LanguageModeling, dropout: float = 0.0, seed: int = 0):
    torch.manual_seed(seed)
    return registry.build("lstm", task, d_model=32, n_layers=2, dropout=dropout)


def weights(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


# Command-line options for a tiny, fast LM run.
TINY = ["--context", "16", "--set", "d_model=16", "--set", "n_layers=1", "--no-progress"]


def fails_cleanly(capsys, argv, message):
    """The command exits 2 with exactly one line on stderr containing ``message``."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seqlab: error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err
