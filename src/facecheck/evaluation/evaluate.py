"""The evaluation harness: protocol x backbone x head, thresholds from validation only.

For each protocol the head is fitted on the train split, its threshold chosen on the val
split, and each test set scored exactly once. Features come from the cache, so the grid
costs one extraction per backbone over the union of images.
"""

from __future__ import annotations

import functools
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from facecheck.backbones.registry import seconds_per_image
from facecheck.decision.policy import choose_threshold
from facecheck.detector.explain import explain
from facecheck.detector.pipeline import Detector
from facecheck.evaluation.data import Dataset, Record, grouped_folds, region_bits, region_targets
from facecheck.evaluation.groups import groups_of
from facecheck.evaluation.metrics import (
    binary_metrics,
    bootstrap_ci,
    localisation_metrics,
    recall_at_fpr,
)
from facecheck.evaluation.protocols import Protocol, p1
from facecheck.features.extract import FeatureExtractor
from facecheck.heads.models import fit_head, make_head
from facecheck.image.decode import ImageError
from facecheck.image.perturb import PERTURB_VERSION, perturb
from facecheck.image.regions import REGIONS

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
    # Each scored image's group labels (evaluation.groups; None: none), for equal treatment.
    groups: list[dict[str, str] | None] | None = None


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


def extraction_estimate(ds: Dataset, ex: FeatureExtractor) -> tuple[int, float]:
    """(images not in the cache yet, about how many seconds extracting them will take)."""
    unique = list(dict.fromkeys(ds.hashes))
    cached = ex.cache.get_many(ex.key, unique) if ex.cache is not None else {}
    todo = len(unique) - len(cached)
    return todo, todo * seconds_per_image(ex.backbone.name, ex.device.type)


def extract_all(ds: Dataset, ex: FeatureExtractor) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Features for every record, by content hash, plus the errors of unreadable files.

    If the uncached images will take more than a minute, says so (with the estimate) first.
    """
    todo, seconds = extraction_estimate(ds, ex)
    if seconds > 60:
        print(
            f"facecheck: {todo} images to extract with {ex.backbone.name} on "
            f"{ex.device.type}, about {seconds / 60:.0f} min (cached and resumable)",
            file=sys.stderr,
            flush=True,
        )
    result = ex.extract(ds.paths, ds.hashes, desc=f"features {ex.backbone.name}")
    feats = {h: result.features[i] for i, h in enumerate(result.hashes) if i not in result.errors}
    # "code: message", so reports can tell refusals by the face stage from broken files.
    errors = {str(ds.records[i].path): f"{e.code}: {e}" for i, e in result.errors.items()}
    return feats, errors


def extract_perturbed(
    ds: Dataset, ex: FeatureExtractor, perturbation: str
) -> dict[str, np.ndarray]:
    """Features of each record's perturbed copy, keyed by the *original* content hash.

    Cached by original hash and chain (the perturbation is seeded by the original's hash),
    so a rerun neither perturbs nor extracts again: a field-augmented training set of ~14k
    copies once cost minutes of perturbing on every run. Copies that fail (no face after
    processing) are not cached and are tried again.
    """
    originals = {r.sha256: r.path for r in ds}
    stage = ex.face_stage.key if ex.face_stage is not None else "stage-off"
    key = f"{ex.key}|{stage}|perturbed:{perturbation}@{PERTURB_VERSION}"
    found = ex.cache.get_many(key, list(originals)) if ex.cache is not None else {}
    todo = [h for h in originals if h not in found]
    data = []
    for h in todo:
        try:
            data.append(perturb(originals[h], perturbation))
        except ImageError:
            data.append(b"")  # reported as an error by extract(), left out below
    result = ex.extract(data, desc=f"features {ex.backbone.name} {perturbation}")
    made = {h: result.features[i] for i, h in enumerate(todo) if i not in result.errors}
    if ex.cache is not None and made:
        ex.cache.put_many(key, made, ex.dtype)
    return {h: found[h] if h in found else made[h] for h in originals if h in found or h in made}


def kept(ds: Dataset, feats: dict[str, np.ndarray]) -> list[Record]:
    """The records that have features (the rows of :func:`xy`, in its order)."""
    return [r for r in ds.records if r.sha256 in feats]


def xy(ds: Dataset, feats: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    keep = kept(ds, feats)
    if not keep:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), len(ds)
    X = np.stack([feats[r.sha256] for r in keep])
    return X, np.array([r.y for r in keep], dtype=np.int64), len(ds) - len(keep)


def sources_of(ds: Dataset, feats: dict[str, np.ndarray]) -> np.ndarray:
    """The source of each row :func:`xy` returns (for rules that hold each source to a rate)."""
    return np.array([r.source for r in kept(ds, feats)])


def validation_rows(
    val: Dataset,
    feats: dict[str, np.ndarray],
    processed: tuple[str, dict[str, np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows a threshold is chosen on: validation's, grouped by source, and with
    ``processed`` = (chain, features of processed copies by original hash) those copies
    too, each group named ``<source>+<chain>``. A per-source rule (``fpr:``) then holds
    every camera's processed photos to the same rate as its clean ones, so the threshold
    does not drift when the stream's photos have been re-saved or resized."""
    X, y, _ = xy(val, feats)
    groups = sources_of(val, feats)
    if processed:
        chain, copies = processed
        Xp, yp, _ = xy(val, copies)
        if len(yp):
            X, y = np.vstack([X, Xp]), np.concatenate([y, yp])
            groups = np.concatenate([groups, [f"{s}+{chain}" for s in sources_of(val, copies)]])
    return X, y, groups


def regions_of(ds: Dataset, feats: dict[str, np.ndarray]) -> np.ndarray:
    """Region bits (NaN unknown) of each row :func:`xy` returns, for heads that learn them."""
    return region_bits(kept(ds, feats))


# A test set's rows: (the clean set it comes from, its processing chain or None, X, y, the
# group labels of its rows or None).
_Rows = tuple[str, str | None, np.ndarray, np.ndarray, list | None]


def _test_rows(
    protocol: Protocol,
    feats: dict[str, np.ndarray],
    perturbed: dict[str, dict[str, np.ndarray]] | None,
) -> tuple[dict[str, _Rows], int]:
    """Every test set's rows (and each processed copy's, as ``<set>+<chain>``) and how
    many test images had no features."""
    tests: dict[str, _Rows] = {}
    dropped = 0
    for name, ds in protocol.test_sets.items():
        X, y, d = xy(ds, feats)
        labels = [groups_of(r) for r in kept(ds, feats)]
        tests[name] = (name, None, X, y, labels if any(labels) else None)
        dropped += d
    for pert, pfeats in (perturbed or {}).items():
        for name, ds in protocol.test_sets.items():
            X, y, _ = xy(ds, pfeats)
            tests[f"{name}+{pert}"] = (name, pert, X, y, None)
    return tests, dropped


def _positive(head, X: np.ndarray) -> np.ndarray:
    return head.predict_proba(X)[:, 1]


def _score_tests(
    protocol: Protocol,
    tests: dict[str, _Rows],
    score: Callable[[np.ndarray], np.ndarray],
    thr: float,
    *,
    n_boot: int,
    seed: int,
) -> dict[str, TestResult]:
    """Each test set scored once at threshold ``thr`` (and at 0.5), with bootstrap CIs."""
    out = {}
    for name, (base, pert, X, y, labels) in tests.items():
        s = score(X) if len(X) else np.zeros(0)
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
                labels,
            )
    return out


def evaluate_bundle(
    det: Detector,
    protocol: Protocol,
    feats: dict[str, np.ndarray],
    *,
    trained_on: Dataset,
    n_boot: int = 1000,
    seed: int = 0,
    perturbed: dict[str, dict[str, np.ndarray]] | None = None,
) -> ModelResult:
    """A saved detector, as shipped (its head, its threshold), on ``protocol``'s test sets.

    ``trained_on``: the images the detector was fitted and thresholded on (its train and
    validation splits, rebuilt); a test image among them (by content hash) is refused, so
    no figure here is a training figure."""
    seen = {r.sha256 for r in trained_on}
    leaked = {r.sha256 for ds in protocol.test_sets.values() for r in ds} & seen
    if leaked:
        raise ValueError(
            f"{protocol.name}: {len(leaked)} test images were in the detector's training or "
            "validation data"
        )
    tests, dropped = _test_rows(protocol, feats, perturbed)
    out = _score_tests(protocol, tests, det.score_features, det.threshold, n_boot=n_boot, seed=seed)
    val = dict(det.metadata.get("metrics_val") or {})
    return ModelResult(
        protocol.name,
        det.version,
        "as-saved",
        det.tta,
        det.threshold,
        det.threshold_rule,
        val,
        out,
        0.0,
        dropped,
        {"bundle": True},
    )


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
    augment_validation: bool = False,
    head_params: dict[str, object] | None = None,
) -> list[ModelResult]:
    """Fit each head on train, choose its threshold on val, score each test set once.

    With ``cv_folds`` > 1, each result also carries the k-fold ROC-AUC over train + val
    (``extra["cv_roc_auc"]`` = (mean, std)). ``perturbed`` maps a perturbation name to
    features of perturbed copies by original hash (protocol P5): every test set is then
    also scored as ``<test set>+<perturbation>``, with the same head and threshold.
    ``train_augment`` = (name, features of augmented copies by original hash) adds one
    augmented copy of every training image, with its label; validation stays clean unless
    ``augment_validation``: then the copies of validation images (where the mapping has
    them) join the threshold choice as groups of their own (see :func:`validation_rows`).
    ``head_params`` go to every head (e.g. a token head's ``dim``).
    """
    params = {"seed": seed, **(head_params or {})}
    cv = (
        cross_validate(protocol, feats, heads=heads, k=cv_folds, seed=seed, head_params=head_params)
        if cv_folds > 1
        else {}
    )
    Xtr, ytr, d_tr = xy(protocol.split.train, feats)
    Rtr = regions_of(protocol.split.train, feats)
    if train_augment:
        Xa, ya, _ = xy(protocol.split.train, train_augment[1])
        Xtr, ytr = np.vstack([Xtr, Xa]), np.concatenate([ytr, ya])
        Rtr = np.vstack([Rtr, regions_of(protocol.split.train, train_augment[1])])
    Xva, yva, d_va = xy(protocol.split.val, feats)
    Xth, yth, gth = validation_rows(
        protocol.split.val, feats, train_augment if augment_validation else None
    )
    tests, d_test = _test_rows(protocol, feats, perturbed)
    results = []
    for head_kind in heads:
        t0 = time.perf_counter()
        head = fit_head(make_head(head_kind, **params), Xtr, ytr, Rtr)
        fit_s = time.perf_counter() - t0
        s_val = head.predict_proba(Xva)[:, 1]
        thr = choose_threshold(yth, head.predict_proba(Xth)[:, 1], rule, groups=gth)
        out = _score_tests(
            protocol, tests, functools.partial(_positive, head), thr, n_boot=n_boot, seed=seed
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
                    **({"augment_validation": True} if augment_validation else {}),
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
    head_params: dict[str, object] | None = None,
) -> dict[str, tuple[float, float, list[float]]]:
    """k-fold ROC-AUC (mean, std, folds) per head over train + val, grouped by content hash.

    The test split stays untouched; one split of ~200 images cannot tell 0.77 from 0.80, so
    models are compared on these means, and the test figure is kept for the report.
    """
    from sklearn.metrics import roc_auc_score

    pool = protocol.split.train.subset([*protocol.split.train, *protocol.split.val])
    X, y, _ = xy(pool, feats)
    R = regions_of(pool, feats)
    folds = grouped_folds(kept(pool, feats), y, k, seed)
    out = {}
    for head_kind in heads:
        aucs = []
        for tr, te in folds:
            head = fit_head(
                make_head(head_kind, **{"seed": seed, **(head_params or {})}), X[tr], y[tr], R[tr]
            )
            aucs.append(float(roc_auc_score(y[te], head.predict_proba(X[te])[:, 1])))
        out[head_kind] = (float(np.mean(aucs)), float(np.std(aucs)), aucs)
    return out


@dataclass
class LocalisationResult:
    """Protocol P6 for one backbone + head: region scores and heatmaps on P1's test split."""

    backbone: str
    head: str
    threshold: float
    records: list[Record]  # the test images with region labels (rff reals and fakes)
    Y: np.ndarray  # (n, 4) replaced regions
    P: np.ndarray  # (n, 4) region scores
    H: np.ndarray  # (n, 4) mean heatmap inside each region's box (NaN: no heatmap)
    score: np.ndarray  # image-level P(fake)
    metrics: dict[str, object]  # by region scores
    heat_metrics: dict[str, object]  # the same, ranking regions by the heatmap instead
    detector: Detector  # fitted on P1's train split, threshold from its val split
    region_train: dict[str, int] = field(default_factory=dict)


def evaluate_localisation(
    ds: Dataset,
    ex: FeatureExtractor,
    feats: dict[str, np.ndarray],
    *,
    head: str = "logreg",
    rule: str = "youden",
    seed: int = 0,
    progress: bool = False,
    region_view: str = "auto",
) -> LocalisationResult:
    """P6 on P1's split: the image head and region scores are fitted on train, the image
    threshold chosen on val, and the test split's rff images scored once."""

    proto = p1(ds, seed)
    det = Detector(
        ex.backbone.name,
        head,
        cache=ex.cache,
        face_stage=ex.face_stage or "off",
        region_view=region_view,
    )
    det._extractor = ex  # the backbone is loaded already
    Xtr, ytr, _ = xy(proto.split.train, feats)
    Xva, yva, _ = xy(proto.split.val, feats)
    det.fit_features(Xtr, ytr, regions_of(proto.split.train, feats))
    det.set_threshold_from(
        Xva, yva, rule=rule, features=True, groups=sources_of(proto.split.val, feats)
    )

    def labelled(split: Dataset) -> tuple[list[Record], np.ndarray]:
        Y, known = region_targets(split.records)
        keep = [i for i, r in enumerate(split.records) if known[i] and r.sha256 in feats]
        return [split.records[i] for i in keep], Y[keep]

    train, Ytr = labelled(proto.split.train)
    Ftr = det.region_features([r.path for r in train], [r.sha256 for r in train])
    ok = ~np.isnan(Ftr).any(axis=1)
    det.fit_regions(Ftr[ok], Ytr[ok])
    region_train = {"images": int(ok.sum()), "fakes": int(Ytr[ok].any(axis=1).sum())}
    test, Y = labelled(proto.split.test)
    Fte = det.region_features([r.path for r in test], [r.sha256 for r in test])
    ok = ~np.isnan(Fte).any(axis=1)
    test, Y, Fte = [r for r, k in zip(test, ok, strict=True) if k], Y[ok], Fte[ok]
    P = det.regions.predict_proba(Fte)  # type: ignore[union-attr]
    score = det.score_features(np.stack([feats[r.sha256] for r in test]))
    H = np.full(P.shape, np.nan)
    for i, r in enumerate(tqdm(test, desc="P6 heatmaps", disable=not progress, leave=False)):
        heat = explain(det, r.path).region_heat
        if heat:
            H[i] = [heat[k] for k in REGIONS]
    y = np.array([r.y for r in test])
    detected = score >= det.threshold
    difficulty = np.array([r.difficulty or "" for r in test], dtype=object)
    return LocalisationResult(
        ex.backbone.name,
        head,
        det.threshold,
        test,
        Y,
        P,
        H,
        score,
        localisation_metrics(Y, P, y, detected, difficulty),
        localisation_metrics(Y, np.nan_to_num(H, nan=0.0), y, detected, difficulty),
        det,
        region_train,
    )
