"""The audit log: an append-only, hash-chained record of every security-relevant and
reviewer action (who, what, when, from where).

Each event's hash is SHA-256 over the previous event's hash and the event's own fields in
canonical JSON, so changing, inserting or deleting a row breaks the chain at that row
(:func:`verify`). Appends lock the one-row head table first (an UPDATE: a row lock on
PostgreSQL, the write lock on SQLite), so concurrent writers append one after the other and
the chain never forks; ``prev_hash`` is UNIQUE as a second guard. An event is appended in
the same transaction as the action it records, so no committed action lacks its event.
Retention deletes the oldest events and records how far (``purged_through``), so the chain
stays verifiable from the oldest event kept.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from facecheck.service.models import AuditEvent, AuditHead, iso, utcnow

GENESIS = "0" * 64
# Control characters never reach the log as they are (no forged lines in an export).
_CONTROL = dict.fromkeys(range(32), " ") | {127: " "}


@dataclass(frozen=True)
class Who:
    """The actor of an action and where the request came from."""

    actor: str
    address: str | None = None


SYSTEM = Who("system")


def clean(text: str | None, limit: int = 120) -> str | None:
    """``text`` without control characters, cut to ``limit``."""
    return None if text is None else str(text).translate(_CONTROL)[:limit]


def event_hash(prev: str, seq: int, at: str, actor: str, action: str, target, address, detail):
    body = json.dumps(
        [prev, seq, at, actor, action, target, address, detail],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        default=str,
    )
    return hashlib.sha256(body.encode()).hexdigest()


def _head(s: Session) -> AuditHead:
    # Lock first, then read: no other writer can append between the two.
    locked = s.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=AuditHead.seq))
    if locked.rowcount == 0:
        s.add(AuditHead(id=1, seq=0, hash=GENESIS, purged_through=0))
        s.flush()
    return s.get(AuditHead, 1, populate_existing=True)


def append(
    s: Session,
    who: Who | None,
    action: str,
    target: str | int | None = None,
    detail: dict | None = None,
) -> int:
    """Append one event inside the caller's transaction; return its sequence number."""
    who = who or SYSTEM
    head = _head(s)
    at = utcnow()
    seq = head.seq + 1
    row = AuditEvent(
        seq=seq,
        at=at,
        actor=clean(who.actor) or "unknown",
        action=action,
        target=clean(None if target is None else str(target)),
        address=clean(who.address, 64),
        detail=detail,
        prev_hash=head.hash,
    )
    row.hash = _row_hash(row)
    s.add(row)
    head.seq, head.hash = seq, row.hash
    s.flush()
    return seq


def _row_hash(row: AuditEvent) -> str:
    return event_hash(
        row.prev_hash,
        row.seq,
        iso(row.at),
        row.actor,
        row.action,
        row.target,
        row.address,
        row.detail,
    )


def as_dict(row: AuditEvent) -> dict[str, object]:
    return {
        "seq": row.seq,
        "at": iso(row.at),
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "address": row.address,
        "detail": row.detail,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }


def events(s: Session, since: dt.datetime | None = None) -> Iterator[AuditEvent]:
    query = select(AuditEvent).order_by(AuditEvent.seq)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    yield from s.scalars(query.execution_options(yield_per=1000))


@dataclass(frozen=True)
class Verified:
    ok: bool
    events: int
    first_seq: int | None
    last_seq: int | None
    problem: str | None = None


def verify(rows: Iterable[AuditEvent], head: AuditHead | None) -> Verified:
    """Check every row's hash and link, that the rows run without gaps from the first
    event retention kept, and that the newest row is the head (nothing cut off the end)."""
    purged = head.purged_through if head else 0
    prev, n, first, last = None, 0, None, None
    for row in rows:
        if first is None:
            first = row.seq
            if row.seq != purged + 1:
                return Verified(False, n, first, last, f"events before {row.seq} are missing")
            if purged == 0 and row.prev_hash != GENESIS:
                return Verified(False, n, first, last, "the first event is not the genesis")
        elif row.seq != last + 1 or row.prev_hash != prev:
            return Verified(False, n, first, last, f"the chain breaks at event {row.seq}")
        if _row_hash(row) != row.hash:
            return Verified(False, n, first, last, f"event {row.seq} was altered")
        prev, last, n = row.hash, row.seq, n + 1
    if head is not None and head.seq != (last if last is not None else purged):
        return Verified(False, n, first, last, f"events after {last} are missing")
    return Verified(True, n, first, last)


def failures_since(
    s: Session, *, actor=None, address=None, since: dt.datetime
) -> tuple[int, dt.datetime | None]:
    """How many failed logins (for an account or from an address) since ``since``, and
    when the last one was."""
    query = select(func.count(), func.max(AuditEvent.at)).where(
        AuditEvent.action == "login.failed", AuditEvent.at >= since
    )
    if actor is not None:
        query = query.where(AuditEvent.actor == clean(actor))
    if address is not None:
        query = query.where(AuditEvent.address == clean(address, 64))
    n, last = s.execute(query).one()
    return int(n or 0), last


def purge(s: Session, older_than: dt.timedelta) -> int:
    """Delete events older than ``older_than`` (retention); the head records how far."""
    cutoff = utcnow() - older_than
    head = _head(s)
    last = s.scalar(select(func.max(AuditEvent.seq)).where(AuditEvent.at < cutoff))
    if last is None:
        return 0
    n = s.execute(delete(AuditEvent).where(AuditEvent.seq <= last)).rowcount or 0
    head.purged_through = max(head.purged_through, int(last))
    s.flush()
    return int(n)
