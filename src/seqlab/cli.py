"""The ``seqlab`` command. Thin: it parses arguments, calls one library function, prints.

Flags are generated, not listed: a task's flags from its ``Options`` dataclass, training flags
from ``TrainConfig``, prediction flags from the task's ``PredictOptions`` (``seqlab.fields``),
so every flag has its documentation and default as help. A task's short name for ``predict``
(``generate``, ``tag``, ...) is a command too. ``seqlab --help`` and ``--version`` import
neither torch nor any task; a command imports what it needs when it runs. Every
``SeqlabError`` becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from seqlab import __version__
from seqlab.errors import ConfigError, DataError, SeqlabError
from seqlab.fields import add_flags

CORE_COMMANDS = ("models", "train", "eval", "predict", "compare", "reproduce", "forecast", "import-hf", "export-hf",
                 "score")
TRAIN_FLAGS_SKIPPED = ("budget_seconds", "progress")      # given as --budget and --no-progress


def main(argv: Sequence[str] | None = None) -> int:
    code = _run(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from seqlab.distributed import end_worker
        end_worker(code)
    return code


def _run(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.showwarning = _show_warning
    try:
        parser = _parser(argv)
        args = parser.parse_args(argv)
        if getattr(args, "threads", None) is not None:
            _set_threads(args.threads)
        return args.handler(args)
    except SeqlabError as error:
        print(f"seqlab: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seqlab: interrupted", file=sys.stderr)
        return 130


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser for this command line: the task-dependent flags of only the command given."""
    parser = argparse.ArgumentParser(
        prog="seqlab", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train, evaluate, compare and use sequence models, from Markov chains to Transformers.",
        epilog="Each task also names `predict` for itself (`seqlab predict --help` lists them).")
    parser.add_argument("--version", action="version", version=f"seqlab {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND", dest="command")
    name = next((arg for arg in argv if not arg.startswith("-")), None)
    builders: dict[str, Callable[[Any, list[str]], None]] = {
        "models": _models_parser, "train": _train_parser, "eval": _eval_parser, "predict": _predict_parser,
        "compare": _compare_parser, "reproduce": _reproduce_parser, "forecast": _forecast_parser,
        "import-hf": _import_hf_parser, "export-hf": _export_hf_parser, "score": _score_parser}
    summaries = {
        "models": "list registered models and tasks, or one model's config fields",
        "train": "train a model into a run directory", "eval": "evaluate a run's best checkpoint",
        "predict": "apply a run to inputs, one per line (from --input, --text or standard input)",
        "compare": "train several models on one task under one budget and write a report",
        "reproduce": "re-run a result from the literature and say whether it held",
        "forecast": "fit forecasters to a file's series and forecast past its end",
        "import-hf": "make a run of a Hugging Face model directory (config.json, safetensors, tokenizer.json)",
        "export-hf": "write a run's best checkpoint as a Hugging Face model directory",
        "score": "score sentences, one per line, under an ARPA n-gram model (log10 p per line, then totals)"}
    for command in CORE_COMMANDS:
        sub = commands.add_parser(command, help=summaries[command], description=summaries[command])
        if command == name:
            builders[command](sub, argv)
    if name is not None and name not in CORE_COMMANDS:
        alias = _alias_task(name)
        if alias is not None:
            task_class = alias
            sub = commands.add_parser(name, help=f"`seqlab predict` for {task_class.name} runs",
                                      description=f"{task_class.predict_help} (`seqlab predict` for "
                                                  f"{task_class.name} runs)")
            _predict_arguments(sub, task_class, expected_task=task_class.name)
    return parser


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: Any = None) -> None:
    """Warnings as one line on stderr, like errors."""
    print(f"seqlab: warning: {message}", file=sys.stderr)


# ---- models ------------------------------------------------------------------------------

def _models_parser(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    parser.add_argument("name", nargs="?", help="a model: list its config fields, defaults and documentation")
    parser.add_argument("--task", help="the task of NAME, when several tasks have a model of that name")
    parser.set_defaults(handler=_models)


def _models(args: argparse.Namespace) -> int:
    from seqlab import registry
    from seqlab.fields import default_of, field_docs
    from seqlab.tasks.base import get_task, task_names

    if args.name:
        entry = registry.get(args.name, args.task)
        print(f"{entry.name} (task {entry.task}, trains by {entry.trains}): {entry.summary}")
        docs = field_docs(entry.config_class)
        from_task = get_task(entry.task).example_model_defaults()
        for field in dataclasses.fields(entry.config_class):
            default = default_of(field)
            shown = "from the data" if field.name in from_task else (
                "required" if default is dataclasses.MISSING else repr(default))
            print(f"  --set {field.name}=...  ({shown})  {docs.get(field.name, '')}")
        defaults = getattr(entry.model_class, "train_defaults", {})
        if defaults:
            print("training defaults: " + ", ".join(f"{key}={value}" for key, value in defaults.items()))
        return 0
    width = max(len(entry.name) for entry in registry.entries()) + 2
    print(f"{'name':<{width}}{'task':<10}{'trains by':<11}{'parameters':>12}  summary")
    for task in task_names():
        example = get_task(task).example_model_defaults()
        for entry in registry.entries(task):
            model = registry.build_for_task(entry.name, example, {}, task=task)
            print(f"{entry.name:<{width}}{task:<10}{entry.trains:<11}{registry.parameter_count(model):>12,}  "
                  f"{entry.summary}")
    print("(parameters at the default config, for each task's example data sizes; "
          "`seqlab models NAME` lists a model's config fields)")
    return 0


# ---- train -------------------------------------------------------------------------------

def _task_in(argv: list[str]) -> str:
    """The --task value on the command line (lm when absent)."""
    for index, arg in enumerate(argv):
        if arg == "--task" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--task="):
            return arg.split("=", 1)[1]
    return "lm"


def _task_flags(parser: argparse.ArgumentParser, argv: list[str], *, for_compare: bool = False) -> None:
    from seqlab.tasks.base import get_task, task_names

    task_class = get_task(_task_in(argv))
    parser.add_argument("--task", default="lm", help=f"the task: {', '.join(task_names())} (default: lm); "
                                                     "its flags follow (shown for the task given)")
    group = parser.add_argument_group(f"options of the {task_class.name} task")
    add_flags(group, task_class.Options, defaults=task_class.compare_defaults if for_compare else None)
    parser.set_defaults(task_options=[field.name for field in _fields(task_class.Options)])


def _fields(config_class: type) -> list[Any]:
    return list(dataclasses.fields(config_class))


def _train_parser(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    from seqlab.train_config import TrainConfig

    parser.add_argument("model", nargs="?", help="registered model name (optional with --resume)")
    parser.add_argument("--out", required=True, help="the run directory (created; your files there are left alone)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    parser.add_argument("--extend", action="store_true",
                        help="with --resume and a larger --steps: lengthen the run's learning-rate schedule")
    parser.add_argument("--overwrite", action="store_true", help="replace the seqlab run in --out")
    parser.add_argument("--init-from", metavar="RUN",
                        help="start from the weights of another run whose names and shapes match (fine-tuning)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a model config value (`seqlab models MODEL` lists them)")
    _task_flags(parser, argv)
    group = parser.add_argument_group("training options (defaults: the model's, else these)")
    group.add_argument("--budget", type=float, metavar="SECONDS",
                       help="wall-time limit: data, training, evaluations and saving (default: none)")
    add_flags(group, TrainConfig, skip=TRAIN_FLAGS_SKIPPED)
    _common_flags(parser)
    parser.set_defaults(handler=_train, train_options=[f.name for f in _fields(TrainConfig)
                                                   if f.name not in TRAIN_FLAGS_SKIPPED])


def _train(args: argparse.Namespace) -> int:
    from seqlab.runs import train_run

    options = {name: getattr(args, name) for name in args.train_options if getattr(args, name) is not None}
    if args.budget is not None:
        options["budget_seconds"] = args.budget
    if args.no_progress:
        options["progress"] = False
    task_options = {name: getattr(args, name) for name in args.task_options if getattr(args, name) is not None}
    trained = train_run(args.model, args.out, task=args.task, task_options=task_options,
                        model_overrides=_key_values(args.set), train_options=options, resume=args.resume,
                        extend=args.extend, overwrite=args.overwrite, init_from=args.init_from)
    if os.environ.get("RANK", "0") != "0":
        return 0                       # under torchrun, only the first process reports
    for note in trained.notes:
        print(note)
    from seqlab.tasks.base import get_task

    result, metrics = trained.result, trained.metrics
    curve = get_task(trained.task).report.curve
    shown = dict.fromkeys(["valid_loss", curve.key])
    valid = ", ".join(f"{key[len('valid_'):]} {metrics[key]:.4f}" for key in shown if key in metrics)
    if result.stopped_by == "fit":
        print(f"fitted in {result.train_seconds:.1f} s; validation {valid}; saved to {args.out}")
    else:
        print(f"trained {result.steps} steps in {result.train_seconds:.1f} s ({result.tokens_per_second:,.0f} "
              f"tokens/s, gradient clipped at {result.clipped_steps} steps), stopped by {result.stopped_by}; "
              f"validation {valid}; saved to {args.out}")
    return 0


def _key_values(pairs: list[str]) -> dict[str, Any]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        values[key.strip()] = value.strip()
    return values


# ---- eval and predict --------------------------------------------------------------------

def _eval_parser(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    parser.add_argument("run", help="a run directory (its best checkpoint) or one checkpoint directory")
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="inputs given after the run, one each (e.g. the WAV files to transcribe)")
    parser.add_argument("--data", help="evaluate on this data instead (a whole file is the test split)")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"),
                        help="the split of the run's own data (default: test)")
    _common_flags(parser, progress=False)
    parser.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    from seqlab.runs import evaluate_run

    print(json.dumps(evaluate_run(args.run, data=args.data, split=args.split), indent=2, allow_nan=False))
    return 0


def _predict_parser(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    from seqlab.tasks.base import get_task, task_names

    run = _predict_run_argument(argv[argv.index("predict") + 1:])
    task_class = None
    if run is not None:
        try:
            task_class = get_task(_run_task(run))
        except SeqlabError:
            if not any(arg in ("-h", "--help") for arg in argv):
                raise
    aliases = ", ".join(f"`seqlab {get_task(t).predict_command}` ({t})" for t in task_names()
                        if get_task(t).predict_command)
    parser.epilog = f"Short names: {aliases}. The flags after --input depend on the run's task."
    _predict_arguments(parser, task_class, expected_task=None)


def _predict_run_argument(arguments: list[str]) -> str | None:
    """The RUN of a ``seqlab predict`` command line, wherever it stands among the flags: the
    command line is read once with every task's prediction flags known, so that a flag's value
    (``--max-new 5``) is never taken for the run."""
    from seqlab.tasks.base import get_task, task_names

    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("run", nargs="?")
    probe.add_argument("--input")
    probe.add_argument("--threads")
    known = {"--input", "--threads"}
    probe.add_argument("--text", action="append")
    known.add("--text")
    for task in map(get_task, task_names()):
        if task.inline_flag not in known:
            probe.add_argument(task.inline_flag, action="append")
            known.add(task.inline_flag)
        fresh = [field for field in _fields(task.PredictOptions) if "--" + field.name.replace("_", "-") not in known]
        for field in fresh:
            known.add("--" + field.name.replace("_", "-"))
        add_flags(probe, task.PredictOptions, skip=tuple(f.name for f in _fields(task.PredictOptions) if f not in fresh))
    return probe.parse_known_args(arguments)[0].run


def _run_task(run: str) -> str:
    """The task of a run directory, read from its checkpoint's config.json (no model is built)."""
    from seqlab.checkpoint import read_info
    from seqlab.rundir import resolve_checkpoint

    return read_info(resolve_checkpoint(run))["task"]["task"]


def _predict_arguments(parser: argparse.ArgumentParser, task_class: Any, expected_task: str | None) -> None:
    parser.add_argument("run", help="a run directory (its best checkpoint) or one checkpoint directory")
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="inputs given after the run, one each (e.g. the WAV files to transcribe)")
    inline = getattr(task_class, "inline_flag", "--text") if task_class else "--text"
    parser.add_argument("--input", help="a UTF-8 file of inputs, one per line (default: standard input)")
    parser.add_argument(*dict.fromkeys(["--text", inline]), dest="text", action="append", metavar="TEXT",
                        help="an input given on the command line instead (repeatable)")
    parser.add_argument("--output", help="write the outputs, one per line, to this new file (default: standard "
                        "output); an existing file is never replaced")
    if task_class is not None:
        add_flags(parser.add_argument_group(f"options of {task_class.name} predictions"), task_class.PredictOptions)
        parser.set_defaults(predict_options=[f.name for f in _fields(task_class.PredictOptions)])
    _common_flags(parser, progress=False)
    parser.set_defaults(handler=_predict, expected_task=expected_task)


def _predict(args: argparse.Namespace) -> int:
    from seqlab.runs import predict_with_run

    if args.text is not None or args.inputs:
        inputs = [*args.inputs, *(args.text or [])]
    else:
        inputs = _read_input(args.input).splitlines()
        while inputs and not inputs[-1].strip():      # trailing blank lines only: one output per input
            inputs.pop()
    options = {name: getattr(args, name) for name in getattr(args, "predict_options", [])
               if getattr(args, name) is not None}
    if args.output is not None and Path(args.output).exists():
        raise ConfigError(f"--output {args.output!r} exists; seqlab never replaces a file: choose a new name")
    outputs = predict_with_run(args.run, inputs, options, task=args.expected_task)
    if args.output is None:
        for output in outputs:
            print(output)
        return 0
    try:
        with open(args.output, "x", encoding="utf-8") as file:
            file.write("".join(output + "\n" for output in outputs))
    except OSError as error:
        raise ConfigError(f"cannot write --output {args.output!r}: {error.strerror}") from None
    return 0


def _read_input(path: str | None) -> str:
    """The input file or standard input as UTF-8 text (the same check for both)."""
    if path is not None:
        from seqlab.data.corpora import read_text

        return read_text(path)
    raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"standard input is not UTF-8 (byte 0x{raw[error.start]:02x} at offset {error.start}); "
                        "convert it, e.g. with iconv -t UTF-8") from None


def _alias_task(name: str) -> Any:
    """The task whose ``predict_command`` is ``name``, or None."""
    from seqlab.tasks.base import get_task, task_names

    for task in task_names():
        if get_task(task).predict_command == name:
            return get_task(task)
    return None


# ---- compare and reproduce ---------------------------------------------------------------

def _compare_parser(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    parser.add_argument("--models", help="comma-separated model names (default: one per family of the task)")
    _task_flags(parser, argv, for_compare=True)
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="wall time of the whole comparison, shared by the models (default: the task's)")
    parser.add_argument("--steps", type=int, help="at most this many steps per model that trains (default: none)")
    parser.add_argument("--seed", type=int, help="seed of every model's initial weights and batches (default: 0)")
    parser.add_argument("--out", default="runs/compare", help="the report's directory (default: runs/compare)")
    parser.add_argument("--init-from", action="append", default=[], metavar="MODEL=RUN",
                        help="start MODEL from the weights of RUN whose names and shapes match (a pre-trained "
                             "encoder); repeat for several models")
    parser.add_argument("--scaling", metavar="T1,T2,...",
                        help="after training, measure each language model's training time, memory, generation "
                             "latency and state at these sequence lengths (outside the budget), with the fitted "
                             "slope of time against length")
    _common_flags(parser)
    parser.set_defaults(handler=_compare)


def _compare(args: argparse.Namespace) -> int:
    from seqlab.compare import compare

    models = [name.strip() for name in args.models.split(",") if name.strip()] if args.models else None
    train_options = {key: value for key, value in (("steps", args.steps), ("seed", args.seed)) if value is not None}
    task_options = {name: getattr(args, name) for name in args.task_options if getattr(args, name) is not None}
    init_from = {}
    for item in args.init_from:
        model, separator, run = item.partition("=")
        if not separator or not model.strip() or not run.strip():
            raise ConfigError(f"--init-from takes MODEL=RUN in compare, got {item!r}")
        init_from[model.strip()] = run.strip()
    scaling = None
    if args.scaling:
        try:
            scaling = [int(length) for length in args.scaling.split(",") if length.strip()]
        except ValueError:
            raise ConfigError(f"--scaling takes comma-separated lengths, e.g. 256,1024,4096; got {args.scaling!r}") from None
    report = compare(args.task, models, task_options, budget_seconds=args.budget, train_options=train_options,
                     out_dir=args.out, progress=not args.no_progress, threads=args.threads, init_from=init_from,
                     scaling=scaling)
    print(report.table())
    print(f"report written to {Path(args.out) / 'report.md'}, with report.html (self-contained) and its plots")
    return 0


def _reproduce_parser(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    parser.add_argument("name", nargs="?", help="experiment name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the experiments")
    parser.add_argument("--quick", action="store_true", help="a shorter run, for a first look (it says what it cannot test)")
    parser.add_argument("--out", help="where to write plots and the report (default: runs/NAME)")
    _common_flags(parser)
    parser.set_defaults(handler=_reproduce)


def _reproduce(args: argparse.Namespace) -> int:
    from seqlab import experiments

    if args.list or not args.name:
        for name in experiments.EXPERIMENTS:
            print(f"{name:<20} {experiments.get(name).CLAIM}")
        return 0
    experiment = experiments.get(args.name)
    print(experiment.run(args.out or f"runs/{args.name}", quick=args.quick, progress=not args.no_progress))
    return 0


# ---- forecast ----------------------------------------------------------------------------

def _forecast_parser(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    parser.add_argument("series", help="a time,value CSV, a long-format CSV (unique_id, ds, y) or an M4-layout pair")
    parser.add_argument("--models", default="theta", help="comma-separated forecasters (`seqlab models`, task "
                                                           "forecast; default: theta)")
    parser.add_argument("--horizon", type=int, required=True, help="values to forecast past the end")
    parser.add_argument("--season", type=int, help="the seasonal period (default: from the timestamps)")
    parser.add_argument("--level", type=float, default=0.95, help="the central interval (default: 0.95)")
    parser.add_argument("--budget", type=float, default=60.0, metavar="SECONDS",
                        help="training time of each neural model (default: 60)")
    parser.add_argument("--out", help="where to write forecasts.csv and forecast.png (default: forecasts/NAME)")
    _common_flags(parser, progress=False)
    parser.set_defaults(handler=_forecast)


def _forecast(args: argparse.Namespace) -> int:
    from seqlab.forecast.ahead import forecast_file

    models = [name for name in args.models.split(",") if name]
    out = args.out or f"forecasts/{Path(args.series).stem}"
    made = forecast_file(args.series, models, args.horizon, out, season=args.season, level=args.level,
                         budget_seconds=args.budget)
    print(made.table)
    print(f"\nwritten: {', '.join(str(path) for path in made.files)}")
    return 0


# ---- score --------------------------------------------------------------------------------

def _score_parser(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    parser.add_argument("model", help="an ARPA file (KenLM's lmplz, SRILM or seqlab), or the .safetensors cache of one")
    parser.add_argument("--input", help="sentences, one per line, split at whitespace (default: standard input)")
    parser.add_argument("--cache", action="store_true",
                        help="read the ARPA file through a binary cache MODEL.seqlab.safetensors beside it, written "
                             "on first use and whenever the ARPA file is newer")
    parser.add_argument("--summary-only", action="store_true", help="print only the totals line")
    parser.set_defaults(handler=_score)


def _score(args: argparse.Namespace) -> int:
    from seqlab.classical.ngram_cache import load_scorer

    scorer = load_scorer(args.model, cache=args.cache)
    where = "standard input" if args.input is None else repr(args.input)
    try:
        data = sys.stdin.buffer.read() if args.input is None else Path(args.input).read_bytes()
        text = data.decode("utf-8").replace("\r\n", "\n")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {where}: {error}") from None
    lines = text.split("\n")                     # only a line feed ends a sentence, as kenlm reads
    if lines and lines[-1] == "":
        lines.pop()
    scores = scorer.score(lines)
    if not args.summary_only:
        sys.stdout.write("".join(f"{value:.6f}\n" for value in scores.log10_probs.tolist()))
    print(f"total log10 p {scores.total_log10:.6f}  sentences {len(lines)}  tokens {scores.n_tokens}  "
          f"unknown {scores.n_unknown}  perplexity {scores.perplexity:.4f}")
    return 0


# ---- Hugging Face checkpoints -------------------------------------------------------------

DTYPE_CHOICES = ("float32", "float16", "bfloat16")


def _import_hf_parser(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    parser.add_argument("directory", help="a Hugging Face model directory: config.json, model.safetensors (or a "
                                          "sharded index and its shards) and tokenizer.json")
    parser.add_argument("--out", required=True, help="the run directory to create")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, help="cast the weights (default: keep the stored dtype)")
    parser.add_argument("--context", type=int, help="the run's window in tokens, for eval and fine-tuning; for T5 "
                                                   "the most tokens a translation writes (default: 256, or the "
                                                   "model's position table if shorter)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run seqlab wrote at --out")
    parser.set_defaults(handler=_import_hf)


def _import_hf(args: argparse.Namespace) -> int:
    from seqlab.interop.hf.runs import import_run

    if args.context is not None and args.context < 1:
        raise ConfigError(f"--context must be >= 1, got {args.context}")
    checkpoint = import_run(args.directory, args.out, dtype=args.dtype, context=args.context,
                            overwrite=args.overwrite)
    print(f"imported {args.directory} as run {args.out} ({checkpoint.name})")
    return 0


def _export_hf_parser(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    parser.add_argument("run", help="a run directory (its best checkpoint is written)")
    parser.add_argument("--out", required=True, help="the Hugging Face directory to create (new or empty)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, help="cast the weights (default: keep the run's)")
    parser.add_argument("--shard-mb", type=float, metavar="MB",
                        help="split the weights into shards of at most MB megabytes, with an index")
    parser.add_argument("--without-tokenizer", action="store_true",
                        help="write the weights and config only (a char or word tokenizer has no HF form)")
    parser.set_defaults(handler=_export_hf)


def _export_hf(args: argparse.Namespace) -> int:
    from seqlab.interop.hf.runs import export_run

    if args.shard_mb is not None and not 0 < args.shard_mb < float("inf"):
        raise ConfigError(f"--shard-mb must be a positive size in megabytes, got {args.shard_mb}")
    shard = None if args.shard_mb is None else int(args.shard_mb * 1e6)
    directory = export_run(args.run, args.out, dtype=args.dtype, max_shard_bytes=shard,
                           with_tokenizer=not args.without_tokenizer)
    print(f"exported {args.run} to {directory}")
    return 0


# ---- shared ------------------------------------------------------------------------------

def _common_flags(parser: argparse.ArgumentParser, progress: bool = True) -> None:
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch threads for computing (default: torch's, one per core); on a busy "
                             "machine fewer can be much faster")
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _set_threads(threads: int) -> None:
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
