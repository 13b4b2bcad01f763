"""Attention over CLIP's patch tokens (issue 9): a multiple-instance head on all 196 tokens.

    python benchmarks/token_mil.py [--data ../shared/data] [--seed 0] [--folds 5] [--epochs 30]

The shipped head reads layer 8's class token and the patch tokens *averaged* inside the four
region boxes (5 x 768 numbers). A pasted eye or mouth leaves its seam in a few of the 196
tokens, and a box average dilutes them with the untouched ones around. Here a small network
reads every token of the same pass (CLIP ViT-B/16 cut after layer 8, the shipped face crops):

- each token standardised (mean and sd per channel over 256 of the training images) and
  projected to 64 channels (GELU, dropout);
- gated attention pooling (Ilse, Tomczak & Welling 2018): one weight per token, softmax over
  the 196, so the pooled vector can be one token's or a region's;
- the image logit is a linear map of the pooled vector plus a linear map of the class token;
- ``+ region bits``: also each region's logit from the projected tokens averaged with the
  region's box weights (as the shipped pooling), taught the file names' region bits where
  known (binary cross-entropy, weight 1): the bits tell the projection where seams are.

Trained on the class-weighted binary cross-entropy with AdamW (lr 1e-3, weight decay 1e-2,
batch 64) for a fixed number of epochs (no early stopping: nothing is fitted on the fold it
scores): the library's :class:`facecheck.heads.models.TokenMILHead` with ``fuse=False``. Rows: the
shipped logistic head on the pooled features (reference), the ``regionmil`` head (region
weight 1) on the same features, the token heads, and the mean of two heads' logits (a fixed
rule, nothing tuned). The fusion of regionmil with the token attention (region bits) is
what ``TokenMILHead`` itself computes (``--head tokenmil``); ``in the boxes``: the attention
reads only the cells under the four region boxes (``attend="boxes"``), not hair, background
or framing.
Compared by 5-fold CV over P1's train + val (grouped by content hash, seeded), each row paired
with the reference on the same out-of-fold scores, then P1's test split once (95% bootstrap
CI).

The token rows (:class:`facecheck.features.views.TokenView`, float16, ~0.6 GB for P1's 2,041
images) are kept in the feature cache; extracting them costs about 5 minutes on 2 CPU cores.
Writes benchmarks/token_mil.md and .json.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from clip_p1 import (
    PAIRED_NOTE,
    add_fusions,
    cv_arguments,
    cv_cells,
    cv_result,
    format_paired,
    p1_folds,
    p1_rows,
    pair_with_first,
    provenance,
    run_heads,
    test_cell,
    write_result,
)
from facecheck.backbones.registry import load_backbone
from facecheck.detector.pipeline import head_view
from facecheck.evaluation.data import region_bits
from facecheck.features.cache import FeatureCache
from facecheck.features.extract import FeatureExtractor
from facecheck.heads.models import RegionMILHead, TokenMILHead, make_head
from facecheck.image.faces import FaceStage

HERE = Path(__file__).resolve().parent
BACKBONE = "clip_vit_b16_l8"
REFERENCE = "logistic · class token + pooled regions (shipped recipe)"
MIL = "regionmil w=1 · class token + pooled regions"
TOKENS = "token attention"
TOKENS_BITS = "token attention + region bits"
BOXES_BITS = "token attention in the boxes + region bits"
FUSIONS = [
    (REFERENCE, TOKENS),
    (REFERENCE, TOKENS_BITS),
    (MIL, TOKENS_BITS),
    (MIL, BOXES_BITS),
]


def token_head(
    region_weight: float, args, attend: str = "all", seed: int | None = None
) -> TokenMILHead:
    """The library's token attention alone (``fuse=False``: no region-MIL logit), trained
    with ``seed`` (default: the run's)."""
    return TokenMILHead(
        region_weight=region_weight,
        epochs=args.epochs,
        fuse=False,
        attend=attend,
        seed=args.seed if seed is None else seed,
    )


def main() -> None:
    ap = cv_arguments(__doc__.split("\n")[0], HERE / "token_mil.md")
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    t0 = time.perf_counter()
    cv = p1_folds(args.data, args.seed, args.folds)
    cache, bb = FeatureCache(), load_backbone(BACKBONE)

    def rows_of(view) -> tuple[np.ndarray, np.ndarray]:
        return p1_rows(cv, FeatureExtractor(bb, cache, face_stage=FaceStage(), view=view))

    pooled = rows_of(head_view(bb, "image+regions"))
    tokens = rows_of(head_view(bb, "tokens"))  # float16, the library's token rows
    Rp = region_bits(cv.pool)
    print(f"tokens ready, {time.perf_counter() - t0:.0f} s", flush=True)

    heads = {  # name -> (head factory, pool and test rows, learns the region bits)
        REFERENCE: (lambda: make_head("logreg", seed=args.seed), pooled, False),
        MIL: (lambda: RegionMILHead(region_weight=1.0, seed=args.seed), pooled, True),
        TOKENS: (lambda: token_head(0.0, args), tokens, False),
        TOKENS_BITS: (lambda: token_head(1.0, args), tokens, True),
        BOXES_BITS: (lambda: token_head(1.0, args, "boxes"), tokens, True),
    }
    rows, scores = run_heads(heads, cv, args.seed, Rp)
    # Fixed-rule fusion: the mean of two heads' logits (nothing fitted on top).
    add_fusions({f"mean logit: {a} + {b}": [a, b] for a, b in FUSIONS}, rows, scores, cv, args.seed)
    both = pair_with_first(rows, {k: v[0] for k, v in scores.items()}, cv.y, args.seed)
    result = cv_result(args, cv, t0, rows, int(both.sum()), epochs=args.epochs)
    write_result(args.out, result, render)


def render(r: dict) -> str:
    lines = [
        "# Attention over CLIP's patch tokens (issue 9)",
        "",
        provenance(r, "token_mil.py")
        + f" CLIP ViT-B/16 cut after layer 8, the shipped face crops; token heads trained "
        f"{r['epochs']} epochs. " + PAIRED_NOTE,
        "",
        "| head | CV ROC-AUC | CV recall @ 10% FPR | paired Δ out-of-fold "
        "| test ROC-AUC [95% CI] | test recall @ 10% FPR |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in r["variants"].items():
        lines.append(
            f"| {name} | {cv_cells(v)} "
            f""
            f"| {format_paired(v.get('paired_oof_vs_shipped'))} "
            f"| {test_cell(v)} | {v['test_recall_at_10fpr']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
