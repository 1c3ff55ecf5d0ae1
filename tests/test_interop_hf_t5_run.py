"""T5 as a run: a tiny random ``T5ForConditionalGeneration`` with a word-level tokenizer built
here (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, a post-processor appending ``</s>``, 20 ids for the
model's 32 rows), imported by ``seqlab import-hf``, must translate as transformers' greedy
``generate`` does, evaluate to transformers' teacher-forced cross-entropy, and export back to a
directory that transformers reads with equal logits, generation and tokenizer.

Seed 5 makes one of the inputs end at EOS after three tokens, one of them an id past the
tokenizer's (dropped from the text), and another repeat ``<unk>``.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from seqlab.checkpoint import load_checkpoint, read_info
from seqlab.cli import main
from seqlab.rundir import resolve_checkpoint
from seqlab.tasks.seq2seq import Seq2Seq, Seq2SeqOptions

from helpers import fails_cleanly

PAD, EOS, MODEL_VOCAB, NEW_TOKENS = 0, 1, 32, 12
WORDS = ["<pad>", "</s>", "<unk>", *"a b c d e f g h i j k l m n o p q".split()]
TEXTS = ["a b c", "d e f g h", "q p o", "i j"]
PAIRS = [("a b c", "c b a"), ("d e f g h", "h g"), ("q p o", "o p q k l m"), ("i j", "j"), ("b", "x b")]


def word_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(WORDS[:3])
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS)])
    return tokenizer


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(reference model, tokenizer, HF directory, run directory)."""
    root = tmp_path_factory.mktemp("t5")
    torch.manual_seed(5)
    config = transformers.T5Config(
        vocab_size=MODEL_VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
        decoder_start_token_id=PAD, eos_token_id=EOS, pad_token_id=PAD, initializer_factor=4.0)
    reference = transformers.T5ForConditionalGeneration(config).eval()
    reference.save_pretrained(root / "hf")
    tokenizer = word_tokenizer()
    tokenizer.save(str(root / "hf" / "tokenizer.json"))
    assert main(["import-hf", str(root / "hf"), "--out", str(root / "run"), "--context", str(NEW_TOKENS)]) == 0
    return reference, tokenizer, root / "hf", root / "run"


def generated(reference, tokenizer: Tokenizer, text: str) -> list[int]:
    """transformers' greedy tokens for ``text`` (encoded with its </s>), after the start token."""
    ids = torch.tensor([tokenizer.encode(text).ids])
    with torch.no_grad():
        out = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                 do_sample=False, num_beams=1)
    assert out[0, 0] == PAD
    return out[0, 1:].tolist()


def text_of(tokenizer: Tokenizer, tokens: list[int]) -> str:
    """The text of generated tokens up to EOS, PAD dropped; HF ``decode`` drops ids past the vocabulary."""
    tokens = tokens[:tokens.index(EOS)] if EOS in tokens else tokens
    return tokenizer.decode([t for t in tokens if t != PAD], skip_special_tokens=False)


def test_an_imported_t5_is_a_seq2seq_run_with_its_id_scheme(imported):
    _, _, _, run = imported
    info = read_info(resolve_checkpoint(run))
    assert info["model"] == "transformer-encdec"
    spec = info["task"]
    assert spec["task"] == "seq2seq" and spec["data"] is None and spec["max_output_length"] == NEW_TOKENS
    assert spec["vocabulary"] == {"pad_id": PAD, "bos_id": PAD, "eos_id": EOS, "source_shift": 0, "target_shift": 0,
                                  "source_eos_id": EOS, "src_vocab_size": MODEL_VOCAB, "tgt_vocab_size": MODEL_VOCAB}
    task = load_checkpoint(run).task(with_data=False)
    assert json.loads(json.dumps(task.spec())) == spec           # a re-saved run keeps its scheme
    assert task.model_defaults() == {"src_vocab_size": MODEL_VOCAB, "tgt_vocab_size": MODEL_VOCAB}
    # A run trained here has no vocabulary entry: its scheme is the default one.
    native = Seq2Seq.from_options(Seq2SeqOptions(data="reverse", min_length=2, max_length=3, train_size=20,
                                                 valid_size=2, test_size=2))
    assert "vocabulary" not in native.spec()


def test_translate_and_predict_equal_transformers_greedy_generation(imported, capsys):
    reference, tokenizer, _, run = imported
    tokens = {text: generated(reference, tokenizer, text) for text in TEXTS}
    assert EOS in tokens["d e f g h"] and max(tokens["d e f g h"]) >= len(WORDS)   # stops early, a spare id
    assert any(EOS not in t for t in tokens.values())                                 # runs to the limit
    expected = [text_of(tokenizer, tokens[text]) for text in TEXTS]
    assert "<unk>" in expected[0] and len(set(expected)) == len(TEXTS)
    capsys.readouterr()
    flags = ["--beam-size", "1", "--max-output-length", str(NEW_TOKENS)]
    assert main(["translate", str(run), *(f for text in TEXTS for f in ("--text", text)), *flags]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    assert main(["predict", str(run), "--text", TEXTS[1], "--beam-size", "1"]) == 0       # --context is its limit
    assert capsys.readouterr().out.splitlines() == [expected[1]]


def test_eval_equals_transformers_teacher_forced_cross_entropy(imported, tmp_path, capsys):
    reference, tokenizer, _, run = imported
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{source}\t{target}\n" for source, target in PAIRS))
    total, correct, count = 0.0, 0, 0
    for source, target in PAIRS:
        input_ids = torch.tensor([tokenizer.encode(source).ids])
        labels = torch.tensor([tokenizer.encode(target).ids])              # the target's ids and </s>
        assert labels[0, -1] == EOS
        with torch.no_grad():
            logits = reference(input_ids=input_ids, labels=labels).logits[0].double()
        total += float(torch.nn.functional.cross_entropy(logits, labels[0], reduction="sum"))
        correct += int((logits.argmax(dim=-1) == labels[0]).sum())
        count += labels.shape[1]
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(pairs)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["pairs"] == len(PAIRS)
    assert metrics["loss"] == pytest.approx(total / count, rel=0, abs=1e-4)
    assert metrics["token_accuracy"] == pytest.approx(correct / count, rel=0, abs=1e-12)
    fails_cleanly(capsys, ["eval", str(run)], "--data")                 # no data of its own


def test_export_gives_transformers_the_same_model_generation_and_tokenizer(imported, tmp_path, capsys):
    reference, tokenizer, _, run = imported
    capsys.readouterr()
    assert main(["export-hf", str(run), "--out", str(tmp_path / "back")]) == 0
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    assert (back.config.pad_token_id, back.config.eos_token_id, back.config.decoder_start_token_id) == (PAD, EOS, PAD)
    generation = json.loads((tmp_path / "back" / "generation_config.json").read_text())
    assert (generation["decoder_start_token_id"], generation["eos_token_id"]) == (PAD, EOS)
    ids = torch.tensor([tokenizer.encode(text).ids + [PAD] * (6 - len(tokenizer.encode(text).ids)) for text in TEXTS])
    mask = ids != PAD
    tgt_in = torch.randint(2, MODEL_VOCAB, (len(TEXTS), 9), generator=torch.Generator().manual_seed(0))
    tgt_in[:, 0] = PAD
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=tgt_in).logits
        got = back(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=tgt_in).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    for text in TEXTS:
        assert generated(back, tokenizer, text) == generated(reference, tokenizer, text)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    for text in TEXTS:
        assert hf_tokenizer(text).input_ids == tokenizer.encode(text).ids            # </s> appended
    assert (hf_tokenizer.pad_token, hf_tokenizer.eos_token, hf_tokenizer.unk_token) == ("<pad>", "</s>", "<unk>")


def test_fine_tuning_an_imported_t5_keeps_its_shape_tokenizer_and_ids(imported, tmp_path, capsys):
    """`train --init-from` an imported T5: the model's config, the run's tokenizer and its id
    scheme carry over, every weight is loaded, and training moves them only a little."""
    _, _, _, run = imported
    letters = "a b c d e f g h i j".split()
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{x} {y}\t{y} {x}\n" for x in letters for y in letters[:4]))     # 40 swaps
    tuned = tmp_path / "tuned"
    assert main(["train", "transformer-encdec", "--task", "seq2seq", "--init-from", str(run), "--data", str(pairs),
                 "--steps", "2", "--eval-every", "2", "--batch-size", "4", "--lr", "1e-4", "--no-progress",
                 "--out", str(tuned)]) == 0
    start, after = load_checkpoint(run), load_checkpoint(tuned)
    assert after.model.config == start.model.config
    assert after.info["task"]["vocabulary"] == start.info["task"]["vocabulary"]
    assert after.artifacts["source_tokenizer"].to_json() == start.artifacts["source_tokenizer"].to_json()
    for name, weight in start.model.state_dict().items():
        assert (after.model.state_dict()[name] - weight).abs().max() < 0.05, name
    capsys.readouterr()
    fails_cleanly(capsys, ["train", "transformer-encdec", "--task", "seq2seq", "--data", str(pairs), "--tokenizer-from",
                           str(run), "--tokenizer", "word", "--out", str(tmp_path / "x")], "tokenizer_from")
