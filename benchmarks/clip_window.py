"""Fewer tokens for CLIP: a 160 px window over the eyes, nose and mouth (issue 6's latency).

    python benchmarks/clip_window.py [--data ../shared/data] [--seed 0] [--folds 5]

The shipped detector passes the whole face crop at 224 px through CLIP cut after layer 8:
197 tokens, and a pass costs about linearly in tokens (plus a fixed ~50 ms on 2 CPU cores).
The region-aware head reads the class token and the patch tokens pooled in the four region
boxes, which all lie in the middle of the crop. Variants with 101 tokens (160 px, 10 x 10
patches):

- ``window on the face box, cell positions``: the face stage aligns every face and crops
  1.1 face-box widths around the box (the four region boxes with a margin, at about the
  picture's own resolution); its patches take the position embeddings of the 10 x 10 cells
  where that window lies in the 224 px view of a training crop;
- ``window, interpolated positions``: the same window, CLIP's 14 x 14 position embeddings
  resized to 10 x 10 (bicubic, as timm does for other input sizes);
- ``whole face at 160 px``: the usual crop resized to 160 px, interpolated positions;
- ``window on the region boxes`` (``clip_vit_b16_l8_window``): the window placed by the
  keypoints instead of the face box (``FaceStage(anchor="regions")``): centred on the four
  region boxes, 2.6 inter-ocular distances on a side, eyes levelled or (``upright``) the
  picture's axes kept, with the same cell positions.

Each with the shipped head (logistic, C by inner CV) on class token + pooled regions, compared
by 5-fold CV over P1's train + val (grouped by content hash, seeded), paired with the shipped
recipe on the same out-of-fold scores (paired bootstrap of the ROC-AUC difference), then P1's
test split once with a 95% bootstrap CI. Then one pass (decoded picture -> pooled features,
batch 1, ONNX Runtime) timed interleaved for each input size.

Writes benchmarks/clip_window.md and .json; about 35 minutes on 2 CPU cores uncached.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clip_p1 import (
    PAIRED_NOTE,
    all_headline,
    cross_validate,
    cv_arguments,
    cv_cells,
    cv_result,
    format_paired,
    p1_folds,
    pair_with_first,
    provenance,
    test_cell,
    write_result,
)
from facecheck.backbones.clip import (
    CLIP_MEAN,
    CLIP_STD,
    GRID,
    PATCH,
    WIDTH,
    ClipVision,
    state_dict_from_onnx,
)
from facecheck.backbones.registry import (
    WINDOW_FRAMING,
    WINDOW_SIZE,
    Backbone,
    Preprocessing,
    load_backbone,
)
from facecheck.evaluation.metrics import paired_auc_difference
from facecheck.features.cache import FeatureCache
from facecheck.features.extract import FeatureExtractor
from facecheck.features.views import PooledRegionView
from facecheck.heads.models import make_head
from facecheck.image.faces import FaceStage, scored_keypoints

HERE = Path(__file__).resolve().parent
SHIPPED = "224 px whole face, 197 tokens (shipped)"
# Face-stage framings of the windows (FaceStage fields; every face aligned).
FRAMINGS: dict[str, dict] = {
    "box": {"crop_scale": 1.1, "crop_offset_y": -0.02},
    "regions": WINDOW_FRAMING,
    "regions, upright": {**WINDOW_FRAMING, "rotate": False},
}
# row -> (backbone, framing: None = the training crops')
VARIANTS = {
    SHIPPED: ("clip_vit_b16_l8", None),
    "160 px window on the region boxes, cell positions (clip_vit_b16_l8_window)": (
        "clip_vit_b16_l8_window",
        "regions",
    ),
    "160 px window on the region boxes, upright, cell positions": (
        "clip_vit_b16_l8_window",
        "regions, upright",
    ),
    "160 px window on the face box, cell positions": ("clip_vit_b16_l8_window", "box"),
    "160 px window on the face box, interpolated positions": ("interpolated", "box"),
    "160 px whole face, interpolated positions": ("interpolated", None),
}


class InterpolatedClip(ClipVision):
    """CLIP with its 14 x 14 position embeddings resized to the input's grid."""

    def _positions(self) -> torch.Tensor:
        pos = self.vision_model.embeddings.position_embedding.weight
        side = self.size // PATCH
        grid = pos[1:].reshape(GRID, GRID, WIDTH).permute(2, 0, 1)[None]
        cells = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
        return torch.cat([pos[:1], cells[0].permute(1, 2, 0).reshape(side * side, WIDTH)])


def interpolated_backbone() -> Backbone:
    base = load_backbone("clip_vit_b16_l8")
    model = InterpolatedClip((8,), size=WINDOW_SIZE)
    model.load_state_dict(state_dict_from_onnx(base.weights_source), strict=False)
    return Backbone(
        "clip_vit_b16_l8_160_interpolated",
        model.eval(),
        Preprocessing(WINDOW_SIZE, CLIP_MEAN, CLIP_STD, "bicubic"),
        WIDTH,
        base.weights_id,
        base.weights_source,
        base.licence,
    )


def face_stage(framing: str | None) -> FaceStage:
    return FaceStage() if framing is None else FaceStage(mode="align", **FRAMINGS[framing])


def pass_latency(extractors: dict[str, FeatureExtractor], paths: list[Path]) -> dict[str, float]:
    """p50 ms of one picture's pass (face crop given; pooled features), interleaved."""
    prepared = {}
    for name, ex in extractors.items():
        stage = ex.face_stage
        items = []
        for p in paths:
            pic = Image.open(p).convert("RGB")
            analysis = stage.analyse(pic)  # type: ignore[union-attr]
            pic = stage.crop(pic, analysis)  # type: ignore[union-attr]
            items.append((pic, scored_keypoints(pic, analysis, stage)))
        prepared[name] = items
        ex.embed_pooled([items[0][0]], [items[0][1]])  # warm-up (exports the graph)
    times: dict[str, list[float]] = {name: [] for name in extractors}
    for k in range(len(paths)):
        for name, ex in extractors.items():
            pic, kps = prepared[name][k]
            t = time.perf_counter()
            ex.embed_pooled([pic], [kps])
            times[name].append(time.perf_counter() - t)
    return {name: round(1000 * float(np.median(t)), 1) for name, t in times.items()}


def main() -> None:
    ap = cv_arguments(__doc__.split("\n")[0], HERE / "clip_window.md")
    ap.add_argument("--timed", type=int, default=30, help="pictures in the latency run")
    ap.add_argument(
        "--all",
        action="store_true",
        help="also pair the shipped input and the window on protocol ALL's headline (needs "
        "both backbones' features of all 13k images: about 55 min on 2 cores uncached)",
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    cv = p1_folds(args.data, args.seed, args.folds)
    cache = FeatureCache()
    interpolated = interpolated_backbone()
    extractors: dict[str, FeatureExtractor] = {}
    for name, (backbone, framing) in VARIANTS.items():
        bb = interpolated if backbone == "interpolated" else load_backbone(backbone)
        extractors[name] = FeatureExtractor(
            bb, cache, face_stage=face_stage(framing), view=PooledRegionView(True)
        )
    rows: dict[str, dict] = {}
    oof: dict[str, np.ndarray] = {}
    for name, ex in extractors.items():
        tv = time.perf_counter()
        Fp, Ft = (
            ex.extract([r.path for r in recs], [r.sha256 for r in recs]).features
            for recs in (cv.pool, cv.test)
        )
        fitted = cross_validate(lambda: make_head("logreg", seed=args.seed), Fp, Ft, cv, args.seed)
        oof[name] = fitted.oof
        rows[name] = {
            **fitted.row,
            "backbone": ex.backbone.name,
            "input_px": ex.backbone.preprocessing.size,
            "tokens": 1 + (ex.backbone.preprocessing.size // PATCH) ** 2,
            "face_stage": ex.face_stage.key,  # type: ignore[union-attr]
            "seconds": round(time.perf_counter() - tv, 1),
        }
        print(name, rows[name]["cv_auc"], rows[name]["test_auc"], flush=True)
    both = pair_with_first(rows, oof, cv.y, args.seed)
    timed = [r.path for r in cv.test[: args.timed]]
    shipped_and_window = {n: extractors[n] for n in list(VARIANTS)[:2]}
    latency = pass_latency(shipped_and_window, timed)
    extra = {"pass_p50_ms": latency, "timed_pictures": len(timed)}
    if args.all:  # paired on protocol ALL's headline subset (ALL's features of both)
        scores, y_all = all_headline(cv.ds, args.seed, shipped_and_window)
        (a, sa), (b, sb) = scores.items()
        extra["all_rff_same_source_test"] = {
            "images": len(y_all),
            "shipped": a,
            "window": b,
            "paired": paired_auc_difference(y_all, sa, sb, seed=args.seed),
        }
    result = cv_result(args, cv, t0, rows, int(both.sum()), **extra)
    write_result(args.out, result, render)


def render(r: dict) -> str:
    lines = [
        "# Fewer CLIP tokens: a 160 px window over the eyes, nose and mouth",
        "",
        provenance(r, "clip_window.py") + " CLIP ViT-B/16 cut after layer 8; the shipped head "
        "(logistic, C by inner CV) on the class token and the patch tokens pooled in the "
        "four region boxes. " + PAIRED_NOTE,
        "",
        "| input | tokens | CV ROC-AUC | CV recall @ 10% FPR | paired Δ out-of-fold "
        "| test ROC-AUC [95% CI] | test recall @ 10% FPR |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in r["variants"].items():
        delta = format_paired(v.get("paired_oof_vs_shipped"))
        lines.append(
            f"| {name} | {v['tokens']} | {cv_cells(v)} | {delta} "
            f"| {test_cell(v)} | {v['test_recall_at_10fpr']:.3f} |"
        )
    lines += [
        "",
        f"One pass, decoded face crop -> pooled features, batch 1, ONNX Runtime, p50 of "
        f"{r['timed_pictures']} pictures timed interleaved:",
        "",
        "| input | pass p50 (ms) |",
        "|---|---|",
        *(f"| {name} | {ms} |" for name, ms in r["pass_p50_ms"].items()),
    ]
    if a := r.get("all_rff_same_source_test"):
        lines += [
            "",
            f"Protocol ALL's headline (rff same-source test, {a['images']} images; the head "
            "fitted on ALL's train split, as `facecheck evaluate`), window minus shipped, "
            f"95% paired bootstrap CI: {format_paired(a['paired'], long=True)}.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
