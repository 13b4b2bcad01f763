"""The evaluation harness: protocol x backbone x head, thresholds from validation only.

For each protocol the head is fitted on the train split, its threshold chosen on the val
split, and each test set scored exactly once. Features come from the cache, so the grid
costs one extraction per backbone over the union of images.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .data import Dataset
from .features import FeatureExtractor
from .imageio import ImageError
from .metrics import binary_metrics, bootstrap_ci, choose_threshold, recall_at_fpr
from .models import make_head
from .perturb import perturb
from .protocols import Protocol

CI_METRICS = ("recall", "precision", "f1", "accuracy", "roc_auc", "pr_auc", "fpr")


@dataclass
class TestResult:
    name: str
    source_biased: bool
    y: np.ndarray
    score: np.ndarray
    at_default: dict[str, float]
    at_val: dict[str, float]
    ci: dict[str, tuple[float, float]]
    recall_at_10fpr: float
    base: str = ""  # the unperturbed test set this one is a perturbed copy of
    perturbation: str | None = None


@dataclass
class ModelResult:
    protocol: str
    backbone: str
    head: str
    tta: bool
    threshold: float
    threshold_rule: str
    val: dict[str, float]
    tests: dict[str, TestResult]
    fit_seconds: float
    dropped: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def label(self) -> str:
        aug = self.extra.get("train_augment")
        return (
            f"{self.backbone}+{self.head}"
            + ("+tta" if self.tta else "")
            + (f"+aug:{aug}" if aug else "")
        )


def extract_all(ds: Dataset, ex: FeatureExtractor) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Features for every record, by content hash, plus the errors of unreadable files."""
    result = ex.extract(ds.paths, ds.hashes, desc=f"features {ex.backbone.name}")
    feats = {h: result.features[i] for i, h in enumerate(result.hashes) if i not in result.errors}
    # "code: message", so reports can tell refusals by the face stage from broken files.
    errors = {str(ds.records[i].path): f"{e.code}: {e}" for i, e in result.errors.items()}
    return feats, errors


def extract_perturbed(
    ds: Dataset, ex: FeatureExtractor, perturbation: str
) -> dict[str, np.ndarray]:
    """Features of each record's perturbed copy, keyed by the *original* content hash.

    The copies are cached under their own hashes, so a rerun perturbs but does not re-extract.
    """
    originals = {r.sha256: r.path for r in ds}
    data = []
    for path in originals.values():
        try:
            data.append(perturb(path, perturbation))
        except ImageError:
            data.append(b"")  # reported as an error by extract(), left out below
    result = ex.extract(data, desc=f"features {ex.backbone.name} {perturbation}")
    return {h: result.features[i] for i, h in enumerate(originals) if i not in result.errors}


def xy(ds: Dataset, feats: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    keep = [r for r in ds.records if r.sha256 in feats]
    if not keep:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), len(ds)
    X = np.stack([feats[r.sha256] for r in keep])
    return X, np.array([r.y for r in keep], dtype=np.int64), len(ds) - len(keep)


def evaluate_protocol(
    protocol: Protocol,
    feats: dict[str, np.ndarray],
    *,
    backbone: str,
    heads: Sequence[str],
    tta: bool = False,
    rule: str = "youden",
    n_boot: int = 1000,
    seed: int = 0,
    cv_folds: int = 0,
    perturbed: dict[str, dict[str, np.ndarray]] | None = None,
    train_augment: tuple[str, dict[str, np.ndarray]] | None = None,
) -> list[ModelResult]:
    """Fit each head on train, choose its threshold on val, score each test set once.

    With ``cv_folds`` > 1, each result also carries the k-fold ROC-AUC over train + val
    (``extra["cv_roc_auc"]`` = (mean, std)). ``perturbed`` maps a perturbation name to
    features of perturbed copies by original hash (protocol P5): every test set is then
    also scored as ``<test set>+<perturbation>``, with the same head and threshold.
    ``train_augment`` = (name, features of augmented copies by original hash) adds one
    augmented copy of every training image, with its label; validation stays clean.
    """
    cv = cross_validate(protocol, feats, heads=heads, k=cv_folds, seed=seed) if cv_folds > 1 else {}
    Xtr, ytr, d_tr = xy(protocol.split.train, feats)
    if train_augment:
        Xa, ya, _ = xy(protocol.split.train, train_augment[1])
        Xtr, ytr = np.vstack([Xtr, Xa]), np.concatenate([ytr, ya])
    Xva, yva, d_va = xy(protocol.split.val, feats)
    tests = {name: (name, None, xy(ds, feats)) for name, ds in protocol.test_sets.items()}
    d_test = sum(dropped for _, _, (_, _, dropped) in tests.values())
    for pert, pfeats in (perturbed or {}).items():
        for name, ds in protocol.test_sets.items():
            tests[f"{name}+{pert}"] = (name, pert, xy(ds, pfeats))
    results = []
    for head_kind in heads:
        t0 = time.perf_counter()
        head = make_head(head_kind, seed=seed).fit(Xtr, ytr)
        fit_s = time.perf_counter() - t0
        s_val = head.predict_proba(Xva)[:, 1]
        thr = choose_threshold(yva, s_val, rule)
        out = {}
        for name, (base, pert, (X, y, _)) in tests.items():
            s = head.predict_proba(X)[:, 1]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[name] = TestResult(
                    name,
                    base in protocol.source_biased,
                    y,
                    s,
                    binary_metrics(y, s, 0.5),
                    binary_metrics(y, s, thr),
                    bootstrap_ci(y, s, thr, n_boot=n_boot, seed=seed, metrics=CI_METRICS),
                    recall_at_fpr(y, s, 0.10),
                    base,
                    pert,
                )
        dropped = d_tr + d_va + d_test
        results.append(
            ModelResult(
                protocol.name,
                backbone,
                head_kind,
                tta,
                thr,
                rule,
                binary_metrics(yva, s_val, thr),
                out,
                fit_s,
                dropped,
                {
                    **({"cv_roc_auc": cv[head_kind][:2], "cv_folds": cv_folds} if cv else {}),
                    **({"train_augment": train_augment[0]} if train_augment else {}),
                },
            )
        )
    return results


def cross_validate(
    protocol: Protocol,
    feats: dict[str, np.ndarray],
    *,
    heads: Sequence[str],
    k: int = 5,
    seed: int = 0,
) -> dict[str, tuple[float, float, list[float]]]:
    """k-fold ROC-AUC (mean, std, folds) per head over train + val, grouped by content hash.

    The test split stays untouched; one split of ~200 images cannot tell 0.77 from 0.80, so
    models are compared on these means, and the test figure is kept for the report.
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    pool = protocol.split.train.subset([*protocol.split.train, *protocol.split.val])
    X, y, _ = xy(pool, feats)
    groups = [r.sha256 for r in pool if r.sha256 in feats]
    folds = list(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(X, y, groups))
    out = {}
    for head_kind in heads:
        aucs = []
        for tr, te in folds:
            head = make_head(head_kind, seed=seed).fit(X[tr], y[tr])
            aucs.append(float(roc_auc_score(y[te], head.predict_proba(X[te])[:, 1])))
        out[head_kind] = (float(np.mean(aucs)), float(np.std(aucs)), aucs)
    return out
