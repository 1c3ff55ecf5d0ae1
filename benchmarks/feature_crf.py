"""Feature CRF tagger: seqlab's hashed-feature CRF against python-crfsuite on UD English EWT (UPOS).

    python benchmarks/feature_crf.py [--quick] [--c1 C1] [--c2 C2] [--max-iterations N] [--repeats R]

Both taggers get the same features of the same sentences (``seqlab.classical.tagging_features``):
seqlab hashes each feature string into ``n_buckets`` rows of its weight matrix; crfsuite is
given the feature strings themselves, un-hashed. Both minimise crfsuite's objective, the summed
negative log-likelihood plus ``c1 ||w||_1 + c2 ||w||^2``, from zero, for the same
``max_iterations`` of L-BFGS (OWL-QN when c1 > 0). crfsuite runs with
``feature.possible_transitions`` (all K x K transitions, as seqlab's chain has); its state
features are the (attribute, tag) pairs seen in training, while seqlab has a weight for every
(bucket, tag) pair.

Columns: train seconds (feature extraction included, both single-threaded; the best of
``--repeats`` runs, seqlab and crfsuite taking turns, since the machine is shared), crfsuite's
``train()`` alone, accuracy and unseen-word accuracy (words absent from the training split) on
the test split, tagging tokens/s over the test split (features and Viterbi), and the size of
the saved weights (seqlab: its checkpoint's ``model.safetensors``, and what the dense
(n_buckets, K) table took before sparse storage). --quick trains on the first 3000 sentences
for 50 iterations. The last line is ``RESULT crf_train_vs_crfsuite=<crfsuite s / seqlab s>
crf_accuracy=<%> crfsuite_accuracy=<%> difference=<points>``; the targets are a ratio >= 1
and |difference| <= 0.5.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pycrfsuite
import safetensors.torch
import torch

from seqlab.checkpoint import save_checkpoint
from seqlab.classical.feature_crf import FeatureCRFConfig, FeatureCRFTagger
from seqlab.classical.tagging_features import sentence_features
from seqlab.tasks.tagging import Tagging

EWT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ud_english_ewt"


def seqlab_row(task: Tagging, config: FeatureCRFConfig, directory: Path) -> dict[str, float]:
    model = FeatureCRFTagger(config)
    started = time.perf_counter()
    model.fit(task)
    seconds = time.perf_counter() - started
    metrics = task.evaluate(model, "test")
    print(f"seqlab: {model.fit_result.iterations} iterations, {model.fit_result.evaluations} evaluations, "
          f"stopped by {model.fit_result.stopped_by}, F = {model.fit_result.value:.2f}, {seconds:.1f} s")
    checkpoint = save_checkpoint(directory / "seqlab", model, task, overwrite=True)
    dense = {"feature_weights": model.feature_weights.detach(),
             **{f"crf.{name}": tensor for name, tensor in model.crf.state_dict().items()}}
    safetensors.torch.save_file(dense, str(directory / "dense.safetensors"))
    return {"train_seconds": seconds, "accuracy": metrics["accuracy"], "unseen_accuracy": metrics["unseen_accuracy"],
            "tokens_per_second": metrics["tokens_per_second"],
            "weights_mb": (checkpoint / "model.safetensors").stat().st_size / 1e6,
            "dense_weights_mb": (directory / "dense.safetensors").stat().st_size / 1e6}


def crfsuite_row(task: Tagging, config: FeatureCRFConfig, directory: Path) -> dict[str, float]:
    started = time.perf_counter()
    trainer = pycrfsuite.Trainer(verbose=False)
    for sentence in task.splits["train"]:
        trainer.append(sentence_features(sentence.words), list(sentence.tags))
    trainer.set_params({"c1": config.c1, "c2": config.c2, "max_iterations": config.max_iterations,
                        "num_memories": config.n_memories, "epsilon": config.epsilon, "period": config.period,
                        "delta": config.delta, "feature.possible_transitions": True})
    training = time.perf_counter()
    trainer.train(str(directory / "crfsuite.model"))
    seconds = time.perf_counter() - started
    train_only = time.perf_counter() - training
    last = trainer.logparser.last_iteration
    print(f"crfsuite: {last['num']} iterations, F = {last['loss']:.2f}, {last['active_features']} active features, "
          f"{seconds:.1f} s ({train_only:.1f} s in train())")
    tagger = pycrfsuite.Tagger()
    tagger.open(str(directory / "crfsuite.model"))
    test = task.splits["test"]
    started = time.perf_counter()
    predicted = [tagger.tag(sentence_features(sentence.words)) for sentence in test]
    tagging_seconds = time.perf_counter() - started
    right = unseen = unseen_right = words = 0
    for sentence, tags in zip(test, predicted):
        for word, gold, guess in zip(sentence.words, sentence.tags, tags):
            words += 1
            right += gold == guess
            if not task.vocabulary.is_known(word):
                unseen += 1
                unseen_right += gold == guess
    return {"train_seconds": seconds, "train_only_seconds": train_only, "accuracy": right / words,
            "unseen_accuracy": unseen_right / unseen, "tokens_per_second": words / tagging_seconds,
            "weights_mb": (directory / "crfsuite.model").stat().st_size / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3000 training sentences, 50 iterations")
    parser.add_argument("--data", type=Path, default=EWT)
    parser.add_argument("--c1", type=float, default=None)
    parser.add_argument("--c2", type=float, default=None)
    parser.add_argument("--max-iterations", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each trainer, taking turns; the best counts")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    task = Tagging.from_data(arguments.data)
    if arguments.quick:
        task = Tagging({**task.splits, "train": task.splits["train"][:3000]})
    options = {"c1": arguments.c1, "c2": arguments.c2,
               "max_iterations": arguments.max_iterations or (50 if arguments.quick else None)}
    config = FeatureCRFConfig(n_tags=len(task.tag_names), **{k: v for k, v in options.items() if v is not None})
    print(f"{len(task.splits['train'])} training sentences, {task.train_tokens} words; n_buckets={config.n_buckets}, "
          f"c1={config.c1}, c2={config.c2}, max_iterations={config.max_iterations}")
    runs: dict[str, list[dict[str, float]]] = {"seqlab crf": [], "crfsuite": []}
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(arguments.repeats):               # taking turns: both see the same load
            runs["seqlab crf"].append(seqlab_row(task, config, Path(directory)))
            runs["crfsuite"].append(crfsuite_row(task, config, Path(directory)))
    rows = {name: min(results, key=lambda row: row["train_seconds"]) for name, results in runs.items()}
    print(f"\n| {'model':<12} | train s | train() s | accuracy | unseen accuracy | tagging tokens/s |         weights MB |")
    print(f"| {'-' * 12} | ------: | --------: | -------: | --------------: | ---------------: | -----------------: |")
    for name, row in rows.items():
        train_only = f"{row['train_only_seconds']:9.1f}" if "train_only_seconds" in row else f"{'':9}"
        weights = f"{row['weights_mb']:.2f}" + (f" (dense {row['dense_weights_mb']:.1f})" if "dense_weights_mb" in row else "")
        print(f"| {name:<12} | {row['train_seconds']:7.1f} | {train_only} | {100 * row['accuracy']:7.2f}% | "
              f"{100 * row['unseen_accuracy']:14.2f}% | {row['tokens_per_second']:16,.0f} | {weights:>18} |")
    for name, results in runs.items():
        every = ", ".join(f"{row['train_seconds']:.1f}" for row in results)
        print(f"{name} train seconds, every run: {every}")
    ours, theirs = 100 * rows["seqlab crf"]["accuracy"], 100 * rows["crfsuite"]["accuracy"]
    speed = rows["crfsuite"]["train_seconds"] / rows["seqlab crf"]["train_seconds"]
    print(f"RESULT crf_train_vs_crfsuite={speed:.2f} crf_accuracy={ours:.2f} crfsuite_accuracy={theirs:.2f} "
          f"difference={ours - theirs:.2f}")


if __name__ == "__main__":
    main()
