"""N-gram language models: every estimator against a dictionary-based reference written from the
textbook formulas, hand-worked Kneser-Ney, the discount formulas, Simple Good-Turing, NLTK where
its definitions coincide with ours, pruning, counting, and bad input.
"""

import math
from collections import Counter
from fractions import Fraction

import nltk.lm
import pytest
import torch
from hypothesis import given, settings, strategies as st
from nltk.probability import FreqDist, SimpleGoodTuringProbDist

from seqlab import registry
from seqlab.checkpoint import load_checkpoint, save_checkpoint
from seqlab.classical.counts import (
    ABSENT, count_ngrams, good_turing_discounts, modified_kneser_ney_discounts, ngram_ids, simple_good_turing,
)
from seqlab.classical.ngram import ESTIMATORS, NGramConfig, NGramLM
from seqlab.data.corpora import Corpus
from seqlab.errors import ConfigError, DataError
from seqlab.tasks.lm import LanguageModeling

from helpers import tiny_task


def fitted(stream: list[int], vocab: int, **config) -> NGramLM:
    """A model fitted to ``<s> stream`` (``<s>`` is id ``vocab``)."""
    return NGramLM(NGramConfig(vocab_size=vocab, **config)).fit_stream(torch.tensor([vocab, *stream]))


# ---- the reference: the estimators over Python dictionaries ----------------------------------


def reference_counts(stream: list[int], order: int, start: int) -> list[Counter]:
    """counts[k - 1][ngram] for every window of ``stream`` holding ``start`` only first."""
    counts = [Counter() for _ in range(order)]
    for k in range(1, order + 1):
        for i in range(len(stream) - k + 1):
            gram = tuple(stream[i:i + k])
            if start not in gram[1:]:
                counts[k - 1][gram] += 1
    return counts


def reference_model(stream: list[int], vocab: int, order: int, estimator: str, add_k: float = 1.0,
                    discount: float | None = None):
    """p(w | context) for the fitted ``<s> stream``, straight from the module docstring's formulas."""
    start = vocab
    raw = reference_counts([start, *stream], order, start)
    raw[0].pop((start,), None)
    if estimator in ("absolute", "kneser_ney", "modified_kneser_ney"):
        counts = []
        for k in range(1, order + 1):
            if estimator == "absolute" or k == order:
                counts.append(Counter(raw[k - 1]))
                continue
            continuation = Counter(gram[1:] for gram in raw[k])              # N1+(. gram)
            counts.append(Counter({gram: raw[k - 1][gram] if gram[0] == start else continuation[gram]
                                   for gram in raw[k - 1]}))
        discounts = []
        for level in counts:
            n = [sum(1 for c in level.values() if c == r) for r in (1, 2, 3, 4)]
            if discount is not None:
                discounts.append([discount] * 3)
            elif estimator == "modified_kneser_ney":
                discounts.append(modified_kneser_ney_discounts(*n).tolist())
            else:
                d = n[0] / (n[0] + 2 * n[1]) if n[0] + 2 * n[1] else 0.0
                discounts.append([d if 0 < d <= 1 else 0.5] * 3)
    children = [dict() for _ in range(order)]
    for k in range(1, order + 1):
        for gram in raw[k - 1]:
            children[k - 1].setdefault(gram[:-1], []).append(gram)

    def interpolated(word: int, context: tuple) -> float:
        k = len(context) + 1
        grams = children[k - 1].get(context, [])
        level, taken = counts[k - 1], discounts[k - 1]
        total = sum(level[g] for g in grams)
        lower = 1 / vocab if k == 1 else interpolated(word, context[1:])
        if total == 0:
            return lower
        d = {g: taken[min(level[g], 3) - 1] for g in grams}
        gamma = sum(d.values()) / total
        gram = (*context, word)
        alpha = (level[gram] - d[gram]) / total if gram in d else 0.0
        return alpha + gamma * lower

    def discounted(gram: tuple, total: float, k: int) -> float:
        count = raw[k - 1][gram]
        if estimator == "add_k":
            return (count + add_k) / (total + add_k * vocab)
        if estimator == "good_turing":
            level = torch.tensor([float(c) for c in raw[k - 1].values()], dtype=torch.float64)
            d = dict(zip(raw[k - 1], good_turing_discounts(level).tolist()))
            return d.get(gram, 1.0) * count / total
        return count / total

    def backed_off(word: int, context: tuple) -> float:
        k = len(context) + 1
        if k == 1:
            total = sum(raw[0].values())
            q = {w: discounted((w,), total, 1) for w in range(vocab)}
            unseen = [w for w in range(vocab) if raw[0][(w,)] == 0]
            left = 0.0 if estimator == "mle" else max(0.0, 1 - sum(q.values()))
            if not unseen:
                return q[word] / sum(q.values())
            return q[word] + (left / len(unseen) if word in unseen else 0.0)
        grams = children[k - 1].get(context, [])
        if not grams:
            return backed_off(word, context[1:])
        total = sum(raw[k - 1][g] for g in grams)
        q = {g[-1]: discounted(g, total, k) for g in grams}
        lower_seen = sum(backed_off(w, context[1:]) for w in q)
        if len(grams) == vocab or 1 - lower_seen <= 1e-10:     # nothing unseen: renormalise
            return q.get(word, 0.0) / sum(q.values())
        if word in q:
            return q[word]
        left = 0.0 if estimator == "mle" else max(0.0, 1 - sum(q.values()))
        return left / (1 - lower_seen) * backed_off(word, context[1:])

    return interpolated if estimator in ("absolute", "kneser_ney", "modified_kneser_ney") else backed_off


@pytest.mark.parametrize("estimator", ESTIMATORS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_estimator_matches_the_reference_and_sums_to_one(estimator, data):
    vocab = data.draw(st.integers(2, 5), label="vocab")
    order = data.draw(st.integers(1, 4), label="order")
    stream = data.draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=40), label="stream")
    # Queries start with a piece of the training text (seen contexts) and go on at random (unseen).
    seen = stream[: data.draw(st.integers(0, len(stream)))]
    query = seen + data.draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=6), label="tail")
    model = fitted(stream, vocab, order=order, estimator=estimator, add_k=0.5)
    reference = reference_model(stream, vocab, order, estimator, add_k=0.5)
    history = [vocab, *query]
    expected = torch.tensor([[reference(w, tuple(history[max(0, t + 3 - order): t + 2]) if order > 1 else ())
                              for w in range(vocab)] for t in range(len(query))], dtype=torch.float64)
    with torch.no_grad():
        log_probs = model(torch.tensor([query]))[0]                             # (T, V)
    torch.testing.assert_close(log_probs.double().exp(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(log_probs.double().exp().sum(-1), torch.ones(len(query), dtype=torch.float64),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@settings(max_examples=15, deadline=None)
@given(stream=st.lists(st.integers(0, 4), min_size=2, max_size=80),
       query=st.lists(st.integers(0, 4), min_size=2, max_size=12))
def test_pruned_models_stay_normalised_and_keep_what_they_keep(estimator, stream, query):
    full = fitted(stream, 5, order=4, estimator=estimator)
    pruned = fitted(stream, 5, order=4, estimator=estimator, prune_singletons=True)
    counts = count_ngrams(torch.tensor([5, *stream]), 4, 6, start_id=5)
    for k in (1, 2):                                      # orders 1 and 2 are never pruned
        assert torch.equal(pruned.tables[k - 1].keys, full.tables[k - 1].keys)
    for k in (3, 4):                                      # orders >= 3 keep exactly the non-singletons
        kept = ngram_ids([order.keys for order in counts], 6)[k - 1][counts[k - 1].counts >= 2]
        assert torch.equal(ngram_ids([t.keys for t in pruned.tables], 6)[k - 1], kept)
    with torch.no_grad():
        probs = pruned(torch.tensor([query])).double().exp()
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, len(query), dtype=torch.float64), rtol=0, atol=1e-5)


def test_score_stream_agrees_with_forward_to_the_last_bit():
    generator = torch.Generator().manual_seed(0)
    stream = torch.randint(0, 7, (400,), generator=generator).tolist()
    tokens = torch.randint(0, 7, (3, 30), generator=generator)
    for estimator in ESTIMATORS:
        model = fitted(stream, 7, order=4, estimator=estimator, prune_singletons=True)
        with torch.no_grad():
            by_forward = model(tokens)[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1).sum(-1)
            assert torch.equal(model.log_prob(tokens), by_forward), estimator


def back_off_reference(model: NGramLM, row: list[int]) -> list[float]:
    """ln p of every position of ``row`` by the back-off recursion over the stored tables as a
    dictionary, in float64: ``ln p(w | h) = ln p*(h w)`` if ``h w`` is stored, else
    ``ln b(h) + ln p(w | h[1:])`` (``b = 1`` for an unstored h). The context h is the last
    ``order - 1`` ids, starting no earlier than the last ``<s>`` and after any padding; ``<s>`` and
    padding get 0."""
    stored = {}
    grams_by_order = ngram_ids([table.keys for table in model.tables], model.n_ids)
    for k, (table, grams) in enumerate(zip(model.tables, grams_by_order), start=1):
        backoffs = table.log_backoff.tolist() if k < model.order else [0.0] * len(table)
        stored.update(zip(map(tuple, grams.tolist()), zip(table.log_prob.tolist(), backoffs)))

    def log_p(word: int, context: tuple) -> float:
        if (*context, word) in stored:
            return stored[(*context, word)][0]
        return stored.get(context, (0.0, 0.0))[1] + log_p(word, context[1:])

    scores = []
    for t, word in enumerate(row):
        context = []
        for previous in reversed(row[max(0, t - model.order + 1): t]):
            if previous == ABSENT:
                break
            context.insert(0, previous)
            if previous == model.start_id:
                break
        scores.append(0.0 if word in (ABSENT, model.start_id) else log_p(word, tuple(context)))
    return scores


@pytest.mark.parametrize("estimator", ["modified_kneser_ney", "good_turing", "add_k"])
def test_score_stream_follows_the_back_off_recursion_across_sentences_and_padding(estimator):
    generator = torch.Generator().manual_seed(1)
    stream = torch.randint(0, 6, (400,), generator=generator)
    stream[torch.randint(0, 400, (50,), generator=generator)] = 6                # sentence starts
    model = fitted(stream.tolist(), 6, order=4, estimator=estimator, prune_singletons=True)
    history = torch.randint(0, 7, (3, 40), generator=generator)                 # <s> inside rows
    history[0, 17] = ABSENT
    history[1, 30:] = ABSENT
    history[2, :4] = ABSENT
    expected = torch.tensor([back_off_reference(model, row) for row in history.tolist()], dtype=torch.float64)
    torch.testing.assert_close(model.score_stream(history).double(), expected, rtol=1e-6, atol=1e-5)


# ---- hand-worked examples and closed forms ---------------------------------------------------


def test_kneser_ney_by_hand():
    # Ids: <unk> 0, a 1, b 2, c 3; <s> 4. Text: <s> a b a c a b; bigram KN with D = 1/2.
    # Continuation counts N1+(. w): a after {<s>, b, c} = 3, b after {a} = 1, c after {a} = 1;
    # sum 5. Unigrams: alpha = (N1+ - D) / 5 -> a 0.5, b 0.1, c 0.1, <unk> 0; gamma = 0.5 * 3 / 5
    # = 0.3, so p(w) = alpha + 0.3 / 4 -> <unk> 0.075, a 0.575, b 0.175, c 0.175.
    # After a (raw counts ab 2, ac 1; total 3; gamma = 0.5 * 2 / 3 = 1/3):
    # p(b | a) = 1.5/3 + 0.175/3, p(c | a) = 0.5/3 + 0.175/3, p(a | a) = 0.575/3, p(<unk> | a) = 0.075/3.
    # After <s> (<s> a once; gamma = 1/2): p(a | <s>) = 0.5 + 0.5 * 0.575.
    model = fitted([1, 2, 1, 3, 1, 2], 4, order=2, estimator="kneser_ney", discount=0.5)
    with torch.no_grad():
        after = model(torch.tensor([[0, 1]])).double().exp()[0]                # after <unk>, after a
        first = model.score_stream(torch.tensor([[4, 1]])).double().exp()[0, 1]
    unigram = torch.tensor([0.075, 0.575, 0.175, 0.175], dtype=torch.float64)
    after_a = torch.tensor([0.075 / 3, 0.575 / 3, 1.5 / 3 + 0.175 / 3, 0.5 / 3 + 0.175 / 3], dtype=torch.float64)
    torch.testing.assert_close(after, torch.stack([unigram, after_a]), rtol=1e-6, atol=0)
    torch.testing.assert_close(first, torch.tensor(0.5 + 0.5 * 0.575, dtype=torch.float64), rtol=1e-6, atol=0)


def test_modified_kneser_ney_discount_formula_by_hand():
    # n = (10, 4, 2, 1): Y = 10/18 = 5/9, D1 = 1 - 2Y 4/10 = 5/9, D2 = 2 - 3Y 2/4 = 7/6,
    # D3+ = 3 - 4Y 1/2 = 17/9.
    expected = [Fraction(5, 9), Fraction(7, 6), Fraction(17, 9)]
    torch.testing.assert_close(modified_kneser_ney_discounts(10, 4, 2, 1),
                               torch.tensor([float(d) for d in expected], dtype=torch.float64), rtol=1e-15, atol=0)
    # n2 = 0 makes D2 undefined; n3 = 0 leaves D3+ = 3 - 4Y n4/n3 undefined: KenLM's fallbacks.
    torch.testing.assert_close(modified_kneser_ney_discounts(5, 0, 0, 0),
                               torch.tensor([1.0, 1.0, 1.5], dtype=torch.float64), rtol=0, atol=0)


def test_fitted_modified_kneser_ney_discounts_follow_the_counts_of_counts():
    task = tiny_task(characters=20_000)
    stream = task.splits["train"].ids.tolist()
    vocab = task.vocab_size
    model = fitted(stream, vocab, order=3)
    raw = reference_counts([vocab, *stream], 3, vocab)
    continuation = [Counter(g[1:] for g in raw[k]) for k in (1, 2)]           # N1+(. g)
    adjusted = [Counter({g: raw[k][g] if g[0] == vocab else continuation[k][g] for g in raw[k]}) for k in (0, 1)]
    adjusted.append(raw[2])
    for k, level in enumerate(adjusted, start=1):
        n1, n2, n3, n4 = (sum(1 for g, c in level.items() if c == r and g != (vocab,)) for r in (1, 2, 3, 4))
        y = n1 / (n1 + 2 * n2)
        closed_form = torch.tensor([1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3],
                                   dtype=torch.float64)
        assert min(n1, n2, n3, n4) > 0
        torch.testing.assert_close(model.discounts[k - 1], closed_form, rtol=1e-12, atol=0)


def test_simple_good_turing_on_a_table_worked_by_hand():
    # N_r = 144 / r^2 at r = 1..4: Z_r = N_r (consecutive counts), so log Z = log 144 - 2 log r
    # exactly, the smoothed y = (r + 1) S(r+1)/S(r) = r^2 / (r + 1) equals the Turing x, and
    # r* = 1/2, 4/3, 9/4, 16/5. With N = 300 and P0 = 144/300, p_r = (1 - P0) r* / sum N_r r*
    # where sum N_r r* = 72 + 48 + 36 + 28.8 = 184.8.
    r = torch.tensor([1, 2, 3, 4])
    r_star = simple_good_turing(r, torch.tensor([144, 36, 16, 9]))
    torch.testing.assert_close(r_star, torch.tensor([1 / 2, 4 / 3, 9 / 4, 16 / 5], dtype=torch.float64),
                               rtol=1e-12, atol=0)
    counts = torch.tensor([0.0] + [1.0] * 144 + [2.0] * 36 + [3.0] * 16 + [4.0] * 9, dtype=torch.float64)
    discounts = good_turing_discounts(counts)[[0, 1, 145, 181, 197]]           # d_r = r* / r
    torch.testing.assert_close(discounts, torch.tensor([1.0, 1 / 2, 2 / 3, 3 / 4, 4 / 5], dtype=torch.float64),
                               rtol=1e-12, atol=0)
    probability = (1 - 144 / 300) * r_star / 184.8
    torch.testing.assert_close(probability[0], torch.tensor(0.52 * 0.5 / 184.8, dtype=torch.float64),
                               rtol=1e-12, atol=0)


def test_simple_good_turing_matches_nltk_on_gale_and_sampson_prosody_counts():
    # The prosody counts of counts of Gale and Sampson (1995, table 3): r and N_r.
    r = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 15, 16, 17, 19, 20, 21, 23, 24, 25, 26, 27, 28, 31, 32,
         33, 34, 36, 41, 43, 45, 46, 47, 50, 71, 84, 101, 105, 121, 124, 146, 162, 193, 199, 224, 226,
         254, 257, 339, 421, 456, 481, 483, 1140, 1256, 1322, 1530, 2131, 2395, 6925, 7846]
    n_r = [120, 40, 24, 13, 15, 5, 11, 2, 2, 1, 3, 2, 1, 1, 3, 1, 3, 2, 3, 3, 3, 2, 2, 1, 2, 2, 1, 2, 2,
           3, 1, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    frequencies = FreqDist({f"item{i}": count for i, count in enumerate(c for c, n in zip(r, n_r) for _ in range(n))})
    nltk_sgt = SimpleGoodTuringProbDist(frequencies)
    r_star = simple_good_turing(torch.tensor(r), torch.tensor(n_r))
    total = sum(c * n for c, n in zip(r, n_r))
    ours = (1 - n_r[0] / total) * r_star / (torch.tensor(n_r, dtype=torch.float64) * r_star).sum()
    first_item_of = {count: f"item{sum(n_r[:i])}" for i, count in enumerate(r)}
    theirs = torch.tensor([nltk_sgt.prob(first_item_of[count]) for count in r], dtype=torch.float64)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=0)


# ---- NLTK, where its definitions are ours -----------------------------------------------------


def nltk_text(stream: list[int]) -> list[str]:
    return ["<s>", *map(str, stream)]


def test_mle_and_add_one_match_nltk_where_they_coincide():
    # NLTK's MLE and Laplace do not back off: they agree with ours on every n-gram seen in
    # training (unseen ones differ: ours back off, Katz style). Laplace unigrams agree on all words.
    generator = torch.Generator().manual_seed(1)
    stream = torch.randint(1, 6, (300,), generator=generator).tolist()         # ids 1..5; 0 is <unk>
    vocab = 6
    mle = fitted(stream, vocab, order=3, estimator="mle")
    laplace = fitted(stream, vocab, order=3, estimator="add_k", add_k=1.0)
    nltk_mle, nltk_laplace = nltk.lm.MLE(3), nltk.lm.Laplace(3)
    words = list(map(str, stream))
    for model in (nltk_mle, nltk_laplace):     # vocabulary: 5 words and NLTK's <UNK> (our 0): 6
        model.fit([list(nltk.everygrams(nltk_text(stream), max_len=3))], vocabulary_text=words)
    assert len(nltk_laplace.vocab) == vocab
    trigrams = {tuple(stream[i:i + 3]) for i in range(len(stream) - 2)}
    with torch.no_grad():
        for a, b, c in sorted(trigrams):
            ours_mle = mle(torch.tensor([[a, b]]))[0, 1, c].exp().item()
            ours_laplace = laplace(torch.tensor([[a, b]]))[0, 1, c].exp().item()
            assert ours_mle == pytest.approx(nltk_mle.score(str(c), [str(a), str(b)]), rel=1e-6)
            assert ours_laplace == pytest.approx(nltk_laplace.score(str(c), [str(a), str(b)]), rel=1e-6)
    unigram = fitted(stream, vocab, order=1, estimator="add_k")
    nltk_unigram = nltk.lm.Laplace(1)
    nltk_unigram.fit([[(w,) for w in words]], vocabulary_text=words)
    with torch.no_grad():
        ours = unigram(torch.tensor([[1]]))[0, 0].double().exp()
    theirs = torch.tensor([nltk_unigram.score("<UNK>")] + [nltk_unigram.score(str(w)) for w in range(1, vocab)],
                          dtype=torch.float64)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)


def test_kneser_ney_terms_match_nltk():
    # NLTK's KneserNeyInterpolated has no continuation unigram (its base is uniform), no <s>
    # exception and one fixed D; its alpha and gamma at every order above the unigrams are the
    # textbook ones, as are ours. So with the same D, for every context that does not start with
    # <s>: our alpha(h w) = p(w | h) - gamma(h) p(w | h') and gamma(h) equal NLTK's alpha_gamma.
    generator = torch.Generator().manual_seed(2)
    stream = (torch.randint(0, 3, (250,), generator=generator).cumsum(0) % 5 + 1).tolist()  # ids 1..5
    model = fitted(stream, 6, order=3, estimator="kneser_ney", discount=0.75)
    reference = nltk.lm.KneserNeyInterpolated(3, discount=0.75)
    reference.fit([list(nltk.everygrams(nltk_text(stream), max_len=3))], vocabulary_text=nltk_text(stream))

    def distribution(context: list[int]) -> torch.Tensor:
        # <unk> (0) never occurs in training, so a context led by it backs off with weight 1.
        with torch.no_grad():
            return model(torch.tensor([[0, *context]]))[0, -1].double().exp()

    unigram = distribution([0])
    contexts = {tuple(stream[i:i + 2]) for i in range(len(stream) - 2)} | {(w,) for w in stream[:-1]}
    for context in sorted(contexts):
        p, lower = distribution(list(context)), distribution(list(context[1:])) if len(context) > 1 else unigram
        gamma = p[0] / lower[0]                                               # <unk> is unseen after h
        alpha = p - gamma * lower
        alpha_gamma = [reference.estimator.alpha_gamma(str(w), tuple(map(str, context))) for w in range(1, 6)]
        torch.testing.assert_close(alpha[1:], torch.tensor([a for a, _ in alpha_gamma], dtype=torch.float64),
                                   rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(gamma, torch.tensor(alpha_gamma[0][1], dtype=torch.float64), rtol=1e-5, atol=0)


# ---- counting, storage and the contract -------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(stream=st.lists(st.integers(0, 4), min_size=1, max_size=60), order=st.integers(1, 5))
def test_vectorised_counts_and_suffixes_equal_a_counter(stream, order):
    stream = [5, *stream]
    counted = count_ngrams(torch.tensor(stream), order, 6, start_id=5)
    ids = ngram_ids([c.keys for c in counted], 6)
    expected = reference_counts(stream, order, 5)
    for k in range(1, order + 1):
        got = {tuple(row): int(c) for row, c in zip(ids[k - 1].tolist(), counted[k - 1].counts) if c > 0}
        assert got == dict(expected[k - 1])
        if k >= 2:                                 # suffix links: (w_2 .. w_k) in the order below
            suffixes = [tuple(ids[k - 2][i].tolist()) for i in counted[k - 1].suffix]
            assert suffixes == [tuple(row[1:]) for row in ids[k - 1].tolist()]


def test_an_unfitted_model_is_uniform_and_unk_gets_mass_after_fitting():
    model = NGramLM(NGramConfig(vocab_size=7))
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([[1, 2, 3]])), torch.full((1, 3, 7), -math.log(7)),
                                   rtol=0, atol=1e-6)
    model = fitted([1, 2, 3, 1, 2, 4, 5, 6, 1, 2], 7, order=3)
    unigram_gamma = (1 - model.tables[0].log_prob[1:7].exp().sum()) * 7   # p(<unk>) = gamma / V
    with torch.no_grad():
        p_unk = model(torch.tensor([[0]]))[0, 0, 0].exp()
    assert p_unk > 0
    torch.testing.assert_close(p_unk, unigram_gamma / 7, rtol=1e-5, atol=0)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_a_start_id_among_the_tokens_is_the_models_own_start_under_another_name(estimator):
    # Sentences over 5 predictable ids (<s> the extra id 5) against the same with every id moved up
    # by one and <s> at 0 among 6: the same model, <s> never predicted and the context reset at it.
    stream = torch.tensor([5, 1, 2, 3, 0, 5, 2, 2, 0, 5, 4, 1, 2, 0, 5, 3, 0, 5, 1, 2, 4, 0])
    own = NGramLM(NGramConfig(vocab_size=5, order=3, estimator=estimator)).fit_stream(stream)
    moved = torch.where(stream == 5, 0, stream + 1)
    named = NGramLM(NGramConfig(vocab_size=6, order=3, estimator=estimator, sentence_start_id=0)).fit_stream(moved)
    sentences = [[1, 2, 0], [3, 4, 0], [2]]                                  # read in one row, <s> between
    row = torch.tensor([[w + 1 for w in sentences[0]] + [0] + [w + 1 for w in sentences[1]] + [0, 3]])
    with torch.no_grad():
        got = named(row)                                                     # (1, T, 6)
        expected = [own(torch.tensor([sentence]))[0] for sentence in sentences]
    assert got[..., 0].eq(-math.inf).all()
    torch.testing.assert_close(got[0, [0, 1, 2, 4, 5, 6, 8], 1:], torch.cat(expected), rtol=0, atol=1e-6)
    scores = named.score_stream(torch.where(stream == 5, 0, stream + 1)[None])
    torch.testing.assert_close(scores, own.score_stream(stream[None]), rtol=0, atol=1e-6)


def test_an_unfitted_model_with_a_start_id_gives_it_no_mass():
    model = NGramLM(NGramConfig(vocab_size=4, sentence_start_id=2))
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([[2, 1]])).exp(),
                                   torch.tensor([1 / 3, 1 / 3, 0, 1 / 3]).expand(1, 2, 4), rtol=0, atol=1e-6)
    for vocab, start in ((4, 4), (4, -1), (1, 0)):
        with pytest.raises(ConfigError, match="sentence_start_id must be an id in"):
            NGramConfig(vocab_size=vocab, sentence_start_id=start)


def test_checkpoint_round_trip_resizes_every_table(tmp_path):
    task = LanguageModeling(Corpus("letters", "abcdef" * 100, None), "char", context=16)
    assert task.vocab_size == 7
    stream = torch.randint(1, 7, (500,), generator=torch.Generator().manual_seed(3)).tolist()
    model = fitted(stream, task.vocab_size, order=4, estimator="good_turing", prune_singletons=True)
    save_checkpoint(tmp_path / "run", model, task)
    loaded = load_checkpoint(tmp_path / "run").model
    assert [len(t) for t in loaded.tables] == [len(t) for t in model.tables]
    tokens = torch.randint(0, 7, (2, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    assert 12 <= model.bytes_per_ngram() <= 16


def test_bad_input_raises_one_line_errors():
    cases = [
        (ConfigError, lambda: registry.build("ngram", vocab_size=5, order=0), "order"),
        (ConfigError, lambda: registry.build("ngram", vocab_size=5, estimator="witten_bell"), "modified_kneser_ney"),
        (ConfigError, lambda: registry.build("ngram", vocab_size=5, discount=1.5), "discount"),
        (DataError, lambda: NGramLM(NGramConfig(vocab_size=5)).fit_stream(torch.tensor([5])), "empty"),
        (DataError, lambda: fitted([1, 7, 2], 5), "outside"),
        (DataError, lambda: fitted([1, 2, 3], 5)(torch.tensor([[1, 5]])), "outside"),
        (DataError, lambda: NGramLM(NGramConfig(vocab_size=5)).fit(tiny_task(2_000)), "token ids"),
        (TypeError, lambda: registry.build("ngram", vocab_size=5).fit(None, steps=3), "unexpected keyword argument"),
    ]
    for error, action, needle in cases:
        with pytest.raises(error, match=needle) as raised:
            action()
        assert "\n" not in str(raised.value)
