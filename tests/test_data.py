"""Loading, hashes, duplicates, hash-grouped splits and the protocol builders, on real data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from facecheck.evaluation.data import SPLITS, Record, grouped_folds, load_dataset, split_by_hash
from facecheck.evaluation.protocols import P2_FAKES, P3_RATIO, build


def _split_hashes(split) -> dict[str, set[str]]:
    return {s: {r.sha256 for r in split[s]} for s in SPLITS}


def test_manifest_counts_match_readme(full_dataset):
    assert full_dataset.counts() == {
        "fakefaces/fake": 901,
        "rff/fake": 960,
        "rff/real": 1081,
        "tpdne/fake": 564,
        "utkface/real": 9780,
    }
    assert all(len(r.sha256) == 64 for r in full_dataset)


@pytest.mark.parametrize("name", ["P1", "P2", "P3", "P3-212", "P4", "ALL"])
def test_no_hash_in_two_splits(full_dataset, name):
    proto = build(name, full_dataset, seed=0)
    h = _split_hashes(proto.split)
    assert not h["train"] & h["val"]
    assert not h["train"] & h["test"]
    assert not h["val"] & h["test"]
    for test_set in proto.test_sets.values():  # every reported test set is inside test
        assert {r.sha256 for r in test_set} <= h["test"]
    assert proto.headline in proto.test_sets


def test_protocol_sizes_and_ratios(full_dataset):
    def total(p):
        return sum(len(p.split[s]) for s in SPLITS)

    def fakes(p):
        return sum(int(p.split[s].y.sum()) for s in SPLITS)

    p1 = build("P1", full_dataset)
    assert total(p1) == 1081 + 960 and fakes(p1) == 960
    p2 = build("P2", full_dataset)
    assert fakes(p2) == P2_FAKES and total(p2) == 1081 + P2_FAKES
    assert {r.source for s in SPLITS for r in p2.split[s]} == {"rff"}
    p3 = build("P3", full_dataset)
    assert fakes(p3) == 960 and total(p3) - fakes(p3) == 1081 + 9780
    assert 11.0 < (total(p3) - fakes(p3)) / fakes(p3) < 11.5  # about 1:11
    assert {r.source for r in p3.test_sets["same-source"]} == {"rff"}
    assert p3.test_sets["mixed-source"] is p3.split.test
    p3b = build("P3-212", full_dataset)
    ratio = (total(p3b) - fakes(p3b)) / fakes(p3b)
    assert abs(ratio - P3_RATIO) < 5
    p4 = build("P4", full_dataset)
    assert fakes(p4) == 564 + 901 and total(p4) - fakes(p4) == 10861
    assert {r.source for r in p4.split.train.where(label="fake")} == {"tpdne", "fakefaces"}


def test_split_fractions_and_stratification(full_dataset):
    p1 = build("P1", full_dataset)
    n = {s: len(p1.split[s]) for s in SPLITS}
    assert abs(n["train"] / sum(n.values()) - 0.8) < 0.01
    assert abs(n["val"] - n["test"]) <= 2
    for s in SPLITS:
        share = p1.split[s].y.mean()
        assert abs(share - 960 / 2041) < 0.02, s
    # P3 stratifies by source too: the rff share of test matches the whole.
    p3 = build("P3", full_dataset)
    rff_share = len(p3.test_sets["same-source"]) / len(p3.split.test)
    assert abs(rff_share - 2041 / 11821) < 0.02


def test_seed_controls_split_and_draw(full_dataset):
    a, b, c = (build("P2", full_dataset, seed=s) for s in (0, 0, 1))
    assert _split_hashes(a.split) == _split_hashes(b.split)
    assert _split_hashes(a.split)["test"] != _split_hashes(c.split)["test"]
    fakes = {s: {r.sha256 for r in p.split.train.where(label="fake")} for s, p in ((0, a), (1, c))}
    assert fakes[0] != fakes[1]


def test_split_does_not_depend_on_file_order(full_dataset):
    p1 = build("P1", full_dataset)
    shuffled = full_dataset.subset(reversed(full_dataset.records))
    assert _split_hashes(build("P1", shuffled).split) == _split_hashes(p1.split)


def test_grouped_folds_keep_copies_together_and_follow_the_seed(full_dataset):
    p1 = build("P1", full_dataset)
    pool = list(p1.split.train)
    # A copy of every tenth image (same content hash) must land in its original's fold.
    records = pool + pool[::10]
    y = np.array([r.y for r in records])
    folds = grouped_folds(records, y, k=5, seed=0)
    assert len(folds) == 5
    seen = np.zeros(len(records), int)
    for train, test in folds:
        seen[test] += 1
        assert not {records[i].sha256 for i in train} & {records[i].sha256 for i in test}
        assert abs(y[test].mean() - y.mean()) < 0.03  # stratified
    assert (seen == 1).all()
    again = grouped_folds(records, y, k=5, seed=0)
    other = grouped_folds(records, y, k=5, seed=1)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again, strict=True))
    assert any(set(a[1]) != set(b[1]) for a, b in zip(folds, other, strict=True))


def test_duplicates_follow_their_hash(tmp_path, shared_data):
    src = sorted((shared_data / "rff" / "real").glob("*.jpg"))[:30]
    fakes = sorted((shared_data / "rff" / "fake").glob("*.jpg"))[:30]
    (tmp_path / "real").mkdir()
    (tmp_path / "fake").mkdir()
    for p in src:
        shutil.copy(p, tmp_path / "real" / p.name)
    for p in fakes:
        shutil.copy(p, tmp_path / "fake" / p.name)
    for i in range(5):  # byte-identical copies under other names
        shutil.copy(src[i], tmp_path / "real" / f"copy_{i}.jpg")
    shutil.copy(src[10], tmp_path / "fake" / "conflict.jpg")  # same bytes, other label
    ds = load_dataset(tmp_path)
    assert len(ds.duplicates) == 6
    # The contradictory image is dropped from both classes, the plain copies are kept.
    assert len(ds) == 30 + 5 + 30 - 1
    assert all(r.sha256 != ds.duplicates[next(iter(ds.duplicates))] for r in ds)
    split = split_by_hash(ds, seed=3)
    where = {}
    for s in SPLITS:
        for r in split[s]:
            assert where.setdefault(r.sha256, s) == s  # every copy in one split


def test_manifest_errors_are_clear(tmp_path):
    bad = tmp_path / "manifest.jsonl"
    bad.write_text(json.dumps({"path": "x.jpg", "label": "maybe"}) + "\n")
    with pytest.raises(ValueError, match="label must be one of"):
        load_dataset(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match=":1: bad manifest line"):
        load_dataset(bad)
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "nowhere")


def test_split_needs_both_classes(full_dataset):
    only_real = full_dataset.where(label="real", source="rff")
    with pytest.raises(ValueError, match="at least 3 fake"):
        split_by_hash(only_real)


def test_rff_difficulty_from_name(shared_data):
    from pathlib import Path

    assert Record(Path("rff/fake/easy_88_1101.jpg"), "fake").difficulty == "easy"
    assert Record(Path("rff/fake/hard_3_111.jpg"), "fake").difficulty == "hard"
    assert Record(Path("rff/real/real_00001.jpg"), "real").difficulty is None


def test_p7_never_trains_on_the_held_out_source(full_dataset):
    from dataclasses import replace

    from facecheck.evaluation.protocols import expand

    names = expand(["P1", "P7"])
    assert names[0] == "P1" and len(names) == 6
    held = {
        "P7-TPDNE": lambda r: r.source == "tpdne",
        "P7-FAKEFACES": lambda r: r.source == "fakefaces",
        "P7-HARD": lambda r: r.difficulty == "hard",
        "P7-UTKFACE": lambda r: r.source == "utkface",
        "P7-RFF": lambda r: r.source == "rff" and r.label == "real",
    }
    for name, is_held in held.items():
        p = build(name, full_dataset, 0)
        train_val = p.split.train.records + p.split.val.records
        assert not any(is_held(r) for r in train_val), name
        out, inside = p.test_sets["out-of-source"], p.test_sets["in-source"]
        assert p.headline == "out-of-source" and inside is p.split.test
        # Every held-out image is tested, beside the in-source test images of the other class.
        assert sum(is_held(r) for r in out) == sum(is_held(r) for r in full_dataset), name
        assert set(out.y) == {0, 1} and not any(is_held(r) for r in inside)
        assert {r.path for r in out if not is_held(r)} <= {r.path for r in inside}
        assert (name == "P7-HARD") == (not p.source_biased)
    # A held-out image whose bytes also sit in the training pool is refused, not tested.
    recs = [replace(r, sha256=str(r.path)) for r in full_dataset.records]
    tpdne = next(r for r in recs if r.source == "tpdne")
    twin = replace(next(r for r in recs if r.source == "fakefaces"), sha256=tpdne.sha256)
    doubled = full_dataset.subset([*recs, twin])
    with pytest.raises(AssertionError, match="held-out images are in train/val"):
        for seed in range(20):  # the twin lands in train or val for most seeds
            build("P7-TPDNE", doubled, seed)
