"""Every recogniser on connected spoken digits (FSDD), on the official split and on a speaker
never heard, in one table.

Runs ``seqlab compare --task asr`` twice over the same models, each model trained for an
equal share of the budget in its own process:

1. ``--split official``: FSDD's test recordings (0-4 of every digit and speaker) are never
   trained on; the table's CER, WER, RTF, training time and parameters come from here;
2. ``--split speaker``: train on five speakers, test on ``theo``; the table's "theo" columns.

    python benchmarks/asr_fsdd.py [--data ../shared/data/fsdd] [--minutes 84] [--quick]

The default budget, 84 minutes of CPU on two threads, gives each of the four models 12
minutes on the official split and 9 on the speaker split. ``--quick`` runs ctc-bilstm alone
for one minute a split (a smoke test, not a result). Reports are written to
``runs/asr_fsdd/{official,speaker}``. The last line is
``RESULT best_model=... best_cer=... best_train_minutes=... <model>_cer=... <model>_theo_cer=...``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from seqlab.compare import compare

MODELS = ("ctc-bilstm", "ctc-conformer", "rnnt-conformer", "whisper-tiny")
OFFICIAL_SHARE = 4 / 7            # of the budget: 12 of every 21 minutes to the official split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--minutes", type=float, default=84.0, help="the whole run's budget")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/asr_fsdd")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    models = ["ctc-bilstm"] if args.quick else [m.strip() for m in args.models.split(",") if m.strip()]
    minutes = 2.0 if args.quick else args.minutes
    budgets = {"official": 60 * minutes * OFFICIAL_SHARE, "speaker": 60 * minutes * (1 - OFFICIAL_SHARE)}
    started = time.monotonic()
    reports = {}
    for split, budget in budgets.items():
        reports[split] = compare("asr", models, {"data": args.data, "split": split}, budget_seconds=budget,
                                 train_options={"steps": 1_000_000}, out_dir=Path(args.out) / split,
                                 threads=args.threads, progress=False)
    rows = {split: {result.name: result.metrics for result in report.results} for split, report in reports.items()}
    print(f"\nConnected FSDD digits; {minutes:.0f} min budget, {time.monotonic() - started:.0f} s wall; "
          f"reports in {args.out}/official and {args.out}/speaker\n")
    header = ("| model | params | train min | test CER % | test WER % | RTF | theo CER % | theo WER % |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|")
    print(header)
    for name in models:
        official, speaker = rows["official"][name], rows["speaker"][name]
        print(f"| {name} | {official['parameters']:,.0f} | {official['train_seconds'] / 60:.1f} | "
              f"{100 * official['cer']:.2f} | {100 * official['wer']:.2f} | {official['rtf']:.4f} | "
              f"{100 * speaker['cer']:.2f} | {100 * speaker['wer']:.2f} |")
    best = min(models, key=lambda name: rows["official"][name]["cer"])
    figures = " ".join(f"{name.replace('-', '_')}_cer={rows['official'][name]['cer']:.4f} "
                       f"{name.replace('-', '_')}_theo_cer={rows['speaker'][name]['cer']:.4f}" for name in models)
    print(f"RESULT best_model={best} best_cer={rows['official'][best]['cer']:.4f} "
          f"best_train_minutes={rows['official'][best]['train_seconds'] / 60:.1f} {figures}")


if __name__ == "__main__":
    main()
