"""`seqlab import-hf` and `seqlab export-hf`: an HF directory (tiny random model and a tokenizer
trained here) becomes a run that eval, generate, compare and train --init-from read as any
run, and a run goes back to a directory that transformers reads with equal logits."""

from __future__ import annotations

import json

import pytest
import tokenizers
import torch
import transformers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from seqlab.checkpoint import load_checkpoint
from seqlab.cli import main
from seqlab.data.corpora import builtin_corpus

from helpers import fails_cleanly

BOS, EOS = "<s>", "</s>"
PROMPT = "The module"


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text(builtin_corpus().text[:12_000])
    return path


def byte_level_bpe(text: str, bos_post_processor: bool) -> tokenizers.Tokenizer:
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([text], trainer)
    if bos_post_processor:            # as Llama's tokenizer: <s> before every text
        tokenizer.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 0)])
    return tokenizer


def hf_directory(path, text: str, kind: str):
    """A tiny random GPT-2 or Llama with its BPE tokenizer (Llama's adds <s>), saved as HF does."""
    tokenizer = byte_level_bpe(text, bos_post_processor=kind == "llama")
    vocab = tokenizer.get_vocab_size()
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=4,
                                         initializer_range=0.2, bos_token_id=0, eos_token_id=1)
        reference = transformers.GPT2LMHeadModel(config).eval()
    else:
        config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                          initializer_range=0.2, bos_token_id=0, eos_token_id=1, pad_token_id=None)
        reference = transformers.LlamaForCausalLM(config).eval()
    reference.save_pretrained(path)
    tokenizer.save(str(path / "tokenizer.json"))
    return reference, tokenizer


def greedy(reference, ids: list[int], new: int, eos: int | None) -> list[int]:
    prompt = torch.tensor([ids])
    with torch.no_grad():
        out = reference.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, do_sample=False,
                                 num_beams=1, eos_token_id=eos, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_an_imported_run_generates_as_transformers_and_stops_at_its_eos(tmp_path, text_file, capsys, kind):
    reference, tokenizer = hf_directory(tmp_path / "hf", text_file.read_text(), kind)
    ids = tokenizer.encode(PROMPT).ids                       # with <s> for Llama, as its tokenizer adds it
    assert (ids[0] == 0) == (kind == "llama")
    free = greedy(reference, ids, 20, eos=None)
    stop = next(i for i in range(3, 20) if free[i] not in free[:i])          # a token first made at step i
    (tmp_path / "hf" / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": free[stop]}))
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "run"), "--prompt", PROMPT, "--max-new", "20", "--temperature", "0"]) == 0
    printed = capsys.readouterr().out.removesuffix("\n")
    expected = greedy(reference, ids, 20, eos=free[stop])
    assert expected[-1] == free[stop] and len(expected) == stop + 1
    assert printed == PROMPT + tokenizer.decode(expected[:-1])


@pytest.fixture(scope="module")
def imported_gpt2(tmp_path_factory, text_file):
    root = tmp_path_factory.mktemp("imported")
    reference, tokenizer = hf_directory(root / "hf", text_file.read_text(), "gpt2")
    assert main(["import-hf", str(root / "hf"), "--out", str(root / "run"), "--context", "64"]) == 0
    return reference, tokenizer, root / "run"


def test_an_imported_run_evaluates_exports_and_fine_tunes(imported_gpt2, text_file, tmp_path, capsys):
    reference, tokenizer, run = imported_gpt2
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(text_file)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0 < metrics["loss"] < 20 and metrics["perplexity"] > 1

    assert main(["export-hf", str(run), "--out", str(tmp_path / "back")]) == 0
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    fast = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    assert fast.encode("Return the value", add_special_tokens=False) == tokenizer.encode("Return the value").ids
    assert (again.config.bos_token_id, again.config.eos_token_id) == (0, 1) and fast.eos_token == EOS
    tokens = torch.randint(0, reference.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(again(tokens).logits, reference(tokens).logits, atol=1e-5, rtol=0)

    tuned = tmp_path / "tuned"
    assert main(["train", "gpt", "--init-from", str(run), "--data", str(text_file), "--context", "32", "--steps", "2",
                 "--eval-every", "2", "--batch-size", "2", "--no-progress", "--out", str(tuned)]) == 0
    start, after = load_checkpoint(run), load_checkpoint(tuned)
    assert after.model.config == start.model.config                  # the imported shape
    for name, weight in start.model.state_dict().items():            # every weight loaded, then nudged
        assert (after.model.state_dict()[name] - weight).abs().max() < 0.05, name
    assert after.artifacts["tokenizer"].to_json() == start.artifacts["tokenizer"].to_json()
    assert after.info["task"]["special_tokens"] == start.info["task"]["special_tokens"]


def test_compare_starts_a_model_from_an_imported_run(imported_gpt2, text_file, tmp_path, capsys):
    _, _, run = imported_gpt2
    assert main(["compare", "--task", "lm", "--models", "gpt", "--data", str(text_file), "--tokenizer-from", str(run),
                 "--init-from", f"gpt={run}", "--context", "32", "--steps", "2", "--budget", "60", "--no-progress",
                 "--out", str(tmp_path / "report")]) == 0
    assert "gpt" in capsys.readouterr().out


def test_bert_imports_as_a_masked_lm_run_with_its_tokenizers_mask(tmp_path, text_file, capsys):
    text = text_file.read_text()
    tokenizer = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator([text], trainers.WordPieceTrainer(vocab_size=200, special_tokens=[
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    mask = tokenizer.token_to_id("[MASK]")
    config = transformers.BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    reference = transformers.BertForMaskedLM(config).eval()
    reference.save_pretrained(tmp_path / "hf")
    tokenizer.save(str(tmp_path / "hf" / "tokenizer.json"))
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run"), "--context", "64"]) == 0
    loaded = load_checkpoint(tmp_path / "run")
    assert loaded.info["task"]["task"] == "mlm" and loaded.model.mask_id == mask == 4
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--data", str(text_file)]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] > 0
    assert main(["export-hf", str(tmp_path / "run"), "--out", str(tmp_path / "back")]) == 0
    again = transformers.BertForMaskedLM.from_pretrained(tmp_path / "back").eval()
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "back").mask_token == "[MASK]"
    tokens = torch.randint(0, config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(again(tokens).logits, reference(tokens).logits, atol=1e-5, rtol=0)


def test_import_and_export_refusals(tmp_path, text_file, capsys):
    fails_cleanly(capsys, ["import-hf", str(tmp_path / "nothing"), "--out", str(tmp_path / "run")], "not a directory")
    (tmp_path / "empty").mkdir()
    fails_cleanly(capsys, ["import-hf", str(tmp_path / "empty"), "--out", str(tmp_path / "run")], "config.json")
    t5 = transformers.T5Config(vocab_size=40, d_model=16, d_kv=4, num_heads=4, d_ff=32, num_layers=1)
    transformers.T5ForConditionalGeneration(t5).save_pretrained(tmp_path / "t5")
    capsys.readouterr()                                       # transformers' progress bars
    fails_cleanly(capsys, ["import-hf", str(tmp_path / "t5"), "--out", str(tmp_path / "run")], "load_model")
    reference, _ = hf_directory(tmp_path / "gpt2", text_file.read_text(), "gpt2")
    (tmp_path / "gpt2" / "tokenizer.json").unlink()
    capsys.readouterr()
    fails_cleanly(capsys, ["import-hf", str(tmp_path / "gpt2"), "--out", str(tmp_path / "run")], "tokenizer.json")
    assert not (tmp_path / "run").exists()

    char_run = tmp_path / "char"
    assert main(["train", "gpt", "--data", str(text_file), "--context", "16", "--set", "d_model=16", "--set",
                 "n_layers=1", "--steps", "1", "--no-progress", "--out", str(char_run)]) == 0
    capsys.readouterr()
    fails_cleanly(capsys, ["export-hf", str(char_run), "--out", str(tmp_path / "out")], "char")
    assert not (tmp_path / "out").exists()
    assert main(["export-hf", str(char_run), "--out", str(tmp_path / "out"), "--without-tokenizer"]) == 0
    assert transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").config.n_embd == 16
    capsys.readouterr()
    fails_cleanly(capsys, ["export-hf", str(char_run), "--out", str(tmp_path / "out"), "--without-tokenizer"],
                  "not empty")


def test_half_precision_weights_stay_half_through_a_run(tmp_path, text_file, capsys):
    """A bf16 checkpoint imports as a bf16 run (config.json says so), reloads in bf16, and
    generates; --dtype float32 casts it; export keeps the run's dtype."""
    reference, _ = hf_directory(tmp_path / "hf", text_file.read_text(), "llama")
    reference.to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "half")]) == 0
    half = load_checkpoint(tmp_path / "half")
    assert half.info["dtype"] == "bfloat16"
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert torch.equal(half.model.token_embedding.weight, reference.model.embed_tokens.weight)   # stored values
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "half"), "--prompt", PROMPT, "--max-new", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith(PROMPT)
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "full"), "--dtype", "float32"]) == 0
    full = load_checkpoint(tmp_path / "full")
    assert "dtype" not in full.info and {p.dtype for p in full.model.parameters()} == {torch.float32}
    assert main(["export-hf", str(tmp_path / "half"), "--out", str(tmp_path / "back")]) == 0
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", dtype="auto")
    assert again.dtype == torch.bfloat16
    assert torch.equal(again.model.embed_tokens.weight, reference.model.embed_tokens.weight)
