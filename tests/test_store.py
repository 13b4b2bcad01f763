"""The service's storage, on SQLite and on a real PostgreSQL server (see conftest)."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import inspect, text

from facecheck.service.migrations import current
from facecheck.service.models import Base
from facecheck.service.store import Store, utcnow

LEASE = dt.timedelta(minutes=5)


def _check(store: Store, *, verdict="review", p=0.7, image=b"\xff\xd8\xffjpeg", case=True):
    return store.add_check(
        {"verdict": verdict, "fake_probability": p, "model_version": "m1", "timing_ms": 12.0},
        api_key_id=None,
        external_id="app-1",
        image=image,
        media_type="image/jpeg",
        open_case=case,
    )


def test_migrations_build_the_models_schema_and_are_idempotent(store):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    assert current(store.engine) == "0004"
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff  # the migration and the ORM models describe the same tables
    store.migrate()  # a second start upgrades nothing and loses nothing
    assert set(inspect(store.engine).get_table_names()) >= {"checks", "cases", "images"}


def test_api_keys_are_stored_hashed_and_can_be_revoked(store):
    key = store.create_api_key("bank-frontend")
    key_id = store.api_key_id(key)
    assert key_id is not None and store.api_key_id(key + "x") is None
    assert store.api_key_id("") is None
    with store.engine.connect() as conn:
        dumped = " ".join(str(row) for row in conn.execute(text("SELECT * FROM api_keys")))
    assert key not in dumped and key[10:] not in dumped  # only a hash and a short prefix
    assert store.revoke_api_key(key_id) and not store.revoke_api_key(key_id)
    assert store.api_key_id(key) is None
    assert store.list_api_keys()[0]["revoked_at"] is not None


def test_reviewer_passwords_and_sessions(store):
    rid = store.add_reviewer("ann", "correct horse")
    with pytest.raises(ValueError, match="exists"):
        store.add_reviewer("ann", "another one")
    with pytest.raises(ValueError, match="8 characters"):
        store.add_reviewer("bob", "short")
    assert store.authenticate("ann", "correct horse") == rid
    assert store.authenticate("ann", "wrong horse") is None
    assert store.authenticate("nobody", "correct horse") is None
    token, csrf = store.new_session(rid, dt.timedelta(hours=1))
    info = store.session(token)
    assert info.username == "ann" and info.csrf_token == csrf
    expired, _ = store.new_session(rid, dt.timedelta(seconds=-1))
    assert store.session(expired) is None and store.session("forged") is None
    store.set_password("ann", "new password")  # ends every session of that reviewer
    assert store.session(token) is None
    assert store.authenticate("ann", "new password") == rid


def test_checks_round_trip_and_are_scoped_to_their_key(store):
    key_id = store.api_key_id(store.create_api_key("a"))
    check_id, case_id, _ = store.add_check(
        {
            "verdict": "review",
            "fake_probability": 0.61,
            "threshold": 0.29,
            "regions": {"left_eye": 0.2, "right_eye": 0.3, "nose": 0.9, "mouth": 0.1},
            "model_version": "m1",
            "timing_ms": 80.5,
        },
        api_key_id=key_id,
        external_id="A-17",
        image=b"bytes",
        media_type="image/png",
        open_case=True,
    )
    got = store.get_check(check_id, key_id)
    assert got["regions"]["nose"] == 0.9 and got["external_id"] == "A-17"
    assert got["case"] == {
        "id": case_id,
        "status": "open",
        "decision": None,
        "reason": None,
        "decided_at": None,
    }
    assert store.get_check(check_id, key_id + 1) is None  # another key sees nothing
    assert store.image(check_id) == (b"bytes", "image/png")
    no_case, none, _ = _check(store, verdict="real", p=0.01, image=None, case=False)
    assert none is None and store.get_check(no_case)["case"] is None
    assert store.image(no_case) is None
    assert store.verdict_counts() == {"review": 1, "real": 1}


def test_a_case_is_decided_by_the_holder_of_its_lease_only_and_once(store):
    ann, bob = store.add_reviewer("ann", "password-a"), store.add_reviewer("bob", "password-b")
    _, first, _ = _check(store)
    _, second, _ = _check(store)
    assert [c.id for c in store.open_cases()] == [first, second]  # oldest first
    assert store.claim_next(ann, LEASE) == first
    assert store.claim_next(bob, LEASE) == second  # ann's case is skipped
    assert not store.claim(first, bob, LEASE)
    assert not store.decide(first, bob, "fake")
    assert store.decide(first, ann, "fake", "  nose pasted  ")
    assert not store.decide(first, ann, "real")  # a decision is final
    case = store.case(first)
    assert (case.status, case.decision, case.decided_by, case.comment) == (
        "decided",
        "fake",
        "ann",
        "nose pasted",
    )
    assert [c.id for c in store.open_cases()] == [second]
    with pytest.raises(ValueError, match="decision"):
        store.decide(second, bob, "maybe")


def test_an_expired_lease_passes_the_case_on(store):
    ann, bob = store.add_reviewer("ann", "password-a"), store.add_reviewer("bob", "password-b")
    _, case_id, _ = _check(store)
    assert store.claim(case_id, ann, dt.timedelta(seconds=-1))  # already run out
    assert not store.decide(case_id, ann, "real")  # too late for ann
    assert store.claim_next(bob, LEASE) == case_id
    assert store.decide(case_id, bob, "real")
    store.release(case_id, bob)  # nothing to release any more; must not reopen it
    assert store.case(case_id).status == "decided"


def test_concurrent_reviewers_never_decide_the_same_case(store):
    reviewers = [store.add_reviewer(f"r{i}", f"password-{i}") for i in range(4)]
    cases = [_check(store)[1] for _ in range(6)]
    decided: list[tuple[int, int]] = []
    lock = threading.Lock()

    def work(rid: int) -> None:
        while (case_id := store.claim_next(rid, LEASE)) is not None:
            if store.decide(case_id, rid, "real"):
                with lock:
                    decided.append((case_id, rid))

    threads = [threading.Thread(target=work, args=(r,)) for r in reviewers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c for c, _ in decided) == sorted(cases)  # each exactly once
    assert store.count_open() == 0


def test_retention_deletes_old_images_but_not_those_of_open_cases(store):
    rid = store.add_reviewer("ann", "password-a")
    decided_check, decided_case, _ = _check(store)
    open_check, _open_case, _ = _check(store)
    store.claim(decided_case, rid, LEASE)
    store.decide(decided_case, rid, "real")
    assert store.purge_images(dt.timedelta(days=1)) == 0  # nothing is old enough yet
    assert store.purge_images(dt.timedelta(0)) == 1
    assert store.image(decided_check) is None and store.image(open_check) is not None
    assert store.case(decided_case).has_image is False
    assert store.get_check(decided_check)["verdict"] == "review"  # the record itself stays


def test_times_are_utc(store):
    _, case_id, created = _check(store)
    assert abs((utcnow() - created).total_seconds()) < 60
    assert store.case(case_id).created_at == created
