"""Reviewed cases back into training: the export, `train --add-manifest`, the agreement report."""

from __future__ import annotations

import datetime as dt
import json

from facecheck.cli.main import main
from facecheck.evaluation.data import load_dataset, with_hashes
from facecheck.evaluation.protocols import build
from facecheck.service.feedback import agreement, agreement_csv, export

LEASE = dt.timedelta(minutes=5)


def _case(store, data: bytes | None, verdict: str, p: float) -> tuple[str, int]:
    check_id, case_id, _ = store.add_check(
        {"verdict": verdict, "fake_probability": p, "model_version": "m1", "timing_ms": 5.0},
        api_key_id=None,
        external_id=None,
        image=data,
        media_type="image/jpeg",
        open_case=True,
    )
    return check_id, case_id


def _decide(store, reviewer: int, case_id: int, decision: str) -> None:
    assert store.claim(case_id, reviewer, LEASE) and store.decide(case_id, reviewer, decision)


def test_export_writes_decided_cases_with_the_reviewers_labels(store, shared_data, tmp_path):
    ann = store.add_reviewer("ann", "password-a")
    real = sorted((shared_data / "rff" / "real").glob("*.jpg"))[:3]
    fake = sorted((shared_data / "rff" / "fake").glob("*.jpg"))[:2]
    decided = {}
    for path, label in [(p, "real") for p in real] + [(p, "fake") for p in fake]:
        check_id, case_id = _case(store, path.read_bytes(), "review", 0.6)
        _decide(store, ann, case_id, label)
        decided[check_id] = (label, path.read_bytes())
    _case(store, real[0].read_bytes(), "review", 0.6)  # still open: not exported
    _, gone_case = _case(store, real[1].read_bytes(), "review", 0.6)
    _decide(store, ann, gone_case, "real")
    store.purge_images(dt.timedelta(0))  # retention took the decided cases' images...

    summary = export(store, tmp_path / "fb")
    assert (summary.exported, summary.without_image) == (0, len(decided) + 1)

    # ...so export before the retention period ends: here, decide again on fresh cases.
    decided = {}
    for path, label in [(p, "real") for p in real] + [(p, "fake") for p in fake]:
        check_id, case_id = _case(store, path.read_bytes(), "review", 0.6)
        _decide(store, ann, case_id, label)
        decided[check_id] = (label, path.read_bytes())
    summary = export(store, tmp_path / "fb")
    assert (summary.exported, summary.real, summary.fake) == (5, 3, 2)
    rows = [json.loads(line) for line in summary.manifest.read_text().splitlines()]
    for row in rows:
        label, data = decided[row["path"].split("/")[1].split(".")[0]]
        assert row["label"] == label and row["source"] == "feedback"
        assert (summary.manifest.parent / row["path"]).read_bytes() == data
        assert row["path"].endswith(".jpg") and row["decided_by"] == "ann"
    ds = load_dataset(summary.manifest)  # what `facecheck train` reads
    assert sorted(r.label for r in ds) == ["fake", "fake", "real", "real", "real"]


def test_agreement_by_period_and_model(store):
    ann = store.add_reviewer("ann", "password-a")
    for verdict, decision in [("review", "fake"), ("review", "real"), ("fake", "fake")]:
        _decide(store, ann, _case(store, None, verdict, 0.9)[1], decision)
    rows = agreement(store, "day")
    assert len(rows) == 1
    row = rows[0]
    assert (row["decided"], row["decided_fake"], row["agreed"]) == (3, 2, 2)
    assert row["agreement"] == round(2 / 3, 4) and row["model_version"] == "m1"
    assert row["period"] == dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    assert agreement_csv(rows).splitlines()[0].startswith("period,model_version,decided")


def test_exported_feedback_trains_a_model_without_leaking_test_images(
    small_manifest, cache_dir, tmp_path, shared_data
):
    from facecheck.service.store import Store

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    ann = store.add_reviewer("ann", "password-a")
    proto = build("P1", with_hashes(load_dataset(small_manifest)), 0)
    test_image = proto.split.test.records[0]
    # Reviewed images the P1 split has never seen, plus one that is a copy of a test image.
    seen = {r.path.name for r in load_dataset(small_manifest)}
    real = [p for p in sorted((shared_data / "rff" / "real").glob("*.jpg")) if p.name not in seen]
    fake = [p for p in sorted((shared_data / "rff" / "fake").glob("*.jpg")) if p.name not in seen]
    for path, label in [(p, "real") for p in real[:6]] + [(p, "fake") for p in fake[:6]]:
        _decide(store, ann, _case(store, path.read_bytes(), "review", 0.5)[1], label)
    _decide(store, ann, _case(store, test_image.path.read_bytes(), "review", 0.5)[1], "real")
    store.dispose()

    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert main(["feedback", "export", "--out", str(tmp_path / "fb"), "--database-url", db]) == 0
    out = tmp_path / "bundle"
    code = main(
        [
            *("train", "--data", str(small_manifest), "--protocol", "P1", "--out", str(out)),
            *("--add-manifest", str(tmp_path / "fb" / "manifest.jsonl")),
            *("--cache-dir", str(cache_dir), "--no-regions", "--quiet"),
        ]
    )
    assert code == 0
    training = json.loads((out / "bundle.json").read_text())["training"]
    # 12 reviewed images joined the training split; the copy of a test image did not.
    assert training["added"]["feedback/real"] == 6 and training["added"]["feedback/fake"] == 6
    assert training["train_counts"]["feedback/fake"] == 6
    assert training["val_counts"] == {k: v for k, v in proto.split.val.counts().items()}
