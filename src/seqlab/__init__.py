"""seqlab: sequence models from Markov chains to Mamba under one API.

    import seqlab
    task = seqlab.LanguageModeling(seqlab.load_corpus(), tokenizer="char", context=128)
    model = seqlab.build("lstm", vocab_size=task.vocab_size)
    seqlab.fit(model, task, steps=500)
    print(task.evaluate(model, "test"))
"""

__version__ = "0.1.0"

from seqlab.checkpoint import load_checkpoint as load
from seqlab.data.corpora import load_corpus
from seqlab.registry import build, entries as models
from seqlab.tasks.lm import LanguageModeling
from seqlab.training import TrainConfig, Trainer, fit

__all__ = [
    "LanguageModeling", "TrainConfig", "Trainer", "build", "compare", "fit", "load",
    "load_corpus", "models",
]


def __getattr__(name: str):
    # compare pulls in matplotlib; import it only when asked for.
    if name == "compare":
        from seqlab.compare import compare

        return compare
    raise AttributeError(f"module 'seqlab' has no attribute {name!r}")
