"""The linear-chain CRF layer (seqlab.classical.crf) against pytorch-crf and brute force.

pytorch-crf (``torchcrf.CRF``) scores a tag path the same way: ``start_transitions``,
``transitions[i, j]`` for i -> j, ``end_transitions``; we copy those into ours.
"""

import itertools
import math

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st
from torchcrf import CRF

from seqlab.classical.crf import LinearChainCRF, TransitionConstraints, bio_constraints
from seqlab.errors import ConfigError, DataError

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def pair(n_tags: int = 5, seed: int = 0) -> tuple[LinearChainCRF, CRF]:
    torch.manual_seed(seed)
    theirs = CRF(n_tags, batch_first=True).double()
    ours = LinearChainCRF(n_tags).double()
    with torch.no_grad():
        ours.start_scores.copy_(theirs.start_transitions)
        ours.end_scores.copy_(theirs.end_transitions)
        ours.transition_scores.copy_(theirs.transitions)
    return ours, theirs


def batch(seed: int = 1, n_tags: int = 5, lengths=(7, 3, 1, 6), scale: float = 1.0):
    generator = torch.Generator().manual_seed(seed)
    length = max(lengths)
    emissions = scale * torch.randn(len(lengths), length, n_tags, generator=generator, dtype=torch.float64)
    tags = torch.randint(0, n_tags, (len(lengths), length), generator=generator)
    mask = torch.arange(length) < torch.tensor(lengths)[:, None]
    return emissions, tags, mask


def test_log_likelihood_and_gradients_match_pytorch_crf():
    ours, theirs = pair()
    emissions, tags, mask = batch()
    mine = emissions.clone().requires_grad_()
    their = emissions.clone().requires_grad_()
    our_log_likelihood = ours(mine, tags, mask)
    their_log_likelihood = theirs(their, tags, mask, reduction="none")
    torch.testing.assert_close(our_log_likelihood, their_log_likelihood, rtol=1e-10, atol=1e-10)
    our_log_likelihood.sum().backward()
    their_log_likelihood.sum().backward()
    torch.testing.assert_close(mine.grad, their.grad, rtol=1e-10, atol=1e-12)
    for name, peer in (("start_scores", "start_transitions"), ("end_scores", "end_transitions"),
                       ("transition_scores", "transitions")):
        torch.testing.assert_close(getattr(ours, name).grad, getattr(theirs, peer).grad, rtol=1e-10, atol=1e-12)


def test_viterbi_matches_pytorch_crf():
    ours, theirs = pair(seed=2)
    emissions, _, mask = batch(seed=3, lengths=(9, 9, 4, 1, 30))
    paths, scores = ours.decode(emissions, mask)
    assert [path[:length].tolist() for path, length in zip(paths, mask.sum(1))] == theirs.decode(emissions, mask)
    assert not paths[~mask].any()
    torch.testing.assert_close(scores, ours.path_score(emissions, paths, mask), rtol=1e-12, atol=1e-12)


def test_gradcheck_float64():
    crf = LinearChainCRF(4, bio_constraints(["O", "B-X", "I-X", "B-Y"])).double()
    emissions, tags, mask = batch(seed=4, n_tags=4, lengths=(5, 2, 4))
    tags = torch.zeros_like(tags)                                     # all "O": an allowed gold path
    parameters = {name: value.detach().clone().requires_grad_() for name, value in crf.named_parameters()}

    def log_likelihood(emissions, start, end, transitions):
        values = {"start_scores": start, "end_scores": end, "transition_scores": transitions}
        return torch.func.functional_call(crf, values, (emissions, tags, mask))

    inputs = (emissions.requires_grad_(), parameters["start_scores"], parameters["end_scores"],
              parameters["transition_scores"])
    assert torch.autograd.gradcheck(log_likelihood, inputs, eps=1e-6, atol=1e-7)


def allowed_paths(constraints: TransitionConstraints, length: int) -> list[tuple[int, ...]]:
    starts, transitions, ends = constraints
    return [path for path in itertools.product(range(len(starts)), repeat=length)
            if starts[path[0]] and ends[path[-1]] and all(transitions[a, b] for a, b in itertools.pairwise(path))]


def brute_force(crf: LinearChainCRF, emissions: torch.Tensor, length: int):
    """log Z over the allowed paths only, and the best allowed path, for one sequence."""
    constraints = TransitionConstraints(crf.allowed_starts, crf.allowed_transitions, crf.allowed_ends)
    paths = torch.tensor(allowed_paths(constraints, length))
    scores = crf.start_scores[paths[:, 0]] + crf.end_scores[paths[:, -1]] + emissions[torch.arange(length), paths].sum(1)
    scores = scores + crf.transition_scores[paths[:, :-1], paths[:, 1:]].sum(1)
    return torch.logsumexp(scores, dim=0), paths[scores.argmax()]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), lengths=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       scale=st.sampled_from([1.0, 20.0]), scheme=st.sampled_from(["BIO", "BIOES"]))
def test_constrained_log_partition_and_viterbi_equal_brute_force_over_allowed_paths(seed, lengths, scale, scheme):
    tags = ["O", "B-X", "I-X"] if scheme == "BIO" else ["O", "B-X", "I-X", "E-X", "S-X"]
    crf = LinearChainCRF(len(tags), bio_constraints(tags, scheme)).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in crf.parameters():
            parameter.normal_(generator=generator)
    emissions, _, mask = batch(seed, len(tags), lengths, scale)
    log_z, (paths, scores) = crf.log_partition(emissions, mask), crf.decode(emissions, mask)
    for b, length in enumerate(lengths):
        expected_log_z, best = brute_force(crf, emissions[b].detach(), length)
        torch.testing.assert_close(log_z[b], expected_log_z, rtol=1e-9, atol=1e-9)
        assert paths[b, :length].tolist() == best.tolist()
    assert torch.isfinite(scores).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([1.0, 10.0, 100.0]))
def test_bio_constrained_viterbi_never_outputs_a_forbidden_transition(seed, scale):
    constraints = bio_constraints(TAGS)
    crf = LinearChainCRF(len(TAGS), constraints)
    emissions, _, mask = batch(seed, len(TAGS), lengths=(12, 5, 1, 9), scale=scale)
    paths, _ = crf.decode(emissions.float(), mask)
    assume(any(TAGS[tag].startswith("I-") for tag in paths[mask].tolist()))    # only cases that exercise the rule
    for path, length in zip(paths.tolist(), mask.sum(1).tolist()):
        path = path[:length]
        names = [TAGS[tag] for tag in path]
        assert not names[0].startswith("I-"), names
        for previous, following in itertools.pairwise(names):
            assert not following.startswith("I-") or previous[2:] == following[2:] != "", names
        assert constraints.allowed_starts[path[0]] and constraints.allowed_ends[path[-1]]


def test_marginals_sum_to_one_equal_the_gradient_of_log_z_and_respect_constraints():
    crf = LinearChainCRF(len(TAGS), bio_constraints(TAGS)).double()
    emissions, _, mask = batch(seed=5, lengths=(6, 2, 4))
    marginals = crf.marginals(emissions, mask)
    torch.testing.assert_close(marginals.sum(-1), mask.double(), rtol=0, atol=1e-12)
    leaf = emissions.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(crf.log_partition(leaf, mask).sum(), leaf)
    torch.testing.assert_close(marginals, gradient, rtol=1e-10, atol=1e-12)
    assert not marginals[:, 0, [TAGS.index("I-PER"), TAGS.index("I-LOC")]].any()   # I-X never first


def test_log_likelihood_of_a_forbidden_gold_path_is_minus_infinity():
    crf = LinearChainCRF(len(TAGS), bio_constraints(TAGS))
    emissions = torch.randn(1, 3, len(TAGS))
    forbidden = torch.tensor([[0, 2, 2]])                              # O, I-PER: I-PER after O
    assert crf(emissions, forbidden).item() == -math.inf
    assert math.isfinite(crf(emissions, torch.tensor([[0, 1, 2]])).item())


def test_bio_constraints_by_name():
    starts, transitions, ends = bio_constraints(TAGS)
    assert starts.tolist() == [True, True, False, True, False]
    assert ends.all()
    i_per, i_loc = TAGS.index("I-PER"), TAGS.index("I-LOC")
    assert [TAGS[i] for i in range(5) if transitions[i, i_per]] == ["B-PER", "I-PER"]
    assert [TAGS[i] for i in range(5) if transitions[i, i_loc]] == ["B-LOC", "I-LOC"]
    assert transitions[:, [0, 1, 3]].all()                             # O and B-* may follow anything
    bioes = ["O", "B-X", "I-X", "E-X", "S-X"]
    starts, transitions, ends = bio_constraints(bioes, "BIOES")
    assert [bioes[i] for i in range(5) if starts[i]] == ["O", "B-X", "S-X"]
    assert [bioes[i] for i in range(5) if ends[i]] == ["O", "E-X", "S-X"]
    assert [bioes[j] for j in range(5) if transitions[1, j]] == ["I-X", "E-X"]    # after B-X
    assert [bioes[j] for j in range(5) if transitions[3, j]] == ["O", "B-X", "S-X"]   # after E-X


def test_bad_tag_names_and_schemes():
    with pytest.raises(DataError, match=r"tag 'X-PER' \(index 1\)"):
        bio_constraints(["O", "X-PER"])
    with pytest.raises(DataError, match=r"tag 'E-PER' \(index 2\)"):
        bio_constraints(["O", "B-PER", "E-PER"])                        # E- belongs to BIOES
    with pytest.raises(ConfigError, match="scheme"):
        bio_constraints(["O"], "IOB1")


@pytest.mark.parametrize("tags, mask, message", [
    (torch.tensor([[0, 1, 7], [1, 1, 1]]), None, r"tag 7 at position 2 of sequence 0 is outside \[0, 5\)"),
    (torch.tensor([[0, 1, 2], [1, -1, 0]]), None, r"tag -1 at position 1 of sequence 1"),
    (torch.tensor([[0, 1], [1, 1]]), None, r"tags must be integers of shape \(2, 3\)"),
    (torch.tensor([[0, 1, 2], [1, 1, 1]]), torch.tensor([[1, 1, 1], [0, 0, 0]]).bool(), "sequence 1 is empty"),
    (torch.tensor([[0, 1, 2], [1, 1, 1]]), torch.ones(2, 2, dtype=torch.bool), r"mask has shape \(2, 2\)"),
])
def test_bad_input_raises_data_errors_naming_the_place(tags, mask, message):
    crf = LinearChainCRF(5)
    with pytest.raises(DataError, match=message):
        crf(torch.randn(2, 3, 5), tags, mask)


def test_padded_tags_may_hold_anything_and_emissions_must_fit():
    crf = LinearChainCRF(5)
    emissions = torch.randn(2, 3, 5)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    torch.testing.assert_close(crf(emissions, torch.tensor([[0, 1, 2], [3, 99, -5]]), mask),
                               crf(emissions, torch.tensor([[0, 1, 2], [3, 0, 0]]), mask), rtol=0, atol=0)
    with pytest.raises(DataError, match=r"emissions must have shape \(B, T, 5\), got \(2, 3, 4\)"):
        crf.decode(torch.randn(2, 3, 4))
