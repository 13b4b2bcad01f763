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


def run_audit(
    protocols: Sequence,
    feats: dict[str, np.ndarray],
    *,
    seed: int = 0,
    max_per_source: int = 1000,
) -> dict[str, object]:
    """The audit of an evaluation run: shortcut AUCs of file facts on every test set, and a
    probe telling the real sources apart on the first backbone's features."""
    facts: dict[Path, FileFacts] = {}

    def of(records) -> list[FileFacts]:
        for r in records:
            if r.path not in facts:
                facts[r.path] = file_facts(r.path)
        return [facts[r.path] for r in records]

    tests = {}
    for p in protocols:
        for name, ds in p.test_sets.items():
            recs = ds.records
            f = of(recs)
            y = [r.y for r in recs]
            tests[f"{p.name}/{name}"] = {
                "source_biased": name in p.source_biased,
                "shortcut_auc": shortcut_aucs(y, f),
                "classes": class_summary(y, f),
            }
    reals: dict[str, list[np.ndarray]] = {}
    seen: set[str] = set()
    for p in protocols:
        for part in (p.split.train, p.split.val, p.split.test, *p.test_sets.values()):
            for r in part:
                if r.label == "real" and r.sha256 in feats and r.sha256 not in seen:
                    seen.add(r.sha256)
                    reals.setdefault(r.source, []).append(feats[r.sha256])
    rng = np.random.default_rng(seed)
    probes = {}
    names = sorted(s for s, v in reals.items() if len(v) >= 20)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            A, B = (np.stack(reals[s]) for s in (a, b))
            A = A[rng.permutation(len(A))[:max_per_source]]
            B = B[rng.permutation(len(B))[:max_per_source]]
            probes[f"{a} vs {b}"] = {
                "roc_auc": source_probe(A, B, seed=seed),
                "n": [len(A), len(B)],
            }
    return {"tests": tests, "real_source_probe": probes}
