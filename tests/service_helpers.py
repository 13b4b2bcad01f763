"""Helpers the service tests share: an app on a real store, uploads, CSRF tokens."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from facecheck.service.app import create_app
from facecheck.service.settings import ServiceSettings
from facecheck.service.store import Store


def client_for(tmp_path: Path, detector, database_url: str, **settings) -> tuple[TestClient, Store]:
    store = Store(database_url)
    app = create_app(ServiceSettings(data_dir=tmp_path, **settings), detector=detector, store=store)
    # HTTPS: the session cookies are Secure and __Host- prefixed by default.
    return TestClient(app, base_url="https://testserver"), store


def post_image(client, headers, data: bytes, name="face.jpg", **form):
    return client.post(
        "/v1/checks", files={"image": (name, data, "image/jpeg")}, data=form, headers=headers
    )


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
