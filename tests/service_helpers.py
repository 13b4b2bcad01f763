"""Helpers the service tests share: an app on a real store, uploads, CSRF tokens."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served_live(app, timeout_s: float = 60):
    """The app under uvicorn on a loopback port, in a thread of this process; yields the
    port (real HTTP framing, as a client meets it)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + timeout_s
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
