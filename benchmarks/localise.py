"""Protocol P6 (localisation): which region scorer to ship, its test figures, explain latency.

    python benchmarks/localise.py [--data ../shared/data] [--seed 0] [--folds 5]

1. Region-score variants compared by 5-fold CV over P1's train + val (stratified, grouped by
   content hash, seeded): backbone (Lite0, CLIP), region features from four crops (two crop
   contexts) or from the backbone's map pooled inside the region boxes, one head per region
   or the eyes sharing one. Figures: how often a fake's top-scoring region is a replaced
   one, and the mean per-region ROC-AUC.
2. Each backbone's best configuration by CV on P1's test split, once
   (``facecheck.evaluation.evaluate.evaluate_localisation``, as ``facecheck evaluate
   --protocols P6`` runs it), ranking
   regions by the region scores and by the heatmap.
3. ``explain`` latency on CPU: p50/p95 over tight crops and over 1200 x 900 pictures with a
   300 px face (warm: the first call is not counted; no feature cache).

Writes benchmarks/localise.md and benchmarks/localise.json. Features are cached (FACECHECK_CACHE),
so a rerun only refits. Uncached on a 2-core CPU: about 4 minutes per Lite0 crop context, and
about 10 minutes for CLIP's one pass over the 2,040 rff images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from facecheck.backbones.registry import load_backbone
from facecheck.detector.explain import explain
from facecheck.detector.localise import RegionScorer
from facecheck.evaluation.data import grouped_folds, load_dataset, region_targets
from facecheck.evaluation.evaluate import evaluate_localisation, extract_all
from facecheck.evaluation.metrics import localisation_metrics
from facecheck.evaluation.protocols import p1
from facecheck.evaluation.report import machine_description
from facecheck.features.cache import FeatureCache
from facecheck.features.extract import FeatureExtractor
from facecheck.features.views import PooledRegionView, RegionView
from facecheck.image.faces import FaceStage

HERE = Path(__file__).resolve().parent


def cross_validate(F, Y, y, records, *, shared_eyes: bool, k: int, seed: int) -> dict:
    folds = grouped_folds(records, y, k, seed)
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
    from facecheck.image.decode import DecodedImage

    times = []
    for i, pic in enumerate([pictures[0], *pictures]):
        decoded = DecodedImage(pic, f"bench-{i}", "JPEG", "RGB")
        t = time.perf_counter()
        explain(det, decoded)
        if i:  # the first call builds the networks
            times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}


# What is compared by CV: (backbone, region view, crop context). CLIP on crops is left out:
# four ViT passes per image (~1 s on 2 cores) for a measurement the pooled view makes in one.
CONFIGS = [
    ("efficientnet_lite0", "crops", 1.0),
    ("efficientnet_lite0", "crops", 1.6),
    ("efficientnet_lite0", "pooled", 1.0),
    ("clip_vit_b16_layers", "pooled", 1.0),
]
LABEL = {"efficientnet_lite0": "Lite0", "clip_vit_b16_layers": "CLIP layers 8+12"}


def config_name(backbone: str, view: str, ctx: float) -> str:
    where = f"crops, context {ctx:g}" if view == "crops" else "map pooled in the boxes"
    return f"{LABEL[backbone]}, {where}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--seed", type=int, default=0)
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
    cache = FeatureCache()
    stage = FaceStage()
    backbones = {name: load_backbone(name) for name in LABEL}
    cv, best = {}, {}
    for name, view, ctx in CONFIGS:
        v = RegionView(224, ctx) if view == "crops" else PooledRegionView()
        ex = FeatureExtractor(backbones[name], cache, face_stage=stage, view=v, progress=False)
        F = ex.extract([r.path for r in pool], groups).features
        for shared in (True, False):
            label = config_name(name, view, ctx)
            label += ", eyes share a head" if shared else ", a head per region"
            cv[label] = cross_validate(F, Y, y, pool, shared_eyes=shared, k=args.folds, seed=0)
            cv[label]["config"] = [name, view, ctx, shared]
            print(label, cv[label], flush=True)
            # Each backbone's best view by CV (the score: top-region hits) is the one scored
            # on the test split, with the eyes sharing a head as the detector's scorer does.
            if shared and (name not in best or cv[label]["top_hit"][0] > best[name][1]):
                best[name] = (label, cv[label]["top_hit"][0], view)

    test, lat = {}, {}
    for name, (label, _, view) in best.items():
        image_ex = FeatureExtractor(backbones[name], cache, face_stage=stage, progress=False)
        used = proto.split.train.subset([*proto.split.train, *proto.split.val, *proto.split.test])
        feats, _ = extract_all(used, image_ex)
        loc = evaluate_localisation(ds, image_ex, feats, seed=args.seed, region_view=view)
        test[label] = {"region_scores": loc.metrics, "heatmap": loc.heat_metrics}
        lat[label] = explain_latency(loc, backbones[name], stage)

    result = {
        "seed": args.seed,
        "folds": args.folds,
        "machine": machine_description(),
        "cv": cv,
        "test": test,
        "latency": lat,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=float))
    args.out.write_text(render(result))
    print(f"wrote {args.out}")


def explain_latency(loc, backbone, stage) -> dict[str, dict[str, float]]:
    """``explain`` p50/p95 with no feature cache, on tight crops and on big pictures."""
    det = loc.detector
    det.cache = None
    det._extractor = FeatureExtractor(backbone, None, face_stage=stage, progress=False)
    det._region_extractor = det._joint_extractor = None
    tight = [Image.open(r.path).convert("RGB") for r in loc.records[:20]]
    canvases = []
    for pic in tight[:10]:
        canvas = Image.new("RGB", (1200, 900), (120, 130, 120))
        canvas.paste(pic.resize((300, 300)), (450, 300))
        canvases.append(canvas)
    return {
        "tight 256 px crops": latency(det, tight),
        "1200x900, 300 px face": latency(det, canvases),
    }


def _pm(v: tuple[float, float]) -> str:
    return f"{v[0]:.3f} ± {v[1]:.3f}"


def _hit(x: dict) -> str:
    t = x["top_region"]
    return f"{t['top_hit']:.3f} [{t['ci'][0]:.2f}, {t['ci'][1]:.2f}] (n={t['n']})"


def render_test(label: str, t: dict, lat: dict) -> list[str]:
    m, h = t["region_scores"], t["heatmap"]
    return [
        f"### {label}",
        "",
        "| ranking regions by | top region replaced [95% Wilson CI] | chance "
        "| mean per-region ROC-AUC (all / fakes only) |",
        "|---|---|---|---|",
        f"| region scores | {_hit(m)} | {m['chance']:.3f} "
        f"| {m['mean_auc_all']:.3f} / {m['mean_auc_fakes']:.3f} |",
        f"| heatmap (mean inside each box) | {_hit(h)} | {h['chance']:.3f} "
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
        "`explain` latency (CPU, one image at a time, no feature cache): "
        + "; ".join(
            f"{k}: p50 {v['p50_ms']:.0f} ms, p95 {v['p95_ms']:.0f} ms" for k, v in lat.items()
        )
        + ".",
        "",
    ]


def render(r: dict) -> str:
    lines = [
        "# P6 localisation benchmark",
        "",
        f"`python benchmarks/localise.py` (seed {r['seed']}; {r['machine']}; "
        f"{r['seconds']:.0f} s with a warm feature cache).",
        "Backbones frozen: EfficientNet-Lite0 (ImageNet) and CLIP ViT-B/16 (class tokens of "
        "layers 8 and 12 for the image; for regions its patch tokens of the same layers); "
        "heads: logistic regression with C picked by inner CV. Region features either from "
        "four 224 px crops around the regions, or from one pass over the face with the "
        "backbone's map (Lite0: 7 x 7 cells; CLIP: 14 x 14 patch tokens) averaged inside each "
        "region box. Truth: the rff fakes' file-name bits; rff reals count as untouched in "
        "every region. Goals (issue 6): top region replaced for >= 80% of test fakes, "
        "per-region ROC-AUC >= 0.85.",
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
        "## On P1's test split (scored once per backbone)",
        "",
        "Each backbone's configuration with the most top-region hits by CV. The image-level "
        "detector is that backbone's logistic head (its threshold: Youden's J on validation); "
        "the heatmap is that head applied to each cell of the map. *Chance*: the share of "
        "replaced regions among test fakes (what a randomly chosen region hits).",
        "",
    ]
    for label, t in r["test"].items():
        lines += render_test(label, t, r["latency"][label])
    return "\n".join(lines)


if __name__ == "__main__":
    main()
