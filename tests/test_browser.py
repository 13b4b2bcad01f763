"""The review page in a real browser: headless Chromium (Debian's) driven by Playwright."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from facecheck.service.app import create_app
from facecheck.service.settings import ServiceSettings
from facecheck.service.store import Store
from service_helpers import served_live

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


@pytest.fixture
def live_server(tmp_path, shipped_detector):
    """The real app under uvicorn on a loopback port, in a thread of this process."""
    store = Store(f"sqlite:///{tmp_path / 'facecheck.db'}")
    # Plain HTTP on loopback: the development cookie mode (the default needs HTTPS).
    settings = ServiceSettings(data_dir=tmp_path, secure_cookies=False)
    app = create_app(settings, detector=shipped_detector, store=store)
    with served_live(app) as port:
        yield f"http://127.0.0.1:{port}", store
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


def _log_in(page, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/review/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/review")


def test_two_reviewers_decide_a_fake_with_keys_zoom_and_the_heatmap_toggle(
    live_server, browser, shared_data, tmp_path
):
    """Login; the case page with the face crop, the decision within the first screen;
    keyboard: F (fake and its reasons), Z (zoom), O (heatmap off), Enter (decide); four
    eyes: Ann's fake waits for Bob, whose agreement makes it final."""
    base, store = live_server
    key = {"X-API-Key": store.create_api_key("browser-test")}
    store.add_reviewer("ann", "password-a")
    store.add_reviewer("bob", "password-b")
    case_ids = []
    for n, name in enumerate(("real_00142.jpg", "real_00392.jpg")):  # flagged real photos
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

    ann = browser.new_page(viewport={"width": 1280, "height": 800})
    ann.goto(f"{base}/review")
    assert ann.url.endswith("/review/login")  # not logged in: sent to the login page
    ann.fill("#username", "ann")
    ann.fill("#password", "wrong password")
    ann.click("button[type=submit]")
    assert "wrong password" in ann.inner_text("[role=alert]")
    _log_in(ann, base, "ann", "password-a")
    assert ann.locator("#queue tbody tr").count() == 2
    assert "APP-0" in ann.inner_text("#queue tbody tr:first-child")  # oldest first

    ann.click("text=Review next")
    ann.wait_for_url(f"{base}/review/cases/{case_ids[0]}")
    ann.wait_for_function(
        "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
    )
    # The face crop and its heatmap, the same size, large; the decision on the first screen.
    sizes = ann.eval_on_selector_all(
        "img", "els => els.map(e => [e.naturalWidth, e.naturalHeight])"
    )
    assert len(sizes) == 2 and sizes[0] == sizes[1] and max(sizes[0]) == 640
    shown = ann.eval_on_selector("#face .photo", "e => e.getBoundingClientRect().width")
    assert shown > 500
    fake_button = ann.eval_on_selector(
        "button[value=fake]", "e => e.getBoundingClientRect().bottom"
    )
    assert fake_button < 800
    assert ann.locator("#regions tr").count() == 5  # header + four regions
    # Z zooms (the picture grows past its frame), O hides the heatmap, both toggle back.
    ann.keyboard.press("z")
    assert "zoomed" in ann.get_attribute("#face", "class")
    assert ann.eval_on_selector("#face .photo", "e => e.getBoundingClientRect().width") > 2 * shown
    ann.keyboard.press("z")
    assert ann.is_visible("#face .heat")
    ann.keyboard.press("o")
    assert not ann.is_visible("#face .heat")
    ann.keyboard.press("o")
    assert ann.is_visible("#face .heat")
    ann.screenshot(path=str(tmp_path / "case.png"), full_page=False)
    # F: only the fake reasons can be chosen; Enter decides.
    ann.keyboard.press("f")
    disabled = ann.eval_on_selector_all(
        "#reason option[data-decision]", "os => os.filter(o => o.disabled).map(o => o.value)"
    )
    assert set(disabled) == {"no_sign_of_editing", "compression_only", "poor_quality_but_real",
                             "other"}  # the real reasons  # fmt: skip
    ann.select_option("#reason", "blend_boundary")
    ann.fill("#comment", "blend line under the left eye")
    ann.focus("#reason")
    ann.keyboard.press("Enter")
    ann.wait_for_url(f"{base}/review?decided={case_ids[0]}")
    assert "waiting for a second reviewer" in ann.inner_text("[role=status]")
    assert store.case(case_ids[0]).status == "second"

    bob = browser.new_page(viewport={"width": 1280, "height": 800})
    _log_in(bob, base, "bob", "password-b")
    bob.click("text=Review next")
    bob.wait_for_url(f"{base}/review/cases/{case_ids[0]}")
    assert "ann decided fake" in bob.inner_text("#decision")
    bob.keyboard.press("f")
    bob.select_option("#reason", "texture_or_noise")
    bob.click("button[value=fake]")
    bob.wait_for_url(f"{base}/review?decided={case_ids[0]}")
    assert f"Case {case_ids[0]} decided: fake" in bob.inner_text("[role=status]")
    rows = bob.locator("#queue tbody tr")
    assert rows.count() == 1 and rows.first.get_attribute("data-case") == str(case_ids[1])
    case = store.case(case_ids[0])
    assert (case.decision, case.decided_by, case.first_decided_by, case.first_comment) == (
        "fake",
        "bob",
        "ann",
        "blend line under the left eye",
    )
    shot = os.environ.get("FACECHECK_SCREENSHOT_DIR")
    if shot:  # for the README / a person to look at
        shutil.copy(tmp_path / "case.png", Path(shot) / "review-case.png")
        bob.screenshot(path=str(Path(shot) / "review-queue.png"), full_page=True)
