"""BERT: the masking rule's statistics, packing a sentence's pieces, and the pipeline from
masked-language-model pre-training to fine-tuning a tagger and a classifier from the CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch

from seqlab.checkpoint import load_checkpoint
from seqlab.cli import main
from seqlab.models.bert import pack_pieces
from seqlab.tasks.mlm import IGNORED, mask_tokens

from helpers import fails_cleanly
from test_tagging_cli import conllu_text, generated_sentence

BERT_TINY = ["--set", "d_model=16", "--set", "n_layers=1", "--set", "n_heads=2", "--no-progress"]


def test_masking_follows_bert_s_proportions():
    # 200,000 positions: each share is within 5 standard deviations of BERT's.
    ids = torch.randint(0, 50, (400, 500), generator=torch.Generator().manual_seed(0))
    inputs, targets = mask_tokens(ids, 50, 50, torch.Generator().manual_seed(1))
    chosen = targets != IGNORED
    n = ids.numel()
    assert abs(chosen.float().mean() - 0.15) < 5 * (0.15 * 0.85 / n) ** 0.5
    picked = int(chosen.sum())
    masked = (inputs[chosen] == 50).float().mean()
    kept = (inputs[chosen] == ids[chosen]).float().mean()          # kept, or replaced by itself (1/50)
    assert abs(masked - 0.8) < 5 * (0.8 * 0.2 / picked) ** 0.5
    assert abs(kept - (0.1 + 0.1 / 50)) < 5 * (0.1 * 0.9 / picked) ** 0.5
    assert torch.equal(targets[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])
    again = mask_tokens(ids, 50, 50, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], targets)


def test_pack_pieces_by_hand():
    # Two sentences: [[3 4] [5]] and [[6] [7 8 9] [pad]]; piece c is encoder id c - 1.
    ids = torch.tensor([[[3, 4, 0], [5, 0, 0], [0, 0, 0]], [[6, 0, 0], [7, 8, 9], [2, 0, 0]]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    packed, piece_mask, slot, real = pack_pieces(ids, mask)
    assert packed.tolist() == [[2, 3, 4, 0], [5, 6, 7, 8]]
    assert piece_mask.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert slot[0, 0, :2].tolist() == [0, 1] and slot[0, 1, 0] == 2 and slot[1, 1].tolist() == [1, 2, 3]
    assert not real[1, 2].any()                                   # the padded word's piece is not read


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny BERT pre-trained by masked language modelling on text of the treebank's words."""
    root = tmp_path_factory.mktemp("bert")
    rng = random.Random(0)
    sentences = [generated_sentence(rng) for _ in range(400)]
    (root / "text.txt").write_text("\n".join(" ".join(word for word, _ in s) for s in sentences))
    treebank = root / "treebank"
    treebank.mkdir()
    for split, count in (("train", 200), ("dev", 30), ("test", 30)):
        (treebank / f"toy-ud-{split}.conllu").write_text(conllu_text([generated_sentence(rng) for _ in range(count)]))
    run = root / "mlm"
    assert main(["train", "bert", "--task", "mlm", "--data", str(root / "text.txt"), "--context", "32", *BERT_TINY,
                 "--steps", "30", "--eval-every", "30", "--out", str(run)]) == 0
    return root


def test_pretraining_learns_and_fills_masks(pretrained, capsys):
    history = [json.loads(line) for line in (pretrained / "mlm" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["valid_loss"] < history[0].get("train_loss", 10.0)
    lines = pretrained / "lines.txt"
    lines.write_text("the big d[MASK]g sees a cat .\n")
    capsys.readouterr()
    assert main(["predict", str(pretrained / "mlm"), "--input", str(lines)]) == 0
    filled = capsys.readouterr().out.splitlines()
    assert len(filled) == 1 and filled[0].startswith("the big d") and "[MASK]" not in filled[0]
    lines.write_text("no marker here\n")
    fails_cleanly(capsys, ["predict", str(pretrained / "mlm"), "--input", str(lines)], "has no [MASK] to fill in")


def test_fine_tuning_a_tagger_and_a_classifier_from_the_pretrained_encoder(pretrained, capsys):
    mlm = pretrained / "mlm"
    tag_argv = ["train", "bert", "--task", "tag", "--data", str(pretrained / "treebank"), *BERT_TINY,
                "--steps", "3", "--eval-every", "3", "--init-from", str(mlm)]
    # With its own characters the embedding means other things: it is not loaded, the blocks are.
    assert main([*tag_argv, "--out", str(pretrained / "tag-own-characters")]) == 0
    out = capsys.readouterr().out
    assert "skipped encoder.embedding.weight" in out and "loaded  encoder.blocks.0.attention.q_proj.weight" in out
    assert main([*tag_argv, "--tokenizer-from", str(mlm), "--out", str(pretrained / "tagger")]) == 0
    out = capsys.readouterr().out
    assert "loaded  encoder.embedding.weight" in out and "loaded  encoder.blocks.0.attention.q_proj.weight" in out
    assert "new     head.weight" in out
    tagger = load_checkpoint(pretrained / "tagger")
    mlm_vocab = load_checkpoint(mlm).model.config.vocab_size
    assert tagger.model.config.n_characters == mlm_vocab + 1             # every piece id, and padding
    assert tagger.task(with_data=False).vocabulary.pieces.vocab_size == mlm_vocab   # the run kept the tokenizer
    sentences = pretrained / "sentences.txt"
    sentences.write_text("the big dog sees a zebra .\n")
    assert main(["tag", str(pretrained / "tagger"), "--input", str(sentences)]) == 0
    assert capsys.readouterr().out.count("/") == 7

    data = pretrained / "data.tsv"
    data.write_text("".join(f"{'yes' if i % 3 == 0 else 'no'}\tthe {'big' if i % 3 == 0 else 'small'} cat {i}\n"
                            for i in range(60)))
    assert main(["train", "bert", "--task", "classify", "--data", str(data), "--tokenizer-from", str(mlm), *BERT_TINY,
                 "--steps", "3", "--eval-every", "3", "--init-from", str(mlm), "--out", str(pretrained / "cls")]) == 0
    out = capsys.readouterr().out
    assert "loaded  encoder.blocks.0.feedforward.down.weight" in out and "new     head.weight" in out


def test_compare_starts_a_model_from_a_pretrained_run(pretrained, capsys):
    mlm, out = pretrained / "mlm", pretrained / "compare"
    argv = ["compare", "--task", "tag", "--data", str(pretrained / "treebank"), "--tokenizer-from", str(mlm),
            "--models", "bert", "--budget", "8", "--no-progress", "--out", str(out)]
    fails_cleanly(capsys, [*argv, "--init-from", f"bilstm={mlm}"], "names 'bilstm', which is not among")
    fails_cleanly(capsys, [*argv, "--init-from", "bert"], "--init-from takes MODEL=RUN")
    from seqlab.compare import compare

    report = compare("tag", ["bert"], {"data": str(pretrained / "treebank"), "tokenizer_from": str(mlm)},
                     budget_seconds=8.0, model_options={"bert": {"d_model": 16, "n_layers": 1, "n_heads": 2}},
                     out_dir=out, progress=False, init_from={"bert": str(mlm)})
    shown = report.results[0].sections["Initialised from"]
    assert "encoder.embedding.weight" in shown and "head.weight" in shown
    assert "Initialised from" in (out / "report.md").read_text()
