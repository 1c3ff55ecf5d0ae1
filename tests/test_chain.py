"""The linear-chain engine (seqlab.ops.chain) against its specification.

Oracles: enumeration of every path on tiny chains (the ``*_ref`` functions), the textbook
log-space recursion in float64 on larger ones, and the identity "posterior marginals are the
gradient of log Z" through the enumerated log Z.
"""

import math
from typing import NamedTuple

import pytest
import torch
from hypothesis import given, settings, strategies as st

from seqlab.errors import DataError
from seqlab.ops import chain_exact, chain_scaled
from seqlab.ops.chain import (ChainPosteriors, EmissionTable, chain_backward, chain_forward, chain_log_partition,
                              chain_path_score, chain_posteriors, chain_viterbi, log_matmul_exp)
from seqlab.ops.chain_reference import chain_log_partition_ref, chain_posteriors_ref, chain_viterbi_ref


class Chain(NamedTuple):
    log_init: torch.Tensor
    log_trans: torch.Tensor
    log_emit: torch.Tensor
    mask: torch.Tensor
    log_final: torch.Tensor | None

    def scores(self):
        return self.log_init, self.log_trans, self.log_emit, self.mask, self.log_final


def random_chain(batch, length, n_states, lengths=None, seed=0, per_sequence=False, final=True,
                 forbidden=0.0, scale=1.0, emit_scale=None, dtype=torch.float64) -> Chain:
    """Random scores; ``forbidden`` of the transitions (never the self-loops) and starts/ends
    (never state 0's) are -inf, so the all-zeros path always stays allowed."""
    generator = torch.Generator().manual_seed(seed)

    def scores(*shape):
        return scale * torch.randn(*shape, generator=generator, dtype=dtype)

    def forbid(values, keep):
        drop = (torch.rand(values.shape, generator=generator) < forbidden) & ~keep
        return values.masked_fill(drop, -math.inf)

    trans_shape = (batch, n_states, n_states) if per_sequence else (n_states, n_states)
    log_trans = forbid(scores(*trans_shape), torch.eye(n_states, dtype=torch.bool).expand(trans_shape))
    first = torch.arange(n_states) == 0
    log_init = forbid(scores(n_states), first)
    log_final = forbid(scores(n_states), first) if final else None
    lengths = torch.as_tensor(lengths if lengths is not None else [length] * batch)
    mask = torch.arange(length) < lengths[:, None]
    log_emit = scores(batch, length, n_states) * ((emit_scale or scale) / scale)
    return Chain(log_init, log_trans, log_emit, mask, log_final)


@st.composite
def tiny_chains(draw, max_states=3, max_length=4):
    batch, length = draw(st.integers(1, 3)), draw(st.integers(1, max_length))
    return random_chain(
        batch, length, draw(st.integers(1, max_states)),
        lengths=draw(st.lists(st.integers(1, length), min_size=batch, max_size=batch)),
        seed=draw(st.integers(0, 2**31)), per_sequence=draw(st.booleans()), final=draw(st.booleans()),
        forbidden=draw(st.sampled_from([0.0, 0.4])), scale=draw(st.sampled_from([1.0, 10.0])),
    )


def textbook_log_partition(chain_: Chain) -> torch.Tensor:
    """The recursion written plainly, one sequence at a time, with logsumexp: a second oracle."""
    log_zs = []
    for b, length in enumerate(chain_.mask.sum(1).tolist()):
        trans = chain_.log_trans if chain_.log_trans.dim() == 2 else chain_.log_trans[b]
        log_alpha = chain_.log_init + chain_.log_emit[b, 0]
        for t in range(1, length):
            log_alpha = torch.logsumexp(log_alpha[:, None] + trans, dim=0) + chain_.log_emit[b, t]
        final = 0 if chain_.log_final is None else chain_.log_final
        log_zs.append(torch.logsumexp(log_alpha + final, dim=0))
    return torch.stack(log_zs)


@settings(max_examples=60, deadline=None)
@given(tiny_chains())
def test_log_partition_equals_enumeration(chain_):
    torch.testing.assert_close(chain_log_partition(*chain_.scores()), chain_log_partition_ref(*chain_.scores()),
                               rtol=1e-10, atol=1e-10)


@settings(max_examples=60, deadline=None)
@given(tiny_chains())
def test_viterbi_equals_enumeration(chain_):
    path, score = chain_viterbi(*chain_.scores())
    best_path, best_score = chain_viterbi_ref(*chain_.scores())
    assert torch.equal(path, best_path)
    torch.testing.assert_close(score, best_score, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(chain_path_score(*chain_.scores()[:3], path, *chain_.scores()[3:]), score,
                               rtol=1e-10, atol=1e-10)


@settings(max_examples=60, deadline=None)
@given(tiny_chains())
def test_posteriors_equal_enumeration(chain_):
    ours, reference = chain_posteriors(*chain_.scores()), chain_posteriors_ref(*chain_.scores())
    for name in ours._fields:
        torch.testing.assert_close(getattr(ours, name), getattr(reference, name), rtol=1e-9, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(tiny_chains())
def test_gradient_of_log_partition_equals_gradient_of_enumeration(chain_):
    # d log Z / d scores = posterior marginals; our backward pass against autograd through the
    # enumeration, for every input at once.
    inputs = [x for x in (chain_.log_init, chain_.log_trans, chain_.log_emit, chain_.log_final) if x is not None]
    leaves = [x.clone().requires_grad_() for x in inputs]
    args = leaves + [None] if chain_.log_final is None else leaves
    weights = torch.randn(chain_.log_emit.shape[0], dtype=torch.float64)

    def weighted(function):
        log_init, log_trans, log_emit, log_final = args
        return (function(log_init, log_trans, log_emit, chain_.mask, log_final) * weights).sum()

    ours = torch.autograd.grad(weighted(chain_log_partition), leaves, allow_unused=True)
    reference = torch.autograd.grad(weighted(chain_log_partition_ref), leaves, allow_unused=True)
    for mine, theirs in zip(ours, reference):
        torch.testing.assert_close(mine, torch.zeros_like(mine) if theirs is None else theirs, rtol=1e-9, atol=1e-12)


def test_marginals_are_the_gradient_of_log_partition_and_sum_to_one():
    chain_ = random_chain(4, 9, 5, lengths=[9, 4, 1, 7], seed=3)
    log_emit = chain_.log_emit.clone().requires_grad_()
    log_trans = chain_.log_trans.clone().requires_grad_()
    log_z = chain_log_partition(chain_.log_init, log_trans, log_emit, chain_.mask, chain_.log_final)
    grad_emit, grad_trans = torch.autograd.grad(log_z.sum(), (log_emit, log_trans))
    posteriors = chain_posteriors(*chain_.scores())
    torch.testing.assert_close(posteriors.unary, grad_emit, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(posteriors.pairwise, grad_trans, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(posteriors.unary.sum(-1), chain_.mask.double(), rtol=0, atol=1e-12)
    transitions = (chain_.mask.sum(1) - 1).sum().double()
    torch.testing.assert_close(posteriors.pairwise.sum(), transitions, rtol=1e-12, atol=0)


def test_gradcheck_float64_with_padding_and_per_sequence_transitions():
    chain_ = random_chain(3, 5, 3, lengths=[5, 2, 4], seed=4, per_sequence=True)
    inputs = [x.clone().requires_grad_() for x in (chain_.log_init, chain_.log_trans, chain_.log_emit, chain_.log_final)]
    assert torch.autograd.gradcheck(
        lambda i, t, e, f: chain_log_partition(i, t, e, chain_.mask, f), inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("per_sequence", [False, True])
def test_matches_the_textbook_recursion_on_longer_chains(per_sequence):
    chain_ = random_chain(5, 60, 6, lengths=[60, 31, 1, 17, 59], seed=5, per_sequence=per_sequence,
                          forbidden=0.3, scale=3.0)
    torch.testing.assert_close(chain_log_partition(*chain_.scores()), textbook_log_partition(chain_),
                               rtol=1e-12, atol=1e-10)
    path, score = chain_viterbi(*chain_.scores())       # longer than the Viterbi rescaling period
    torch.testing.assert_close(chain_path_score(*chain_.scores()[:3], path, *chain_.scores()[3:]), score,
                               rtol=1e-12, atol=1e-10)
    assert torch.isfinite(score).all()


def test_padding_does_not_change_results():
    chain_ = random_chain(3, 8, 4, lengths=[8, 3, 5], seed=6)
    log_emit = chain_.log_emit.clone()
    log_emit[~chain_.mask] = math.nan                                   # whatever padding holds
    together = chain_posteriors(chain_.log_init, chain_.log_trans, log_emit, chain_.mask, chain_.log_final)
    paths, scores = chain_viterbi(chain_.log_init, chain_.log_trans, log_emit, chain_.mask, chain_.log_final)
    alpha = chain_forward(chain_.log_init, chain_.log_trans, log_emit, chain_.mask)
    beta = chain_backward(chain_.log_trans, log_emit, chain_.mask, chain_.log_final)
    for b, length in enumerate(chain_.mask.sum(1).tolist()):
        alone = chain_.log_emit[b:b + 1, :length]
        posteriors = chain_posteriors(chain_.log_init, chain_.log_trans, alone, None, chain_.log_final)
        torch.testing.assert_close(together.log_partition[b:b + 1], posteriors.log_partition, rtol=1e-12, atol=0)
        torch.testing.assert_close(together.unary[b:b + 1, :length], posteriors.unary, rtol=1e-12, atol=1e-15)
        assert torch.equal(together.unary[b, length:], torch.zeros_like(together.unary[b, length:]))
        path, score = chain_viterbi(chain_.log_init, chain_.log_trans, alone, None, chain_.log_final)
        assert torch.equal(paths[b:b + 1, :length], path) and not paths[b, length:].any()
        torch.testing.assert_close(scores[b:b + 1], score, rtol=1e-12, atol=0)
        torch.testing.assert_close(alpha[b:b + 1, :length], chain_forward(chain_.log_init, chain_.log_trans, alone),
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(beta[b:b + 1, :length], chain_backward(chain_.log_trans, alone, None, chain_.log_final),
                                   rtol=1e-12, atol=1e-12)


def test_forward_and_backward_messages_combine_into_log_partition():
    chain_ = random_chain(2, 7, 3, lengths=[7, 4], seed=7)
    alpha = chain_forward(chain_.log_init, chain_.log_trans, chain_.log_emit, chain_.mask)
    beta = chain_backward(chain_.log_trans, chain_.log_emit, chain_.mask, chain_.log_final)
    log_z = chain_log_partition(*chain_.scores())
    for b, length in enumerate(chain_.mask.sum(1).tolist()):
        # log Z = logsumexp_k(log_alpha_t(k) + log_beta_t(k)) at every real position t.
        torch.testing.assert_close(torch.logsumexp(alpha[b, :length] + beta[b, :length], dim=-1),
                                   log_z[b].expand(length), rtol=1e-12, atol=1e-12)


def test_wide_score_ranges_stay_finite_in_float32():
    # Emissions 1,000 nats apart and forbidden transitions: float32 still agrees with float64.
    # (Transition scores are kept within the documented range, well under 87 nats.)
    wide = random_chain(3, 40, 5, lengths=[40, 25, 3], seed=8, forbidden=0.3, scale=3.0, emit_scale=300.0)
    narrow = wide._replace(**{name: None if value is None else value.float()
                              for name, value in wide._asdict().items() if name != "mask"})
    log_z32 = chain_log_partition(*narrow.scores())
    assert torch.isfinite(log_z32).all()
    torch.testing.assert_close(log_z32.double(), chain_log_partition(*wide.scores()), rtol=1e-6, atol=0)
    unary32 = chain_posteriors(*narrow.scores()).unary
    torch.testing.assert_close(unary32.double(), chain_posteriors(*wide.scores()).unary, rtol=0, atol=1e-5)


@pytest.mark.parametrize("per_sequence", [False, True])
def test_exact_paths_equal_the_fast_paths(per_sequence):
    # The textbook recursions and eq. 37, which take over for rows whose fast sums underflow.
    chain_ = random_chain(3, 12, 4, lengths=[12, 5, 9], seed=9, per_sequence=per_sequence, forbidden=0.3)
    scores = chain_scaled.Chain.of(*chain_.scores())
    scaled = chain_scaled.scale_chain(scores)
    assert chain_scaled.forward_pass(scores, scaled).underflowed is None
    assert chain_scaled.backward_pass(scores, scaled).underflowed is None
    final = chain_.log_final.expand(3, 4)
    alpha, alpha_offset = chain_exact.exact_forward(chain_.log_init, chain_.log_trans, scores.emit)
    beta, beta_offset = chain_exact.exact_backward(chain_.log_trans, scores.emit, scores.ended, final)
    torch.testing.assert_close((alpha.double() + alpha_offset).transpose(0, 1),
                               chain_forward(*chain_.scores()[:4]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((beta.double() + beta_offset).transpose(0, 1),
                               chain_backward(*chain_.scores()[1:]), rtol=1e-12, atol=1e-12)
    log_z, unary, pairwise = chain_exact.exact_posteriors(chain_.log_init, chain_.log_trans, scores.emit,
                                                          scores.ended, final)
    fast = chain_posteriors(*chain_.scores())
    torch.testing.assert_close(log_z, fast.log_partition, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(unary.transpose(0, 1), fast.unary, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pairwise, fast.pairwise, rtol=1e-10, atol=1e-12)
    chunked = chain_exact.exact_pairwise(alpha, beta, chain_.log_trans, scores.emit, scores.ended, max_elements=100)
    torch.testing.assert_close(chunked, pairwise, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("margin", [100.0, 200.0])
def test_underflowing_rows_are_recomputed_exactly(reverse, margin):
    # Only state 1 may follow state 1 or 2, and the emissions favour state 0 by ``margin`` nats
    # until state 1's turn comes: its inflow underflows in float32 (to denormals at 100 nats, to
    # zero at 200), so the row is repaired. Reversed in time (and transitions transposed), the
    # backward sums underflow instead.
    log_trans = torch.tensor([[0.0, -math.inf, 0.0], [-math.inf, 0.0, 0.0], [0.0, 0.0, 0.0]])
    log_emit = torch.zeros(2, 6, 3)
    log_emit[:, :3, 0] = margin
    log_emit[:, 3:, 1] = margin
    if reverse:
        log_trans, log_emit = log_trans.T.contiguous(), log_emit.flip(1)
    log_init = torch.zeros(3)
    scores = chain_scaled.Chain.of(log_init, log_trans, log_emit, torch.ones(2, 6, dtype=torch.bool), None)
    scaled = chain_scaled.scale_chain(scores)
    one_pass = chain_scaled.backward_pass if reverse else chain_scaled.forward_pass
    assert one_pass(scores, scaled).underflowed.all()
    expected = chain_log_partition_ref(log_init.double(), log_trans.double(), log_emit.double())
    torch.testing.assert_close(chain_log_partition(log_init, log_trans, log_emit).double(), expected, rtol=1e-6, atol=0)
    posteriors = chain_posteriors(log_init, log_trans, log_emit)
    reference = chain_posteriors_ref(log_init.double(), log_trans.double(), log_emit.double())
    torch.testing.assert_close(posteriors.log_partition.double(), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(posteriors.unary.double(), reference.unary, rtol=0, atol=1e-6)
    torch.testing.assert_close(posteriors.pairwise.double(), reference.pairwise, rtol=0, atol=1e-5)
    log_alpha = chain_forward(log_init, log_trans, log_emit)
    log_beta = chain_backward(log_trans, log_emit)
    torch.testing.assert_close(torch.logsumexp(log_alpha + log_beta, dim=-1).double(),
                               expected[:, None].expand(2, 6), rtol=1e-6, atol=0)


@settings(max_examples=60, deadline=None)
@given(tiny_chains(), st.sampled_from([1.0, 30.0, 300.0]))
def test_float32_agrees_with_float64_enumeration(chain_, emit_scale):
    # Confident emissions against forbidden transitions: float32 sums underflow in the fast path
    # and must be caught and recomputed.
    log_emit = chain_.log_emit * emit_scale
    narrow = [x.float() for x in (chain_.log_init, chain_.log_trans, log_emit)]
    final = None if chain_.log_final is None else chain_.log_final.float()
    reference = chain_posteriors_ref(chain_.log_init, chain_.log_trans, log_emit, chain_.mask, chain_.log_final)
    posteriors = chain_posteriors(*narrow, chain_.mask, final)
    torch.testing.assert_close(posteriors.log_partition.double(), reference.log_partition, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(posteriors.unary.double(), reference.unary, rtol=0, atol=1e-4)
    torch.testing.assert_close(chain_log_partition(*narrow, chain_.mask, final).double(), reference.log_partition,
                               rtol=1e-5, atol=1e-4)


def test_a_sequence_without_an_allowed_path_has_log_partition_minus_infinity():
    chain_ = random_chain(3, 5, 3, lengths=[5, 4, 5], seed=11)
    log_emit = chain_.log_emit.clone()
    log_emit[1, 2] = -math.inf                                          # no state may be at position 2
    log_z = chain_log_partition(chain_.log_init, chain_.log_trans, log_emit, chain_.mask, chain_.log_final)
    assert log_z[1] == -math.inf
    others = [0, 2]
    expected = chain_log_partition_ref(chain_.log_init, chain_.log_trans, log_emit[others], chain_.mask[others],
                                       chain_.log_final)
    torch.testing.assert_close(log_z[others], expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("per_sequence", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_an_emission_table_gives_what_its_gathered_scores_give(per_sequence, dtype):
    chain_ = random_chain(4, 9, 5, lengths=[9, 4, 1, 7], seed=12, per_sequence=per_sequence, forbidden=0.3)
    generator = torch.Generator().manual_seed(13)
    table = torch.randn(6, 5, generator=generator, dtype=torch.float64).mul_(3)
    table[2, 1] = -math.inf
    symbols = torch.randint(0, 6, (4, 9), generator=generator)
    log_init, log_trans, log_final = (x.to(dtype) for x in (chain_.log_init, chain_.log_trans, chain_.log_final))
    table = table.to(dtype)
    scores, mask = table[symbols], chain_.mask
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    by_table = chain_posteriors(log_init, log_trans, EmissionTable(table, symbols), mask, log_final)
    by_scores = chain_posteriors(log_init, log_trans, scores, mask, log_final)
    for name, ours, theirs in zip(ChainPosteriors._fields, by_table, by_scores):
        torch.testing.assert_close(ours, theirs, **tolerance, msg=name)
    leaves = [x.clone().requires_grad_() for x in (log_init, log_trans, table, log_final)]
    weights = torch.randn(4, dtype=dtype)
    by_table = chain_log_partition(leaves[0], leaves[1], EmissionTable(leaves[2], symbols), mask, leaves[3])
    by_scores = chain_log_partition(leaves[0], leaves[1], leaves[2][symbols], mask, leaves[3])
    torch.testing.assert_close(by_table, by_scores, **tolerance)
    for ours, theirs in zip(torch.autograd.grad((by_table * weights).sum(), leaves),
                            torch.autograd.grad((by_scores * weights).sum(), leaves)):
        torch.testing.assert_close(ours, theirs, **tolerance)
    for function in (chain_viterbi, chain_forward):
        for ours, theirs in zip(function(log_init, log_trans, EmissionTable(table, symbols), mask),
                                function(log_init, log_trans, scores, mask)):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_log_matmul_exp():
    generator = torch.Generator().manual_seed(10)
    log_a, log_b = torch.randn(4, 3, 5, generator=generator, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(log_matmul_exp(log_a, log_b), (log_a.exp() @ log_b.exp()).log(), rtol=1e-12, atol=1e-12)
    huge = log_matmul_exp(log_a.float() * 1e3, log_b.float())            # exp(log_a) would overflow
    assert torch.isfinite(huge).all()
    torch.testing.assert_close(huge.double(), torch.logsumexp(1e3 * log_a[..., :, None] + log_b, dim=-2),
                               rtol=1e-6, atol=0)


@pytest.mark.parametrize("mask, message", [
    (torch.ones(2, 4, dtype=torch.bool), r"mask has shape \(2, 4\) but the scores hold 2 sequences of 5"),
    (torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool), "sequence 1 is empty"),
    (torch.tensor([[1, 1, 0, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool),
     "mask of sequence 0 is not left-aligned: position 3"),
])
def test_bad_masks_raise_data_errors_naming_the_sequence(mask, message):
    chain_ = random_chain(2, 5, 3)
    for function in (chain_log_partition, chain_posteriors, chain_viterbi):
        with pytest.raises(DataError, match=message):
            function(chain_.log_init, chain_.log_trans, chain_.log_emit, mask)


def test_empty_batch_raises_a_data_error():
    with pytest.raises(DataError, match="no positions"):
        chain_log_partition(torch.zeros(3), torch.zeros(3, 3), torch.zeros(2, 0, 3))
