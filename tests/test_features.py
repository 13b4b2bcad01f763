"""Real backbones, the content-hash feature cache and test-time augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facecheck.backbones.registry import load_backbone, resolve_name
from facecheck.features.cache import FeatureCache
from facecheck.features.extract import FeatureExtractor
from facecheck.image.decode import load_image


def test_backbones_load_offline(lite0):
    assert lite0.dim == 1280 and len(lite0.weights_id) == 16
    mnv2 = load_backbone("mobilenetv2")
    assert mnv2.name == "mobilenet_v2" and mnv2.weights_id != lite0.weights_id
    assert not any(p.requires_grad for p in lite0.model.parameters())
    with pytest.raises(KeyError, match="unknown backbone"):
        resolve_name("resnet9000")
    with pytest.raises(RuntimeError, match="allow-download"):
        load_backbone("timm:resnet18")


def test_user_weights_file(tmp_path, lite0):
    from efficientnet_lite_pytorch import EfficientNet

    # A weights file of the right architecture but other values: a different weights id.
    torch.manual_seed(0)
    path = tmp_path / "lite0-random.pth"
    torch.save(EfficientNet.from_name("efficientnet-lite0").state_dict(), path)
    other = load_backbone("lite0", path)
    assert other.weights_id != lite0.weights_id
    torch.save({"nonsense.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="does not match"):
        load_backbone("lite0", tmp_path / "bad.pth")


def test_cache_hit_on_second_extraction(lite0, face_paths, tmp_path):
    cache = FeatureCache(tmp_path)
    ex = FeatureExtractor(lite0, cache, progress=False)
    first = ex.extract(face_paths)
    assert first.n_computed == len(face_paths) and not first.errors
    assert cache.count(ex.key) == len(face_paths)
    second = FeatureExtractor(lite0, FeatureCache(tmp_path), progress=False).extract(face_paths)
    assert second.n_computed == 0
    np.testing.assert_array_equal(first.features, second.features)
    # The cached vector is what the network gives for the image now.
    direct = ex.embed([load_image(face_paths[0]).image])[0]
    np.testing.assert_allclose(first.features[0], direct, rtol=1e-5, atol=1e-5)


def test_cache_keeps_wide_rows_in_half_precision(tmp_path):
    cache = FeatureCache(tmp_path)
    v32 = np.linspace(-3, 3, 10, dtype=np.float32)
    cache.put_many("k32", {"a": v32})
    cache.put_many("k16", {"a": v32}, np.float16)
    got32, got16 = cache.get_many("k32", ["a"])["a"], cache.get_many("k16", ["a"])["a"]
    assert got32.dtype == np.float32 and np.array_equal(got32, v32)
    assert got16.dtype == np.float16 and np.array_equal(got16, v32.astype(np.float16))
    with pytest.raises(ValueError, match="float32 or float16"):
        cache.put_many("k64", {"a": v32}, np.float64)


def test_cache_key_separates_backbone_weights_and_tta(lite0, face_paths, tmp_path):
    cache = FeatureCache(tmp_path)
    plain = FeatureExtractor(lite0, cache, progress=False)
    flip = FeatureExtractor(lite0, cache, tta=True, progress=False)
    assert plain.key != flip.key
    a = plain.extract(face_paths[:3])
    b = flip.extract(face_paths[:3])
    assert b.n_computed == 3  # not served from the non-TTA entries
    assert not np.allclose(a.features, b.features)
    # TTA is the mean of the image's and its mirror's features.
    img = load_image(face_paths[0]).image
    mirrored = plain.embed([img.transpose(0)])[0]  # FLIP_LEFT_RIGHT
    np.testing.assert_allclose(b.features[0], (a.features[0] + mirrored) / 2, atol=1e-4)


def test_bad_inputs_do_not_stop_the_batch(lite0, face_paths, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(face_paths[0].read_bytes()[:300])
    sources = [face_paths[0], bad, tmp_path / "missing.jpg", face_paths[1], face_paths[0]]
    out = FeatureExtractor(lite0, None, progress=False).extract(sources)
    assert set(out.errors) == {1, 2}
    assert out.ok.tolist() == [True, False, False, True, True]
    assert np.isnan(out.features[1]).all() and np.isfinite(out.features[out.ok]).all()
    np.testing.assert_array_equal(out.features[0], out.features[4])  # duplicate input
    assert out.n_computed == 2  # the repeated image was computed once


def test_bytes_and_paths_agree(lite0, face_paths):
    ex = FeatureExtractor(lite0, None, progress=False)
    a = ex.extract([face_paths[2]])
    b = ex.extract([face_paths[2].read_bytes()])
    assert a.hashes == b.hashes
    np.testing.assert_allclose(a.features, b.features, atol=1e-6)


def test_reencoding_at_load_changes_pixels_and_the_cache_key(face_paths):
    from dataclasses import replace

    from facecheck.backbones.preprocessing import Preprocessing

    plain = Preprocessing(224)
    q50 = replace(plain, jpeg_quality=50)
    img = Image.open(face_paths[0])
    a, b = plain.pixels(img), q50.pixels(img)
    assert a.shape == b.shape and 0 < np.abs(a.astype(int) - b.astype(int)).mean() < 10
    assert q50.key() == plain.key() + "-jpeg50"
    assert Preprocessing.from_dict(q50.to_dict()) == q50
    old = {k: v for k, v in plain.to_dict().items() if k != "jpeg_quality"}
    assert Preprocessing.from_dict(old) == plain  # bundles written before the option


def test_a_run_knows_how_much_extraction_is_left(face_paths, lite0, tmp_path, capsys):
    from facecheck.backbones.registry import seconds_per_image
    from facecheck.evaluation.data import Dataset, Record, with_hashes
    from facecheck.evaluation.evaluate import extract_all, extraction_estimate
    from facecheck.features.cache import FeatureCache
    from facecheck.features.extract import FeatureExtractor

    ds = with_hashes(Dataset([Record(p, "real") for p in face_paths[:4]]))
    ex = FeatureExtractor(lite0, FeatureCache(tmp_path), progress=False)
    todo, seconds = extraction_estimate(ds, ex)
    assert todo == 4 and seconds == 4 * seconds_per_image("efficientnet_lite0")
    extract_all(ds, ex)
    assert extraction_estimate(ds, ex) == (0, 0.0)
    # CLIP is the slow one: 13,286 images would take over an hour on the CPU, a GPU less.
    assert 13_286 * seconds_per_image("clip_vit_b16_layers") > 3600
    assert seconds_per_image("clip_vit_b16", "cuda") < seconds_per_image("clip_vit_b16")
