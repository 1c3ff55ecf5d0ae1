"""seqlab: sequence models from Markov chains to Mamba under one API.

    import seqlab
    task = seqlab.LanguageModeling(seqlab.load_corpus(), tokenizer="char", context=128)
    model = seqlab.build("lstm", vocab_size=task.vocab_size)
    seqlab.fit(model, task, steps=500)
    print(task.evaluate(model, "test"))

The names below are imported when first used, so ``import seqlab`` (and ``seqlab --help``)
does not load torch. Comparisons: ``from seqlab.compare import compare`` (the module and the
function share a name, so the package does not re-export it).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_PUBLIC = {
    "LanguageModeling": ("seqlab.tasks.lm", "LanguageModeling"),
    "TrainConfig": ("seqlab.train_config", "TrainConfig"),
    "Trainer": ("seqlab.training", "Trainer"),
    "build": ("seqlab.registry", "build"),
    "fit": ("seqlab.training", "fit"),
    "get_task": ("seqlab.tasks.base", "get_task"),
    "load": ("seqlab.checkpoint", "load_checkpoint"),
    "load_corpus": ("seqlab.data.corpora", "load_corpus"),
    "models": ("seqlab.registry", "entries"),
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'seqlab' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
