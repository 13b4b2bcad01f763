"""The scoring API and the review pages against the real app, shipped detector and database."""

from __future__ import annotations

import io
import re

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from facecheck.service.app import create_app
from facecheck.service.settings import ServiceSettings
from facecheck.service.store import Store
from service_helpers import client_for, csrf_of, post_image


@pytest.fixture
def service(tmp_path, shipped_detector, database_url):
    client, store = client_for(tmp_path, shipped_detector, database_url, fake_above=0.995)
    with client:
        yield client, store, {"X-API-Key": store.create_api_key("test")}
    store.dispose()


def _login(client, username="ann", password="password-a") -> str:
    token = csrf_of(client.get("/review/login").text)
    r = client.post(
        "/review/login",
        data={"username": username, "password": password, "csrf_token": token},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/review", r.text
    return csrf_of(client.get("/review").text)


def test_every_verdict_type_and_cases_for_review_and_fake(service, images):
    client, store, key = service
    got = {}
    for expected, data in images.items():
        r = post_image(client, key, data, external_id=f"app-{expected}")
        assert r.status_code == 201, r.text
        body = r.json()
        got[expected] = body
        assert body["verdict"] == expected, (expected, body)
        assert body["external_id"] == f"app-{expected}"
        assert body["model_version"] == store_version(client)
        assert body["timing_ms"] > 0
    assert got["real"]["fake_probability"] < got["real"]["threshold"]
    assert got["review"]["threshold"] <= got["review"]["fake_probability"] < 0.995
    assert got["fake"]["fake_probability"] >= 0.995
    # Flagged images carry region scores; review and fake open cases (fakes by default).
    assert set(got["review"]["regions"]) == {"left_eye", "right_eye", "nose", "mouth"}
    assert got["review"]["case"]["status"] == "open" and got["fake"]["case"] is not None
    assert all(got[v]["case"] is None for v in ("real", "no_face", "invalid_image"))
    assert got["invalid_image"]["error"] and got["invalid_image"]["fake_probability"] is None
    # Images are kept only where a person must look.
    assert store.image(got["review"]["id"]) is not None and store.image(got["real"]["id"]) is None
    again = client.get(f"/v1/checks/{got['review']['id']}", headers=key)
    assert again.status_code == 200 and again.json() == got["review"]


def store_version(client) -> str:
    return client.get("/health").json()["model_version"]


def test_bad_uploads_get_clear_errors_and_store_nothing(service, images, tmp_path):
    client, store, key = service
    assert post_image(client, key, b"just some text").status_code == 415
    assert post_image(client, key, b"").status_code == 415
    assert post_image(client, key, b"%PDF-1.7 a document", name="x.pdf").status_code == 415
    # A PNG sent as image/jpeg with a .txt name is judged by its bytes.
    assert (
        post_image(client, key, images["no_face"], name="notes.txt").json()["verdict"] == "no_face"
    )
    assert client.post("/v1/checks", headers=key).status_code == 422  # no file field
    assert store.verdict_counts() == {"no_face": 1}


def test_uploads_over_the_limit_are_refused_before_scoring(tmp_path, shipped_detector, images):
    client, store = client_for(
        tmp_path, shipped_detector, f"sqlite:///{tmp_path / 'db.sqlite'}", max_upload_bytes=20_000
    )
    with client:
        key = {"X-API-Key": store.create_api_key("t")}
        big = images["fake"] + b"\0" * 60_000
        assert post_image(client, key, big).status_code == 413

        def chunks():  # no Content-Length: the limit is counted as the body arrives
            body = b"--b\r\nContent-Disposition: form-data; name=image; filename=a.jpg\r\n\r\n"
            yield body
            for _ in range(10):
                yield b"\0" * 10_000
            yield b"\r\n--b--\r\n"

        r = client.post(
            "/v1/checks",
            content=chunks(),
            headers={**key, "Content-Type": "multipart/form-data; boundary=b"},
        )
        assert r.status_code == 413
        assert post_image(client, key, images["real"]).status_code == 201  # under the limit
        assert store.verdict_counts() == {"real": 1}


def test_the_api_needs_a_live_key_and_keys_see_only_their_checks(service, images):
    client, store, key = service
    assert post_image(client, {}, images["real"]).status_code == 401
    assert post_image(client, {"X-API-Key": "fc_guess"}, images["real"]).status_code == 401
    check_id = post_image(client, key, images["real"]).json()["id"]
    other = {"X-API-Key": store.create_api_key("other")}
    assert client.get(f"/v1/checks/{check_id}", headers=other).status_code == 404
    assert client.get("/v1/checks/nope", headers=key).status_code == 404
    assert client.get(f"/v1/checks/{check_id}", headers={}).status_code == 401
    store.revoke_api_key(store.api_key_id(other["X-API-Key"]))
    assert post_image(client, other, images["real"]).status_code == 401


def test_health_metrics_and_docs(service, images):
    client, _store, key = service
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["open_cases"] == 0
    for v in ("real", "review", "review"):
        post_image(client, key, images[v])
    assert client.get("/metrics").status_code == 401  # behind a key, as are the docs
    text = client.get("/metrics", headers=key).text
    assert 'facecheck_verdicts_total{verdict="review"} 2.0' in text
    assert 'facecheck_verdicts_total{verdict="real"} 1.0' in text
    assert 'facecheck_requests_total{method="POST",route="/v1/checks",status="201"} 3.0' in text
    assert "facecheck_open_cases 2.0" in text
    assert 'facecheck_request_seconds_count{route="/v1/checks"} 3.0' in text
    assert client.get("/openapi.json").status_code == 401
    spec = client.get("/openapi.json", headers=key).json()
    assert {"/v1/checks", "/v1/checks/{check_id}", "/health"} <= set(spec["paths"])
    assert "X-API-Key" in str(spec["components"]["securitySchemes"])
    docs = client.get("/docs", headers=key)
    assert docs.status_code == 200 and client.get("/docs").status_code == 401
    # Swagger UI from the package, not a CDN: every script and style is on this origin.
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert assets and all(a.startswith("/docs-assets/") for a in assets), assets
    assert all(client.get(a).status_code == 200 for a in assets)


def test_review_flow_login_queue_claim_and_decide(service, images):
    client, store, key = service
    store.add_reviewer("ann", "password-a")
    first = post_image(client, key, images["review"], external_id="A-1").json()
    second = post_image(client, key, images["fake"], external_id="A-2").json()
    # Not logged in: pages redirect to the login, images are not served.
    assert client.get("/review", follow_redirects=False).headers["location"] == "/review/login"
    case_id = first["case"]["id"]
    for path in (f"/review/cases/{case_id}/image", f"/review/cases/{case_id}/explain.png"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/review/login"
    # Bad password and a missing login CSRF token.
    bad = client.post(
        "/review/login",
        data={
            "username": "ann",
            "password": "nope",
            "csrf_token": csrf_of(client.get("/review/login").text),
        },
        follow_redirects=False,
    )
    assert bad.headers["location"] == "/review/login?error=1"
    assert (
        client.post("/review/login", data={"username": "ann", "password": "password-a"}).status_code
        == 403
    )
    csrf = _login(client)
    page = client.get("/review").text
    assert page.index("A-1") < page.index("A-2")  # oldest first
    r = client.post("/review/next", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.headers["location"] == f"/review/cases/{case_id}"
    case_page = client.get(r.headers["location"])
    # Scripts only from this origin (the shortcuts' file), none inline.
    assert "Fake</button>" in case_page.text
    assert re.findall(r"<script[^>]*>", case_page.text) == ['<script src="/review/static/case.js">']
    csp = case_page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self';" in csp  # no unsafe-inline script
    assert (
        client.get("/review/static/case.js").headers["content-type"].startswith("text/javascript")
    )
    img = client.get(f"/review/cases/{case_id}/image")
    assert img.content == images["review"] and img.headers["content-type"] == "image/jpeg"
    heat = client.get(f"/review/cases/{case_id}/explain.png")
    assert Image.open(io.BytesIO(heat.content)).size == Image.open(io.BytesIO(img.content)).size
    # A forged form (no or wrong CSRF token) changes nothing.
    for token in ("", "forged"):
        r = client.post(
            f"/review/cases/{case_id}/decision", data={"decision": "fake", "csrf_token": token}
        )
        assert r.status_code == 403
    # A reason from the decision's own list is required.
    for reason in ("", "morph"):
        r = client.post(
            f"/review/cases/{case_id}/decision",
            data={"decision": "real", "reason": reason, "csrf_token": csrf},
        )
        assert r.status_code == 422 and "choose a reason" in r.text
    r = client.post(
        f"/review/cases/{case_id}/decision",
        data={"decision": "real", "reason": "compression_only", "comment": "jpeg blocks",
              "csrf_token": csrf},
        follow_redirects=False,
    )  # fmt: skip
    assert r.headers["location"] == f"/review?decided={case_id}"
    queue = client.get(r.headers["location"]).text
    assert f"Case {case_id} decided" in queue and "A-1" not in queue.split("<table")[-1]
    decided = client.get(f"/v1/checks/{first['id']}", headers=key).json()["case"]
    assert decided["status"] == "decided" and decided["decision"] == "real"
    assert decided["reason"] == "compression_only"
    # Deciding again is refused and says why.
    again = client.post(
        f"/review/cases/{case_id}/decision",
        data={"decision": "fake", "reason": "morph", "csrf_token": csrf},
    )
    assert again.status_code == 409
    assert store.case(case_id).decision == "real"
    assert second["case"]["status"] == "open"


def test_a_second_reviewer_cannot_take_a_claimed_case(
    tmp_path, shipped_detector, images, database_url
):
    client, store = client_for(tmp_path, shipped_detector, database_url)
    other, _ = client_for(tmp_path, shipped_detector, database_url)
    with client, other:
        key = {"X-API-Key": store.create_api_key("t")}
        store.add_reviewer("ann", "password-a")
        store.add_reviewer("bob", "password-b")
        case_id = post_image(client, key, images["review"]).json()["case"]["id"]
        csrf_a = _login(client)
        csrf_b = _login(other, "bob", "password-b")
        assert "Fake</button>" in client.get(f"/review/cases/{case_id}").text
        page = other.get(f"/review/cases/{case_id}").text
        assert "ann is reviewing this case" in page and "Fake</button>" not in page
        assert (
            other.post("/review/next", data={"csrf_token": csrf_b}, follow_redirects=False).headers[
                "location"
            ]
            == "/review?none=1"
        )
        r = other.post(
            f"/review/cases/{case_id}/decision",
            data={"decision": "real", "reason": "other", "csrf_token": csrf_b},
        )
        assert r.status_code == 409
        # Ann puts it back; now Bob can take and decide it.
        client.post(f"/review/cases/{case_id}/release", data={"csrf_token": csrf_a})
        assert "Fake</button>" in other.get(f"/review/cases/{case_id}").text
        r = other.post(
            f"/review/cases/{case_id}/decision",
            data={"decision": "real", "reason": "other", "csrf_token": csrf_b},
            follow_redirects=False,
        )
        assert r.status_code == 303 and store.case(case_id).decided_by == "bob"
    store.dispose()


def test_first_start_creates_one_key_and_one_reviewer(tmp_path, shipped_detector, capsys, caplog):
    """The first start's secrets go to a 0600 file, never to the log; the data directory
    is 0700 and the database 0600."""
    data = tmp_path / "data"
    settings = ServiceSettings(data_dir=data)
    app = create_app(settings, detector=shipped_detector)
    with TestClient(app, base_url="https://testserver") as client:
        secrets_file = data / "first-start-secrets.txt"
        written = secrets_file.read_text()
        key = re.search(r"API key 'default': (\S+)", written).group(1)
        password = re.search(r"reviewer 'admin', password: (\S+)", written).group(1)
        logged = capsys.readouterr().err + caplog.text
        assert key not in logged and password not in logged
        assert str(secrets_file) in caplog.text
        assert secrets_file.stat().st_mode & 0o777 == 0o600
        assert data.stat().st_mode & 0o777 == 0o700
        assert (data / "facecheck.db").stat().st_mode & 0o777 == 0o600
        assert client.get("/health").json()["database"] == "sqlite"
        token = csrf_of(client.get("/review/login").text)
        r = client.post(
            "/review/login",
            data={"username": "admin", "password": password, "csrf_token": token},
            follow_redirects=False,
        )
        assert r.headers["location"] == "/review"
    with TestClient(create_app(settings, detector=shipped_detector)):
        assert secrets_file.read_text() == written  # the second start creates nothing
        store = Store(settings.url)
        assert store.api_key_id(key) is not None and store.count_reviewers() == 1
        store.dispose()


def test_settings_from_the_environment_and_admin_commands(tmp_path, monkeypatch, capsys):
    from facecheck.cli.main import main

    monkeypatch.setenv("FACECHECK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FACECHECK_FAKE_ABOVE", "0.9")
    monkeypatch.setenv("FACECHECK_CASES_FOR_FAKES", "false")
    s = ServiceSettings.from_env(retention_days=7)
    assert (s.data_dir, s.fake_above, s.cases_for_fakes, s.retention_days) == (
        tmp_path,
        0.9,
        False,
        7,
    )
    assert s.url == f"sqlite:///{tmp_path / 'facecheck.db'}"
    monkeypatch.setenv("FACECHECK_FAKE_ABOVE", "1.5")
    with pytest.raises(ValueError, match="fake_above"):
        ServiceSettings.from_env()
    monkeypatch.delenv("FACECHECK_FAKE_ABOVE")

    assert main(["apikey", "create", "frontend"]) == 0
    key = capsys.readouterr().out.strip()
    assert main(["apikey", "list"]) == 0
    listing = capsys.readouterr().out
    assert "frontend" in listing and key not in listing and key[:10] in listing
    assert main(["apikey", "revoke", "1"]) == 0 and main(["apikey", "revoke", "1"]) == 2
    assert main(["reviewer", "add", "carol", "--generate"]) == 0
    password = capsys.readouterr().out.split(": ")[-1].strip()
    store = Store(ServiceSettings.from_env().url)
    assert store.api_key_id(key) is None and store.authenticate("carol", password) is not None
    store.dispose()
