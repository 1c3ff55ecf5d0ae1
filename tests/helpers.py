"""Small tasks and models shared by the tests."""

import torch

from seqlab import registry
from seqlab.data.corpora import Corpus, builtin_corpus
from seqlab.tasks.lm import LanguageModeling


def tiny_task(characters: int = 20_000, context: int = 16, tokenizer: str = "char") -> LanguageModeling:
    text = builtin_corpus().text[:characters]
    return LanguageModeling(Corpus("tiny", text, None), tokenizer, context)


def tiny_lstm(task: LanguageModeling, dropout: float = 0.0, seed: int = 0):
    torch.manual_seed(seed)
    return registry.build_for_task("lstm", task.model_defaults(), {"d_model": 32, "n_layers": 2, "dropout": dropout})


def weights(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
