"""Heads and the detector bundle: fit, predict_proba, save/load identity, and refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sklearn.base import clone

from facecheck.detector.pipeline import BundleError, Detector
from facecheck.evaluation.data import load_dataset
from facecheck.features.cache import FeatureCache
from facecheck.heads.models import LogisticHead, MLPHead, RegionMILHead, make_head


def _blobs(n=300, d=20, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    X = rng.normal(size=(n, d)).astype(np.float32)
    X[:, 0] += 2.0 * y
    return X, y


@pytest.mark.parametrize("kind", ["logreg", "mlp", "regionmil"])
def test_head_learns_and_round_trips(kind, tmp_path):
    X, y = _blobs()
    head = make_head(kind).fit(X[:200], y[:200])
    p = head.predict_proba(X[200:])
    assert p.shape == (100, 2) and np.allclose(p.sum(1), 1)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y[200:], p[:, 1]) > 0.85
    head.save(tmp_path / "h.npz")
    again = type(head).from_file(kind, head.get_params(), tmp_path / "h.npz")
    np.testing.assert_array_equal(again.predict_proba(X), head.predict_proba(X))
    assert clone(head).get_params() == head.get_params()  # a proper sklearn estimator


def test_heads_reject_bad_input():
    X, y = _blobs()
    with pytest.raises(ValueError, match="both classes"):
        LogisticHead().fit(X, np.zeros(len(X), int))
    X2 = X.copy()
    X2[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        LogisticHead().fit(X2, y)
    with pytest.raises(ValueError, match="labels"):
        MLPHead().fit(X, y[:-1])


def _region_parts(n=400, d=6, seed=0):
    """An image part and four region parts; a fake has one to three regions replaced, which
    shifts that region's part along one direction (the same for every region)."""
    rng = np.random.default_rng(seed)
    R = np.zeros((n, 4))
    y = (rng.random(n) < 0.5).astype(int)
    for i in np.flatnonzero(y):
        R[i, rng.choice(4, size=rng.integers(1, 4), replace=False)] = 1
    X = rng.normal(size=(n, 5, d))
    X[:, 1:, 0] += 2.5 * R
    return X.reshape(n, -1).astype(np.float32), y, R


def test_region_mil_head_learns_regions_from_their_bits():
    from sklearn.metrics import roc_auc_score

    X, y, R = _region_parts()
    taught = RegionMILHead(region_weight=1.0).fit(X[:300], y[:300], regions=R[:300])
    P = taught.predict_regions(X[300:])
    assert P.shape == (100, 4)
    fake = y[300:] == 1
    for k in range(4):
        assert roc_auc_score(R[300:][fake, k], P[fake, k]) > 0.8
    # Taught the bits, region probabilities mean "replaced": high where it was, low where not.
    assert P[R[300:] == 1].mean() > 0.6 > 0.4 > P[R[300:] == 0].mean()
    assert roc_auc_score(y[300:], taught.predict_proba(X[300:])[:, 1]) > 0.9
    # NaN bits are unknown: with none known the auxiliary loss is off, as with weight 0.
    unknown = RegionMILHead(region_weight=1.0, C=0.01).fit(X, y, regions=np.full(R.shape, np.nan))
    plain = RegionMILHead(region_weight=0.0, C=0.01).fit(X, y)
    np.testing.assert_allclose(unknown.predict_proba(X), plain.predict_proba(X), atol=1e-6)
    # ...and a known bit changes the fit.
    some = RegionMILHead(region_weight=1.0, C=0.01).fit(X, y, regions=R)
    assert np.abs(some.predict_proba(X) - plain.predict_proba(X)).max() > 1e-3


def test_region_mil_head_refuses_bad_input():
    X, y, R = _region_parts(n=60)
    with pytest.raises(ValueError, match="equal parts"):
        RegionMILHead().fit(X[:, :-1], y)
    with pytest.raises(ValueError, match="regions must be"):
        RegionMILHead().fit(X, y, regions=R[:, :3])
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        RegionMILHead().fit(X, y, regions=R * 2)


def _token_rows(n=400, dim=8, grid=6, seed=0):
    """TokenView-shaped rows (class token, four pooled regions, every cell, box weights): a
    fake has one cell of one region's 2 x 2 box shifted along a direction no real has, so
    the box average carries a quarter of the seam."""
    rng = np.random.default_rng(seed)
    cells = grid * grid
    y = (rng.random(n) < 0.5).astype(int)
    tokens = rng.normal(size=(n, cells, dim))
    boxes = [(0, 0), (0, 3), (3, 1), (4, 3)]  # top-left cells of the four 2 x 2 boxes
    W = np.zeros((len(boxes), grid, grid))
    for k, (r, c) in enumerate(boxes):
        W[k, r : r + 2, c : c + 2] = 0.25
    W = W.reshape(len(boxes), cells)
    R = np.zeros((n, len(boxes)))
    for i in np.flatnonzero(y):
        k = rng.integers(len(boxes))
        R[i, k] = 1
        tokens[i, rng.choice(np.flatnonzero(W[k])), 0] += 6.0
    cls = rng.normal(size=(n, dim))
    pooled = np.einsum("rt,ntd->nrd", W, tokens).reshape(n, -1)
    weights = np.broadcast_to(W.reshape(1, -1), (n, W.size))
    X = np.hstack([cls, pooled, tokens.reshape(n, -1), weights]).astype(np.float16)
    return X, y, R


def test_token_mil_head_finds_a_seam_in_a_few_tokens(tmp_path):
    from sklearn.metrics import roc_auc_score

    from facecheck.features.views import TokenView
    from facecheck.heads.models import TokenMILHead

    X, y, R = _token_rows()
    assert X.shape[1] == TokenView((6, 6)).width(8)
    head = TokenMILHead(dim=8, hidden=16, epochs=40, batch_size=32, C=0.01).fit(
        X[:300], y[:300], R[:300]
    )
    p = head.predict_proba(X[300:])
    assert p.shape == (100, 2) and np.allclose(p.sum(1), 1)
    # (The pooled regions alone, RegionMILHead, reach ~0.94 here: the tokens add the rest.)
    assert roc_auc_score(y[300:], p[:, 1]) > 0.97
    # The token regions' logits were taught the bits: the replaced region ranks first.
    P = head.predict_regions(X[300:])
    fake = y[300:] == 1
    assert (P[fake].argmax(1) == R[300:][fake].argmax(1)).mean() > 0.6
    # Scored cell by cell (explain's heatmap without region scores), the seam's cell leads.
    tokens = X[300:][fake][:, 5 * 8 : 5 * 8 + 36 * 8].astype(np.float32).reshape(-1, 36, 8)
    cells = head.cell_logits(tokens.reshape(-1, 8)).reshape(-1, 36)
    assert (cells.argmax(1) == tokens[..., 0].argmax(1)).mean() > 0.6
    head.save(tmp_path / "t.npz")
    again = TokenMILHead.from_file("tokenmil", head.get_params(), tmp_path / "t.npz")
    np.testing.assert_array_equal(again.predict_proba(X), head.predict_proba(X))
    # Fitting twice with one seed gives one model.
    twice = TokenMILHead(dim=8, hidden=16, epochs=40, batch_size=32, C=0.01).fit(
        X[:300], y[:300], R[:300]
    )
    np.testing.assert_array_equal(twice.predict_proba(X), head.predict_proba(X))
    # attend="boxes": cells under no region box (hair, background) cannot move the score.
    outside = np.flatnonzero(X[0, -4 * 36 :].astype(np.float32).reshape(4, 36).sum(0) == 0)
    moved = X.copy().reshape(len(X), -1)
    for c in outside:
        moved[:, 5 * 8 + c * 8 : 5 * 8 + (c + 1) * 8] += np.float16(3)
    for attend, same in (("boxes", True), ("all", False)):
        quick = TokenMILHead(dim=8, hidden=8, epochs=2, fuse=False, attend=attend).fit(X, y)
        assert np.array_equal(quick.predict_proba(moved), quick.predict_proba(X)) == same
    with pytest.raises(ValueError, match="attend"):
        TokenMILHead(dim=8, attend="face", fuse=False).fit(X, y)
    with pytest.raises(ValueError, match="no token row"):
        TokenMILHead(dim=7).fit(X, y)
    bad = X.copy()
    bad[5, 100] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        head.predict_proba(bad)


@pytest.fixture(scope="module")
def fitted(small_manifest, cache_dir):
    ds = load_dataset(small_manifest)
    det = Detector("lite0", "logreg", cache=FeatureCache(cache_dir))
    det.fit(ds.paths[::2], ds.y[::2], ds.hashes[::2])
    det.set_threshold_from(ds.paths[1::2], ds.y[1::2], rule="youden")
    return det, ds


def test_detector_save_load_scores_identically(fitted, tmp_path):
    det, ds = fitted
    before = det.predict_proba(ds.paths)[:, 1]
    det.save(tmp_path / "bundle", training={"protocol": "test"})
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert meta["backbone"]["name"] == "efficientnet_lite0"
    assert meta["preprocessing"]["size"] == 224 and meta["threshold"] == det.threshold
    assert meta["format_version"] == 1 and meta["facecheck_version"]
    loaded = Detector.load(tmp_path / "bundle")
    np.testing.assert_array_equal(loaded.predict_proba(ds.paths)[:, 1], before)
    assert loaded.threshold == det.threshold and loaded.version == det.version
    verdicts = loaded.check(ds.paths[:4])
    assert [v.verdict for v in verdicts] == [
        "fake" if p >= det.threshold else "real" for p in before[:4]
    ]


def _edit(bundle, **changes):
    meta = json.loads((bundle / "bundle.json").read_text())
    for key, value in changes.items():
        target = meta
        *path, last = key.split(".")
        for part in path:
            target = target[part]
        target[last] = value
    (bundle / "bundle.json").write_text(json.dumps(meta))


def test_load_refuses_mismatched_bundles(fitted, tmp_path):
    det, _ = fitted
    good = det.save(tmp_path / "good")
    cases = {
        "format_version": ({"format_version": 99}, "newer than this facecheck"),
        "format": ({"format": "something.else"}, "format"),
        "weights": ({"backbone.weights_id": "0" * 16}, "installed weights"),
        "face stage": ({"face_stage": {"mode": "mediapipe"}}, "face stage"),
        "backbone": ({"backbone.name": "mobilenet_v2"}, "installed weights"),
        "preprocessing": ({"preprocessing.size": 320}, "preprocessing"),
    }
    for name, (changes, message) in cases.items():
        bundle = tmp_path / name.replace(" ", "_")
        shutil.copytree(good, bundle)
        _edit(bundle, **changes)
        with pytest.raises(BundleError, match=message):
            Detector.load(bundle)
    # Another runtime (an INT8 model's ONNX Runtime version) is warned about, not refused.
    runtime = tmp_path / "runtime"
    shutil.copytree(good, runtime)
    _edit(runtime, **{"backbone.runtime": "onnxruntime0.1"})
    with pytest.warns(UserWarning, match="onnxruntime0.1.*re-evaluate"):
        Detector.load(runtime)
    damaged = tmp_path / "damaged"
    shutil.copytree(good, damaged)
    (damaged / "head.npz").write_bytes(b"junk")
    with pytest.raises(BundleError, match="checksum"):
        Detector.load(damaged)
    with pytest.raises(BundleError, match=r"no bundle\.json"):
        Detector.load(tmp_path)


def test_unfitted_detector_says_so():
    with pytest.raises(RuntimeError, match="not fitted"):
        Detector("lite0").check([b"x"])


def test_calibrated_detector_keeps_verdicts_and_round_trips(small_manifest, cache_dir, tmp_path):
    ds = load_dataset(small_manifest)
    det = Detector("lite0", "mlp:smote", cache=FeatureCache(cache_dir))
    det.fit(ds.paths[::2], ds.y[::2], ds.hashes[::2])
    val = (ds.paths[1::2], ds.y[1::2])
    det.set_threshold_from(*val, rule="youden")
    before = det.predict(ds.paths)
    raw = det.predict_proba(ds.paths)[:, 1]
    cal = det.calibrate_from(*val, fake_rate=0.001)
    after = det.predict_proba(ds.paths)[:, 1]
    np.testing.assert_array_equal(det.predict(ds.paths), before)  # threshold carried over
    assert np.all(np.diff(after[np.argsort(raw, kind="stable")]) >= -1e-12)  # ranking kept
    assert after.mean() < raw.mean() and cal.temperature_ > 0  # 1:1000 prior: lower P(fake)
    loaded = Detector.load(det.save(tmp_path / "cal"))
    np.testing.assert_array_equal(loaded.predict_proba(ds.paths)[:, 1], after)
    assert (
        json.loads((tmp_path / "cal" / "bundle.json").read_text())["head"]["params"]["imbalance"]
        == "smote"
    )
