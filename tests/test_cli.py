"""The CLI end to end on a small real subset: train, evaluate (report), check."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from facecheck.cli.main import main
from facecheck.detector.bundle import default_bundle_path
from facecheck.detector.pipeline import Detector


@pytest.fixture(scope="module")
def trained(small_manifest, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "p4"
    code = main(
        [
            "train",
            "--data",
            str(small_manifest),
            "--protocol",
            "P4",
            "--out",
            str(out),
            "--cache-dir",
            str(cache_dir),
            "--quiet",
        ]
    )
    assert code == 0
    return out


def test_train_writes_bundle_and_model_card(trained):
    meta = json.loads((trained / "bundle.json").read_text())
    assert meta["training"]["protocol"] == "P4"
    assert meta["training"]["train_counts"]["tpdne/fake"] > 0
    assert 0.0 <= meta["threshold"] <= 1.0 and meta["threshold_rule"] == "youden"
    card = (trained / "MODEL_CARD.md").read_text()
    assert "non-commercial" in card and "GPL-3.0" in card
    assert card.index("Terms of use") < card.index("What it does")  # the terms on top
    # Equal treatment on the held-out test split's UTKFace reals (labels from file names).
    stored = meta["equal_treatment"]
    assert stored["threshold"] == meta["threshold"] and stored["images"] > 0
    assert {r["attribute"] for r in stored["rows"]} == {"age", "gender", "race"}
    assert "### Equal treatment: held-out test split" in card


def test_evaluate_writes_report_and_accumulates_scores(small_manifest, cache_dir, tmp_path):
    scores = tmp_path / "model_scores.csv"
    args = [
        "evaluate",
        "--data",
        str(small_manifest),
        "--protocols",
        "P1,P3,P4",
        "--backbones",
        "lite0",
        "--heads",
        "logreg,mlp",
        "--n-boot",
        "100",
        "--cache-dir",
        str(cache_dir),
        "--scores-csv",
        str(scores),
        "--quiet",
    ]
    cv = ["--cv", "3", "--cv-protocols", "P1"]
    assert main([*args, *cv, "--out", str(tmp_path / "r1"), "--run-name", "r1"]) == 0
    report = (tmp_path / "r1" / "report.md").read_text()
    assert "3-fold ROC-AUC over train + val" in report
    for needle in (
        "## P1",
        "## P3",
        "## P4",
        "source-biased",
        "ROC-AUC",
        "flagged/10k",
        "P1_same-source_roc_pr.png",
    ):
        assert needle in report
    # Equal treatment where the data carry group labels (UTKFace's names: P3, P4), not P1;
    # the few UTKFace test photos of this small subset are pooled, and said so.
    assert "### Equal treatment: P3" in report and "### Equal treatment: P1" not in report
    assert "| gender | pooled: " in report
    for png in ("P1_same-source_roc_pr.png", "P3_mixed-source_confusion.png"):
        assert (tmp_path / "r1" / png).read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader((tmp_path / "r1" / "metrics.csv").open()))
    # 3 protocols' test sets (1 + 2 + 2) x 2 heads x 2 threshold kinds
    assert len(rows) == (1 + 2 + 2) * 2 * 2
    assert {r["threshold_kind"] for r in rows} == {"val:youden", "default-0.5"}
    cv_auc = [float(r["cv_roc_auc_mean"]) for r in rows if r["protocol"] == "P1"]
    assert all(0.0 <= v <= 1.0 for v in cv_auc) and len(cv_auc) == 4
    assert all(r["cv_roc_auc_mean"] == "" for r in rows if r["protocol"] != "P1")
    assert main([*args, "--out", str(tmp_path / "r2"), "--run-name", "r2"]) == 0
    acc = list(csv.DictReader(scores.open()))
    assert len(acc) == 2 * len(rows) and {r["run"] for r in acc} == {"r1", "r2"}
    # Same seed, same cache: the second run reproduces the first exactly.
    key = ("protocol", "test_set", "model", "threshold_kind")
    r1 = {tuple(r[k] for k in key): r["roc_auc"] for r in acc if r["run"] == "r1"}
    r2 = {tuple(r[k] for k in key): r["roc_auc"] for r in acc if r["run"] == "r2"}
    assert r1 == r2


def test_evaluate_region_aware_head_input(small_manifest, cache_dir, tmp_path, capsys):
    from facecheck.backbones.registry import load_backbone
    from facecheck.evaluation.data import load_dataset
    from facecheck.features.cache import FeatureCache
    from facecheck.features.extract import FeatureExtractor
    from facecheck.features.views import PooledRegionView

    out = tmp_path / "regions"
    args = ["evaluate", "--data", str(small_manifest), "--protocols", "P1", "--backbones"]
    args += ["lite0", "--heads", "logreg,regionmil", "--head-input", "image+regions"]
    args += ["--n-boot", "50"]
    args += ["--cache-dir", str(cache_dir), "--scores-csv", str(tmp_path / "s.csv")]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    models = {"efficientnet_lite0+regions+logreg", "efficientnet_lite0+regions+regionmil"}
    assert {r["model"] for r in rows} == models
    # The head read the picture's features and the four regions' (5 x 1280), as cached.
    ds = load_dataset(small_manifest)
    ex = FeatureExtractor(
        load_backbone("lite0"), FeatureCache(cache_dir), view=PooledRegionView(with_image=True)
    )
    assert ex.dim == 5 * 1280
    assert FeatureCache(cache_dir).count(ex.key) >= len(ds.where(source="rff"))
    assert main([*args[:4], "P1,P6", *args[5:], "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "takes no P6" in capsys.readouterr().err
    # The region-learning head reads the regions: refused without them.
    plain = [a for a in args if a not in ("--head-input", "image+regions")]
    assert main([*plain, "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "add --head-input image+regions" in capsys.readouterr().err


def test_evaluate_token_head_input(small_manifest, cache_dir, tmp_path, capsys):
    out = tmp_path / "tokens"
    args = ["evaluate", "--data", str(small_manifest), "--protocols", "P1", "--backbones"]
    args += ["lite0", "--heads", "tokenmil", "--head-input", "tokens", "--n-boot", "50"]
    args += ["--cache-dir", str(cache_dir), "--scores-csv", str(tmp_path / "s.csv")]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {r["model"] for r in rows} == {"efficientnet_lite0+tokens+tokenmil"}
    assert all(0 <= float(r["roc_auc"]) <= 1 for r in rows)
    # A head that reads no tokens is refused on them, and the token head without them.
    logreg = [a if a != "tokenmil" else "logreg" for a in args]
    assert main([*logreg, "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "does not read patch tokens" in capsys.readouterr().err
    plain = [a for a in args if a not in ("--head-input", "tokens")]
    assert main([*plain, "--out", str(tmp_path / "z"), "--quiet"]) == 2
    assert "add --head-input tokens" in capsys.readouterr().err


def test_check_scores_good_files_and_reports_bad_ones(trained, face_paths, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(face_paths[0].read_bytes()[:500])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    files = [face_paths[0], broken, text, empty, tmp_path / "missing.jpg", face_paths[8]]
    code = main(["check", "--model", str(trained), "--json", *map(str, files)])
    assert code == 3  # some inputs were invalid
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["input"] for o in out] == [str(f) for f in files]
    assert [o["verdict"] for o in out[1:5]] == ["invalid_image"] * 4
    assert [o["error_code"] for o in out[1:5]] == [
        "corrupt_image",
        "not_an_image",
        "empty_file",
        "not_an_image",
    ]
    for good in (out[0], out[5]):
        assert good["verdict"] in ("real", "fake") and 0 <= good["fake_probability"] <= 1
    # The same image scores the same through the library.
    det = Detector.load(trained)
    assert det.predict_proba([face_paths[0]])[0, 1] == pytest.approx(out[0]["fake_probability"])


def test_check_human_output_and_folders(trained, shared_data, capsys):
    code = main(
        ["check", "--model", str(trained), str(shared_data / "rff" / "real" / "real_00001.jpg")]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "real_00001.jpg" in out and "P(fake)" in out


def test_check_with_unloadable_model(tmp_path, face_paths, capsys):
    assert main(["check", "--model", str(tmp_path), str(face_paths[0])]) == 2
    assert "cannot load the detector" in capsys.readouterr().err


def test_shipped_default_bundle_checks_an_image(face_paths):
    det = Detector.load(default_bundle_path())
    assert det.metadata["training"]["protocol"] == "P8-SEEN"  # round 2 (issue 26)
    card = (default_bundle_path() / "MODEL_CARD.md").read_text()
    # The shipped card carries the equal-treatment table of its held-out test split
    # (benchmarks/shipped_card.py), every attribute with its worst-to-best ratio.
    assert "### Equal treatment: held-out test split" in card
    assert all(f"- {a}: " in card for a in ("age", "gender", "race"))
    assert "**Numeric path**" in card and "cpu_precision.md" in card  # issue 30
    verdicts = det.check(face_paths[:2])
    assert all(v.verdict in ("real", "fake") for v in verdicts)


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "facecheck.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for cmd in ("check", "train", "evaluate", "examples:"):
        assert cmd in out
    bad = subprocess.run(
        [sys.executable, "-m", "facecheck.cli", "train", "--data", "/nowhere", "--out", "/tmp/x"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "no dataset here" in bad.stderr


def test_finetune_one_epoch_with_policy_and_evaluation(small_manifest, tmp_path):
    out = tmp_path / "ft"
    args = ["finetune", "--data", str(small_manifest), "--protocol", "P1"]
    args += ["--network", "baseline_cnn", "--epochs", "1", "--batch-size", "8"]
    args += ["--imbalance", "under", "--augment", "flip", "--device", "cpu"]
    args += ["--target-recall", "0.9", "--evaluate", "--quiet", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threshold_rule"] == "recall:0.9"
    assert summary["val"]["recall"] >= 0.9  # the policy reaches its target on validation
    assert set(summary["test"]) == {"same-source"}
    assert summary["config"]["imbalance"] == "under"
    assert (out / "model.pt").is_file() and (out / "checkpoints" / "last.pt").is_file()
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1"]


def test_train_max_fpr_holds_each_real_source_on_validation(small_manifest, cache_dir, tmp_path):
    from facecheck.evaluation.data import load_dataset
    from facecheck.evaluation.protocols import build

    out = tmp_path / "fpr"
    args = ["train", "--data", str(small_manifest), "--protocol", "P4", "--out", str(out)]
    assert main([*args, "--max-fpr", "0.1", "--cache-dir", str(cache_dir), "--quiet"]) == 0
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["threshold_rule"] == "fpr:0.1"
    det = Detector.load(out)
    val = build("P4", load_dataset(small_manifest)).split.val
    reals = [r for r in val if r.label == "real"]
    scores = det.predict_proba([r.path for r in reals])[:, 1]
    sources = {r.source for r in reals}
    assert len(sources) == 2  # rff and UTKFace: each is held to the rate, not their mix
    for src in sources:
        mine = np.array([r.source == src for r in reals])
        assert (scores[mine] >= det.threshold).mean() <= 0.1 + 1e-9


def test_train_with_augmentation_fits_on_processed_copies(small_manifest, cache_dir, tmp_path):
    """``train --train-augment``: one processed copy per training image joins the fit (the
    head differs from the plain one), recorded in the bundle and its model card."""
    common = ["--data", str(small_manifest), "--protocol", "P4", "--cache-dir", str(cache_dir)]
    plain, aug = tmp_path / "plain", tmp_path / "aug"
    assert main(["train", *common, "--out", str(plain), "--quiet"]) == 0
    args = ["--train-augment", "field", "--augment-sample", "6", "--quiet"]
    assert main(["train", *common, "--out", str(aug), *args]) == 0
    meta = json.loads((aug / "bundle.json").read_text())
    # At most 6 images of each source and label get a copy (the faceless ones none).
    most = sum(min(6, n) for n in meta["training"]["train_counts"].values())
    record = meta["training"]["train_augment"]
    assert record["chain"] == "field" and record["per_source_label"] == 6
    assert most - 3 <= record["copies"] <= most
    assert (
        meta["training"]["data_fingerprint"]
        == json.loads((plain / "bundle.json").read_text())["training"]["data_fingerprint"]
    )
    assert "`field` chains" in (aug / "MODEL_CARD.md").read_text()
    faces = [r["path"] for r in map(json.loads, small_manifest.read_text().splitlines())][:4]
    paths = [small_manifest.parent / f for f in faces]
    assert not np.allclose(
        Detector.load(plain).predict_proba(paths), Detector.load(aug).predict_proba(paths)
    )


def test_calibrate_sets_the_threshold_from_a_deployments_photos(
    trained, shared_data, cache_dir, tmp_path, capsys
):
    import shutil

    photos = tmp_path / "ours"
    photos.mkdir()
    for p in sorted((shared_data / "utkface" / "real").glob("*.jpg"))[:40]:
        shutil.copy(p, photos / p.name)
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    before = json.loads((trained / "bundle.json").read_text())
    out = tmp_path / "calibrated"
    args = ["calibrate", "--model", str(trained), "--max-fpr", "0.1", "--out", str(out)]
    assert main([*args, "--cache-dir", str(cache_dir), str(photos)]) == 0
    printed = capsys.readouterr()
    assert "1 left out" in printed.out and "fewer than about 100" in printed.err
    meta = json.loads((out / "bundle.json").read_text())
    record = meta["deployment_calibration"]
    assert record["n_photos"] == 40 and record["n_left_out"] == 1
    assert record["previous_threshold"] == before["threshold"]
    assert meta["threshold_rule"] == "fpr:0.1 on 40 deployment photos"
    assert json.loads((trained / "bundle.json").read_text()) == before  # the source is kept
    det = Detector.load(out)
    assert det.threshold == meta["threshold"] and det.version == before["model_version"]
    scores = det.predict_proba(sorted(photos.glob("*.jpg"))[:40])[:, 1]
    assert (scores >= det.threshold).mean() <= 0.1  # at most 4 of the 40 flagged
    # The lowest such threshold: the highest-scoring photo left unflagged sits just below.
    assert (scores >= np.max(scores[scores < det.threshold])).mean() > 0.1
    assert "facecheck calibrate" in (out / "MODEL_CARD.md").read_text()
    # A labelled sample of the deployment's own photos (a manifest's "groups" column): the
    # equal-treatment table at the new threshold, printed and kept in the bundle and card.
    rows = [
        {"path": n.name, "label": "real", "source": "bank", "groups": {"sex": n.name.split("_")[1]}}
        for n in sorted(photos.glob("*.jpg"))[:40]
    ]
    (photos / "groups.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    grouped = tmp_path / "grouped"
    labelled = ["--groups", str(photos / "groups.jsonl"), "--out", str(grouped)]
    assert main([*args[:-2], *labelled, "--cache-dir", str(cache_dir), str(photos)]) == 0
    assert "### Equal treatment:" in capsys.readouterr().out
    stored = json.loads((grouped / "bundle.json").read_text())["deployment_equal_treatment"]
    assert stored["images"] == 40 and {r["attribute"] for r in stored["rows"]} == {"sex"}
    assert "the deployment's labelled sample" in (grouped / "MODEL_CARD.md").read_text()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"nothing")
    assert main([*args[:-2], "--out", str(tmp_path / "x"), str(tmp_path / "junk")]) == 2
    assert "could be scored" in capsys.readouterr().err


def test_policy_options_are_exclusive(small_manifest, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "train",
                "--data",
                str(small_manifest),
                "--out",
                str(tmp_path / "x"),
                "--target-recall",
                "0.9",
                "--review-budget",
                "0.01",
            ]
        )
    assert "not allowed with" in capsys.readouterr().err


def test_evaluate_p7_scores_the_held_out_source(small_manifest, cache_dir, tmp_path):
    from facecheck.evaluation.data import load_dataset

    hard = sum(r.difficulty == "hard" for r in load_dataset(small_manifest))
    assert hard > 0
    args = ["evaluate", "--data", str(small_manifest), "--protocols", "P7-HARD,P7-TPDNE"]
    args += ["--backbones", "lite0,lite0+mnv2", "--heads", "logreg", "--n-boot", "50", "--quiet"]
    args += ["--cache-dir", str(cache_dir), "--scores-csv", str(tmp_path / "s.csv")]
    assert main([*args, "--out", str(tmp_path / "p7")]) == 0
    rows = [
        r
        for r in csv.DictReader((tmp_path / "p7" / "metrics.csv").open())
        if r["threshold_kind"] == "val:youden"
    ]
    assert {r["backbone"] for r in rows} == {
        "efficientnet_lite0",
        "efficientnet_lite0+mobilenet_v2",  # features concatenated
    }
    out = {
        r["protocol"]: r
        for r in rows
        if r["test_set"] == "out-of-source" and r["backbone"] == "efficientnet_lite0"
    }
    # Every held-out image is scored: all hard edits, all tpdne faces of the subset.
    assert int(out["P7-HARD"]["n_fake"]) == hard
    assert int(out["P7-TPDNE"]["n_fake"]) == 20
    assert all(0.0 <= float(r["roc_auc"]) <= 1.0 for r in rows)
    report = (tmp_path / "p7" / "report.md").read_text()
    assert "## Generalisation to unseen sources (P7)" in report
    assert "## Source-bias audit" in report
    audit = json.loads((tmp_path / "p7" / "audit.json").read_text())
    # Within rff (P7-HARD) the uniform re-encoding leaves no JPEG-quality shortcut; the
    # GAN-vs-real sets mix UTKFace's q75 files with q95 ones.
    assert audit["tests"]["P7-HARD/out-of-source"]["shortcut_auc"]["jpeg_quality"] == 0.5
    assert audit["tests"]["P7-TPDNE/out-of-source"]["shortcut_auc"]["jpeg_quality"] > 0.6
    assert audit["real_source_probe"]["rff vs utkface"]["roc_auc"] > 0.9


def test_evaluate_a_saved_detector_as_it_ships(small_manifest, cache_dir, tmp_path, capsys):
    """`evaluate --model`: the bundle's own head and threshold on the test sets, with
    processing chains; test images from its training split are refused."""
    bundle = tmp_path / "all"
    common = ["--data", str(small_manifest), "--cache-dir", str(cache_dir), "--quiet"]
    assert main(["train", "--protocol", "ALL", "--out", str(bundle), *common]) == 0
    threshold = json.loads((bundle / "bundle.json").read_text())["threshold"]
    args = ["evaluate", "--model", str(bundle), "--n-boot", "50", *common]
    args += ["--scores-csv", str(tmp_path / "s.csv")]  # not the checkout's reports/
    out = tmp_path / "report"
    run = [*args, "--protocols", "ALL,P8-SEEN", "--perturb", "jpeg70,in_photo"]
    run += ["--perturb-protocols", "ALL", "--perturb-sample", "1"]
    assert main([*run, "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "## ALL" in report and "## P8-SEEN" in report
    assert "| processing chains | jpeg70, in_photo |" in report
    assert f"| {threshold:.3f} |" in report  # the bundle's threshold, not a refitted one
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    processed = [r for r in rows if r["test_set"] == "all+in_photo"]
    # One processed image of each of the test split's five source x label strata.
    assert processed and all(int(r["n"]) == 5 for r in processed)
    # Another seed splits ALL differently: its test images were training images.
    capsys.readouterr()
    assert main([*args, "--protocols", "ALL", "--seed", "1", "--out", str(tmp_path / "x")]) == 2
    assert "were in the detector's training or validation data" in capsys.readouterr().err


def test_augmentation_draws_keep_every_source_and_labels_share(full_dataset):
    """--augment-fraction processes the same share of each source and label (so processed
    copies cannot teach the head which class was processed more); --augment-sample caps
    each at N, which does not keep the shares (kept for the recorded run that showed it)."""
    from collections import Counter

    from facecheck.cli.common import _sampled

    before = Counter((r.source, r.label) for r in full_dataset)
    half = Counter((r.source, r.label) for r in _sampled(full_dataset, 0, 0, 0.5))
    assert half == {k: max(1, round(n * 0.5)) for k, n in before.items()}
    capped = Counter((r.source, r.label) for r in _sampled(full_dataset, 100, 0))
    assert capped == {k: min(100, n) for k, n in before.items()}
    assert _sampled(full_dataset, 0, 0) is full_dataset
    assert list(_sampled(full_dataset, 0, 1, 0.5)) != list(_sampled(full_dataset, 0, 0, 0.5))
    with pytest.raises(ValueError, match="fraction"):
        _sampled(full_dataset, 0, 0, 1.5)


def test_augment_validation_holds_processed_reals_to_the_rate(
    small_manifest, cache_dir, tmp_path, capsys
):
    """``--augment-validation``: validation's processed copies join the threshold choice
    as groups of their own, so each camera's re-saved reals are held to the fpr: rate as
    well as its clean ones (the threshold a shifted stream would otherwise break)."""
    from facecheck.cli.common import _sampled
    from facecheck.evaluation.data import load_dataset
    from facecheck.evaluation.protocols import build
    from facecheck.image.perturb import perturb

    out = tmp_path / "augval"
    args = ["train", "--data", str(small_manifest), "--protocol", "P4", "--out", str(out)]
    args += ["--train-augment", "field", "--augment-sample", "6", "--augment-validation"]
    assert main([*args, "--max-fpr", "0.1", "--cache-dir", str(cache_dir), "--quiet"]) == 0
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["training"]["train_augment"]["validation"] is True
    det = Detector.load(out)
    val = build("P4", load_dataset(small_manifest)).split.val
    processed = set(_sampled(val, 6, 0).hashes)  # train's draw (--augment-sample 6, seed 0)
    for source in ("rff", "utkface"):
        reals = [r for r in val if r.label == "real" and r.source == source]
        copies = [perturb(r.path, "field") for r in reals if r.sha256 in processed]
        for images in ([r.path for r in reals], copies):
            features = det.features(images, skip_faceless=True)
            scores = det.score_features(features[~np.isnan(features).any(axis=1)])
            assert (scores >= det.threshold).mean() <= 0.1 + 1e-9, source
    for command in ("train", "evaluate"):
        assert main([command, "--data", "no-such", "--out", str(out), "--augment-validation"]) != 0
        assert "--augment-validation needs --train-augment" in capsys.readouterr().err


def test_check_streams_in_order_and_its_exit_status_says_what_it_found(
    shared_data, tmp_path, capsys
):
    """0 all real, 1 some flagged, 3 some not judged; lines in input order, one per image,
    each printed as soon as it is scored (a mixed batch: good, corrupt, no face)."""
    from facecheck.cli.check import _chunks

    real = sorted((shared_data / "utkface" / "real").glob("*.jpg"))[0]
    fake = shared_data / "gan" / "fake" / "fakefaces_faces_10.jpg"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(fake.read_bytes()[:300])
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (90, 90, 90)).save(blank)
    assert main(["check", "--json", str(real)]) == 0
    assert main(["check", "--json", str(real), str(fake)]) == 1
    capsys.readouterr()
    files = [real, broken, fake, blank, real]
    assert main(["check", "--json", *map(str, files)]) == 3
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["input"] for o in out] == [str(f) for f in files]
    assert [o["verdict"] for o in out] == ["real", "invalid_image", "fake", "no_face", "real"]
    # Scored in growing chunks: the first line needs one image, not the whole batch.
    assert [len(c) for c in _chunks(list(range(30)))] == [1, 2, 4, 8, 8, 7]


def test_the_shipped_recipe_is_the_shipped_bundles(tmp_path, small_manifest, capsys):
    """`train --recipe shipped` makes the choices the shipped bundle records (so `make
    bundle` cannot drift from it); the command line wins over a recipe; a recipe key that
    is no option, or a recipe that needs the synthetic fakes without them, is refused."""
    from facecheck.cli.main import _with_recipe, build_parser

    parser = build_parser()
    argv = ["train", "--recipe", "shipped", "--out", str(tmp_path / "b")]
    args = _with_recipe(parser, parser.parse_args(argv), argv)
    meta = json.loads((default_bundle_path() / "bundle.json").read_text())
    training = meta["training"]
    assert (args.backbone, args.head, args.head_input) == (
        meta["backbone"]["name"],
        meta["head"]["kind"],
        meta["head_input"],
    )
    assert args.threshold_rule == meta["threshold_rule"] and args.max_fpr is None
    assert (args.protocol, args.seed) == (training["protocol"], training["seed"])
    assert args.train_augment == training["train_augment"]["chain"]
    assert args.augment_validation == training["train_augment"]["validation"]
    assert args.face_stage == meta["face_stage"]["mode"]
    argv += ["--backbone", "efficientnet_lite0"]
    assert _with_recipe(parser, parser.parse_args(argv), argv).backbone == "efficientnet_lite0"
    bad = tmp_path / "bad.toml"
    bad.write_text('backbone = "clip_vit_b16_l8"\nwings = 2\n')
    assert main(["train", "--recipe", str(bad), "--out", str(tmp_path / "c")]) == 2
    assert "wings are no options" in capsys.readouterr().err
    out = tmp_path / "d"
    code = main(["train", "--recipe", "shipped", "--data", str(small_manifest), "--out", str(out)])
    assert code == 2 and "add --synthetic DIR" in capsys.readouterr().err and not out.exists()
