"""Which validation threshold rule transfers to sources the detector never saw (issues 8 and 9).

For each leave-one-source-out protocol (P7) and ALL, one head is fitted on the train split
(CLIP layers 8 + 12 + logistic regression by default, the shipped recipe) and every rule picks
its threshold from the same validation scores: Youden (max recall - FPR), a recall target on
the validation fakes, and ``fpr:F``, which looks at the validation *reals* only and holds each
real source to F. The test sets are then scored at each threshold: recall, and the false-
positive rate of each real source in the set (what a person reviews).

A real source held out of training (P7-UTKFACE, P7-RFF) has no reals in validation, so no rule
fitted there can know where its photos score. That is what ``facecheck calibrate`` is for: a
deployment's own photos (unlabelled; at 1 fake in 1,000 they are reals for this purpose) set
the threshold. It is measured here by calibrating on half of the held-out source's reals
(split by content hash, seeded) and scoring the other half with all the test fakes.

    python benchmarks/thresholds.py            # about 5 minutes with the features cached

Writes benchmarks/thresholds.md and .json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from facecheck.backbones.registry import load_backbone
from facecheck.decision.policy import choose_threshold, threshold_for_fpr
from facecheck.evaluation.data import Dataset, load_dataset
from facecheck.evaluation.evaluate import extract_all, sources_of, xy
from facecheck.evaluation.protocols import build
from facecheck.evaluation.report import machine_description
from facecheck.features.cache import FeatureCache
from facecheck.features.extract import FeatureExtractor
from facecheck.heads.models import make_head
from facecheck.image.faces import FaceStage

HERE = Path(__file__).resolve().parent
PROTOCOLS = ["P7-TPDNE", "P7-FAKEFACES", "P7-HARD", "P7-UTKFACE", "P7-RFF", "ALL"]
RULES = ["youden", "recall:0.97", "fpr:0.01", "fpr:0.05", "fpr:0.1"]
CALIBRATE_RATES = [0.01, 0.05, 0.1]


def scored(ds: Dataset, feats: dict[str, np.ndarray], head) -> dict[str, np.ndarray]:
    X, y, _ = xy(ds, feats)
    return {"s": head.predict_proba(X)[:, 1], "y": y, "src": sources_of(ds, feats)}


def at(t: float, s: np.ndarray, y: np.ndarray, src: np.ndarray) -> dict[str, object]:
    """Recall and each real source's false-positive rate at threshold t."""
    reals = y == 0
    return {
        "threshold": round(float(t), 5),
        "recall": round(float((s[y == 1] >= t).mean()), 4) if (y == 1).any() else None,
        "fpr": {
            g: round(float((s[reals & (src == g)] >= t).mean()), 4) for g in sorted(set(src[reals]))
        },
    }


def halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.random.default_rng(seed).permutation(n)
    return np.sort(idx[: n // 2]), np.sort(idx[n // 2 :])


def run_protocol(name: str, ds, ex: FeatureExtractor, seed: int) -> dict:
    proto = build(name, ds, seed)
    records = proto.split.train.subset(
        [*proto.split.train, *proto.split.val, *(r for t in proto.test_sets.values() for r in t)]
    )
    feats, _ = extract_all(records, ex)
    X, y, _ = xy(proto.split.train, feats)
    head = make_head("logreg", seed=seed).fit(X, y)
    val = scored(proto.split.val, feats, head)
    tests = {k: scored(v, feats, head) for k, v in proto.test_sets.items()}
    out: dict = {"val_sources": sorted(set(val["src"][val["y"] == 0])), "rules": {}}
    for rule in RULES:
        t = choose_threshold(val["y"], val["s"], rule, groups=val["src"])
        out["rules"][rule] = {k: at(t, v["s"], v["y"], v["src"]) for k, v in tests.items()}
    out["roc_auc"] = {k: round(float(roc_auc_score(v["y"], v["s"])), 4) for k, v in tests.items()}
    if name in ("P7-UTKFACE", "P7-RFF"):
        # Deployment calibration: half of the unseen source's reals set the threshold,
        # the other half and the test fakes measure it.
        test = tests["out-of-source"]
        held = np.flatnonzero(test["y"] == 0)
        cal, ev = halves(len(held), seed)
        keep = np.r_[np.flatnonzero(test["y"] == 1), held[ev]]
        out["calibrated"] = {
            f"fpr:{rate:g}": {
                "n_calibration": len(cal),
                **at(
                    threshold_for_fpr(np.zeros(len(cal)), test["s"][held[cal]], rate),
                    test["s"][keep],
                    test["y"][keep],
                    test["src"][keep],
                ),
            }
            for rate in CALIBRATE_RATES
        }
    return out


def markdown(results: dict, meta: dict) -> str:
    lines = [
        "# Threshold rules out of source (issues 8 and 9)",
        "",
        f"`{meta['command']}`: backbone `{meta['backbone']}` + logistic regression, seed "
        f"{meta['seed']}, each protocol's hash split; thresholds from the validation split only, "
        f"every test set scored once per rule. {meta['machine']}; {meta['seconds']:.0f} s.",
        "",
        "Cells: recall / false-positive rate of each real source in the test set (reals "
        "flagged, i.e. sent to a person). `fpr:F` is fitted on the validation reals alone and "
        "holds each real source in validation to F.",
        "",
    ]
    for name, r in results.items():
        sets = list(r["roc_auc"])
        lines += [
            f"### {name}",
            "",
            "Validation reals from: "
            + ", ".join(r["val_sources"])
            + ". ROC-AUC: "
            + ", ".join(f"{k} {v:.4f}" for k, v in r["roc_auc"].items())
            + ".",
            "",
            "| rule | threshold | " + " | ".join(sets) + " |",
            "|---|---|" + "---|" * len(sets),
        ]
        for rule, per in r["rules"].items():
            thr = next(iter(per.values()))["threshold"]
            cells = " | ".join(_cell(per[k]) for k in sets)
            lines.append(f"| {rule} | {thr:.4f} | {cells} |")
        if "calibrated" in r:
            lines += [
                "",
                "Calibrated on half of the unseen source's reals (n = "
                f"{next(iter(r['calibrated'].values()))['n_calibration']}), scored on the other "
                "half and all out-of-source test fakes:",
                "",
                "| deployment rule | threshold | out-of-source |",
                "|---|---|---|",
            ]
            for rule, c in r["calibrated"].items():
                lines.append(f"| {rule} | {c['threshold']:.4f} | {_cell(c)} |")
        lines.append("")
    return "\n".join(lines)


def _cell(m: dict) -> str:
    rec = "n/a" if m["recall"] is None else f"{m['recall']:.3f}"
    return rec + " / " + ", ".join(f"{g} {v:.3f}" for g, v in m["fpr"].items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backbone", default="clip_vit_b16_layers")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--out", type=Path, default=HERE / "thresholds")
    args = ap.parse_args()
    t0 = time.perf_counter()
    ds = load_dataset(args.data)
    ex = FeatureExtractor(
        load_backbone(args.backbone), FeatureCache(), face_stage=FaceStage(), progress=False
    )
    results = {}
    for name in args.protocols.split(","):
        results[name] = run_protocol(name, ds, ex, args.seed)
        print(name, json.dumps(results[name]["rules"]), flush=True)
    meta = {
        "command": "python benchmarks/thresholds.py",
        "backbone": args.backbone,
        "seed": args.seed,
        "machine": machine_description(),
        "seconds": time.perf_counter() - t0,
    }
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, **results}, indent=1))
    args.out.with_suffix(".md").write_text(markdown(results, meta))
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
