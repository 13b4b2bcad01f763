"""Localisation: region labels, region scores in the bundle, the P6 metric, `explain`."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facecheck.backbones.registry import Backbone, load_backbone
from facecheck.cli.main import main
from facecheck.detector.explain import cell_logits, explain
from facecheck.detector.pipeline import BundleError, Detector
from facecheck.evaluation.data import Record, region_bits, region_targets
from facecheck.evaluation.metrics import localisation_metrics, pattern_name, wilson_interval
from facecheck.features.extract import FeatureExtractor
from facecheck.features.views import PooledRegionView, RegionView, TokenView, box_weights
from facecheck.image.faces import FaceStage, scored_keypoints
from facecheck.image.regions import REGIONS, region_boxes, region_crops


def test_region_bits_for_all_sixteen_patterns_and_the_three_bit_name(full_dataset):
    for bits in itertools.product((0, 1), repeat=4):
        name = "".join(map(str, bits))
        rec = Record(Path(f"rff/fake/mid_7_{name}.jpg"), "fake", "rff")
        assert rec.regions == bits and rec.difficulty == "mid"
    # Three bits cannot say which region is missing: no region label (documented in data).
    three = Record(Path("rff/fake/easy_116_111.jpg"), "fake", "rff")
    assert three.regions is None and three.difficulty == "easy"
    assert Record(Path("rff/real/real_00001.jpg"), "real", "rff").regions is None
    # The shared data: every fake but that one has four bits; 15 patterns (no "0000").
    fakes = [r for r in full_dataset if r.source == "rff" and r.label == "fake"]
    assert [r.path.stem for r in fakes if r.regions is None] == ["easy_116_111"]
    assert len({r.regions for r in fakes if r.regions}) == 15
    assert (0, 0, 0, 0) not in {r.regions for r in fakes}
    # Targets: reals of the fakes' source are all-untouched; the 3-bit fake, generated fakes
    # and reals of another source (a source shortcut) have none.
    real = Record(Path("real.jpg"), "real", "rff")
    other = Record(Path("utk.jpg"), "real", "utkface")
    gan = Record(Path("g.jpg"), "fake", "gan")
    Y, known = region_targets([fakes[0], three, real, gan, other])
    assert known.tolist() == [True, False, True, False, False]
    assert tuple(Y[0]) == fakes[0].regions and Y[2].sum() == 0
    # The same as one array for heads that learn regions: NaN where unknown.
    R = region_bits([fakes[0], three, real, gan, other])
    assert np.isnan(R[[1, 3, 4]]).all() and not np.isnan(R[[0, 2]]).any()
    assert tuple(R[0]) == fakes[0].regions and R[2].sum() == 0


def test_p6_metrics_on_a_constructed_example():
    # Four fakes and two reals. Top region hits: fake 0 (LE), fake 1 (M), fake 2 misses
    # (scores N, only RE replaced), fake 3 (all replaced) always hits.
    Y = np.array(
        [[1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    )
    P = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],
            [0.2, 0.1, 0.3, 0.8],
            [0.1, 0.4, 0.7, 0.2],
            [0.5, 0.6, 0.7, 0.8],
            [0.3, 0.2, 0.1, 0.1],
            [0.1, 0.3, 0.5, 0.2],
        ]
    )
    y = np.array([1, 1, 1, 1, 0, 0])
    detected = np.array([True, False, True, True, False, True])
    difficulty = np.array(["easy", "easy", "hard", "mid", "", ""], dtype=object)
    m = localisation_metrics(Y, P, y, detected, difficulty)
    assert m["top_region"]["top_hit"] == pytest.approx(3 / 4)
    assert m["top_region"]["n"] == 4
    assert m["chance"] == pytest.approx(7 / 16)  # replaced regions among the fakes' 16
    assert m["detector_recall"] == pytest.approx(3 / 4)
    # Left eye: replaced in fakes 0 and 3 (scores 0.9, 0.5) against 0.2, 0.1, 0.3, 0.1.
    assert m["regions"]["left_eye"]["auc_all"] == pytest.approx(1.0)
    # Among fakes only: 0.9, 0.5 against 0.2, 0.1.
    assert m["regions"]["left_eye"]["auc_fakes"] == pytest.approx(1.0)
    # Right eye: replaced in fakes 2 and 3 (0.4, 0.6) vs 0.1, 0.1, 0.2, 0.3: perfect.
    # Nose: replaced in fake 3 only (0.7) vs 0.2, 0.3, 0.7, 0.1, 0.5: one tie -> 4.5/5.
    assert m["regions"]["nose"]["auc_all"] == pytest.approx(4.5 / 5)
    assert m["regions"]["mouth"]["detector_recall"] == pytest.approx(1 / 2)  # fakes 1, 3
    assert m["patterns"]["left_eye"]["detector_recall"] == 1.0
    assert m["patterns"]["mouth"]["detector_recall"] == 0.0
    assert m["patterns"]["all four"]["top_hit"] == 1.0
    assert m["difficulty"]["easy"]["n"] == 2 and m["difficulty"]["hard"]["top_hit"] == 0.0
    assert pattern_name(np.array([1, 1, 0, 0])) == "left_eye+right_eye"


def test_wilson_interval():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.490, abs=1e-3) and hi == pytest.approx(0.943, abs=1e-3)
    assert wilson_interval(0, 5)[0] == pytest.approx(0.0)
    assert all(np.isnan(wilson_interval(0, 0)))


def test_region_view_crops_land_on_the_face_and_mirror_the_right_eye(face_paths):
    picture = Image.open(face_paths[0]).convert("RGB")
    stage = FaceStage()
    analysis = stage.analyse(picture)
    kps = scored_keypoints(picture, analysis, stage)
    assert kps is not None
    crops = RegionView(112)(picture, kps)
    assert [c.size for c in crops] == [(112, 112)] * 4
    plain = region_crops(np.asarray(picture), kps, 112)
    assert np.array_equal(np.asarray(crops[0]), plain[0])
    assert np.array_equal(np.asarray(crops[1]), plain[1][:, ::-1])
    # A bigger context is another cache key; the default key names the crop sides.
    assert RegionView(112).key != RegionView(112, 1.5).key


def test_box_weights_cover_each_box_and_sum_to_one():
    boxes = {
        "left_eye": (0, 0, 16, 16),  # exactly the first cell of a 14 x 14 grid on 224 px
        "right_eye": (16, 0, 48, 8),  # two cells' width, half a cell high
        "nose": (100, 100, 101, 101),  # smaller than a cell: the cell it lies in
        "mouth": (0, 0, 224, 224),  # the whole picture: a plain mean
    }
    W = box_weights(boxes, (224, 224), (14, 14))
    assert W.shape == (4, 14, 14) and np.allclose(W.sum((1, 2)), 1)
    assert W[0, 0, 0] == 1
    assert np.allclose(W[1, 0, 1:3], 0.5) and W[1].sum() == pytest.approx(W[1, 0, 1:3].sum())
    assert W[2, 6, 6] == 1  # pixel 100 lies in cell 6 (96..112)
    assert np.allclose(W[3], 1 / 196)


def test_pooled_region_features_average_the_map_inside_the_boxes(face_paths):
    """Pooled region features are the backbone's map averaged inside each region box: for
    Lite0, whose features are the map's mean, a box over the whole picture gives them back."""

    class Whole(PooledRegionView):
        def weights(self, picture, keypoints, grid):
            return np.full((4, *grid), 1 / (grid[0] * grid[1]), np.float32)

    bb = load_backbone("efficientnet_lite0")
    image = FeatureExtractor(bb, None, progress=False).extract(face_paths[:2]).features
    whole = FeatureExtractor(bb, None, progress=False, view=Whole()).extract(face_paths[:2])
    assert whole.features.shape == (2, 4 * bb.dim)
    for k in range(4):
        assert np.allclose(whole.features[:, k * bb.dim : (k + 1) * bb.dim], image, atol=1e-4)
    # The real view: each region's weights lie on its own box, and the regions differ.
    picture = Image.open(face_paths[0]).convert("RGB")
    stage = FaceStage()
    kps = scored_keypoints(picture, stage.analyse(picture), stage)
    W = PooledRegionView().weights(picture, kps, (7, 7))
    side = picture.size[0] / 7
    for k, (x0, y0, x1, y1) in enumerate(region_boxes(kps, picture.size).values()):
        rows, cols = np.nonzero(W[k])
        assert cols.min() * side < x1 and (cols.max() + 1) * side > x0
        assert rows.min() * side < y1 and (rows.max() + 1) * side > y0
    F = FeatureExtractor(bb, None, progress=False, view=PooledRegionView()).extract(face_paths[:1])
    blocks = F.features[0].reshape(4, bb.dim)
    assert not np.allclose(blocks[0], blocks[3])


def test_region_cell_logits_average_to_the_region_scores(face_paths):
    """With pooled region features, a region's logit is the box-weighted mean of its cells'
    logits under that region's head (the heads are affine in the features): what makes the
    region heads' map of cells a heatmap that agrees with the region scores."""
    import torch

    from facecheck.detector.localise import RegionScorer
    from facecheck.heads.link import logit

    bb = load_backbone("efficientnet_lite0")
    paths = face_paths[:12]
    F = FeatureExtractor(bb, None, progress=False, view=PooledRegionView()).extract(paths)
    Y = np.tile([[1, 0, 1, 0], [0, 1, 0, 1]], (6, 1))
    scorer = RegionScorer(head="logreg:none").fit(F.features, Y)
    picture = Image.open(paths[0]).convert("RGB")
    kps = scored_keypoints(picture, None, None)
    with torch.inference_mode():
        fmap = bb.feature_map(bb.preprocessing(picture)[None])[0].numpy()
    cells = fmap.reshape(fmap.shape[0], -1).T
    W = PooledRegionView().weights(picture, kps, fmap.shape[1:])
    scores = scorer.predict_proba(F.features[:1])[0]
    groups = {k: name for name, cols in scorer._groups.items() for k in cols}
    for k in range(4):
        per_cell = logit(scorer.heads_[groups[k]].predict_proba(cells)[:, 1])
        assert (W[k].ravel() * per_cell).sum() == pytest.approx(logit(scores[k]), abs=1e-3)
    best = np.max([logit(h.predict_proba(cells)[:, 1]) for h in scorer.heads_.values()], axis=0)
    assert np.allclose(scorer.cell_logits(cells), best)


def test_keypoints_follow_an_aligned_crop(face_paths):
    """Keypoints mapped into the aligned crop (through the crop's affine map) sit where
    BlazeFace finds them when it looks at that crop."""
    face = Image.open(face_paths[0]).convert("RGB").resize((300, 300)).rotate(12)
    canvas = Image.new("RGB", (1200, 900), (90, 110, 90))
    canvas.paste(face, (450, 300))
    stage = FaceStage()
    analysis = stage.analyse(canvas)
    assert analysis.action == "aligned"
    crop = stage.crop(canvas, analysis)
    mapped = scored_keypoints(crop, analysis, stage)
    found = scored_keypoints(crop, None, None)  # BlazeFace on the crop itself
    assert mapped is not None and found is not None
    iod = np.hypot(*np.subtract(found["right_eye"], found["left_eye"]))
    for name in REGIONS:
        assert np.hypot(*np.subtract(mapped[name], found[name])) < 0.15 * iod, name
    # Eyes level in the crop.
    assert abs(mapped["left_eye"][1] - mapped["right_eye"][1]) < 0.1 * iod


@pytest.fixture(scope="module")
def p1_bundle(small_manifest, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "p1"
    args = ["train", "--data", str(small_manifest), "--protocol", "P1", "--out", str(out)]
    assert main([*args, "--cache-dir", str(cache_dir), "--quiet"]) == 0
    return out


def test_trained_bundle_has_region_scores_and_check_reports_them(p1_bundle, face_paths, cache_dir):
    meta = json.loads((p1_bundle / "bundle.json").read_text())
    assert meta["regions"]["view"] == RegionView(224).key
    assert meta["training"]["region_training"]["fakes"] >= 10
    det = Detector.load(p1_bundle)
    verdicts = det.check(face_paths[:3], regions="all")
    for v in verdicts:
        assert set(v.regions) == set(REGIONS)
        assert all(0.0 <= p <= 1.0 for p in v.regions.values())
    assert det.check(face_paths[:1], regions="none")[0].regions is None
    # By default only inputs judged fake get region scores (they are for the reviewer).
    flagged = det.check(face_paths[:6])
    assert [v.regions is not None for v in flagged] == [v.verdict == "fake" for v in flagged]
    with pytest.raises(ValueError, match="flagged"):
        det.check(face_paths[:1], regions="some")
    # Saved and loaded again: the same region scores.
    again = Detector.load(det.save(p1_bundle.parent / "again"))
    assert [v.regions for v in again.check(face_paths[:3], regions="all")] == [
        v.regions for v in verdicts
    ]


def test_bundle_with_other_region_crops_is_refused(p1_bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(p1_bundle, copy)
    meta = json.loads((copy / "bundle.json").read_text())
    meta["regions"]["view"] = RegionView(224, 1.5).key
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="region scores"):
        Detector.load(copy)


@pytest.mark.parametrize(
    ("head_input", "head"),
    [
        ("image", "logreg"),
        ("image+regions", "logreg"),
        ("image+regions", "regionmil"),
        ("tokens", "tokenmil"),
    ],
)
def test_bundle_with_pooled_region_features_round_trips(
    small_manifest, cache_dir, face_paths, tmp_path, head_input, head, monkeypatch
):
    out = tmp_path / "pooled"
    args = ["train", "--data", str(small_manifest), "--protocol", "P1", "--out", str(out)]
    args += ["--region-view", "pooled", "--head-input", head_input, "--head", head]
    assert main([*args, "--cache-dir", str(cache_dir), "--quiet"]) == 0
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["regions"]["view"] == PooledRegionView().key
    assert meta["head_input"] == head_input and meta["head"]["kind"] == head
    det = Detector.load(out)
    assert det.region_view == "pooled" and det.head_input == head_input
    assert isinstance(det.region_extractor.view, PooledRegionView)
    dim = det.backbone.dim
    width = {"image": dim, "image+regions": 5 * dim, "tokens": TokenView((7, 7)).width(dim)}
    assert det.head.n_features_in == det.extractor.dim == width[head_input]
    verdicts = det.check(face_paths[:3], regions="all")
    for v in verdicts:
        assert set(v.regions) == set(REGIONS)
    # check reads image and regions from one pass; the plain image pass scores the same.
    plain = det.predict_proba(face_paths[:3])[:, 1]
    assert np.allclose([v.fake_probability for v in verdicts], plain, atol=1e-4)
    regions_alone = det.regions.predict_proba(det.region_features(face_paths[:3]))
    assert np.allclose([list(v.regions.values()) for v in verdicts], regions_alone, atol=1e-3)
    if head_input != "image":
        # One pass gives both: the head's input is the image's features, then the regions'
        # (what the region scores read on their own), and the version says so. Token rows
        # are float16 (to its rounding), then every cell of the map and the boxes' weights.
        both = det.features(face_paths[:3])
        alone = det.extractor.backbone
        image = FeatureExtractor(alone, None, progress=False).extract(face_paths[:3]).features
        regions = det.region_extractor.extract(face_paths[:3]).features
        tol = {"atol": 1e-4} if head_input == "image+regions" else {"rtol": 2e-3, "atol": 2e-3}
        assert np.allclose(both[:, :dim], image, **tol)
        assert np.allclose(both[:, det.region_columns], regions, **tol)
        assert f"+{head_input.removeprefix('image+')}-" in det.version
        if head_input == "tokens":
            n_cells = 49
            cells = both[:, 5 * dim : 5 * dim + n_cells * dim].reshape(3, n_cells, dim)
            w = both[:, 5 * dim + n_cells * dim :].reshape(3, 4, n_cells).astype(np.float32)
            assert np.allclose(w.sum(-1), 1, atol=2e-3)  # each region's weights
            pooled = np.einsum("nrt,ntd->nrd", w, cells.astype(np.float32)).reshape(3, -1)
            assert np.allclose(pooled, regions, rtol=1e-2, atol=1e-2)
    # explain draws the heatmap from the verdict's own pass (the map it pooled the regions
    # from) and reuses its face decision: one backbone pass, the same cells as a second.
    passes: list[int] = []
    real_map = Backbone.feature_map
    monkeypatch.setattr(
        Backbone, "feature_map", lambda self, x: passes.append(len(x)) or real_map(self, x)
    )
    exp = explain(det, face_paths[0])
    assert passes == [1]
    assert exp.cells is not None and exp.cells.shape == (7, 7)
    _, ex = det.check_with_extraction(face_paths[:1], regions="all")
    stage = det.face_stage
    picture = Image.open(face_paths[0]).convert("RGB")
    scored = stage.crop(picture, ex.faces[0]) if stage.active else picture
    assert np.allclose(exp.cells, cell_logits(det, scored), atol=1e-3)
    again = Detector.load(det.save(tmp_path / "again"))
    assert [v.regions for v in again.check(face_paths[:3], regions="all")] == [
        v.regions for v in verdicts
    ]
    with pytest.raises(ValueError, match="pooled"):
        Detector(head_input="image+regions", region_view="crops")
    with pytest.raises(ValueError, match="image\\+regions"):
        Detector(head="regionmil", region_view="pooled")
    with pytest.raises(ValueError, match="head_input tokens"):
        Detector(head="tokenmil", region_view="pooled")
    with pytest.raises(ValueError, match="does not read patch tokens"):
        Detector(head="logreg", region_view="pooled", head_input="tokens")


def test_explain_writes_pngs_of_the_inputs_size(p1_bundle, face_paths, tmp_path, capsys):
    face = Image.open(face_paths[1]).convert("RGB").resize((300, 300))
    canvas = Image.new("RGB", (1200, 900), (200, 200, 190))
    canvas.paste(face, (100, 400))
    canvas.save(tmp_path / "selfie.jpg")
    Image.new("RGB", (240, 200), (120, 80, 60)).save(tmp_path / "flat.png")
    (tmp_path / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    inputs = [face_paths[0], tmp_path / "selfie.jpg", tmp_path / "flat.png", tmp_path / "notes.txt"]
    code = main(["explain", "--model", str(p1_bundle), "--out", str(out), *map(str, inputs)])
    assert code == 1  # the text file and the faceless picture are reported
    for src in inputs[:3]:
        png = out / f"{Path(src).stem}.explain.png"
        with Image.open(png) as img:
            img.load()
            assert img.format == "PNG" and img.size == Image.open(src).size
    tight = json.loads((out / f"{Path(face_paths[0]).stem}.explain.json").read_text())
    assert tight["top_region"] in REGIONS and len(tight["cells"]) == 7
    selfie = json.loads((out / "selfie.explain.json").read_text())
    assert selfie["face"]["action"] == "aligned"
    # The boxes are drawn on the face, which sits at (100..400, 400..700) in the canvas.
    for poly in selfie["boxes"].values():
        xs, ys = zip(*poly, strict=True)
        assert min(xs) >= 100 and max(xs) <= 400 and min(ys) >= 400 and max(ys) <= 700
    assert json.loads((out / "flat.explain.json").read_text())["verdict"] == "no_face"
    assert not (out / "notes.explain.png").exists()
    assert "notes.txt" in capsys.readouterr().err


def test_evaluate_p6_writes_the_localisation_section(small_manifest, cache_dir, tmp_path):
    out = tmp_path / "report"
    args = ["evaluate", "--data", str(small_manifest), "--protocols", "P6", "--out", str(out)]
    args += ["--backbones", "efficientnet_lite0", "--heads", "logreg", "--n-boot", "50"]
    code = main([*args, "--cache-dir", str(cache_dir), "--scores-csv", str(tmp_path / "s.csv")])
    assert code == 0
    text = (out / "report.md").read_text()
    assert "## P6: localisation" in text and "P6_grid.png" in text
    metrics = json.loads((out / "P6_metrics.json").read_text())
    top = metrics["region_scores"]["top_region"]
    assert top["n"] > 0 and 0.0 <= top["top_hit"] <= 1.0
    with Image.open(out / "P6_grid.png") as img:
        assert img.format == "PNG"


def test_a_window_backbone_aligns_every_face_and_explains_on_the_input(
    small_manifest, cache_dir, face_paths, tmp_path
):
    """clip_vit_b16_l8_window reads a 160 px window of the aligned face: its detectors align
    every face with the window's framing, and explain still draws on the whole input."""
    from facecheck.backbones.registry import WINDOW_FRAMING

    det = Detector("clip_vit_b16_l8_window")
    assert det.face_stage.mode == "align"
    assert det.face_stage == FaceStage(mode="align", **WINDOW_FRAMING)
    with pytest.raises(ValueError, match="face stage"):
        Detector("clip_vit_b16_l8_window", face_stage="off")
    out = tmp_path / "window"
    args = ["train", "--data", str(small_manifest), "--protocol", "P1", "--out", str(out)]
    args += ["--backbone", "clip_vit_b16_l8_window", "--head-input", "image+regions"]
    assert main([*args, "--cache-dir", str(cache_dir), "--quiet"]) == 0
    loaded = Detector.load(out)
    assert loaded.face_stage == det.face_stage and loaded.backbone.preprocessing.size == 160
    exp = explain(loaded, face_paths[4])
    picture = Image.open(face_paths[4])
    assert exp.verdict.face["action"] == "aligned" and exp.cells.shape == (10, 10)
    assert exp.heatmap.shape == picture.size[::-1] and set(exp.boxes) == set(REGIONS)
    # The heat lies on the window: nothing in the picture's corners, outside the face.
    h, w = exp.heatmap.shape
    assert exp.heatmap[: h // 10, : w // 10].max() == 0 and exp.heatmap.max() > 0
    for poly in exp.boxes.values():
        xs, ys = zip(*poly, strict=True)
        assert min(xs) >= 0 and max(xs) <= w and min(ys) >= 0 and max(ys) <= h
