"""The ``seqlab`` command. Thin: it parses arguments, calls one library function, prints.

Every ``SeqlabError`` becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from seqlab.errors import ConfigError, SeqlabError

# Training options: flag -> TrainConfig field. Defaults are None so that only the options a
# user gives override the model's defaults or, on --resume, the saved run's.
TRAIN_FLAGS = {
    "--steps": ("steps", int), "--batch-size": ("batch_size", int), "--lr": ("lr", float),
    "--warmup-steps": ("warmup_steps", int), "--weight-decay": ("weight_decay", float),
    "--grad-clip": ("grad_clip", float), "--grad-clip-value": ("grad_clip_value", float),
    "--grad-accum": ("grad_accum", int),
    "--precision": ("precision", str), "--eval-every": ("eval_every", int),
    "--patience": ("patience", int), "--seed": ("seed", int), "--device": ("device", str),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.command(args)
    except SeqlabError as error:
        print(f"seqlab: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seqlab: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqlab", description="Train, evaluate and compare sequence models.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    listing = commands.add_parser("models", help="list registered models")
    listing.set_defaults(command=_models)

    train = commands.add_parser("train", help="train a model into a run directory")
    train.add_argument("model", nargs="?", help="registered model name (optional with --resume)")
    train.add_argument("--out", required=True, help="run directory (created; must not hold other files)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--overwrite", action="store_true", help="replace the seqlab run in --out")
    _task_arguments(train)
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model config value")
    train.add_argument("--budget", type=float, help="training time limit in seconds")
    for flag, (_, kind) in TRAIN_FLAGS.items():
        train.add_argument(flag, type=kind, default=None)
    train.add_argument("--tbptt", action="store_true", default=None,
                       help="truncated BPTT: carry the state across consecutive windows")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(command=_train)

    evaluate = commands.add_parser("eval", help="evaluate a run on its test split or on a text file")
    evaluate.add_argument("run", help="run directory")
    evaluate.add_argument("--data", help="evaluate on this whole text file (lm) or treebank directory (tag) instead")
    evaluate.add_argument("--split", default="test", choices=("train", "valid", "test"))
    evaluate.set_defaults(command=_eval)

    generate = commands.add_parser("generate", help="continue a prompt with a trained model")
    generate.add_argument("run", help="run directory")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--max-new", type=int, default=200, help="tokens to generate")
    generate.add_argument("--temperature", type=float, default=1.0, help="0 for greedy decoding")
    generate.add_argument("--top-k", type=int)
    generate.add_argument("--top-p", type=float)
    generate.add_argument("--seed", type=int)
    generate.set_defaults(command=_generate)

    tag = commands.add_parser("tag", help="tag sentences (one per line, words separated by spaces) with a trained tagger")
    tag.add_argument("run", help="run directory of a tagger")
    tag.add_argument("--input", help="file of sentences (default: standard input)")
    tag.set_defaults(command=_tag)

    compare = commands.add_parser("compare", help="train several models on one task and report")
    compare.add_argument("--models", help="comma-separated names (default: every LM that fits)")
    _task_arguments(compare, context=64)     # short windows: more steps in a CPU budget
    compare.add_argument("--budget", type=float,
                         help="total training seconds, split equally among the models that train "
                              "(default 90 for lm, 1080 for tag)")
    compare.add_argument("--steps", type=int, help="cap on steps per model (the budget still applies)")
    compare.add_argument("--out", default="runs/compare", help="report directory")
    compare.add_argument("--no-progress", action="store_true")
    compare.set_defaults(command=_compare)

    reproduce = commands.add_parser("reproduce", help="re-run a result from the literature")
    reproduce.add_argument("name", nargs="?", help="experiment name (see --list)")
    reproduce.add_argument("--list", action="store_true", help="list the experiments")
    reproduce.add_argument("--quick", action="store_true", help="a shorter run, for a first look")
    reproduce.add_argument("--out", help="where to write plots (default runs/NAME)")
    reproduce.add_argument("--no-progress", action="store_true")
    reproduce.set_defaults(command=_reproduce)
    return parser


def _task_arguments(parser: argparse.ArgumentParser, context: int = 128) -> None:
    parser.add_argument("--task", default="lm", choices=("lm", "tag"),
                        help="lm: language modelling; tag: sequence tagging on a CoNLL-U treebank")
    parser.add_argument("--data", help="lm: UTF-8 text file (default: the built-in pydoc-topics corpus); "
                                       "tag: a treebank directory with *-train/-dev/-test.conllu")
    parser.add_argument("--column", default="upos", choices=("upos", "xpos"), help="tag column (tag task)")
    parser.add_argument("--tokenizer", default="char", help="char, word, bpe or unigram")
    parser.add_argument("--context", type=int, default=context, help="context window in tokens")
    parser.add_argument("--vocab-size", type=int, help="vocabulary size for word/bpe/unigram")


def _task_options(args: argparse.Namespace):
    from seqlab.compare import TaskOptions
    from seqlab.compare_tagging import TaggingOptions

    if args.task == "tag":
        if not args.data:
            raise ConfigError("--task tag needs --data: a treebank directory with *-train/-dev/-test.conllu files")
        return TaggingOptions(data=args.data, column=args.column)
    return TaskOptions(data=args.data, tokenizer=args.tokenizer, context=args.context, vocab_size=args.vocab_size)


def _key_values(pairs: list[str]) -> dict[str, Any]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        values[key.strip()] = value.strip()
    return values


def _models(args: argparse.Namespace) -> int:
    from seqlab import registry

    example_task = {"lm": {"vocab_size": 256, "max_len": 256},
                    "tag": {"n_words": 20_000, "n_characters": 100, "n_tags": 17}}
    print(f"{'name':<14}{'task':<8}{'parameters':>12}  summary")
    for entry in registry.entries():
        model = registry.build_for_task(entry.name, example_task[entry.task], {}, task=entry.task)
        print(f"{entry.name:<14}{entry.task:<8}{registry.parameter_count(model):>12,}  {entry.summary}")
    print("(parameters at default config; lm: 256-token vocabulary; tag: 20,000 words, 17 tags)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from seqlab.runs import train_run

    options = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _) in TRAIN_FLAGS.items()}
    options = {field: value for field, value in options.items() if value is not None}
    if args.budget is not None:
        options["budget_seconds"] = args.budget
    if args.tbptt:
        options["tbptt"] = True
    if args.no_progress:
        options["progress"] = False
    result, metrics = train_run(
        args.model, args.out, task=None if args.resume else _task_options(args),
        model_overrides=_key_values(args.set), train_options=options,
        resume=args.resume, overwrite=args.overwrite,
    )
    if os.environ.get("RANK", "0") != "0":
        return 0                       # under torchrun, only the first process reports
    if "valid_accuracy" in metrics:
        print(f"trained in {result.train_seconds:.1f} s ({result.tokens_per_second:,.0f} words/s, "
              f"{result.steps} steps), stopped by {result.stopped_by}; valid accuracy "
              f"{100 * metrics['valid_accuracy']:.2f}% (unseen words {100 * metrics['valid_unseen_accuracy']:.2f}%); "
              f"saved to {args.out}")
        return 0
    print(f"trained {result.steps} steps in {result.train_seconds:.1f} s "
          f"({result.tokens_per_second:,.0f} tokens/s, gradient clipped at {result.clipped_steps} steps), "
          f"stopped by {result.stopped_by}; "
          f"valid loss {metrics.get('valid_loss', float('nan')):.4f}, "
          f"bpc {metrics.get('valid_bpc', float('nan')):.4f}; saved to {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from seqlab.runs import evaluate_run

    print(json.dumps(evaluate_run(args.run, data=args.data, split=args.split), indent=2))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from seqlab.runs import generate_from_run

    text = generate_from_run(args.run, args.prompt, args.max_new, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    print(args.prompt + text)
    return 0


def _tag(args: argparse.Namespace) -> int:
    from seqlab.runs import tag_with_run

    if args.input:
        from seqlab.data.corpora import read_text

        text = read_text(args.input)
    else:
        text = sys.stdin.read()
    sentences = [line.split() for line in text.splitlines() if line.strip()]
    if not sentences:
        raise ConfigError("no sentences to tag: give one sentence per line, words separated by spaces")
    for words, tags in zip(sentences, tag_with_run(args.run, sentences)):
        print(" ".join(f"{word}/{tag}" for word, tag in zip(words, tags)))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from seqlab.compare import compare
    from seqlab.compare_tagging import DEFAULT_BUDGET_SECONDS, compare_taggers

    models = [name.strip() for name in args.models.split(",") if name.strip()] if args.models else None
    train_options = {"steps": args.steps} if args.steps else {}
    if args.task == "tag":
        budget = DEFAULT_BUDGET_SECONDS if args.budget is None else args.budget
        report = compare_taggers(models, _task_options(args), budget_seconds=budget, train_options=train_options,
                                 out_dir=args.out, progress=not args.no_progress)
    else:
        report = compare(models, _task_options(args), budget_seconds=90.0 if args.budget is None else args.budget,
                         train_options=train_options, out_dir=args.out, progress=not args.no_progress)
    print(report.table())
    print(f"report written to {args.out}/report.md, report.html and curves.png")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from seqlab import experiments

    if args.list or not args.name:
        for name in experiments.EXPERIMENTS:
            print(f"{name:<20} {experiments.get(name).CLAIM}")
        return 0
    experiment = experiments.get(args.name)
    print(experiment.run(args.out or f"runs/{args.name}", quick=args.quick, progress=not args.no_progress))
    return 0


if __name__ == "__main__":
    sys.exit(main())
