"""CLIP cut after layer 8 with INT8 matrix products in ONNX Runtime: latency, feature drift,
and P1 detection with the head refitted on the INT8 features (issue 6's 200 ms goal).

    python benchmarks/clip_ort_int8.py [--data ../shared/data] [--seed 0] [--folds 5]

The shipped pass (``clip_vit_b16_l8`` in ONNX Runtime, fp32) spends ~88% of its time in
matrix products at about the 2 AVX2 cores' peak, so only fewer operations or narrower numbers
make it faster. ``benchmarks/clip_int8.py`` measured PyTorch's dynamic INT8 against a head
fitted on fp32 features: the features drift too far for that head. Here the question is the
other one: with ONNX Runtime's dynamic quantisation (weights INT8, activations quantised per
call) and a head *fitted on the INT8 features*, is detection as good?

Variants (``VARIANTS``): which of each block's linear layers are 8-bit (``ClipVision(int8=)``:
unsigned weights with one scale per tensor, whose products are exact on every CPU, where
signed ones saturate on CPUs without VNNI; one image per call, so an image's features do not
depend on its batch). For each:

- latency: batch-1 pass p50 of 25 after 3 warm-ups, the variants interleaved so a change in
  the machine's load hits all of them alike;
- drift: cosine of the class token and of the region-pooled tokens against fp32, on P1 test;
- detection: the shipped logistic head on image + regions (layer 8), 5-fold CV over P1 train
  + val (grouped by content hash, seeded), then P1 test once with a 95% bootstrap CI; the fp32
  row reads the same cache the shipped detector was fitted from;
- paired differences against fp32 (same images, paired bootstrap): P1's out-of-fold scores,
  P1 test, and protocol ALL's headline subset (rff same-source test; each variant's ALL
  features take ~25 minutes to extract when not cached).

Writes benchmarks/clip_ort_int8.md and .json. About 5 minutes of CLIP extraction per variant
on 2 CPU cores when the cache is cold.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from clip_p1 import (
    all_headline,
    cross_validate,
    cv_arguments,
    cv_result,
    format_paired,
    p1_folds,
    provenance,
    write_result,
)
from facecheck.backbones.registry import load_backbone
from facecheck.evaluation.metrics import paired_auc_difference
from facecheck.features.cache import FeatureCache
from facecheck.features.extract import FeatureExtractor
from facecheck.features.views import PooledRegionView
from facecheck.heads.models import make_head
from facecheck.image.faces import FaceStage
from facecheck.image.regions import REGIONS

HERE = Path(__file__).resolve().parent
BASE = "clip_vit_b16_l8"
# Row -> backbone; the first is the fp32 reference, the last the library's INT8 backbone.
VARIANTS: dict[str, str] = {
    "fp32 (shipped)": BASE,
    "int8 q/k/v/out + fc1 (clip_vit_b16_l8_int8_attn_fc1)": f"{BASE}_int8_attn_fc1",
}


def extractor(name: str, cache: FeatureCache) -> FeatureExtractor:
    return FeatureExtractor(
        load_backbone(name),
        cache,
        face_stage=FaceStage(),
        view=PooledRegionView(with_image=True),
    )


def latency(graphs: dict[str, Path], repeats: int = 25) -> dict[str, float]:
    """Batch-1 pass p50 per graph, interleaved."""
    x = {"x": np.random.default_rng(0).standard_normal((1, 3, 224, 224), np.float32)}
    sessions = {}
    for k, path in graphs.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sessions[k] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(3):
            sessions[k].run(None, x)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(repeats):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, x)
            times[k].append(time.perf_counter() - t)
    return {k: round(1000 * float(np.median(v)), 1) for k, v in times.items()}


def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Per-part cosine (image, then each region) between two feature matrices."""
    parts = 1 + len(REGIONS)
    a, b = a.reshape(len(a), parts, -1), b.reshape(len(b), parts, -1)
    c = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return {
        "image_mean": float(np.nanmean(c[:, 0])),
        "image_min": float(np.nanmin(c[:, 0])),
        "regions_mean": float(np.nanmean(c[:, 1:])),
        "regions_p1": float(np.nanpercentile(c[:, 1:], 1)),
    }


def main() -> None:
    args = cv_arguments(__doc__.split("\n")[0], HERE / "clip_ort_int8.md").parse_args()
    t0 = time.perf_counter()
    cv = p1_folds(args.data, args.seed, args.folds)
    ds, pool, test, y, y_test = cv.ds, cv.pool, cv.test, cv.y, cv.y_test
    cache = FeatureCache()
    extractors = {row: extractor(name, cache) for row, name in VARIANTS.items()}
    if not all(ex.onnxruntime for ex in extractors.values()):
        raise SystemExit("needs onnxruntime and ml_dtypes (and FACECHECK_ONNXRUNTIME unset)")
    feats = {}
    for row, ex in extractors.items():  # the first pass exports (and quantises) the graph
        feats[row] = (
            ex.extract([r.path for r in pool], [r.sha256 for r in pool]).features,
            ex.extract([r.path for r in test], [r.sha256 for r in test]).features,
        )
    lat = latency({row: ex.backbone.model._onnx_file for row, ex in extractors.items()})  # type: ignore[union-attr]
    print("latency", lat, flush=True)

    rows: dict[str, dict] = {}
    ref_test = next(iter(feats.values()))[1]
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # out-of-fold pool, test
    for variant, (Fp, Ft) in feats.items():
        fitted = cross_validate(lambda: make_head("logreg", seed=args.seed), Fp, Ft, cv, args.seed)
        scores[variant] = (fitted.oof, fitted.test)
        rows[variant] = {"pass_ms": lat[variant], "drift": cosines(Ft, ref_test), **fitted.row}
        print(variant, rows[variant]["cv_auc"], rows[variant]["drift"], flush=True)

    # Paired against fp32 on the same images: P1's out-of-fold scores (every pool image
    # scored once by a head that did not see it), P1 test, and protocol ALL's headline
    # subset (rff same-source test; fitted on ALL's train split, as `facecheck evaluate`).
    ref = next(iter(scores))
    ok = ~np.isnan(np.stack([v[0] for v in scores.values()])).any(axis=0)
    okt = ~np.isnan(np.stack([v[1] for v in scores.values()])).any(axis=0)
    all_scores, y_all = all_headline(ds, args.seed, extractors)
    paired = {}
    for variant in list(scores)[1:]:
        paired[variant] = {
            "p1_out_of_fold": paired_auc_difference(
                y[ok], scores[ref][0][ok], scores[variant][0][ok], seed=args.seed
            ),
            "p1_test": paired_auc_difference(
                y_test[okt], scores[ref][1][okt], scores[variant][1][okt], seed=args.seed
            ),
        }
        if variant in all_scores:
            paired[variant]["all_rff_same_source_test"] = paired_auc_difference(
                y_all, all_scores[ref], all_scores[variant], seed=args.seed
            )
        print(variant, paired[variant], flush=True)

    result = cv_result(args, cv, t0, rows, len(pool), onnxruntime=ort.__version__, paired=paired)
    write_result(args.out, result, render)


def render(r: dict) -> str:
    lines = [
        "# CLIP layer 8 with INT8 matrix products in ONNX Runtime (issue 6)",
        "",
        provenance(r, "clip_ort_int8.py", f"onnxruntime {r['onnxruntime']}; ")
        + " Head: the shipped "
        "logistic head on image + regions (layer 8), refitted on each variant's features. "
        "Pass: batch 1, p50 of 25, variants interleaved (the machine's load moves all of them: "
        "compare within one run). A `-` under ALL: that variant's ALL features were not "
        "extracted when the script ran. Drift: cosine against fp32 on P1 "
        "test (image token; region-pooled tokens, mean and 1st percentile).",
        "",
        "| variant | pass p50 (ms) | drift: image mean / min | drift: regions mean / p1 "
        "| CV ROC-AUC | CV recall @ 10% FPR | test ROC-AUC [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    base = None
    for name, v in r["variants"].items():
        d, ci = v["drift"], v["test_auc_ci"]
        base = np.array(v["cv_auc_folds"]) if base is None else base
        delta = np.array(v["cv_auc_folds"]) - base
        paired = f" (Δ {delta.mean():+.4f}, {int((delta > 0).sum())}/{len(delta)} folds better)"
        lines.append(
            f"| {name} | {v['pass_ms']} | {d['image_mean']:.4f} / {d['image_min']:.4f} "
            f"| {d['regions_mean']:.4f} / {d['regions_p1']:.4f} "
            f"| {v['cv_auc'][0]:.3f} ± {v['cv_auc'][1]:.3f}"
            f"{paired if name != next(iter(r['variants'])) else ''} "
            f"| {v['cv_recall_at_10fpr'][0]:.3f} "
            f"| {v['test_auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] |"
        )
    lines += [
        "",
        "Paired against fp32 on the same images (ROC-AUC difference, int8 minus fp32, 95% "
        "paired bootstrap CI, share of draws where int8 is lower): P1's out-of-fold scores "
        "(each train + val image scored by the fold's head that did not see it), P1 test, and "
        "protocol ALL's headline (rff same-source test, head fitted on ALL's train split):",
        "",
        "| variant | P1 out-of-fold | P1 test | ALL rff same-source test |",
        "|---|---|---|---|",
    ]

    def diff(d: dict | None) -> str:
        return format_paired(d, empty="-", long=True)

    for name, p in r["paired"].items():
        lines.append(
            f"| {name} | {diff(p['p1_out_of_fold'])} | {diff(p['p1_test'])} "
            f"| {diff(p.get('all_rff_same_source_test'))} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
