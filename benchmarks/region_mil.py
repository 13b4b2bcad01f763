"""Region bits as auxiliary targets of a region-aware head on frozen CLIP (issue 9, item 2).

    python benchmarks/region_mil.py [--data ../shared/data] [--seed 0] [--folds 5]

All variants read the same features: CLIP ViT-B/16's class tokens of layers 8 + 12 followed
by its patch tokens (same layers) pooled inside the four region boxes, one pass
(``regions.PooledRegionView(with_image=True)``, the shipped detector's input). They differ
in the head and in what it learns from:

- ``logistic`` (the shipped head) on the concatenation, with the shipped localiser (a
  logistic head per region, eyes sharing one) for region scores;
- ``MIL``: :class:`facecheck.heads.models.RegionMILHead`, whose image logit adds the soft maximum
  of four region logits to a linear score of the class tokens, trained on the image label
  alone (``w=0``) or with the file names' region bits as an auxiliary target of the region
  logits (``w`` = that loss's weight; reals' regions all untouched; the 3-bit name unknown);
- ``+ self-blended``: plus one self-blended fake (``facecheck.training.blend``) per training rff
  real, its region bits those its mask covers (the same fakes as ``clip_p1.py``'s, donors
  from the same fold), used only in folds where they are training images.

Compared by 5-fold CV over P1's train + val (stratified, grouped by content hash, seeded):
image ROC-AUC and recall at 10% FPR; from the pooled out-of-fold scores, ROC-AUC per
difficulty, and P6's region figures (top region replaced, mean per-region ROC-AUC over all
images and over fakes only; ``metrics.localisation_metrics``). Then each head is refitted on
train + val and P1's test split scored once (95% bootstrap CI).

Writes benchmarks/region_mil.md and .json. With a warm feature cache it runs in about 15
minutes on 2 CPU cores; the self-blended fakes' features cost about 5 more uncached.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from clip_p1 import cv_arguments, p1_folds, synthetic_fakes, write_result
from facecheck.backbones.registry import load_backbone
from facecheck.detector.localise import RegionScorer
from facecheck.evaluation.data import region_bits
from facecheck.evaluation.metrics import bootstrap_ci, localisation_metrics, recall_at_fpr
from facecheck.evaluation.report import git_commit, machine_description
from facecheck.features.cache import FeatureCache
from facecheck.features.extract import FeatureExtractor
from facecheck.features.views import PooledRegionView
from facecheck.heads.models import RegionMILHead, make_head
from facecheck.image.faces import FaceStage
from facecheck.image.regions import REGIONS

HERE = Path(__file__).resolve().parent
D = 1536  # width of each part: two layers' 768-d tokens
# name -> (head, region-target weight, shared region map, self-blended fakes)
VARIANTS = {
    "logistic (shipped)": ("logreg", 0.0, True, False),
    "MIL, w=0": ("mil", 0.0, True, False),
    "MIL, w=0.3": ("mil", 0.3, True, False),
    "MIL, w=1": ("mil", 1.0, True, False),
    "MIL, w=3": ("mil", 3.0, True, False),
    "MIL, w=1, a map per region": ("mil", 1.0, False, False),
    "MIL, w=1 + self-blended": ("mil", 1.0, True, True),
}


class Fitted:
    """One variant's fitted head: image scores and region scores."""

    def __init__(self, head: str, weight: float, shared: bool, seed: int):
        self.head, self.weight, self.shared, self.seed = head, weight, shared, seed

    def fit(self, X: np.ndarray, y: np.ndarray, R: np.ndarray) -> Fitted:
        if self.head == "logreg":
            self.model = make_head("logreg", seed=self.seed).fit(X, y)
            known = ~np.isnan(R).any(axis=1)
            self.regions = RegionScorer(seed=self.seed).fit(X[known, D:], R[known].astype(int))
        else:
            self.model = RegionMILHead(
                region_weight=self.weight, shared=self.shared, seed=self.seed
            ).fit(X, y, regions=R)
        return self

    def score(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self.model.predict_proba(X)[:, 1]
        if self.head == "logreg":
            return s, self.regions.predict_proba(X[:, D:])
        return s, self.model.predict_regions(X)


def main() -> None:
    args = cv_arguments(__doc__.split("\n")[0], HERE / "region_mil.md").parse_args()
    t0 = time.perf_counter()
    cv = p1_folds(args.data, args.seed, args.folds)
    pool, test, y, y_test, folds = cv.pool, cv.test, cv.y, cv.y_test, cv.folds
    cache, stage = FeatureCache(), FaceStage()
    ex = FeatureExtractor(
        load_backbone("clip_vit_b16_layers"),
        cache,
        face_stage=stage,
        view=PooledRegionView(with_image=True),
    )

    def feats(records) -> np.ndarray:
        return ex.extract([r.path for r in records], [r.sha256 for r in records]).features

    Fp, Ft = feats(pool), feats(test)
    Rp, Rt = region_bits(pool), region_bits(test)
    # The same self-blended fakes as clip_p1.py's for P1's rff reals (same seed and folds).
    sbi = synthetic_fakes([r for r in pool if r.y == 0], folds[y == 0], stage, args.seed)
    S = ex.extract([s["bytes"] for s in sbi], [s["sha256"] for s in sbi]).features
    S_ok = ~np.isnan(S).any(axis=1)
    S_fold = np.array([s["fold"] for s in sbi])
    S_bits = np.array([s["regions"] for s in sbi], float)
    print(f"self-blended fakes: {int(S_ok.sum())} of {len(sbi)} scorable", flush=True)
    difficulty = np.array([r.difficulty or "" for r in pool], dtype=object)
    ok_p, ok_t = ~np.isnan(Fp).any(axis=1), ~np.isnan(Ft).any(axis=1)

    def training(keep: np.ndarray, with_sbi: bool):
        X, t, R = [Fp[keep & ok_p]], [y[keep & ok_p]], [Rp[keep & ok_p]]
        if with_sbi:
            m = S_ok & np.isin(S_fold, np.unique(folds[keep]))
            X, t, R = [*X, S[m]], [*t, np.ones(int(m.sum()), int)], [*R, S_bits[m]]
        return np.vstack(X), np.concatenate(t), np.vstack(R)

    results = {}
    for name, (head, weight, shared, with_sbi) in VARIANTS.items():
        tv = time.perf_counter()
        oof, oof_reg = np.full(len(pool), np.nan), np.full((len(pool), len(REGIONS)), np.nan)
        aucs, r10 = [], []
        for f in range(args.folds):
            te = (folds == f) & ok_p
            model = Fitted(head, weight, shared, args.seed).fit(*training(folds != f, with_sbi))
            oof[te], oof_reg[te] = model.score(Fp[te])
            aucs.append(roc_auc_score(y[te], oof[te]))
            r10.append(recall_at_fpr(y[te], oof[te], 0.10))
        model = Fitted(head, weight, shared, args.seed).fit(
            *training(np.ones(len(pool), bool), with_sbi)
        )
        st, Pt = model.score(Ft[ok_t])
        yt = y_test[ok_t]
        ci = bootstrap_ci(yt, st, 0.5, metrics=("roc_auc",), seed=args.seed)["roc_auc"]

        def p6(R, P, yy, s, thr, diff):
            m = ~np.isnan(R).any(axis=1)  # images with region truth
            loc = localisation_metrics(R[m].astype(int), P[m], yy[m], s[m] >= thr, diff[m])
            return {k: loc[k] for k in ("top_region", "chance", "mean_auc_all", "mean_auc_fakes")}

        thr = float(np.quantile(oof[ok_p & (y == 0)], 0.90))
        results[name] = {
            "cv_auc": [float(np.mean(aucs)), float(np.std(aucs))],
            "cv_auc_folds": [float(a) for a in aucs],
            "cv_recall_at_10fpr": [float(np.mean(r10)), float(np.std(r10))],
            "per_difficulty_auc": {
                d: float(roc_auc_score(y[m], oof[m]))
                for d in ("easy", "mid", "hard")
                if (m := ok_p & ((y == 0) | (difficulty == d))).any()
            },
            "cv_p6": p6(Rp[ok_p], oof_reg[ok_p], y[ok_p], oof[ok_p], thr, difficulty[ok_p]),
            "test_auc": float(roc_auc_score(yt, st)),
            "test_auc_ci": [float(ci[0]), float(ci[1])],
            "test_recall_at_10fpr": recall_at_fpr(yt, st, 0.10),
            "test_p6": p6(
                Rt[ok_t],
                Pt,
                yt,
                st,
                thr,
                np.array([r.difficulty or "" for r in test], dtype=object)[ok_t],
            ),
            "C": getattr(model.model, "C_", None),
            "seconds": round(time.perf_counter() - tv, 1),
        }
        print(name, {k: results[name][k] for k in ("cv_auc", "test_auc", "seconds")}, flush=True)

    result = {
        "seed": args.seed,
        "folds": args.folds,
        "self_blended": {"made": len(sbi), "scorable": int(S_ok.sum())},
        "commit": git_commit(),
        "machine": machine_description(),
        "seconds": round(time.perf_counter() - t0, 1),
        "variants": results,
    }
    write_result(args.out, result, render)


def render(r: dict) -> str:
    def pm(v: list[float]) -> str:
        return f"{v[0]:.3f} ± {v[1]:.3f}"

    def loc(p: dict) -> str:
        t = p["top_region"]
        return f"{t['top_hit']:.3f} | {p['mean_auc_all']:.3f} | {p['mean_auc_fakes']:.3f}"

    lines = [
        "# Region bits as auxiliary targets of a region-aware head (issue 9)",
        "",
        f"`python benchmarks/region_mil.py` (seed {r['seed']}; {r['folds']}-fold CV over P1 "
        f"train + val, grouped by content hash; commit {r['commit']}; {r['machine']}; "
        f"{r['seconds'] / 60:.0f} min with a warm feature cache). Features: CLIP ViT-B/16 class "
        "tokens (layers 8 + 12) and the same layers' patch tokens pooled in the four region "
        "boxes, one pass. Self-blended fakes: "
        f"{r['self_blended']['made']} made (one per P1 rff real in train + val), "
        f"{r['self_blended']['scorable']} with one face. See the script's docstring for the "
        "variants. C by inner 3-fold CV for every head.",
        "",
        "## Image-level detection",
        "",
        "| variant | CV ROC-AUC | CV recall @ 10% FPR | easy / mid / hard (OOF) "
        "| test ROC-AUC [95% CI] | test recall @ 10% FPR |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in r["variants"].items():
        ci, d = v["test_auc_ci"], v["per_difficulty_auc"]
        lines.append(
            f"| {name} | {pm(v['cv_auc'])} | {pm(v['cv_recall_at_10fpr'])} "
            f"| {d['easy']:.3f} / {d['mid']:.3f} / {d['hard']:.3f} "
            f"| {v['test_auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | {v['test_recall_at_10fpr']:.3f} |"
        )
    base = np.array(next(iter(r["variants"].values()))["cv_auc_folds"])
    lines += [
        "",
        "Paired by fold, each variant's CV ROC-AUC minus the first row's (mean ± sd over the "
        "folds; the folds are shared, so this is what the fold-to-fold spread above hides):",
        "",
        "| variant | Δ CV ROC-AUC | folds better |",
        "|---|---|---|",
    ]
    for name, v in list(r["variants"].items())[1:]:
        d = np.array(v["cv_auc_folds"]) - base
        better = f"{int((d > 0).sum())}/{len(d)}"
        lines.append(f"| {name} | {d.mean():+.4f} ± {d.std():.4f} | {better} |")
    lines += [
        "",
        "## Which region (P6's figures)",
        "",
        "Region scores: the shipped localiser's for the logistic row, the head's own region "
        "logits for the MIL rows (with w=0 they rank the regions' evidence but are not taught "
        "the bits). Out-of-fold over train + val, and on the test split once; chance (the "
        "share of replaced regions among fakes): "
        f"{next(iter(r['variants'].values()))['test_p6']['chance']:.3f} on test.",
        "",
        "| variant | OOF top region replaced | OOF mean region ROC-AUC, all | same, fakes "
        "| test top region replaced | test mean region ROC-AUC, all | same, fakes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in r["variants"].items():
        lines.append(f"| {name} | {loc(v['cv_p6'])} | {loc(v['test_p6'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
