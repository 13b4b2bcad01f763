"""Protocol P6 (localisation): which region scorer to ship, its test figures, explain latency.

    python benchmarks/localise.py [--data ../shared/data] [--seed 0] [--contexts 1.0,1.6]

1. Region-score variants compared by 5-fold CV over P1's train + val (stratified, grouped by
   content hash, seeded): one head per region or the eyes sharing one (right eye mirrored),
   and crops of the default size or with more context around each region. Figures: how
   often a fake's top-scoring region is a replaced one, and the mean per-region ROC-AUC.
2. The shipped configuration on P1's test split, once (``facecheck.evaluate.
   evaluate_localisation``, as ``facecheck evaluate --protocols P6`` runs it), ranking
   regions by the region scores and by the heatmap.
3. ``explain`` latency on CPU: p50/p95 over tight crops and over 1200 x 900 pictures with a
   300 px face (warm: the first call is not counted; no feature cache).

Writes benchmarks/localise.md and benchmarks/localise.json. Features are cached (FACECHECK_CACHE),
so a rerun only refits. About 4 minutes per crop context uncached on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold

from facecheck.data import load_dataset
from facecheck.evaluate import evaluate_localisation, extract_all
from facecheck.explain import explain
from facecheck.faces import FaceStage
from facecheck.features import FeatureCache, FeatureExtractor, load_backbone
from facecheck.localise import RegionScorer, region_targets
from facecheck.metrics import localisation_metrics
from facecheck.protocols import p1
from facecheck.regions import RegionView
from facecheck.report import machine_description

HERE = Path(__file__).resolve().parent


def cross_validate(F, Y, y, groups, *, shared_eyes: bool, k: int, seed: int) -> dict:
    folds = StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(F, y, groups)
    hits, aucs, aucs_f = [], [], []
    for tr, te in folds:
        P = RegionScorer(shared_eyes=shared_eyes, seed=seed).fit(F[tr], Y[tr]).predict_proba(F[te])
        m = localisation_metrics(Y[te], P, y[te], np.zeros(len(te), bool), np.full(len(te), ""))
        hits.append(m["top_region"]["top_hit"])
        aucs.append(m["mean_auc_all"])
        aucs_f.append(m["mean_auc_fakes"])
    return {
        "top_hit": (float(np.mean(hits)), float(np.std(hits))),
        "mean_auc_all": (float(np.mean(aucs)), float(np.std(aucs))),
        "mean_auc_fakes": (float(np.mean(aucs_f)), float(np.std(aucs_f))),
    }


def latency(det, pictures: list[Image.Image]) -> dict[str, float]:
    from facecheck.imageio import DecodedImage

    times = []
    for i, pic in enumerate([pictures[0], *pictures]):
        decoded = DecodedImage(pic, f"bench-{i}", "JPEG", "RGB")
        t = time.perf_counter()
        explain(det, decoded)
        if i:  # the first call builds the networks
            times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--contexts", default="1.0,1.6")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "localise.md")
    args = ap.parse_args()

    t0 = time.perf_counter()
    ds = load_dataset(args.data)
    proto = p1(ds, args.seed)
    pool = [*proto.split.train, *proto.split.val]
    Y_all, known = region_targets(pool)
    pool = [r for r, k in zip(pool, known, strict=True) if k]
    Y = Y_all[known]
    y = np.array([r.y for r in pool])
    groups = [r.sha256 for r in pool]
    backbone = load_backbone("efficientnet_lite0")
    cache = FeatureCache()
    stage = FaceStage()
    cv = {}
    for ctx in [float(c) for c in args.contexts.split(",")]:
        ex = FeatureExtractor(
            backbone, cache, face_stage=stage, view=RegionView(224, ctx), progress=False
        )
        F = ex.extract([r.path for r in pool], groups).features
        for shared in (True, False):
            name = f"context {ctx:g}, " + ("eyes share a head" if shared else "a head per region")
            cv[name] = cross_validate(F, Y, y, groups, shared_eyes=shared, k=args.folds, seed=0)
            print(name, cv[name], flush=True)

    image_ex = FeatureExtractor(backbone, cache, face_stage=stage, progress=False)
    used = proto.split.train.subset([*proto.split.train, *proto.split.val, *proto.split.test])
    feats, _ = extract_all(used, image_ex)
    loc = evaluate_localisation(ds, image_ex, feats, seed=args.seed)
    det = loc.detector

    # Latency: no cache, so every call computes its features.
    det.cache = None
    det._extractor = FeatureExtractor(backbone, None, face_stage=stage, progress=False)
    det._region_extractor = None
    tight = [Image.open(r.path).convert("RGB") for r in loc.records[:20]]
    canvases = []
    for pic in tight[:10]:
        canvas = Image.new("RGB", (1200, 900), (120, 130, 120))
        canvas.paste(pic.resize((300, 300)), (450, 300))
        canvases.append(canvas)
    lat = {
        "tight 256 px crops": latency(det, tight),
        "1200x900, 300 px face": latency(det, canvases),
    }

    result = {
        "seed": args.seed,
        "folds": args.folds,
        "machine": machine_description(),
        "cv": cv,
        "test": {"region_scores": loc.metrics, "heatmap": loc.heat_metrics},
        "latency": lat,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=float))
    args.out.write_text(render(result))
    print(f"wrote {args.out}")


def _pm(v: tuple[float, float]) -> str:
    return f"{v[0]:.3f} ± {v[1]:.3f}"


def render(r: dict) -> str:
    m, h = r["test"]["region_scores"], r["test"]["heatmap"]

    def hit(x: dict) -> str:
        t = x["top_region"]
        return f"{t['top_hit']:.3f} [{t['ci'][0]:.2f}, {t['ci'][1]:.2f}] (n={t['n']})"

    lines = [
        "# P6 localisation benchmark",
        "",
        f"`python benchmarks/localise.py` (seed {r['seed']}; {r['machine']}; "
        f"{r['seconds']:.0f} s with a warm feature cache for the region crops).",
        "Backbone: EfficientNet-Lite0 (ImageNet, frozen), 224 px crops; heads: logistic "
        "regression with C picked by inner CV. Truth: the rff fakes' file-name bits; rff "
        "reals count as untouched in every region. Goals (issue 6): top region replaced for "
        ">= 80% of test fakes, per-region ROC-AUC >= 0.85.",
        "",
        f"## Variants, {r['folds']}-fold CV over P1 train + val (grouped by content hash)",
        "",
        "| region scorer | top region replaced | mean per-region ROC-AUC, all images "
        "| same, fakes only |",
        "|---|---|---|---|",
        *[
            f"| {name} | {_pm(v['top_hit'])} | {_pm(v['mean_auc_all'])} "
            f"| {_pm(v['mean_auc_fakes'])} |"
            for name, v in r["cv"].items()
        ],
        "",
        "## Shipped configuration on P1's test split (scored once)",
        "",
        "Context 1.0, eyes sharing a head. *Chance*: the share of replaced regions among test "
        "fakes (what a randomly chosen region hits).",
        "",
        "| ranking regions by | top region replaced [95% Wilson CI] | chance "
        "| mean per-region ROC-AUC (all / fakes only) |",
        "|---|---|---|---|",
        f"| region scores | {hit(m)} | {m['chance']:.3f} "
        f"| {m['mean_auc_all']:.3f} / {m['mean_auc_fakes']:.3f} |",
        f"| heatmap (mean inside each box) | {hit(h)} | {h['chance']:.3f} "
        f"| {h['mean_auc_all']:.3f} / {h['mean_auc_fakes']:.3f} |",
        "",
        "| region | ROC-AUC all | ROC-AUC fakes only | fakes with it replaced "
        "| image-level recall on them |",
        "|---|---|---|---|---|",
        *[
            f"| {k} | {v['auc_all']:.3f} | {v['auc_fakes']:.3f} | {v['n_replaced']} "
            f"| {v['detector_recall']:.3f} |"
            for k, v in m["regions"].items()
        ],
        "",
        "| edit / difficulty | test fakes | image-level recall (val threshold) "
        "| top region replaced |",
        "|---|---|---|---|",
        *[
            f"| {k} | {v['n']} | {v['detector_recall']:.3f} | {v['top_hit']:.3f} |"
            for k, v in [*m["patterns"].items(), *m["difficulty"].items()]
        ],
        "",
        "## `explain` latency (CPU, one image at a time, no feature cache)",
        "",
        "| input | p50 ms | p95 ms |",
        "|---|---|---|",
        *[f"| {k} | {v['p50_ms']:.0f} | {v['p95_ms']:.0f} |" for k, v in r["latency"].items()],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
