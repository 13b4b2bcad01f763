"""The reviewers' workflow (issue 28, items 6-7): roles, four eyes on "fake", reason codes,
history, filters, the checks list, keys that expire, face crops, signed webhooks. Real app,
shipped detector, SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
from PIL import Image
from sqlalchemy import text

from facecheck.cli.main import main
from facecheck.service import webhooks
from facecheck.service.store import Store, utcnow
from service_helpers import client_for, csrf_of, post_image

# Tests of what no database changes run on SQLite alone (keeps the suite short).
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _login(client, username, password):
    token = csrf_of(client.get("/review/login").text)
    r = client.post(
        "/review/login",
        data={"username": username, "password": password, "csrf_token": token},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/review", r.text
    return csrf_of(client.get("/review").text)


def _decide(client, case_id, decision, reason, csrf):
    client.get(f"/review/cases/{case_id}")  # opening claims it
    return client.post(
        f"/review/cases/{case_id}/decision",
        data={"decision": decision, "reason": reason, "csrf_token": csrf},
        follow_redirects=False,
    )


@pytest.fixture
def three(tmp_path, shipped_detector, database_url):
    """Three browsers on one app: ann and bob (reviewers), root (admin)."""
    clients = [client_for(tmp_path, shipped_detector, database_url, **{}) for _ in range(3)]
    store = clients[0][1]
    for c, _s in clients:
        c.__enter__()
    store.add_reviewer("ann", "password-a")
    store.add_reviewer("bob", "password-b")
    store.add_reviewer("root", "password-r", role="admin")
    names = ("ann", "bob", "root")
    csrf = [_login(c, u, f"password-{u[0]}") for (c, _), u in zip(clients, names, strict=True)]
    yield [c for c, _ in clients], csrf, store
    for c, s in clients:
        c.__exit__(None, None, None)
        s.dispose()


def test_a_fake_needs_a_second_reviewer_and_a_disagreement_goes_to_an_admin(three, images):
    (ann, bob, root), (ca, cb, cr), store = three
    key = {"X-API-Key": store.create_api_key("k")}
    first = post_image(ann, key, images["review"]).json()["case"]["id"]
    second = post_image(ann, key, images["review"]).json()["case"]["id"]

    # Ann says fake: not final; the queue and the API say it waits for a second reviewer.
    r = _decide(ann, first, "fake", "blend_boundary", ca)
    assert "waiting for a second reviewer" in ann.get(r.headers["location"]).text
    assert store.case(first).status == "second" and store.case(first).decision is None
    # Ann cannot confirm her own decision, nor take it with "next".
    page = ann.get(f"/review/cases/{first}").text
    assert "a second reviewer must confirm it" in page and "Fake</button>" not in page
    assert _decide(ann, first, "fake", "blend_boundary", ca).status_code == 409
    # Bob agrees: final, decided by Bob, both votes in the history.
    assert _decide(bob, first, "fake", "texture_or_noise", cb).status_code == 303
    case = store.case(first)
    assert (case.status, case.decision, case.decided_by, case.reason) == (
        "decided",
        "fake",
        "bob",
        "texture_or_noise",
    )
    assert (case.first_decided_by, case.first_reason) == ("ann", "blend_boundary")
    history = ann.get(f"/review/cases/{first}").text.split('id="history"')[1]
    assert history.index("ann") < history.index("bob") and "second" in history

    # On the second case Bob disagrees with Ann: escalated; only an admin may decide it.
    _decide(ann, second, "fake", "morph", ca)
    assert _decide(bob, second, "real", "no_sign_of_editing", cb).status_code == 303
    assert store.case(second).status == "escalated"
    assert "an admin decides" in ann.get(f"/review/cases/{second}").text
    assert _decide(ann, second, "real", "other", ca).status_code == 409
    assert _decide(root, second, "real", "no_sign_of_editing", cr).status_code == 303
    assert store.case(second).decision == "real" and store.case(second).decided_by == "root"
    got = ann.get("/v1/checks?limit=10", headers=key).json()["items"]
    assert {c["case"]["status"] for c in got} == {"decided"}


@SQLITE_ONLY
def test_real_is_final_at_once_and_four_eyes_can_be_off(tmp_path, shipped_detector, images,
                                                       database_url):  # fmt: skip
    client, store = client_for(tmp_path, shipped_detector, database_url, four_eyes=False)
    with client:
        store.add_reviewer("ann", "password-a")
        key = {"X-API-Key": store.create_api_key("k")}
        case_id = post_image(client, key, images["review"]).json()["case"]["id"]
        csrf = _login(client, "ann", "password-a")
        _decide(client, case_id, "fake", "morph", csrf)
        assert store.case(case_id).status == "decided"
    store.dispose()


def test_roles_auditors_read_only_disabled_reviewers_locked_out(three, images, capsys):
    (ann, bob, _root), (_ca, cb, _cr), store = three
    key = {"X-API-Key": store.create_api_key("k")}
    case_id = post_image(ann, key, images["review"]).json()["case"]["id"]
    store.add_reviewer("eve", "password-e", role="auditor")

    bob.post("/review/logout", data={"csrf_token": cb})
    ce = _login(bob, "eve", "password-e")
    page = bob.get(f"/review/cases/{case_id}").text
    assert "Auditors can read cases but not decide them" in page and "Fake</button>" not in page
    assert "Review next" not in bob.get("/review").text
    assert (
        bob.post("/review/next", data={"csrf_token": ce}, follow_redirects=False).headers[
            "location"
        ]
        == "/review?none=1"
    )
    # Disabling ends the session at once and refuses the next login.
    store.set_reviewer("ann", disabled=True)
    assert ann.get("/review", follow_redirects=False).headers["location"] == "/review/login"
    token = csrf_of(ann.get("/review/login").text)
    r = ann.post("/review/login", data={"username": "ann", "password": "password-a",
                                        "csrf_token": token}, follow_redirects=False)  # fmt: skip
    assert r.headers["location"].endswith("error=1")
    store.set_reviewer("ann", disabled=False)
    _login(ann, "ann", "password-a")
    actions = [e["action"] for e in store.audit_events()]
    assert {"reviewer.disable", "reviewer.enable", "case.view"} <= set(actions)
    args = ["--database-url", store.url]
    assert main(["reviewer", "role", "bob", "--role", "auditor", *args]) == 0
    assert main(["reviewer", "list", *args]) == 0
    listing = capsys.readouterr().out
    assert "bob" in listing and "auditor" in listing and "root" in listing


@SQLITE_ONLY
def test_the_checks_list_pages_by_cursor_and_sees_only_its_key(three, images):
    (ann, _bob, _root), _csrf, store = three
    key = {"X-API-Key": store.create_api_key("k")}
    other = {"X-API-Key": store.create_api_key("other")}
    ids = [post_image(ann, key, images["no_face"], external_id=f"A-{i}").json()["id"]
           for i in range(5)]  # fmt: skip
    post_image(ann, other, images["no_face"])
    seen, cursor = [], None
    while True:
        page = ann.get("/v1/checks", params={"limit": 2, **({"cursor": cursor} if cursor else {})},
                       headers=key).json()  # fmt: skip
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]  # newest first, each once, none of the other key's
    assert ann.get("/v1/checks", params={"verdict": "real"}, headers=key).json()["items"] == []
    assert ann.get("/v1/checks", params={"cursor": "%%%"}, headers=key).status_code == 422
    assert ann.get("/v1/checks", params={"limit": 1000}, headers=key).status_code == 422


def test_keys_expire_and_note_their_last_use(database_url):
    store = Store(database_url)
    key = store.create_api_key("short", expires_days=1)
    assert store.api_key_id(key) is not None
    listed = store.list_api_keys()[0]
    assert listed["last_used_at"] is not None and listed["expires_at"] is not None
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE api_keys SET expires_at = :t"), {"t": utcnow()})
    assert store.api_key_id(key) is None
    store.dispose()


def test_the_queue_filters_and_the_face_crop(three, images):
    (ann, _bob, _root), (ca, _cb, _cr), store = three
    key = {"X-API-Key": store.create_api_key("k")}
    a = post_image(ann, key, images["review"], external_id="BANK-7").json()["case"]["id"]
    post_image(ann, key, images["review"], external_id="OTHER-1")
    page = ann.get("/review", params={"q": "bank-7"}).text.split("<tbody>")[1]
    assert f'data-case="{a}"' in page and "OTHER-1" not in page
    _decide(ann, a, "fake", "morph", ca)
    only = ann.get("/review", params={"status": "second"}).text.split("<tbody>")[1]
    assert only.count("data-case=") == 1 and f'data-case="{a}"' in only
    crop = Image.open(io.BytesIO(ann.get(f"/review/cases/{a}/image?crop=face").content))
    heat = Image.open(io.BytesIO(ann.get(f"/review/cases/{a}/explain.png?crop=face").content))
    assert max(crop.size) == 640 and crop.size == heat.size
    assert ann.get(f"/review/cases/{a}/image?crop=nose").status_code == 422


class _Receiver(BaseHTTPRequestHandler):
    """Fails the first two posts (500), then takes them; keeps what it got."""

    got: ClassVar[list] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append((dict(self.headers), body))
        self.send_response(500 if len(type(self).got) <= 2 else 204)
        self.end_headers()

    def log_message(self, *args):
        pass


@SQLITE_ONLY
def test_a_final_decision_is_posted_signed_retried_until_taken(tmp_path, shipped_detector,
                                                              images, database_url):  # fmt: skip
    _Receiver.got = []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hook"
    secret = "s" * 32
    client, store = client_for(tmp_path, shipped_detector, database_url, four_eyes=False,
                               webhook_url=url, webhook_secret=secret)  # fmt: skip
    with client:
        store.add_reviewer("ann", "password-a")
        key = {"X-API-Key": store.create_api_key("k")}
        case_id = post_image(client, key, images["review"], external_id="APP-9").json()["case"][
            "id"
        ]
        csrf = _login(client, "ann", "password-a")
        assert _decide(client, case_id, "real", "other", csrf).status_code == 303
    sender = webhooks.Sender(store, url, secret, base_backoff_s=0.0)
    for _ in range(5):
        sender.send_due()
    server.shutdown()
    assert len(_Receiver.got) == 3  # two failures, one delivery, nothing after it
    keys = {h["Idempotency-Key"] for h, _ in _Receiver.got}
    assert keys == {f"case-{case_id}-decided"}  # the same key on every retry
    headers, body = _Receiver.got[-1]
    assert webhooks.verify(secret, headers["X-Facecheck-Signature"], body)
    assert not webhooks.verify("wrong" * 8, headers["X-Facecheck-Signature"], body)
    assert not webhooks.verify(secret, headers["X-Facecheck-Signature"], body + b" ")
    event = json.loads(body)
    assert (event["event"], event["case_id"], event["decision"], event["external_id"]) == (
        "case.decided",
        case_id,
        "real",
        "APP-9",
    )
    log = webhooks.deliveries(store)
    assert log[0]["attempts"] == 3 and log[0]["delivered_at"] is not None
    assert log[0]["last_status"] == 204
    assert webhooks.backoff(3, 5.0) == dt.timedelta(seconds=20)
    store.dispose()


@SQLITE_ONLY
def test_a_panel_votes_unanimous_is_automatic_any_disagreement_goes_to_a_person(
    tmp_path, shipped_detector, images, database_url
):
    """The thesis's rule in the service: two members (the shipped detector, and the same
    bundle held to a higher threshold, a real second opinion on the same pictures)."""
    from fastapi.testclient import TestClient

    from facecheck.detector.pipeline import Detector
    from facecheck.service.app import create_app
    from facecheck.service.settings import ServiceSettings

    strict = Detector.load(None)
    strict.threshold = 0.99  # flags only what it is very sure of
    store = Store(database_url)
    settings = ServiceSettings(data_dir=tmp_path)
    app = create_app(settings, detector=shipped_detector, members=[strict], store=store)
    with TestClient(app, base_url="https://testserver") as client:
        key = {"X-API-Key": store.create_api_key("k")}
        real = post_image(client, key, images["real"]).json()
        fake = post_image(client, key, images["fake"]).json()
        split = post_image(client, key, images["review"]).json()
        assert real["verdict"] == "real" and real["case"] is None
        assert [v["vote"] for v in real["votes"]] == ["real", "real"]
        assert fake["verdict"] == "fake" and [v["vote"] for v in fake["votes"]] == ["fake", "fake"]
        # The shipped detector flags this real photo below 0.99: the members disagree.
        assert [v["vote"] for v in split["votes"]] == ["fake", "real"]
        assert split["verdict"] == "review" and split["case"]["status"] == "open"
        store.add_reviewer("ann", "password-a")
        _login(client, "ann", "password-a")
        page = client.get(f"/review/cases/{split['case']['id']}").text
        assert 'id="votes"' in page and page.count('class="pill fake"') >= 1
        no_face = post_image(client, key, images["no_face"]).json()
        assert no_face["verdict"] == "no_face" and no_face["votes"] is None
    store.dispose()


@SQLITE_ONLY
def test_a_phone_photos_face_is_shown_large(tmp_path, shipped_detector, shared_data, database_url):
    """A 4000x3000 upload with a ~500 px face: the case page's crop shows the face at
    most of its 640 px, where the whole photo shrunk to the column gave it ~115 px."""
    face = Image.open(shared_data / "rff" / "real" / "real_00343.jpg").convert("RGB")
    photo = Image.new("RGB", (4000, 3000), (118, 124, 131))
    photo.paste(face.resize((512, 512)), (1700, 1100))
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    seen = shipped_detector.check([data])[0]  # the face stage's box, as the service stores it
    assert seen.face["n_faces"] == 1
    client, store = client_for(tmp_path, shipped_detector, database_url)
    with client:
        store.add_reviewer("ann", "password-a")
        result = {**seen.to_dict(), "verdict": "review", "timing_ms": 1.0}
        _check, case_id, _ = store.add_check(result, api_key_id=None, external_id="PHONE-1",
                                             image=data, media_type="image/jpeg",
                                             open_case=True)  # fmt: skip
        _login(client, "ann", "password-a")
        crop = Image.open(
            io.BytesIO(client.get(f"/review/cases/{case_id}/image?crop=face").content)
        )
        x0, y0, x1, y1 = seen.face["face"]["box"]
        # The crop is the box grown by 45% a side (1.9x), its longer side shown at 640 px:
        # the face alone spans over 300 px of it.
        assert max(crop.size) == 640
        assert (x1 - x0) * 640 / (1.9 * max(x1 - x0, y1 - y0)) > 300
    store.dispose()
