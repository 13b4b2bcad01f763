"""Equal treatment (issue 31): group labels from the data, the group table and its ratio."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from facecheck.evaluation.data import Record, load_manifest
from facecheck.evaluation.groups import (
    UNKNOWN,
    group_table,
    groups_of,
    meets_goal,
    recall_gap,
    section,
    utkface_groups,
    worst_to_best,
)
from facecheck.evaluation.weights import group_weights, source_weights
from facecheck.heads.models import LogisticHead


def test_every_utkface_name_in_the_data_parses(shared_data):
    names = sorted(p.name for p in (shared_data / "utkface" / "real").glob("*.jpg"))
    assert len(names) == 9780
    parsed = [utkface_groups(n) for n in names]
    fields = [n.split(".")[0].split("_") for n in names]
    full = [f for f in fields if len(f) == 4]
    assert sum(g["gender"] == "female" for g in parsed) == sum(f[1] == "1" for f in full)
    assert sum(g["race"] == "Black" for g in parsed) == sum(f[2] == "1" for f in full)
    assert all(g["age"] != UNKNOWN for g in parsed)
    # The two names with a field missing keep their age and leave the others unknown.
    short = [g for g, f in zip(parsed, fields, strict=True) if len(f) == 3]
    assert len(short) == 2 and all(g["gender"] == g["race"] == UNKNOWN for g in short)
    assert utkface_groups("61_3_20170109150557335.jpg.chip.jpg")["age"] == "60+"
    assert utkface_groups("7_0_2_20170116174525125.jpg.chip.jpg") == {
        "age": "0-17",
        "gender": "male",
        "race": "Asian",
    }
    assert set(utkface_groups("real_00001.jpg").values()) == {UNKNOWN}


def test_a_manifest_column_supplies_groups(tmp_path):
    lines = [
        {"path": "a.jpg", "label": "real", "source": "bank", "groups": {"gender": "female"}},
        {"path": "b.jpg", "label": "real", "source": "bank"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    a, b = load_manifest(tmp_path / "m.jsonl").records
    assert groups_of(a) == {"gender": "female"} and groups_of(b) is None
    utk = Record(tmp_path / "30_1_3_20170109150557335.jpg.chip.jpg", "real", "utkface")
    assert groups_of(utk) == {"age": "30-44", "gender": "female", "race": "Indian"}
    (tmp_path / "bad.jsonl").write_text(json.dumps({**lines[0], "groups": ["female"]}))
    with pytest.raises(ValueError, match="groups must be an object"):
        load_manifest(tmp_path / "bad.jsonl")


def test_the_group_table_on_a_constructed_example():
    # 100 women (10 flagged), 50 men (10 flagged), 5 of "x" (pooled), 3 unlabelled; fakes:
    # 20 women's, all caught but 2.
    y, flagged, groups = [], [], []
    for gender, n, k in (("female", 100, 10), ("male", 50, 10), ("x", 5, 5)):
        y += [0] * n
        flagged += [True] * k + [False] * (n - k)
        groups += [{"gender": gender}] * n
    y += [1] * 20 + [0] * 3
    flagged += [True] * 18 + [False] * 2 + [True] * 3
    groups += [{"gender": "female"}] * 20 + [None] * 3
    rows = group_table(y, flagged, groups, n_boot=200)
    by = {r.group: r for r in rows}
    assert set(by) == {"female", "male", "pooled: x", "overall"}
    assert by["female"].n_real == 100 and by["female"].flagged == pytest.approx(0.10)
    assert by["female"].recall == pytest.approx(0.9) and by["female"].n_fake == 20
    assert by["male"].flagged == pytest.approx(0.20) and by["male"].recall is None
    assert by["overall"].n_real == 155 and by["overall"].flagged == pytest.approx(25 / 155)
    lo, hi = by["male"].ci
    assert lo < 0.2 < hi and lo >= 0.0 and hi <= 1.0
    w = worst_to_best(rows, "gender")
    assert (w["worst"], w["best"]) == ("male", "female") and w["ratio"] == pytest.approx(2.0)
    assert not meets_goal(rows, "gender")
    text = "\n".join(section(rows, "test"))
    assert "| gender | male | 50 | 20.0%" in text and "misses the goal" in text
    # Both rates at most 2%: the goal holds whatever the ratio; equal rates hold too.
    even = group_table([0] * 200, [False] * 199 + [True], [{"g": "a"}] * 100 + [{"g": "b"}] * 100)
    assert meets_goal(even, "g") and math.isinf(worst_to_best(even, "g")["ratio"])
    assert np.isnan(worst_to_best(rows, "age")["ratio"])


def test_recall_by_group_carries_its_ci_and_the_gap_is_judged_against_it():
    # Fakes: 40 of "a" (36 caught), 10 of "b" (7 caught); overall 43 of 50 = 86%.
    y = [0] * 60 + [1] * 50
    flagged = [False] * 60 + [True] * 36 + [False] * 4 + [True] * 7 + [False] * 3
    groups = [{"g": "a"}] * 30 + [{"g": "b"}] * 30 + [{"g": "a"}] * 40 + [{"g": "b"}] * 10
    rows = group_table(y, flagged, groups, n_boot=500)
    by = {r.group: r for r in rows}
    assert by["b"].recall == pytest.approx(0.7)
    lo, hi = by["b"].recall_ci
    assert lo < 0.7 < hi
    gap = recall_gap(rows, "g")
    assert gap["group"] == "b" and gap["gap"] == pytest.approx(0.86 - 0.7)
    assert gap["within_ci"] == (lo <= 0.86 <= hi)
    text = "\n".join(section(rows, "test"))
    assert "70.0% [" in text and "beyond the goal (3 points)" in text
    assert recall_gap(group_table([0, 0], [False, True], [{"g": "a"}] * 2), "g") is None


def _rec(source: str, label: str, gender: str | None, i: int) -> Record:
    groups = (("gender", gender),) if gender else ()
    return Record(f"{source}/{label}/{i}.jpg", label, source, sha256=f"{i:064x}", groups=groups)


def test_group_weights_equalise_groups_within_each_source_and_class():
    recs = [_rec("utk", "real", "female", i) for i in range(30)]
    recs += [_rec("utk", "real", "male", 100 + i) for i in range(10)]
    recs += [_rec("utk", "fake", "female", 200 + i) for i in range(4)]
    recs += [_rec("utk", "fake", "male", 300 + i) for i in range(4)]
    recs += [_rec("rff", "real", None, 400 + i) for i in range(5)]
    w = group_weights(recs, ["gender"])
    assert w[:30].sum() == pytest.approx(w[30:40].sum()) == pytest.approx(20.0)
    assert w[:40].sum() == pytest.approx(40)  # the stratum keeps its total
    assert np.allclose(w[40:48], 1.0) and np.allclose(w[48:], 1.0)  # equal already; unlabelled
    assert np.allclose(group_weights(recs, []), 1.0)
    # Sources: 40 utk reals and 5 rff reals -> each 22.5 in total; the fakes, one source.
    w = source_weights(recs)
    assert w[:40].sum() == pytest.approx(w[48:].sum()) == pytest.approx(22.5)
    assert np.allclose(w[40:48], 1.0)


def test_the_logistic_head_follows_its_sample_weights():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = (X[:, 0] + 0.3 * rng.normal(size=400) > 0).astype(int)
    # Rows with a large weight all say "fake": the weighted head moves towards them.
    w = np.where((X[:, 1] > 1.0) & (y == 0), 50.0, 1.0)
    plain = LogisticHead(C=1.0).fit(X, y)
    weighted = LogisticHead(C=1.0).fit(X, np.where(w > 1, 1, y), sample_weight=w)
    probe = np.array([[0.0, 2.0, 0.0]])
    assert weighted.predict_proba(probe)[0, 1] > plain.predict_proba(probe)[0, 1] + 0.2
    with pytest.raises(ValueError, match="one positive weight per row"):
        LogisticHead(C=1.0).fit(X, y, sample_weight=np.zeros(400))
