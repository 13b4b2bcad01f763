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
import json
import re
from pathlib import Path

from facecheck.cli.main import main as facecheck

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "face-stage"
MODES = ("off", "auto", "align")


def framing(data: Path) -> dict[str, dict[str, float]]:
    """How the data's crops frame the face, per source and class: picture side / face-box
    width and the picture centre's offset from the box centre in box widths (medians; the
    source of faces.CROP_SCALE and CROP_OFFSET_Y), the 5th percentile of face width / picture
    width (against FaceStage.passthrough_width) and the highest score of a second detection
    in these one-face pictures (against FaceStage.count_score)."""
    import numpy as np
    from PIL import Image

    from facecheck.evaluation.data import load_dataset
    from facecheck.image.faces import FaceStage, get_face_detector

    stage = FaceStage(mode="align")
    detector = get_face_detector(stage.detector)
    ds = load_dataset(data)
    out = {}
    for source, label in (("rff", "real"), ("rff", "fake"), ("utkface", "real")):
        scale, offset, second, missing = [], [], [0.0], 0
        for r in ds.where(source=source, label=label):
            img = Image.open(r.path).convert("RGB")
            face = stage.analyse(img).face
            if face is None:
                missing += 1
                continue
            scale.append(img.width / face.width)
            offset.append((img.height / 2 - face.centre[1]) / face.width)
            found = detector.detect(np.asarray(img))
            second += [f.score for f in found[1:]]
        out[f"{source} {label}"] = {
            "pictures": len(scale),
            "without a face": missing,
            "side / face width": round(float(np.median(scale)), 3),
            "centre offset / face width": round(float(np.median(offset)), 3),
            "face width / side, 5th percentile": round(
                float(np.percentile(1 / np.array(scale), 5)), 3
            ),
            "highest second-detection score": round(max(second), 3),
        }
    return out


def run(data: Path, seed: int) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "framing.json").write_text(json.dumps(framing(data), indent=2) + "\n")
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
    frame_file = OUT / "framing.json"
    if frame_file.is_file():
        lines += [
            "",
            "Framing of the crops (BlazeFace face box; medians): the source of the aligned "
            "crops' framing (`faces.CROP_SCALE`, `CROP_OFFSET_Y`; a class difference the "
            "`align` mode evens out), of the passthrough rule (a face >= 0.45 of the width) "
            "and of the multiple-faces rule (a second face counts at >= 0.75):",
            "",
            "| pictures | n | without a face | picture side / face width "
            "| picture centre - face centre, in face widths (y) | face width / side, 5th pct "
            "| highest second-detection score |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, f in json.loads(frame_file.read_text()).items():
            lines.append(
                f"| {name} | {f['pictures']} | {f['without a face']} | "
                f"{f['side / face width']} | {f['centre offset / face width']} | "
                f"{f['face width / side, 5th percentile']} | "
                f"{f['highest second-detection score']} |"
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
