"""Source-bias audit: can the labels be told from things that are not the manipulation?

A detector in this field can score near-perfectly by learning *where an image came from*
(file size, JPEG quality, dimensions, the camera or crawler behind a source) instead of
whether it was edited. This module measures such shortcuts on a test set:

- :func:`file_facts`: per image, bytes, width, height and the JPEG quality its quantisation
  tables imply (libjpeg's scaling of the Annex K tables; None for other formats);
- :func:`shortcut_aucs`: ROC-AUC of each fact alone as a fake-vs-real score, folded so that
  0.5 means "no shortcut" and 1.0 "the fact alone separates the classes";
- :func:`source_probe`: cross-validated ROC-AUC of a linear probe telling two *real* sources
  apart on a backbone's features (1.0 means every figure mixing those sources across classes
  measures the source).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

# JPEG Annex K luminance table (natural order is irrelevant: compared as a multiset of 64).
_LUMA = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.float64,
).ravel()
FACTS = ("bytes", "width", "height", "jpeg_quality")


def _scaled(quality: int) -> np.ndarray:
    """libjpeg's luminance table at ``quality`` (jcparam.c: jpeg_quality_scaling)."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((_LUMA * scale + 50) / 100), 1, 255)


_TABLES = {q: np.sort(_scaled(q)) for q in range(1, 101)}


def jpeg_quality(img: Image.Image) -> int | None:
    """The libjpeg quality whose luminance table is closest to the image's; None if no JPEG."""
    tables = getattr(img, "quantization", None)
    if not tables or 0 not in tables:
        return None
    luma = np.sort(np.asarray(tables[0], dtype=np.float64))
    return min(_TABLES, key=lambda q: float(np.abs(_TABLES[q] - luma).sum()))


@dataclass(frozen=True)
class FileFacts:
    bytes: int
    width: int
    height: int
    jpeg_quality: int | None


def file_facts(source: str | Path | bytes) -> FileFacts:
    """What a file says about its origin, read from its header (no pixels decoded)."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        return FileFacts(len(data), img.width, img.height, jpeg_quality(img))


def _folded_auc(y: np.ndarray, values: np.ndarray) -> float | None:
    ok = ~np.isnan(values)
    if len(np.unique(y[ok])) < 2 or len(np.unique(values[ok])) < 2:
        return 0.5 if ok.any() and len(np.unique(y[ok])) == 2 else None
    auc = roc_auc_score(y[ok], values[ok])
    return float(max(auc, 1 - auc))


def shortcut_aucs(y: Sequence[int], facts: Sequence[FileFacts]) -> dict[str, float | None]:
    """Per fact, the folded ROC-AUC of that fact alone as a fake-vs-real score."""
    y = np.asarray(y)
    out: dict[str, float | None] = {}
    for name in FACTS:
        values = np.array(
            [np.nan if getattr(f, name) is None else float(getattr(f, name)) for f in facts]
        )
        out[name] = _folded_auc(y, values)
    return out


def class_summary(y: Sequence[int], facts: Sequence[FileFacts]) -> dict[str, dict[str, object]]:
    """Per class: median bytes, the sizes seen, the JPEG qualities seen (with counts)."""
    y = np.asarray(y)
    out = {}
    for label, name in ((0, "real"), (1, "fake")):
        fs = [f for f, t in zip(facts, y, strict=True) if t == label]
        if not fs:
            continue
        sizes: dict[str, int] = {}
        quals: dict[str, int] = {}
        for f in fs:
            sizes[f"{f.width}x{f.height}"] = sizes.get(f"{f.width}x{f.height}", 0) + 1
            q = "none" if f.jpeg_quality is None else str(f.jpeg_quality)
            quals[q] = quals.get(q, 0) + 1
        out[name] = {
            "images": len(fs),
            "median_bytes": int(np.median([f.bytes for f in fs])),
            "sizes": dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:3]),
            "jpeg_quality": dict(sorted(quals.items(), key=lambda kv: -kv[1])[:3]),
        }
    return out


def source_probe(F_a: np.ndarray, F_b: np.ndarray, *, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated ROC-AUC of a logistic probe telling feature sets ``a`` and ``b`` apart."""
    X = np.vstack([F_a, F_b])
    y = np.r_[np.zeros(len(F_a)), np.ones(len(F_b))]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    p = cross_val_predict(probe, X, y, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))
