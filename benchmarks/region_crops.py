"""Region crops at the picture's full resolution through frozen CLIP (issue 9, item 2).

    python benchmarks/region_crops.py [--data ../shared/data] [--seed 0] [--folds 5]

The shipped detector reads the regions off one pass over the whole face: CLIP's patch tokens
pooled inside the eye, nose and mouth boxes (``regions.PooledRegionView``). At 224 px a
16 px patch is a fifth of an eye, so a blended seam is a few pixels inside one token. Here
each region is also cut out of the picture at its own resolution and enlarged to 224 px
(``regions.RegionView``: the crops ``explain`` draws, the right eye mirrored) and passed
through CLIP cut after layer 8 on its own: four more passes per image, each seeing its
region at about four times the detail. Features:

- ``pooled (l8)``: the shipped detector's input, layer 8's class token + its patch tokens
  pooled in the four boxes (5 x 768);
- ``crops``: layer 8's class token of each of the four crops (4 x 768).

Heads: the shipped logistic head (C by inner CV) on a feature set or a concatenation, and
``RegionMILHead`` (region weight 1: the file names' region bits teach each region's logit)
with each region's part the pooled tokens followed by that region's crop token (the image
part padded with zeros to the same width, which the L2 penalty leaves at zero weight).

Compared by 5-fold CV over P1's train + val (stratified, grouped by content hash, seeded);
each row paired with the shipped recipe on the same out-of-fold scores (paired bootstrap of
the ROC-AUC difference); then P1's test split once with a 95% bootstrap CI.

Writes benchmarks/region_crops.md and .json. The crops' CLIP features cost about 25 minutes
on 2 CPU cores when not cached (4 passes per image, 2,041 images).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from clip_p1 import (
    PAIRED_NOTE,
    cross_validate,
    cv_arguments,
    cv_result,
    format_paired,
    p1_folds,
    p1_rows,
    pair_with_first,
    provenance,
    test_cell,
    write_result,
)
from facecheck.backbones.registry import load_backbone
from facecheck.evaluation.data import region_bits
from facecheck.features.cache import FeatureCache
from facecheck.features.extract import FeatureExtractor
from facecheck.features.views import PooledRegionView, RegionView
from facecheck.heads.models import RegionMILHead, make_head
from facecheck.image.faces import FaceStage
from facecheck.image.regions import REGIONS

HERE = Path(__file__).resolve().parent
# row -> (head, feature sets concatenated); "mil" rows pair each region's pooled tokens with
# its crop token.
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "logistic · pooled l8 (shipped recipe)": ("logreg", ("pooled8",)),
    "logistic · crops": ("logreg", ("crops",)),
    "logistic · pooled l8 + crops": ("logreg", ("pooled8", "crops")),
    "regionmil w=1 · pooled l8": ("mil", ("pooled8",)),
    "regionmil w=1 · pooled l8 ‖ crops per region": ("mil", ("pooled8", "crops")),
}


def per_region(pooled: np.ndarray, crops: np.ndarray) -> np.ndarray:
    """RegionMILHead's layout from pooled (image, 4 regions) and crop (4 regions) features:
    five equal parts, each region's pooled tokens followed by its crop token, the image's
    class tokens followed by zeros."""
    n, parts = len(pooled), 1 + len(REGIONS)
    p = pooled.reshape(n, parts, -1)
    c = crops.reshape(n, len(REGIONS), -1)
    c = np.concatenate([np.zeros_like(c[:, :1]), c], axis=1)
    return np.concatenate([p, c], axis=2).reshape(n, -1)


def main() -> None:
    args = cv_arguments(__doc__.split("\n")[0], HERE / "region_crops.md").parse_args()
    t0 = time.perf_counter()
    cv = p1_folds(args.data, args.seed, args.folds)
    cache, stage = FeatureCache(), FaceStage()
    extractors = {
        "pooled8": FeatureExtractor(
            load_backbone("clip_vit_b16_l8"), cache, face_stage=stage, view=PooledRegionView(True)
        ),
        "crops": FeatureExtractor(
            load_backbone("clip_vit_b16_l8"), cache, face_stage=stage, view=RegionView(224)
        ),
    }
    feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, ex in extractors.items():
        feats[name] = p1_rows(cv, ex)
        print(f"{name}: {feats[name][0].shape}, {time.perf_counter() - t0:.0f} s", flush=True)
    Rp = region_bits(cv.pool)
    difficulty = np.array([r.difficulty or "" for r in cv.pool], dtype=object)

    rows: dict[str, dict] = {}
    oof: dict[str, np.ndarray] = {}
    for name, (head, sets) in VARIANTS.items():
        tv = time.perf_counter()
        if head == "mil":
            Fp, Ft = (
                per_region(*(feats[s][i] for s in sets)) if len(sets) > 1 else feats[sets[0]][i]
                for i in (0, 1)
            )
            fitted = cross_validate(
                lambda: RegionMILHead(region_weight=1.0, seed=args.seed),
                Fp,
                Ft,
                cv,
                args.seed,
                Rp,
            )
        else:
            Fp, Ft = (np.hstack([feats[s][i] for s in sets]) for i in (0, 1))
            fitted = cross_validate(
                lambda: make_head("logreg", seed=args.seed), Fp, Ft, cv, args.seed
            )
        oof[name] = fitted.oof
        ok = ~np.isnan(fitted.oof)
        rows[name] = {
            **fitted.row,
            "dims": int(Fp.shape[1]),
            "per_difficulty_auc": {
                d: float(roc_auc_score(cv.y[m], fitted.oof[m]))
                for d in ("easy", "mid", "hard")
                if (m := ok & ((cv.y == 0) | (difficulty == d))).any()
            },
            "seconds": round(time.perf_counter() - tv, 1),
        }
        print(name, rows[name]["cv_auc"], rows[name]["test_auc"], flush=True)

    both = pair_with_first(rows, oof, cv.y, args.seed)
    result = cv_result(args, cv, t0, rows, int(both.sum()))
    write_result(args.out, result, render)


def render(r: dict) -> str:
    lines = [
        "# Region crops at full resolution through frozen CLIP (issue 9)",
        "",
        provenance(r, "region_crops.py") + " Pooled: CLIP ViT-B/16's class token(s) and patch "
        "tokens pooled in the four region boxes, one pass over the face; crops: layer 8's "
        "class token of each region cut at the picture's resolution and enlarged to 224 px, "
        "one pass per region. " + PAIRED_NOTE,
        "",
        "| head · features | dims | CV ROC-AUC | CV recall @ 10% FPR | paired Δ out-of-fold "
        "| OOF easy / mid / hard | test ROC-AUC [95% CI] | test recall @ 10% FPR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, v in r["variants"].items():
        d = v["per_difficulty_auc"]
        delta = format_paired(v.get("paired_oof_vs_shipped"))
        lines.append(
            f"| {name} | {v['dims']} | {v['cv_auc'][0]:.3f} ± {v['cv_auc'][1]:.3f} "
            f"| {v['cv_recall_at_10fpr'][0]:.3f} | {delta} "
            f"| {d['easy']:.3f} / {d['mid']:.3f} / {d['hard']:.3f} "
            f"| {test_cell(v)} | {v['test_recall_at_10fpr']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
