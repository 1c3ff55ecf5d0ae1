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


def write_tone_digits(directory, speakers=("alice", "bob"), indices=range(10), sample_rate=8000):
    """A miniature FSDD in ``directory``: ``{digit}_{speaker}_{index}.wav`` files, 16-bit mono,
    each digit a 0.2 s tone pair of its own pitches (a speaker shifts them a little), so a
    recogniser learns it in a few hundred steps. Returns the directory."""
    import math
    import struct
    import wave
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = int(0.2 * sample_rate)
    for s, speaker in enumerate(speakers):
        for digit in range(10):
            low, high = 300 + 150 * digit + 10 * s, 2600 - 120 * digit
            for index in indices:
                phase = 0.3 * index
                samples = [0.4 * math.sin(2 * math.pi * low * t / sample_rate + phase)
                           + 0.2 * math.sin(2 * math.pi * high * t / sample_rate) for t in range(n)]
                with wave.open(str(directory / f"{digit}_{speaker}_{index}.wav"), "wb") as file:
                    file.setnchannels(1)
                    file.setsampwidth(2)
                    file.setframerate(sample_rate)
                    file.writeframes(struct.pack(f"<{n}h", *(round(32767 * x) for x in samples)))
    return directory


def chunks(sizes: list[int], total: int) -> list[tuple[int, int]]:
    """Consecutive (start, end) pieces of 0..total with the drawn sizes, the last taking the rest."""
    pieces, start = [], 0
    for size in sizes:
        if start >= total:
            break
        pieces.append((start, min(total, start + size)))
        start = pieces[-1][1]
    if start < total:
        pieces.append((start, total))
    return pieces
