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
from .features import FeatureCache, FeatureExtractor, load_backbone
from .metrics import binary_metrics, bootstrap_ci, choose_threshold, recall_at_fpr
from .models import make_head
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
        return f"{self.backbone}+{self.head}" + ("+tta" if self.tta else "")


def extract_all(
    ds: Dataset,
    backbone: str,
    *,
    cache: FeatureCache,
    tta: bool = False,
    batch_size: int = 8,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Features for every record, by content hash, plus the errors of unreadable files."""
    ex = FeatureExtractor(
        load_backbone(backbone), cache, batch_size=batch_size, tta=tta, progress=progress
    )
    result = ex.extract(ds.paths, ds.hashes, desc=f"features {ex.backbone.name}")
    feats = {h: result.features[i] for i, h in enumerate(result.hashes) if i not in result.errors}
    errors = {str(ds.records[i].path): str(e) for i, e in result.errors.items()}
    return feats, errors


def _xy(ds: Dataset, feats: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
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
) -> list[ModelResult]:
    """Fit each head on train, choose its threshold on val, score each test set once."""
    Xtr, ytr, d_tr = _xy(protocol.split.train, feats)
    Xva, yva, d_va = _xy(protocol.split.val, feats)
    tests = {name: _xy(ds, feats) for name, ds in protocol.test_sets.items()}
    results = []
    for head_kind in heads:
        params = {"seed": seed} if head_kind == "mlp" else {}
        t0 = time.perf_counter()
        head = make_head(head_kind, **params).fit(Xtr, ytr)
        fit_s = time.perf_counter() - t0
        s_val = head.predict_proba(Xva)[:, 1]
        thr = choose_threshold(yva, s_val, rule)
        out = {}
        for name, (X, y, _) in tests.items():
            s = head.predict_proba(X)[:, 1]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[name] = TestResult(
                    name,
                    name in protocol.source_biased,
                    y,
                    s,
                    binary_metrics(y, s, 0.5),
                    binary_metrics(y, s, thr),
                    bootstrap_ci(y, s, thr, n_boot=n_boot, seed=seed, metrics=CI_METRICS),
                    recall_at_fpr(y, s, 0.10),
                )
        dropped = d_tr + d_va + sum(d for _, _, d in tests.values())
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
            )
        )
    return results
