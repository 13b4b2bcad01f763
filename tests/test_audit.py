"""The source-bias audit finds shortcuts that are not the manipulation."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from facecheck.evaluation.audit import class_summary, file_facts, shortcut_aucs, source_probe


def _reencode(path, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_jpeg_quality_is_read_from_the_tables():
    for q in (40, 70, 90, 95, 100):
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (90, 120, 150)).save(buf, "JPEG", quality=q)
        assert file_facts(buf.getvalue()).jpeg_quality == q
    png = io.BytesIO()
    Image.new("RGB", (32, 32)).save(png, "PNG")
    assert file_facts(png.getvalue()).jpeg_quality is None


def test_a_planted_jpeg_quality_shortcut_is_found(shared_data):
    real = sorted((shared_data / "rff" / "real").glob("*.jpg"))[:20]
    fake = sorted((shared_data / "rff" / "fake").glob("*.jpg"))[:20]
    y = [0] * 20 + [1] * 20
    clean = [file_facts(p) for p in real + fake]
    aucs = shortcut_aucs(y, clean)
    # The shared data are re-encoded uniformly: no quality or size shortcut within rff.
    assert aucs["jpeg_quality"] == 0.5 and aucs["width"] == 0.5
    assert aucs["bytes"] < 0.8
    planted = clean[:20] + [file_facts(_reencode(p, 70)) for p in fake]
    aucs = shortcut_aucs(y, planted)
    assert aucs["jpeg_quality"] == 1.0  # the fakes alone were re-saved at q70
    assert aucs["bytes"] > 0.9  # and it shows in the file sizes too
    summary = class_summary(y, planted)
    assert summary["fake"]["jpeg_quality"] == {"70": 20}
    assert summary["real"]["jpeg_quality"] == {"95": 20}


def test_the_two_real_sources_are_told_apart_by_features(shared_data, lite0, cache_dir):
    from facecheck.features.cache import FeatureCache
    from facecheck.features.extract import FeatureExtractor

    rff = sorted((shared_data / "rff" / "real").glob("*.jpg"))[:30]
    utk = sorted((shared_data / "utkface" / "real").glob("*.jpg"))[:30]
    ex = FeatureExtractor(lite0, cache=FeatureCache(cache_dir), progress=False)
    F = ex.extract(rff + utk).features
    assert source_probe(F[:30], F[30:]) > 0.95  # the known source shortcut (protocols note)
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(F[:30])  # two halves of one source: nothing to find
    assert source_probe(shuffled[:15], shuffled[15:], folds=3) < 0.85
