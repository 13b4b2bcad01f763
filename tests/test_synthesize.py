"""A synthetic set made from the data's reals (issue 26): written reproducibly, every fake
in its parents' P8 split, out of training with its family or its camera, and kept out of
the earlier protocols."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from facecheck.cli.main import main
from facecheck.evaluation.data import SPLITS, load_manifest, with_synthetic
from facecheck.evaluation.protocols import build

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def made(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    assert main(["synthesize", "--data", str(shared_data), "--out", str(out), "--n-train", "2",
                 "--quiet"]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="module")
def with_made(full_dataset, made):
    return with_synthetic(full_dataset, made)


def _split_of(protocol) -> dict[str, str]:
    return {r.sha256: name for name in SPLITS for r in protocol.split[name]}


def test_the_set_is_written_with_masks_and_parents_and_is_seeded(
    made, tmp_path, shared_data, full_dataset
):
    rows = [json.loads(line) for line in (made / "manifest.jsonl").read_text().splitlines()]
    by_hash = {r.sha256: r.path for r in full_dataset}
    sources = {r["source"] for r in rows}
    assert sources == {f"{k}_{c}" for k in ("morph", "swap", "sbi") for c in ("rff", "utkface")}
    for row in rows:
        image, mask = Image.open(made / row["path"]), Image.open(made / row["mask"])
        assert image.format == "JPEG" and mask.size == image.size
        # Compressed as its first parent was: the file format and JPEG tables are no cue.
        with Image.open(by_hash[row["parents"][0]]) as parent:
            assert image.quantization == parent.quantization
        assert np.asarray(mask).max() > 0
        assert len(row["parents"]) == (1 if row["source"].startswith("sbi") else 2)
    # UTKFace parents' labels come along (for recall by group).
    assert any(r["groups"].get("gender") in ("male", "female") for r in rows)
    again = tmp_path / "again"
    assert main(["synthesize", "--data", str(shared_data), "--out", str(again), "--n-train", "2",
                 "--kinds", "sbi", "--quiet"]) == 0  # fmt: skip
    for row in (json.loads(x) for x in (again / "manifest.jsonl").read_text().splitlines()):
        assert (again / row["path"]).read_bytes() == (made / row["path"]).read_bytes()


def test_every_fake_follows_its_parents_split(with_made):
    protocol = build("P8-SEEN", with_made, 0)
    where = _split_of(protocol)
    made = [r for r in with_made if r.parents]
    assert made and all(r.sha256 in where for r in made)
    for r in made:
        assert {where[h] for h in r.parents} == {where[r.sha256]}
    assert {where[r.sha256] for r in made} == set(SPLITS)
    # Their families are reported beside the others, against the test reals.
    assert {"morph", "faceswap", "self_blend"} <= set(protocol.test_sets)


def test_leave_one_family_out_drops_the_synthetic_family(with_made):
    protocol = build("P8-LOFO-MORPH", with_made, 0)
    trained = [r for part in (protocol.split.train, protocol.split.val) for r in part]
    assert not any(r.family == "morph" for r in trained)
    assert any(r.family == "faceswap" for r in trained)  # the other synthetic ones stay
    held = protocol.test_sets["held-out"]
    assert sum(r.family == "morph" for r in held) == sum(r.family == "morph" for r in with_made)
    swaps = build("P8-LOFO-FACESWAP", with_made, 0).test_sets["held-out"]
    assert {r.source for r in swaps if r.label == "fake"} >= {"celebdf_dfgc", "swap_rff"}


def test_leave_one_camera_out_drops_fakes_made_from_that_camera(with_made):
    protocol = build("P8-CAMERA-RFF", with_made, 0)
    rff = {r.sha256 for r in with_made if r.source == "rff" and r.label == "real"}
    for part in (protocol.split.train, protocol.split.val):
        assert not any(set(r.parents) & rff for r in part)
        assert any(r.source == "sbi_utkface" for r in part)


def test_the_earlier_protocols_ignore_synthetic_fakes(full_dataset, with_made):
    for name in ("ALL", "P1"):
        before, after = build(name, full_dataset, 0), build(name, with_made, 0)
        assert _split_of(before) == _split_of(after)


def test_fakes_made_from_other_data_are_refused(full_dataset, made, tmp_path):
    rows = (made / "manifest.jsonl").read_text().splitlines()
    row = json.loads(rows[0]) | {"parents": ["0" * 64]}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / row["path"]).parent.mkdir(parents=True)
    (tmp_path / row["path"]).write_bytes((made / row["path"]).read_bytes())
    with pytest.raises(ValueError, match="not made from this data"):
        with_synthetic(full_dataset, tmp_path)
    assert load_manifest(tmp_path / "manifest.jsonl").records[0].parents == ("0" * 64,)
