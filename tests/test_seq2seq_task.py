"""The seq2seq task (``seqlab.tasks.seq2seq``), scheduled sampling (``seqlab.teacher_forcing``)
and the ``train`` / ``translate`` / ``eval`` / ``compare`` commands on it.

Oracles: sacrebleu's own command line for BLEU and chrF; a hand-built encoder-decoder that
copies its source, whose exact match, token accuracy and loss have closed forms on copy and
reverse data; the decay formulas of Bengio et al. (2015); recording models that show which
token each decoder step read; a float64 label-smoothed cross-entropy written out here.
"""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from typing import Any

import pytest
import sacrebleu
import torch
from torch import Tensor
from torch.nn import functional as F

from seqlab import registry
from seqlab.checkpoint import load_checkpoint
from seqlab.cli import main
from seqlab.contracts import EncoderDecoder
from seqlab.data.transduction import generate_splits
from seqlab.decoding import decode_greedy
from seqlab.errors import ConfigError
from seqlab.tasks.seq2seq import (
    BOS,
    EOS,
    PAD,
    SOURCE_SHIFT,
    TARGET_SHIFT,
    Seq2Seq,
    Seq2SeqOptions,
    TranslationOptions,
)
from seqlab.teacher_forcing import check_decay, scheduled_sampling_logits, teacher_forcing_probability

from helpers import fails_cleanly

compare_module = importlib.import_module("seqlab.compare")

SMALL = {"data": "reverse", "min_length": 3, "max_length": 6, "train_size": 200, "valid_size": 20, "test_size": 20}
SMALL_FLAGS = ["--task", "seq2seq", "--data", "reverse", "--min-length", "3", "--max-length", "6",
               "--train-size", "200", "--valid-size", "20", "--test-size", "20", "--no-progress"]
SEQ2SEQ_NAMES = [entry.name for entry in registry.entries("seq2seq")]
TRAINED_STEPS, SAMPLING_C = 80, 0.01


def small_task(**options: Any) -> Seq2Seq:
    return Seq2Seq.from_options(Seq2SeqOptions(**{**SMALL, **options}))


def tiny_model(task: Seq2Seq, name: str = "seq2seq-luong", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return registry.build_for_task(name, task.model_defaults(), {"d_model": 16, "n_layers": 1}, task="seq2seq")


def greedy_hypotheses(model: torch.nn.Module, task: Seq2Seq, split: str) -> list[str]:
    """The split's greedy decodings as text, as ``evaluate`` makes them (one batch: <= 64 rows)."""
    encoded = task._encoded[split]
    assert len(encoded) <= 64
    src, src_mask, _, _ = encoded.batch(range(len(encoded)))
    decoded = decode_greedy(model, src, src_mask, max_length=task.max_output_length)
    return [task.target_text(ids) for ids in decoded.sequences]


def sacrebleu_command_line(references: list[str], hypotheses: list[str], directory) -> dict[str, dict]:
    """BLEU and chrF of ``hypotheses`` by ``python -m sacrebleu REF -i HYP``, by metric name."""
    assert not any("\n" in line for line in references + hypotheses)
    reference_file, hypothesis_file = directory / "ref.txt", directory / "hyp.txt"
    reference_file.write_text("".join(line + "\n" for line in references), encoding="utf-8")
    hypothesis_file.write_text("".join(line + "\n" for line in hypotheses), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "sacrebleu", str(reference_file), "-i", str(hypothesis_file),
                           "-m", "bleu", "chrf", "-w", "10", "--format", "json"],
                          capture_output=True, text=True, check=True)
    return {entry["name"]: entry for entry in json.loads(done.stdout)}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A Luong model trained for a few seconds on reversal, under linear scheduled sampling."""
    out = tmp_path_factory.mktemp("seq2seq") / "run"
    assert main(["train", "seq2seq-luong", *SMALL_FLAGS, "--set", "d_model=16", "--set", "n_layers=1",
                 "--steps", str(TRAINED_STEPS), "--lr", "1e-2", "--batch-size", "32",
                 "--scheduled-sampling", "linear", "--sampling-c", str(SAMPLING_C), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """A char-tokenizer run on reversal of digits (3 steps: for its tokenizers, not its skill)."""
    out = tmp_path_factory.mktemp("seq2seq-char") / "run"
    assert main(["train", "seq2seq", *SMALL_FLAGS, "--tokenizer", "char", "--set", "d_model=16",
                 "--set", "n_layers=1", "--steps", "3", "--out", str(out)]) == 0
    return out


# ---- BLEU and chrF against sacrebleu's command line -------------------------------------------

def check_against_sacrebleu(model, task: Seq2Seq, directory) -> dict[str, Any]:
    metrics = task.evaluate(model, "test")
    hypotheses = greedy_hypotheses(model, task, "test")
    references = [pair.target for pair in task.splits["test"]]
    scored = sacrebleu_command_line(references, hypotheses, directory)
    assert metrics["bleu"] == pytest.approx(scored["BLEU"]["score"], rel=0, abs=1e-6)
    assert metrics["chrf"] == pytest.approx(scored["chrF2"]["score"], rel=0, abs=1e-6)
    assert metrics["exact_match"] == sum(h == r for h, r in zip(hypotheses, references)) / len(references)
    assert metrics["pairs"] == len(references) == 20
    # The library's metric objects are the command line's defaults (tokenizer, smoothing, n-gram orders).
    for metric, name in ((sacrebleu.BLEU(), "BLEU"), (sacrebleu.CHRF(), "chrF2")):
        metric.corpus_score(hypotheses, [references])
        assert str(metric.get_signature()) == scored[name]["signature"]
    return metrics


def test_bleu_and_chrf_of_an_untrained_model_equal_sacrebleus_command_line(tmp_path):
    task = small_task()
    metrics = check_against_sacrebleu(tiny_model(task), task, tmp_path)
    assert metrics["chrf"] > 0                                  # gibberish, but some characters right


def test_bleu_and_chrf_of_a_trained_model_equal_sacrebleus_command_line(trained_run, tmp_path):
    checkpoint = load_checkpoint(trained_run)
    model, task = checkpoint.model.eval(), checkpoint.task()
    metrics = check_against_sacrebleu(model, task, tmp_path)
    assert 0 < metrics["bleu"] < 100 and 0 < metrics["chrf"] < 100


def test_describe_names_the_sacrebleu_signatures():
    task = small_task()
    signatures = []
    for metric in (sacrebleu.BLEU(), sacrebleu.CHRF()):
        metric.corpus_score(["a b c"], [["a b c"]])
        signatures.append(str(metric.get_signature()))
    described = task.describe()
    assert all(signature in described for signature in signatures)
    assert "synthetic `reverse`, source lengths 3-6" in described and "train 200, valid 20, test 20" in described


# ---- exact match, token accuracy and loss by hand ----------------------------------------------

SCALE = 5.0          # the copier's logit of its next symbol; every other logit is 0


class SourceCopier(EncoderDecoder):
    """Writes its source back symbol by symbol, then EOS, whatever token it reads: a fixed table
    from source ids to target ids (through the task's two tokenizers). Each step's logits are
    SCALE at its next symbol and 0 elsewhere, so every loss has a closed form."""

    def __init__(self, task: Seq2Seq):
        super().__init__()
        sizes = task.model_defaults()
        self.src_vocab_size, self.tgt_vocab_size = sizes["src_vocab_size"], sizes["tgt_vocab_size"]
        table = torch.zeros(self.src_vocab_size, dtype=torch.long)
        for source_id in range(SOURCE_SHIFT, self.src_vocab_size):
            symbol = task.source_tokenizer.decode([source_id - SOURCE_SHIFT])
            table[source_id] = task.target_tokenizer.encode(symbol)[0] + TARGET_SHIFT
        self.register_buffer("table", table)

    def encode(self, src: Tensor, src_mask: Tensor) -> dict[str, Tensor]:
        return {"symbols": self.table[src], "lengths": src_mask.sum(dim=1)}

    def init_state(self, batch_size: int, memory: dict[str, Tensor]) -> dict[str, Any]:
        return {**memory, "position": torch.zeros(batch_size, dtype=torch.long)}

    def step(self, token: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        position, symbols = state["position"], state["symbols"]
        inside = position < state["lengths"]
        ahead = symbols.gather(1, position.clamp(max=symbols.shape[1] - 1)[:, None]).squeeze(1)
        next_id = torch.where(inside, ahead, torch.full_like(ahead, EOS))                     # (B,)
        logits = torch.zeros(len(token), self.tgt_vocab_size)
        logits[torch.arange(len(token)), next_id] = SCALE
        return logits, {**state, "position": position + 1}


def copier_task(kind: str) -> Seq2Seq:
    """All 30 sources of 1 to 4 symbols over {0, 1}: many palindromes, so the reverse share is
    neither 0 nor 1."""
    splits = generate_splits(kind, {"train": 12, "valid": 6, "test": 12}, seed=5, min_length=1, max_length=4,
                             n_symbols=2)
    return Seq2Seq(splits, Seq2SeqOptions(data=kind, min_length=1, max_length=4))


def closed_form_loss(correct: int, tokens: int, vocabulary: int) -> float:
    """Mean cross-entropy of logits SCALE at one class and 0 at the other V - 1."""
    log_z = math.log(math.exp(SCALE) + vocabulary - 1)
    return log_z - SCALE * correct / tokens


def test_a_copier_is_exact_on_copy_data():
    task = copier_task("copy")
    model = SourceCopier(task)
    metrics = task.evaluate(model, "test")
    tokens = sum(len(pair.source.split()) + 1 for pair in task.splits["test"])         # EOS counts
    assert metrics["exact_match"] == 1.0 and metrics["token_accuracy"] == 1.0
    assert metrics["bleu"] == pytest.approx(100.0) and metrics["chrf"] == pytest.approx(100.0)
    assert metrics["loss"] == pytest.approx(closed_form_loss(tokens, tokens, model.tgt_vocab_size), rel=1e-6)
    assert task.predict(model, ["0 1 1", "1"], TranslationOptions(beam_size=1)) == ["0 1 1", "1"]


def test_a_copier_on_reverse_data_scores_the_palindromes():
    task = copier_task("reverse")
    model = SourceCopier(task)
    metrics = task.evaluate(model, "valid")
    sources = [pair.source.split() for pair in task.splits["valid"]]
    palindromes = sum(symbols == symbols[::-1] for symbols in sources) / len(sources)
    correct = sum(sum(a == b for a, b in zip(symbols, symbols[::-1])) + 1 for symbols in sources)
    tokens = sum(len(symbols) + 1 for symbols in sources)
    assert 0 < palindromes < 1
    assert metrics["exact_match"] == pytest.approx(palindromes, rel=0, abs=1e-12)
    assert metrics["token_accuracy"] == pytest.approx(correct / tokens, rel=0, abs=1e-12)
    assert metrics["loss"] == pytest.approx(closed_form_loss(correct, tokens, model.tgt_vocab_size), rel=1e-6)
    hypotheses = [pair.source for pair in task.splits["valid"]]           # the copier's outputs
    references = [[pair.target for pair in task.splits["valid"]]]
    assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, references).score, abs=1e-9)
    assert metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, references).score, abs=1e-9)


def test_batches_are_bos_shifted_and_padded():
    task = copier_task("reverse")
    encoded = task._encoded["test"]
    src, src_mask, tgt_in, tgt_out = encoded.batch(range(len(encoded)))
    for row, pair in enumerate(task.splits["test"]):
        words = pair.target.split()
        n = len(words)
        expected_out = [task.target_tokenizer.encode(w)[0] + TARGET_SHIFT for w in words] + [EOS]
        assert tgt_out[row, :n + 1].tolist() == expected_out and bool((tgt_out[row, n + 1:] == PAD).all())
        assert tgt_in[row, :n + 1].tolist() == [BOS, *expected_out[:-1]] and bool((tgt_in[row, n + 1:] == PAD).all())
        assert int(src_mask[row].sum()) == len(pair.source.split()) and bool((src[row][~src_mask[row]] == 0).all())


# ---- scheduled sampling ------------------------------------------------------------------------

@pytest.mark.parametrize("decay, k, c, minimum, expected", [
    ("none", 1.0, 0.0, 0.0, lambda i: 1.0),
    ("linear", 1.0, 0.01, 0.0, lambda i: max(0.0, 1.0 - 0.01 * i)),
    ("linear", 0.8, 0.002, 0.25, lambda i: max(0.25, 0.8 - 0.002 * i)),
    ("exponential", 0.99, 0.0, 0.0, lambda i: 0.99 ** i),
    ("exponential", 0.9, 0.0, 0.1, lambda i: max(0.1, 0.9 ** i)),
    ("inverse_sigmoid", 1.0, 0.0, 0.0, lambda i: math.exp(-i) / (math.exp(-i) + 1.0)),
    ("inverse_sigmoid", 50.0, 0.0, 0.05, lambda i: max(0.05, 50.0 / (50.0 + math.exp(i / 50.0)))),
])
def test_teacher_forcing_probability_follows_the_formulas(decay, k, c, minimum, expected):
    for step in (0, 1, 7, 50, 99, 100, 250, 1000):
        assert teacher_forcing_probability(decay, step, k=k, c=c, minimum=minimum) == \
            pytest.approx(expected(step), rel=1e-12, abs=1e-15)


def test_teacher_forcing_probability_worked_values():
    assert teacher_forcing_probability("linear", 30, k=1.0, c=0.01) == pytest.approx(0.7)
    assert teacher_forcing_probability("linear", 500, k=1.0, c=0.01, minimum=0.3) == 0.3
    assert teacher_forcing_probability("exponential", 3, k=0.5) == 0.125
    assert teacher_forcing_probability("inverse_sigmoid", 0, k=1.0) == 0.5
    assert teacher_forcing_probability("inverse_sigmoid", 10**7, k=2.0, minimum=0.2) == 0.2     # no overflow
    assert teacher_forcing_probability("inverse_sigmoid", 10**7, k=2.0) == pytest.approx(0.0, abs=1e-300)


@pytest.mark.parametrize("decay, k, c, minimum, message", [
    ("cosine", 1.0, 0.0, 0.0, "unknown scheduled-sampling decay 'cosine'"),
    ("linear", 1.0, 0.01, 1.5, "least teacher-forcing probability must be in"),
    ("none", 1.0, 0.0, -0.1, "least teacher-forcing probability must be in"),
    ("linear", 0.0, 0.01, 0.0, "linear decay needs 0 < k <= 1"),
    ("linear", 1.5, 0.01, 0.0, "linear decay needs 0 < k <= 1"),
    ("linear", 1.0, -0.01, 0.0, "c >= 0"),
    ("exponential", 1.0, 0.0, 0.0, "exponential decay needs 0 < k < 1"),
    ("exponential", 0.0, 0.0, 0.0, "exponential decay needs 0 < k < 1"),
    ("inverse_sigmoid", 0.5, 0.0, 0.0, "inverse-sigmoid decay needs k >= 1"),
])
def test_bad_decays_are_config_errors(decay, k, c, minimum, message):
    with pytest.raises(ConfigError, match=message):
        check_decay(decay, k, c, minimum)
    with pytest.raises(ConfigError, match=message):
        Seq2SeqOptions(scheduled_sampling=decay, sampling_k=k, sampling_c=c, sampling_min=minimum)


@pytest.mark.parametrize("options, message", [
    ({"label_smoothing": 1.0}, "label_smoothing must be in"),
    ({"label_smoothing": -0.1}, "label_smoothing must be in"),
    ({"max_output_length": 0}, "max_output_length must be >= 1"),
    ({"filter": "tutorial"}, "filter is for TSV files"),
])
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        Seq2SeqOptions(**options)


def plain_loss(model, batch) -> Tensor:
    src, src_mask, tgt_in, tgt_out = batch
    return F.cross_entropy(model(src, src_mask, tgt_in).flatten(0, 1), tgt_out.flatten(), ignore_index=PAD)


def test_training_schedule_sets_the_sampling_of_the_loss():
    task = small_task(scheduled_sampling="linear", sampling_k=1.0, sampling_c=0.01, sampling_min=0.25)
    for step in (0, 10, 60, 75, 200):
        schedule = task.training_schedule(step)
        assert schedule == {"sampling_probability": pytest.approx(1 - max(0.25, 1 - 0.01 * step), abs=1e-12)}
    assert small_task().training_schedule(123) == {}                # none: nothing to log
    model = tiny_model(task)
    batch = task.train_batch(16, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert task.training_schedule(0) == {"sampling_probability": 0.0}
        assert torch.equal(task.loss(model, batch), plain_loss(model, batch))        # eps = 1: teacher forcing
        exponential = small_task(scheduled_sampling="exponential", sampling_k=0.5)
        assert exponential.training_schedule(200) == {"sampling_probability": 1.0}
        torch.manual_seed(0)
        sampled = exponential.loss(model, batch)
        torch.manual_seed(0)
        logits = scheduled_sampling_logits(model, *batch[:3], 0.5 ** 200)
        assert torch.equal(sampled, F.cross_entropy(logits.flatten(0, 1), batch[3].flatten(), ignore_index=PAD))
        assert not torch.equal(sampled, plain_loss(model, batch))


def test_the_training_log_records_the_sampling_probability(trained_run):
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    logged = [row for row in rows if "train_loss" in row]
    assert {row["step"] for row in logged} == set(range(10, TRAINED_STEPS + 1, 10))
    for row in logged:
        # A row of step s holds the values of the s-th update, which ran at step index i = s - 1.
        assert row["sampling_probability"] == pytest.approx(1 - max(0.0, 1 - SAMPLING_C * (row["step"] - 1)),
                                                            abs=1e-12), row


@pytest.mark.parametrize("name", SEQ2SEQ_NAMES)
def test_scheduled_sampling_logits_at_the_extremes(name):
    task = small_task()
    model = tiny_model(task, name).eval()
    src, src_mask, tgt_in, tgt_out = task._encoded["test"].batch(range(20))
    with torch.no_grad():
        forced = model(src, src_mask, tgt_in)
        assert torch.equal(scheduled_sampling_logits(model, src, src_mask, tgt_in, 1.0), forced)
        torch.manual_seed(1)
        free = scheduled_sampling_logits(model, src, src_mask, tgt_in, 0.0)
    assert free.shape == forced.shape
    torch.testing.assert_close(free[:, 0], forced[:, 0], rtol=1e-5, atol=1e-6)        # BOS is always gold
    later = (tgt_out != PAD)[:, 1:]
    assert not torch.allclose(free[:, 1:][later], forced[:, 1:][later], rtol=1e-3, atol=1e-4)


GOLD, VOCABULARY = 9, 10


class Successor(EncoderDecoder):
    """Reads any token x and puts all its mass on f(x) = 3 + (x - 1) % 6, never on GOLD;
    records the tokens each step read."""

    src_vocab_size, tgt_vocab_size = 5, VOCABULARY

    def __init__(self):
        super().__init__()
        self.reads: list[Tensor] = []

    @staticmethod
    def successor(token: Tensor) -> Tensor:
        return 3 + (token - 1) % 6

    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor:
        return src_mask

    def init_state(self, batch_size: int, memory: Tensor) -> dict[str, Any]:
        return {"memory": memory}

    def step(self, token: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        self.reads.append(token.clone())
        logits = torch.full((len(token), VOCABULARY), -math.inf)
        logits[torch.arange(len(token)), self.successor(token)] = 0.0
        return logits, state


class Coin(Successor):
    """Whatever it reads: token 3 with probability 0.2, token 4 with 0.8."""

    def step(self, token: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        self.reads.append(token.clone())
        logits = torch.full((len(token), VOCABULARY), -math.inf)
        logits[:, 3], logits[:, 4] = math.log(0.2), math.log(0.8)
        return logits, state


def gold_batch(rows: int, length: int) -> tuple[Tensor, Tensor, Tensor]:
    src = torch.ones(rows, 2, dtype=torch.long)
    tgt_in = torch.full((rows, length), GOLD)
    tgt_in[:, 0] = BOS
    return src, src != 0, tgt_in


def test_without_teacher_forcing_each_step_reads_the_draw_of_the_step_before():
    model = Successor()
    src, src_mask, tgt_in = gold_batch(50, 6)
    logits = scheduled_sampling_logits(model, src, src_mask, tgt_in, 0.0)
    reads = torch.stack(model.reads, dim=1)                                                 # (B, T)
    expected = [torch.full((50,), BOS)]
    for _ in range(5):
        expected.append(Successor.successor(expected[-1]))
    assert torch.equal(reads, torch.stack(expected, dim=1))
    assert torch.equal(logits.argmax(dim=-1), Successor.successor(reads))
    model.reads.clear()
    scheduled_sampling_logits(model, src, src_mask, tgt_in, 1.0)
    assert torch.equal(torch.stack(model.reads, dim=1), tgt_in)


def test_each_later_input_is_gold_with_the_teacher_forcing_probability():
    torch.manual_seed(0)
    model = Successor()
    src, src_mask, tgt_in = gold_batch(4000, 6)
    scheduled_sampling_logits(model, src, src_mask, tgt_in, 0.3)
    reads = torch.stack(model.reads, dim=1)
    assert torch.equal(reads[:, 0], tgt_in[:, 0])
    gold = reads[:, 1:] == GOLD
    drawn = reads[:, 1:] == Successor.successor(reads[:, :-1])
    assert bool((gold | drawn).all())
    assert gold.float().mean().item() == pytest.approx(0.3, abs=0.015)                     # 20,000 draws: 4.6 sd


def test_sampled_inputs_follow_the_models_distribution():
    torch.manual_seed(0)
    model = Coin()
    src, src_mask, tgt_in = gold_batch(4000, 6)
    scheduled_sampling_logits(model, src, src_mask, tgt_in, 0.0)
    later = torch.stack(model.reads, dim=1)[:, 1:]
    assert bool(((later == 3) | (later == 4)).all())
    assert (later == 3).float().mean().item() == pytest.approx(0.2, abs=0.015)


# ---- label smoothing ---------------------------------------------------------------------------

@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.4])
def test_label_smoothed_loss_by_hand(smoothing):
    task = small_task(label_smoothing=smoothing)
    model = tiny_model(task)
    batch = task.train_batch(16, torch.Generator().manual_seed(0))
    src, src_mask, tgt_in, tgt_out = batch
    assert bool((tgt_out == PAD).any())                                    # padding to ignore
    loss = task.loss(model, batch)
    with torch.no_grad():
        log_p = torch.log_softmax(model(src, src_mask, tgt_in).double(), dim=-1)        # (B, T, V)
    vocabulary = log_p.shape[-1]
    target = torch.full_like(log_p, smoothing / vocabulary)
    target.scatter_add_(-1, tgt_out[..., None], torch.full_like(log_p[..., :1], 1 - smoothing))
    per_token = -(target * log_p).sum(dim=-1)                                            # (B, T)
    real = tgt_out != PAD
    expected = per_token[real].sum() / real.sum()
    torch.testing.assert_close(loss.detach().double(), expected, rtol=1e-6, atol=0.0)
    loss.backward()                                                       # the loss trains the model
    assert model.output.weight.grad is not None


def test_evaluation_loss_is_not_smoothed():
    plain, smoothed = small_task(), small_task(label_smoothing=0.3)
    model = tiny_model(plain)
    assert smoothed.evaluate(model, "test")["loss"] == plain.evaluate(model, "test")["loss"]


# ---- splits ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["reverse", "addition", "dates"])
def test_synthetic_splits_share_no_source(kind):
    task = small_task(data=kind, min_length=1, max_length=2, train_size=60, valid_size=20, test_size=20)
    sources = {split: [pair.source for pair in pairs] for split, pairs in task.splits.items()}
    assert {split: len(found) for split, found in sources.items()} == {"train": 60, "valid": 20, "test": 20}
    assert len(set().union(*sources.values())) == 100                   # distinct within and across splits


def test_a_tsv_file_is_split_by_source(tmp_path):
    lines = [f"source {i} .\ttarget {i} number {j}" for i in range(30) for j in range(1 + i % 3)]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def split(seed):
        task = Seq2Seq.from_options(Seq2SeqOptions(data=str(tsv), split_fractions=(0.6, 0.2, 0.2), data_seed=seed))
        return {name: [f"{pair.source}\t{pair.target}" for pair in pairs] for name, pairs in task.splits.items()}

    splits = split(0)
    sources = {name: {line.split("\t")[0] for line in found} for name, found in splits.items()}
    assert [len(sources[name]) for name in ("train", "valid", "test")] == [18, 6, 6]
    assert not (sources["train"] & sources["valid"] or sources["train"] & sources["test"]
                or sources["valid"] & sources["test"])
    assert sorted(sum(splits.values(), [])) == sorted(lines)             # every pair, each once
    assert all(found == [line for line in lines if line in found] for found in splits.values())   # file order
    assert split(0) == splits and split(1) != splits


# ---- bad input through the command line --------------------------------------------------------

@pytest.mark.parametrize("lines, extra, message", [
    (["a b\tc d", "e f g"], [], "bad.tsv:2 has no tab"),
    (["a b\tc d", "e\tf\tg"], [], "bad.tsv:2 has 2 tabs"),
    (["a b\tc d", "", "  \tf g"], [], "bad.tsv:3 has an empty source"),
    (["a b\tc d", "e f\t  "], [], "bad.tsv:2 has an empty target"),
    ([], [], "bad.tsv has no pairs"),
    (["go .\tva !", "run !\tcours !", "i like tea .\tj aime le the ."], ["--filter", "tutorial"],
     "no pairs left after the tutorial's filter"),
])
def test_bad_tsv_files_fail_cleanly(tmp_path, capsys, lines, extra, message):
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    fails_cleanly(capsys, ["train", "seq2seq", "--task", "seq2seq", "--data", str(tsv), *extra, "--steps", "1",
                           "--no-progress", "--out", str(tmp_path / "run")], message)


@pytest.mark.parametrize("data", ["revers", "{tmp}/absent.tsv"])
def test_unknown_data_fails_cleanly(tmp_path, capsys, data):
    fails_cleanly(capsys, ["train", "seq2seq", "--task", "seq2seq", "--data", data.format(tmp=tmp_path),
                           "--steps", "1", "--no-progress", "--out", str(tmp_path / "run")],
                  "is neither a synthetic kind (copy, reverse, sort, addition, dates) nor a TSV file")


def test_bad_translation_inputs_fail_cleanly(char_run, tmp_path, capsys):
    capsys.readouterr()
    fails_cleanly(capsys, ["translate", str(char_run), "--text", "a b"], "input line 1: text contains 'a'")
    fails_cleanly(capsys, ["translate", str(char_run), "--text", "1 2", "--text", "3 x"],
                  "input line 2: text contains 'x'")
    fails_cleanly(capsys, ["translate", str(char_run), "--text", ""], "input line 1 is empty")
    fails_cleanly(capsys, ["translate", str(char_run), "--text", "1 2", "--text", "   "], "input line 2 is empty")
    existing = tmp_path / "out.txt"
    existing.write_text("keep me\n")
    fails_cleanly(capsys, ["translate", str(char_run), "--text", "1 2", "--output", str(existing)],
                  "exists; seqlab never replaces a file")
    assert existing.read_text() == "keep me\n"


def test_an_empty_line_in_the_input_file_fails_naming_it(char_run, tmp_path, capsys):
    sources = tmp_path / "sources.txt"
    sources.write_text("1 2 3\n\n4 5\n")
    capsys.readouterr()
    fails_cleanly(capsys, ["translate", str(char_run), "--input", str(sources), "--output",
                           str(tmp_path / "out.txt")], "input line 2 is empty")


@pytest.mark.parametrize("tokenizer", [
    "word",
    "char",
    "unigram",
])
def test_no_target_symbol_holds_a_newline(tokenizer):
    # One translation is one output line: no id the decoder can write may bring a line break.
    task = small_task(data="dates", tokenizer=tokenizer, train_size=100)
    texts = [task.target_text([token]) for token in range(TARGET_SHIFT, task.model_defaults()["tgt_vocab_size"])]
    assert not [text for text in texts if "\n" in text]


# ---- the command line end to end ---------------------------------------------------------------

def test_translate_writes_one_line_per_input(trained_run, tmp_path, capsys):
    checkpoint = load_checkpoint(trained_run)
    model, task = checkpoint.model.eval(), checkpoint.task()
    sources = [pair.source for pair in task.splits["test"][:5]]
    (tmp_path / "sources.txt").write_text("".join(line + "\n" for line in sources))
    out = tmp_path / "translations.txt"
    assert main(["translate", str(trained_run), "--input", str(tmp_path / "sources.txt"), "--output", str(out)]) == 0
    written = out.read_text(encoding="utf-8")
    assert written.endswith("\n") and len(written.splitlines()) == 5
    assert written.splitlines() == task.predict(model, sources)
    capsys.readouterr()
    # A beam of one is greedy decoding (a row's greedy output does not depend on its batch).
    assert main(["predict", str(trained_run), "--text", sources[0], "--text", sources[1], "--beam-size", "1"]) == 0
    assert capsys.readouterr().out.splitlines() == greedy_hypotheses(model, task, "test")[:2]


def test_eval_prints_the_metrics_as_json(trained_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["eval", str(trained_run)]) == 0
    printed = json.loads(capsys.readouterr().out)
    keys = {"loss", "token_accuracy", "exact_match", "bleu", "chrf", "pairs"}
    assert keys <= set(printed)
    checkpoint = load_checkpoint(trained_run)
    metrics = checkpoint.task().evaluate(checkpoint.model, "test")
    assert {key: printed[key] for key in keys} == {key: metrics[key] for key in keys}
    assert 0 < printed["token_accuracy"] < 1 and 0 < printed["loss"] < math.log(checkpoint.model.tgt_vocab_size)
    other = tmp_path / "other.tsv"                                     # a whole file is the test split
    other.write_text("1 2 3\t3 2 1\n4 5 6 7\t7 6 5 4\n4 5 6 7\t7 6 5 4\n", encoding="utf-8")
    assert main(["eval", str(trained_run), "--data", str(other)]) == 0
    on_file = json.loads(capsys.readouterr().out)
    metrics = checkpoint.task(str(other)).evaluate(checkpoint.model, "test")
    assert {key: on_file[key] for key in keys} == {key: metrics[key] for key in keys} and on_file["pairs"] == 3


def test_compare_reports_bleu_and_exact_match(tmp_path, capsys, monkeypatch):
    # The models train in this process (no spawn), for speed; the report is the real one.
    monkeypatch.setattr(compare_module, "run_in_fresh_process", lambda function, *args: function(*args))
    out = tmp_path / "report"
    assert main(["compare", *SMALL_FLAGS, "--models", "seq2seq,seq2seq-luong", "--steps", "3",
                 "--out", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    header = next(line for line in table if line.startswith("| model |"))
    assert "| exact % |" in header and "| BLEU |" in header and "| chrF |" in header
    assert any(line.startswith("| seq2seq |") for line in table)
    assert any(line.startswith("| seq2seq-luong |") for line in table)
    markdown = (out / "report.md").read_text()
    assert "## Test examples (greedy)" in markdown and "reference:" in markdown
    # Exact match by source length for both models, and the attention of the model that has one.
    assert "## exact match (%) by source length" in markdown and (out / "breakdown.png").is_file()
    assert (out / "seq2seq-luong-attention.png").read_bytes().startswith(b"\x89PNG")
    assert not (out / "seq2seq-attention.png").exists()
