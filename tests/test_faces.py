"""The face stage on real faces from ../shared/data: found, aligned, refused when it must be."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from facecheck.detector.pipeline import BundleError, Detector
from facecheck.evaluation.data import load_dataset
from facecheck.features.cache import FeatureCache
from facecheck.features.extract import FeatureExtractor
from facecheck.image.faces import (
    FACE_DETECTORS,
    FaceAnalysis,
    FaceStage,
    MultipleFacesError,
    NoFaceError,
    get_face_detector,
)


def _rgb(path) -> Image.Image:
    return Image.open(path).convert("RGB")


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _on_canvas(face: Image.Image, side: int, size=(1200, 900), at=(450, 250), colour=(60, 90, 140)):
    canvas = Image.new("RGB", size, colour)
    canvas.paste(face.resize((side, side)), at)
    return canvas


@pytest.fixture(scope="module")
def stage() -> FaceStage:
    return FaceStage()


@pytest.fixture(scope="module")
def rff_faces(shared_data) -> list:
    real = sorted((shared_data / "rff" / "real").glob("*.jpg"))[:6]
    fake = sorted((shared_data / "rff" / "fake").glob("*.jpg"))[:6]
    return real + fake


def test_tight_crops_pass_through_and_keypoints_sit_on_the_face(stage, rff_faces):
    for path in rff_faces:
        img = _rgb(path)
        a = stage.analyse(img)
        assert a.action == "passthrough" and a.n_faces == 1, (path, a)
        assert stage.crop(img, a) is img  # the very pixels the models were trained on
        kp, (x0, y0, x1, y1) = a.face.keypoints, a.face.box
        # Left/right as seen in the picture (the rff file-name convention), eyes above the
        # nose above the mouth, all inside the face box.
        assert kp["left_eye"][0] < kp["right_eye"][0]
        assert max(kp["left_eye"][1], kp["right_eye"][1]) < kp["nose"][1] < kp["mouth"][1]
        for name in ("left_eye", "right_eye", "nose", "mouth"):
            x, y = kp[name]
            assert x0 <= x <= x1 and y0 <= y <= y1, (path, name)


def test_two_faces_give_multiple_faces(stage, rff_faces):
    a, b = _rgb(rff_faces[0]), _rgb(rff_faces[1])
    two = Image.new("RGB", (700, 400), (200, 200, 200))
    two.paste(a.resize((220, 220)), (40, 90))
    two.paste(b.resize((220, 220)), (420, 80))
    analysis = stage.analyse(two)
    assert analysis.action == "multiple_faces" and analysis.n_faces == 2
    with pytest.raises(MultipleFacesError, match="2 faces"):
        stage(two)


def test_pictures_without_a_face_give_no_face(stage, rff_faces):
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    # A real photo's background: the top-left corner of an rff picture, above the head.
    corner = _rgb(rff_faces[2]).crop((0, 0, 60, 60)).resize((240, 240))
    for img in (noise, Image.new("RGB", (320, 240), (30, 60, 90)), corner):
        assert stage.analyse(img).action == "no_face"
        with pytest.raises(NoFaceError, match="no face"):
            stage(img)


def test_small_face_in_a_large_canvas_is_found_aligned_and_scored_like_its_crop(
    stage, rff_faces, small_manifest, cache_dir
):
    crops = [_rgb(p) for p in rff_faces]
    # Tilted by up to 12 degrees: alignment must level the eyes again.
    canvases = [
        _on_canvas(c.rotate(12 * (k % 3 - 1), resample=Image.Resampling.BILINEAR), 300)
        for k, c in enumerate(crops)
    ]
    for canvas in canvases:
        face, a = stage(canvas)
        assert a.action == "aligned"
        assert abs(face.width - a.face.width * stage.crop_scale) <= 2 and face.width == face.height
        again = stage.analyse(face)
        # Eyes level after alignment (inputs are tilted by up to 12 + 14 degrees; BlazeFace's
        # eye keypoints themselves move by a few degrees between two detections).
        assert abs(again.face.eye_angle()) < 6

    ds = load_dataset(small_manifest)
    det = Detector("lite0", "logreg", cache=FeatureCache(cache_dir))
    det.fit(ds.paths, ds.y, ds.hashes)
    tight = det.features(rff_faces)
    found = det.features([_png(c) for c in canvases])
    tight /= np.linalg.norm(tight, axis=1, keepdims=True)
    found /= np.linalg.norm(found, axis=1, keepdims=True)
    similarity = found @ tight.T
    # Each found face is nearest to its own tight crop, among the 12.
    assert (similarity.argmax(axis=1) == np.arange(len(crops))).all()
    p_tight = det.score_features(det.features(rff_faces))
    p_found = det.score_features(det.features([_png(c) for c in canvases]))
    assert np.median(np.abs(p_tight - p_found)) < 0.1


def test_check_reports_face_verdicts_and_the_passthrough_choice(
    rff_faces, small_manifest, cache_dir
):
    ds = load_dataset(small_manifest)
    det = Detector("lite0", "logreg", cache=FeatureCache(cache_dir))
    det.fit(ds.paths, ds.y, ds.hashes)
    a, b = _rgb(rff_faces[0]), _rgb(rff_faces[1])
    two = Image.new("RGB", (700, 400), (200, 200, 200))
    two.paste(a.resize((220, 220)), (40, 90))
    two.paste(b.resize((220, 220)), (420, 80))
    inputs = [
        str(rff_faces[0]),
        _png(two),
        _png(Image.new("RGB", (320, 240), (30, 60, 90))),
        _png(_on_canvas(a, 300)),
        b"not an image",
    ]
    for _ in range(2):  # the second pass reads the face stage's decisions from the cache
        v = det.check(inputs)
        assert [x.verdict in ("real", "fake") for x in v] == [True, False, False, True, False]
        assert [x.verdict for x in v][1:3] == ["multiple_faces", "no_face"]
        assert v[4].verdict == "invalid_image"
        assert v[0].face["action"] == "passthrough" and v[3].face["action"] == "aligned"
        assert v[1].face["n_faces"] == 2 and v[2].face["n_faces"] == 0


def test_cached_analysis_round_trips(stage, rff_faces):
    for path in rff_faces[:3]:
        a = stage.analyse(_rgb(path))
        b = FaceAnalysis.from_vector(a.to_vector())
        assert b.action == a.action and b.n_faces == a.n_faces
        assert np.allclose(b.face.box, a.face.box, atol=1e-3)
        assert b.face.keypoints.keys() == a.face.keypoints.keys()
    none = FaceAnalysis("no_face", 0)
    assert FaceAnalysis.from_vector(none.to_vector()) == none


def test_extraction_with_the_stage_off_is_unchanged(lite0, rff_faces, tmp_path):
    plain = FeatureExtractor(lite0, progress=False).extract(rff_faces[:4]).features
    staged = FeatureExtractor(
        lite0, FeatureCache(tmp_path), progress=False, face_stage=FaceStage()
    ).extract(rff_faces[:4])
    # Tight crops pass through: same pixels, same features, and the choice is recorded.
    assert np.allclose(plain, staged.features, atol=1e-5)
    assert all(staged.faces[i].action == "passthrough" for i in range(4))


def test_detectors_are_pluggable(rff_faces):
    assert {"blazeface", "haar"} <= set(FACE_DETECTORS)
    haar = get_face_detector("haar")
    img = np.asarray(_rgb(rff_faces[0]))
    faces = haar.detect(img)
    assert len(faces) >= 1 and faces[0].width > 0.4 * img.shape[1]
    analysis = FaceStage(detector="haar").analyse(_rgb(rff_faces[0]))
    assert analysis.action == "passthrough"
    with pytest.raises(ValueError, match="unknown face detector"):
        FaceStage(detector="nope")
    with pytest.raises(ValueError, match="mode"):
        FaceStage(mode="sometimes")


def test_bundle_records_the_face_stage_and_old_bundles_score_as_given(
    small_manifest, cache_dir, tmp_path
):
    ds = load_dataset(small_manifest)
    det = Detector("lite0", "logreg", cache=FeatureCache(cache_dir), face_stage="align")
    det.fit(ds.paths[::3], ds.y[::3], ds.hashes[::3])
    det.save(tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["face_stage"]["mode"] == "align" and meta["face_stage"]["detector"] == "blazeface"
    assert Detector.load(tmp_path / "b").face_stage == det.face_stage
    meta["face_stage"] = {"mode": "passthrough"}  # what bundles said before the face stage
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(meta))
    assert Detector.load(tmp_path / "b").face_stage.mode == "off"
    meta["face_stage"] = {"mode": "auto", "detector": "unknown"}
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="face stage"):
        Detector.load(tmp_path / "b")


def test_a_window_on_the_region_boxes_holds_them_all(rff_faces):
    """anchor="regions": the crop is centred on the eye, nose and mouth boxes and sized by
    the inter-ocular distance; upright, it keeps the picture's axes (a plain scaled crop)."""
    from facecheck.image.faces import scored_keypoints
    from facecheck.image.regions import eye_frame, region_boxes

    assert FaceStage().key == FaceStage(anchor="box", rotate=True).key  # caches stay valid
    with pytest.raises(ValueError, match="anchor"):
        FaceStage(anchor="nose")
    for rotate in (True, False):
        window = FaceStage(mode="align", crop_scale=2.6, anchor="regions", rotate=rotate)
        assert window.key != FaceStage(mode="align", crop_scale=2.6).key
        for path in rff_faces[:4]:
            picture = _rgb(path)
            a = window.analyse(picture)
            crop = window.crop(picture, a)
            n, m = window.crop_transform(a)
            iod = eye_frame(a.face.keypoints)[2]
            assert crop.size == (n, n) and abs(n - 2.6 * iod) <= 1.5
            if not rotate:
                assert m[0, 1] == 0 and m[1, 0] == 0
            kps = scored_keypoints(crop, a, window)
            for x0, y0, x1, y1 in region_boxes(kps, (10**6, 10**6)).values():
                assert x0 >= 0 and x1 <= n and y0 >= 0 and y1 <= n
