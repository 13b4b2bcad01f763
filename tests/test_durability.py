"""No decision is ever lost: `facecheck serve` killed with SIGKILL mid-review, then restarted."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow
SERVE = [sys.executable, "-m", "facecheck.cli", "serve"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(data_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            *SERVE,
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            "--lease-seconds",
            "60",
            "--insecure-dev",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("a"),
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"the server did not start:\n{log.read_text()}")


def _login(client: httpx.Client, base: str, password: str) -> str:
    def csrf(html: str) -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)

    token = csrf(client.get(f"{base}/review/login").text)
    r = client.post(
        f"{base}/review/login",
        data={"username": "admin", "password": password, "csrf_token": token},
    )
    assert r.status_code == 303, r.text
    return csrf(client.get(f"{base}/review").text)


def test_sigkill_mid_review_keeps_every_committed_decision_and_pending_case(tmp_path, shared_data):
    log = tmp_path / "server.log"
    proc, base = _start(tmp_path / "data", log)
    try:
        secrets_file = tmp_path / "data" / "first-start-secrets.txt"
        text = secrets_file.read_text()
        key = re.search(r"API key 'default': (\S+)", text).group(1)
        password = re.search(r"reviewer 'admin', password: (\S+)", text).group(1)
        uploads = [  # real photos the shipped detector flags: review cases
            (shared_data / "rff" / "real" / name).read_bytes()
            for name in ("real_00142.jpg", "real_00392.jpg")
        ]
        checks = []
        for n in range(16):
            r = httpx.post(
                f"{base}/v1/checks",
                files={"image": ("face.jpg", uploads[n % 2], "image/jpeg")},
                data={"external_id": f"APP-{n}"},
                headers={"X-API-Key": key},
                timeout=60,
            )
            assert r.status_code == 201 and r.json()["verdict"] == "review", r.text
            checks.append(r.json())

        acknowledged: dict[int, str] = {}
        stop = threading.Event()

        def review() -> None:
            """Decide case after case as fast as the server answers, until it dies."""
            with httpx.Client(timeout=10, follow_redirects=False) as client:
                csrf = _login(client, base, password)
                n = 0
                while not stop.is_set():
                    try:
                        r = client.post(f"{base}/review/next", data={"csrf_token": csrf})
                        case_id = int(r.headers["location"].rsplit("/", 1)[-1])
                        decision = ("real", "fake")[n % 2]
                        r = client.post(
                            f"{base}/review/cases/{case_id}/decision",
                            data={"decision": decision, "reason": "other", "csrf_token": csrf},
                        )
                    except (httpx.TransportError, KeyError, ValueError):
                        return  # the server is gone (or the queue is empty)
                    if r.status_code == 303 and "decided=" in r.headers["location"]:
                        acknowledged[case_id] = decision  # the server said it is stored
                    n += 1

        worker = threading.Thread(target=review)
        worker.start()
        deadline = time.time() + 60
        while len(acknowledged) < 5 and time.time() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # while the reviewer is still deciding
        proc.wait(10)
        stop.set()
        worker.join(30)
        assert 5 <= len(acknowledged) < 16

        proc, base = _start(tmp_path / "data", log)
        assert secrets_file.read_text() == text  # the restart created no credentials
        # A "real" is final at once; a "fake" waits for a second reviewer (four eyes).
        decided, still_open = {}, []
        for c in checks:
            got = httpx.get(f"{base}/v1/checks/{c['id']}", headers={"X-API-Key": key}).json()
            case = got["case"]
            assert case["id"] == c["case"]["id"]  # every case is still there
            if case["status"] == "decided":
                decided[case["id"]] = case["decision"]
            elif case["status"] == "second":
                decided[case["id"]] = "fake"
            else:
                still_open.append(case["id"])
        # Every acknowledged decision survived; at most the one in flight when the server
        # died was committed without its answer reaching the reviewer.
        for case_id, decision in acknowledged.items():
            assert decided.get(case_id) == decision, (case_id, decided)
        assert len(decided) - len(acknowledged) in (0, 1)
        assert len(decided) + len(still_open) == len(checks)
        # The audit log holds every decision that was stored, acknowledged or not, by the
        # same transaction, and its chain is intact after the kill.
        from facecheck.service.store import Store

        store = Store(f"sqlite:///{tmp_path / 'data' / 'facecheck.db'}")
        events = list(store.audit_events())
        audited = {int(e["target"]): e["detail"]["decision"] for e in events
                   if e["action"] == "case.decide"}  # fmt: skip
        assert audited == decided and store.verify_audit().ok
        store.dispose()
        health = httpx.get(f"{base}/health").json()
        waiting_second = sum(d == "fake" for d in decided.values())
        assert health["open_cases"] == len(still_open) + waiting_second
        # The queue still works after the restart: the pending cases can be decided.
        with httpx.Client(timeout=10, follow_redirects=False) as client:
            csrf = _login(client, base, password)
            r = client.post(f"{base}/review/next", data={"csrf_token": csrf})
            assert int(r.headers["location"].rsplit("/", 1)[-1]) in still_open
    finally:
        proc.kill()
        proc.wait(10)
