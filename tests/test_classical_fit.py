"""One fit signature for every model that fits itself: ``fit(task, *, progress=False,
deadline=None) -> self``. Closed-form fits accept ``progress`` and ``deadline`` and ignore them;
an unknown option is Python's TypeError. (The iterative fits' deadlines are tested beside them:
Baum-Welch in test_hmm.py, L-BFGS / OWL-QN in test_feature_crf.py.)"""

import inspect
import time

import pytest
import torch

from seqlab import registry
from seqlab.classical.feature_crf import FeatureCRFTagger
from seqlab.classical.hmm import HMMLanguageModel
from seqlab.classical.hmm_tagger import HMMTagger
from seqlab.classical.markov import MarkovChain
from seqlab.classical.ngram import NGramLM
from seqlab.data.conll import TaggedSentence
from seqlab.tasks.tagging import Tagging

from helpers import tiny_task

FITTED = {("lm", "ngram"): NGramLM, ("lm", "markov"): MarkovChain, ("lm", "hmm"): HMMLanguageModel,
          ("tag", "hmm"): HMMTagger, ("tag", "crf"): FeatureCRFTagger}


def test_every_model_that_fits_itself_has_the_one_signature():
    fitted = {(entry.task, entry.name): entry.model_class for entry in registry.entries() if entry.trains == "fit"}
    assert FITTED.items() <= fitted.items()
    for model_class in fitted.values():
        parameters = list(inspect.signature(model_class.fit).parameters.values())
        assert [(p.name, p.kind, p.default) for p in parameters] == [
            ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
            ("task", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
            ("progress", inspect.Parameter.KEYWORD_ONLY, False),
            ("deadline", inspect.Parameter.KEYWORD_ONLY, None),
        ], model_class.__name__
        assert inspect.signature(model_class.fit).return_annotation == "Self", model_class.__name__


@pytest.fixture(scope="module")
def tasks() -> dict[str, object]:
    tagged = [TaggedSentence(("the", "dog", "ran"), ("D", "N", "V")), TaggedSentence(("a", "cat"), ("D", "N")),
              TaggedSentence(("Dogs", "ran", "far"), ("N", "V", "A"))]
    return {"lm": tiny_task(characters=3_000), "tag": Tagging({"train": tagged, "valid": tagged, "test": tagged})}


def build(key: tuple[str, str], tasks: dict[str, object]) -> torch.nn.Module:
    task, name = key
    overrides = {"n_buckets": 256} if name == "crf" else {"n_states": 3, "n_iter": 2} if key == ("lm", "hmm") else {}
    return registry.build_for_task(name, tasks[task].model_defaults(), overrides, task=task)


@pytest.mark.parametrize("key", [("lm", "ngram"), ("lm", "markov"), ("tag", "hmm")])
def test_closed_form_fits_ignore_progress_and_deadline(key, tasks, capsys):
    task = tasks[key[0]]
    plain = build(key, tasks)
    assert plain.fit(task) is plain
    hurried = build(key, tasks).fit(task, progress=True, deadline=time.monotonic() - 1)
    assert capsys.readouterr().err == ""
    expected = plain.state_dict()
    assert hurried.state_dict().keys() == expected.keys()
    for name, tensor in hurried.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("key", list(FITTED))
def test_an_unknown_fit_option_is_a_type_error(key, tasks):
    with pytest.raises(TypeError, match="unexpected keyword argument 'steps'"):
        build(key, tasks).fit(tasks[key[0]], steps=10)
