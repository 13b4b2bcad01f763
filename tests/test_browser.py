"""The review page in a real browser: headless Chromium (Debian's) driven by Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from facecheck.service.app import create_app
from facecheck.service.settings import ServiceSettings
from facecheck.service.store import Store

CHROMIUM = "/usr/bin/chromium"
# As the machine notes say: no background networking on a closed network, no sandbox as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server(tmp_path, shipped_detector):
    """The real app under uvicorn on a loopback port, in a thread of this process."""
    import uvicorn

    store = Store(f"sqlite:///{tmp_path / 'facecheck.db'}")
    # Plain HTTP on loopback: the development cookie mode (the default needs HTTPS).
    settings = ServiceSettings(data_dir=tmp_path, secure_cookies=False)
    app = create_app(settings, detector=shipped_detector, store=store)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", store
    server.should_exit = True
    thread.join(10)
    store.dispose()


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: .ci/services.sh installs chromium")
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def test_a_reviewer_logs_in_decides_a_case_and_it_leaves_the_queue(
    live_server, browser, shared_data, tmp_path
):
    base, store = live_server
    key = {"X-API-Key": store.create_api_key("browser-test")}
    store.add_reviewer("ann", "password-a")
    case_ids = []
    for n, name in enumerate(("real_00343.jpg", "real_00744.jpg")):  # flagged real photos
        data = (shared_data / "rff" / "real" / name).read_bytes()
        r = httpx.post(
            f"{base}/v1/checks",
            files={"image": (name, data, "image/jpeg")},
            data={"external_id": f"APP-{n}"},
            headers=key,
            timeout=60,
        )
        assert r.status_code == 201 and r.json()["verdict"] == "review", r.text
        case_ids.append(r.json()["case"]["id"])

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(f"{base}/review")
    assert page.url.endswith("/review/login")  # not logged in: sent to the login page
    page.fill("#username", "ann")
    page.fill("#password", "wrong password")
    page.click("button[type=submit]")
    assert "wrong password" in page.inner_text("[role=alert]")
    page.fill("#username", "ann")
    page.fill("#password", "password-a")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/review")
    assert page.locator("#queue tbody tr").count() == 2
    assert "APP-0" in page.inner_text("#queue tbody tr:first-child")  # oldest first

    page.click("text=Review next")
    page.wait_for_url(f"{base}/review/cases/{case_ids[0]}")
    # Both pictures (the upload and its heatmap) load and have the same size.
    page.wait_for_function(
        "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
    )
    sizes = page.eval_on_selector_all(
        "img", "els => els.map(e => [e.naturalWidth, e.naturalHeight])"
    )
    assert len(sizes) == 2 and sizes[0] == sizes[1]
    assert page.locator("#regions tr").count() == 5  # header + four regions
    page.screenshot(path=str(tmp_path / "case.png"), full_page=True)
    page.fill("#comment", "blend line under the left eye")
    page.click("button[value=fake]")

    page.wait_for_url(f"{base}/review?decided={case_ids[0]}")
    assert f"Case {case_ids[0]} decided: fake" in page.inner_text("[role=status]")
    rows = page.locator("#queue tbody tr")
    assert rows.count() == 1 and rows.first.get_attribute("data-case") == str(case_ids[1])
    case = store.case(case_ids[0])
    assert (case.decision, case.decided_by, case.comment) == (
        "fake",
        "ann",
        "blend line under the left eye",
    )
    shot = os.environ.get("FACECHECK_SCREENSHOT_DIR")
    if shot:  # for the README / a person to look at
        shutil.copy(tmp_path / "case.png", Path(shot) / "review-case.png")
        page.screenshot(path=str(Path(shot) / "review-queue.png"), full_page=True)
