"""Imbalance strategies: the class balance each one produces, and the focal loss value."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facecheck.heads.imbalance import STANDARD, FocalLoss, Imbalance
from facecheck.heads.models import LogisticHead, MLPHead


def _rows(n_real: int = 864, n_fake: int = 72, d: int = 8, seed: int = 0):
    """The thesis's P2 training counts: 864 reals, 72 fakes."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_real + n_fake, d)).astype(np.float32)
    y = np.r_[np.zeros(n_real, int), np.ones(n_fake, int)]
    X[y == 1] += 1.0
    return X, y


@pytest.mark.parametrize(
    ("name", "n_real", "n_fake"),
    [
        ("none", 864, 72),
        ("class_weight", 864, 72),
        ("focal", 864, 72),
        ("under", 72, 72),
        ("smote", 864, 864),
        # The thesis's section 4.2 arithmetic: SMOTE(0.4) -> 345 fakes, under(0.5) -> 690 reals.
        ("smote0.4+under0.5", 690, 345),
        # SMOTE(0.1) -> 86 fakes, under(0.5) -> 172 reals.
        ("smote0.1+under0.5", 172, 86),
        ("under0.5", 144, 72),
        # Ratios the data already reach are no-ops, not errors.
        ("smote+under0.5", 864, 864),
        ("smote0.05", 864, 72),
    ],
)
def test_resampling_counts(name, n_real, n_fake):
    X, y = _rows()
    Xr, yr = Imbalance.parse(name).resample(X, y, seed=0)
    assert (int((yr == 0).sum()), int((yr == 1).sum())) == (n_real, n_fake)
    assert Xr.shape == (n_real + n_fake, X.shape[1]) and Xr.dtype == X.dtype
    # Real rows survive undersampling unchanged (a subset), and no fake row is dropped.
    real_rows = {r.tobytes() for r in X[y == 0]}
    assert all(r.tobytes() in real_rows for r in Xr[yr == 0])
    fake_rows = {r.tobytes() for r in Xr[yr == 1]}
    assert all(r.tobytes() in fake_rows for r in X[y == 1])


def test_smote_on_pixels_keeps_image_shape():
    """SMOTE on raw pixels (the thesis's use) synthesises whole images of the same shape."""
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(40, 3, 8, 8)).astype(np.uint8)
    y = np.r_[np.zeros(34, int), np.ones(6, int)]
    Xr, yr = Imbalance.parse("smote").resample(imgs, y, seed=0)
    assert Xr.shape == (68, 3, 8, 8) and Xr.dtype == np.uint8 and int(yr.sum()) == 34


def test_balanced_batches_draw_both_classes_equally():
    y = np.r_[np.zeros(900, int), np.ones(100, int)]
    gen = torch.Generator().manual_seed(0)
    drawn = torch.cat(Imbalance.parse("balanced_batches").batches(y, 64, gen)).numpy()
    assert len(drawn) == len(y)
    assert 0.45 < y[drawn].mean() < 0.55
    plain = torch.cat(Imbalance.parse("none").batches(y, 64, gen)).numpy()
    assert sorted(plain) == list(range(len(y)))  # a permutation: each row once


def test_class_weights():
    y = np.r_[np.zeros(90, int), np.ones(10, int)]
    assert np.allclose(Imbalance.parse("class_weight").class_weights(y), [100 / 180, 100 / 20])
    assert np.allclose(Imbalance.parse("smote").class_weights(y), [1, 1])


def test_focal_loss_matches_hand_computation():
    # p = sigmoid(logit); p_t = p for fakes, 1 - p for reals;
    # FL = -alpha_t (1 - p_t)^gamma log(p_t), alpha_t = 0.25 for fakes, 0.75 for reals.
    logits = torch.tensor([2.0, -1.0, 0.5])
    targets = torch.tensor([1.0, 0.0, 0.0])
    p = [1 / (1 + math.exp(-z)) for z in (2.0, -1.0, 0.5)]
    pt = [p[0], 1 - p[1], 1 - p[2]]
    alpha = [0.25, 0.75, 0.75]
    rows = [-a * (1 - q) ** 2 * math.log(q) for a, q in zip(alpha, pt, strict=True)]
    assert float(FocalLoss()(logits, targets)) == pytest.approx(sum(rows) / 3, rel=1e-6)
    # Class weights [real, fake] multiply each row's loss.
    weighted = FocalLoss(weights=np.array([1.0, 4.0]))(logits, targets)
    assert float(weighted) == pytest.approx((4 * rows[0] + rows[1] + rows[2]) / 3, rel=1e-6)


def test_names_parse_and_round_trip():
    for name in STANDARD:
        assert str(Imbalance.parse(name)) == name
    assert Imbalance.parse("smote0.1+under0.5+focal").focal
    for bad in ("smote2", "oversample", "focal0.3", "under0"):
        with pytest.raises(ValueError):
            Imbalance.parse(bad)


def test_logistic_head_refuses_minibatch_strategies():
    X, y = _rows(200, 20)
    with pytest.raises(ValueError, match="mlp"):
        LogisticHead(imbalance="focal").fit(X, y)


@pytest.mark.parametrize("strategy", ["smote0.1+under0.5+focal", "balanced_batches", "under"])
def test_mlp_head_learns_with_each_strategy(strategy):
    X, y = _rows(400, 40, seed=3)
    head = MLPHead(imbalance=strategy, epochs=40, seed=0).fit(X, y)
    from sklearn.metrics import roc_auc_score

    Xt, yt = _rows(400, 40, seed=4)
    assert roc_auc_score(yt, head.predict_proba(Xt)[:, 1]) > 0.85  # Bayes AUC here is ~0.96


def test_unweighted_fit_flags_fewer_fakes_than_weighted():
    X, y = _rows(600, 40, seed=2)
    weighted = LogisticHead(imbalance="class_weight").fit(X, y).predict(X)
    plain = LogisticHead(imbalance="none").fit(X, y).predict(X)
    smote = LogisticHead(imbalance="smote").fit(X, y).predict(X)
    assert weighted[y == 1].mean() > plain[y == 1].mean()
    assert smote[y == 1].mean() > plain[y == 1].mean()
