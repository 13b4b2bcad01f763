"""Metrics with fake as the positive class, validation-only thresholds and bootstrap CIs."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    roc_auc_score,
    roc_curve,
)

from facecheck.decision.policy import DEPLOYED_FAKE_RATE
from facecheck.decision.review import (
    safe_div,
)
from facecheck.image.regions import REGIONS

# The order of metrics in every table and CSV.
METRIC_NAMES = ("recall", "precision", "f1", "accuracy", "roc_auc", "pr_auc", "fpr")


def confusion(y: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    """tp/fp/tn/fn with fake (1) as positive."""
    # Counted directly: this runs thousands of times inside the bootstrap.
    y = np.asarray(y, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    tp = int(np.count_nonzero(y & pred))
    fp = int(np.count_nonzero(~y & pred))
    fn = int(np.count_nonzero(y & ~pred))
    return {"tp": tp, "fp": fp, "tn": len(y) - tp - fp - fn, "fn": fn}


def threshold_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Metrics that depend on hard verdicts only."""
    c = confusion(y, pred)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    recall = safe_div(tp, tp + fn)
    precision = safe_div(tp, tp + fp)
    f1 = safe_div(2 * tp, 2 * tp + fp + fn)
    return {
        "recall": recall,
        "precision": precision,
        "f1": f1,
        "accuracy": safe_div(tp + tn, tp + tn + fp + fn),
        "fpr": safe_div(fp, fp + tn),
    }


def ranking_metrics(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Threshold-free metrics; NaN when only one class is present."""
    if len(np.unique(y)) < 2:
        return {"roc_auc": float("nan"), "pr_auc": float("nan")}
    return {
        "roc_auc": float(roc_auc_score(y, score)),
        "pr_auc": float(average_precision_score(y, score)),
    }


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """All report metrics at ``threshold`` (score >= threshold means fake), plus counts."""
    y = np.asarray(y, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    pred = (score >= threshold).astype(np.int64)
    out: dict[str, float] = {}
    out.update(threshold_metrics(y, pred))
    out.update(ranking_metrics(y, score))
    out.update(confusion(y, pred))
    out["n"] = len(y)
    out["n_fake"] = int(y.sum())
    out["threshold"] = float(threshold)
    out["flagged_per_10k"] = flagged_per_10k(out["recall"], out["fpr"])
    return {k: out[k] for k in (*METRIC_NAMES, *[k for k in out if k not in METRIC_NAMES])}


def flagged_per_10k(recall: float, fpr: float, fake_rate: float = DEPLOYED_FAKE_RATE) -> float:
    """Images a person must look at per 10,000 applications when every flag is reviewed."""
    if math.isnan(recall) or math.isnan(fpr):
        return float("nan")
    return 10_000 * (fake_rate * recall + (1 - fake_rate) * fpr)


def recall_at_fpr(y: np.ndarray, score: np.ndarray, max_fpr: float) -> float:
    """Best recall reachable with a false-positive rate at or under ``max_fpr``."""
    if len(np.unique(y)) < 2:
        return float("nan")
    fpr, tpr, _ = roc_curve(y, score)
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def bootstrap_ci(
    y: np.ndarray,
    score: np.ndarray,
    threshold: float,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    metrics: tuple[str, ...] = METRIC_NAMES,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals, resampling fakes and reals separately.

    Resampling within each class keeps both classes in every draw (so AUC is defined) and
    keeps the test prevalence fixed, which is what the figure describes.
    """
    y = np.asarray(y, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) == 0 or len(neg) == 0:
        return {m: (float("nan"), float("nan")) for m in metrics}
    rng = np.random.default_rng(seed)
    draws = {m: [] for m in metrics}
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        yb, sb = y[idx], score[idx]
        values = threshold_metrics(yb, (sb >= threshold).astype(np.int64))
        if "roc_auc" in metrics or "pr_auc" in metrics:
            values.update(ranking_metrics(yb, sb))
        for m in metrics:
            draws[m].append(values[m])
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out = {}
    for m, vals in draws.items():
        arr = np.asarray(vals, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        out[m] = (
            (float(np.percentile(arr, lo)), float(np.percentile(arr, hi)))
            if arr.size
            else (float("nan"), float("nan"))
        )
    return out


def paired_auc_difference(
    y: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """ROC-AUC of ``score_b`` minus that of ``score_a`` on the same images, with a paired
    percentile bootstrap interval (both models scored on each draw, classes resampled
    separately as in :func:`bootstrap_ci`) and the share of draws where b is lower.

    Pairing matters: two models' AUCs on one small test set move together, so the
    difference is far better determined than the overlap of their separate intervals says.
    """
    y = np.asarray(y, dtype=np.int64)
    a, b = np.asarray(score_a, np.float64), np.asarray(score_b, np.float64)
    if not len(y) == len(a) == len(b):
        raise ValueError("paired_auc_difference needs one score per image from each model")
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("paired_auc_difference needs fakes and reals")
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        diffs[i] = roc_auc_score(y[idx], b[idx]) - roc_auc_score(y[idx], a[idx])
    lo, hi = np.percentile(diffs, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return {
        "auc_a": float(roc_auc_score(y, a)),
        "auc_b": float(roc_auc_score(y, b)),
        "difference": float(roc_auc_score(y, b) - roc_auc_score(y, a)),
        "ci_lo": float(lo),
        "ci_hi": float(hi),
        "share_b_lower": float((diffs < 0).mean()),
    }


# -- localisation (P6): which region of an edited face was replaced
def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion k / n (sound at small n and near 0 or 1)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def pattern_name(bits: np.ndarray) -> str:
    """Region bits -> a readable edit, e.g. (1, 1, 0, 0) -> 'left_eye+right_eye'."""
    names = [r for r, b in zip(REGIONS, bits, strict=True) if b]
    return "all four" if len(names) == len(bits) else "+".join(names) or "none"


def localisation_metrics(
    Y: np.ndarray,
    P: np.ndarray,
    y: np.ndarray,
    detected: np.ndarray,
    difficulty: np.ndarray,
) -> dict[str, object]:
    """Protocol P6 on one test set.

    ``Y`` (n, 4): which regions were replaced (all 0 for reals); ``P`` (n, 4): region
    scores; ``y``: 1 for fakes; ``detected``: the image-level detector's verdict at its
    validation threshold; ``difficulty``: easy/mid/hard for fakes. Reports, on test fakes,
    how often the top-scoring region is a replaced one (next to chance: the share of
    replaced regions), per-region ROC-AUC (over all images, and among fakes only), and the
    image-level detector's recall by replaced region, by edit pattern and by difficulty.
    """
    Y, P = np.asarray(Y, np.int64), np.asarray(P, np.float64)
    y, detected = np.asarray(y, np.int64), np.asarray(detected, bool)
    difficulty = np.asarray(difficulty, dtype=object)
    fake = y == 1
    hit = Y[fake][np.arange(fake.sum()), P[fake].argmax(axis=1)] if fake.any() else np.zeros(0)

    def _hits(mask: np.ndarray) -> dict[str, float]:
        k, n = int(hit[mask].sum()), int(mask.sum())
        lo, hi = wilson_interval(k, n)
        return {"n": n, "top_hit": safe_div(k, n), "ci": (lo, hi)}

    def _auc(t: np.ndarray, s: np.ndarray) -> float:
        return float(roc_auc_score(t, s)) if 0 < t.sum() < len(t) else float("nan")

    regions = {}
    for k, name in enumerate(REGIONS):
        replaced = fake & (Y[:, k] == 1)
        regions[name] = {
            "auc_all": _auc(Y[:, k], P[:, k]),
            "auc_fakes": _auc(Y[fake, k], P[fake, k]),
            "n_replaced": int(replaced.sum()),
            "detector_recall": safe_div(float(detected[replaced].sum()), float(replaced.sum())),
        }
    patterns: dict[str, dict[str, float]] = {}
    names = np.array([pattern_name(b) for b in Y[fake]], dtype=object)
    for name in sorted(set(names), key=lambda s: (-int((names == s).sum()), s)):
        m = names == name
        patterns[name] = {
            **_hits(m),
            "detector_recall": float(detected[fake][m].mean()),
        }
    by_difficulty = {}
    for d in ("easy", "mid", "hard"):
        m = difficulty[fake] == d
        if m.any():
            by_difficulty[d] = {**_hits(m), "detector_recall": float(detected[fake][m].mean())}
    return {
        "top_region": _hits(np.ones(fake.sum(), bool)),
        "chance": float(Y[fake].mean()) if fake.any() else float("nan"),
        "mean_auc_all": float(np.nanmean([r["auc_all"] for r in regions.values()])),
        "mean_auc_fakes": float(np.nanmean([r["auc_fakes"] for r in regions.values()])),
        "regions": regions,
        "patterns": patterns,
        "difficulty": by_difficulty,
        "detector_recall": float(detected[fake].mean()) if fake.any() else float("nan"),
    }
