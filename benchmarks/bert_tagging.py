"""BERT on UD English EWT (UPOS): masked-language-model pre-training, then fine-tuning beside
the BiLSTM tagger in ``seqlab compare --task tag``.

1. ``bert --task mlm`` is pre-trained for ``--pretrain-seconds`` on the built-in corpus plus the
   words of EWT's training sentences (characters, windows of 128);
2. ``seqlab compare --task tag`` trains ``bilstm`` and ``bert`` on EWT, every word read through
   the pre-trained run's character tokenizer (``--tokenizer-from``), ``bert`` starting from the
   pre-trained encoder (``--init-from bert=RUN``), for ``--budget`` seconds shared by the two.

The report (accuracy and accuracy on test words unseen in training, with the curves) goes to
``--out``; the last line is ``RESULT bert_accuracy=... bert_unseen_accuracy=... bilstm_accuracy=...
bilstm_unseen_accuracy=...``.

    python benchmarks/bert_tagging.py [--pretrain-seconds 600] [--budget 1080] [--out runs/bert-tagging]
                                      [--tokenizer bpe --vocab-size 2048]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seqlab.cli import main as seqlab
from seqlab.compare import compare
from seqlab.data.conll import find_conllu_files, read_conllu
from seqlab.data.corpora import builtin_corpus

EWT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ud_english_ewt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=EWT)
    parser.add_argument("--pretrain-seconds", type=float, default=600.0)
    parser.add_argument("--budget", type=float, default=1080.0)
    parser.add_argument("--out", type=Path, default=Path("runs/bert-tagging"))
    parser.add_argument("--tokenizer", default="char", help="char, or bpe (with --vocab-size) for shorter sequences")
    parser.add_argument("--vocab-size", type=int, default=None)
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"skipped: {args.data} is absent (see ../shared/data/README.md)")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    text = args.out / "pretraining.txt"
    train = read_conllu(find_conllu_files(args.data)["train"], "upos")
    text.write_text(builtin_corpus().text + "\n" + "\n".join(" ".join(s.words) for s in train) + "\n")
    pretrained = args.out / "mlm"
    tokens = ["--tokenizer", args.tokenizer] + ([] if args.vocab_size is None else ["--vocab-size", str(args.vocab_size)])
    code = seqlab(["train", "bert", "--task", "mlm", "--data", str(text), *tokens, "--context", "128", "--steps", "1000000",
                   "--budget", str(args.pretrain_seconds), "--eval-every", "1000000", "--no-progress",
                   "--out", str(pretrained)])
    if code:
        return code
    report = compare("tag", ["bilstm", "bert"], {"data": str(args.data), "tokenizer_from": str(pretrained)},
                     budget_seconds=args.budget, out_dir=args.out / "compare", progress=False,
                     init_from={"bert": str(pretrained)})
    print(report.table())
    metrics = {result.name: result.metrics for result in report.results}
    print("RESULT " + " ".join(f"{name}_{key}={metrics[name][key]:.4f}" for name in ("bert", "bilstm")
                               for key in ("accuracy", "unseen_accuracy")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
