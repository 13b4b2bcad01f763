"""Fine-tuned networks on a protocol, each run through `facecheck finetune --evaluate`.

    python benchmarks/finetune.py                       # P2, CPU-sized runs (about 30 min)
    python benchmarks/finetune.py --runs gpu --device cuda   # the full runs, for a GPU

Each run trains on the train split, early-stops on val, picks its threshold on val (Youden)
and scores the test sets once; its folder under reports/finetune/ keeps model.pt,
history.csv and summary.json. This script only runs them and tabulates the summaries into
benchmarks/finetune.md, so every figure there comes from a file a run wrote.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from facecheck.cli.main import main as facecheck
from facecheck.evaluation.report import git_commit, machine_description

ROOT = Path(__file__).resolve().parents[1]
# name -> finetune arguments. CPU runs are short (2 cores): a handful of epochs each.
RUNS = {
    "cpu": {
        "baseline_cnn-class_weight": "--network baseline_cnn --epochs 15 --lr 1e-3",
        "baseline_cnn-thesis": "--network baseline_cnn --epochs 15 --lr 1e-3 "
        "--imbalance smote0.1+under0.5+focal",
        "convnext_atto-class_weight": "--network convnext_atto --epochs 8 --lr 1e-3",
        "lite0-class_weight": "--network efficientnet_lite0 --epochs 5 --lr 3e-4 --batch-size 16",
        "lite0-balanced_batches": "--network efficientnet_lite0 --epochs 5 --lr 3e-4 "
        "--batch-size 16 --imbalance balanced_batches",
        # CLIP cut after layer 8: ~12 min per epoch of P1's training split on 2 cores.
        "cpu-clip_b16_l8-class_weight": "--network clip_b16_l8 --epochs 3 --lr 1e-5 "
        "--batch-size 16",
    },
    "gpu": {
        "gpu-thesis_convnext-smote": "--network thesis_convnext --epochs 60 --optimizer sgd "
        "--lr 0.05 --imbalance smote",
        "gpu-thesis_convnext-thesis": "--network thesis_convnext --epochs 60 --optimizer sgd "
        "--lr 0.05 --imbalance smote0.1+under0.5+focal",
        "gpu-convnext_atto-class_weight": "--network convnext_atto --epochs 60 --lr 1e-3",
        "gpu-lite0-class_weight": "--network efficientnet_lite0 --epochs 30 --lr 3e-4",
        # CLIP cut after layer 8 (the shipped backbone), all of it trained, gently.
        "gpu-clip_b16_l8-class_weight": "--network clip_b16_l8 --epochs 10 --lr 1e-5",
    },
}


def _p(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--protocol", default="P2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="cpu", choices=sorted(RUNS))
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated run names (default: all; '-': none, just rewrite the table)",
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "finetune")
    ap.add_argument("--md", type=Path, default=ROOT / "benchmarks" / "finetune.md")
    args = ap.parse_args()
    runs = RUNS[args.runs]
    chosen = [r for r in runs if not args.only or r in args.only.split(",")]
    for name in chosen:
        out = args.out / args.protocol / name
        argv = ["finetune", "--data", str(args.data), "--protocol", args.protocol]
        argv += ["--seed", str(args.seed), "--device", args.device, "--evaluate", "--quiet"]
        argv += [*runs[name].split(), "--out", str(out)]
        t0 = time.perf_counter()
        if facecheck(argv) != 0:
            raise SystemExit(f"run {name} failed")
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    # Tabulate every summary present (runs from earlier invocations included).
    lines = [
        "# Fine-tuned networks",
        "",
        "Each row is one `facecheck finetune --evaluate` run (arguments below), seed "
        f"{args.seed}; split by content hash; early stopping on val loss; threshold on val "
        "(Youden); test scored once. Written by `python benchmarks/finetune.py`; "
        f"commit {git_commit()}; {machine_description()}.",
        "",
        "| protocol | run | device | epochs (best) | train s | train counts | val ROC-AUC "
        "| test images (fakes) | test ROC-AUC | PR-AUC | recall | precision | FPR |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for summary in sorted(args.out.glob("*/*/summary.json")):
        s = json.loads(summary.read_text())
        t = s["test"]["same-source"]
        c = s["train_counts_after_imbalance"]
        lines.append(
            f"| {s['protocol']} | {summary.parent.name} | {s['device']} | "
            f"{s['config']['epochs']} ({s['best_epoch']}) | {s['train_seconds']:.0f} | "
            f"{c['real']} real / {c['fake']} fake | {s['val']['roc_auc']:.3f} | "
            f"{t['n']} ({t['n_fake']}) | {t['roc_auc']:.3f} | {t['pr_auc']:.3f} | "
            f"{_p(t['recall'])} | {_p(t['precision'])} | {_p(t['fpr'])} |"
        )
    lines += [
        "",
        "The test sets are small (P2: 9 fakes, so one fake moves recall by 11 points); "
        "read the ROC-AUCs as +-0.1. Epoch counts are CPU-sized, not converged runs.",
        "",
        "Arguments per run:",
        "",
    ]
    lines += [f"- `{n}`: `{a}`" for group in RUNS.values() for n, a in group.items()]
    args.md.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.md}")


if __name__ == "__main__":
    main()
