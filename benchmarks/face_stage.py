"""What the face stage does to P1 and P4: the same detector evaluated with it off, auto, align.

    python benchmarks/face_stage.py            # three `facecheck evaluate` runs + the table
    python benchmarks/face_stage.py --only -   # just rewrite benchmarks/face_stage.md

Each run is `facecheck evaluate --protocols P1,P4 --backbones efficientnet_lite0 --heads
logreg --face-stage MODE` (seed 0, threshold on validation), written to
reports/face-stage/MODE/. With `auto` the shared data's tight crops pass through and pictures
without exactly one face are left out; with `align` every face is re-cropped to the rff
framing (which also normalises framing differences between the sources and classes).
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

from facecheck.cli import main as facecheck

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "face-stage"
MODES = ("off", "auto", "align")


def run(data: Path, seed: int) -> None:
    for mode in MODES:
        facecheck(
            [
                "evaluate",
                "--data",
                str(data),
                "--protocols",
                "P1,P4",
                "--backbones",
                "efficientnet_lite0",
                "--heads",
                "logreg",
                "--face-stage",
                mode,
                "--seed",
                str(seed),
                "--run-name",
                f"face-stage-{mode}",
                "--out",
                str(OUT / mode),
                "--scores-csv",
                str(OUT / "model_scores.csv"),
                "--quiet",
            ]
        )


def tabulate() -> str:
    lines = [
        "# The face stage on P1 and P4",
        "",
        "Written by `python benchmarks/face_stage.py` from `reports/face-stage/*/metrics.csv` "
        "(EfficientNet-Lite0 + logistic regression, seed 0, hash split, Youden threshold on "
        "validation; headline test sets).",
        "",
        "| face stage | protocol | test set | n (fakes) | ROC-AUC [95% CI] | recall | FPR "
        "| recall @ 10% FPR | left out (whole run) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        metrics = OUT / mode / "metrics.csv"
        if not metrics.is_file():
            continue
        report = (OUT / mode / "report.md").read_text()
        m = re.search(r"\| images left out \| ([^|]+) \|", report)
        left = m.group(1).strip() if m else "none"
        for row in csv.DictReader(metrics.open()):
            if row["threshold_kind"] != "val:youden":
                continue
            f = {k: float(row[k]) for k in ("roc_auc", "roc_auc_ci_lo", "roc_auc_ci_hi")}
            lines.append(
                f"| {mode} | {row['protocol']} | {row['test_set']} | {row['n']} ({row['n_fake']}) "
                f"| {f['roc_auc']:.3f} [{f['roc_auc_ci_lo']:.3f}, {f['roc_auc_ci_hi']:.3f}] "
                f"| {100 * float(row['recall']):.1f}% | {100 * float(row['fpr']):.1f}% "
                f"| {100 * float(row['recall_at_10fpr']):.1f}% | {left} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="'-': only rewrite the table")
    args = ap.parse_args()
    if args.only != "-":
        run(args.data, args.seed)
    md = tabulate()
    (ROOT / "benchmarks" / "face_stage.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
