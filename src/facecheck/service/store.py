"""Storage for the service: checks, their images, review cases, API keys, reviewers.

SQLAlchemy over SQLite (the embedded default: one file under the data directory, in WAL mode
with full fsync, so a killed server keeps every committed row) or PostgreSQL (by URL). The
schema is created and upgraded by Alembic (:mod:`facecheck.migrations`), never by
``create_all``, so a database made by an older release is upgraded in place.

A case is claimed with a lease: claiming and deciding are single conditional UPDATEs (compare
and set on the claim), so two reviewers can never both decide a case, on either database.
Images are personal data: :meth:`Store.purge_images` deletes them after the retention period
(open cases keep theirs until they are decided).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    and_,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from facecheck.service import audit
from facecheck.service.audit import Who
from facecheck.service.cases import OPEN_STATES, ROLES, CaseQueue
from facecheck.service.migrations import upgrade
from facecheck.service.models import (
    ApiKey,
    Case,
    Check,
    Reviewer,
    ReviewSession,
    StoredImage,
    iso,
    utcnow,
)
from facecheck.service.security import (
    hash_password,
    new_api_key,
    new_token,
    token_hash,
    verify_password,
)


@dataclass(frozen=True)
class SessionInfo:
    reviewer_id: int
    username: str
    csrf_token: str
    role: str = "reviewer"


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # pragma: no cover - exercised by every test
        cur = dbapi_conn.cursor()
        # WAL: readers never block the writer. synchronous=FULL: a commit is on disk before
        # it returns, so SIGKILL (or a power cut) loses nothing that was acknowledged.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.close()


class Store(CaseQueue):
    """All reads and writes of the service, each in its own short transaction."""

    def __init__(self, url: str, *, migrate: bool = True):
        self.url = url
        kwargs: dict[str, object] = {"future": True}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            _sqlite_pragmas(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            self.migrate()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest Alembic revision."""

        upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    def ping(self) -> bool:
        with self._session() as s:
            return s.execute(select(1)).scalar() == 1

    def probe_write(self) -> None:
        """Commit a write (the audit head's lock, touched): raises if the database cannot
        take writes (disk full, read-only, gone), which a read-only ping does not show."""
        with self._session.begin() as s:
            audit._head(s)

    # -- the audit log
    def record(self, who: Who | None, action: str, target=None, detail=None) -> None:
        """An audit event of its own (views, refusals); actions that change rows record
        theirs inside their own transaction."""
        with self._session.begin() as s:
            audit.append(s, who, action, target, detail)

    def audit_events(self, since: dt.datetime | None = None) -> Iterator[dict[str, object]]:
        with self._session() as s:
            for row in audit.events(s, since):
                yield audit.as_dict(row)

    def verify_audit(self) -> audit.Verified:
        with self._session() as s:
            head = s.get(audit.AuditHead, 1)
            return audit.verify(audit.events(s), head)

    def login_retry_after(
        self, username: str, address: str | None, *, max_failures: int, window_s: int
    ) -> float | None:
        """Seconds until a login may be tried again, or None. ``max_failures`` failures
        within the window lock the account (4x as many, the client address) for 30 s,
        doubling with every further failure, at most 15 minutes after the last one."""
        now = utcnow()
        since = now - dt.timedelta(seconds=window_s)
        with self._session() as s:
            checks = [(*audit.failures_since(s, actor=username, since=since), max_failures)]
            if address:
                found = audit.failures_since(s, address=address, since=since)
                checks.append((*found, 4 * max_failures))
        wait = 0.0
        for n, last, limit in checks:
            if n >= limit and last is not None:
                lock = min(30.0 * 2 ** (n - limit), 900.0)
                wait = max(wait, lock - (now - last).total_seconds())
        return wait if wait > 0 else None

    # -- API keys
    def create_api_key(
        self, name: str, who: Who | None = None, expires_days: float | None = None
    ) -> str:
        """Store a new key's hash and return the key itself (shown once, never stored)."""
        key = new_api_key()
        now = utcnow()
        expires = None if expires_days is None else now + dt.timedelta(days=expires_days)
        with self._session.begin() as s:
            row = ApiKey(
                name=name,
                prefix=key[:10],
                key_hash=token_hash(key),
                created_at=now,
                expires_at=expires,
            )
            s.add(row)
            s.flush()
            detail = {"name": audit.clean(name), "expires_at": iso(expires)}
            audit.append(s, who, "apikey.create", row.id, detail)
        return key

    def api_key_id(self, key: str | None) -> int | None:
        """The id of a live key (not revoked, not expired), or None. Notes its last use, at
        most once a minute (a write per request would cost every request a commit)."""
        if not key:
            return None
        now = utcnow()
        with self._session() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == token_hash(key)))
            if row is None or row.revoked_at is not None:
                return None
            if row.expires_at is not None and row.expires_at <= now:
                return None
            stale = row.last_used_at is None or now - row.last_used_at > dt.timedelta(minutes=1)
            key_id = row.id
        if stale:
            with self._session.begin() as s:
                s.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))
        return key_id

    def list_api_keys(self) -> list[dict[str, object]]:
        with self._session() as s:
            rows = s.scalars(select(ApiKey).order_by(ApiKey.id)).all()
            return [
                {
                    "id": r.id,
                    "name": r.name,
                    "prefix": r.prefix,
                    "created_at": iso(r.created_at),
                    "revoked_at": iso(r.revoked_at),
                    "expires_at": iso(r.expires_at),
                    "last_used_at": iso(r.last_used_at),
                }
                for r in rows
            ]

    def revoke_api_key(self, key_id: int, who: Who | None = None) -> bool:
        with self._session.begin() as s:
            res = s.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            if res.rowcount == 1:
                audit.append(s, who, "apikey.revoke", key_id)
            return res.rowcount == 1

    def count_api_keys(self) -> int:
        with self._session() as s:
            return int(s.scalar(select(func.count(ApiKey.id))) or 0)

    # -- reviewers and their sessions
    def add_reviewer(
        self, username: str, password: str, who: Who | None = None, role: str = "reviewer"
    ) -> int:
        username = username.strip()
        if not username or len(username) > 100 or audit.clean(username) != username:
            raise ValueError("a reviewer name needs 1 to 100 printable characters")
        if role not in ROLES:
            raise ValueError(f"a role is one of {ROLES}, not {role!r}")
        with self._session.begin() as s:
            if s.scalar(select(Reviewer).where(Reviewer.username == username)) is not None:
                raise ValueError(f"reviewer {username!r} exists")
            r = Reviewer(
                username=username,
                password_hash=hash_password(password),
                created_at=utcnow(),
                role=role,
            )
            s.add(r)
            s.flush()
            audit.append(s, who, "reviewer.add", username, {"role": role})
            return r.id

    def set_reviewer(
        self,
        username: str,
        *,
        role: str | None = None,
        disabled: bool | None = None,
        who: Who | None = None,
    ) -> None:
        """Change a reviewer's role, or disable (ending their sessions) or enable them."""
        if role is not None and role not in ROLES:
            raise ValueError(f"a role is one of {ROLES}, not {role!r}")
        with self._session.begin() as s:
            r = s.scalar(select(Reviewer).where(Reviewer.username == username))
            if r is None:
                raise ValueError(f"no reviewer {username!r}")
            if role is not None and role != r.role:
                r.role = role
                audit.append(s, who, "reviewer.role", username, {"role": role})
            if disabled is True and r.disabled_at is None:
                r.disabled_at = utcnow()
                s.execute(delete(ReviewSession).where(ReviewSession.reviewer_id == r.id))
                audit.append(s, who, "reviewer.disable", username)
            elif disabled is False and r.disabled_at is not None:
                r.disabled_at = None
                audit.append(s, who, "reviewer.enable", username)

    def list_reviewers(self) -> list[dict[str, object]]:
        with self._session() as s:
            return [
                {
                    "username": r.username,
                    "role": r.role,
                    "created_at": iso(r.created_at),
                    "disabled_at": iso(r.disabled_at),
                }
                for r in s.scalars(select(Reviewer).order_by(Reviewer.id))
            ]

    def set_password(self, username: str, password: str, who: Who | None = None) -> None:
        with self._session.begin() as s:
            res = s.execute(
                update(Reviewer)
                .where(Reviewer.username == username)
                .values(password_hash=hash_password(password))
            )
            if res.rowcount != 1:
                raise ValueError(f"no reviewer {username!r}")
            # A new password ends every open session of that reviewer.
            rid = s.scalar(select(Reviewer.id).where(Reviewer.username == username))
            s.execute(delete(ReviewSession).where(ReviewSession.reviewer_id == rid))
            audit.append(s, who, "reviewer.password", username)

    def count_reviewers(self) -> int:
        with self._session() as s:
            return int(s.scalar(select(func.count(Reviewer.id))) or 0)

    def authenticate(self, username: str, password: str, address: str | None = None) -> int | None:
        """The reviewer's id if the password is right; either way an audit event
        (``login.ok`` / ``login.failed``, the account and the client address)."""
        with self._session() as s:
            r = s.scalar(select(Reviewer).where(Reviewer.username == username))
        if r is None or r.disabled_at is not None:
            # Same work for unknown names, so timing does not tell which names exist.
            verify_password(password, _DUMMY_HASH)
            ok = False
        else:
            ok = verify_password(password, r.password_hash)
        self.record(Who(username, address), "login.ok" if ok else "login.failed")
        return r.id if ok and r is not None else None

    def new_session(self, reviewer_id: int, ttl: dt.timedelta) -> tuple[str, str]:
        """(session token for the cookie, CSRF token for the forms)."""
        token, csrf = new_token(), new_token()
        with self._session.begin() as s:
            s.add(
                ReviewSession(
                    token_hash=token_hash(token),
                    reviewer_id=reviewer_id,
                    csrf_token=csrf,
                    expires_at=utcnow() + ttl,
                )
            )
        return token, csrf

    def session(self, token: str | None) -> SessionInfo | None:
        if not token:
            return None
        with self._session() as s:
            row = s.execute(
                select(ReviewSession, Reviewer.username, Reviewer.role, Reviewer.disabled_at)
                .join(Reviewer, Reviewer.id == ReviewSession.reviewer_id)
                .where(ReviewSession.token_hash == token_hash(token))
            ).first()
            if row is None or row[0].expires_at < utcnow() or row[3] is not None:
                return None
            return SessionInfo(row[0].reviewer_id, row[1], row[0].csrf_token, row[2])

    def end_session(self, token: str | None, who: Who | None = None) -> None:
        if token:
            with self._session.begin() as s:
                s.execute(
                    delete(ReviewSession).where(ReviewSession.token_hash == token_hash(token))
                )
                audit.append(s, who, "logout")

    # -- checks and cases
    def add_check(
        self,
        result: dict[str, object],
        *,
        api_key_id: int | None,
        external_id: str | None,
        image: bytes | None,
        media_type: str | None,
        open_case: bool,
    ) -> tuple[str, int | None, dt.datetime]:
        """Store one check (and its image, and a case if asked) in one transaction."""
        now = utcnow()
        check_id = uuid.uuid4().hex
        with self._session.begin() as s:
            s.add(
                Check(
                    id=check_id,
                    api_key_id=api_key_id,
                    external_id=external_id,
                    created_at=now,
                    sha256=result.get("sha256"),
                    verdict=str(result["verdict"]),
                    fake_probability=result.get("fake_probability"),
                    threshold=result.get("threshold"),
                    regions=result.get("regions"),
                    face=result.get("face"),
                    error=result.get("error"),
                    model_version=str(result["model_version"]),
                    timing_ms=float(result["timing_ms"]),
                    votes=result.get("votes"),
                )
            )
            s.flush()  # the check row exists before rows that point at it
            if image is not None:
                s.add(
                    StoredImage(
                        check_id=check_id,
                        content=image,
                        media_type=media_type or "application/octet-stream",
                        created_at=now,
                    )
                )
            case_id = None
            if open_case:
                case = Case(check_id=check_id, created_at=now, status="open")
                s.add(case)
                s.flush()
                case_id = case.id
        return check_id, case_id, now

    def get_check(self, check_id: str, api_key_id: int | None = None) -> dict | None:
        """A check as stored; with ``api_key_id``, only one that key created."""
        with self._session() as s:
            c = s.get(Check, check_id)
            if c is None or (api_key_id is not None and c.api_key_id != api_key_id):
                return None
            return _check_dict(c, s.scalar(select(Case).where(Case.check_id == check_id)))

    def list_checks(
        self,
        api_key_id: int,
        *,
        limit: int = 50,
        after: tuple[dt.datetime, str] | None = None,
        verdict: str | None = None,
        since: dt.datetime | None = None,
    ) -> list[dict]:
        """A key's checks, newest first, ``limit`` at most, those before the cursor
        ``after`` = (created_at, id) of the last one seen (keyset pagination: stable while
        new checks arrive)."""
        query = (
            select(Check, Case)
            .outerjoin(Case, Case.check_id == Check.id)
            .where(Check.api_key_id == api_key_id)
        )
        if verdict:
            query = query.where(Check.verdict == verdict)
        if since is not None:
            query = query.where(Check.created_at >= since)
        if after is not None:
            t, last = after
            query = query.where(
                or_(Check.created_at < t, and_(Check.created_at == t, Check.id < last))
            )
        query = query.order_by(Check.created_at.desc(), Check.id.desc()).limit(limit)
        with self._session() as s:
            return [_check_dict(c, case) for c, case in s.execute(query)]

    def image(self, check_id: str) -> tuple[bytes, str] | None:
        with self._session() as s:
            img = s.get(StoredImage, check_id)
            return None if img is None else (img.content, img.media_type)

    def verdict_counts(self) -> dict[str, int]:
        with self._session() as s:
            rows = s.execute(select(Check.verdict, func.count()).group_by(Check.verdict)).all()
            return {v: int(n) for v, n in rows}

    # -- retention
    def purge_images(self, older_than: dt.timedelta) -> int:
        """Delete images stored before ``now - older_than``, except those of open cases."""
        cutoff = utcnow() - older_than
        open_checks = select(Case.check_id).where(Case.status.in_(OPEN_STATES))
        with self._session.begin() as s:
            res = s.execute(
                delete(StoredImage).where(
                    StoredImage.created_at < cutoff, StoredImage.check_id.not_in(open_checks)
                )
            )
            n = int(res.rowcount or 0)
            if n:
                audit.append(s, None, "retention.images", None, {"deleted": n})
            return n

    def purge_checks(self, older_than: dt.timedelta) -> int:
        """Delete check rows (and their decided cases) older than ``older_than``; checks
        with an open case stay until it is decided."""
        cutoff = utcnow() - older_than
        with self._session.begin() as s:
            old = select(Check.id).where(
                Check.created_at < cutoff,
                Check.id.not_in(select(Case.check_id).where(Case.status.in_(OPEN_STATES))),
            )
            ids = list(s.scalars(old))
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                s.execute(delete(StoredImage).where(StoredImage.check_id.in_(part)))
                s.execute(delete(Case).where(Case.check_id.in_(part)))
                s.execute(delete(Check).where(Check.id.in_(part)))
            if ids:
                audit.append(s, None, "retention.checks", None, {"deleted": len(ids)})
            return len(ids)

    def purge_audit(self, older_than: dt.timedelta) -> int:
        with self._session.begin() as s:
            n = audit.purge(s, older_than)
            if n:
                audit.append(s, None, "retention.audit", None, {"deleted": n})
            return n

    def checks_since(self, api_key_id: int, seconds: float) -> int:
        """How many checks a key made in the last ``seconds`` (its quota)."""
        since = utcnow() - dt.timedelta(seconds=seconds)
        with self._session() as s:
            q = select(func.count()).where(
                Check.api_key_id == api_key_id, Check.created_at >= since
            )
            return int(s.scalar(q) or 0)


_DUMMY_HASH = hash_password("not-a-real-password")


def _check_dict(c: Check, case: Case | None) -> dict[str, object]:
    return {
        "id": c.id,
        "external_id": c.external_id,
        "created_at": iso(c.created_at),
        "verdict": c.verdict,
        "fake_probability": c.fake_probability,
        "threshold": c.threshold,
        "regions": c.regions,
        "face": c.face,
        "error": c.error,
        "model_version": c.model_version,
        "timing_ms": c.timing_ms,
        "votes": c.votes,
        "case": None
        if case is None
        else {
            "id": case.id,
            "status": case.status,
            "decision": case.decision,
            "reason": case.reason,
            "decided_at": iso(case.decided_at),
        },
    }
