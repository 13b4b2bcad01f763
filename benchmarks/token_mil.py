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
scores). Rows: the shipped logistic head on the pooled features (reference), the
``regionmil`` head (region weight 1) on the same features, the token heads, and the mean of
two heads' logits (a fixed rule, nothing tuned).
Compared by 5-fold CV over P1's train + val (grouped by content hash, seeded), each row paired
with the reference on the same out-of-fold scores, then P1's test split once (95% bootstrap
CI).

The tokens (float16, ~0.6 GB for P1's 2,041 images) are cached in
``$FACECHECK_CACHE/tokens/``; extracting them costs about 5 minutes on 2 CPU cores (311 s
at commit 33981bd).
Writes benchmarks/token_mil.md and .json.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.special import logit
from torch import nn
from tqdm import tqdm

from clip_p1 import (
    PAIRED_NOTE,
    cross_validate,
    cv_arguments,
    cv_figures,
    cv_result,
    format_paired,
    p1_folds,
    pair_with_first,
    provenance,
    test_cell,
    write_result,
)
from facecheck.faces import FaceAnalysis, FaceStage, scored_keypoints
from facecheck.features import FeatureCache, FeatureExtractor, load_backbone
from facecheck.imageio import load_image
from facecheck.localise import region_bits
from facecheck.models import RegionMILHead, make_head
from facecheck.regions import REGIONS, VIEW_VERSION, PooledRegionView

HERE = Path(__file__).resolve().parent
BACKBONE = "clip_vit_b16_l8"
REFERENCE = "logistic · class token + pooled regions (shipped recipe)"
MIL = "regionmil w=1 · class token + pooled regions"
TOKENS = "token attention"
TOKENS_BITS = "token attention + region bits"
FUSIONS = [(REFERENCE, TOKENS), (REFERENCE, TOKENS_BITS), (MIL, TOKENS_BITS)]


def token_file(cache: FeatureCache, ex: FeatureExtractor) -> Path:
    b, stage = ex.backbone, ex.face_stage
    name = f"{b.name}-{b.weights_id}-{stage.key}-v{VIEW_VERSION}.npz"  # type: ignore[union-attr]
    return cache.directory / "tokens" / name


def tokens(ex: FeatureExtractor, records: list, cache: FeatureCache) -> dict[str, np.ndarray]:
    """Class token, patch tokens and region box weights of each record, by content hash
    (NaN rows where the face stage leaves the picture out), cached in one .npz."""
    path = token_file(cache, ex)
    have: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path) as z:
            have = {k: z[k] for k in z.files}
    known = set(have.get("sha256", np.array([], str)).tolist())
    todo = [r for r in records if r.sha256 not in known]
    if todo:
        stage = ex.face_stage
        analyses = cache.get_many(stage.key, [r.sha256 for r in todo])  # type: ignore[union-attr]
        view = PooledRegionView(True)
        rows: dict[str, list] = {"sha256": [], "cls": [], "patches": [], "weights": []}
        batch: list[tuple[str, Image.Image, dict | None]] = []

        def flush() -> None:
            pooled, fmap = ex.embed_pooled([b[1] for b in batch], [b[2] for b in batch])
            d, h, w = fmap.shape[1:]
            for (sha, pic, kps), p, m in zip(batch, pooled, fmap, strict=True):
                rows["sha256"].append(sha)
                rows["cls"].append(p[:d].astype(np.float16))
                rows["patches"].append(m.reshape(d, h * w).T.astype(np.float16))
                rows["weights"].append(view.weights(pic, kps, (h, w)).reshape(len(REGIONS), -1))
            batch.clear()

        for r in tqdm(todo, desc="CLIP tokens", unit="img"):
            v = analyses.get(r.sha256)
            pic = load_image(r.path).image
            analysis = FaceAnalysis.from_vector(v) if v is not None else stage.analyse(pic)  # type: ignore[union-attr]
            if not analysis.scorable:
                rows["sha256"].append(r.sha256)
                rows["cls"].append(np.full(768, np.nan, np.float16))
                rows["patches"].append(np.full((196, 768), np.nan, np.float16))
                rows["weights"].append(np.full((len(REGIONS), 196), np.nan, np.float32))
                continue
            pic = stage.crop(pic, analysis)  # type: ignore[union-attr]
            batch.append((r.sha256, pic, scored_keypoints(pic, analysis, stage)))
            if len(batch) == 8:
                flush()
        if batch:
            flush()
        new = {k: np.stack(v) for k, v in rows.items()}
        have = new if not have else {k: np.concatenate([have[k], new[k]]) for k in new}
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **have)
    index = {h: i for i, h in enumerate(have["sha256"].tolist())}
    at = np.array([index[r.sha256] for r in records])
    return {k: have[k][at] for k in ("cls", "patches", "weights")}


class TokenAttention(nn.Module):
    """Gated attention pooling of projected patch tokens, plus the class token."""

    def __init__(self, dim: int = 768, hidden: int = 64, dropout: float = 0.2):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout))
        self.attend_v = nn.Linear(hidden, hidden)
        self.attend_u = nn.Linear(hidden, hidden)
        self.attend_w = nn.Linear(hidden, 1)
        self.image = nn.Linear(hidden, 1)
        self.cls = nn.Linear(dim, 1)
        self.region = nn.Linear(hidden, 1)

    def forward(
        self, patches: torch.Tensor, cls: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.project(patches)  # (n, tokens, hidden)
        a = self.attend_w(torch.tanh(self.attend_v(h)) * torch.sigmoid(self.attend_u(h)))
        pooled = (torch.softmax(a, dim=1) * h).sum(1)
        image = self.image(pooled)[:, 0] + self.cls(cls)[:, 0]
        regions = self.region(torch.einsum("nrt,nth->nrh", weights, h))[..., 0]
        return image, regions


class TokenHead:
    """Fit/score wrapper (the benchmark's ``cross_validate`` protocol) over
    :class:`TokenAttention`. ``X`` rows index into the token arrays given at construction."""

    def __init__(self, data: dict[str, np.ndarray], region_weight: float, epochs: int, seed: int):
        self.data, self.region_weight, self.epochs, self.seed = data, region_weight, epochs, seed

    def _batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = (torch.from_numpy(self.data["patches"][idx]).float() - self.mu) / self.sd
        c = (torch.from_numpy(self.data["cls"][idx]).float() - self.mu_c) / self.sd_c
        return p, c, torch.from_numpy(self.data["weights"][idx]).float()

    def fit(self, X: np.ndarray, y: np.ndarray, regions: np.ndarray | None = None) -> TokenHead:
        idx = X[:, 0].astype(int)
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        sample = self.data["patches"][idx[rng.permutation(len(idx))[:256]]].astype(np.float32)
        self.mu = torch.from_numpy(sample.reshape(-1, sample.shape[-1]).mean(0))
        self.sd = torch.from_numpy(sample.reshape(-1, sample.shape[-1]).std(0) + 1e-3)
        c = self.data["cls"][idx].astype(np.float32)
        self.mu_c, self.sd_c = torch.from_numpy(c.mean(0)), torch.from_numpy(c.std(0) + 1e-3)
        self.net = TokenAttention()
        opt = torch.optim.AdamW(self.net.parameters(), lr=1e-3, weight_decay=1e-2)
        pos_weight = torch.tensor((y == 0).sum() / max((y == 1).sum(), 1), dtype=torch.float32)
        R = np.full((len(y), len(REGIONS)), np.nan) if regions is None else regions
        self.net.train()
        for _ in range(self.epochs):
            for b in np.array_split(rng.permutation(len(idx)), max(1, len(idx) // 64)):
                p, cl, w = self._batch(idx[b])
                image, reg = self.net(p, cl, w)
                t = torch.from_numpy(y[b]).float()
                loss = F.binary_cross_entropy_with_logits(image, t, pos_weight=pos_weight)
                r = torch.from_numpy(R[b]).float()
                known = ~torch.isnan(r)
                if self.region_weight and known.any():
                    loss = loss + self.region_weight * F.binary_cross_entropy_with_logits(
                        reg[known], r[known]
                    )
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.net.eval()
        return self

    @torch.inference_mode()
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        idx = X[:, 0].astype(int)
        out = []
        for b in np.array_split(np.arange(len(idx)), max(1, len(idx) // 128)):
            image, _ = self.net(*self._batch(idx[b]))
            out.append(torch.sigmoid(image).numpy())
        p = np.concatenate(out)
        return np.column_stack([1 - p, p])


def main() -> None:
    ap = cv_arguments(__doc__.split("\n")[0], HERE / "token_mil.md")
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    t0 = time.perf_counter()
    cv = p1_folds(args.data, args.seed, args.folds)
    cache = FeatureCache()
    ex = FeatureExtractor(
        load_backbone(BACKBONE), cache, face_stage=FaceStage(), view=PooledRegionView(True)
    )
    Fp, Ft = (
        ex.extract([r.path for r in recs], [r.sha256 for r in recs]).features
        for recs in (cv.pool, cv.test)
    )
    data = tokens(ex, [*cv.pool, *cv.test], cache)
    n = len(cv.pool)
    bad = np.isnan(data["cls"].astype(np.float32)).any(axis=1)
    # A token head's "features" are row indices into ``data`` (NaN where unscorable).
    Ip = np.where(bad[:n], np.nan, np.arange(n, dtype=float))[:, None]
    It = np.where(bad[n:], np.nan, np.arange(n, n + len(cv.test), dtype=float))[:, None]
    Rp = region_bits(cv.pool)
    print(f"tokens ready, {time.perf_counter() - t0:.0f} s", flush=True)

    rows: dict[str, dict] = {}
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # out-of-fold pool, test
    heads = {  # name -> (head factory, pool and test inputs, learns the region bits)
        REFERENCE: (lambda: make_head("logreg", seed=args.seed), Fp, Ft, False),
        MIL: (lambda: RegionMILHead(region_weight=1.0, seed=args.seed), Fp, Ft, True),
        TOKENS: (lambda: TokenHead(data, 0.0, args.epochs, args.seed), Ip, It, False),
        TOKENS_BITS: (lambda: TokenHead(data, 1.0, args.epochs, args.seed), Ip, It, True),
    }
    for name, (make, P, T, bits) in heads.items():
        tv = time.perf_counter()
        fitted = cross_validate(make, P, T, cv, args.seed, Rp if bits else None)
        rows[name] = {**fitted.row, "seconds": round(time.perf_counter() - tv, 1)}
        scores[name] = (fitted.oof, fitted.test)
        print(name, rows[name]["cv_auc"], rows[name]["test_auc"], flush=True)
    # Fixed-rule fusion: the mean of two heads' logits (nothing fitted on top).
    for a, b in FUSIONS:
        fused = f"mean logit: {a} + {b}"
        oof, test = (
            (logit(np.clip(sa, 1e-6, 1 - 1e-6)) + logit(np.clip(sb, 1e-6, 1 - 1e-6))) / 2
            for sa, sb in zip(scores[a], scores[b], strict=True)
        )
        rows[fused] = cv_figures(oof, test, cv, args.seed)
        scores[fused] = (oof, test)
        print(fused, rows[fused]["cv_auc"], rows[fused]["test_auc"], flush=True)
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
            f"| {name} | {v['cv_auc'][0]:.3f} ± {v['cv_auc'][1]:.3f} "
            f"| {v['cv_recall_at_10fpr'][0]:.3f} ± {v['cv_recall_at_10fpr'][1]:.3f} "
            f"| {format_paired(v.get('paired_oof_vs_shipped'))} "
            f"| {test_cell(v)} | {v['test_recall_at_10fpr']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
