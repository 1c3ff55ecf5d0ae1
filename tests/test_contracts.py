"""The contracts, checked for every registered model of every task.

A model is tested here the moment it is registered, by its task's suite:

- language models (DESIGN.md section 1): the recurrent view reproduces the parallel view, also
  continued from a non-empty state in pieces; no position sees the future; a model that fits
  itself returns normalised log-probabilities; log_prob follows the chain rule; rows of a
  batch do not interact; cached generation equals recomputation; a checkpoint round trip
  changes nothing.
- taggers and classifiers: padding does not change a sequence's outputs, the order of a batch
  only permutes them, and a checkpoint round trip changes nothing.
- masked language models: each position reads both sides (and only its own row), padding
  does not change the real positions' logits, ``[MASK]`` is an input like any other, and a
  checkpoint round trip changes nothing.
- encoder-decoders: the teacher-forced parallel view equals unrolling ``step``; padding of the
  source or of the target does not change a pair's logits, and the order of a batch only
  permutes them; ``select`` of a state then a step equals the step then ``select``; attention
  weights are distributions over the real source tokens; a checkpoint round trip changes nothing.
- forecasters: a series' forecast depends on its own history alone (the order and company of
  the panel only permute the rows), quantiles rise with their level, and a checkpoint round trip
  changes nothing.

Every registered task must have a suite here (``test_every_task_has_a_contract_suite``).
"""

import itertools
import math
import random

import pytest
import torch
from hypothesis import given, settings, strategies as st

from seqlab import registry
from seqlab.checkpoint import load_checkpoint, save_checkpoint
from seqlab.contracts import CausalLM, EncoderDecoder
from seqlab.data.conll import TaggedSentence
from seqlab.data.corpora import Corpus
from seqlab.data.tsv import LabeledText
from seqlab.tasks.base import task_names, with_auxiliary_loss
from seqlab.tasks.classification import Classification
from seqlab.data.transduction import generate_splits
from seqlab.tasks.lm import LanguageModeling
from seqlab.tasks.mlm import MaskedLanguageModeling
from seqlab.tasks.seq2seq import Seq2Seq, Seq2SeqOptions
from seqlab.forecast.base import LocalForecaster
from seqlab.tasks.forecast import Forecasting, ForecastOptions
from seqlab.tasks.tagging import Tagging
from seqlab.tasks.asr import SpeechOptions, SpeechRecognition
from seqlab.data.audio import StreamingLogMel, load_audio, log_mel
from helpers import write_tone_digits

SUITES = ("lm", "tag", "classify", "seq2seq", "mlm", "forecast", "asr")
VOCAB = 11
LM_NAMES = [entry.name for entry in registry.entries("lm")]
# Every registered language model, plus the Transformer's other position schemes and shapes:
# "name[key=value,...]" builds ``name`` with those config overrides. The windowed cases read
# sequences longer than their window (max_len), so sliding-window attention is held to the
# contract too.
TRANSFORMER_VARIANTS = [
    "transformer[positions=sinusoidal]",
    "transformer[positions=rope_interleaved,n_kv_heads=1]",
    "transformer[positions=alibi,n_heads=3,d_model=24]",
    "transformer[positions=alibi,max_len=8]",
    "transformer[positions=sinusoidal,max_len=8,norm_position=post]",
    "llama[max_len=8]",
    "transformer[n_experts=4,experts_top_k=2,capacity_factor=1]",
    "transformer[n_experts=3,experts_top_k=1,positions=rope]",
]
# State space and hybrid shapes: chunk boundaries inside the tested sequences, a convolution of
# width 1 (an empty window), grouped B and C, attention first and with RoPE.
SSM_VARIANTS = [
    "mamba[chunk_size=3,d_conv=1]",
    "mamba2[n_groups=2,head_dim=16,chunk_size=5]",
    "hybrid[pattern=am,positions=rope,n_kv_heads=2,moe_every=1,chunk_size=4]",
]
LM_CASES = LM_NAMES + TRANSFORMER_VARIANTS + SSM_VARIANTS
TAGGER_NAMES = [entry.name for entry in registry.entries("tag")]
CLASSIFIER_NAMES = [entry.name for entry in registry.entries("classify")]
FORECASTER_NAMES = [entry.name for entry in registry.entries("forecast")]
ASR_NAMES = [entry.name for entry in registry.entries("asr")] + [
    "ctc-bilstm[subsample=1,n_layers=1]", "ctc-bilstm[subsample=4,normalisation=running]"]
MLM_NAMES = [entry.name for entry in registry.entries("mlm")] + [
    "bert[positions=learned]", "bert[positions=alibi,norm_position=pre]", "bert[positions=sinusoidal,n_kv_heads=2]"]
SEQ2SEQ_NAMES = [entry.name for entry in registry.entries("seq2seq")] + [
    "transformer-encdec[positions=learned,norm_position=post,norm=layernorm]",
    "transformer-encdec[positions=rope,n_kv_heads=2,activation=swiglu]",
    "transformer-encdec[positions=alibi]",
    "transformer-encdec[positions=sinusoidal]",
]
# Smaller than the defaults where the default would only make the suite slow (the contract
# does not depend on the size): the feature CRF's 2^20 hash buckets.
SMALL = {("tag", "crf"): {"n_buckets": 4096},
         ("asr", "ctc-bilstm"): {"hidden_size": 16, "n_layers": 2},
         ("asr", "ctc-conformer"): {"d_model": 16, "n_heads": 2, "n_layers": 2, "conv_kernel": 3, "stem_channels": 8},
         ("asr", "rnnt-conformer"): {"d_model": 16, "n_heads": 2, "n_layers": 2, "conv_kernel": 3, "stem_channels": 8,
                                     "predictor_size": 16, "joint_size": 16, "time_chunk": 3},
         ("asr", "whisper-tiny"): {"d_model": 16, "n_heads": 2, "n_encoder_layers": 1, "n_decoder_layers": 1,
                                   "d_ff": 32}}


def test_every_task_has_a_contract_suite():
    assert set(task_names()) <= set(SUITES)


def relative_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """Equal to ``rtol`` relative to the largest finite magnitude of ``expected`` (fp32
    recurrences reorder sums); entries that are not finite (-inf for an impossible token) must
    be identical. The scale never becomes infinite, so the check cannot become vacuous."""
    finite = torch.isfinite(expected)
    assert torch.equal(torch.isfinite(actual), finite), "the non-finite entries differ"
    assert torch.equal(actual[~finite], expected[~finite])
    scale = expected[finite].abs().max().item() if finite.any() else 0.0
    torch.testing.assert_close(actual[finite], expected[finite], rtol=rtol, atol=rtol * max(scale, 1e-6))


def test_relative_close_is_not_vacuous_with_infinite_logits():
    expected = torch.tensor([0.0, -1.0, -float("inf")])
    relative_close(expected.clone(), expected)
    with pytest.raises(AssertionError):
        relative_close(torch.tensor([5.0, -1.0, -float("inf")]), expected)
    with pytest.raises(AssertionError):
        relative_close(torch.tensor([0.0, -1.0, 0.0]), expected)


# ---- language models ---------------------------------------------------------------------

def task_with_vocabulary(vocab_size: int) -> LanguageModeling:
    """A character task whose vocabulary is ``<unk>`` and ``vocab_size - 1`` letters."""
    letters = "abcdefghijklmnopqrstuvwxyz"[: vocab_size - 1]
    generator = torch.Generator().manual_seed(vocab_size)
    # A text with structure (each letter tends to follow the one before) for fitted models.
    index = torch.randint(0, 3, (3000,), generator=generator).cumsum(0) % len(letters)
    text = "".join(letters[i] for i in index.tolist())
    task = LanguageModeling(Corpus("letters", text, None), "char", context=16)
    assert task.vocab_size == vocab_size
    return task


def parse_case(case: str) -> tuple[str, dict[str, object]]:
    """``"name[key=value,...]"`` -> the registered name and its config overrides."""
    name, _, spec = case.rstrip("]").partition("[")
    overrides: dict[str, object] = {}
    for item in filter(None, spec.split(",")):
        key, value = item.split("=")
        overrides[key] = int(value) if value.isdigit() else value
    return name, overrides


def make(case: str, vocab_size: int = VOCAB) -> CausalLM:
    """The model for a small task; models that fit themselves are fitted to it first."""
    torch.manual_seed(0)
    task = task_with_vocabulary(vocab_size)
    name, overrides = parse_case(case)
    model = registry.build_for_task(name, {**task.model_defaults(), "max_len": 64}, overrides, task="lm")
    if registry.trains_by(model) == "fit":
        model.fit(task)
    return model.eval()


def random_tokens(batch: int, length: int, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_registry_has_language_models():
    assert {"lstm", "transformer", "ngram"} <= set(LM_NAMES)


@pytest.mark.parametrize("name", LM_CASES)
def test_step_reproduces_forward(name):
    model = make(name)
    tokens = random_tokens(3, 24)
    with torch.no_grad():
        parallel = model(tokens)                                                # (B, T, V)
        state = model.init_state(3)
        stepped = []
        for t in range(tokens.shape[1]):
            logits, state = model.step(tokens[:, t], state)
            stepped.append(logits)
    assert parallel.shape == (3, 24, VOCAB)
    relative_close(torch.stack(stepped, dim=1), parallel)


@pytest.mark.parametrize("name", LM_CASES)
def test_forward_from_in_pieces_continues_one_pass(name):
    # Chunked continuation from a non-empty state: prompt read in three pieces == one pass,
    # logits and the state they leave (probed by the next step).
    model = make(name)
    tokens = random_tokens(2, 21, seed=8)
    with torch.no_grad():
        whole, whole_state = model.forward_from(tokens[:, :-1], model.init_state(2))
        state, pieces = model.init_state(2), []
        for piece in (tokens[:, :5], tokens[:, 5:6], tokens[:, 6:20]):
            logits, state = model.forward_from(piece, state)
            pieces.append(logits)
        relative_close(torch.cat(pieces, dim=1), whole)
        relative_close(model.step(tokens[:, -1], state)[0], model.step(tokens[:, -1], whole_state)[0])


@pytest.mark.parametrize("name", LM_CASES)
@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_forward_from_in_chunks_equals_one_pass(name, chunk):
    # A prompt read chunk by chunk (each chunk's queries follow the cached positions) gives the
    # logits of one pass over it.
    model = make(name)
    tokens = random_tokens(2, 21, seed=9)
    with torch.no_grad():
        whole = model(tokens)
        state, pieces = model.init_state(2), []
        for start in range(0, 21, chunk):
            logits, state = model.forward_from(tokens[:, start: start + chunk], state)
            pieces.append(logits)
    relative_close(torch.cat(pieces, dim=1), whole)


@pytest.mark.parametrize("name", LM_CASES)
def test_prefill_then_step_reproduces_forward(name):
    model = make(name)
    tokens = random_tokens(2, 20, seed=1)
    with torch.no_grad():
        parallel = model(tokens)
        logits, state = model.prefill(tokens[:, :12])
        relative_close(logits, parallel[:, 11])
        for t in range(12, 20):
            logits, state = model.step(tokens[:, t], state)
            relative_close(logits, parallel[:, t])


@pytest.mark.parametrize("name", LM_CASES)
@settings(max_examples=15, deadline=None)
@given(position=st.integers(0, 14), seed=st.integers(0, 10_000))
def test_no_future_leakage(name, position, seed):
    model = make(name)
    tokens = random_tokens(2, 16, seed=seed)
    changed = tokens.clone()
    changed[:, position + 1:] = (changed[:, position + 1:] + 1 + seed % (VOCAB - 1)) % VOCAB
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    # Equal to rounding: a mixture of experts batches each expert's tokens, and a matmul's
    # rounding depends on how many rows it multiplies; a leak moves logits by far more.
    relative_close(after[:, :position + 1], before[:, :position + 1], rtol=1e-6)
    if position < 14:
        assert not torch.equal(after[:, position + 1:], before[:, position + 1:])


@pytest.mark.parametrize("name", [e.name for e in registry.entries("lm") if e.trains == "fit"])
def test_fitted_models_return_normalised_log_probabilities(name):
    # Their logits are log-probabilities already: logsumexp over the vocabulary is 0, checked
    # on the raw output, before any softmax could hide an unnormalised distribution.
    model = make(name)
    with torch.no_grad():
        logits = model(random_tokens(3, 20, seed=2)).double()
    torch.testing.assert_close(torch.logsumexp(logits, dim=-1), torch.zeros(3, 20, dtype=torch.float64),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", LM_CASES)
def test_log_prob_sums_to_one_over_continuations(name):
    # Brute force: p(a, b | prefix) summed over every pair of next tokens is one. This holds for
    # any logits only if log_prob scores each token with the logits of the position before it.
    vocab = 5
    model = make(name, vocab_size=vocab)
    prefix = [3, 1, 4]
    continuations = torch.tensor([prefix + [a, b] for a, b in itertools.product(range(vocab), repeat=2)])
    with torch.no_grad():
        log_p = model.log_prob(continuations) - model.log_prob(continuations[:, :len(prefix)])
    total = torch.logsumexp(log_p.double(), dim=0).exp()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", LM_CASES)
def test_log_prob_matches_forward_by_hand(name):
    model = make(name)
    tokens = random_tokens(2, 10, seed=3)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(tokens), dim=-1)
        by_hand = sum(log_probs[:, t, tokens[:, t + 1]].diagonal() for t in range(9))
        relative_close(model.log_prob(tokens), by_hand)


@pytest.mark.parametrize("name", LM_CASES)
def test_batch_rows_are_independent(name):
    model = make(name)
    tokens = random_tokens(4, 12, seed=4)
    with torch.no_grad():
        together = model(tokens)
        alone = torch.cat([model(tokens[i:i + 1]) for i in range(4)])
    relative_close(together, alone)


@pytest.mark.parametrize("name", LM_CASES)
def test_greedy_generation_equals_full_recompute(name):
    # Cached decoding (prefill + step) picks the same tokens as re-running forward each time.
    model = make(name)
    prompt = random_tokens(2, 5, seed=5)
    generated = model.generate(prompt, 12, temperature=0.0)
    recomputed = prompt
    with torch.no_grad():
        for _ in range(12):
            next_token = model(recomputed)[:, -1].argmax(-1, keepdim=True)
            recomputed = torch.cat([recomputed, next_token], dim=1)
    assert torch.equal(generated, recomputed)


@pytest.mark.parametrize("name", LM_CASES)
def test_lm_checkpoint_round_trip_gives_identical_outputs(name, tmp_path):
    task = task_with_vocabulary(VOCAB)
    model = make(name)
    loaded, again = round_trip(model, task, tmp_path / "run")
    tokens = random_tokens(2, 16, seed=6)
    assert type(loaded) is type(model) and loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    assert again.tokenizer.encode("jihgfedcba") == task.tokenizer.encode("jihgfedcba")


@pytest.mark.parametrize("name", LM_CASES)
def test_generation_runs_past_a_finite_context(name):
    model = make(name)
    limit = model.max_context or 64
    generated = model.generate(random_tokens(1, 3, seed=7), 2 * limit, seed=0)
    assert generated.shape == (1, 3 + 2 * limit)
    assert int(generated.min()) >= 0 and int(generated.max()) < VOCAB


def test_a_model_must_define_step_or_forward_from():
    with pytest.raises(TypeError, match="must define step or forward_from"):
        class Neither(CausalLM):
            def init_state(self, batch_size):
                return None


# ---- taggers -----------------------------------------------------------------------------

def tagging_task() -> Tagging:
    """A toy grammar (DET (ADJ) NOUN VERB DET NOUN .) with capitalised words and unseen words
    in the held-out splits."""
    words = {"D": ["the", "a", "The", "A"], "J": ["big", "red", "old"], "N": ["cat", "dog", "idea", "Rome"],
             "V": ["sees", "likes"], ".": ["."]}
    rng = random.Random(0)

    def sentence(extra: list[str] = ()) -> TaggedSentence:
        tags = ["D"] + (["J"] if rng.random() < 0.5 else []) + ["N", "V", "D", "N", "."]
        chosen = [rng.choice(words[tag] + list(extra) if tag == "N" else words[tag]) for tag in tags]
        return TaggedSentence(tuple(chosen), tuple(tags))

    return Tagging({"train": [sentence() for _ in range(60)], "valid": [sentence(["zebra"]) for _ in range(8)],
                    "test": [sentence(["zebra", "Oslo"]) for _ in range(8)]})


def make_for_task(name: str, task) -> torch.nn.Module:
    """``name`` built for ``task`` (``SMALL`` overrides), fitted first if it fits itself."""
    torch.manual_seed(0)
    name, overrides = parse_case(name)
    model = registry.build_for_task(name, task.model_defaults(), {**SMALL.get((task.name, name), {}), **overrides},
                                    task=task.name)
    if registry.trains_by(model) == "fit":
        model.fit(task)
    return model.eval()


def round_trip(model, task, directory):
    """The model and the task as a saved run gives them back (no data: for prediction)."""
    save_checkpoint(directory, model, task)
    loaded = load_checkpoint(directory)
    return loaded.model.eval(), loaded.task(with_data=False)


@pytest.fixture(scope="module")
def tag_task():
    return tagging_task()


def per_sentence_loss(model, task, sentences) -> torch.Tensor:
    """Each sentence's summed loss, from batches of one."""
    with torch.no_grad():
        return torch.stack([model.loss(task.batch([s])) * len(s) for s in sentences])


@pytest.mark.parametrize("name", TAGGER_NAMES)
def test_tagging_is_invariant_to_padding_and_batch_order(name, tag_task):
    model = make_for_task(name, tag_task)
    sentences = tag_task.splits["test"]
    alone = [tag_task.tag_sentences(model, [s.words])[0] for s in sentences]
    assert tag_task.tag_sentences(model, [s.words for s in sentences]) == alone       # padded together
    order = list(reversed(range(len(sentences))))
    assert tag_task.tag_sentences(model, [sentences[i].words for i in order]) == [alone[i] for i in order]
    with torch.no_grad():
        together = model.loss(tag_task.batch(sentences)) * sum(map(len, sentences))
        shuffled = model.loss(tag_task.batch([sentences[i] for i in order])) * sum(map(len, sentences))
    separate = per_sentence_loss(model, tag_task, sentences).sum()
    assert torch.isfinite(together) and together > 0
    torch.testing.assert_close(together, separate, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shuffled, separate, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TAGGER_NAMES)
def test_tagger_checkpoint_round_trip_gives_identical_outputs(name, tag_task, tmp_path):
    model = make_for_task(name, tag_task)
    loaded, again = round_trip(model, tag_task, tmp_path / "run")
    sentences = [s.words for s in tag_task.splits["test"]]
    assert again.tag_sentences(loaded, sentences) == tag_task.tag_sentences(model, sentences)
    with torch.no_grad():
        torch.testing.assert_close(loaded.loss(tag_task.batch(tag_task.splits["test"])),
                                   model.loss(tag_task.batch(tag_task.splits["test"])), rtol=0, atol=0)


# ---- classifiers -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def classify_task():
    """Texts of 1 to 12 words; the label says whether "red" occurs."""
    rng = random.Random(1)
    words = ["red", "blue", "green", "cat", "dog", "sees", "a", "the"]

    def example(index):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        return LabeledText("yes" if "red" in text.split() else "no", text, f"example {index}")

    return Classification({split: [example(i) for i in range(count)]
                           for split, count in (("train", 80), ("valid", 12), ("test", 12))})


def classify_logits(model, task, texts):
    tokens, mask, _ = task.encode(texts).batch(torch.arange(len(texts)))
    with torch.no_grad():
        return model(tokens, mask)


@pytest.mark.parametrize("name", CLASSIFIER_NAMES)
def test_classification_is_invariant_to_padding_and_batch_order(name, classify_task):
    model = make_for_task(name, classify_task)
    texts = [example.text for example in classify_task.splits["test"]]
    alone = torch.cat([classify_logits(model, classify_task, [text]) for text in texts])
    together = classify_logits(model, classify_task, texts)                 # padded to the longest
    assert together.shape == (len(texts), 2)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    order = list(reversed(range(len(texts))))
    torch.testing.assert_close(classify_logits(model, classify_task, [texts[i] for i in order]), alone[order],
                               rtol=1e-5, atol=1e-6)
    labels = torch.tensor(classify_task.labels.ids(classify_task.splits["test"]))
    tokens, mask, _ = classify_task.encode(texts).batch(torch.arange(len(texts)))
    with torch.no_grad():
        assert torch.equal(model.predict(tokens, mask), together.argmax(-1))
        torch.testing.assert_close(model.loss(tokens, labels, mask),
                                   torch.nn.functional.cross_entropy(alone, labels), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CLASSIFIER_NAMES)
def test_classifier_checkpoint_round_trip_gives_identical_outputs(name, classify_task, tmp_path):
    model = make_for_task(name, classify_task)
    loaded, again = round_trip(model, classify_task, tmp_path / "run")
    texts = [example.text for example in classify_task.splits["test"]]
    assert again.predict(loaded, texts) == classify_task.predict(model, texts)
    assert torch.equal(classify_logits(loaded, again, texts), classify_logits(model, classify_task, texts))


# ---- encoder-decoders ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def seq2seq_task():
    """Reversal of 1 to 7 digits."""
    options = Seq2SeqOptions(data="reverse", min_length=1, max_length=7, train_size=60, valid_size=8, test_size=8)
    return Seq2Seq(generate_splits("reverse", {"train": 60, "valid": 8, "test": 8}, seed=3, min_length=1,
                                   max_length=7), options)


def seq2seq_batch(task, pairs):
    return task.encode(pairs).batch(range(len(pairs)))


@pytest.mark.parametrize("name", SEQ2SEQ_NAMES)
def test_teacher_forcing_equals_unrolling_step(name, seq2seq_task):
    model = make_for_task(name, seq2seq_task)
    src, src_mask, tgt_in, _ = seq2seq_batch(seq2seq_task, seq2seq_task.splits["test"])
    with torch.no_grad():
        relative_close(model(src, src_mask, tgt_in), EncoderDecoder.forward(model, src, src_mask, tgt_in))


@pytest.mark.parametrize("name", SEQ2SEQ_NAMES)
def test_encoder_decoder_is_invariant_to_padding_and_batch_order(name, seq2seq_task):
    model = make_for_task(name, seq2seq_task)
    pairs = seq2seq_task.splits["test"]
    with torch.no_grad():
        src, src_mask, tgt_in, tgt_out = seq2seq_batch(seq2seq_task, pairs)
        together = model(src, src_mask, tgt_in)                              # padded on both sides
        for row, pair in enumerate(pairs):
            alone = model(*seq2seq_batch(seq2seq_task, [pair])[:3])[0]
            real = int((tgt_out[row] != 0).sum())
            torch.testing.assert_close(together[row, :real], alone[:real], rtol=1e-5, atol=1e-6)
        order = list(reversed(range(len(pairs))))
        reordered = model(*seq2seq_batch(seq2seq_task, [pairs[i] for i in order])[:3])
        mask = (tgt_out[order] != 0)[..., None].expand_as(reordered)
        torch.testing.assert_close(reordered[mask], together[order][mask], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", SEQ2SEQ_NAMES)
def test_select_commutes_with_step(name, seq2seq_task):
    model = make_for_task(name, seq2seq_task)
    src, src_mask, tgt_in, _ = seq2seq_batch(seq2seq_task, seq2seq_task.splits["test"])
    rows = torch.tensor([3, 0, 0, 5, 1])                                    # kept, repeated, reordered
    with torch.no_grad():
        # A state is consumed by the step that reads it (a Transformer's caches grow in place),
        # so each path starts from its own; ``select`` returns a new state and leaves its input
        # usable, which the second half relies on.
        def fresh():
            return model.init_state(len(src), model.encode(src, src_mask))

        selected_logits, _ = model.step(tgt_in[rows, 0], model.select(fresh(), rows))
        logits, after = model.step(tgt_in[:, 0], fresh())
        torch.testing.assert_close(selected_logits, logits[rows], rtol=1e-5, atol=1e-6)
        again, _ = model.step(tgt_in[rows, 1], model.select(after, rows))
        expected, _ = model.step(tgt_in[:, 1], after)
        torch.testing.assert_close(again, expected[rows], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", SEQ2SEQ_NAMES)
def test_attention_weights_are_distributions_over_the_real_source(name, seq2seq_task):
    model = make_for_task(name, seq2seq_task)
    src, src_mask, tgt_in, _ = seq2seq_batch(seq2seq_task, seq2seq_task.splits["test"])
    with torch.no_grad():
        weights = model.attention_weights(src, src_mask, tgt_in)
    if weights is None:
        assert "bahdanau" not in name and "luong" not in name
        return
    assert weights.shape == (*tgt_in.shape, src.shape[1])
    assert torch.all(weights[~src_mask[:, None, :].expand_as(weights)] == 0)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(tgt_in.shape), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", SEQ2SEQ_NAMES)
def test_seq2seq_checkpoint_round_trip_gives_identical_outputs(name, seq2seq_task, tmp_path):
    model = make_for_task(name, seq2seq_task)
    loaded, again = round_trip(model, seq2seq_task, tmp_path / "run")
    sources = [pair.source for pair in seq2seq_task.splits["test"]]
    assert again.predict(loaded, sources) == seq2seq_task.predict(model, sources)
    src, src_mask, tgt_in, _ = seq2seq_batch(seq2seq_task, seq2seq_task.splits["test"])
    with torch.no_grad():
        assert torch.equal(loaded(src, src_mask, tgt_in), model(src, src_mask, tgt_in))


# ---- masked language models -----------------------------------------------------------------

@pytest.fixture(scope="module")
def mlm_task():
    return MaskedLanguageModeling(task_with_vocabulary(VOCAB))


@pytest.mark.parametrize("name", MLM_NAMES)
def test_masked_lm_reads_both_sides_of_its_own_row(name, mlm_task):
    model = make_for_task(name, mlm_task)
    tokens = random_tokens(3, 12, seed=10)
    tokens[:, 4] = mlm_task.mask_id                                       # [MASK] is an input id
    with torch.no_grad():
        logits = model(tokens)
        assert logits.shape == (3, 12, VOCAB + 1)
        changed = tokens.clone()
        changed[0, 9] = (changed[0, 9] + 1) % VOCAB
        after = model(changed)
    assert not torch.allclose(after[0, :9], logits[0, :9])                 # earlier positions see later ones
    relative_close(after[1:], logits[1:])                                  # other rows do not
    alone = torch.cat([model(tokens[i:i + 1]) for i in range(3)]).detach()
    relative_close(logits, alone)


@pytest.mark.parametrize("name", MLM_NAMES)
def test_masked_lm_is_invariant_to_padding(name, mlm_task):
    model = make_for_task(name, mlm_task)
    tokens = random_tokens(2, 9, seed=11)
    padded = torch.cat([tokens, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    mask = torch.arange(14)[None, :] < 9
    with torch.no_grad():
        relative_close(model(padded, mask.expand(2, -1))[:, :9], model(tokens))


@pytest.mark.parametrize("name", MLM_NAMES)
def test_masked_lm_checkpoint_round_trip_gives_identical_outputs(name, mlm_task, tmp_path):
    model = make_for_task(name, mlm_task)
    loaded, again = round_trip(model, mlm_task, tmp_path / "run")
    tokens = random_tokens(2, 10, seed=12)
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    assert again.predict(loaded, ["ab[MASK]d"]) == mlm_task.predict(model, ["ab[MASK]d"])


# ---- forecasters ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def forecast_task(tmp_path_factory):
    """Three seasonal series of different lengths (period 4) in the long format, horizon 6."""
    generator = torch.Generator().manual_seed(0)
    rows = ["unique_id,ds,y"]
    for index, length in enumerate((40, 52, 47)):
        t = torch.arange(length, dtype=torch.float64)
        values = (50 + 10 * index + 0.3 * t) * (1 + 0.2 * torch.sin(torch.pi * t / 2)) \
            + torch.randn(length, generator=generator, dtype=torch.float64)
        start = torch.tensor(0)
        rows += [f"s{index},2024-01-{1 + day:02d},{value:.6f}" if day < 31 else
                 f"s{index},2024-02-{day - 30:02d},{value:.6f}" for day, value in zip(range(length), values.tolist())]
        del start
    path = tmp_path_factory.mktemp("forecast") / "panel.csv"
    path.write_text("\n".join(rows) + "\n")
    return Forecasting.from_options(ForecastOptions(data=str(path), horizon=6, season=4))


@pytest.mark.parametrize("name", FORECASTER_NAMES)
def test_a_forecast_depends_on_its_own_series_alone(name, forecast_task):
    model = make_for_task(name, forecast_task)
    panel = forecast_task.train_panel
    levels = (0.1, 0.5, 0.9)
    together = model.predict(panel, 6, levels)
    reversed_order = model.predict(panel.subset(panel.ids[::-1]), 6, levels)
    alone = model.predict(panel.subset(panel.ids[1:2]), 6, levels)
    assert reversed_order.ids == panel.ids[::-1] and together.mean.shape == (3, 6)
    # float64 fits are exact; a float32 network's matrix products round by batch size.
    rtol = 1e-10 if isinstance(model, LocalForecaster) else 1e-5
    torch.testing.assert_close(reversed_order.mean, together.mean.flip(0), rtol=rtol, atol=0.0)
    torch.testing.assert_close(alone.mean[0], together.mean[1], rtol=rtol, atol=0.0)
    for low, high in zip(levels, levels[1:]):
        assert (together.quantiles[low] <= together.quantiles[high]).all()


@pytest.mark.parametrize("name", FORECASTER_NAMES)
def test_the_validation_histories_are_forecast_inside_an_evaluation(name, forecast_task):
    # evaluate runs under no_grad; a local model fits the shorter validation histories there.
    model = make_for_task(name, forecast_task)
    metrics = forecast_task.evaluate(model, "valid")
    assert all(math.isfinite(metrics[key]) for key in ("mase", "smape", "owa", "msis"))


@pytest.mark.parametrize("name", FORECASTER_NAMES)
def test_forecaster_checkpoint_round_trip_gives_identical_forecasts(name, forecast_task, tmp_path):
    model = make_for_task(name, forecast_task)
    loaded, again = round_trip(model, forecast_task, tmp_path / "run")
    panel = forecast_task.train_panel
    expected = model.predict(panel, 6, (0.2, 0.8)).mean
    if isinstance(loaded, LocalForecaster):          # the run kept every series' fit: none is refitted
        assert loaded.fitted.keys() == model.fitted.keys()
        for id, (fingerprint, parameters) in model.fitted.items():
            assert loaded.fitted[id][0] == fingerprint and torch.equal(loaded.fitted[id][1], parameters)
        loaded.fit_many = None
    assert torch.equal(loaded.predict(panel, 6, (0.2, 0.8)).mean, expected)
    if isinstance(loaded, LocalForecaster):
        del loaded.fit_many                          # a series it has not seen is fitted afresh
    lines = [" ".join(str(value) for value in series.values.tolist()) for series in panel]
    assert again.predict(loaded, lines) == forecast_task.predict(model, lines)


# ---- speech recognisers ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def asr_task(tmp_path_factory):
    tones = write_tone_digits(tmp_path_factory.mktemp("tones") / "recordings", speakers=("alice",),
                              indices=range(10))
    return SpeechRecognition.from_options(SpeechOptions(data=str(tones), max_digits=3, test_passes=1))


def tone_files(task) -> list[str]:
    from pathlib import Path

    return sorted(str(path) for path in Path(task.options.data).glob("*.wav"))


def asr_batch(task, rows=4):
    test = task._split("test")
    return task.batch_of(test.features[:rows], test.transcripts[:rows])


@pytest.mark.parametrize("name", ASR_NAMES)
def test_recogniser_is_invariant_to_padding_and_batch_order(name, asr_task):
    model = make_for_task(name, asr_task)
    features, lengths, targets, target_lengths = asr_batch(asr_task)
    with torch.no_grad():
        together = model.nll(features, lengths, targets, target_lengths)
        padded = torch.cat([features, torch.randn(4, 30, features.shape[2])], dim=1)     # padding is noise
        order = torch.tensor([2, 0, 3, 1])
        reordered = model.nll(padded[order], lengths[order], targets[order], target_lengths[order])
        alone = torch.cat([model.nll(features[i:i + 1, :lengths[i]], lengths[i:i + 1], targets[i:i + 1],
                                     target_lengths[i:i + 1]) for i in range(4)])
    assert together.shape == (4,) and torch.isfinite(together).all() and (together > 0).all()
    relative_close(reordered, together[order])
    relative_close(alone, together)
    transcripts = model.transcribe(features, lengths)
    assert model.transcribe(padded[order], lengths[order]) == [transcripts[i] for i in order.tolist()]
    assert all(3 <= symbol < model.vocab_size for row in transcripts for symbol in row)


@pytest.mark.parametrize("name", ASR_NAMES)
def test_recogniser_gradient_reaches_every_parameter(name, asr_task):
    model = make_for_task(name, asr_task).train()
    with_auxiliary_loss(asr_task.loss(model, asr_batch(asr_task)), model).backward()   # the Trainer's objective
    missing = [n for n, parameter in model.named_parameters() if parameter.grad is None or not parameter.grad.any()]
    assert not missing


@pytest.mark.parametrize("name", ASR_NAMES)
def test_recogniser_checkpoint_round_trip_gives_identical_transcripts(name, asr_task, tmp_path):
    model = make_for_task(name, asr_task)
    loaded, again = round_trip(model, asr_task, tmp_path / "run")
    files = tone_files(asr_task)[:3]
    assert again.predict(loaded, files) == asr_task.predict(model, files)
    features, lengths, targets, target_lengths = asr_batch(asr_task)
    with torch.no_grad():
        assert torch.equal(loaded.nll(features, lengths, targets, target_lengths),
                           model.nll(features, lengths, targets, target_lengths))


@pytest.mark.parametrize("name", [name for name in ASR_NAMES if hasattr(registry.get(name.split("[")[0], "asr").model_class, "stream")])
@settings(max_examples=4, deadline=None)
@given(chunk=st.integers(1, 2000))
def test_streaming_recogniser_fed_in_chunks_writes_the_whole_recordings_transcript(name, asr_task, chunk):
    model = make_for_task(name, asr_task)
    files = tone_files(asr_task)
    audio = torch.cat([load_audio(files[i], 8000) for i in (3, 17, 25)])
    whole = model.transcribe(*asr_task.batch_of([log_mel(audio, asr_task.features, center=False)]))[0]
    assert whole                                                          # a random model writes something
    extractor, state, written = StreamingLogMel(asr_task.features), model.start_stream(), []
    for start in range(0, len(audio), chunk):
        symbols, state = model.stream(extractor.push(audio[start:start + chunk]), state)
        written += symbols
    assert written == whole
