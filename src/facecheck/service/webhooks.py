"""Signed webhooks: the onboarding system hears of a final decision without polling.

A final decision queues one delivery in the decision's own transaction (an outbox), so no
committed decision goes unannounced. :class:`Sender` posts due deliveries as JSON with

- ``Idempotency-Key``: the same on every retry of one event (the receiver de-duplicates:
  delivery is at least once);
- ``X-Facecheck-Signature: t=<unix time>,v1=<hex>``: HMAC-SHA256 with the shared secret
  over ``"<t>.<body>"`` (:func:`verify` is the receiver's side; reject old ``t`` to stop
  replays),

and retries failures (any answer but 2xx, or no answer) with exponential back-off, up to
``max_attempts``. Each try is recorded on the delivery row (the delivery log:
``facecheck webhooks``). Before a try the sender takes the row for a while (compare and
set on ``next_attempt_at``), so several server processes do not post the same try.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import time

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from facecheck.service.models import Case, Check, WebhookDelivery, iso, utcnow

log = logging.getLogger("facecheck.service.webhooks")


def payload(case: Case, check: Check) -> dict[str, object]:
    return {
        "event": "case.decided",
        "case_id": case.id,
        "check_id": check.id,
        "external_id": check.external_id,
        "decision": case.decision,
        "reason": case.reason,
        "decided_at": iso(case.decided_at),
        "model_version": check.model_version,
    }


def enqueue_decided(s: Session, case_id: int) -> None:
    """Queue the ``case.decided`` event of ``case_id`` inside the caller's transaction."""
    case = s.get(Case, case_id, populate_existing=True)
    check = s.get(Check, case.check_id)
    now = utcnow()
    s.add(
        WebhookDelivery(
            event="case.decided",
            idempotency_key=f"case-{case_id}-decided",
            payload=payload(case, check),
            created_at=now,
            attempts=0,
            next_attempt_at=now,
        )
    )


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, tolerance_s: float = 300) -> bool:
    """The receiver's check: the signature matches and is at most ``tolerance_s`` old."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - t) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, t, body), header)


def backoff(attempts: int, base_s: float) -> dt.timedelta:
    """Wait before try ``attempts + 1``: base, 2x, 4x, ... at most an hour."""
    return dt.timedelta(seconds=min(base_s * 2 ** max(attempts - 1, 0), 3600.0))


class Sender:
    """Posts due deliveries; run :meth:`run` as a task, or :meth:`send_due` once."""

    def __init__(
        self,
        store,
        url: str,
        secret: str,
        *,
        base_backoff_s: float = 5.0,
        max_attempts: int = 15,
        timeout_s: float = 10.0,
    ):
        self.store, self.url, self.secret = store, url, secret
        self.base_backoff_s, self.max_attempts, self.timeout_s = (
            base_backoff_s,
            max_attempts,
            timeout_s,
        )

    def _due(self) -> list[int]:
        now = utcnow()
        with self.store._session() as s:
            return list(
                s.scalars(
                    select(WebhookDelivery.id)
                    .where(
                        WebhookDelivery.delivered_at.is_(None),
                        WebhookDelivery.attempts < self.max_attempts,
                        WebhookDelivery.next_attempt_at <= now,
                    )
                    .order_by(WebhookDelivery.id)
                    .limit(50)
                )
            )

    def _take(self, delivery_id: int) -> WebhookDelivery | None:
        """The delivery, held for this try (others skip it), or None if someone has it."""
        now = utcnow()
        hold = now + dt.timedelta(seconds=self.timeout_s * 3)
        with self.store._session.begin() as s:
            res = s.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.delivered_at.is_(None),
                    WebhookDelivery.next_attempt_at <= now,
                )
                .values(next_attempt_at=hold)
            )
            return s.get(WebhookDelivery, delivery_id) if res.rowcount == 1 else None

    def _post(self, d: WebhookDelivery) -> tuple[int | None, str | None]:
        import httpx

        body = json.dumps(d.payload, sort_keys=True, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": d.idempotency_key,
            "X-Facecheck-Event": d.event,
            "X-Facecheck-Signature": sign(self.secret, int(time.time()), body),
        }
        try:
            r = httpx.post(self.url, content=body, headers=headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500]
        return r.status_code, None if 200 <= r.status_code < 300 else r.text[:500]

    def send_due(self) -> int:
        """One pass over the due deliveries; returns how many were delivered."""
        delivered = 0
        for delivery_id in self._due():
            d = self._take(delivery_id)
            if d is None:
                continue
            status, error = self._post(d)
            ok = status is not None and 200 <= status < 300
            now = utcnow()
            with self.store._session.begin() as s:
                s.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id == delivery_id)
                    .values(
                        attempts=WebhookDelivery.attempts + 1,
                        last_status=status,
                        last_error=error,
                        delivered_at=now if ok else None,
                        next_attempt_at=now + backoff(d.attempts + 1, self.base_backoff_s),
                    )
                )
            delivered += ok
            if not ok:
                log.warning(
                    "webhook %s try %d failed: %s", d.idempotency_key, d.attempts + 1, error
                )
        return delivered

    async def run(self, every_s: float = 1.0) -> None:
        while True:
            try:
                await asyncio.to_thread(self.send_due)
            except Exception:  # a failed pass is retried; the service keeps serving
                log.exception("webhook pass failed")
            await asyncio.sleep(every_s)


def deliveries(store, limit: int = 100) -> list[dict[str, object]]:
    """The delivery log, newest first."""
    with store._session() as s:
        rows = s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(limit))
        return [
            {
                "id": d.id,
                "event": d.event,
                "idempotency_key": d.idempotency_key,
                "created_at": iso(d.created_at),
                "attempts": d.attempts,
                "delivered_at": iso(d.delivered_at),
                "next_attempt_at": iso(d.next_attempt_at),
                "last_status": d.last_status,
                "last_error": d.last_error,
            }
            for d in rows
        ]
