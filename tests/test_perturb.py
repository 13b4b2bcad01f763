"""Processing chains (P5's perturbations and P8's chains), and the harness scoring
perturbed copies of test sets."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image

from facecheck.cli.main import main
from facecheck.image.decode import ImageError, load_image
from facecheck.image.faces import FaceStage
from facecheck.image.perturb import P8_CHAINS, perturb


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(load_image(data).image, dtype=np.int16)


def test_jpeg70_recompresses(face_paths):
    src = face_paths[0]
    out = perturb(src, "jpeg70")
    img = Image.open(io.BytesIO(out))
    assert img.format == "JPEG" and img.size == (256, 256)
    # Coarser quantisation than the q95 original: larger table entries.
    orig_q = Image.open(src).quantization[0]
    assert np.mean(img.quantization[0]) > 2 * np.mean(orig_q)
    diff = np.abs(_pixels(out) - _pixels(src.read_bytes())).mean()
    assert 0.5 < diff < 8


def test_resize_round_trip_keeps_size_and_blurs(face_paths):
    src = face_paths[1]
    out = perturb(src, "resize0.5")
    img = Image.open(io.BytesIO(out))
    assert img.format == "PNG" and img.size == (256, 256)
    a, b = _pixels(src.read_bytes()), _pixels(out)
    assert 0.5 < np.abs(a - b).mean() < 8
    # Fine detail is lost: less energy in horizontal differences.
    assert np.abs(np.diff(b, axis=1)).mean() < np.abs(np.diff(a, axis=1)).mean()


def test_perturb_errors(tmp_path, face_paths):
    with pytest.raises(KeyError, match="unknown perturbation"):
        perturb(face_paths[0], "sepia")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(ImageError):
        perturb(bad, "jpeg70")


def _evaluate_p1(small_manifest, cache_dir, tmp_path, *extra: str) -> list[dict]:
    """Run `evaluate` on the small subset (P1 + P4, Lite0 + LR); return metrics.csv rows."""
    out = tmp_path / "run"
    code = main(
        [
            "evaluate",
            "--data",
            str(small_manifest),
            "--protocols",
            "P1,P4",
            "--backbones",
            "lite0",
            "--heads",
            "logreg",
            "--n-boot",
            "50",
            "--perturb-protocols",
            "P1",
            "--cache-dir",
            str(cache_dir),
            "--scores-csv",
            str(tmp_path / "s.csv"),
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
    )
    assert code == 0
    return list(csv.DictReader((out / "metrics.csv").open()))


def test_evaluate_scores_perturbed_test_sets(small_manifest, cache_dir, tmp_path):
    rows = _evaluate_p1(small_manifest, cache_dir, tmp_path, "--perturb", "jpeg70,resize0.5")
    p1_sets = {r["test_set"] for r in rows if r["protocol"] == "P1"}
    assert p1_sets == {"same-source", "same-source+jpeg70", "same-source+resize0.5"}
    assert all("+" not in r["test_set"] for r in rows if r["protocol"] == "P4")
    # Perturbed copies are the same images: same size and class balance as the clean set.
    by = {(r["test_set"], r["threshold_kind"]): r for r in rows if r["protocol"] == "P1"}
    clean = by[("same-source", "val:youden")]
    for pert in ("jpeg70", "resize0.5"):
        row = by[(f"same-source+{pert}", "val:youden")]
        assert (row["n"], row["n_fake"], row["threshold"]) == (
            clean["n"],
            clean["n_fake"],
            clean["threshold"],
        )
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Robustness (P5)" in report and "resize0.5" in report


def test_degrade_is_seeded_by_content(face_paths):
    a1, a2 = perturb(face_paths[0], "degrade"), perturb(face_paths[0], "degrade")
    assert a1 == a2  # same image, same draw: reproducible and cacheable
    assert Image.open(io.BytesIO(a1)).format == "JPEG"
    # Different images get different draws (quantisation tables differ across a handful).
    tables = {
        tuple(Image.open(io.BytesIO(perturb(p, "degrade"))).quantization[0]) for p in face_paths[:6]
    }
    assert len(tables) > 1


def test_training_augmentation_adds_a_model_variant(small_manifest, cache_dir, tmp_path):
    rows = _evaluate_p1(
        small_manifest, cache_dir, tmp_path, "--perturb", "jpeg70", "--train-augment", "degrade"
    )
    # Augmentation is part of the recipe: every protocol's head is fitted with it (the
    # perturbed test copies stay with --perturb-protocols).
    models = {(r["protocol"], r["model"]) for r in rows}
    assert models == {
        ("P1", "efficientnet_lite0+logreg+aug:degrade"),
        ("P4", "efficientnet_lite0+logreg+aug:degrade"),
    }
    assert "training augmentation | degrade" in (tmp_path / "run" / "report.md").read_text()


def test_every_p8_chain_is_deterministic_and_decodes(face_paths):
    """P8's chains: the same picture gives the same bytes (seeded by its content and the
    chain's name), another picture other bytes, and the decoder reads every output."""
    a, b = face_paths[0], face_paths[8]
    for chain in P8_CHAINS:
        once = perturb(a, chain)
        assert perturb(a, chain) == once, chain
        assert perturb(b, chain) != once, chain
        picture = load_image(once).image
        assert picture.mode == "RGB", chain
    sizes = {c: load_image(perturb(a, c)).image.size for c in ("down0.5", "up2", "up3")}
    assert sizes == {"down0.5": (128, 128), "up2": (512, 512), "up3": (768, 768)}
    # PNG with alpha really carries an alpha channel, partly transparent.
    with Image.open(io.BytesIO(perturb(a, "png_alpha"))) as png:
        assert png.mode == "RGBA" and png.getchannel("A").getextrema() == (0, 255)


def test_the_face_in_a_larger_photo_is_found_again(face_paths):
    """in_photo puts the face at a seeded place in a 1200 x 900 photo; the face stage finds
    exactly one face there and crops it (what P8 measures the detector on)."""
    stage = FaceStage()
    for chain in ("in_photo", "in_photo_up2", "print_recapture"):
        data = perturb(face_paths[8], chain)
        picture = load_image(data).image
        if chain.startswith("in_photo"):
            assert picture.size == (1200, 900)
        analysis = stage.analyse(picture)
        assert (analysis.action, analysis.n_faces) == ("aligned", 1), chain


def test_field_augmentation_is_seeded_and_passes_through_the_face_stage(face_paths):
    """The training chain: one kind per picture drawn from its hash (same bytes every time),
    always a JPEG; some pictures land inside a larger photo, where the face stage finds the
    face again, as it would in serving."""
    outputs = {p: perturb(p, "field") for p in face_paths[:12]}
    assert all(perturb(p, "field") == b for p, b in list(outputs.items())[:3])
    pictures = {p: load_image(b).image for p, b in outputs.items()}
    assert {Image.open(io.BytesIO(b)).format for b in outputs.values()} == {"JPEG"}
    assert len({pic.size for pic in pictures.values()}) >= 3  # several kinds were drawn
    big = [pic for pic in pictures.values() if pic.width >= 900]
    assert big, "no picture was placed in a larger photo"
    analysis = FaceStage().analyse(big[0])
    assert (analysis.action, analysis.n_faces) == ("aligned", 1)


def test_processed_copies_are_cached_by_chain(lite0, face_paths, tmp_path, monkeypatch):
    """A second run over the same images neither perturbs nor extracts again, and gives the
    same rows; another chain is computed afresh."""
    from facecheck.evaluation import evaluate
    from facecheck.evaluation.data import Dataset, Record, with_hashes
    from facecheck.features.cache import FeatureCache
    from facecheck.features.extract import FeatureExtractor

    ds = with_hashes(Dataset([Record(p, "real", "rff") for p in face_paths[:4]]))
    ex = FeatureExtractor(lite0, FeatureCache(tmp_path), progress=False)
    first = evaluate.extract_perturbed(ds, ex, "jpeg70")
    assert set(first) == {r.sha256 for r in ds}

    def refuse(*_):
        raise AssertionError("perturbed again")

    monkeypatch.setattr(evaluate, "perturb", refuse)
    again = evaluate.extract_perturbed(ds, ex, "jpeg70")
    assert all(np.array_equal(first[h], again[h]) for h in first)
    with pytest.raises(AssertionError, match="perturbed again"):
        evaluate.extract_perturbed(ds, ex, "resize0.5")
