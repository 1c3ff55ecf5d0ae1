"""Hidden Markov models (seqlab.classical.hmm) against hmmlearn, brute force and their own laws.

hmmlearn settings that make the comparison exact (its defaults otherwise differ from plain
maximum likelihood): ``init_params=""`` keeps the parameters we copy in; ``params`` names every
parameter so one ``fit(n_iter=1)`` is one full EM step; the Dirichlet priors stay at their
default 1.0 (no pseudo-counts, like our ``pseudo_count=0``); for Gaussians ``covars_prior=0``
(its default 1e-2 is added to every covariance entry) with ``means_weight=0`` and
``covars_weight=1`` (defaults: no prior on means, no extra denominator), and our
``reg_covar=0``. ``min_covar`` only enters hmmlearn's own initialisation, which is skipped.
Everything is compared in float64.
"""

import itertools
import math
import time

import numpy as np
import pytest
import torch
from hmmlearn import hmm as hmmlearn
from hypothesis import given, settings, strategies as st

import seqlab.classical.hmm  # noqa: F401  (registers "hmm" until seqlab.models imports it)
from seqlab import registry
from seqlab.classical.emissions import CategoricalEmission, GaussianEmission, GaussianMixtureEmission, Gaussians
from seqlab.classical.hmm import HiddenMarkovModel, stack_sequences
from seqlab.data.corpora import Corpus
from seqlab.errors import DataError, TrainingError
from seqlab.ops.chain import chain_path_score
from seqlab.tasks.lm import LanguageModeling

LENGTHS = [7, 3, 12, 1, 9]
N_STATES, N_SYMBOLS, N_FEATURES = 4, 6, 3


def close(actual, expected, rtol=1e-6, atol=1e-9):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64), rtol=rtol, atol=atol)


def parity_pair(kind: str, seed: int = 0):
    """The same random HMM in seqlab (float64) and hmmlearn, and sequences of LENGTHS."""
    rng = np.random.default_rng(seed)
    start, transitions = rng.dirichlet(np.ones(N_STATES)), rng.dirichlet(np.ones(N_STATES), N_STATES)
    if kind == "categorical":
        theirs = hmmlearn.CategoricalHMM(N_STATES, n_features=N_SYMBOLS, init_params="", params="ste", n_iter=1)
        theirs.emissionprob_ = rng.dirichlet(np.ones(N_SYMBOLS), N_STATES)
        ours = HiddenMarkovModel(CategoricalEmission(N_STATES, N_SYMBOLS)).double()
        ours.emission.set_probs(torch.tensor(theirs.emissionprob_))
        flat = rng.integers(0, N_SYMBOLS, (sum(LENGTHS), 1))
        sequences = list(torch.tensor(flat[:, 0]).split(LENGTHS))
    else:
        theirs = hmmlearn.GaussianHMM(N_STATES, covariance_type=kind, init_params="", params="stmc", n_iter=1,
                                      covars_prior=0.0)
        theirs.means_ = 2 * rng.normal(size=(N_STATES, N_FEATURES))
        if kind == "diag":
            theirs.covars_ = rng.uniform(0.5, 2.0, (N_STATES, N_FEATURES))
        else:
            factor = rng.normal(size=(N_STATES, N_FEATURES, N_FEATURES))
            theirs.covars_ = factor @ factor.transpose(0, 2, 1) + np.eye(N_FEATURES)
        ours = HiddenMarkovModel(GaussianEmission(N_STATES, N_FEATURES, kind, reg_covar=0.0)).double()
        ours.emission.set_parameters(torch.tensor(theirs.means_), torch.tensor(theirs._covars_))
        flat = 2 * rng.normal(size=(sum(LENGTHS), N_FEATURES))
        sequences = list(torch.tensor(flat).split(LENGTHS))
    theirs.startprob_, theirs.transmat_ = start, transitions
    ours.set_parameters(torch.tensor(start), torch.tensor(transitions))
    observations, mask = stack_sequences(sequences)
    return ours, theirs, flat, observations, mask


def emission_parameters(model: HiddenMarkovModel) -> list[torch.Tensor]:
    emission = model.emission
    if isinstance(emission, CategoricalEmission):
        return [emission.log_probs().exp()]
    return [emission.means, emission.covariances()]


def hmmlearn_emission_parameters(theirs) -> list[np.ndarray]:
    if isinstance(theirs, hmmlearn.CategoricalHMM):
        return [theirs.emissionprob_]
    return [theirs.means_, theirs._covars_]


KINDS = ["categorical", "diag", "full"]


@pytest.mark.parametrize("kind", KINDS)
def test_log_likelihood_posteriors_and_viterbi_match_hmmlearn(kind):
    ours, theirs, flat, observations, mask = parity_pair(kind)
    with torch.no_grad():
        log_likelihood = ours.log_likelihood(observations, mask)
    start = np.cumsum([0] + LENGTHS)
    close(log_likelihood, [theirs.score(flat[a:b]) for a, b in zip(start[:-1], start[1:])], atol=0)
    close(ours.posteriors(observations, mask)[mask], theirs.predict_proba(flat, LENGTHS))
    paths, scores = ours.viterbi(observations, mask)
    best_log_prob, best_states = theirs.decode(flat, LENGTHS, algorithm="viterbi")
    assert paths[mask].tolist() == best_states.tolist()
    close(scores.sum(), best_log_prob, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_one_em_step_matches_hmmlearn(kind):
    ours, theirs, flat, observations, mask = parity_pair(kind, seed=1)
    before = ours.em_step(observations, mask)
    theirs.fit(flat, LENGTHS)
    close(before, theirs.monitor_.history[0], atol=0)
    close(ours.log_init().exp(), theirs.startprob_)
    close(ours.log_transitions().exp(), theirs.transmat_)
    for mine, their in zip(emission_parameters(ours), hmmlearn_emission_parameters(theirs)):
        close(mine, their)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_gaussian_mixture_emissions_match_hmmlearn(covariance_type):
    rng = np.random.default_rng(2)
    n_components = 2
    theirs = hmmlearn.GMMHMM(N_STATES, n_mix=n_components, covariance_type=covariance_type, init_params="")
    theirs.n_features = N_FEATURES
    theirs.startprob_ = rng.dirichlet(np.ones(N_STATES))
    theirs.transmat_ = rng.dirichlet(np.ones(N_STATES), N_STATES)
    theirs.weights_ = rng.dirichlet(np.ones(n_components), N_STATES)
    theirs.means_ = 2 * rng.normal(size=(N_STATES, n_components, N_FEATURES))
    if covariance_type == "diag":
        theirs.covars_ = rng.uniform(0.5, 2.0, (N_STATES, n_components, N_FEATURES))
    else:
        factor = rng.normal(size=(N_STATES, n_components, N_FEATURES, N_FEATURES))
        theirs.covars_ = factor @ factor.swapaxes(-1, -2) + np.eye(N_FEATURES)
    ours = HiddenMarkovModel(GaussianMixtureEmission(N_STATES, n_components, N_FEATURES, covariance_type)).double()
    ours.set_parameters(torch.tensor(theirs.startprob_), torch.tensor(theirs.transmat_))
    ours.emission.set_parameters(torch.tensor(theirs.weights_), torch.tensor(theirs.means_), torch.tensor(theirs.covars_))
    flat = 2 * rng.normal(size=(sum(LENGTHS), N_FEATURES))
    observations, mask = stack_sequences(list(torch.tensor(flat).split(LENGTHS)))
    close(ours.log_likelihood(observations, mask).sum().detach(), theirs.score(flat, LENGTHS), atol=0)
    close(ours.posteriors(observations, mask)[mask], theirs.predict_proba(flat, LENGTHS))


def random_model(kind: str, seed: int) -> HiddenMarkovModel:
    torch.manual_seed(seed)
    emission = {
        "categorical": lambda: CategoricalEmission(3, 4),
        "diag": lambda: GaussianEmission(2, 2, "diag", reg_covar=0.0),
        "full": lambda: GaussianEmission(2, 2, "full", reg_covar=0.0),
        "mixture": lambda: GaussianMixtureEmission(2, 2, 2, "diag", reg_covar=0.0),
    }[kind]()
    return HiddenMarkovModel(emission).double()


def start_from_the_data(model: HiddenMarkovModel, observations: torch.Tensor, mask: torch.Tensor,
                        seed: int) -> HiddenMarkovModel:
    """Gaussians as wide as the data, with means scattered around its mean: every state then
    takes a fair share of the points in the first steps (a Gaussian far from the data would get
    the tail of one point and collapse onto it). Categorical emissions are left as they are."""
    gaussians = getattr(model.emission, "components", model.emission)
    if not isinstance(gaussians, Gaussians):
        return model
    values = observations[mask]                                              # (N, D)
    noise = torch.randn(gaussians.means.shape, generator=torch.Generator().manual_seed(seed), dtype=values.dtype)
    covariance = torch.cov(values.T)
    if gaussians.covariance_type == "diag":
        covariance = covariance.diagonal()
    gaussians.set_parameters(values.mean(0) + 0.5 * values.std(0) * noise,
                             covariance.expand(*gaussians.shape, *covariance.shape))
    return model


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["categorical", "diag", "full", "mixture"]), seed=st.integers(0, 10_000),
       lengths=st.lists(st.integers(1, 30), min_size=1, max_size=4))
def test_em_never_lowers_the_log_likelihood(kind, seed, lengths):
    if kind != "categorical":        # unregularised Gaussians need enough points not to collapse
        lengths = [length + 40 for length in lengths]
    # Data from another random model of the same kind, so EM has something to find.
    source = random_model(kind, seed + 1)
    observations, mask = stack_sequences(
        [source.sample(1, length, torch.Generator().manual_seed(seed))[1][0] for length in lengths])
    model = start_from_the_data(random_model(kind, seed), observations, mask, seed)
    history = []
    try:
        for _ in range(6):
            history.append(float(model.em_step(observations, mask)))
        history.append(float(model.log_likelihood(observations, mask).sum().detach()))
    except TrainingError:
        assert kind == "full"           # a singular covariance: the collapse below, caught early
    # A Gaussian that collapses onto a point sends the likelihood to +inf (then NaN): the
    # property holds up to there. Starting from the data's spread, no Gaussian collapses in the
    # first steps, so every example checks at least two consecutive EM steps.
    finite = list(itertools.takewhile(math.isfinite, history))
    assert len(finite) >= 3, history
    for before, after in itertools.pairwise(finite):
        assert after >= before - 1e-9 * max(1.0, abs(before)), history


def test_probabilities_sum_to_one():
    model = random_model("categorical", 3)
    observations, mask = stack_sequences([torch.randint(0, 4, (n,)) for n in (5, 9, 2)])
    model.fit(observations, mask, n_iter=3)
    close(model.log_init().exp().sum(), 1.0)
    close(model.log_transitions().exp().sum(-1), torch.ones(3))
    close(model.emission.log_probs().exp().sum(-1), torch.ones(3))
    close(model.posteriors(observations, mask).sum(-1), mask.double())
    # Brute force: p(x) summed over every sequence of 4 symbols is one.
    every = torch.tensor(list(itertools.product(range(4), repeat=4)))
    close(torch.logsumexp(model.log_likelihood(every).detach(), dim=0), 0.0, atol=1e-12)
    mixture = random_model("mixture", 4)
    close(mixture.emission.log_weights().exp().sum(-1), torch.ones(2))


def test_sampling_frequencies_match_the_parameters():
    model = random_model("categorical", 5)
    states, symbols = model.sample(6000, 5, torch.Generator().manual_seed(0))
    n_states, n_symbols = 3, 4
    start = torch.bincount(states[:, 0], minlength=n_states) / len(states)
    pairs = torch.bincount((states[:, :-1] * n_states + states[:, 1:]).flatten(), minlength=n_states ** 2)
    pairs = pairs.view(n_states, n_states).double()
    emitted = torch.bincount((states * n_symbols + symbols).flatten(), minlength=n_states * n_symbols)
    emitted = emitted.view(n_states, n_symbols).double()
    close(start, model.log_init().exp(), rtol=0, atol=0.03)
    close(pairs / pairs.sum(-1, keepdim=True), model.log_transitions().exp(), rtol=0, atol=0.03)
    close(emitted / emitted.sum(-1, keepdim=True), model.emission.log_probs().exp(), rtol=0, atol=0.03)
    gaussian = random_model("full", 6)
    states, values = gaussian.sample(3000, 4, torch.Generator().manual_seed(1))
    for state in range(2):
        chosen = values[states == state]
        close(chosen.mean(0), gaussian.emission.means[state], rtol=0, atol=0.1)
        close(torch.cov(chosen.T), gaussian.emission.covariances()[state], rtol=0.1, atol=0.1)


def test_batched_em_equals_one_batch():
    observations, mask = stack_sequences([torch.randint(0, 4, (n,)) for n in (5, 9, 2, 7, 3)])
    whole, batched = random_model("categorical", 7), random_model("categorical", 7)
    close(whole.em_step(observations, mask), batched.em_step(observations, mask, batch_size=2))
    for mine, theirs in zip(whole.state_dict().values(), batched.state_dict().values()):
        close(mine, theirs, rtol=1e-12, atol=1e-12)


def test_supervised_estimation_counts_by_hand():
    model = HiddenMarkovModel(CategoricalEmission(2, 3)).double()
    states = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]])
    symbols = torch.tensor([[0, 2, 2, 1], [2, 1, 0, 0]])
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    model.fit_supervised(symbols, states, mask)
    close(model.log_init().exp(), [0.5, 0.5])
    # transitions 0->1, 1->1, 1->0 in the first sequence; 1->1, 1->0 in the second
    close(model.log_transitions().exp(), [[0.0, 1.0], [0.5, 0.5]])
    # state 0 emits 0, 1, 0; state 1 emits 2, 2, 2, 1
    close(model.emission.log_probs().exp(), [[2 / 3, 1 / 3, 0.0], [0.0, 0.25, 0.75]])


def test_supervised_estimation_recovers_the_generating_model():
    truth = random_model("diag", 8)
    states, values = truth.sample(10_000, 8, torch.Generator().manual_seed(2))
    model = random_model("diag", 9).fit_supervised(values, states)
    close(model.log_transitions().exp(), truth.log_transitions().exp(), rtol=0, atol=0.03)
    close(model.emission.means, truth.emission.means, rtol=0, atol=0.05)
    close(model.emission.covariances(), truth.emission.covariances(), rtol=0.05, atol=0.05)


@pytest.mark.slow
def test_stable_at_length_100000():
    # float32 over one sequence of 100,000 symbols against hmmlearn's float64 log-space results.
    model = random_model("categorical", 10).float()
    symbols = torch.randint(0, 4, (1, 100_000), generator=torch.Generator().manual_seed(3))
    theirs = hmmlearn.CategoricalHMM(3, n_features=4)
    theirs.startprob_ = model.log_init().exp().detach().double().numpy()
    theirs.transmat_ = model.log_transitions().exp().detach().double().numpy()
    theirs.emissionprob_ = model.emission.log_probs().exp().detach().double().numpy()
    flat = symbols.T.numpy()
    posteriors = model.forward_backward(symbols)
    assert posteriors.log_partition.dtype == torch.float32
    close(posteriors.log_partition, [theirs.score(flat)], rtol=1e-6, atol=0)
    close(posteriors.unary[0], theirs.predict_proba(flat), rtol=0, atol=1e-5)
    path, score = model.viterbi(symbols)
    best_log_prob, best_path = theirs.decode(flat)
    # float32 cannot separate paths whose scores differ by less than its rounding over long
    # stretches (and discrete sequences have exact ties): the path found must score the best
    # to float32 precision, and agree almost everywhere.
    exact_score = chain_path_score(*(x.double() for x in (model.log_init(), model.log_transitions(),
                                                          model.log_emissions(symbols)[0])), path)
    close(exact_score, [best_log_prob], rtol=1e-7, atol=0)
    close(score, [best_log_prob], rtol=1e-6, atol=0)
    assert (path[0].numpy() == best_path).mean() > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda_like_on_cpu():
    model = random_model("full", 11)
    _, values = model.sample(8, 50, torch.Generator().manual_seed(4))
    on_cuda = random_model("full", 11).cuda()
    close(on_cuda.log_likelihood(values.cuda()).cpu().detach(), model.log_likelihood(values).detach(), atol=1e-9)
    close(on_cuda.em_step(values.cuda()).cpu(), model.em_step(values))
    close(on_cuda.emission.means.cpu(), model.emission.means)


@pytest.mark.parametrize("kind, observations, mask, message", [
    ("categorical", torch.tensor([[0, 1, 2], [1, 9, 0]]), None, r"symbol 9 at position 1 of sequence 1 is outside \[0, 4\)"),
    ("categorical", torch.tensor([[0, 1, -1]]), None, r"symbol -1 at position 2 of sequence 0"),
    ("categorical", torch.tensor([[0.0, 1.0]]), None, "must be integer symbols"),
    ("categorical", torch.tensor([[0, 1], [1, 1]]), torch.tensor([[True, True], [False, False]]), "sequence 1 is empty"),
    ("categorical", torch.tensor([[0, 1, 2]]), torch.ones(1, 4, dtype=torch.bool), r"mask has shape \(1, 4\)"),
    ("categorical", torch.zeros(2, 0, dtype=torch.long), None, "no positions"),
    ("diag", torch.tensor([[[0.0, 1.0], [math.nan, 0.0]]]), None, "position 1 of sequence 0 is not finite"),
    ("diag", torch.zeros(1, 3, 5), None, r"should have shape \(1, 3, 2\)"),
])
def test_bad_input_raises_a_data_error_naming_the_place(kind, observations, mask, message):
    model = random_model(kind, 12)
    for method in (model.log_likelihood, model.posteriors, model.viterbi, model.em_step):
        with pytest.raises(DataError, match=message):
            method(observations, mask)


def test_padding_may_hold_anything():
    model = random_model("diag", 13)
    values = torch.randn(2, 4, 2, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    padded = values.clone()
    padded[1, 2:] = math.nan
    close(model.log_likelihood(padded, mask).detach(), model.log_likelihood(values, mask).detach(), atol=0)
    symbols = torch.tensor([[0, 1, 2], [3, -1, 99]])             # padding out of range is ignored
    categorical = random_model("categorical", 13)
    close(categorical.log_likelihood(symbols, torch.tensor([[1, 1, 1], [1, 0, 0]]).bool()).detach()[1],
          categorical.log_likelihood(symbols[1:, :1]).detach()[0], atol=0)


def test_supervised_and_stacking_reject_bad_states_and_empty_sequences():
    model = random_model("categorical", 14)
    with pytest.raises(DataError, match=r"state 3 at position 1 of sequence 0 is outside \[0, 3\)"):
        model.fit_supervised(torch.tensor([[0, 1]]), torch.tensor([[0, 3]]))
    with pytest.raises(DataError, match="sequence 2 is empty"):
        stack_sequences([torch.tensor([1, 2]), torch.tensor([3]), torch.tensor([], dtype=torch.long)])


def letters_task() -> LanguageModeling:
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(0, 3, (4000,), generator=generator).cumsum(0) % 6
    return LanguageModeling(Corpus("letters", "".join("abcdef"[i] for i in index.tolist()), None), "char", context=16)


def test_language_model_predicts_the_hmm_conditionals():
    # forward(tokens)[:, t] must be log p(x_{t+1} | x_{<=t}) = log p(x_{<=t+1}) - log p(x_{<=t}).
    task = letters_task()
    model = registry.build_for_task("hmm", task.model_defaults(), {"n_states": 4, "n_iter": 5}, task="lm").double()
    model.fit(task)
    assert len(model.hmm.history) >= 2
    assert all(later >= earlier for earlier, later in itertools.pairwise(model.hmm.history))
    tokens = task.splits["valid"].ids[:6][None]
    with torch.no_grad():
        log_probs = torch.log_softmax(model(tokens), dim=-1)[0]               # (T, V)
        close(log_probs.exp().sum(-1), torch.ones(6))
        for t in range(5):
            prefix = model.hmm.log_likelihood(tokens[:, :t + 1])
            continued = model.hmm.log_likelihood(torch.cat([tokens[:, :t + 1].expand(task.vocab_size, -1),
                                                            torch.arange(task.vocab_size)[:, None]], dim=1))
            close(log_probs[t], continued - prefix, rtol=1e-9, atol=1e-12)
    assert math.isfinite(task.evaluate(model, "valid")["loss"])


# --- Stopping at a deadline ------------------------------------------------------------------------


def assert_same_state(first: torch.nn.Module, second: torch.nn.Module) -> None:
    for (name, mine), theirs in zip(first.state_dict().items(), second.state_dict().values()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0, msg=name)


def test_baum_welch_stops_at_a_past_deadline_after_one_em_step():
    generator = torch.Generator().manual_seed(15)
    observations, mask = stack_sequences([torch.randint(0, 4, (n,), generator=generator) for n in (5, 9, 2, 7)])
    stopped = random_model("categorical", 15).fit(observations, mask, n_iter=10, tol=0.0,
                                                  deadline=time.monotonic() - 1)
    assert stopped.stopped_by == "deadline" and len(stopped.history) == 1
    one_step = random_model("categorical", 15)
    one_step.em_step(observations, mask)
    assert_same_state(stopped, one_step)
    assert all(torch.isfinite(parameter).all() for parameter in stopped.parameters())
    close(stopped.log_transitions().exp().sum(-1), torch.ones(3))


def test_baum_welch_with_a_far_deadline_runs_as_without_one():
    observations, mask = stack_sequences([torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(16))
                                          for n in (6, 3, 8)])
    unlimited = random_model("categorical", 16).fit(observations, mask, n_iter=8, tol=0.0)
    far = random_model("categorical", 16).fit(observations, mask, n_iter=8, tol=0.0,
                                              deadline=time.monotonic() + 3600)
    assert unlimited.stopped_by == far.stopped_by == "max_iterations" and len(far.history) == 8
    assert far.history == unlimited.history
    assert_same_state(far, unlimited)


def test_language_model_fit_stops_at_a_deadline_and_reports_progress(capsys):
    task = letters_task()
    overrides = {"n_states": 4, "n_iter": 5, "tol": 0.0}

    def fitted(**options):
        return registry.build_for_task("hmm", task.model_defaults(), overrides, task="lm").double().fit(task, **options)

    stopped = fitted(deadline=time.monotonic() - 1)
    assert stopped.hmm.stopped_by == "deadline" and len(stopped.hmm.history) == 1
    assert all(torch.isfinite(parameter).all() for parameter in stopped.parameters())
    assert math.isfinite(task.evaluate(stopped, "valid")["loss"])
    unlimited, far = fitted(progress=True), fitted(deadline=time.monotonic() + 3600)
    assert far.hmm.stopped_by == unlimited.hmm.stopped_by == "max_iterations"
    assert_same_state(far, unlimited)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"hmm EM iteration {i}" for i in range(1, 6)]
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_iter'"):
        fitted(n_iter=3)
