"""Protocol P8 side by side for several training recipes, read from their reports.

Each recipe is one `facecheck evaluate --protocols P8 ...` run (the command is recorded in
RECIPES below and in each report's header); this script only reads their metrics.csv and
writes benchmarks/p8_recipes.md and .json, so no figure is typed by hand.

    python benchmarks/p8_recipes.py            # the recipes below, from reports/
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

HERE = Path(__file__).parent
# name -> (report folder, what the recipe adds, the command that made it)
_BASE = (
    "facecheck evaluate --protocols P8 --backbones clip_vit_b16_l8 --head-input image+regions "
    "--heads logreg --max-fpr 0.1 --perturb p8 --perturb-protocols P8-SEEN --perturb-sample 60"
)
_FIELD = "--synthetic $SYNTH --train-augment field"
RECIPES = {
    "round-1 bundle": (
        "reports/p8-shipped-r1",
        "the detector shipped in round 1, as it shipped (trained on ALL: no diffusion faces; "
        "P8-SEEN's test sets only)",
        "facecheck evaluate --model default --protocols ALL,P8-SEEN --perturb p8 "
        "--perturb-protocols P8-SEEN --perturb-sample 60 (at commit 3587b24)",
    ),
    "shipped recipe on P8": (
        "reports/p8-fitted",
        "the shipped recipe fitted per P8 protocol, clean training (no chains run)",
        _BASE.split(" --perturb")[0],
    ),
    "+synthetic +field, capped": (
        "reports/p8-field-synth",
        "synthetic morphs, swaps and self-blends (400 per kind per camera in train) and one "
        "`field` copy of at most 600 training images per source and label: the cap gives "
        "fakes most of the processed copies",
        f"{_BASE} --n-boot 500 {_FIELD} --augment-sample 600",
    ),
    "+synthetic +field, half": (
        "reports/p8-field-half-synth",
        "the same, the `field` copy for half of every source and label (equal shares)",
        f"{_BASE} --n-boot 500 {_FIELD} --augment-fraction 0.5 (P8-SEEN and "
        "P8-CAMERA-UTKFACE only)",
    ),
    "+synthetic +field, all, threshold on processed": (
        "reports/p8-field-all-synth",
        "a `field` copy of every training and validation image; the copies of validation "
        "reals join the threshold choice as groups of their own (`--augment-validation`); "
        "the synthetic set re-made with each parent's own JPEG tables (the columns before "
        "used a set saved at q80-95, unlike the cameras' files)",
        f"{_BASE} --n-boot 500 {_FIELD} --augment-validation",
    ),
    "shipped bundle (round 2)": (
        "reports/p8-shipped",
        "the detector shipped now (`make bundle`): the recipe of the column before, fitted "
        "once on P8-SEEN's training split, evaluated as it ships",
        "facecheck evaluate --model default --synthetic $SYNTH --protocols P8-SEEN --perturb p8 "
        "--perturb-protocols P8-SEEN --perturb-sample 60",
    ),
}
# (label, protocol, test set, what to show)
MEASURES = [
    ("rff same-source (headline)", "P8-SEEN", "rff-same-source", "recall/auc/fpr"),
    ("seen: GAN", "P8-SEEN", "gan", "recall/auc"),
    ("seen: diffusion", "P8-SEEN", "diffusion", "recall/auc"),
    ("seen: synthetic morph", "P8-SEEN", "morph", "recall/auc"),
    ("seen: face swaps (synthetic, and Celeb-DF never trained on)", "P8-SEEN", "faceswap",
     "recall/auc"),
    ("seen: synthetic self-blend", "P8-SEEN", "self_blend", "recall/auc"),
    ("never trained: Celeb-DF swap vs its own reals", "P8-SEEN", "faceswap-same-source",
     "recall/auc"),
    ("LOFO GAN (held out)", "P8-LOFO-GAN", "held-out", "recall/auc"),
    ("LOFO diffusion (held out)", "P8-LOFO-DIFFUSION", "held-out", "recall/auc"),
    ("LOFO Photoshop (held out, rff reals)", "P8-LOFO-PHOTOSHOP", "held-out-same-source",
     "recall/auc"),
    ("LOFO face swap (Celeb-DF + synthetic swaps)", "P8-LOFO-FACESWAP", "held-out",
     "recall/auc"),
    ("LOFO morph (synthetic)", "P8-LOFO-MORPH", "held-out", "recall/auc"),
    ("unseen camera rff: reals flagged", "P8-CAMERA-RFF", "unseen-camera", "fpr"),
    ("unseen camera UTKFace: reals flagged", "P8-CAMERA-UTKFACE", "unseen-camera", "fpr"),
    ("unseen camera Celeb-DF: reals flagged", "P8-SEEN", "camera-celebdf_dfgc", "fpr"),
]  # fmt: skip
CHAIN_SETS = ("gan", "rff-same-source", "diffusion")
CHAINS = ("jpeg90", "jpeg80", "jpeg70", "jpeg60", "down0.5", "resize0.5", "up2", "up3",
          "in_photo", "in_photo_up2", "png_alpha", "screenshot", "print_recapture")  # fmt: skip


def _rows(folder: Path) -> dict[tuple[str, str], dict]:
    """The thresholded (validation-rule) row of each (protocol, test set)."""
    out = {}
    with (folder / "metrics.csv").open() as fh:
        for row in csv.DictReader(fh):
            if row["threshold_kind"].startswith("val:"):
                out[(row["protocol"], row["test_set"])] = row
    return out


def _pct(x: str) -> str:
    return f"{100 * float(x):.1f}%"


def _cell(row: dict | None, what: str) -> str:
    if row is None:
        return "n/a"
    parts = []
    for w in what.split("/"):
        if w == "recall":
            parts.append(f"recall {_pct(row['recall'])}")
        elif w == "auc":
            parts.append(f"AUC {float(row['roc_auc']):.3f}" if row["roc_auc"] else "AUC -")
        elif w == "fpr":
            parts.append(f"{'FPR ' if len(what) > 3 else ''}{_pct(row['fpr'])}")
    return ", ".join(parts)


def _chains(rows: dict, base: str) -> dict | None:
    """Recall and FPR of P8-SEEN's ``base`` set after each chain: the worst of each, with
    the clean figures (the clean set is whole, the chained ones a seeded sample of it)."""
    clean = rows.get(("P8-SEEN", base))
    chained = {k[1].split("+", 1)[1]: r for k, r in rows.items()
               if k[0] == "P8-SEEN" and k[1].startswith(f"{base}+")}  # fmt: skip
    if clean is None or not chained:
        return None
    worst_r = min(chained, key=lambda c: float(chained[c]["recall"]))
    worst_f = max(chained, key=lambda c: float(chained[c]["fpr"]))
    return {
        "clean_recall": float(clean["recall"]),
        "clean_fpr": float(clean["fpr"]),
        "worst_recall": (worst_r, float(chained[worst_r]["recall"])),
        "worst_fpr": (worst_f, float(chained[worst_f]["fpr"])),
        "within_goal": sum(
            float(clean["recall"]) - float(r["recall"]) <= 0.05
            and float(r["fpr"]) - float(clean["fpr"]) <= 0.02
            for r in chained.values()
        ),
        "chains": len(chained),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", type=Path, default=HERE.parent)
    args = ap.parse_args()
    found = {n: r for n, r in RECIPES.items() if (args.root / r[0] / "metrics.csv").is_file()}
    tables = {n: _rows(args.root / r[0]) for n, r in found.items()}
    lines = [
        "# P8 by training recipe",
        "",
        "Generated by `python benchmarks/p8_recipes.py` from the reports named below (each",
        "report's header states its commit, machine, seed and precision). Seed 0, P8's split;",
        "CLIP ViT-B/16 to layer 8 with its regions, logistic head, threshold `fpr:0.1` per real",
        "source on validation; every figure at that threshold. Chains: a seeded draw of at most",
        "60 test images per source and label.",
        "",
        "| recipe | adds | report | command |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {r[1]} | `{r[0]}` | `{r[2]}` |" for n, r in found.items()]
    lines += ["", "| measure | " + " | ".join(found) + " |", "|---" * (len(found) + 1) + "|"]
    summary: dict[str, dict] = {n: {} for n in found}
    for label, proto, test_set, what in MEASURES:
        cells = []
        for n in found:
            row = tables[n].get((proto, test_set))
            cells.append(_cell(row, what))
            if row is not None:
                summary[n][label] = {k: float(row[k]) for k in ("recall", "fpr", "roc_auc")
                                     if row[k]}  # fmt: skip
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for base in CHAIN_SETS:
        cells = []
        for n in found:
            c = _chains(tables[n], base)
            summary[n][f"chains {base}"] = c
            cells.append(
                "n/a"
                if c is None
                else f"worst recall {100 * c['worst_recall'][1]:.0f}% ({c['worst_recall'][0]}; "
                f"clean {100 * c['clean_recall']:.0f}%), worst FPR {100 * c['worst_fpr'][1]:.0f}% "
                f"({c['worst_fpr'][0]}; clean {100 * c['clean_fpr']:.0f}%); "
                f"{c['within_goal']}/{c['chains']} chains within goal"
            )
        lines.append(f"| chains on `{base}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Goal per chain (issue 26): recall within 5 points of the clean figure and FPR within 2.",
        "",
        "## Per chain: recall on the GAN test set / share of its reals flagged (FPR)",
        "",
        "The reals are the trained cameras' test reals (rff and UTKFace), the same draw in",
        "every column.",
        "",
        "| chain | " + " | ".join(found) + " |",
        "|---" * (len(found) + 1) + "|",
    ]
    for chain in ("", *CHAINS):
        cells = []
        for n in found:
            row = tables[n].get(("P8-SEEN", f"gan+{chain}" if chain else "gan"))
            cells.append("n/a" if row is None else f"{_pct(row['recall'])} / {_pct(row['fpr'])}")
        lines.append(f"| {chain or 'clean'} | " + " | ".join(cells) + " |")
    (HERE / "p8_recipes.md").write_text("\n".join(lines) + "\n")
    (HERE / "p8_recipes.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
